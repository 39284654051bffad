"""The nokbox command: init, calls, status, and that importing touches no hardware."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

from firmware.vault.age import recipient_of

from .conftest import ROOT, run_cli


def test_init_creates_the_box_and_keeps_the_secret_off_it(tmp_path):
    data = tmp_path / "data"
    ident = tmp_path / "id.txt"
    r = run_cli("init", "--data", str(data), "--identity-out", str(ident))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(ident.stat().st_mode) == 0o600
    secret = [ln for ln in ident.read_text().splitlines() if ln.startswith("AGE-SECRET-KEY-1")][0]
    recipient = (data / "keys" / "recipient.txt").read_text().strip()
    assert recipient == recipient_of(secret)
    assert secret not in r.stdout
    for p in data.rglob("*"):
        if p.is_file():
            assert b"AGE-SECRET-KEY" not in p.read_bytes(), p
    # a second init would replace the records key: refused
    r = run_cli("init", "--data", str(data), "--identity-out", str(tmp_path / "id2.txt"))
    assert r.returncode != 0 and "already initialised" in r.stderr
    # the identity may not live inside the data directory
    r = run_cli("init", "--data", str(tmp_path / "d2"), "--identity-out", str(tmp_path / "d2" / "id"))
    assert r.returncode != 0 and "must not be stored inside the data directory" in r.stderr


def test_init_shows_the_recovery_passphrase_once_and_never_the_identity(tmp_path, age_tool):
    from firmware.vault.sealing import open_recovery

    r = run_cli("init", "--data", str(tmp_path / "data"))
    assert r.returncode == 0, r.stderr
    assert "AGE-SECRET-KEY" not in r.stdout + r.stderr
    shown = r.stdout.split("office safe:")[1].split()[0]
    assert len(shown.replace("-", "")) * 5 >= 80  # Crockford base32: 5 bits a character
    identity = open_recovery(tmp_path / "data", shown)
    assert recipient_of(identity) == (tmp_path / "data" / "keys" / "recipient.txt").read_text().strip()
    assert shown not in "".join(p.read_text(errors="replace") for p in (tmp_path / "data").rglob("*") if p.is_file())


def test_calls_and_status_on_an_idle_box(box):
    data, _ = box
    r = run_cli("calls", "--data", str(data), "--json")
    assert r.returncode == 0 and r.stdout == ""
    r = run_cli("status", "--data", str(data))
    assert r.returncode == 3 and "not running" in r.stdout
    r = run_cli("calls", "--data", str(data.parent / "nothing"))
    assert r.returncode != 0 and "not an initialised data directory" in r.stderr


def test_every_subcommand_takes_data_and_config():
    for cmd in ("init", "run", "replay", "calls", "check-config", "status", "keys add-pin", "keys check-pin",
                "keys unlock", "keys export-identity", "keys status", "retention run"):
        r = run_cli(*cmd.split(), "--help")
        assert r.returncode == 0
        assert "--data" in r.stdout and "--config" in r.stdout, cmd


def test_importing_every_module_touches_no_hardware():
    code = (
        "import sys, pkgutil, importlib\n"
        "import firmware, dsp, web\n"
        "for pkg in (firmware, dsp, web):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "import firmware.hal.audio, firmware.hal.clock\n"
        "print(sorted(m for m in ('alsaaudio', 'gpiozero', 'lgpio') if m in sys.modules))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), ALSA_CONFIG_PATH="/nonexistent/alsa.conf")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.replace("'", '"')) == []
    assert "ALSA" not in r.stderr

"""`nokbox run` as the service runs it: simulated lines, live status, reload, clean stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from firmware.index import CallIndex

from .authutil import FAST_AUTH, PASSWORD, Client, scripted_setup
from .conftest import ROOT, decrypt_audio, run_cli

pytestmark = pytest.mark.slow

FAST = """
[auth]
""" + "\n".join(f"{k} = {v}" for k, v in FAST_AUTH.items()) + """
[audio]
channels = 3
[segment]
silence_s = 3
[simulate]
first_call_s = 0.5
idle_min_s = 2
idle_max_s = 4
talk_min_s = 3
talk_max_s = 5
[[line]]
channel = 0
name = "민원실"
extension = "1234"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLIENT: Client | None = None


def get_json(url: str):
    """GET a JSON API as the signed-in technician."""
    status, _, body = CLIENT.get(url[len(CLIENT.base):])
    assert status == 200, (status, body)
    return json.loads(body)


@pytest.fixture
def running_box(box, tmp_path):
    data, ident = box
    cfg = tmp_path / "nokbox.toml"
    cfg.write_text(FAST)
    # a scripted install: the first administrator (also technician) from a password file
    r = scripted_setup(data, cfg, tmp_path / "pw", "tech", "technician", PASSWORD["technician"])
    assert "nokbox-audit-v2-" in r.stdout
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "firmware.cli", "run", "--data", str(data),
                             "--config", str(cfg), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    global CLIENT
    CLIENT = Client(base)
    while True:
        try:
            assert CLIENT.get("/api/status")[0] == 401  # up, and the status needs sign-in
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("nokbox run did not come up: " + (proc.stdout.read() if proc.stdout else ""))
            time.sleep(0.2)
    assert CLIENT.sign_in("tech", PASSWORD["technician"]) == 302
    yield proc, base, data, ident, cfg
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_run_records_serves_status_reloads_and_stops_cleanly(running_box, age_tool):
    proc, base, data, ident, cfg = running_box
    # live status: every line, its level, a call in progress on some line
    seen_call = False
    levels = set()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (seen_call and len(levels) > 3):
        st = get_json(base + "/api/status")
        assert [ln["name"] for ln in st["lines"]] == ["민원실"]
        seen_call |= any(ln["in_call"] for ln in st["lines"])
        levels.add(st["lines"][0]["level_dbfs"])
        time.sleep(0.3)
    assert seen_call and len(levels) > 3
    assert st["device"]["backend"] == "simulated" and st["device"]["state"] == "running"
    assert st["disk"]["free_bytes"] > 0

    # `nokbox status` reads the same picture from the data directory
    r = run_cli("status", "--data", str(data))
    assert r.returncode == 0 and "nokbox: running" in r.stdout and "민원실" in r.stdout

    # a bad config on reload is refused; the box keeps running on the last good one
    cfg.write_text(FAST + "\n[storage]\ncodek = \"flac\"\n")
    proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = get_json(base + "/api/status")
        if st["config_error"]:
            break
        time.sleep(0.2)
    assert "storage.codek: unknown key" in st["config_error"]
    assert proc.poll() is None

    time.sleep(6)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "config reload refused" in out
    idx = CallIndex(data / "index.sqlite")
    rows = [dict(r) for r in idx.calls()]
    idx.close()
    assert rows, out
    assert all(r["state"] == "finished" for r in rows)
    for r in rows:
        y, _ = decrypt_audio(age_tool, ident, data / r["file"])
        assert len(y) == r["frames"]
    # no phone number or audio in the log
    assert "RIFF" not in out
    # the audit trail holds the sign-in and was sealed at shutdown: nothing left in the open tail
    from firmware.audit import AuditLog

    audit = AuditLog(data)
    rep = audit.verify_report()
    assert rep.open_tail == 0 and rep.epochs_sealed >= 1
    assert any(e["action"] == "auth.signin" and e["actor"] == "tech" for e in audit.entries())


def test_run_refuses_a_bad_config(box, tmp_path):
    data, _ = box
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[audio]\nrate = 12345\n")
    r = run_cli("run", "--data", str(data), "--config", str(cfg), timeout=30)
    assert r.returncode == 2
    assert "audio.rate" in r.stderr

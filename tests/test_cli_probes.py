"""Three probes of the `nokbox` command found as an attacker would look, each run as a real process:
clear audio written into the data directory, files under DATA readable by group and others, and a
traceback when the reader of a pipe goes away."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from firmware.index import CallIndex

from .authutil import FAST_AUTH, PASSWORD, scripted_setup
from .conftest import NOKBOX, ROOT, place_calls, run_cli


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT))


# -- 1. decrypt --out never writes clear audio inside DATA ---------------------------------------
@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A box with one recorded call (the real pipeline) and its identity file outside the data."""
    from firmware.config import parse_config
    from firmware.hal.audio import ArraySource
    from firmware.recording.recorder import Recorder
    from firmware.vault.keys import init_data_dir

    tmp = tmp_path_factory.mktemp("decrypt")
    data, ident = tmp / "data", tmp / "records-identity.txt"
    init_data_dir(data, ident)
    audio, _ = place_calls(8000, 25.0, [[(3.0, 8.0)]])
    rec = Recorder(parse_config({"audio": {"channels": 1}}), data, source=ArraySource(audio, 8000, 160))
    rec.start()
    assert rec.wait(60)
    idx = CallIndex(data / "index.sqlite")
    (row,) = idx.calls()
    idx.close()
    assert row["state"] == "finished"
    return data, ident, row["id"]


def _decrypt(data, ident, call, *extra, **kw):
    return run_cli("decrypt", str(call), "--data", str(data), "--identity", str(ident), *extra, **kw)


def test_decrypt_refuses_an_output_inside_the_data_directory(recorded, tmp_path):
    data, ident, call = recorded
    before = sorted(p for p in data.rglob("*"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "to-data").symlink_to(data, target_is_directory=True)
    (tmp_path / "dangling.opus").symlink_to(data / "calls" / "leak.opus")
    attempts = [
        data / "leak.opus",  # plainly inside
        data / "calls" / "leak.opus",
        outside / ".." / ".." / data.parent.name / "data" / "leak.opus",  # through '..'
        tmp_path / "to-data" / "leak.opus",  # through a symlinked folder
        tmp_path / "dangling.opus",  # a symlink whose target is inside DATA
    ]
    for out in attempts:
        r = _decrypt(data, ident, call, "--out", str(out))
        assert r.returncode != 0, out
        assert "데이터 폴더" in r.stderr and "inside the data directory" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    assert not (data / "leak.opus").exists() and not (data / "calls" / "leak.opus").exists()
    assert sorted(p for p in data.rglob("*")) == before, "nothing may be written inside DATA"
    # standard output redirected into DATA (`> DATA/x`) is refused too: the file the shell made stays empty
    sink = data / "sink.opus"
    with open(sink, "wb") as f:
        r = subprocess.run([*NOKBOX, "decrypt", str(call), "--data", str(data), "--identity", str(ident)],
                           stdout=f, stderr=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    assert r.returncode != 0 and "inside the data directory" in r.stderr
    assert sink.stat().st_size == 0
    sink.unlink()


def test_decrypt_writes_clear_audio_outside_owner_only(recorded, tmp_path):
    data, ident, call = recorded
    out = tmp_path / "call.opus"
    # whatever umask the caller has, the clear audio is created 0600
    r = _decrypt(data, ident, call, "--out", str(out), umask=0o022)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_bytes()[:4] in (b"OggS", b"RIFF", b"fLaC")
    # an existing file is never overwritten
    r = _decrypt(data, ident, call, "--out", str(out))
    assert r.returncode != 0 and "exists" in r.stderr
    r = _decrypt(data, ident, call, "--out", str(tmp_path / "no-such-folder" / "call.opus"))
    assert r.returncode != 0 and "No such file or directory" in r.stderr and "Traceback" not in r.stderr


# -- 2. every file and folder under DATA is the owner's alone ------------------------------------
RUN_TOML = "[auth]\n" + "\n".join(f"{k} = {v}" for k, v in FAST_AUTH.items()) + """
[audio]
channels = 1
[segment]
silence_s = 3
[simulate]
first_call_s = 0.3
idle_min_s = 2
idle_max_s = 3
talk_min_s = 2
talk_max_s = 3
"""


def _wider_than_owner(data: Path) -> list[str]:
    """Every path at or under DATA with a group or other permission bit (sockets: exactly 0660)."""
    bad = []
    for p in [data, *data.rglob("*")]:
        try:
            st = p.lstat()
        except FileNotFoundError:  # a temporary file that went while we looked
            continue
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISSOCK(st.st_mode):
            if mode != 0o660:  # the documented socket mode (firmware/ipc.py chmods it)
                bad.append(f"{p.relative_to(data.parent)} socket {oct(mode)}")
        elif mode & 0o077:
            bad.append(f"{p.relative_to(data.parent)} {oct(mode)}")
    return bad


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_init_setup_and_run_create_everything_under_data_owner_only(tmp_path):
    """As ./run.sh does it: `nokbox init`, then `nokbox run` (plus the first administrator)."""
    data = tmp_path / "var" / "data"
    data.parent.mkdir()
    umask022 = {"umask": 0o022}  # the usual login umask; today's files came out 0644
    r = run_cli("init", "--data", str(data), "--identity-out", str(tmp_path / "var" / "records-identity.txt"),
                "--passphrase-file", str(tmp_path / "var" / "recovery-passphrase.txt"), stdin=subprocess.DEVNULL,
                **umask022)
    assert r.returncode == 0, r.stderr
    cfg = tmp_path / "nokbox.toml"
    cfg.write_text(RUN_TOML)
    scripted_setup(data, cfg, tmp_path / "pw", "tech", "technician", PASSWORD["technician"])
    port = _free_port()
    proc = subprocess.Popen([*NOKBOX, "run", "--data", str(data), "--config", str(cfg), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=ROOT,
                            **umask022)
    try:
        deadline = time.monotonic() + 60
        want = [data / "run" / "recorder.sock", data / "run" / "keeper.sock", data / "index.sqlite-wal",
                data / "accounts.sqlite"]
        while True:  # the three processes up, the databases open (WAL), a call being written
            up = all(p.exists() for p in want) and any(data.glob("calls/**/*.age*"))
            if up:
                try:
                    socket.create_connection(("127.0.0.1", port), 1).close()
                    break
                except OSError:
                    pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else want
            time.sleep(0.2)
        running = _wider_than_owner(data)
        sockets = [p for p in (data / "run").iterdir() if stat.S_ISSOCK(p.lstat().st_mode)]
        assert len(sockets) == 2
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C, as ./run.sh is stopped
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert running == [], running
    assert _wider_than_owner(data) == []
    names = {p.name for p in data.rglob("*")}
    assert {"accounts.sqlite", "index.sqlite", "audit.jsonl", "seal-state.json", "recipient.txt"} <= names


# -- 3. a closed pipe ends the command quietly ----------------------------------------------------
def test_calls_json_into_a_pipe_closed_after_the_first_line_exits_quietly(box):
    data, _ = box
    idx = CallIndex(data / "index.sqlite")
    for i in range(2000):  # far more than a pipe buffer (64 KiB): the writer is still writing when it closes
        cid, _ = idx.open_call(0, "민원실", 1_764_000_000.0 + 60 * i, 0, 8000, "opus",
                               lambda n: f"calls/2025/11/24/{n:08d}.opus.age")
        idx.finish_call(cid, 8000 * 30, 12345, "busy", 0)
    idx.close()
    proc = subprocess.Popen([*NOKBOX, "calls", "--json", "--data", str(data)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env(), cwd=ROOT)
    first = proc.stdout.readline()  # `| head -1`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    code = proc.wait(60)
    assert first.startswith(b'{"id": 1,')
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err
    assert err == ""
    assert code == 141  # as a shell reports a process ended by SIGPIPE (128 + 13)


def test_output_read_to_the_end_still_exits_0(box):
    data, _ = box
    r = run_cli("calls", "--json", "--data", str(data))
    assert r.returncode == 0 and r.stderr == ""

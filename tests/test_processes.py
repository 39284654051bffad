"""The three processes: the page never opens the vault, the supervisor restarts what dies and
nothing is lost, and a process that is down gives the page a clear 503."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from firmware.audit import AuditLog
from firmware.index import KST, CallIndex
from firmware.ipc import Client as IpcClient
from firmware.ipc import IpcError
from firmware.recording.service import RecorderClient
from firmware.vault.keeper import KeeperClient
from firmware.vault.personal import mask_number
from web import create_app

from .authutil import APPROVER_PIN as PIN
from .authutil import FAST_AUTH, PASSWORD, Client, fast_cfg, recorded_vault
from .conftest import ROOT, decrypt_audio
from .test_roles import TC
from .test_run import free_port

RATE = 8000
CONFIG = """
[auth]
""" + "\n".join(f"{k} = {v}" for k, v in FAST_AUTH.items()) + """
[audio]
channels = 2
[vault]
pin_backoff_s = 0.0
[segment]
silence_s = 3
[simulate]
first_call_s = 0.5
idle_min_s = 2
idle_max_s = 3
talk_min_s = 3
talk_max_s = 5
"""

# Runs ``nokbox ARGS`` with an audit hook that writes every file the process opens (builtins.open,
# io.open, os.open, sqlite3.connect) or lists (os.listdir, os.scandir) to LOG, one path a line.
HOOKED = r"""
import os, sys
log = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
EVENTS = {"open", "os.open", "sqlite3.connect", "os.listdir", "os.scandir"}
def hook(event, args):
    if event in EVENTS and args and isinstance(args[0], (str, bytes, os.PathLike)):
        os.write(log, os.fsencode(os.path.abspath(os.fsdecode(args[0]))) + b"\n")
sys.addaudithook(hook)
from firmware.cli import main
sys.exit(main(sys.argv[2:]))
"""


def forbidden(paths: list[str], data: Path) -> list[str]:
    """The paths among ``paths`` the page may never open: DATA/keys, DATA/calls, the device secret."""
    data = data.resolve()
    banned = [data / "keys", data / "calls", data.parent / (data.name + "-device.key"), Path("/etc/nokbox/device.key")]
    out = []
    for p in paths:
        rp = Path(p).resolve()
        if any(rp == b or b in rp.parents for b in banned):
            out.append(p)
    return out


@pytest.fixture
def vault_box(tmp_path):
    """A box with an approver PIN slot, two recorded calls with dialled numbers, people, a config."""
    data, ident, calls, numbers = recorded_vault(tmp_path, fast_cfg({"audio": {"channels": 2}}))
    conf = tmp_path / "nokbox.toml"
    conf.write_text(CONFIG)
    return data, ident, conf, calls, list(numbers.values())


def _start(*args, log: Path | None = None, hook: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-c", HOOKED, str(hook), *args] if hook else [sys.executable, "-m", "firmware.cli", *args]
    if log is None:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def wait_socket(path: Path, name: str, timeout: float = 90.0) -> IpcClient:
    """The client of a socket once its server answers ``status``."""
    c = IpcClient(path, name, timeout=2)
    deadline = time.monotonic() + timeout
    while True:
        try:
            c.call("status", actor="test", purpose="up?")
            return c
        except IpcError:
            assert time.monotonic() < deadline, f"{name} did not come up"
            time.sleep(0.2)


def _wait_http(base: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if Client(base).get("/login")[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{base} did not come up"
        time.sleep(0.2)


def _stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(90)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.mark.slow
def test_the_page_process_never_opens_keys_calls_or_the_device_secret(vault_box, tmp_path, age_tool):
    data, ident, conf, calls, numbers = vault_box
    common = ["--data", str(data), "--config", str(conf)]
    logs = tmp_path / "procs.log"
    rec = _start("recorder", *common, log=logs)
    keeper = _start("keeper", *common, log=logs)
    wait_socket(data / "run" / "recorder.sock", "recorder")
    wait_socket(data / "run" / "keeper.sock", "keeper")
    hook = tmp_path / "page-opens.txt"
    port = free_port()
    page = _start("web", *common, "--port", str(port), log=tmp_path / "page.log", hook=hook)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_http(base)
        day = calls[0]["start_utc"]
        import datetime as dt

        day = dt.datetime.fromisoformat(day.replace("Z", "+00:00")).astimezone(KST).date().isoformat()
        # the auditor's calls list: masked numbers, opened by the keeper
        aud = Client(base)
        assert aud.sign_in("auditor", PASSWORD["auditor"]) == 302
        status, _, body = aud.get(f"/calls?day={day}")
        assert status == 200 and all(mask_number(n) in body for n in numbers) and not any(n in body for n in numbers)
        # the status page, from the recorder
        status, _, body = aud.get("/")
        assert status == 200 and "회선 1" in body
        status, _, body = aud.get("/api/status")
        assert status == 200 and json.loads(body)["device"]["backend"] == "simulated"
        # the release workflow: an officer enters a request (an investigation's written request:
        # ground 4, its document number), searches inside it, attaches, submits; the approver approves
        # with the PIN; the officer plays the call through the keeper, by HTTP ranges
        import datetime as dt2

        t0 = dt2.datetime.fromisoformat(calls[0]["start_utc"].replace("Z", "+00:00"))
        off = Client(base)
        assert off.sign_in("officer", PASSWORD["officer"]) == 302
        off.get("/requests/new")
        status, hdrs, body = off.post("/requests/new", {
            "kind": "provide", "legal_ground": "4", "document_number": "수사과-1234", "requester.name": "중부경찰서",
            "sending_number": numbers[0], "receiving_number": "",
            "call_from": (t0 - dt2.timedelta(minutes=5)).astimezone(KST).strftime("%Y-%m-%dT%H:%M"),
            "call_to": (t0 + dt2.timedelta(minutes=5)).astimezone(KST).strftime("%Y-%m-%dT%H:%M"),
            "purpose": "수사", "reason": "사건 2026-77 통화 확인"})
        assert status == 302, body
        number = re.search(r"/requests/([0-9]{4}-[0-9]{4})", hdrs["Location"]).group(1)
        status, _, body = off.get(f"/requests/{number}")
        assert status == 200 and "중부경찰서" in body
        status, _, body = off.post(f"/requests/{number}/search")
        found = body[body.index('id="found"'):body.index("</table>", body.index('id="found"'))]
        assert status == 200 and mask_number(numbers[0]) in found and numbers[0] not in found
        cid = calls[0]["id"]
        status, _, body = off.post(f"/requests/{number}/attach", {"call": str(cid)})
        assert status == 200 and "첨부" in body, body
        status, _, body = off.post(f"/requests/{number}/submit")
        assert status == 200 and "결재" in body
        appr = Client(base)
        assert appr.sign_in("approver", PASSWORD["approver"]) == 302
        appr.get(f"/requests/{number}")
        status, _, body = appr.post(f"/requests/{number}/decide", {"decision": "approve", "pin": PIN, "comment": "승인"})
        assert status == 200 and "승인했습니다" in body, body
        off.get(f"/requests/{number}")
        status, _, body = off.post(f"/requests/{number}/play/{cid}")
        assert status == 200 and 'controlslist="nodownload' in body
        src = re.search(r'<audio[^>]+src="([^"]+)"', body).group(1).replace("&amp;", "&")
        import urllib.request

        req = urllib.request.Request(base + src, headers={"Range": "bytes=0-"})
        with off.opener.open(req, timeout=30) as r:
            assert r.status == 206 and r.headers["Content-Type"] == "audio/wav"
            assert r.headers["Cache-Control"] == "no-store" and r.headers["Accept-Ranges"] == "bytes"
            wav = r.read()
        got, rate = sf.read(io.BytesIO(wav), dtype="int16")
        want, _ = decrypt_audio(age_tool, ident, data / calls[0]["file"])
        assert rate == RATE and np.array_equal(got, want.reshape(len(want), -1)[:, 0])
        req = urllib.request.Request(base + src, headers={"Range": "bytes=100-199"})
        with off.opener.open(req, timeout=30) as r:
            assert r.status == 206 and r.read() == wav[100:200]
            assert r.headers["Content-Range"] == f"bytes 100-199/{len(wav)}"
        other = Client(base)  # the token is bound to the officer's session
        other.sign_in("officer", PASSWORD["officer"])
        assert other.get(src)[0] == 404
        status, _, body = off.get(f"/ledger")
        assert status == 200 and number in body and "중부경찰서" in body
    finally:
        _stop(page)
        _stop(keeper, rec)
    opened = hook.read_text().splitlines()
    assert any(p.endswith("accounts.sqlite") for p in opened)  # the hook saw the page's own files
    assert forbidden(opened, data) == []
    actions = [(e["action"], e["actor"]) for e in AuditLog(data).entries()]
    for a in [("keeper.masked", "auditor"), ("keeper.grant", "approver"), ("keeper.play", "officer"),
              ("request.create", "officer"), ("request.search", "officer"), ("request.attach", "officer"),
              ("request.submit", "officer"), ("request.approve", "approver"), ("request.play", "officer"),
              ("request.view", "approver"), ("ledger.view", "officer"), ("call.view", "auditor")]:
        assert a in actions


@pytest.mark.slow
def test_the_hook_catches_a_process_that_opens_the_keys(vault_box, tmp_path):
    """The same check on a process that does read DATA/keys (``nokbox keys status``): it fails."""
    data, _, conf, _, _ = vault_box
    hook = tmp_path / "opens.txt"
    p = _start("keys", "status", "--data", str(data), "--config", str(conf), hook=hook)
    assert p.wait(60) == 0
    bad = forbidden(hook.read_text().splitlines(), data)
    assert any("/keys/pin" in b for b in bad), bad


@pytest.mark.slow
def test_killing_the_page_or_the_keeper_loses_nothing_and_they_come_back(vault_box, tmp_path, age_tool):
    data, ident, conf, _, _ = vault_box
    port = free_port()
    log = tmp_path / "run.log"
    run = _start("run", "--data", str(data), "--config", str(conf), "--port", str(port), log=log)
    base = f"http://127.0.0.1:{port}"
    sup = data / "run" / "supervisor.json"

    def children() -> dict:
        return json.loads(sup.read_text())["children"]

    def until(cond, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, what + "\n" + log.read_text()
            time.sleep(0.2)

    try:
        until(lambda: sup.exists() and children()["web"]["state"] == "running", "nokbox run did not start", 120)
        _wait_http(base)
        tech = Client(base)
        assert tech.sign_in("technician", PASSWORD["technician"]) == 302
        rec_pid = children()["recorder"]["pid"]
        time.sleep(3)
        for name in ("web", "keeper"):
            os.kill(children()[name]["pid"], signal.SIGKILL)
            until(lambda: children()[name]["restarts"] == 1 and children()[name]["state"] == "running",
                  f"{name} was not restarted")
            assert children()[name]["last_exit"] == -signal.SIGKILL
        _wait_http(base)
        status, _, body = tech.get("/api/status")  # the same session: it lives in accounts.sqlite, not the page
        assert status == 200
        st = json.loads(body)  # ... and shows the restarts
        assert {p["name"]: (p["state"], p["restarts"]) for p in st["processes"]} == {
            "recorder": ("running", 0), "keeper": ("running", 1), "web": ("running", 1)}
        KeeperClient(data, fast_cfg()).status()  # the keeper answers again
        time.sleep(4)
        assert children()["recorder"]["pid"] == rec_pid and children()["recorder"]["restarts"] == 0
    finally:
        _stop(run)
    assert run.returncode == 0, log.read_text()
    out = log.read_text()
    assert "web process exited (status -9); restarting it" in out and "keeper process restarted" in out
    last = json.loads((data / "run" / "status.json").read_text())
    assert last["device"]["xruns"] == 0 and last["device"]["losses"] == 0
    assert all(ln["overrun_frames"] == 0 for ln in last["lines"]) and st["device"]["state"] == "running"
    idx = CallIndex(data / "index.sqlite")
    rows = [dict(r) for r in idx.calls()]
    idx.close()
    live = [r for r in rows if r["id"] > 2]  # recorded by the supervised recorder
    assert live and all(r["state"] == "finished" and r["lost_frames"] == 0 for r in live)
    for r in live:
        y, _ = decrypt_audio(age_tool, ident, data / r["file"])
        assert len(y) == r["frames"]


def test_a_process_that_is_down_gives_a_clear_503_and_nothing_breaks(vault_box, caplog):
    data, _, conf, calls, _ = vault_box
    from firmware.config import load_config

    cfg, _ = load_config(conf)
    app = create_app(RecorderClient(data, cfg), data_dir=data, cfg=cfg, keeper=KeeperClient(data, cfg))
    aud = TC(app)
    aud.sign_in("auditor", PASSWORD["auditor"])
    r = aud.get("/")
    assert r.status_code == 503
    page = r.data.decode()
    assert "녹음기 · recorder" in page and "not answering" in page and "Traceback" not in page
    r = aud.get("/api/status")
    assert r.status_code == 503 and "recorder" in r.get_json()["error"]
    import datetime as dt

    day = dt.datetime.fromisoformat(calls[0]["start_utc"].replace("Z", "+00:00")).astimezone(KST).date()
    r = aud.get(f"/calls?day={day.isoformat()}")  # the list still shows, without the masked numbers
    assert r.status_code == 200 and "키 관리자" in r.data.decode() and r.data.decode().count('<tr data-id="') == 2
    off = TC(app)
    off.sign_in("officer", PASSWORD["officer"])
    r = off.get("/requests")
    assert r.status_code == 200
    r = off.post("/requests/new", {"kind": "listen", "legal_ground": "4", "document_number": "D-1",
                                   "requester.name": "경찰서", "sending_number": "010-1234-5678",
                                   "call_from": "2026-12-01T10:00", "call_to": "2026-12-01T11:00", "purpose": "p",
                                   "reason": "r"})
    assert r.status_code == 503 and "키 관리자" in r.data.decode()
    tech = TC(app)
    tech.sign_in("technician", PASSWORD["technician"])
    r = tech.get("/notice")
    assert r.status_code == 503
    assert "Traceback" not in caplog.text

"""The local socket protocol (firmware/ipc.py): frames, errors, streams, a fuzz loop, and peers of
another uid refused by the kernel's SO_PEERCRED, for each of the box's sockets."""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import tempfile
from pathlib import Path

import pytest

from firmware.ipc import MAX_FRAME, VERSION, Client, IpcError, Server, ServiceUnavailable, Stream


def _server(tmp_path: Path, **kw) -> Server:
    handlers = {
        "echo": lambda r: {"args": r.args, "actor": r.actor, "purpose": r.purpose},
        "fail": lambda r: 1 / 0,
        "bytes": lambda r: Stream("bytes", {"n": 3}, iter([b"a" * 10, b"", b"b" * (MAX_FRAME + 5)]),
                                  trailer=lambda: {"done": True}),
        "ticks": lambda r: Stream("json", {}, ({"i": i} for i in range(1000))),
    }
    return Server(tmp_path / "t.sock", handlers, name="test", **kw).start()


def _raw(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    return s


def _reply(s: socket.socket) -> dict:
    (n,) = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))
    return json.loads(s.recv(n, socket.MSG_WAITALL))


def test_request_reply_stream_and_errors(tmp_path):
    srv = _server(tmp_path)
    try:
        c = Client(srv.path, "test", timeout=5)
        assert c.call("echo", actor="tech", purpose="check", x=[1, "회선"]) == {
            "args": {"x": [1, "회선"]}, "actor": "tech", "purpose": "check"}
        with pytest.raises(IpcError) as e:
            c.call("fail", actor="tech", purpose="check")
        assert e.value.code == "internal" and "ZeroDivisionError" in e.value.message
        head, chunks = c.stream_bytes("bytes", actor="tech", purpose="check")
        assert head == {"n": 3} and b"".join(chunks) == b"a" * 10 + b"b" * (MAX_FRAME + 5)
        it = c.stream_json("ticks", actor="tech", purpose="check")
        assert [next(it)["i"] for _ in range(5)] == [0, 1, 2, 3, 4]
        it.close()  # the client going away ends the server's stream
        assert os.stat(srv.path).st_mode & 0o777 == 0o660
    finally:
        srv.close()
    assert not srv.path.exists()
    with pytest.raises(ServiceUnavailable) as e:
        Client(srv.path, "keeper", timeout=1).call("echo", actor="a", purpose="b")
    assert "키 관리자" in e.value.message and "keeper" in e.value.message


def test_a_second_server_on_a_live_socket_is_refused_and_a_stale_one_replaced(tmp_path):
    srv = _server(tmp_path)
    with pytest.raises(IpcError, match="already serving"):
        _server(tmp_path)
    srv.close()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a socket file nobody listens on (a crash)
    stale.bind(str(tmp_path / "t.sock"))
    stale.close()
    srv = _server(tmp_path)
    assert Client(srv.path, "test").call("echo", actor="a", purpose="b")["actor"] == "a"
    srv.close()


def test_malformed_oversized_unknown_and_wrong_version_get_an_error_and_the_server_keeps_serving(tmp_path):
    """A fuzz loop with a fixed seed: every bad frame gets an error reply (or, cut short, none), and
    a good request answers after each."""
    srv = _server(tmp_path)
    rng = random.Random(20261203)
    good = Client(srv.path, "test", timeout=5)
    codes: dict[str, int] = {}

    def frame(payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + payload

    cases = [
        ("too_large", struct.pack(">I", MAX_FRAME + 1)),
        ("too_large", struct.pack(">I", 0xFFFFFFFF) + b"x" * 100),
        ("malformed", frame(b"\xff\xfe not utf-8")),
        ("malformed", frame(b"[1, 2, 3]")),
        ("malformed", frame(b"{")),
        ("version", frame(json.dumps({"v": 2, "verb": "echo", "actor": "a", "purpose": "p"}).encode())),
        ("version", frame(json.dumps({"verb": "echo", "actor": "a", "purpose": "p"}).encode())),
        ("unknown_verb", frame(json.dumps({"v": VERSION, "verb": "rm -rf", "actor": "a", "purpose": "p"}).encode())),
        ("malformed", frame(json.dumps({"v": VERSION, "verb": "echo", "purpose": "p"}).encode())),
        ("malformed", frame(json.dumps({"v": VERSION, "verb": "echo", "actor": "a"}).encode())),
        ("malformed", frame(json.dumps({"v": VERSION, "verb": "echo", "actor": "a", "purpose": "p",
                                        "args": [1]}).encode())),
    ]
    for _ in range(300):
        kind = rng.randrange(4)
        if kind == 0:  # random bytes as a frame
            cases.append(("any", frame(rng.randbytes(rng.randrange(0, 200)))))
        elif kind == 1:  # a random JSON object
            obj = {rng.choice(["v", "verb", "actor", "purpose", "args", "x"]): rng.choice(
                [None, 1, VERSION, "echo", "", "a" * 600, [], {}, True]) for _ in range(rng.randrange(6))}
            cases.append(("any", frame(json.dumps(obj).encode())))
        elif kind == 2:  # a frame cut short: no answer is possible, the server must shrug it off
            cases.append(("truncated", frame(rng.randbytes(50))[: rng.randrange(1, 40)]))
        else:  # a length header over the limit
            cases.append(("too_large", struct.pack(">I", rng.randrange(MAX_FRAME + 1, 1 << 32))))
    try:
        for expect, data in cases:
            s = _raw(srv.path)
            s.sendall(data)
            if expect == "truncated":  # cut short, then the client stops sending
                s.shutdown(socket.SHUT_WR)
            try:
                r = _reply(s)
            except struct.error:
                raise AssertionError(f"no reply to {expect} {data[:20]!r}") from None
            if expect != "any" or not r.get("ok"):
                assert r["ok"] is False and r["v"] == VERSION and r["error"]["message"], (expect, data[:60])
                codes[r["error"]["code"]] = codes.get(r["error"]["code"], 0) + 1
            if expect != "any":
                assert r["error"]["code"] == expect, (expect, r)
            s.close()
            assert good.call("echo", actor="a", purpose="p")["actor"] == "a"
    finally:
        srv.close()
    assert codes["too_large"] >= 2 and codes["malformed"] >= 4 and codes["version"] >= 2 and codes["truncated"] >= 1
    assert srv.bad_requests >= len([c for c in cases if c[0] != "any"])


def _connect_as_other_uid(path: Path, uid: int = 65534) -> dict:
    """Fork a child that keeps gid 0 (so the 0660 socket file lets it in) but drops to ``uid``, connects
    and reports the server's answer through a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(0)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            try:
                s.connect(str(path))
                try:
                    s.sendall(struct.pack(">I", 2) + b"{}")
                except BrokenPipeError:  # refused at once: the server's answer is already waiting to be read
                    pass
                out = _reply(s)
            except OSError as exc:
                out = {"os_error": exc.errno}
            os.write(w, json.dumps({"uid": os.getuid(), "reply": out}).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another uid needs root (CI runs as root)")


def _shared_run_dir() -> Path:
    """A socket folder another uid in group 0 may enter (pytest's own tmp folders are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="nokbox-ipc-"))
    os.chmod(d, 0o750)
    return d


@needs_root
def test_a_peer_with_another_uid_is_refused_even_when_the_file_lets_it_in(tmp_path):
    d = _shared_run_dir()
    srv = _server(d)
    try:
        got = _connect_as_other_uid(srv.path)
        assert got["uid"] == 65534
        assert got["reply"]["ok"] is False and got["reply"]["error"]["code"] == "peer_refused"
        assert "65534" in got["reply"]["error"]["message"]
        assert srv.refused_peers == 1
        assert Client(srv.path, "test").call("echo", actor="a", purpose="p")["actor"] == "a"
        allowed = Server(d / "allowed.sock", {"echo": lambda r: r.uid}, name="test", allow_uids=[65534]).start()
        try:  # the allow list is what decides: listed, the same uid gets its answer
            s = _connect_as_other_uid(allowed.path)
            assert s["reply"]["ok"] is False and s["reply"]["error"]["code"] == "version"  # it got past the check
        finally:
            allowed.close()
    finally:
        srv.close()
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


@needs_root
@pytest.mark.slow
def test_the_recorder_and_keeper_sockets_refuse_another_uid(box, tmp_path):
    """Each real socket, as its process serves it (``nokbox recorder``, ``nokbox keeper``)."""
    import subprocess
    import sys

    from .conftest import ROOT
    from .test_processes import wait_socket

    data, _ = box
    d = _shared_run_dir()
    cfg = tmp_path / "nokbox.toml"
    cfg.write_text(f'[ipc]\nrun_dir = "{d}"\n[audio]\nchannels = 1\n')
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-m", "firmware.cli", name, "--data", str(data), "--config", str(cfg)],
                              env=env, cwd=ROOT, stderr=subprocess.DEVNULL) for name in ("recorder", "keeper")]
    try:
        for name in ("recorder", "keeper"):
            c = wait_socket(d / f"{name}.sock", name)
            got = _connect_as_other_uid(d / f"{name}.sock")
            assert got["reply"].get("ok") is False and got["reply"]["error"]["code"] == "peer_refused", (name, got)
            assert c.call("status", actor="test", purpose="still serving") is not None
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(60)
        for p in d.iterdir():
            p.unlink()
        d.rmdir()

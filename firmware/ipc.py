"""The local interfaces between the box's processes: versioned, length-prefixed JSON over Unix sockets.

Framing (``docs/architecture.md``, "Processes"): every frame is a 4-byte big-endian length and
that many bytes, at most ``MAX_FRAME`` (1 MiB). A request is one JSON object::

    {"v": 1, "verb": "status", "actor": "tech", "purpose": "status page", "args": {...}}

and the reply is one JSON object, ``{"v": 1, "ok": true, "result": ...}`` or
``{"v": 1, "ok": false, "error": {"code": "...", "message": "한국어 · English"}}``. A reply
with ``"stream": "bytes"`` is followed by binary frames and an empty frame, then a JSON
trailer (``ok`` again: an error found mid-stream is reported there); ``"stream": "json"`` is
followed by JSON frames until the client closes the connection or an empty frame ends the
stream (the recorder's ``levels``).

Why this and not a library: ``multiprocessing.connection`` unpickles what it receives (a
peer that is taken over could run code in the keeper); gRPC or D-Bus bring a daemon or a
compiler for four verbs. Length-prefixed JSON needs only the standard library, is read with
bounded memory, and a malformed frame is an error reply, never a crash.

Who may connect is decided by the kernel: each server checks ``SO_PEERCRED`` (the uid of the
process that connected) against its allow list, on top of the socket file's mode (0660).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import NokboxError

log = logging.getLogger(__name__)

VERSION = 1
MAX_FRAME = 1 << 20          # 1 MiB: a bigger request is refused before it is read
MAX_CONNECTIONS = 32         # per server; each connection has one thread
_HEADER = struct.Struct(">I")
_UNIX_PATH_MAX = 107


class IpcError(NokboxError):
    """A request could not be carried out; ``code`` is a short machine word, the message is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ServiceUnavailable(IpcError):
    """The other process is not there (not running, restarting) or did not answer in time."""


class ProtocolError(IpcError):
    """A frame that is not a well-formed message of this protocol."""


# -- frames ----------------------------------------------------------------------------------
def _recv_exact(sock: socket.socket, n: int, *, started: bool = False) -> bytes:
    """``n`` bytes; EOFError at a clean end before any byte of a frame, ProtocolError inside one."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 16))
        if not chunk:
            if buf or started:
                raise ProtocolError("truncated", "프레임이 중간에 끊겼습니다 · frame truncated")
            raise EOFError
        buf += chunk
    return bytes(buf)


def send_frame(sock: socket.socket, payload: bytes) -> None:
    if len(payload) > MAX_FRAME:
        raise ProtocolError("too_large", f"메시지가 너무 큽니다 · message over {MAX_FRAME} bytes")
    sock.sendall(_HEADER.pack(len(payload)) + payload)


def recv_frame(sock: socket.socket) -> bytes:
    """One frame's payload; EOFError at a clean end of the connection."""
    (n,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    if n > MAX_FRAME:
        raise ProtocolError("too_large", f"메시지가 너무 큽니다 · message of {n} bytes, the limit is {MAX_FRAME}")
    return _recv_exact(sock, n, started=True) if n else b""


def send_msg(sock: socket.socket, obj: dict) -> None:
    send_frame(sock, json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def decode_msg(payload: bytes) -> dict:
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("malformed", "JSON이 아닙니다 · not a JSON message") from None
    if not isinstance(obj, dict):
        raise ProtocolError("malformed", "JSON 객체가 아닙니다 · not a JSON object")
    return obj


def recv_msg(sock: socket.socket) -> dict:
    return decode_msg(recv_frame(sock))


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end, as the kernel recorded it at connect()."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


# -- server ----------------------------------------------------------------------------------
@dataclass
class Request:
    verb: str
    actor: str
    purpose: str
    args: dict
    uid: int


@dataclass
class Stream:
    """What a handler returns to stream: ``kind`` "bytes" (an iterable of bytes, then a trailer)
    or "json" (an iterable of dicts, until the client goes away)."""

    kind: str
    head: dict
    items: Iterable
    trailer: Callable[[], dict] = field(default=lambda: {})
    close: Callable[[], None] = field(default=lambda: None)


Handler = Callable[[Request], Any]


def _error(code: str, message: str) -> dict:
    return {"v": VERSION, "ok": False, "error": {"code": code, "message": message}}


class Server:
    """A Unix stream socket server: one thread per connection (bounded), many requests per connection."""

    def __init__(self, path: Path, handlers: dict[str, Handler], *, name: str,
                 allow_uids: Iterable[int] = (), mode: int = 0o660) -> None:
        self.path = Path(path)
        self.handlers = dict(handlers)
        self.name = name
        self.allow = {os.getuid(), *allow_uids}
        self.mode = mode
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()  # guards _conns and the counters
        self.refused_peers = 0
        self.bad_requests = 0
        self.requests = 0

    def start(self) -> "Server":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if len(os.fsencode(self.path)) > _UNIX_PATH_MAX:
            raise IpcError("path", f"{self.path}: socket path longer than {_UNIX_PATH_MAX} bytes (set ipc.run_dir)")
        if self.path.exists() or self.path.is_symlink():
            if _answers(self.path):
                raise IpcError("in_use", f"another {self.name} is already serving {self.path}")
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o777 & ~self.mode)  # the file is never wider than mode, not even for an instant
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, self.mode)
        sock.listen(16)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, name=f"{self.name}-ipc", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if self._sock is not None:
            self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        try:
            if self.path.exists():
                self.path.unlink()
        except OSError:
            pass

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.1)
                continue
            if not self._slots.acquire(blocking=False):
                self._refuse(conn, "busy", "연결이 너무 많습니다 · too many connections")
                continue
            threading.Thread(target=self._serve, args=(conn,), name=f"{self.name}-conn", daemon=True).start()

    def _refuse(self, conn: socket.socket, code: str, message: str) -> None:
        try:
            conn.settimeout(1.0)
            send_msg(conn, _error(code, message))
        except OSError:
            pass
        finally:
            conn.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            uid = peer_uid(conn)
            if uid not in self.allow:
                with self._lock:
                    self.refused_peers += 1
                log.warning("%s: refused a connection from uid %d (not in the allow list)", self.name, uid)
                self._refuse(conn, "peer_refused", f"이 사용자(uid {uid})는 {self.name}에 연결할 수 없습니다 · "
                                                   f"uid {uid} may not connect to the {self.name}")
                return
            with self._lock:
                self._conns.add(conn)
            conn.settimeout(None)
            while not self._stop.is_set():
                try:
                    payload = recv_frame(conn)
                except EOFError:
                    return
                except ProtocolError as exc:  # oversized or truncated: the stream cannot be resynchronised
                    self._count_bad()
                    send_msg(conn, _error(exc.code, exc.message))
                    return
                if not self._handle(conn, payload, uid):
                    return
        except OSError:
            return  # the peer went away
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()
            self._slots.release()

    def _count_bad(self) -> None:
        with self._lock:
            self.bad_requests += 1

    def _handle(self, conn: socket.socket, payload: bytes, uid: int) -> bool:
        """Answer one request; False when the connection should end (after a stream)."""
        try:
            msg = decode_msg(payload)
            req = self._check(msg, uid)
        except ProtocolError as exc:
            self._count_bad()
            send_msg(conn, _error(exc.code, exc.message))
            return True
        with self._lock:
            self.requests += 1
        try:
            result = self.handlers[req.verb](req)
        except IpcError as exc:
            send_msg(conn, _error(exc.code, exc.message))
            return True
        except Exception as exc:  # noqa: BLE001 - a handler's bug is an error reply, never a dead server
            log.exception("%s: %s failed", self.name, req.verb)
            send_msg(conn, _error("internal", f"내부 오류 · internal error in {req.verb}: {type(exc).__name__}"))
            return True
        if isinstance(result, Stream):
            self._stream(conn, result)
            return False
        send_msg(conn, {"v": VERSION, "ok": True, "result": result})
        return True

    def _check(self, msg: dict, uid: int) -> Request:
        if msg.get("v") != VERSION:
            raise ProtocolError("version", f"프로토콜 버전이 다릅니다 · protocol version {msg.get('v')!r}, "
                                           f"this {self.name} speaks {VERSION}")
        verb, actor, purpose, args = msg.get("verb"), msg.get("actor"), msg.get("purpose"), msg.get("args", {})
        if not isinstance(verb, str) or verb not in self.handlers:
            raise ProtocolError("unknown_verb", f"알 수 없는 요청 · unknown verb {verb!r}")
        if not isinstance(actor, str) or not actor or len(actor) > 64:
            raise ProtocolError("malformed", "요청자(actor)가 없습니다 · every request names its actor")
        if not isinstance(purpose, str) or not purpose or len(purpose) > 500:
            raise ProtocolError("malformed", "목적(purpose)이 없습니다 · every request names its purpose")
        if not isinstance(args, dict):
            raise ProtocolError("malformed", "args는 객체여야 합니다 · args must be an object")
        return Request(verb, actor, purpose, args, uid)

    def _stream(self, conn: socket.socket, st: Stream) -> None:
        try:
            send_msg(conn, {"v": VERSION, "ok": True, "stream": st.kind, "result": st.head})
            if st.kind == "json":
                for item in st.items:
                    send_msg(conn, item)
                send_frame(conn, b"")  # a stream with an end (``seconds``) says so
                return
            try:
                for chunk in st.items:
                    for i in range(0, len(chunk), MAX_FRAME):
                        if chunk[i:i + MAX_FRAME]:
                            send_frame(conn, chunk[i:i + MAX_FRAME])
            except IpcError as exc:
                send_frame(conn, b"")
                send_msg(conn, _error(exc.code, exc.message))
                return
            send_frame(conn, b"")
            send_msg(conn, {"v": VERSION, "ok": True, "result": st.trailer()})
        except OSError:
            pass  # the client went away mid-stream
        finally:
            st.close()


def _answers(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


# -- client ----------------------------------------------------------------------------------
SERVICE_LABELS = {"recorder": "녹음기 · recorder", "keeper": "키 관리자 · key keeper"}


class Client:
    """One process's view of another's socket. A connection per call; thread-safe."""

    def __init__(self, path: Path, name: str, timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.name = name
        self.timeout = timeout

    def _down(self, why: str) -> ServiceUnavailable:
        label = SERVICE_LABELS.get(self.name, self.name)
        return ServiceUnavailable("unavailable", f"{label} 프로세스에 연결할 수 없습니다 · the {self.name} "
                                                 f"is not answering ({why}); try again shortly")

    def _connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(str(self.path))
        except FileNotFoundError:
            s.close()
            raise self._down("not running") from None
        except OSError as exc:
            s.close()
            raise self._down(os.strerror(exc.errno) if exc.errno else str(exc)) from None
        return s

    def _request(self, s: socket.socket, verb: str, actor: str, purpose: str, args: dict) -> dict:
        try:
            send_msg(s, {"v": VERSION, "verb": verb, "actor": actor, "purpose": purpose, "args": args})
            reply = recv_msg(s)
        except socket.timeout:
            raise self._down(f"no answer within {self.timeout:g} s") from None
        except (EOFError, ConnectionError):
            raise self._down("connection closed") from None
        except OSError as exc:
            raise self._down(os.strerror(exc.errno) if exc.errno else str(exc)) from None
        if not reply.get("ok"):
            err = reply.get("error") or {}
            raise IpcError(str(err.get("code", "error")), str(err.get("message", "error")))
        return reply

    def call(self, verb: str, *, actor: str, purpose: str, **args) -> Any:
        s = self._connect()
        try:
            return self._request(s, verb, actor, purpose, args).get("result")
        finally:
            s.close()

    def _open_stream(self, kind: str, verb: str, actor: str, purpose: str, args: dict):
        """(socket, head reply) of a request the server answers with a ``kind`` stream."""
        s = self._connect()
        try:
            head = self._request(s, verb, actor, purpose, args)
        except BaseException:
            s.close()
            raise
        if head.get("stream") != kind:
            s.close()
            raise ProtocolError("malformed", f"{verb}: the {self.name} did not stream")
        return s, head

    def _frames(self, s: socket.socket) -> Iterator[bytes]:
        """The stream's frames up to its empty end frame; a cut is ServiceUnavailable."""
        while True:
            try:
                b = recv_frame(s)
            except (EOFError, OSError):
                raise self._down("stream cut") from None
            if not b:
                return
            yield b

    def stream_bytes(self, verb: str, *, actor: str, purpose: str, **args) -> tuple[dict, Iterator[bytes]]:
        """(head, chunks): the chunks iterator raises IpcError if the server reports an error at the end."""
        s, head = self._open_stream("bytes", verb, actor, purpose, args)

        def chunks() -> Iterator[bytes]:
            try:
                yield from self._frames(s)
                try:
                    trailer = recv_msg(s)
                except (EOFError, OSError):
                    raise self._down("stream cut") from None
                if not trailer.get("ok"):
                    err = trailer.get("error") or {}
                    raise IpcError(str(err.get("code", "error")), str(err.get("message", "error")))
            finally:
                s.close()

        return head.get("result") or {}, chunks()

    def stream_json(self, verb: str, *, actor: str, purpose: str, **args) -> Iterator[dict]:
        """Messages until the caller stops iterating (closing the connection ends the server's stream)."""
        s, _ = self._open_stream("json", verb, actor, purpose, args)

        def items() -> Iterator[dict]:
            try:
                for payload in self._frames(s):
                    yield decode_msg(payload)
            finally:
                s.close()

        return items()


def run_dir(data_dir: Path, cfg) -> Path:
    """Where the sockets live: ``ipc.run_dir``, else DATA/run."""
    configured = getattr(getattr(cfg, "ipc", None), "run_dir", "") or ""
    return Path(configured) if configured else Path(data_dir) / "run"


def allowed_uids(names: Iterable[str | int]) -> set[int]:
    """uids for the allow list: numbers as they are, names through the password database."""
    import pwd

    out = set()
    for n in names:
        if isinstance(n, int) or str(n).isdigit():
            out.add(int(n))
            continue
        try:
            out.add(pwd.getpwnam(str(n)).pw_uid)
        except KeyError:
            log.warning("ipc allow list: no user %r on this system (ignored)", n)
    return out


def supervisor_view(run: Path) -> dict | None:
    """What ``nokbox run`` last wrote about its child processes (``run/supervisor.json``), or None
    when no live supervisor wrote it (systemd supervises the appliance)."""
    try:
        st = json.loads((Path(run) / "supervisor.json").read_text())
        os.kill(int(st.get("pid") or 0), 0)
    except (FileNotFoundError, ValueError, TypeError, ProcessLookupError, OverflowError):
        return None
    except PermissionError:
        pass  # alive, another user's
    return st if isinstance(st, dict) else None

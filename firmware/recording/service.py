"""The recorder's socket (``DATA/run/recorder.sock``): what the page and ``nokbox status`` may ask it.

Verbs (``firmware/ipc.py`` frames): ``status`` (``Recorder.status()``: no personal data),
``levels`` (a stream of per-line level and state at ``ipc.levels_hz``, for live meters),
``reload`` (re-read the config; a bad file is refused and the running one kept),
``notice_test`` (play the notice on a line, audited with the acting user) and ``test_call`` (record
a few seconds of a line and play them back onto it through the notice output; the sample never
leaves the recorder). Nothing here can
read a call or a number: the recorder holds public recipients only.
"""

from __future__ import annotations

import time

from ..errors import ConfigError
from ..ipc import IpcError, Request, Server, Stream, allowed_uids, run_dir

SOCKET = "recorder.sock"


class RecorderService:
    """Serves one running ``Recorder`` on its socket."""

    def __init__(self, rec, *, path=None) -> None:
        self.rec = rec
        cfg = rec.cfg
        self.path = path or run_dir(rec.data_dir, cfg) / SOCKET
        self.server = Server(self.path, {
            "status": self._status,
            "levels": self._levels,
            "reload": self._reload,
            "notice_test": self._notice_test,
            "test_call": self._test_call,
        }, name="recorder", allow_uids=allowed_uids(cfg.ipc.recorder_allow))

    def start(self) -> "RecorderService":
        self.server.start()
        return self

    def close(self) -> None:
        self.server.close()

    def _status(self, req: Request) -> dict:
        return self.rec.status()

    def _levels(self, req: Request) -> Stream:
        hz = req.args.get("hz", self.rec.cfg.ipc.levels_hz)
        if not isinstance(hz, (int, float)) or not 1 <= hz <= 25:
            raise IpcError("bad_args", "hz는 1~25 사이여야 합니다 · hz must be between 1 and 25")
        limit = req.args.get("seconds")
        if limit is not None and (not isinstance(limit, (int, float)) or limit <= 0):
            raise IpcError("bad_args", "seconds는 양수여야 합니다 · seconds must be positive")

        def items():
            period = 1.0 / hz
            start = nxt = time.monotonic()
            while limit is None or time.monotonic() - start < limit:
                yield self.rec.levels()
                nxt += period
                time.sleep(max(0.0, nxt - time.monotonic()))

        return Stream("json", {"hz": hz, "lines": len(self.rec.lines)}, items())

    def _reload(self, req: Request) -> dict:
        ok = self.rec.reload()
        self.rec.audit.append("config.reload", actor=req.actor, role=req.args.get("role", "-"), obj="config",
                              outcome="ok" if ok else "refused", reason=self.rec.config_error or req.purpose)
        return {"reloaded": ok, "error": self.rec.config_error}

    def _notice_test(self, req: Request) -> dict:
        channel = req.args.get("channel")
        if not isinstance(channel, int) or isinstance(channel, bool):
            raise IpcError("bad_args", "회선을 고르십시오 · choose a line (channel is an integer)")
        try:
            return self.rec.notice_test(channel)
        except ConfigError as exc:
            raise IpcError("bad_args", f"{channel}번 채널에 회선이 없습니다 · {exc}") from None


    def _test_call(self, req: Request) -> dict:
        from .recorder import LineBusy

        channel, seconds = req.args.get("channel"), req.args.get("seconds", 5.0)
        if not isinstance(channel, int) or isinstance(channel, bool):
            raise IpcError("bad_args", "회선을 고르십시오 · choose a line (channel is an integer)")
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
            raise IpcError("bad_args", "seconds는 숫자여야 합니다 · seconds must be a number")
        try:
            return self.rec.test_call(channel, float(seconds), actor=req.actor)
        except LineBusy as exc:
            raise IpcError("busy", str(exc)) from None
        except ConfigError as exc:
            raise IpcError("bad_args", str(exc)) from None


class RecorderClient:
    """The page's (and ``nokbox status``'s) handle on the recorder process; same calls as ``Recorder``."""

    def __init__(self, data_dir, cfg, *, actor: str = "system", path=None) -> None:
        from ..ipc import Client

        self.data_dir = data_dir
        self.client = Client(path or run_dir(data_dir, cfg) / SOCKET, "recorder", cfg.ipc.timeout_s)
        self.actor = actor

    def status(self, *, actor: str | None = None) -> dict:
        return self.client.call("status", actor=actor or self.actor, purpose="status")

    def levels(self, *, actor: str | None = None, hz: float | None = None, seconds: float | None = None):
        args = {k: v for k, v in (("hz", hz), ("seconds", seconds)) if v is not None}
        return self.client.stream_json("levels", actor=actor or self.actor, purpose="live meters", **args)

    def reload(self, *, actor: str | None = None, role: str = "-") -> dict:
        return self.client.call("reload", actor=actor or self.actor, purpose="config reload", role=role)

    def notice_test(self, channel: int, *, actor: str | None = None) -> dict:
        return self.client.call("notice_test", actor=actor or self.actor, purpose="notice test", channel=channel)

    def test_call(self, channel: int, seconds: float = 5.0, *, actor: str | None = None) -> dict:
        return self.client.call("test_call", actor=actor or self.actor, purpose="test call", channel=channel,
                                seconds=seconds)

"""The line map (technician): each input channel with a live level meter, its state, name, extension,
notice mode and whether it records; the notice test and the test call.

The meters are fed by server-sent events (``/api/levels``) relayed from the recorder's ``levels``
stream: the data flows one way (box → browser), EventSource reconnects by itself and goes through
the page's ordinary HTTP server and sign-in, where a WebSocket would need an upgrade waitress does
not offer and a second server. Each stream is short (``STREAM_S``) so that sign-out and the idle
limit are checked at every reconnect, and only ``MAX_STREAMS`` run at once (each holds a server thread)."""

from __future__ import annotations

import json
import threading
import time

from flask import Blueprint, Response, current_app, g, redirect, render_template, request, url_for
from werkzeug.routing import BuildError

from firmware.ipc import IpcError

from .auth import ext, requires

bp = Blueprint("lines", __name__)
STREAM_S = 30.0
MAX_STREAMS = 4
TEST_SECONDS = (3, 5, 10)
_streams = threading.BoundedSemaphore(MAX_STREAMS)


def _recorder():
    return current_app.config["RECORDER"]


def _settings_url(**kw) -> str:
    try:
        return url_for("settings.lines", **kw)
    except BuildError:  # the settings page is not part of this build
        return ""


def _page(message: str = "", error: str = "", code: int = 200):
    st = _recorder().status()
    return render_template("lines.html", status=st, lines=st["lines"], test_seconds=TEST_SECONDS,
                           settings_url=_settings_url(), message=message, error=error,
                           hz=ext().cfg.ipc.levels_hz), code


@bp.get("/lines")
@requires("config.view")
def index():
    msg = {"test": "시험 통화를 시작했습니다. 수화기에 대고 말하면 끝난 뒤 그대로 들려 드립니다 · test call started: "
                   "speak into the handset; it is played back to the line when the time is up"}.get(request.args.get("ok", ""), "")
    return _page(message=msg)


@bp.post("/lines/test-call")
@requires("config.edit")
def test_call():
    f = request.form
    try:
        channel = int(f.get("channel", ""))
        seconds = int(f.get("seconds", "5"))
    except ValueError:
        return _page(error="회선과 시간을 고르십시오 · choose a line and a length", code=400)
    if seconds not in TEST_SECONDS:
        return _page(error=f"시험 통화 길이는 {', '.join(map(str, TEST_SECONDS))}초 중 하나입니다 · a test call is "
                           f"{', '.join(map(str, TEST_SECONDS))} s", code=400)
    if channel not in {ln["channel"] for ln in _recorder().status()["lines"]}:
        return _page(error="없는 회선입니다 · there is no such line", code=400)
    try:
        _recorder().test_call(channel, seconds, actor=g.user.name)
    except IpcError as exc:  # the recorder process refused (busy line, test running)
        return _page(error=exc.message, code=409)
    except Exception as exc:  # noqa: BLE001 - the in-process recorder raises its own errors
        from firmware.errors import NokboxError

        if not isinstance(exc, NokboxError):
            raise
        return _page(error=str(exc), code=409)
    return redirect(url_for("lines.index", ok="test"))


def _local_stream(rec, hz: float, seconds: float):
    """An in-process recorder (tests, `nokbox serve`) read at ``hz`` like the socket's stream."""
    period, start = 1.0 / hz, time.monotonic()
    nxt = start
    while time.monotonic() - start < seconds:
        yield rec.levels()
        nxt += period
        time.sleep(max(0.0, nxt - time.monotonic()))


@bp.get("/api/levels")
@requires("config.view")
def events():
    """Server-sent events: one ``data:`` line of JSON per reading (channel, level dBFS, state, test phase)."""
    rec, hz, who = _recorder(), ext().cfg.ipc.levels_hz, g.user.name
    if not _streams.acquire(blocking=False):
        return Response("retry: 5000\n\n", status=503, mimetype="text/event-stream")
    try:
        if hasattr(rec, "client"):  # the recorder process, over its socket
            source = rec.levels(actor=who, hz=hz, seconds=STREAM_S)
        else:
            source = _local_stream(rec, hz, STREAM_S)
    except BaseException:
        _streams.release()
        raise

    def gen():
        try:
            yield "retry: 1000\n\n"
            for item in source:
                yield "data: " + json.dumps(item, ensure_ascii=False, separators=(",", ":")) + "\n\n"
        except IpcError:
            yield "event: down\ndata: {}\n\n"
        finally:
            close = getattr(source, "close", None)
            if close:
                close()
            _streams.release()

    return Response(gen(), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


events._nokbox_poll = True  # a meter is not use: the idle sign-out keeps running while it streams

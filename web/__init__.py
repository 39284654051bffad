"""The local admin page (Flask), one blueprint per area. Binds to localhost unless told.

In ``nokbox web`` the page is its own process: it reaches the recorder and the key keeper only
through their sockets (``RecorderClient``, ``KeeperClient``) and never opens DATA/keys,
DATA/calls or the device secret. Tests may hand it an in-process ``Recorder`` or ``Keeper``
instead: both offer the same calls."""

from __future__ import annotations

import logging
import threading

from flask import Flask

log = logging.getLogger(__name__)


def create_app(recorder, data_dir=None, cfg=None, clock=None, keeper=None) -> Flask:
    """The admin app over the recorder (``status()``, ``notice_test()``) and the key keeper
    (``masked()``, ``approve()``, ``open_call()``, …; by default the keeper process's socket);
    every page needs sign-in."""
    from firmware.ipc import IpcError, ServiceUnavailable

    app = Flask(__name__)
    data_dir = data_dir or recorder.data_dir
    cfg = cfg or recorder.cfg
    if keeper is None:
        from firmware.vault.keeper import KeeperClient

        keeper = KeeperClient(data_dir, cfg)
    app.config["RECORDER"] = recorder
    app.config["KEEPER"] = keeper
    app.json.ensure_ascii = False
    from . import auth, calls, notice, release, review, users
    from .status import bp as status_bp

    auth.init_app(app, data_dir, cfg, clock)
    app.register_blueprint(status_bp)
    app.register_blueprint(users.bp)
    app.register_blueprint(review.bp)
    app.register_blueprint(notice.bp)
    app.register_blueprint(calls.bp)
    app.register_blueprint(release.bp)

    @app.template_filter("kst")
    def _kst(iso):
        from firmware.index import KST, parse_utc

        return parse_utc(iso).astimezone(KST).strftime("%Y-%m-%d %H:%M") if iso else ""

    @app.errorhandler(ServiceUnavailable)
    def _down(exc):
        """The recorder or the keeper is down or restarting: say so, never a stack trace."""
        return _refusal(503, exc.message)

    @app.errorhandler(IpcError)
    def _refused(exc):
        return _refusal(502 if exc.code in ("internal", "malformed", "version") else 409, exc.message)

    @app.after_request
    def _headers(resp):
        resp.headers.setdefault("Content-Security-Policy", "default-src 'self'; style-src 'self'")
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    return app


def _refusal(code: int, message: str):
    from flask import jsonify, render_template, request

    if request.path.startswith("/api/"):
        return jsonify(error=message), code
    return render_template("error.html", code=code, message=message), code


class _Server:
    """A waitress server on its own thread."""

    def __init__(self, app: Flask, host: str, port: int) -> None:
        from waitress.server import create_server

        self._srv = create_server(app, host=host, port=port, threads=4, ident="nokbox")
        self.port = self._srv.effective_port
        self._thread = threading.Thread(target=self._srv.run, name="web", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving. The sockets are closed by the loop thread itself (a trigger thunk), so
        its select() never sees a descriptor closed under it (EBADF in the web thread)."""
        from waitress import wasyncore

        srv = self._srv

        def shut() -> None:
            wasyncore.close_all(srv._map, ignore_all=True)  # listener, channels, trigger: the loop ends

        if self._thread.is_alive():
            srv.trigger.pull_trigger(shut)
            self._thread.join(5.0)
        if self._thread.is_alive():  # the loop did not take the thunk: close from here as before
            srv.close()
            self._thread.join(5.0)
        srv.task_dispatcher.shutdown()


def serve(recorder, host: str = "127.0.0.1", port: int = 8080, **app_kw) -> _Server:
    """Start serving the admin page in the background; ``close()`` stops it."""
    return _Server(create_app(recorder, **app_kw), host, port)

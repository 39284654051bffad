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


def create_app(recorder, data_dir=None, cfg=None, clock=None, keeper=None, config_path=None) -> Flask:
    """The admin app over the recorder (``status()``, ``notice_test()``) and the key keeper
    (``masked()``, ``approve()``, ``open_call()``, …; by default the keeper process's socket);
    every page needs sign-in."""
    from flask import request
    from werkzeug.exceptions import HTTPException

    from firmware.ipc import IpcError, ServiceUnavailable

    app = Flask(__name__)
    data_dir = data_dir or recorder.data_dir
    cfg = cfg or recorder.cfg
    if keeper is None:
        from firmware.vault.keeper import KeeperClient

        keeper = KeeperClient(data_dir, cfg)
    app.config["RECORDER"] = recorder
    app.config["KEEPER"] = keeper
    # the file the settings page writes (None: the page shows the settings but cannot change them)
    app.config["CONFIG_PATH"] = config_path or getattr(recorder, "config_path", None)
    app.json.ensure_ascii = False
    from . import auth, calls, lines, notice, release, review, users
    from .status import bp as status_bp

    auth.init_app(app, data_dir, cfg, clock)
    app.register_blueprint(status_bp)
    app.register_blueprint(users.bp)
    app.register_blueprint(review.bp)
    app.register_blueprint(notice.bp)
    app.register_blueprint(calls.bp)
    app.register_blueprint(lines.bp)
    app.register_blueprint(release.bp)
    from . import wizard

    app.register_blueprint(wizard.bp)
    from . import setupcode

    app.register_blueprint(setupcode.bp)
    from . import settings

    app.register_blueprint(settings.bp)
    from . import health

    health.init_app(app)

    from .labels import LABELS, label

    app.jinja_env.filters["label"] = label
    app.jinja_env.globals["LABELS"] = LABELS

    @app.context_processor
    def _site():
        return {"box_office": app.extensions["nokbox"].cfg.release.office}

    @app.template_filter("kst")
    def _kst(iso):
        from firmware.index import KST, parse_utc

        return parse_utc(iso).astimezone(KST).strftime("%Y-%m-%d %H:%M") if iso else ""

    @app.errorhandler(HTTPException)
    def _http(exc):
        """Every refusal Werkzeug raises (404, 405, 413, …) as a Korean page, never its English default."""
        return _refusal(exc.code or 500, HTTP_MESSAGES.get(exc.code, f"요청을 처리할 수 없습니다 · the request "
                                                                    f"cannot be handled ({exc.code})"))

    @app.errorhandler(Exception)
    def _crash(exc):
        """A fault in the page: logged here with its traceback, never shown to the browser."""
        if isinstance(exc, HTTPException):
            return _http(exc)
        log.exception("page %s %s failed", request.method, request.path)
        return _refusal(500, HTTP_MESSAGES[500])

    @app.errorhandler(ServiceUnavailable)
    def _down(exc):
        """The recorder or the keeper is down or restarting: say so, never a stack trace."""
        return _refusal(503, exc.message)

    @app.errorhandler(IpcError)
    def _refused(exc):
        return _refusal(502 if exc.code in ("internal", "malformed", "version") else 409, exc.message)

    @app.after_request
    def _headers(resp):
        resp.headers.setdefault("Content-Security-Policy", "default-src 'self'; style-src 'self'; script-src 'self'; "
                                "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    return app


HTTP_MESSAGES = {
    400: "요청이 잘못되었습니다 · the request is malformed",
    403: "권한이 없습니다 · you may not open this page",
    404: "없는 페이지입니다. 주소를 확인하십시오 · there is no such page; check the address",
    405: "이 주소는 그 방식으로 열 수 없습니다 · this page cannot be opened that way",
    409: "지금 상태에서는 할 수 없습니다 · not possible in the current state",
    413: "보낸 내용이 너무 큽니다 · the upload is too large",
    500: "장치 내부 오류입니다. 기록되었습니다; 관리자에게 알리십시오 · an internal error; it was logged, tell the "
         "administrator",
    503: "잠시 사용할 수 없습니다. 잠시 후 다시 시도하십시오 · unavailable for a moment; try again shortly",
}


def _refusal(code: int, message: str):
    from flask import jsonify, render_template, request

    if request.path.startswith("/api/"):
        return jsonify(error=message), code
    return render_template("error.html", code=code, message=message), code


class _Server:
    """A waitress server on its own thread."""

    def __init__(self, app: Flask, host: str, port: int) -> None:
        from waitress.server import create_server

        from .auth import largest_body

        self.app = app
        # Behind the appliance's nginx (web.behind_proxy) the client's address and https come from
        # its X-Forwarded-For / -Proto, trusted from nginx on this box only (one hop). waitress
        # handles them itself: it clears X-Forwarded-* from anyone it does not trust, so a WSGI
        # middleware after it (werkzeug's ProxyFix) never sees them and every LAN client would look
        # like the box itself (tests/test_appliance.py, through waitress). Elsewhere the headers are
        # cleared and ignored.
        proxy = {}
        if self.app.extensions["nokbox"].cfg.web.behind_proxy:
            proxy = {"trusted_proxy": "127.0.0.1", "trusted_proxy_count": 1,
                     "trusted_proxy_headers": {"x-forwarded-for", "x-forwarded-proto"},
                     "log_untrusted_proxy_headers": True}
        # waitress buffers a whole body (spooling it to disk) before the app sees it: it refuses one
        # longer than any route takes; each route's own, smaller limit is checked before it is read
        self._srv = create_server(app, host=host, port=port, threads=8, ident="nokbox",
                                  max_request_body_size=largest_body(app), clear_untrusted_proxy_headers=True,
                                  **proxy)
        self.port = self._srv.effective_port
        self._thread = threading.Thread(target=self._srv.run, name="web", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving. The sockets are closed by the loop thread itself (a trigger thunk), so
        its select() never sees a descriptor closed under it (EBADF in the web thread)."""
        from waitress import wasyncore

        srv = self._srv
        if getattr(self, "watch_stop", None) is not None:
            self.watch_stop.set()

        def shut() -> None:
            wasyncore.close_all(srv._map, ignore_all=True)  # listener, channels, trigger: the loop ends

        if self._thread.is_alive():
            srv.trigger.pull_trigger(shut)
            self._thread.join(5.0)
        if self._thread.is_alive():  # the loop did not take the thunk: close from here as before
            srv.close()
            self._thread.join(5.0)
        srv.task_dispatcher.shutdown()


def wants_tls(tls: str, host: str) -> bool:
    """HTTPS unless the page is only on loopback and not told to: the LAN always gets HTTPS."""
    import ipaddress

    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    return tls == "on" or not loopback


def serve(recorder, host: str = "127.0.0.1", port: int = 8080, https_port: int | None = None, **app_kw):
    """Start serving the admin page in the background; ``close()`` stops it. On the LAN (or with
    ``web.tls = "on"``) it is HTTPS on ``https_port`` with ``port`` redirecting to it (web/tls.py)."""
    app = create_app(recorder, **app_kw)
    x = app.extensions["nokbox"]
    if wants_tls(x.cfg.web.tls, host):
        from .tls import TlsServer

        srv = TlsServer(app, host, port, x.cfg.web.https_port if https_port is None else https_port, x.data_dir)
    else:
        srv = _Server(app, host, port)
    from .health import start_watch

    srv.watch_stop = start_watch(app)  # alarms are judged while nobody looks too; close() stops it
    return srv

"""Sign-in for the admin page: first-run set-up, sign-in/out, own account, and the permission gate.

Sessions are server-side (``accounts.sqlite``); the cookie holds only a random token. Every
POST carries a CSRF token (the session's, or before sign-in a double-submit cookie). Every view
declares the permission it needs with ``@requires`` or ``@public``; a refusal is logged.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import ipaddress
import secrets
from functools import wraps
from types import SimpleNamespace

from flask import (Blueprint, Flask, abort, current_app, g, jsonify, make_response, redirect, render_template,
                   request, url_for)

from firmware.people.accounts import ROLE_LABELS, ROLES, Accounts, AuthError, PasswordPolicyError, can
from firmware.audit import AuditLog
from firmware.errors import NokboxError
from firmware.syslog import SyslogForwarder

log = logging.getLogger(__name__)
bp = Blueprint("auth", __name__)
COOKIE = "nokbox_session"  # over plain HTTP (the box's own loopback)
SECURE_COOKIE = "__Host-nokbox_session"  # over HTTPS: Secure, Path=/, no Domain, as the prefix demands


def cookie_name() -> str:
    """The session cookie of this request: ``__Host-`` prefixed whenever the page is served over HTTPS."""
    return SECURE_COOKIE if request.is_secure else COOKIE


def session_token() -> str:
    return request.cookies.get(cookie_name(), "")
PRE_CSRF = "nokbox_csrf"


def init_app(app: Flask, data_dir, cfg, clock=None) -> None:
    """Attach accounts and the audit log to ``app`` and gate every request."""
    audit = AuditLog(data_dir, clock=clock, every=cfg.audit.seal_every,
                     on_seal=SyslogForwarder.from_config(cfg.audit))
    app.extensions["nokbox"] = SimpleNamespace(accounts=Accounts(data_dir, cfg.auth, audit, clock), audit=audit,
                                               cfg=cfg, data_dir=data_dir)
    app.before_request(_load)
    app.after_request(_set_pre_csrf)
    app.jinja_env.globals.update(csrf_token=csrf_token, can=lambda perm: can(g.get("user"), perm),
                                 ROLE_LABELS=ROLE_LABELS)
    app.register_blueprint(bp)
    if app.extensions["nokbox"].accounts.count() == 0:
        log.warning("no accounts yet: open /setup on the box itself or run 'nokbox user setup' first")


def ext() -> SimpleNamespace:
    return current_app.extensions["nokbox"]


def source() -> str:
    return request.remote_addr or "unknown"


# the days a page can be asked for: a call list or a review of year 1 or 9999 has nothing to show,
# and one day before date.min (the "previous day" link) does not exist
FIRST_DAY, LAST_DAY = dt.date(2000, 1, 1), dt.date(9998, 12, 31)


def day_arg(text: str) -> dt.date:
    """A YYYY-MM-DD date from a URL, or a 400 page that says what is wrong (Korean · English)."""
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:
        day = None
    if day is None or not FIRST_DAY <= day <= LAST_DAY:
        abort(make_response(render_template(
            "error.html", code=400, message=f"날짜는 {FIRST_DAY}부터 {LAST_DAY}까지의 YYYY-MM-DD입니다 · a date is "
                                            f"YYYY-MM-DD from {FIRST_DAY} to {LAST_DAY}"), 400))
    return day


def csrf_token() -> str:
    sess = g.get("sess")
    if sess is not None:
        return sess.csrf
    return request.cookies.get(PRE_CSRF) or g.setdefault("pre_csrf", secrets.token_urlsafe(32))


def _set_pre_csrf(resp):
    if g.get("pre_csrf"):
        resp.set_cookie(PRE_CSRF, g.pre_csrf, httponly=True, samesite="Strict", secure=request.is_secure)
    return resp


# request bodies: a form is small; only the routes that take a file take more, and no more than
# that file's limit (the announcement: MAX_SECONDS of 48 kHz stereo 16-bit WAV; a request: its scans)
FORM_LIMIT = 256 * 1024


def largest_body(app: Flask) -> int:
    """The largest body any route takes: the server (waitress) refuses a longer one before buffering it."""
    with app.app_context():
        return max(body_limit(e) for e in ("notice.upload", "release.create", None))


def body_limit(endpoint: str | None) -> int:
    from firmware.recording.notice import MAX_SECONDS

    if endpoint == "notice.upload":
        return int(MAX_SECONDS * 48000 * 2 * 2) + 64 * 1024
    if endpoint == "release.create":
        rc = ext().cfg.release
        return int(rc.attachment_max_mb * 1024 * 1024 * rc.attachments_max) + FORM_LIMIT
    return FORM_LIMIT


def _too_large(limit: int):
    return render_template("error.html", code=413, message=f"보낸 내용이 너무 큽니다 (최대 {limit / 1048576:.1f} MB) · "
                           f"the upload is too large (at most {limit / 1048576:.1f} MB)"), 413


def _load():
    """Before every request: the body's size limit (refused before it is read); who is signed in;
    a POST to a signed-in page from nobody refused unread; first-run redirect; CSRF on POST."""
    g.user = g.sess = None
    if request.endpoint == "static":
        return None
    x = ext()
    limit = body_limit(request.endpoint)
    request.max_content_length = limit  # also bounds a chunked body while it is read
    request.max_form_memory_size = min(limit, FORM_LIMIT)
    if request.content_length is not None and request.content_length > limit:
        return _too_large(limit)
    token = session_token()
    view = current_app.view_functions.get(request.endpoint)
    poll = request.headers.get("X-Nokbox-Poll") or getattr(view, "_nokbox_poll", False)
    found = x.accounts.session(token, source=source(), touch=not poll)
    if found:
        g.user, g.sess = found
    if request.method == "POST" and g.user is None and view is not None and \
            getattr(view, "_nokbox_perm", None) is not None:
        return _sign_in_first()  # nobody is signed in: the body is never read for a page that needs a person
    if request.method == "POST":
        expected = g.sess.csrf if g.sess else request.cookies.get(PRE_CSRF, "")
        given = request.form.get("csrf", "")
        if not expected or not hmac.compare_digest(expected, given):
            x.audit.append("access.csrf", actor=g.user.name if g.user else "-", role="-", obj=request.path,
                           outcome="refused", reason="missing or wrong CSRF token", source=source())
            return render_template("error.html", code=400, message="요청이 만료되었습니다. 다시 시도하십시오 · "
                                   "the form expired or did not come from this page; try again"), 400
    from .wizard import gate

    return gate()  # first run: every page but the wizard's current step redirects to it (web/wizard.py)


def _sign_in_first():
    """The answer to a signed-out visitor: 401 for the API, else the sign-in page (back here after, for a GET)."""
    if request.path.startswith("/api/"):
        return jsonify(error="sign in required"), 401
    return redirect(url_for("auth.login", next=request.full_path if request.method == "GET" else None))


def public(view):
    view._nokbox_perm = None
    return view


def requires(perm: str):
    """The view needs ``perm``: 401/redirect when signed out, 403 (logged) when not allowed."""

    def deco(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            user = g.get("user")
            if user is None:
                return _sign_in_first()
            try:
                ext().accounts.authorize(user, perm, obj=f"{request.method} {request.path}", source=source())
            except AuthError:
                if request.path.startswith("/api/"):
                    return jsonify(error="forbidden"), 403
                return render_template("error.html", code=403, message="권한이 없습니다 · you may not open this "
                                       f"page ({perm})"), 403
            return view(*args, **kwargs)

        wrapper._nokbox_perm = perm
        return wrapper

    return deco


def _landing(user) -> str:
    if can(user, "audit.review") and not can(user, "users.manage"):
        return url_for("review.index")
    return url_for("status.page")


def safe_next(nxt: str) -> str:
    """Where to go after sign-in: a path on this box, or "" (the landing page). Browsers drop tabs and
    newlines from a URL and read ``\\`` as ``/``, so ``/\t/evil.example`` or ``/\\evil.example`` would
    leave the box: anything but a plain path is refused."""
    from urllib.parse import urlsplit

    if not nxt.startswith("/") or "\\" in nxt or any(ord(c) < 0x21 or ord(c) == 0x7f for c in nxt):
        return ""
    parts = urlsplit(nxt)
    if parts.scheme or parts.netloc or nxt.startswith("//"):
        return ""
    return nxt


def _signed_in(user, target: str):
    """A new session for ``user``; the session the browser came with (anyone's) ends first, so a
    cookie from before a sign-in is never good after it (session fixation, a shared browser)."""
    if g.get("user") is not None:
        ext().accounts.end_session(session_token(), user=g.user, source=source())
    token, _ = ext().accounts.start_session(user, source())
    resp = redirect(target)
    resp.set_cookie(cookie_name(), token, httponly=True, samesite="Strict", secure=request.is_secure, path="/")
    return resp


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


@bp.route("/setup", methods=["GET", "POST"])
@public
def setup():
    """The wizard's first step: the first administrator (signed in straight away). The audit
    verification key is left waiting for the wizard's last step (web/wizard.py)."""
    from .wizard import current_step, lan_refusal, step_url

    x = ext()
    if x.accounts.count():
        step = current_step()
        return redirect(step_url(step) if step else url_for("auth.login"))
    from .setupcode import from_box_or_granted

    if not from_box_or_granted():
        return lan_refusal("auth.setup")
    error = ""
    f = request.form
    if request.method == "POST":
        roles = ["admin"] + [r for r in f.getlist("roles") if r != "admin"]
        if f.get("password", "") != f.get("password2", ""):
            error = "비밀번호가 서로 다릅니다 · the passwords differ"
        else:
            try:
                user, _ = x.accounts.setup_first(f.get("name", "").strip(), f.get("password", ""), roles,
                                                 source=source(), display=f.get("display", "").strip(),
                                                 take_key=False)
            except (PasswordPolicyError, AuthError) as exc:
                error = str(exc)
            else:
                return _signed_in(user, step_url(current_step()))
    from .wizard import STEP_LABEL, STEPS

    return render_template("setup.html", error=error, roles=ROLES, min_length=x.cfg.auth.password_min_length,
                           steps=STEPS, step_label=STEP_LABEL, form={"name": f.get("name", ""),
                                                                     "display": f.get("display", "")}), \
        (400 if error else 200)


@bp.route("/login", methods=["GET", "POST"])
@public
def login():
    error = ""
    nxt = safe_next(request.args.get("next") or "")
    if request.method == "POST":
        try:
            user = ext().accounts.authenticate(request.form.get("name", "").strip(), request.form.get("password", ""),
                                               source=source())
        except AuthError as exc:
            error = str(exc)
        else:
            return _signed_in(user, nxt or _landing(user))
    return render_template("login.html", error=error), (401 if error else 200)


@bp.post("/logout")
@public
def logout():
    if g.user is not None:
        ext().accounts.end_session(session_token(), user=g.user, source=source())
    resp = redirect(url_for("auth.login"))
    resp.delete_cookie(cookie_name(), path="/", secure=request.is_secure, httponly=True, samesite="Strict")
    return resp


def _pin_context() -> dict:
    """What the PIN form says about this box: TPM or not, and without one the offline search cost."""
    from firmware.vault.keys import device_for
    from firmware.vault.sealing import MIN_PIN_DIGITS_WITHOUT_TPM, human_duration, offline_search_s

    x = ext()
    try:
        tpm = device_for(x.data_dir).name == "tpm"  # from nokbox.json: which backend, never the secret
    except NokboxError:
        tpm = False
    ctx = {"pin_tpm": tpm, "pin_min": 6 if tpm or x.cfg.vault.allow_short_pin else MIN_PIN_DIGITS_WITHOUT_TPM}
    if not tpm and g.get("user") is not None and can(g.user, "approver.pin"):
        log_n = x.cfg.vault.pin_scrypt_log_n
        ctx["pin_costs"] = [(d, human_duration(offline_search_s(d, log_n))) for d in (6, 8, 10)]
    if g.get("user") is not None and can(g.user, "approver.pin"):
        from firmware.ipc import IpcError

        try:  # the keeper owns the PIN slots: the page only asks whether there is one
            ctx["pin_slot"] = current_app.config["KEEPER"].pin_status(g.user.name)
        except IpcError as exc:
            ctx["pin_slot"] = {"error": exc.message}
    return ctx


def _account(code: int = 200, **kw):
    return render_template("account.html", **({"message": "", "error": ""} | _pin_context() | kw)), code


@bp.get("/account")
@requires("account.self")
def account():
    return _account()


@bp.post("/account/password")
@requires("account.self")
def account_password():
    f = request.form
    x = ext()
    if f.get("new", "") != f.get("new2", ""):
        return _account(400, error="새 비밀번호가 서로 다릅니다 · the new passwords differ")
    try:
        x.accounts.set_password(g.user.name, f.get("new", ""), by=g.user, old=f.get("old", ""), source=source())
    except (PasswordPolicyError, AuthError) as exc:
        return _account(400, error=str(exc))
    resp = redirect(url_for("auth.login"))
    resp.delete_cookie(cookie_name(), path="/", secure=request.is_secure, httponly=True, samesite="Strict")
    return resp


@bp.post("/account/pin")
@requires("approver.pin")
def account_pin():
    """The approver's one PIN: it approves requests and opens their slot in the key keeper. The
    keeper seals the slot; it needs the records identity, opened with the approver's current PIN,
    another approver's PIN, or the recovery passphrase (a new approver's first PIN)."""
    from firmware.ipc import IpcError
    from firmware.vault.sealing import pin_strength_problem

    f = request.form
    x = ext()
    pin = f.get("pin", "")
    ctx = _pin_context()
    problem = pin_strength_problem(pin, tpm=ctx["pin_tpm"], allow_short=x.cfg.vault.allow_short_pin,
                                   log_n=x.cfg.vault.pin_scrypt_log_n) if pin.strip().isdigit() else ""
    if problem:
        return _account(400, error=problem)
    if pin != f.get("pin2", pin):
        return _account(400, error="새 PIN이 서로 다릅니다 · the new PINs differ")
    try:
        x.accounts.authenticate(g.user.name, f.get("password", ""), source=source(), purpose="PIN change")
    except AuthError as exc:
        return _account(400, error=str(exc))
    how = f.get("via", "own")
    if how == "passphrase":
        via = {"passphrase": f.get("passphrase", "")}
    elif how == "other":
        via = {"approver": f.get("other", "").strip(), "pin": f.get("other_pin", "")}
    else:
        via = {"approver": g.user.name, "pin": f.get("old_pin", "")}
    try:
        current_app.config["KEEPER"].enroll_pin(g.user.name, pin, via)
    except IpcError as exc:
        if exc.code == "unavailable":
            raise
        return _account(400, error=exc.message)
    if not ctx["pin_tpm"] and len(pin.strip()) < 8:
        x.audit.append("auth.pin_short", actor=g.user.name, role="approver", obj=g.user.name, source=source(),
                       reason=f"{len(pin.strip())}-digit PIN without a TPM, allowed by vault.allow_short_pin")
    return _account(message="PIN이 설정되었습니다 · PIN set")

"""The one-time set-up code: the first-run wizard from the office LAN, for a box with no keyboard.

The wizard's steps answer the box itself (loopback) and nobody else, because until the first
administrator exists anyone on the LAN could become it. A box flashed from the image has no
keyboard, no desktop and no password login, so its technician is on the LAN. At every boot while
the wizard is not over, ``nokbox firstboot`` (root) makes a new random code, prints it on the
box's console (HDMI and serial) and leaves only its SHA-256 in ``setup-code`` beside the config
file (/etc/nokbox/setup-code, the page's user's, 0600). Whoever reads the console types it here,
over HTTPS: the browser then holds a set-up grant (an HttpOnly, SameSite=Strict cookie, for
``GRANT_S``) that the wizard accepts in place of loopback. Wrong codes are counted: after
``MAX_WRONG`` in ``WINDOW_S`` every try is refused until the window has passed. Every try is
audited. When the wizard is over the file is deleted and every grant forgotten.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
from pathlib import Path

from flask import Blueprint, current_app, redirect, render_template, request, url_for

from .auth import _is_loopback, ext, public, source

log = logging.getLogger(__name__)
bp = Blueprint("setupcode", __name__)

CODE_FILE = "setup-code"
COOKIE = "nokbox_setup"
GRANT_S = 3600.0  # a grant outlives a slow wizard (printing the passphrase sheet, typing it back)
MAX_WRONG, WINDOW_S = 5, 600.0
ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read off a console, typed by a person

_lock = threading.Lock()  # guards _grants and _wrong (waitress serves on several threads)
_grants: dict[str, float] = {}  # sha256(grant cookie) -> monotonic expiry
_wrong: list[float] = []  # monotonic times of wrong codes in the window


def new_code() -> str:
    """Twelve characters from a 32-letter alphabet (60 bits), in three groups: ABCD-EFGH-JKLM."""
    raw = "".join(secrets.choice(ALPHABET) for _ in range(12))
    return f"{raw[:4]}-{raw[4:8]}-{raw[8:]}"


def digest(code: str) -> str:
    norm = "".join(c for c in code.upper() if c.isalnum())
    return hashlib.sha256(f"nokbox-setup-code:{norm}".encode()).hexdigest()


def wizard_done(data: Path) -> bool:
    """The wizard's last fact, read from DATA without the page (as web/wizard.current_step: the
    records key exists and the audit verification key has left the box)."""
    data = Path(data)
    return ((data / "nokbox.json").exists() and (data / "audit/seal-state.json").exists()
            and not (data / "audit/verification-key.once").exists())


def issue(config_path: Path, data: Path, owner: str = "nokbox-web") -> str | None:
    """At boot (``nokbox firstboot``, root): a new code while the wizard is not over, its digest
    written beside the config file for the page's user (``owner``, when that user exists) alone;
    the code itself is returned for the console, never stored. None (and no file) once it is over."""
    import os
    import pwd

    path = Path(config_path).parent / CODE_FILE
    if wizard_done(data):
        path.unlink(missing_ok=True)
        return None
    code = new_code()
    tmp = path.with_name(CODE_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(digest(code) + "\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        pw = pwd.getpwnam(owner)
        os.chown(tmp, pw.pw_uid, pw.pw_gid)  # the page deletes it when the wizard is over
    except KeyError:
        pass  # a development box: one user
    os.replace(tmp, path)
    return code


def code_path() -> Path | None:
    cp = current_app.config.get("CONFIG_PATH")
    return Path(cp).parent / CODE_FILE if cp else None


def code_pending() -> bool:
    p = code_path()
    return p is not None and p.exists()


def granted() -> bool:
    """This request carries a live set-up grant."""
    token = request.cookies.get(COOKIE)
    if not token or not code_pending():
        return False
    h = hashlib.sha256(token.encode()).hexdigest()
    now = time.monotonic()
    with _lock:
        exp = _grants.get(h)
        return exp is not None and exp > now


def from_box_or_granted() -> bool:
    """The wizard may answer: the box itself, or a LAN browser that typed the console's code."""
    return _is_loopback(source()) or granted()


def wizard_over() -> None:
    """The last step is done: the code is spent and every grant with it."""
    p = code_path()
    with _lock:
        _grants.clear()
        _wrong.clear()
    if p is not None:
        try:
            p.unlink()
            ext().audit.append("setup.code", actor="-", role="-", obj="setup-code", outcome="ok",
                               reason="first-run set-up over: the set-up code deleted", source=source())
        except FileNotFoundError:
            pass
        except OSError as exc:  # never a reason to fail the page: the grants are gone all the same
            log.warning("the set-up code file %s could not be deleted (%s); delete it as root", p, exc.strerror)


@bp.route("/setup/code", methods=["GET", "POST"])
@public
def enter():
    from .wizard import current_step, step_url

    x = ext()
    step = current_step()
    if step is None:  # (current_step has spent the code)
        return redirect(url_for("auth.login"))
    if from_box_or_granted():  # the box itself needs no code; a browser that gave it goes on
        return redirect(step_url(step))
    error, status = "", 200
    if not code_pending():
        error, status = ("이 장치에는 첫 설정 코드가 없습니다: 장치를 다시 켜면 콘솔에 새 코드가 나옵니다 · this box has no "
                         "set-up code: restart it and a new one is shown on its console"), 404
    elif not request.is_secure and not _is_loopback(source()):
        error, status = "첫 설정 코드는 HTTPS로만 받습니다 · the set-up code is taken over HTTPS only", 403
    elif request.method == "POST":
        now = time.monotonic()
        with _lock:
            _wrong[:] = [t for t in _wrong if t > now - WINDOW_S]
            locked = len(_wrong) >= MAX_WRONG
        typed = request.form.get("code", "")
        want = code_path().read_text().strip()
        if locked:
            error, status = (f"틀린 코드가 {MAX_WRONG}번 입력되어 {WINDOW_S / 60:.0f}분 동안 받지 않습니다 · "
                             f"{MAX_WRONG} wrong codes: none is taken for {WINDOW_S / 60:.0f} minutes"), 429
            outcome, reason = "refused", "too many wrong set-up codes"
        elif hmac.compare_digest(digest(typed), want):
            token = secrets.token_urlsafe(32)
            with _lock:
                _grants[hashlib.sha256(token.encode()).hexdigest()] = now + GRANT_S
            x.audit.append("setup.code", actor="-", role="-", obj="setup-code", outcome="ok",
                           reason="set-up code accepted: the wizard answers this browser", source=source())
            resp = redirect(step_url(step))
            resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure, path="/",
                            max_age=int(GRANT_S))
            return resp
        else:
            with _lock:
                _wrong.append(now)
            error, status = "코드가 맞지 않습니다 · that is not the code", 403
            outcome, reason = "refused", "wrong set-up code"
        x.audit.append("setup.code", actor="-", role="-", obj="setup-code", outcome=outcome, reason=reason,
                       source=source())
    from .wizard import STEP_LABEL, STEPS

    return render_template("setup_code.html", error=error, steps=STEPS, step_label=STEP_LABEL, step=step), status

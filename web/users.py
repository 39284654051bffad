"""Accounts (administrator): create, change roles, restrict or disable with a reason, unlock, sign out."""

from __future__ import annotations

from flask import Blueprint, g, redirect, render_template, request, url_for

from firmware.people.accounts import ROLES, STATES, AuthError, PasswordPolicyError

from .auth import ext, requires, source

bp = Blueprint("users", __name__)


def _page(error: str = "", code: int = 200):
    x = ext()
    return render_template("users.html", users=x.accounts.users(), sessions=x.accounts.open_sessions(), roles=ROLES,
                           states=STATES, error=error, min_length=x.cfg.auth.password_min_length), code


def _do(fn):
    try:
        fn()
    except (PasswordPolicyError, AuthError) as exc:
        return _page(str(exc), 400)
    return redirect(url_for("users.index"))


@bp.get("/users")
@requires("users.manage")
def index():
    return _page()


@bp.post("/users")
@requires("users.manage")
def create():
    f = request.form
    return _do(lambda: ext().accounts.create(f.get("name", "").strip(), f.get("password", ""), f.getlist("roles"),
                                             by=g.user, source=source(), display=f.get("display", "").strip()))


@bp.post("/users/<name>/state")
@requires("users.manage")
def state(name):
    f = request.form
    ground = int(f["ground"]) if f.get("ground", "").isdigit() else None
    return _do(lambda: ext().accounts.set_state(name, f.get("state", ""), f.get("reason", ""), by=g.user,
                                                source=source(), ground=ground))


@bp.get("/users/<name>/notice.pdf")
@requires("users.manage")
def notice(name):
    """The written notice of the account's latest restriction (seed 001 art. 9), A4 PDF."""
    from flask import Response, abort

    from firmware.audit import parse_utc
    from firmware.release.forms import notice_input, restriction_notice_pdf

    x = ext()
    user = x.accounts.get(name)
    last = [e for e in x.audit.entries() if e["action"] == "user.restrict" and e["object"] == name]
    if user is None or not last:
        abort(404)
    e = last[-1]
    ground = (e["detail"] or {}).get("ground", 4) if isinstance(e["detail"], dict) else 4
    pdf = restriction_notice_pdf(notice_input(user, ground, e["reason"], e["actor"], parse_utc(e["time_utc"]).timestamp(),
                                              office=x.cfg.release.office, head=x.cfg.release.head_title))
    x.audit.append("user.notice", actor=g.user.name, role="admin", obj=name, source=source(),
                   reason="restriction notice printed")
    resp = Response(pdf, mimetype="application/pdf")
    resp.headers["Content-Disposition"] = f'inline; filename="restriction-{name}.pdf"'
    return resp


@bp.post("/users/<name>/roles")
@requires("users.manage")
def roles(name):
    f = request.form
    return _do(lambda: ext().accounts.set_roles(name, f.getlist("roles"), f.get("reason", ""), by=g.user,
                                                source=source()))


@bp.post("/users/<name>/unlock")
@requires("users.manage")
def unlock(name):
    return _do(lambda: ext().accounts.unlock(name, request.form.get("reason", "") or "unlock", by=g.user,
                                             source=source()))


@bp.post("/users/<name>/revoke")
@requires("users.manage")
def revoke(name):
    return _do(lambda: ext().accounts.revoke_sessions(name, by=g.user, reason="revoked by administrator",
                                                      source=source()))


@bp.post("/users/<name>/password")
@requires("users.manage")
def password(name):
    return _do(lambda: ext().accounts.set_password(name, request.form.get("password", ""), by=g.user,
                                                   source=source()))

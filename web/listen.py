"""Approval with the PIN and listening (열람), both done by the key keeper; the page only relays.

An approver opens named calls for one records officer, for a purpose and a time, with their
PIN (``/grants``); the keeper checks the PIN, the roles and the calls and answers with a grant
token that the page keeps in its memory only (a page restart forgets it; the keeper forgets
the keys when the grant is idle). The officer then plays a call (``/listen``): the keeper
decrypts and decodes it and the page streams the WAV bytes on, with ``no-store`` and no
download control. The request workflow (forms, search, ledger) builds on these two steps.
"""

from __future__ import annotations

import datetime as dt
import threading

from flask import Blueprint, Response, abort, current_app, g, redirect, render_template, request, url_for

from firmware.index import KST, parse_utc
from firmware.ipc import IpcError

from .auth import ext, requires, source

bp = Blueprint("listen", __name__)
_lock = threading.Lock()  # guards the grant table of every app in this process


def _grants() -> dict:
    return current_app.extensions.setdefault("nokbox_grants", {})


def _keeper():
    return current_app.config["KEEPER"]


def _live(grants: dict) -> dict:
    now = dt.datetime.now(dt.timezone.utc)
    with _lock:
        for ref in [r for r, gr in grants.items() if parse_utc(gr["expires"]) <= now]:
            grants.pop(ref)
        return dict(grants)


def _local(iso: str) -> str:
    return parse_utc(iso).astimezone(KST).strftime("%Y-%m-%d %H:%M")


def _officers() -> list[str]:
    return [u.name for u in ext().accounts.users() if "officer" in u.roles and u.state == "active"]


@bp.get("/grants")
@requires("request.approve")
def grants(error: str = "", message: str = "", code: int = 200, form: dict | None = None):
    mine = [dict(gr, ref=ref, until=_local(gr["expires"])) for ref, gr in _live(_grants()).items()
            if gr["approver"] == g.user.name]
    return render_template("grants.html", grants=mine, officers=_officers(), error=error, message=message,
                           form=form or {}, max_hours=ext().cfg.keeper.grant_max_hours), code


@bp.post("/grants")
@requires("request.approve")
def grant_new():
    f = request.form
    keep = {k: f.get(k, "") for k in ("grantee", "calls", "purpose", "hours")}  # never the PIN
    try:
        calls = [int(c) for c in f.get("calls", "").replace(",", " ").split()]
        hours = float(f.get("hours", "") or 0)
    except ValueError:
        return grants(error="통화 번호는 숫자로, 기간은 시간 단위로 · call ids are numbers, the time is in hours",
                      code=400, form=keep)
    purpose = f.get("purpose", "").strip()
    if not calls or not purpose or not f.get("grantee") or not f.get("pin"):
        return grants(error="담당자, 통화, 목적, PIN을 모두 입력하십시오 · officer, calls, purpose and PIN are required",
                      code=400, form=keep)
    try:
        res = _keeper().unlock_for(g.user.name, f["pin"], grantee=f["grantee"], purpose=purpose[:500],
                                   calls=calls, ttl_s=hours * 3600.0)
    except IpcError as exc:
        code = 503 if exc.code == "unavailable" else 400
        return grants(error=exc.message, code=code, form=keep)
    with _lock:
        _grants()[res["ref"]] = {"token": res["grant"], "approver": g.user.name, "grantee": f["grantee"],
                                 "purpose": purpose, "calls": res["calls"], "expires": res["expires"]}
    ext().audit.append("grant.create", actor=g.user.name, role="approver", obj=res["ref"], source=source(),
                       reason=purpose[:200], detail={"grantee": f["grantee"], "calls": res["calls"]})
    return grants(message=f"승인되었습니다 · granted: {len(res['calls'])} call(s) for {f['grantee']} "
                          f"until {_local(res['expires'])}")


@bp.post("/grants/<ref>/end")
@requires("request.approve")
def grant_end(ref: str):
    gr = _live(_grants()).get(ref)
    if gr is None or g.user.name not in (gr["approver"], gr["grantee"]):
        abort(404)
    try:
        _keeper().end_grant(g.user.name, gr["token"])
    except IpcError:
        pass  # already gone in the keeper (restart, idle): the page forgets it as well
    with _lock:
        _grants().pop(ref, None)
    return redirect(url_for("listen.grants"))


@bp.get("/listen")
@requires("call.play")
def index():
    mine = [dict(gr, ref=ref, until=_local(gr["expires"])) for ref, gr in _live(_grants()).items()
            if gr["grantee"] == g.user.name]
    return render_template("listen.html", grants=mine)


@bp.get("/listen/<ref>/<int:call>")
@requires("call.play")
def audio(ref: str, call: int):
    gr = _live(_grants()).get(ref)
    if gr is None or gr["grantee"] != g.user.name or call not in gr["calls"]:
        ext().audit.append("recording.play", actor=g.user.name, role="officer", obj=f"call:{call}",
                           outcome="refused", reason="no live grant for this call", source=source())
        abort(404)  # the role may play; this call is not open to this person
    try:
        head, chunks = _keeper().open_call(g.user.name, gr["token"], call)
    except IpcError as exc:
        if exc.code == "unavailable":
            raise
        ext().audit.append("recording.play", actor=g.user.name, role="officer", obj=f"call:{call}",
                           outcome="refused", reason=exc.message[:200], source=source())
        return render_template("error.html", code=403, message=exc.message), 403
    ext().audit.append("recording.play", actor=g.user.name, role="officer", obj=f"call:{call}", source=source(),
                       reason=gr["purpose"][:200], detail={"grant": ref, "seconds": round(head["frames"] / head["rate"], 1)})
    resp = Response(chunks, mimetype="audio/wav", direct_passthrough=True)
    resp.headers["Content-Length"] = str(head["bytes"])
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Content-Disposition"] = "inline"
    return resp

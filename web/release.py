"""The release workflow on the page (열람·제공): requests, search, approval, listening, USB export,
receipt and ledger. Everything personal goes through the key keeper; the page never holds a key.

- ``/requests``: the person's requests (officer), those waiting for a decision (approver), all (auditor).
- ``/requests/new``: form 1; scans are uploaded and sealed at once to the keeper's request recipient.
- ``/requests/<n>``: the request (its personal details opened by the keeper: audited), its search,
  its calls, its approvals, and what the person may do next.
- Listening: a play token (random, 10 minutes, bound to the signed-in session and the request)
  starts one play; the player streams HTTP ranges relayed from the keeper, ``no-store``, without a
  download control. This deters copying; it cannot prevent it (a microphone, a screen recorder).
- Export: the stick is chosen from ``hal/usb``; the export runs in a thread, its progress polled;
  the ZIP password is shown once, then forgotten by the page.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time

from flask import (Blueprint, Response, abort, current_app, g, jsonify, redirect, render_template, request,
                   url_for)

from firmware.errors import NokboxError
from firmware.ipc import IpcError
from firmware.release.requests import (GROUNDS, KINDS, STATES, FormError, RequestError, Requests, kst_day_bounds,
                                       validate_form)

from .auth import ext, requires, source

bp = Blueprint("release", __name__)
_lock = threading.Lock()
PLAY_TOKEN_S = 600.0
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def _reqs() -> Requests:
    x = ext()
    r = current_app.extensions.get("nokbox_requests")
    if r is None:
        r = Requests(x.data_dir, x.cfg, x.audit, current_app.config["KEEPER"], clock=x.accounts.clock)
        current_app.extensions["nokbox_requests"] = r
    return r


def _mem() -> dict:
    return current_app.extensions.setdefault("nokbox_release_mem", {"plays": {}, "exports": {}})


def _sess_id() -> str:
    return hashlib.sha256((g.sess.csrf if g.get("sess") else "").encode()).hexdigest()


def _fail(exc: NokboxError, number: str | None = None, code: int = 400):
    if isinstance(exc, IpcError) and exc.code == "unavailable":
        raise exc
    msg = exc.message if isinstance(exc, IpcError) else str(exc)
    if isinstance(exc, RequestError) and exc.code == "no_request":
        return render_template("error.html", code=404, message=msg), 404
    if number:
        return show(number, error=msg, code=code)
    return render_template("error.html", code=code, message=msg), code


def _any(*perms: str) -> bool:
    from firmware.people.accounts import can

    return any(can(g.user, p) for p in perms)


@bp.get("/requests")
@requires("requests.view")
def index():
    r = _reqs()
    mine = r.list(officer=g.user.name) if _any("request.create") else []
    waiting = [x for x in r.list(states=("submitted", "reviewed")) if x["officer"] != g.user.name] \
        if _any("request.approve") else []
    every = r.list() if _any("audit.review") else []
    return render_template("requests.html", mine=mine, waiting=waiting, every=every)


_FIELDS = ("kind", "legal_ground", "document_number", "sending_number", "receiving_number", "call_from", "call_to",
           "purpose", "relation", "reason")


@bp.get("/requests/new")
@requires("request.create")
def new(error: str = "", form: dict | None = None, bad: str = "", code: int = 200):
    return render_template("request_new.html", error=error, f=form or {"kind": "listen", "legal_ground": "2"},
                           bad=bad, grounds=GROUNDS, kinds=KINDS, rc=ext().cfg.release), code


@bp.post("/requests/new")
@requires("request.create")
def create():
    f = request.form
    keep = {k: f.get(k, "") for k in _FIELDS} | {f"requester.{k}": f.get(f"requester.{k}", "")
                                                 for k in ("name", "id_number", "address", "contact")}
    form = {k: f.get(k, "") for k in _FIELDS}
    form["legal_ground"] = int(f["legal_ground"]) if f.get("legal_ground", "").isdigit() else f.get("legal_ground")
    form["requester"] = {k: f.get(f"requester.{k}", "") for k in ("name", "id_number", "address", "contact")}
    form["attachments"] = [(up.filename or "scan", up.read()) for up in request.files.getlist("attachments")
                           if up and up.filename]
    try:
        checked = validate_form(form, cfg=ext().cfg, now=ext().accounts.clock.wall())
        number = _reqs().create(checked, actor=g.user.name, source=source())
    except FormError as exc:
        ext().audit.append("request.create", actor=g.user.name, role="officer", obj="request:-", outcome="refused",
                           reason=f"form: {exc.key}", source=source())
        return new(error=str(exc), form=keep, bad=exc.key, code=400)
    except NokboxError as exc:
        return _fail(exc)
    return redirect(url_for("release.show", number=number, message="신청이 접수되었습니다. 이제 통화를 검색하십시오 · "
                                                                    "request entered: search its calls next"))


@bp.get("/requests/<number>")
@requires("requests.view")
def show(number: str, error: str = "", message: str = "", code: int = 200, found=None):
    r = _reqs()
    try:
        req = r.get(number, actor=g.user.name, source=source())
    except RequestError:
        abort(404)
    except IpcError as exc:
        if exc.code == "unavailable":
            raise
        abort(403 if exc.code == "forbidden" else 400)
    x = ext()
    officer = req["officer"] == g.user.name
    stage = r.stage_due(r.row(number))
    sticks, stick_error = [], ""
    if officer and req["state"] == "approved" and req["kind"] == "provide":
        try:
            sticks = _media().sticks()
        except NokboxError as exc:
            stick_error = str(exc)
    job = _mem()["exports"].get(req["number"])
    return render_template("request.html", req=req, officer=officer, stage=stage, found=found,
                           may_decide=stage is not None and not officer and _any("request.approve"),
                           error=error, message=message or request.args.get("message", ""), sticks=sticks,
                           stick_error=stick_error, job=job, states=STATES, rc=x.cfg.release), code


@bp.post("/requests/<number>/search")
@requires("request.search")
def search(number: str):
    try:
        found = _reqs().search(number, actor=g.user.name, source=source())
    except NokboxError as exc:
        return _fail(exc, number)
    return show(number, found=found, message=f"{len(found)}건의 통화를 찾았습니다 · {len(found)} call(s) found")


@bp.post("/requests/<number>/attach")
@requires("request.search")
def attach(number: str):
    try:
        ids = [int(c) for c in request.form.getlist("call")]
    except ValueError:
        return show(number, error="통화 번호가 잘못되었습니다 · bad call id", code=400)
    if not ids:
        return show(number, error="첨부할 통화를 고르십시오 · choose the calls to attach", code=400)
    try:
        got = _reqs().attach(number, ids, actor=g.user.name, reason=request.form.get("reason", ""), source=source())
    except NokboxError as exc:
        return _fail(exc, number)
    return show(number, message=f"{len(got)}건 첨부 · {len(got)} call(s) attached (held until the request closes)")


@bp.post("/requests/<number>/detach/<int:call>")
@requires("request.search")
def detach(number: str, call: int):
    try:
        _reqs().detach(number, call, actor=g.user.name, source=source())
    except NokboxError as exc:
        return _fail(exc, number)
    return redirect(url_for("release.show", number=number))


@bp.post("/requests/<number>/submit")
@requires("request.create")
def submit(number: str):
    try:
        _reqs().submit(number, actor=g.user.name, source=source())
    except NokboxError as exc:
        return _fail(exc, number)
    return show(number, message="결재를 요청했습니다 · sent for approval")


@bp.post("/requests/<number>/decide")
@requires("request.approve")
def decide(number: str):
    f = request.form
    decision = "approved" if f.get("decision") == "approve" else "rejected"
    try:
        res = _reqs().decide(number, actor=g.user.name, decision=decision, pin=f.get("pin", ""),
                             comment=f.get("comment", ""), source=source())
    except NokboxError as exc:
        return _fail(exc, number)
    if decision == "rejected":
        msg = "반려했습니다 · rejected"
    elif res["final"]:
        msg = "승인했습니다: 담당자가 정해진 시간 동안 이 통화만 열람·제공할 수 있습니다 · approved"
    else:
        msg = "검토를 마쳤습니다: 운영부서의 장 승인이 남았습니다 · reviewed; the head's approval is next"
    return show(number, message=msg)


@bp.post("/requests/<number>/close")
@requires("request.create")
def close(number: str):
    f = request.form
    try:
        if f.get("what") == "destroyed":
            _reqs().record_destruction(number, actor=g.user.name, when=f.get("when", ""), note=f.get("note", ""),
                                       source=source())
        else:
            _reqs().close(number, actor=g.user.name, reason=f.get("reason", ""), state=f.get("state", "closed"),
                          source=source())
    except NokboxError as exc:
        return _fail(exc, number)
    return show(number, message="기록했습니다 · recorded")


@bp.get("/requests/<number>/attachment/<int:index>")
@requires("requests.view")
def attachment(number: str, index: int):
    try:
        head, chunks = current_app.config["KEEPER"].attachment(g.user.name, number, index)
    except IpcError as exc:
        return _fail(exc, code=403)
    resp = Response(chunks, mimetype=head["mime"], direct_passthrough=True)
    resp.headers["Content-Length"] = str(head["bytes"])
    resp.headers["Content-Disposition"] = "inline"
    return resp


# -- listening ------------------------------------------------------------------------------
@bp.post("/requests/<number>/play/<int:call>")
@requires("call.play")
def play(number: str, call: int):
    """A play token for one play of one call, bound to this session and the request."""
    try:
        _reqs().grant_for(number, call, actor=g.user.name, action="request.play", source=source())
    except NokboxError as exc:
        return _fail(exc, number, 403)
    token = secrets.token_urlsafe(24)
    with _lock:
        plays = _mem()["plays"]
        now = time.monotonic()
        for t in [t for t, p in plays.items() if p["expires"] < now]:
            plays.pop(t)
        plays[token] = {"user": g.user.name, "sess": _sess_id(), "number": number, "call": call,
                        "expires": now + PLAY_TOKEN_S, "started": False}
    return render_template("listen.html", number=number, call=call, token=token,
                           src=url_for("release.audio", number=number, call=call, t=token))


@bp.get("/requests/<number>/audio/<int:call>")
@requires("call.play")
def audio(number: str, call: int):
    t = request.args.get("t", "")
    with _lock:
        p = _mem()["plays"].get(t)
        ok = (p is not None and p["user"] == g.user.name and p["sess"] == _sess_id() and p["number"] == number
              and p["call"] == call and p["expires"] >= time.monotonic())
        first = ok and not p["started"]
        if first:
            p["started"] = True
    if not ok:
        ext().audit.append("request.play", actor=g.user.name, role="officer", obj=f"request:{number}", outcome="refused",
                           reason="no valid play token for this session", source=source(), detail={"call": call})
        abort(404)  # the role may play; nothing is open to this session here
    try:
        _, token = _reqs().grant_for(number, call, actor=g.user.name, action="request.play", source=source())
    except NokboxError as exc:
        return _fail(exc, code=403)
    offset, length = 0, None
    m = _RANGE.match(request.headers.get("Range", ""))
    if m:
        offset = int(m.group(1))
        if m.group(2):
            length = int(m.group(2)) - offset + 1
    try:
        head, chunks = current_app.config["KEEPER"].open_call(g.user.name, token, call, offset=offset, length=length,
                                                               count=first)
    except IpcError as exc:
        if exc.code == "unavailable":
            raise
        if exc.code == "range":
            return Response(status=416)
        if exc.code == "no_grant":  # the keeper restarted: the approval must be given again
            _reqs().lapse(number, actor=g.user.name, source=source())
        ext().audit.append("request.play", actor=g.user.name, role="officer", obj=f"request:{number}",
                           outcome="refused", reason=exc.message[:200], source=source(), detail={"call": call})
        return render_template("error.html", code=403, message=exc.message), 403
    if first:
        _reqs().record_use(number, "play", actor=g.user.name, call=call, source=source(),
                           detail={"seconds": round(head["frames"] / head["rate"], 1)})
    resp = Response(chunks, status=206 if m else 200, mimetype="audio/wav", direct_passthrough=True)
    resp.headers["Content-Length"] = str(head["bytes"])
    resp.headers["Accept-Ranges"] = "bytes"
    if m:
        resp.headers["Content-Range"] = f"bytes {offset}-{offset + head['bytes'] - 1}/{head['total']}"
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["Content-Disposition"] = "inline"
    return resp


# -- export ---------------------------------------------------------------------------------
def _media():
    from pathlib import Path

    from firmware.hal.usb import usb_media

    x = ext()
    rc = x.cfg.release
    if rc.usb_backend == "image":
        folder = Path(rc.usb_images) if rc.usb_images else Path(x.data_dir) / "usb-images"
        return usb_media("image", directory=folder)
    return usb_media("udisks2", bus_address=rc.usb_dbus_address, loop_devices=rc.usb_loop_devices)


@bp.post("/requests/<number>/export")
@requires("request.export")
def export_start(number: str):
    from firmware.release.export import StickTarget, export

    stick = request.form.get("stick", "")
    r = _reqs()
    try:
        r.grant_for(number, None, actor=g.user.name, action="request.export", source=source())
    except NokboxError as exc:
        return _fail(exc, number)
    media = _media()
    if stick not in {s.id for s in media.sticks()}:
        return show(number, error="USB 저장장치를 고르십시오 (빠졌을 수 있음) · choose a stick (it may have been removed)",
                    code=400)
    app = current_app._get_current_object()
    mem = _mem()
    me, src = g.user.name, source()
    with _lock:
        job = mem["exports"].get(number)
        if job and job["state"] == "running":
            return show(number, error="이 신청의 내보내기가 이미 진행 중입니다 · an export of this request is already running",
                        code=409)
        job = {"state": "running", "phase": "pack", "done": 0, "total": 0, "error": "", "password": "", "name": ""}
        mem["exports"][number] = job

    def progress(phase: str, done: int, total: int) -> None:
        job.update(phase=phase, done=done, total=total)

    def run() -> None:
        with app.app_context():
            x = app.extensions["nokbox"]
            try:
                res = export(r, number, StickTarget(media, stick), actor=me, source=src, progress=progress,
                             checkpoint=lambda: x.audit.checkpoint(actor=me, role="officer",
                                                                   purpose=f"export {number}").line())
                job.update(state="done", password=res.password, name=res.name, size=res.size, sha256=res.sha256)
            except (NokboxError, OSError) as exc:
                job.update(state="failed", error=exc.message if isinstance(exc, IpcError) else str(exc))
            except Exception as exc:  # noqa: BLE001 - the page must show that it failed
                job.update(state="failed", error=f"{type(exc).__name__}: {exc}")

    threading.Thread(target=run, name=f"export-{number}", daemon=True).start()
    return redirect(url_for("release.show", number=number))


@bp.get("/requests/<number>/export/status")
@requires("request.export")
def export_status(number: str):
    job = _mem()["exports"].get(number)
    if job is None:
        return jsonify(state="none")
    return jsonify({k: job.get(k) for k in ("state", "phase", "done", "total", "error", "name")})


@bp.post("/requests/<number>/export/password")
@requires("request.export")
def export_password(number: str):
    """The ZIP password, once: the page forgets it as it shows it."""
    with _lock:
        job = _mem()["exports"].get(number)
        pw = job.pop("password", "") if job and job.get("state") == "done" else ""
    if not pw:
        return show(number, error="암호는 한 번만 표시됩니다 · the password was already shown", code=410)
    ext().audit.append("request.export", actor=g.user.name, role="officer", obj=f"request:{number}", source=source(),
                       reason="ZIP password shown once")
    return render_template("export_done.html", number=number, password=pw, job=job)


# -- forms ----------------------------------------------------------------------------------
@bp.get("/requests/<number>/receipt.pdf")
@requires("requests.view")
def receipt(number: str):
    from firmware.release import forms
    from firmware.release.export import receipt_input

    r = _reqs()
    try:
        req = r.get(number, actor=g.user.name, source=source())
        signer = current_app.config["KEEPER"].signer(g.user.name)
    except RequestError:
        abort(404)
    except IpcError as exc:
        return _fail(exc, code=403)
    done = [u for u in req["uses"] if u["kind"] == "export" and u["outcome"] == "ok" and u["call_id"] is None]
    delivered = None
    if done:
        d = done[-1]["detail"]
        delivered = {"time": done[-1]["time_utc"], "medium": "USB", "package": d.get("package", ""),
                     "bytes": d.get("bytes", 0), "recipient": (req.get("details") or {}).get("requester", {}).get("name", "")}
    rows = done[-1]["detail"].get("files") if done else None
    pdf = forms.receipt_pdf(receipt_input(req, signer=signer["fingerprint"], delivered=delivered,
                                          rows=rows if isinstance(rows, list) else None,
                                          checkpoint=done[-1]["detail"].get("checkpoint", "") if done else "",
                                          office=ext().cfg.release.office))
    ext().audit.append("request.receipt", actor=g.user.name, role="-", obj=f"request:{req['number']}", source=source())
    resp = Response(pdf, mimetype="application/pdf")
    resp.headers["Content-Disposition"] = f'inline; filename="receipt-{req["number"]}.pdf"'
    return resp


@bp.get("/ledger")
@requires("ledger.view")
def ledger():
    import datetime as dt

    from firmware.index import KST
    from firmware.release import forms

    today = dt.datetime.now(KST).date()
    frm = request.args.get("from") or (today - dt.timedelta(days=30)).isoformat()
    to = request.args.get("to") or today.isoformat()
    kind = request.args.get("kind") or None
    officer = request.args.get("officer") or None
    try:
        start, end = kst_day_bounds(frm, to)
        if kind not in (None, "listen", "provide"):
            raise FormError("kind", "listen 또는 provide · listen or provide")
        rows = _reqs().ledger(actor=g.user.name, start=start, end=end, kind=kind, officer=officer, source=source())
    except FormError as exc:
        return render_template("ledger.html", rows=[], error=str(exc), q={"from": frm, "to": to, "kind": kind or "",
                                                                          "officer": officer or ""}), 400
    except IpcError as exc:
        return _fail(exc, code=403)
    fmt = request.args.get("format")
    if fmt == "csv":
        resp = Response(forms.ledger_csv(rows, period=(frm, to)), mimetype="text/csv; charset=utf-8")
        resp.headers["Content-Disposition"] = f'attachment; filename="ledger-{frm}-{to}.csv"'
        return resp
    if fmt == "pdf":
        resp = Response(forms.ledger_pdf(rows, period=(frm, to), office=ext().cfg.release.office),
                        mimetype="application/pdf")
        resp.headers["Content-Disposition"] = f'inline; filename="ledger-{frm}-{to}.pdf"'
        return resp
    return render_template("ledger.html", rows=rows, error="", q={"from": frm, "to": to, "kind": kind or "",
                                                                  "officer": officer or ""})

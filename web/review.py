"""The auditor's daily review page: lookups per person, flags, overdue days, sign-off, CSV export."""

from __future__ import annotations

import datetime as dt

from flask import Blueprint, Response, g, redirect, render_template, request, url_for

from firmware.audit import AuditError, parse_utc
from firmware.people.review import KST, SIGNOFF, review_day, overdue_days

from .auth import day_arg, ext, requires, source

bp = Blueprint("review", __name__)


@bp.app_template_filter("kst")
def kst(utc: str) -> str:
    return parse_utc(utc).astimezone(KST).strftime("%Y-%m-%d %H:%M:%S KST")


def _today() -> dt.date:
    return dt.datetime.fromtimestamp(ext().audit.clock.wall(), KST).date()


@bp.get("/review")
@requires("audit.review")
def index():
    overdue = overdue_days(ext().audit, _today())
    day = overdue[-1] if overdue else _today()
    return redirect(url_for("review.day", day=day.isoformat()))


@bp.get("/review/<day>")
@requires("audit.review")
def day(day):
    d = day_arg(day)
    x = ext()
    today = _today()
    # viewing the trail is itself logged; the checkpoint seals the log and goes on the printed page
    cp = x.audit.checkpoint(actor=g.user.name, role="auditor", source=source(), purpose=f"daily review {d}")
    try:
        chain = x.audit.verify_report(checkpoints=[cp]).summary()
        chain_ok = True
    except AuditError as exc:
        chain, chain_ok = str(exc), False
    return render_template("review.html", rv=review_day(x.audit, d, x.cfg.review), overdue=overdue_days(x.audit, today),
                           today=today, prev=d - dt.timedelta(days=1), next=d + dt.timedelta(days=1),
                           checkpoint=cp.line(), chain=chain, chain_ok=chain_ok, can_sign=d < today,
                           review_cfg=x.cfg.review)


@bp.post("/review/<day>/signoff")
@requires("audit.signoff")
def signoff(day):
    d = day_arg(day)
    x = ext()
    if d >= _today():
        return render_template("error.html", code=409, message="지난 날만 확인할 수 있습니다 · only a past day can be "
                               "signed off"), 409
    rv = review_day(x.audit, d, x.cfg.review)
    if rv.signoff is not None:
        return render_template("error.html", code=409, message="이미 확인된 날입니다 · this day is already signed off"), 409
    cp = x.audit.checkpoint(actor=g.user.name, role="auditor", source=source(), purpose=f"sign-off {d}")
    x.audit.append(SIGNOFF, actor=g.user.name, role="auditor", obj=d.isoformat(), source=source(),
                   reason=request.form.get("note", "").strip()[:500],
                   detail={"lookups": len(rv.lookups), "flags": len(rv.flags), "checkpoint": cp.line()})
    return redirect(url_for("review.day", day=d.isoformat()))


@bp.get("/review/export.csv")
@requires("audit.export")
def export():
    x = ext()
    try:
        frm = dt.date.fromisoformat(request.args.get("from", ""))
        to = dt.date.fromisoformat(request.args.get("to", ""))
    except ValueError:
        return render_template("error.html", code=400, message="기간을 YYYY-MM-DD로 · give from and to as YYYY-MM-DD"), 400
    cp = x.audit.checkpoint(actor=g.user.name, role="auditor", source=source(), purpose=f"export {frm}..{to}")
    text, rows = x.audit.export_csv(frm, to, KST)
    x.audit.append("audit.export", actor=g.user.name, role="auditor", obj=f"{frm}..{to}", source=source(),
                   detail={"rows": rows, "checkpoint": cp.line()})
    return Response(text, mimetype="text/csv", headers={
        "Content-Disposition": f"attachment; filename=nokbox-audit-{frm}-{to}.csv",
        "X-Nokbox-Checkpoint": cp.line()})

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
    return _page(day_arg(day))


def _page(d: dt.date, *, key: str | None = None, verify: dict | None = None, status: int = 200):
    """The review page of day ``d``; with ``key``, the log checked with it too (``verify``: the answer)."""
    x = ext()
    today = _today()
    # viewing the trail is itself logged; the checkpoint seals the log and goes on the printed page
    cp = x.audit.checkpoint(actor=g.user.name, role="auditor", source=source(), purpose=f"daily review {d}")
    try:
        chain = x.audit.verify_report(checkpoints=[cp]).summary()
        chain_ok = True
    except AuditError as exc:
        chain, chain_ok = str(exc), False
    if key is not None:
        verify = _verify_with_key(x.audit, key, cp)
        status = 400 if verify["outcome"] == "mistyped" else 200
    return render_template("review.html", rv=review_day(x.audit, d, x.cfg.review), overdue=overdue_days(x.audit, today),
                           today=today, prev=d - dt.timedelta(days=1), next=d + dt.timedelta(days=1),
                           checkpoint=cp.line(), chain=chain, chain_ok=chain_ok, can_sign=d < today,
                           review_cfg=x.cfg.review, verify=verify), status


# what the auditor is told, by outcome; the detail (which entry, which character) follows it
VERIFY_HEADLINES = {
    "ok": "키로 검증됨: 위조 없음 · verified with the key: no entry forged",
    "mistyped": "검증 키 오타 · the key is mistyped",
    "wrong_key": "다른 키 · wrong key: not this log's key (nothing was checked with it)",
    "forged": "기록 위조 또는 손상 · LOG FORGED OR DAMAGED",
}


def _verify_with_key(audit, key: str, cp) -> dict:
    """Check every MAC with the key typed into the form; the key is used here and forgotten."""
    logged = {"with_key": True}
    try:
        rep = audit.verify_report(key=key, checkpoints=[cp])
        outcome, detail = "ok", rep.summary()
        logged["entries"] = rep.entries
    except AuditError as exc:
        outcome, detail = exc.outcome, str(exc)
        if outcome == "mistyped":  # the headline says it already
            detail = detail.partition("mistyped: ")[2] or detail
        if outcome == "forged":
            logged["problem"] = detail[:300]
    # the key's text never goes into the log (not even a mistyped one): only what came of it
    audit.append("audit.verify", actor=g.user.name, role="auditor", source=source(),
                 outcome={"ok": "ok", "forged": "failed"}.get(outcome, outcome),
                 reason=VERIFY_HEADLINES[outcome].split(" · ", 1)[1], detail=logged)
    return {"outcome": outcome, "headline": VERIFY_HEADLINES[outcome], "detail": detail}


@bp.post("/review/<day>/verify")
@requires("audit.verify")
def verify(day):
    """The log-integrity box: the verification key is a form field, never stored or shown back."""
    d = day_arg(day)
    text = request.form.get("key", "")
    problem = ("검증 키를 입력하세요 · type the verification key" if not text.strip() else
               "검증 키보다 훨씬 깁니다 · far longer than a verification key" if len(text) > 300 else None)
    if problem:
        return _page(d, verify={"outcome": "mistyped", "headline": VERIFY_HEADLINES["mistyped"], "detail": problem},
                     status=400)
    return _page(d, key=text)


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

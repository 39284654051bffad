"""The recording notice (technician): per-line mode with a reason, the announcement, a test call."""

from __future__ import annotations

import tempfile
from pathlib import Path

from flask import Blueprint, current_app, g, redirect, render_template, request, url_for

from firmware.recording.notice import MAX_SECONDS, AnnouncementError, install_announcement, set_line_mode

from .auth import ext, requires, source

bp = Blueprint("notice", __name__)


def _who() -> dict:
    return {"actor": g.user.name, "role": "technician", "source": source()}


def _status() -> dict:
    return current_app.config["RECORDER"].status()


def _page(message: str = "", error: str = "", code: int = 200):
    st = _status()
    lines = [{"channel": ln["channel"], "name": ln["name"], "config_mode": ln["notice_config"], **ln["notice"]}
             for ln in st["lines"]]
    uploaded = Path(ext().data_dir) / "notice" / "announcement.wav"
    svc = st.get("notice_service") or {}
    return render_template("notice.html", lines=lines, uploaded=uploaded.exists(), gpio=st.get("gpio"),
                           enabled=svc.get("enabled", True), max_seconds=int(MAX_SECONDS), message=message,
                           error=error), code


def _line(form) -> dict:
    try:
        ch = int(form.get("channel", ""))
    except ValueError:
        raise AnnouncementError("회선을 고르십시오 · choose a line") from None
    for ln in _status()["lines"]:
        if ln["channel"] == ch:
            return ln
    raise AnnouncementError(f"{ch + 1}번 회선이 없습니다 · no line on channel {ch}")


@bp.get("/notice")
@requires("config.view")
def index():
    return _page()


@bp.post("/notice/mode")
@requires("config.edit")
def mode():
    f = request.form
    try:
        ln = _line(f)
        set_line_mode(ext().data_dir, ln["channel"], f.get("mode", ""), f.get("reason", ""), ext().audit, _who())
    except AnnouncementError as exc:
        return _page(error=str(exc), code=400)
    return redirect(url_for("notice.index"))


@bp.post("/notice/upload")
@requires("config.edit")
def upload():
    f = request.files.get("file")
    if f is None or not f.filename:
        return _page(error="choose a WAV file to upload", code=400)
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        f.save(tmp.name)
        try:
            rate = (_status().get("notice_service") or {}).get("rate", ext().cfg.notice.rate)
            seconds = install_announcement(ext().data_dir, Path(tmp.name), ext().audit, _who(), rate)
        except AnnouncementError as exc:
            return _page(error=str(exc), code=400)
    return _page(message=f"안내 방송을 바꾸었습니다 · announcement installed ({seconds:.1f} s)")


@bp.post("/notice/test")
@requires("config.edit")
def test():
    try:
        ln = _line(request.form)
    except AnnouncementError as exc:
        return _page(error=str(exc), code=400)
    ch = ln["channel"]
    res = current_app.config["RECORDER"].notice_test(ch)
    ext().audit.append("notice.test", obj=f"line:{ch}", outcome="ok" if res["played"] else "failed",
                       reason=res["failure"] or "", **_who())
    if res["played"]:
        return _page(message=f"시험 안내 완료 · test notice played on line {ch} "
                             f"(relay {res['relay_ms']} ms, audio {res['delay_ms']} ms)")
    return _page(error=f"시험 안내 실패 · test notice failed: {res['failure']}", code=200)

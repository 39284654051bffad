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


def _page(message: str = "", error: str = "", code: int = 200):
    rec = current_app.config["RECORDER"]
    st = rec.notice.status()
    lines = [{"channel": ln.channel, "name": ln.name, "config_mode": ln.notice, **st[i]}
             for i, ln in enumerate(rec.lines)]
    uploaded = Path(rec.data_dir) / "notice" / "announcement.wav"
    return render_template("notice.html", lines=lines, uploaded=uploaded.exists(), gpio=rec.notice.backend,
                           enabled=rec.notice.enabled, max_seconds=int(MAX_SECONDS), message=message,
                           error=error), code


def _line_index(form) -> int:
    rec = current_app.config["RECORDER"]
    try:
        ch = int(form.get("channel", ""))
    except ValueError:
        raise AnnouncementError("choose a line") from None
    for i, ln in enumerate(rec.lines):
        if ln.channel == ch:
            return i
    raise AnnouncementError(f"no line on channel {ch}")


@bp.get("/notice")
@requires("config.view")
def index():
    return _page()


@bp.post("/notice/mode")
@requires("config.edit")
def mode():
    rec = current_app.config["RECORDER"]
    f = request.form
    try:
        i = _line_index(f)
        set_line_mode(rec.data_dir, rec.lines[i].channel, f.get("mode", ""), f.get("reason", ""), ext().audit, _who())
    except AnnouncementError as exc:
        return _page(error=str(exc), code=400)
    return redirect(url_for("notice.index"))


@bp.post("/notice/upload")
@requires("config.edit")
def upload():
    rec = current_app.config["RECORDER"]
    f = request.files.get("file")
    if f is None or not f.filename:
        return _page(error="choose a WAV file to upload", code=400)
    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        f.save(tmp.name)
        try:
            seconds = install_announcement(rec.data_dir, Path(tmp.name), ext().audit, _who(), rec.notice.cfg.rate)
        except AnnouncementError as exc:
            return _page(error=str(exc), code=400)
    return _page(message=f"안내 방송을 바꾸었습니다 · announcement installed ({seconds:.1f} s)")


@bp.post("/notice/test")
@requires("config.edit")
def test():
    rec = current_app.config["RECORDER"]
    try:
        i = _line_index(request.form)
    except AnnouncementError as exc:
        return _page(error=str(exc), code=400)
    res = rec.notice.test(i)
    ext().audit.append("notice.test", obj=f"line:{rec.lines[i].channel}", outcome="ok" if res.played else "failed",
                       reason=res.failure or "", **_who())
    if res.played:
        return _page(message=f"시험 안내 완료 · test notice played on line {rec.lines[i].channel} "
                             f"(relay {res.relay_ms} ms, audio {res.delay_ms} ms)")
    return _page(error=f"시험 안내 실패 · test notice failed: {res.failure}", code=200)

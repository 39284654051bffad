"""The call list: metadata for the roles that may list calls, masked numbers for the oversight roles
(``firmware/release/calllist.py``), newest first, one keyset page at a time, filtered by day, line and
notice result. Every query parameter is parsed and range-checked (a Korean 400 page otherwise); every
view is an audit entry."""

from __future__ import annotations

import datetime as dt
import re

from flask import Blueprint, abort, current_app, g, make_response, render_template, request

from firmware.index import KST, NOTICE_RESULTS, parse_cursor
from firmware.release.calllist import PAGE_ROWS, day_bounds, list_calls
from firmware.vault.retention import open_holds
from firmware.vaultdb import connect_vault

from .auth import FIRST_DAY, day_arg, ext, requires, source

bp = Blueprint("calls", __name__)

LINES_MAX = 32  # line[].channel ≤ 31: no call was ever recorded on a higher line
# the list's own words (the shared ones, notice failures and modes, come from web/labels.py)
NOTICE_FILTER = {"played": "재생됨 · Played", "beep": "신호음만 · Beep only", "off": "안내 꺼짐 · Notice off",
                 "failed": "실패 · Failed", "none": "기록 없음 · Not recorded"}
CALL_STATES = {"recording": "녹음 중 · Recording", "finished": "완료 · Finished", "interrupted": "중단됨 · Interrupted",
               "failed": "실패 · Failed"}
assert set(NOTICE_FILTER) == set(NOTICE_RESULTS)


def _refuse(message: str):
    abort(make_response(render_template("error.html", code=400, message=message), 400))


def _line_arg(text: str) -> int | None:
    """``line`` as a person counts it (1 = channel 0), or None for every line."""
    text = text.strip()
    if not text:
        return None
    if not re.fullmatch(r"[0-9]{1,6}", text) or not 1 <= int(text) <= LINES_MAX:
        _refuse(f"회선 번호는 1부터 {LINES_MAX}까지입니다 · a line is numbered 1 to {LINES_MAX}")
    return int(text) - 1


def _notice_arg(text: str) -> str | None:
    if not text:
        return None
    if text not in NOTICE_RESULTS:
        _refuse("안내 방송 결과는 " + ", ".join(NOTICE_RESULTS) + " 중 하나입니다 · the notice result is one of "
                + ", ".join(NOTICE_RESULTS))
    return text


def _cursor_arg(name: str, day: dt.date | None) -> tuple[str, int] | None:
    text = request.args.get(name)
    if text is None:
        return None
    cur = parse_cursor(text)
    if cur is None:
        _refuse("목록의 페이지 위치가 잘못되었습니다. 첫 페이지부터 다시 여십시오 · the page position is not valid; "
                "open the list from its first page")
    if day is not None:
        lo, hi = day_bounds(day)
        if not lo <= cur[0] < hi:
            _refuse("페이지 위치가 선택한 날짜 밖입니다 · the page position is outside the chosen day")
    return cur


@bp.get("/calls")
@requires("calls.list")
def index():
    x = ext()
    args = request.args
    today = dt.datetime.fromtimestamp(x.audit.clock.wall(), KST).date()
    day_text = args.get("day", "").strip()
    day = day_arg(day_text) if day_text else None
    line = _line_arg(args.get("line", ""))
    notice = _notice_arg(args.get("notice", ""))
    after, before = _cursor_arg("after", day), _cursor_arg("before", day)
    if after is not None and before is not None:
        _refuse("after와 before는 함께 쓸 수 없습니다 · after and before cannot be given together")
    con = connect_vault(x.data_dir)
    try:
        holds = open_holds(con)
    finally:
        con.close()
    cl = list_calls(x.data_dir, g.user, x.audit, day, keeper=current_app.config["KEEPER"], line=line,
                    notice=notice, after=after, before=before, source=source(), holds=holds)
    lines = {ln.channel: ln.name for ln in x.cfg.lines}
    if line is not None and line not in lines:  # a line no longer configured still has its calls
        lines[line] = f"회선 {line + 1}"
    keep = {"day": day.isoformat() if day else None, "line": line + 1 if line is not None else None,
            "notice": notice}
    return render_template("calls.html", cl=cl, today=today, keep=keep, lines=sorted(lines.items()),
                           notice_filter=NOTICE_FILTER, call_states=CALL_STATES, page_rows=PAGE_ROWS,
                           prev=day - dt.timedelta(days=1) if day and day > FIRST_DAY else None,
                           next=day + dt.timedelta(days=1) if day and day < today else None)

"""The list of recorded calls as a person sees it: metadata for every role that may list calls,
masked numbers (010-****-5678) only for the roles allowed to see that much. Every listing is
an audit entry (``call.view``) naming the calls shown and how many masked numbers were shown.

Numbers in clear are never shown here: they are sealed to the records recipients and open
only with the approver's secret (the request workflow). The masked form is sealed under the
device-bound secret (``personal.BoxSealer``), so the SSD alone shows not even masked digits;
only the key keeper opens it (``keeper.masked``, which checks the role again and audits).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from ..people.accounts import AuthError, User, can
from ..audit import AuditLog
from ..index import KST, CallIndex, ListFilter, call_json, call_page, cursor_text, iso_utc
from ..ipc import IpcError

LIST_PERM = "calls.list"
MASKED_PERM = "numbers.masked"
PAGE_ROWS = 100  # calls on one page; the keeper opens at most MAX_MASKED (1000) at once


@dataclass
class CallList:
    day: dt.date | None  # None: every day
    line: int | None  # channel (0-based); a person reads line + 1
    calls: list[dict]
    masked_shown: bool
    newer: str | None = None  # the cursor of the page of newer calls (``before=``), None on the first page
    older: str | None = None  # the cursor of the page of older calls (``after=``), None on the last
    note: str = ""  # why masked numbers could not be shown, when allowed
    notice: str | None = None  # the notice result filtered on (index.NOTICE_RESULTS)


def day_bounds(day: dt.date) -> tuple[str, str]:
    """A KST calendar day as a UTC ISO range [start, end)."""
    start = dt.datetime.combine(day, dt.time(0), KST)
    return iso_utc(start.timestamp()), iso_utc((start + dt.timedelta(days=1)).timestamp())


def list_calls(data: Path, user: User, audit: AuditLog, day: dt.date | None, *, keeper, line: int | None = None,
               notice: str | None = None, after: tuple[str, int] | None = None,
               before: tuple[str, int] | None = None, limit: int = PAGE_ROWS, source: str = "local",
               holds: dict | None = None) -> CallList:
    """One page of calls, newest first, of a KST day (or every day), a line and a notice result, after or
    before a cursor (``index.parse_cursor``); raises AuthError (and logs it) when ``user`` may not list.

    ``keeper`` opens the masked numbers (``Keeper`` or ``KeeperClient``: ``masked(actor, ids, purpose)``);
    when it refuses or is down, the list is shown without them and ``note`` says why."""
    if not can(user, LIST_PERM):
        audit.append("access.denied", actor=user.name, role=",".join(user.roles) or "-", obj="calls",
                     outcome="refused", reason="no permission calls.list", source=source)
        raise AuthError("이 역할은 통화 목록을 볼 수 없습니다 · this role may not list calls", "forbidden")
    lo, hi = day_bounds(day) if day is not None else (None, None)
    idx = CallIndex(Path(data) / "index.sqlite")
    try:
        page = call_page(idx.con, ListFilter(lo, hi, line, notice), after=after, before=before, limit=limit)
    finally:
        idx.close()
    rows = page.rows
    what = (f"calls {day.isoformat() if day else 'all'}" + (f" line:{line + 1}" if line is not None else "")
            + (f" notice:{notice}" if notice else ""))
    show = can(user, MASKED_PERM)
    opened, note = None, ""
    with_numbers = [r["id"] for r in rows if r["numbers_masked"] is not None]
    if show and with_numbers:
        try:
            opened = keeper.masked(user.name, with_numbers, f"calls list: {what}")
        except IpcError as exc:
            note = f"번호를 열 수 없음 · masked numbers unavailable: {exc.message}"
    calls, shown = [], 0
    for r in rows:
        c = call_json(r, data)
        c.pop("file")  # where the ciphertext lives is the service's business
        c["hold"] = (holds or {}).get(r["id"])
        if show:
            c["numbers"] = None
            got = opened.get(str(r["id"])) if opened is not None else None
            if got is not None:
                c["numbers"] = got
                shown += "error" not in got
        calls.append(c)
    perm = MASKED_PERM if show else LIST_PERM
    audit.append("call.view", actor=user.name, role=user.acting_role(perm), obj=what, source=source,
                 detail={"calls": len(calls), "ids": [c["id"] for c in calls][:100], "masked_numbers": shown})
    if not page.newer:
        newer = None
    elif rows:
        newer = cursor_text(rows[0])
    else:  # past the oldest call: the way back starts at the cursor given
        newer = f"{after[0]}_{after[1]}"
    return CallList(day, line, calls, show, newer, cursor_text(rows[-1]) if page.older and rows else None, note,
                    notice)

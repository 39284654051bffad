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
from ..index import KST, CallIndex, call_json, iso_utc
from ..ipc import IpcError

LIST_PERM = "calls.list"
MASKED_PERM = "numbers.masked"
MAX_ROWS = 500


@dataclass
class CallList:
    day: dt.date
    line: int | None
    calls: list[dict]
    masked_shown: bool
    truncated: bool
    note: str = ""  # why masked numbers could not be shown, when allowed


def day_bounds(day: dt.date) -> tuple[str, str]:
    """A KST calendar day as a UTC ISO range [start, end)."""
    start = dt.datetime.combine(day, dt.time(0), KST)
    return iso_utc(start.timestamp()), iso_utc((start + dt.timedelta(days=1)).timestamp())


def list_calls(data: Path, user: User, audit: AuditLog, day: dt.date, *, keeper, line: int | None = None,
               source: str = "local", holds: dict | None = None) -> CallList:
    """The day's calls (KST) for ``user``; raises AuthError (and logs it) when they may not list.

    ``keeper`` opens the masked numbers (``Keeper`` or ``KeeperClient``: ``masked(actor, ids, purpose)``);
    when it refuses or is down, the list is shown without them and ``note`` says why."""
    if not can(user, LIST_PERM):
        audit.append("access.denied", actor=user.name, role=",".join(user.roles) or "-", obj="calls",
                     outcome="refused", reason="no permission calls.list", source=source)
        raise AuthError("이 역할은 통화 목록을 볼 수 없습니다 · this role may not list calls", "forbidden")
    lo, hi = day_bounds(day)
    sql = "SELECT * FROM calls WHERE start_utc >= ? AND start_utc < ?"
    args: list = [lo, hi]
    if line is not None:
        sql += " AND line = ?"
        args.append(line)
    idx = CallIndex(Path(data) / "index.sqlite")
    try:
        rows = list(idx.con.execute(sql + " ORDER BY start_utc, id LIMIT ?", (*args, MAX_ROWS + 1)))
    finally:
        idx.close()
    truncated = len(rows) > MAX_ROWS
    rows = rows[:MAX_ROWS]
    show = can(user, MASKED_PERM)
    opened, note = None, ""
    with_numbers = [r["id"] for r in rows if r["numbers_masked"] is not None]
    if show and with_numbers:
        try:
            opened = keeper.masked(user.name, with_numbers, f"calls list {day.isoformat()}")
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
    audit.append("call.view", actor=user.name, role=user.acting_role(perm), obj=f"calls {day.isoformat()}"
                 + (f" line:{line}" if line is not None else ""), source=source,
                 detail={"calls": len(calls), "ids": [c["id"] for c in calls][:100], "masked_numbers": shown})
    return CallList(day, line, calls, show, truncated, note)

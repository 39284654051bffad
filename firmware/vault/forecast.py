"""How the recordings fill the disk: the use over the past months, and the forecast against retention.

The past is rebuilt from the call index alone: every call still kept adds its size on the day it
started; every call destroyed (the ``destructions`` table keeps its size, start and the moment it
was destroyed) added its size on its day and took it away on the day it was destroyed.

The forecast takes each line's recording volume over the last week and its retention (its line
group's days): the calls kept now leave on the day their retention ends; new calls arrive at the
line's volume and leave after its retention. So the use grows for at most the longest retention
and then stays level (the steady state: volume x days). "Days until full" is the first day the
forecast passes the space recordings may take (free space plus what they take now, less the
'disk full' margin), or None when it never does: retention keeps it below.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass, field

import numpy as np

from ..index import iso_utc, parse_utc

DAY = 86400.0
WEEK_S = 7 * DAY


@dataclass
class DiskOutlook:
    """The disk as the health page draws it; bytes throughout, times as UNIX seconds (UTC)."""

    now: float
    stored: int  # bytes of recordings kept now (the index)
    free: int
    total: int
    reserve: int  # retention.disk_full_free_mb: below this much free the disk counts as full
    space: int  # what recordings may take: stored + free - reserve
    history: list[tuple[float, int]]  # (end of a UTC day, bytes kept), oldest first, ending now
    forecast: list[tuple[float, int]]  # (now + d days, bytes), d = 0 .. until the use is level
    bytes_per_day: float  # every line's volume over the last week
    steady: float  # where retention holds the use: sum of volume x retention days
    horizon_days: int  # the longest retention: beyond it the forecast is level
    full_in_days: float | None  # None: the forecast never reaches ``space``
    lines: list[dict] = field(default_factory=list)  # per line: channel, days, bytes_per_day

    def as_dict(self) -> dict:
        return {"stored_bytes": self.stored, "free_bytes": self.free, "total_bytes": self.total,
                "space_bytes": self.space, "bytes_per_day": round(self.bytes_per_day),
                "steady_bytes": round(self.steady), "horizon_days": self.horizon_days,
                "full_in_days": None if self.full_in_days is None else round(self.full_in_days, 1)}


def _day_end(day: str) -> float:
    return dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc).timestamp() + DAY


def history(con: sqlite3.Connection, now: float, days: int = 182) -> list[tuple[float, int]]:
    """Bytes kept at the end of each UTC day of the last ``days`` (the last point is ``now``)."""
    delta: dict[str, int] = {}
    for d, b in con.execute("SELECT substr(start_utc, 1, 10), SUM(size) FROM calls GROUP BY 1"):
        delta[d] = delta.get(d, 0) + int(b or 0)
    have = con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'destructions'").fetchone()
    if have:
        for d, b in con.execute("SELECT substr(start_utc, 1, 10), SUM(size) FROM destructions WHERE kind = 'call'"
                                " AND start_utc IS NOT NULL GROUP BY 1"):
            delta[d] = delta.get(d, 0) + int(b or 0)
        for d, b in con.execute("SELECT substr(destroyed_utc, 1, 10), SUM(size) FROM destructions"
                                " WHERE kind = 'call' AND start_utc IS NOT NULL GROUP BY 1"):
            delta[d] = delta.get(d, 0) - int(b or 0)
    today = iso_utc(now)[:10]
    first = dt.date.fromisoformat(today) - dt.timedelta(days=days - 1)
    level = sum(b for d, b in delta.items() if d < first.isoformat())
    out = []
    for i in range(days):
        d = (first + dt.timedelta(days=i)).isoformat()
        level += delta.get(d, 0)
        out.append((min(_day_end(d), now), level))
    return out


def outlook(con: sqlite3.Connection, retention, channels: list[int], now: float, free: int, total: int,
            history_days: int = 182) -> DiskOutlook:
    """The past and the forecast of the disk (``retention``: config.RetentionConfig; ``channels``: the
    configured lines, though calls of a line no longer configured are counted under the default)."""
    since = iso_utc(now - WEEK_S)
    first = con.execute("SELECT MIN(start_utc) FROM calls WHERE start_utc >= ?", (since,)).fetchone()[0]
    span_days = max(now - parse_utc(first).timestamp(), 3600.0) / DAY if first else None
    rate = {}
    if span_days:
        for line, b in con.execute("SELECT line, SUM(size) FROM calls WHERE start_utc >= ? GROUP BY line", (since,)):
            rate[int(line)] = float(b or 0) / span_days
    kept: dict[int, list[tuple[float, int]]] = {}
    for line, d, b in con.execute("SELECT line, substr(start_utc, 1, 10), SUM(size) FROM calls GROUP BY 1, 2"):
        kept.setdefault(int(line), []).append((_day_end(d), int(b or 0)))
    stored = sum(b for rows in kept.values() for _, b in rows)
    lines = sorted(set(channels) | set(kept) | set(rate))
    horizon = max([retention.days_for(ch)[0] for ch in lines] or [retention.default_days])
    reserve = retention.disk_full_free_mb * 1024 * 1024
    space = max(0, stored + free - reserve)
    t = np.arange(horizon + 1, dtype=np.float64)  # days from now
    use = np.zeros_like(t)
    per_line = []
    for ch in lines:
        days = retention.days_for(ch)[0]
        rows = sorted(kept.get(ch, []))
        if rows:
            # a day's calls are destroyed once that day ended ``days`` ago: kept at now + t when
            # day_end + days * DAY > now + t
            ends = np.array([e for e, _ in rows])
            sizes = np.cumsum([b for _, b in rows]).astype(np.float64)
            gone = np.searchsorted(ends + days * DAY, now + t * DAY, side="right")  # days destroyed by then
            use += sizes[-1] - np.where(gone > 0, sizes[np.maximum(gone - 1, 0)], 0.0)
        use += rate.get(ch, 0.0) * np.minimum(t, days)
        per_line.append({"channel": ch, "days": days, "bytes_per_day": rate.get(ch, 0.0)})
    over = np.nonzero(use > space)[0]
    full_in = None
    if over.size:
        i = int(over[0])
        # between day i-1 and day i, linearly, for a figure that does not jump by whole days
        full_in = float(i) if i == 0 else (i - 1) + float((space - use[i - 1]) / max(use[i] - use[i - 1], 1e-9))
    steady = sum(p["bytes_per_day"] * p["days"] for p in per_line)
    return DiskOutlook(now=now, stored=stored, free=free, total=total, reserve=reserve, space=space,
                       history=history(con, now, history_days), forecast=[(now + d * DAY, int(u)) for d, u in
                                                                          zip(t.tolist(), use.tolist())],
                       bytes_per_day=sum(rate.values()), steady=steady, horizon_days=horizon, full_in_days=full_in,
                       lines=per_line)


def calls_per_hour(con: sqlite3.Connection, now: float, hours: int) -> dict[int, list[int]]:
    """{channel: [calls that began in each of the last ``hours`` whole hours, oldest first]}; the last
    bucket is the current hour (KST is UTC+9, so UTC and KST hours are the same buckets)."""
    top = int(now // 3600) * 3600  # the current hour's start
    lo = top - (hours - 1) * 3600
    out: dict[int, list[int]] = {}
    for line, h, n in con.execute("SELECT line, substr(start_utc, 1, 13), COUNT(*) FROM calls WHERE start_utc >= ?"
                                  " AND start_utc < ? GROUP BY 1, 2", (iso_utc(lo), iso_utc(top + 3600))):
        at = dt.datetime.fromisoformat(h + ":00:00+00:00").timestamp()
        i = int((at - lo) // 3600)
        if 0 <= i < hours:
            out.setdefault(int(line), [0] * hours)[i] = int(n)
    return out

"""SQLite (WAL) index of calls and device events. One connection per thread.

Personal fields (dialled number, caller ID) are never stored here in clear: the
``numbers_sealed`` column holds them as an age file to the records recipients, and
``numbers_masked`` their masked form (010-****-5678) sealed under the device-bound secret,
for the lists of roles allowed to see that much (``firmware/release/calllist.py``).
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from dataclasses import dataclass, replace
from pathlib import Path
from zoneinfo import ZoneInfo

from .config import share_sqlite

KST = ZoneInfo("Asia/Seoul")
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY,
    line INTEGER NOT NULL,            -- input channel
    line_name TEXT NOT NULL,
    start_utc TEXT NOT NULL,          -- ISO 8601, UTC, millisecond precision
    end_utc TEXT,
    start_sample INTEGER NOT NULL,    -- capture sample counter at the first sample of the call
    frames INTEGER NOT NULL DEFAULT 0,
    rate INTEGER NOT NULL,
    duration REAL,                    -- frames / rate: immune to wall-clock steps
    file TEXT NOT NULL,               -- relative to the data directory
    size INTEGER NOT NULL DEFAULT 0,
    codec TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('recording', 'finished', 'interrupted', 'failed')),
    end_reason TEXT,
    lost_frames INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS calls_start ON calls (start_utc);
CREATE INDEX IF NOT EXISTS calls_line_start ON calls (line, start_utc);
CREATE TABLE IF NOT EXISTS notice_modes (
    line INTEGER PRIMARY KEY,         -- input channel
    mode TEXT NOT NULL CHECK (mode IN ('on', 'off', 'beep')),
    actor TEXT NOT NULL,
    reason TEXT NOT NULL,
    time_utc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS device_events (
    id INTEGER PRIMARY KEY,
    time_utc TEXT NOT NULL,
    kind TEXT NOT NULL,               -- lost, back, open_failed, xrun, overrun
    line INTEGER,
    seconds REAL,
    detail TEXT
);
"""


def iso_utc(ts: float) -> str:
    """UTC ISO 8601 with milliseconds and a Z."""
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_utc(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def to_kst(s: str) -> str:
    """The same instant in Korea Standard Time, for display."""
    return parse_utc(s).astimezone(KST).isoformat(timespec="milliseconds")


# Columns added after the first schema: (name, SQL type); added to older databases at open.
_CALL_COLUMNS = (
    ("notice_mode", "TEXT"), ("notice_played", "INTEGER"), ("notice_started", "TEXT"),
    ("notice_ended", "TEXT"), ("notice_delay_ms", "REAL"), ("notice_relay_ms", "REAL"),
    ("notice_wait_ms", "REAL"), ("notice_failure", "TEXT"),
)


def _migrate(con: sqlite3.Connection) -> None:
    have = {r["name"] for r in con.execute("PRAGMA table_info(calls)")}
    for name, kind in _CALL_COLUMNS:
        if name not in have:
            con.execute(f"ALTER TABLE calls ADD COLUMN {name} {kind}")


def connect(db_path: Path) -> sqlite3.Connection:
    """Open the index, creating the schema; WAL so readers never block the writer."""
    con = sqlite3.connect(str(db_path), timeout=10.0)
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA journal_mode=WAL")
    share_sqlite(db_path)  # the recorder writes it; the page and the keeper read it
    con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA foreign_keys=ON")
    with con:
        con.executescript(_SCHEMA)
        _migrate(con)
        con.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        _migrate_calls(con)
        con.executescript(_LIST_INDEXES)
    return con


# -- the calls list (``firmware/release/calllist.py``): newest first, keyset pages; the calls being
# recorded (the health page's stuck-call alarm) ------------------------------------------------------
# A call's notice result as the list filters it. One SQL text shared by the query and the indexes built
# on it: SQLite uses an index on an expression only for a WHERE term of the very same text.
NOTICE_RESULT = ("(CASE WHEN notice_mode IS NULL THEN 'none' WHEN notice_mode = 'off' THEN 'off'"
                 " WHEN notice_played = 0 THEN 'failed' WHEN notice_mode = 'beep' THEN 'beep' ELSE 'played' END)")
NOTICE_RESULTS = ("played", "beep", "off", "failed", "none")
# every filter (day range, line, notice result, each alone or together) walks one of these in
# (start_utc, id) order (an index ends with the rowid, which is id), so a page reads its rows and no
# more; the day-only and unfiltered lists use calls_start
def last_call_per_line(con: sqlite3.Connection, channels) -> dict[int, str]:
    """{channel: start_utc of its newest call} for the ``channels`` that have one (an index seek each)."""
    out = {}
    for ch in channels:
        t = con.execute("SELECT MAX(start_utc) FROM calls WHERE line = ?", (ch,)).fetchone()[0]
        if t:
            out[ch] = t
    return out


_LIST_INDEXES = f"""
CREATE INDEX IF NOT EXISTS calls_notice_start ON calls ({NOTICE_RESULT}, start_utc);
CREATE INDEX IF NOT EXISTS calls_line_notice_start ON calls (line, {NOTICE_RESULT}, start_utc);
CREATE INDEX IF NOT EXISTS calls_recording ON calls (line, start_utc) WHERE state = 'recording';
"""


# Columns added to ``calls`` after the first schema: (name, SQL type). Existing databases get
# them by ALTER TABLE ... ADD COLUMN (NULL for the calls recorded before).
_CALLS_ADDED = (
    ("numbers_sealed", "BLOB"),  # age file of {"dialed": ..., "caller_id": ...}; NULL when none
    ("numbers_masked", "BLOB"),  # BoxSealer blob of the same JSON, masked; NULL when none
    ("numbers_blind", "TEXT"),  # space-separated blind index values (personal.blind_number); NULL when none
    ("key_class", "TEXT"),  # the key class ("30d") whose epoch the call was encrypted to; NULL: before classes
)


def _migrate_calls(con: sqlite3.Connection) -> None:
    have = {r["name"] for r in con.execute("PRAGMA table_info(calls)")}
    for name, sqltype in _CALLS_ADDED:
        if name not in have:
            con.execute(f"ALTER TABLE calls ADD COLUMN {name} {sqltype}")


class CallIndex:
    """Calls and device events; each thread makes its own instance."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self.con = connect(self.db_path)

    def close(self) -> None:
        self.con.close()

    def open_call(self, line: int, line_name: str, start_ts: float, start_sample: int, rate: int,
                  codec: str, file_for_id, key_class: str | None = None) -> tuple[int, str]:
        """Insert a call being recorded; ``file_for_id(id)`` names its file. Returns (id, file)."""
        with self.con:
            cur = self.con.execute(
                "INSERT INTO calls (line, line_name, start_utc, start_sample, rate, file, codec, state, key_class)"
                " VALUES (?, ?, ?, ?, ?, '', ?, 'recording', ?)",
                (line, line_name, iso_utc(start_ts), start_sample, rate, codec, key_class),
            )
            call_id = int(cur.lastrowid)
            rel = file_for_id(call_id)
            self.con.execute("UPDATE calls SET file = ? WHERE id = ?", (rel, call_id))
        return call_id, rel

    def finish_call(self, call_id: int, frames: int, size: int, reason: str, lost_frames: int,
                    state: str = "finished") -> None:
        row = self.con.execute("SELECT start_utc, rate FROM calls WHERE id = ?", (call_id,)).fetchone()
        duration = frames / row["rate"]
        end = parse_utc(row["start_utc"]).timestamp() + duration
        with self.con:
            self.con.execute(
                "UPDATE calls SET end_utc = ?, frames = ?, duration = ?, size = ?, state = ?,"
                " end_reason = ?, lost_frames = ? WHERE id = ?",
                (iso_utc(end), frames, duration, size, state, reason, lost_frames, call_id),
            )

    def set_notice(self, call_id: int, res: dict) -> None:
        """Store what happened to a call's recording notice."""
        with self.con:
            self.con.execute(
                "UPDATE calls SET notice_mode = ?, notice_played = ?, notice_started = ?, notice_ended = ?,"
                " notice_delay_ms = ?, notice_relay_ms = ?, notice_wait_ms = ?, notice_failure = ? WHERE id = ?",
                (res["mode"], int(res["played"]), res["started"], res["ended"], res["delay_ms"],
                 res["relay_ms"], res["wait_ms"], res["failure"], call_id),
            )

    def notice_mode(self, line: int) -> str | None:
        row = self.con.execute("SELECT mode FROM notice_modes WHERE line = ?", (line,)).fetchone()
        return row["mode"] if row else None

    def set_notice_mode(self, line: int, mode: str, actor: str, reason: str, now_ts: float) -> None:
        with self.con:
            self.con.execute("INSERT OR REPLACE INTO notice_modes (line, mode, actor, reason, time_utc)"
                             " VALUES (?, ?, ?, ?, ?)", (line, mode, actor, reason, iso_utc(now_ts)))

    def set_sealed_numbers(self, call_id: int, sealed: bytes, masked: bytes | None = None,
                           blind: str | None = None) -> None:
        """Store the call's numbers: encrypted to the records recipients, masked under the
        device-bound secret, and as keyed blind index values (for the search inside a request)."""
        with self.con:
            self.con.execute("UPDATE calls SET numbers_sealed = ?, numbers_masked = ?, numbers_blind = ? WHERE id = ?",
                             (sealed, masked, blind or None, call_id))

    def add_event(self, ts: float, kind: str, line: int | None = None, seconds: float | None = None,
                  detail: str | None = None) -> None:
        with self.con:
            self.con.execute(
                "INSERT INTO device_events (time_utc, kind, line, seconds, detail) VALUES (?, ?, ?, ?, ?)",
                (iso_utc(ts), kind, line, seconds, detail),
            )

    def calls(self) -> list[sqlite3.Row]:
        return list(self.con.execute("SELECT * FROM calls ORDER BY id"))

    def events(self) -> list[sqlite3.Row]:
        return list(self.con.execute("SELECT * FROM device_events ORDER BY id"))

    def calls_today(self, now_ts: float) -> dict[int, int]:
        """Calls started on the current KST day, per line."""
        day = dt.datetime.fromtimestamp(now_ts, KST).replace(hour=0, minute=0, second=0, microsecond=0)
        since = iso_utc(day.timestamp())
        # by the start index: grouping by line would otherwise walk (line, start) over every call ever kept
        rows = self.con.execute("SELECT line, COUNT(*) AS n FROM calls INDEXED BY calls_start WHERE start_utc >= ?"
                                " GROUP BY line", (since,))
        return {r["line"]: r["n"] for r in rows}


@dataclass(frozen=True)
class ListFilter:
    """What the calls list is narrowed to: a UTC range [lo, hi), a channel, a notice result."""

    lo: str | None = None
    hi: str | None = None
    line: int | None = None
    notice: str | None = None

    def where(self) -> tuple[str, list]:
        terms, args = [], []
        if self.lo is not None:
            terms.append("start_utc >= ?")
            args.append(self.lo)
        if self.hi is not None:
            terms.append("start_utc < ?")
            args.append(self.hi)
        if self.line is not None:
            terms.append("line = ?")
            args.append(self.line)
        if self.notice is not None:
            terms.append(f"{NOTICE_RESULT} = ?")
            args.append(self.notice)
        return " AND ".join(terms) or "1", args


@dataclass
class CallPage:
    """One page of the list, newest first, and whether there are newer / older calls beyond it."""

    rows: list[sqlite3.Row]
    newer: bool
    older: bool


def list_sql(flt: ListFilter, *, after: tuple[str, int] | None = None, before: tuple[str, int] | None = None,
             limit: int = 100) -> tuple[str, list]:
    """The keyset query of one page: after a cursor (older calls), before one (newer, read upwards and
    turned round by the caller) or from the newest. Never an OFFSET: page 5,000 costs what page 1 does."""
    # a cursor inside the day range bounds the scan on its side itself (SQLite takes one bound per side)
    if before is not None:
        if flt.lo is not None and before[0] >= flt.lo:
            flt = replace(flt, lo=None)
        where, args = flt.where()
        return (f"SELECT * FROM calls WHERE {where} AND (start_utc, id) > (?, ?) ORDER BY start_utc, id LIMIT ?",
                [*args, *before, limit])
    if after is not None and flt.hi is not None and after[0] < flt.hi:
        flt = replace(flt, hi=None)
    where, args = flt.where()
    if after is not None:
        where += " AND (start_utc, id) < (?, ?)"
        args = [*args, *after]
    return f"SELECT * FROM calls WHERE {where} ORDER BY start_utc DESC, id DESC LIMIT ?", [*args, limit]


def _exists(con: sqlite3.Connection, flt: ListFilter, op: str, key: tuple[str, int]) -> bool:
    where, args = flt.where()
    return con.execute(f"SELECT 1 FROM calls WHERE {where} AND (start_utc, id) {op} (?, ?) LIMIT 1",
                       (*args, *key)).fetchone() is not None


def call_page(con: sqlite3.Connection, flt: ListFilter, *, after: tuple[str, int] | None = None,
              before: tuple[str, int] | None = None, limit: int = 100) -> CallPage:
    """``limit`` calls newest first, after or before a (start_utc, id) cursor. A page before a cursor
    that would be short (calls came or went) is the first page instead."""
    if before is not None:
        rows = list(con.execute(*list_sql(flt, before=before, limit=limit + 1)))
        if len(rows) > limit:
            rows = rows[:limit]
            rows.reverse()
            return CallPage(rows, True, _exists(con, flt, "<", (rows[-1]["start_utc"], rows[-1]["id"])))
        after = None
    rows = list(con.execute(*list_sql(flt, after=after, limit=limit + 1)))
    older = len(rows) > limit
    rows = rows[:limit]
    newer = after is not None and rows != [] and _exists(con, flt, ">", (rows[0]["start_utc"], rows[0]["id"]))
    if after is not None and not rows:  # past the oldest call: the way back is to the cursor's side
        newer = _exists(con, flt, ">=", after)
    return CallPage(rows, newer, older)


# a cursor in a URL: the (start_utc, id) of the row a page ends or starts at, "2026-12-03T01:02:03.456Z_42"
_CURSOR = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z)_([1-9][0-9]{0,18})")


def cursor_text(row: sqlite3.Row) -> str:
    return f"{row['start_utc']}_{row['id']}"


def parse_cursor(text: str) -> tuple[str, int] | None:
    """A cursor from ``cursor_text``, or None when it is not one (any other text, an impossible time, an
    id beyond SQLite's integers)."""
    m = _CURSOR.fullmatch(text)
    if m is None or int(m.group(2)) > 2**63 - 1:
        return None
    try:
        parse_utc(m.group(1))
    except ValueError:
        return None
    return m.group(1), int(m.group(2))


def call_json(row: sqlite3.Row, data_dir: Path) -> dict:
    """The public view of a call: no personal fields."""
    return {
        "id": row["id"],
        "line": row["line"],
        "line_name": row["line_name"],
        "start": row["start_utc"],
        "end": row["end_utc"],
        "start_local": to_kst(row["start_utc"]),
        "end_local": to_kst(row["end_utc"]) if row["end_utc"] else None,
        "duration": round(row["duration"], 3) if row["duration"] is not None else None,
        "file": str(Path(data_dir) / row["file"]),
        "size": row["size"],
        "codec": row["codec"],
        "state": row["state"],
        "end_reason": row["end_reason"],
        "lost_frames": row["lost_frames"],
        "notice": None if row["notice_mode"] is None else {
            "mode": row["notice_mode"],
            "played": bool(row["notice_played"]),
            "started": row["notice_started"],
            "ended": row["notice_ended"],
            "delay_ms": row["notice_delay_ms"],
            "wait_ms": row["notice_wait_ms"],
            "failure": row["notice_failure"],
        },
        "has_number": row["numbers_sealed"] is not None,
    }

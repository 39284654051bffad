"""SQLite (WAL) index of calls and device events. One connection per thread.

Personal fields (dialled number, caller ID) are never stored here in clear: the
``numbers_sealed`` column holds them as an age file to the records recipients, and
``numbers_masked`` their masked form (010-****-5678) sealed under the device-bound secret,
for the lists of roles allowed to see that much (``firmware/release/calllist.py``).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from zoneinfo import ZoneInfo

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
    con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA foreign_keys=ON")
    with con:
        con.executescript(_SCHEMA)
        _migrate(con)
        con.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        _migrate_calls(con)
    return con


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

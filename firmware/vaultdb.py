"""The vault's tables in the index: key epochs, legal holds, the destruction ledger, PIN counters.

Kept beside ``index.py``'s schema (same SQLite file, same WAL and durability settings) so
the branches that extend the call schema do not collide with this one.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .index import connect

_SCHEMA = """
CREATE TABLE IF NOT EXISTS key_epochs (
    id INTEGER PRIMARY KEY,
    recipient TEXT NOT NULL,          -- age1... (public); new calls are encrypted to the current epoch
    file TEXT NOT NULL,               -- keys/epochs/<id>.age: the epoch identity sealed to the records recipient
    created_utc TEXT NOT NULL,
    retired_utc TEXT,                 -- no file is encrypted to it after this instant
    destroyed_utc TEXT                -- its sealed identity was erased: its recordings are unreadable
);
CREATE TABLE IF NOT EXISTS holds (
    id INTEGER PRIMARY KEY,
    call_id INTEGER NOT NULL,
    request_ref TEXT NOT NULL,        -- the request (열람·제공 신청) or the authority's document number
    opened_utc TEXT NOT NULL,
    opened_by TEXT NOT NULL,
    closed_utc TEXT,
    closed_by TEXT,
    close_reason TEXT
);
CREATE INDEX IF NOT EXISTS holds_open ON holds (call_id) WHERE closed_utc IS NULL;
CREATE TABLE IF NOT EXISTS destructions (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('call', 'key_epoch')),
    object TEXT NOT NULL UNIQUE,      -- 'call:<id>' or 'key_epoch:<id>'
    call_id INTEGER,
    line INTEGER,
    line_name TEXT,
    start_utc TEXT,
    end_utc TEXT,
    size INTEGER,
    reason TEXT NOT NULL,             -- why: the retention rule, or the disk-full policy
    method TEXT NOT NULL,             -- how: what was erased, in order
    destroyed_utc TEXT NOT NULL,      -- when
    destroyed_by TEXT NOT NULL,
    trim TEXT                         -- outcome of TRIM on the data filesystem after the batch
);
CREATE TABLE IF NOT EXISTS pin_state (
    slot TEXT PRIMARY KEY,
    approver TEXT NOT NULL,
    seq INTEGER NOT NULL              -- mirrors the sequence number of keys/pin/<slot>.state
);
"""


def ensure_schema(con: sqlite3.Connection) -> None:
    with con:
        con.executescript(_SCHEMA)
        have = {r["name"] for r in con.execute("PRAGMA table_info(key_epochs)")}
        if "key_class" not in have:
            # the retention period the epoch serves ("30d"); NULL: every line (before key classes)
            con.execute("ALTER TABLE key_epochs ADD COLUMN key_class TEXT")


def connect_vault(data: Path) -> sqlite3.Connection:
    """The index with the vault tables present."""
    con = connect(Path(data) / "index.sqlite")
    con.execute("PRAGMA secure_delete=ON")  # rows of destroyed calls are zeroed in the file, not just unlinked
    ensure_schema(con)
    return con

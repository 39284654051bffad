"""Alarms: the rules that raise them from the box's live state, and their record in SQLite.

``evaluate`` is pure: it turns facts the page gathered (the recorder's status, the processes,
counts from the call index, the review state, the clock) into the alarms that hold now, and
names the kinds it could not judge (the recorder is down: its lines are not judged, so their
alarms neither clear nor rise). ``AlarmStore`` keeps one row per raising in
``DATA/alarms.sqlite`` (owner-only): raised, cleared, acknowledged by whom and when; raising
and clearing are audited by ``sync``, acknowledging by the caller, who knows the person.
An alarm is shown until acknowledged, also after it cleared (a fault that came and went is
still seen), as alarm panels do (ISA-18.2 "return to normal, unacknowledged").
"""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from .index import iso_utc

KINDS = {
    "stuck_call": "통화가 끝나지 않음 · Line stuck in a call",
    "no_call": "오랫동안 통화 없음 · No call for days",
    "notice_failed": "녹음 안내 연속 실패 · Notice failed twice in a row",
    "device_missing": "입력 장치 없음 · Audio device missing",
    "disk_low": "디스크 여유 부족 · Disk nearly full",
    "disk_full": "디스크 가득 참 · Disk full",
    "clock": "시계 동기화 안 됨 · Clock not synchronised",
    "process_down": "프로세스 멈춤 · Process down",
    "review_overdue": "감사 검토 밀림 · Audit review overdue",
}
LINE_KINDS = frozenset({"stuck_call", "no_call", "notice_failed"})
_PROCESS_WORDS = {"recorder": "녹음기 · recorder", "keeper": "키 관리자 · key keeper", "web": "관리 화면 · page"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,                -- kind:subject, e.g. 'stuck_call:line:0'
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,            -- 'line:<channel>', 'disk', 'process:recorder', ...
    text TEXT NOT NULL,               -- Korean · English, no personal data
    raised_utc TEXT NOT NULL,
    cleared_utc TEXT,
    acked_by TEXT,
    acked_utc TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS alarms_open ON alarms (key) WHERE cleared_utc IS NULL;
CREATE INDEX IF NOT EXISTS alarms_unacked ON alarms (id) WHERE acked_utc IS NULL;
"""


@dataclass(frozen=True)
class Alarm:
    """One alarm that holds now."""

    kind: str
    subject: str
    text: str

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.subject}"


def _line_word(ln: dict) -> str:
    return f"{ln['channel'] + 1}번 회선 ({ln['name']})"


def evaluate(facts: dict, cfg, now: float) -> tuple[list[Alarm], set[str]]:
    """(the alarms that hold, the kinds judged). ``facts``: ``recorder`` (its status, None when down),
    ``processes`` (rows of web/status.processes), ``open_calls`` ({channel: start ts} of calls being
    recorded), ``last_call`` ({channel: ts}), ``first_call`` (ts of the oldest call kept, or None),
    ``overdue`` (the oldest unreviewed past day, or None; absent: not judged), ``today`` (KST date),
    ``clock`` (firmware.health.clock_sync()), ``disk`` (retention.disk_report, {} when unknown)."""
    a = cfg.alarms
    out: list[Alarm] = []
    judged = {"process_down"}
    st = facts.get("recorder")
    down = [p for p in facts.get("processes") or [] if p["state"] != "running" and p["name"] != "web"]
    if st is None and not any(p["name"] == "recorder" for p in down):
        down.append({"name": "recorder"})
    for p in down:
        out.append(Alarm("process_down", f"process:{p['name']}",
                         f"{_PROCESS_WORDS.get(p['name'], p['name'])} 멈춤 · is not running"))
    if st is not None:
        judged |= LINE_KINDS | {"device_missing"}
        enabled = {ln.channel for ln in cfg.lines if getattr(ln, "enabled", True)}
        for ln in st.get("lines") or []:
            ch = ln["channel"]
            began = (facts.get("open_calls") or {}).get(ch)
            if ln["state"] == "in_call" and began is not None and now - began > a.stuck_call_min * 60:
                minutes = int((now - began) // 60)
                out.append(Alarm("stuck_call", f"line:{ch}", f"{_line_word(ln)}: {minutes}분째 통화 중 (기준 "
                                 f"{a.stuck_call_min}분; 선이 끊겼거나 수화기가 내려지지 않음) · in one call for "
                                 f"{minutes} min (limit {a.stuck_call_min}; a cut wire or a handset off-hook)"))
            last = (facts.get("last_call") or {}).get(ch, facts.get("first_call"))
            if a.no_call_days and ch in enabled and last is not None and now - last > a.no_call_days * 86400:
                days = int((now - last) // 86400)
                out.append(Alarm("no_call", f"line:{ch}", f"{_line_word(ln)}: {days}일째 통화 없음 (기준 "
                                 f"{a.no_call_days}일; 탭이 빠졌는지 확인) · no call for {days} days (limit "
                                 f"{a.no_call_days}; is the tap unplugged?)"))
            notice = ln.get("notice") or {}
            if notice.get("alarm"):
                out.append(Alarm("notice_failed", f"line:{ch}", f"{_line_word(ln)}: 녹음 안내가 연속 "
                                 f"{notice.get('failures_in_row', 2)}번 실패 ({notice.get('last_failure') or '?'}) · "
                                 f"the notice failed {notice.get('failures_in_row', 2)} times in a row"))
        dev = st.get("device") or {}
        if dev.get("state") in ("lost", "failed"):
            out.append(Alarm("device_missing", "device", f"입력 장치가 없습니다 ({dev.get('state')}) · the audio "
                             f"capture device is missing: {dev.get('last_error') or dev.get('state')}"))
    disk = facts.get("disk")
    if disk:
        judged |= {"disk_low", "disk_full"}
        free = f"{disk['free_bytes'] / 1e9:.1f} GB ({disk['free_percent']} %)"
        if disk.get("state") == "full":
            out.append(Alarm("disk_full", "disk", f"디스크가 가득 찼습니다: 여유 {free}, 기준 {disk['full_free_mb']} MB · "
                             f"disk full: {free} free, limit {disk['full_free_mb']} MB"))
        elif disk.get("state") == "warn":
            out.append(Alarm("disk_low", "disk", f"디스크 여유 부족: {free}, 기준 {disk['warn_free_percent']} % · "
                             f"disk nearly full: {free} free, warn below {disk['warn_free_percent']} %"))
    clock = facts.get("clock") or {}
    if a.clock != "off" and "clock" in facts:
        judged.add("clock")
        definite = clock.get("source") == "timedatectl"
        unsynced = clock.get("synced") is False and (definite or a.clock == "required")
        unknown = clock.get("synced") is None and a.clock == "required"
        if unsynced or unknown:
            how = "알 수 없음 · cannot be told" if unknown else f"동기화 안 됨 · not synchronised ({clock.get('source')})"
            out.append(Alarm("clock", "clock", f"시계: {how}; 통화 시각이 틀릴 수 있습니다 · call times may be wrong"))
    if a.review_overdue_days and "overdue" in facts:
        judged.add("review_overdue")
        oldest, today = facts["overdue"], facts["today"]
        if oldest is not None and (today - oldest).days > a.review_overdue_days:
            out.append(Alarm("review_overdue", "audit", f"감사 검토 안 된 날: {oldest.isoformat()}부터 "
                             f"{(today - oldest).days}일 (기준 {a.review_overdue_days}일) · audit days not signed off "
                             f"since {oldest.isoformat()} ({(today - oldest).days} days, limit {a.review_overdue_days})"))
    return out, judged


def _create_private(path: Path) -> None:
    """The file exists, owner-only (SQLite's journal files take the database file's mode)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


class AlarmStore:
    """``DATA/alarms.sqlite``. One connection per call; ``_lock`` serialises this process's writers
    (SQLite's own lock serialises processes)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / "alarms.sqlite"
        self._lock = threading.Lock()  # guards sync's read-compare-write against another page thread
        _create_private(self.path)
        with self._con() as con:
            con.executescript(_SCHEMA)

    def _con(self) -> sqlite3.Connection:
        con = sqlite3.connect(str(self.path), timeout=10.0)
        con.row_factory = sqlite3.Row
        return con

    def _query(self, sql: str, args=()) -> list[dict]:
        con = self._con()
        try:
            return [dict(r) for r in con.execute(sql, args)]
        finally:
            con.close()

    def sync(self, holding: list[Alarm], judged: set[str], now: float, audit=None) -> tuple[list[dict], list[dict]]:
        """Raise what holds and is not open, clear what is open, judged and no longer holds; audit both.
        Returns (raised, cleared) rows."""
        want = {al.key: al for al in holding}
        raised, cleared = [], []
        with self._lock:
            con = self._con()
            try:
                with con:
                    con.execute("BEGIN IMMEDIATE")
                    open_rows = {r["key"]: dict(r) for r in con.execute("SELECT * FROM alarms WHERE cleared_utc IS NULL")}
                    for key, al in want.items():
                        if key in open_rows:
                            if open_rows[key]["text"] != al.text:  # the figures in it moved on (minutes, GB)
                                con.execute("UPDATE alarms SET text = ? WHERE id = ?", (al.text, open_rows[key]["id"]))
                            continue
                        cur = con.execute("INSERT INTO alarms (key, kind, subject, text, raised_utc) VALUES (?, ?, ?, ?, ?)",
                                          (key, al.kind, al.subject, al.text, iso_utc(now)))
                        raised.append({"id": cur.lastrowid, "key": key, "kind": al.kind, "subject": al.subject,
                                       "text": al.text})
                    for key, row in open_rows.items():
                        if key not in want and row["kind"] in judged:
                            con.execute("UPDATE alarms SET cleared_utc = ? WHERE id = ?", (iso_utc(now), row["id"]))
                            cleared.append(row)
            finally:
                con.close()
        if audit is not None:
            for r in raised:
                audit.append("alarm.raise", obj=f"alarm:{r['id']}", reason=r["text"],
                             detail={"kind": r["kind"], "subject": r["subject"]})
            for r in cleared:
                audit.append("alarm.clear", obj=f"alarm:{r['id']}", reason=r["text"],
                             detail={"kind": r["kind"], "subject": r["subject"]})
        return raised, cleared

    def unacknowledged(self) -> list[dict]:
        """What the banner shows: every raising nobody acknowledged yet, open or already cleared."""
        return self._query("SELECT * FROM alarms WHERE acked_utc IS NULL ORDER BY id DESC LIMIT 50")

    def open(self) -> list[dict]:
        return self._query("SELECT * FROM alarms WHERE cleared_utc IS NULL ORDER BY id")

    def recent(self, limit: int = 30) -> list[dict]:
        return self._query("SELECT * FROM alarms ORDER BY id DESC LIMIT ?", (limit,))

    def get(self, alarm_id: int) -> dict | None:
        rows = self._query("SELECT * FROM alarms WHERE id = ?", (alarm_id,))
        return rows[0] if rows else None

    def acknowledge(self, alarm_id: int, by: str, now: float) -> dict | None:
        """Mark one raising acknowledged; None when there is no such unacknowledged alarm."""
        with self._lock:
            con = self._con()
            try:
                with con:
                    n = con.execute("UPDATE alarms SET acked_by = ?, acked_utc = ? WHERE id = ? AND acked_utc IS NULL",
                                    (by, iso_utc(now), alarm_id)).rowcount
            finally:
                con.close()
        return self.get(alarm_id) if n else None

"""Retention: expired recordings are crypto-erased, held ones are kept, and the disk is watched.

A call expires ``days`` after its end (the group of its line, else ``retention.default_days``),
never a day before. Destroying a call, in order (see docs/threat-model.md, "The vault"):

1. its key material: the age header holding the call's wrapped file key is overwritten in
   place (the payload without it is unreadable even with every identity), and, once no call
   that can depend on it remains, the whole key epoch's sealed identity is erased
   (``epochs.py``), which covers remnants the filesystem no longer shows;
2. the file (and any ``.part``): unlinked, directory fsynced;
3. TRIM of the data filesystem (``fstrim``) where available; the outcome is recorded as is.

Each destruction writes a ledger row (``destructions``: what, when, why, how, by whom; seed
004 art. 7) and an audit entry. A call with an open hold is never destroyed.

Disk space: ``disk_report`` projects the days left at the last week's volume; below
``disk_warn_free_percent`` the page warns, below ``disk_full_free_mb`` it alarms. Only when
``retention.when_full = "oldest_first"`` are recordings within retention destroyed to make
room, each one audited with that reason.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..audit import AuditLog
from ..config import NokboxConfig
from .epochs import destroy_epoch, destroyable, epoch_due, erase_file, rotate
from ..errors import VaultError
from ..index import iso_utc, parse_utc
from ..vaultdb import connect_vault

log = logging.getLogger(__name__)

HEADER_ERASE_BYTES = 4096   # one filesystem block: the age header (~200 B) and the payload nonce
DAY = 86400.0
_disk_usage = shutil.disk_usage  # tests replace it to simulate a full disk


# -- holds ------------------------------------------------------------------------------
def open_hold(data: Path, call_id: int, request_ref: str, by: str, now: float | None = None) -> int:
    """Put a call on hold for a request: it is not destroyed until the hold is closed."""
    if not request_ref.strip():
        raise VaultError("a hold needs the request reference")
    now = time.time() if now is None else now
    con = connect_vault(data)
    try:
        if con.execute("SELECT 1 FROM calls WHERE id = ?", (call_id,)).fetchone() is None:
            raise VaultError(f"call {call_id} does not exist (destroyed, or never recorded)")
        with con:
            hid = int(con.execute("INSERT INTO holds (call_id, request_ref, opened_utc, opened_by) VALUES (?, ?, ?, ?)",
                                  (call_id, request_ref, iso_utc(now), by)).lastrowid)
    finally:
        con.close()
    AuditLog(data).append("hold.open", actor=by, role="officer", obj=f"call:{call_id}", reason=request_ref,
                          detail={"hold": hid})
    return hid


def close_hold(data: Path, hold_id: int, by: str, reason: str = "", now: float | None = None) -> None:
    """Close a hold; the call is destroyed at the next run if its retention has passed."""
    now = time.time() if now is None else now
    con = connect_vault(data)
    try:
        row = con.execute("SELECT * FROM holds WHERE id = ?", (hold_id,)).fetchone()
        if row is None or row["closed_utc"] is not None:
            raise VaultError(f"hold {hold_id} is not open")
        with con:
            con.execute("UPDATE holds SET closed_utc = ?, closed_by = ?, close_reason = ? WHERE id = ?",
                        (iso_utc(now), by, reason, hold_id))
    finally:
        con.close()
    AuditLog(data).append("hold.close", actor=by, role="officer", obj=f"call:{row['call_id']}",
                          reason=reason or row["request_ref"], detail={"hold": hold_id})


def open_holds(con: sqlite3.Connection) -> dict[int, dict]:
    """call id -> its most recent open hold (and how many are open)."""
    out: dict[int, dict] = {}
    for r in con.execute("SELECT * FROM holds WHERE closed_utc IS NULL ORDER BY id"):
        prev = out.get(r["call_id"])
        out[r["call_id"]] = {"id": r["id"], "request": r["request_ref"], "opened": r["opened_utc"],
                             "opened_by": r["opened_by"], "open_holds": (prev["open_holds"] + 1) if prev else 1}
    return out


def _held(con: sqlite3.Connection, call_id: int) -> bool:
    return con.execute("SELECT 1 FROM holds WHERE call_id = ? AND closed_utc IS NULL LIMIT 1",
                       (call_id,)).fetchone() is not None


# -- destruction ------------------------------------------------------------------------
@dataclass
class RetentionReport:
    """What one run destroyed (or would, in a dry run) and what it kept."""

    now: float
    dry_run: bool
    destroyed: list[dict] = field(default_factory=list)
    held: list[int] = field(default_factory=list)
    epochs_destroyed: list[int] = field(default_factory=list)
    trim: str = ""
    errors: list[str] = field(default_factory=list)


def _expires(row: sqlite3.Row, cfg: NokboxConfig) -> tuple[float, int, str]:
    days, group = cfg.retention.days_for(row["line"])
    end = parse_utc(row["end_utc"] or row["start_utc"]).timestamp()
    return end + days * DAY, days, group


def erase_call_file(path: Path) -> bool:
    """Overwrite the age header (the wrapped file key) in place, fsync, unlink. True if it existed."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return False
    try:
        n = min(os.fstat(fd).st_size, HEADER_ERASE_BYTES)
        os.pwrite(fd, os.urandom(n), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.unlink(path)
    return True


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


METHOD = ("crypto-erase: age header with the wrapped file key overwritten, file unlinked; "
          "key epoch erased once no call depends on it; TRIM per the 'trim' column")


def destroy_call(data: Path, con: sqlite3.Connection, row: sqlite3.Row, reason: str, by: str,
                 now: float) -> dict | None:
    """Crypto-erase one call and write its ledger row; None if a hold appeared meanwhile.

    Runs under SQLite's write lock so a hold opened concurrently either lands first (and the
    call is kept) or after (and finds the call gone). Idempotent after a crash.
    """
    data = Path(data)
    con.execute("BEGIN IMMEDIATE")
    try:
        if _held(con, row["id"]):
            con.execute("ROLLBACK")
            return None
        path = data / row["file"] if row["file"] else None
        existed = False
        if path is not None:
            for p in (path, path.with_name(path.name + ".part")):
                existed = erase_call_file(p) or existed
            _fsync_dir(path.parent)
        con.execute("DELETE FROM calls WHERE id = ?", (row["id"],))
        con.execute(
            "INSERT INTO destructions (kind, object, call_id, line, line_name, start_utc, end_utc, size, reason,"
            " method, destroyed_utc, destroyed_by) VALUES ('call', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(object) DO NOTHING",
            (f"call:{row['id']}", row["id"], row["line"], row["line_name"], row["start_utc"], row["end_utc"],
             row["size"], reason, METHOD if existed else "no file was left; index entry removed", iso_utc(now), by))
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    entry = {"call": row["id"], "line": row["line"], "line_name": row["line_name"], "start": row["start_utc"],
             "end": row["end_utc"], "size": row["size"], "reason": reason, "file_existed": existed}
    AuditLog(data).append("retention.destroy", actor=by, role="system", obj=f"call:{row['id']}", reason=reason,
                          detail={k: v for k, v in entry.items() if k not in ("call", "line_name")})
    return entry


def _destroy_epochs(data: Path, con: sqlite3.Connection, by: str, now: float, report: RetentionReport) -> None:
    for e in destroyable(con, {d["call"] for d in report.destroyed} if report.dry_run else set()):
        reason = f"key epoch retired {e['retired_utc']}; no recording that depends on it remains"
        if report.dry_run:
            report.epochs_destroyed.append(e["id"])
            continue
        destroy_epoch(data, con, e, now)
        with con:
            con.execute("INSERT INTO destructions (kind, object, reason, method, destroyed_utc, destroyed_by)"
                        " VALUES ('key_epoch', ?, ?, ?, ?, ?) ON CONFLICT(object) DO NOTHING",
                        (f"key_epoch:{e['id']}", reason, "sealed epoch identity overwritten in place and unlinked",
                         iso_utc(now), by))
        AuditLog(data).append("retention.destroy-key", actor=by, role="system", obj=f"key_epoch:{e['id']}",
                              reason=reason, detail={"recipient": e["recipient"]})
        report.epochs_destroyed.append(e["id"])


def _mount_point(path: Path) -> Path:
    p = Path(path).resolve()
    while not os.path.ismount(p):
        p = p.parent
    return p


FSTRIM = "fstrim"


def trim(data: Path) -> str:
    """TRIM the filesystem holding DATA; returns what happened, in words (never raises)."""
    tool = shutil.which(FSTRIM)
    if tool is None:
        return "not done: fstrim is not installed"
    mount = _mount_point(data)
    try:
        out = subprocess.run([tool, "-v", str(mount)], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"not done: {exc}"
    if out.returncode != 0:
        return f"not done on {mount}: {(out.stderr or out.stdout).strip() or 'exit ' + str(out.returncode)}"
    return f"done on {mount}: {out.stdout.strip()}"


def _finish(data: Path, con: sqlite3.Connection, cfg: NokboxConfig, by: str, now: float,
            report: RetentionReport, action: str) -> None:
    _destroy_epochs(data, con, by, now, report)
    if report.dry_run:
        return
    if report.destroyed or report.epochs_destroyed:
        report.trim = trim(data) if cfg.retention.trim == "auto" else "not done: retention.trim = 'off'"
        objs = [f"call:{d['call']}" for d in report.destroyed] + [f"key_epoch:{e}" for e in report.epochs_destroyed]
        with con:
            con.executemany("UPDATE destructions SET trim = ? WHERE object = ?", [(report.trim, o) for o in objs])
    AuditLog(data).append(action, actor=by, role="system", outcome="ok" if not report.errors else "partial",
                          detail={"destroyed": len(report.destroyed), "held": report.held,
                                  "key_epochs": report.epochs_destroyed, "trim": report.trim,
                                  "errors": report.errors[:20]})


BATCH = 1000


def _candidates(con: sqlite3.Connection, cfg: NokboxConfig, now: float):
    """The finished calls old enough to have expired under the shortest retention, oldest first, read a
    batch at a time (a box keeps a million calls for years: they are never all in memory at once)."""
    shortest = min([cfg.retention.default_days] + [g.days for g in cfg.retention.group])
    cutoff = iso_utc(now - shortest * DAY)  # a call expires no earlier than its start + the shortest period
    last: tuple[str, int] = ("", 0)
    while True:
        batch = con.execute("SELECT * FROM calls WHERE state != 'recording' AND start_utc <= ? AND (start_utc, id) > (?, ?)"
                            " ORDER BY start_utc, id LIMIT ?", (cutoff, *last, BATCH)).fetchall()
        if not batch:
            return
        last = (batch[-1]["start_utc"], batch[-1]["id"])
        yield from batch


def run_retention(data: Path, cfg: NokboxConfig, now: float | None = None, dry_run: bool = False,
                  by: str = "system") -> RetentionReport:
    """Destroy every expired, unheld call, then every key epoch nothing depends on any more."""
    now = time.time() if now is None else now
    data = Path(data)
    report = RetentionReport(now, dry_run)
    con = connect_vault(data)
    try:
        holds = open_holds(con)
        for row in _candidates(con, cfg, now):
            expires, days, group = _expires(row, cfg)
            if expires > now:
                continue
            if row["id"] in holds:
                report.held.append(row["id"])
                continue
            reason = f"retention expired: {days} days (group {group}) after {row['end_utc'] or row['start_utc']}"
            if dry_run:
                report.destroyed.append({"call": row["id"], "line": row["line"], "start": row["start_utc"],
                                         "end": row["end_utc"], "size": row["size"], "reason": reason})
                continue
            try:
                entry = destroy_call(data, con, row, reason, by, now)
            except OSError as exc:
                report.errors.append(f"call {row['id']}: {exc.strerror or exc}")
                log.error("could not destroy call %s: %s", row["id"], exc)
                continue
            if entry is None:
                report.held.append(row["id"])
            else:
                report.destroyed.append(entry)
        _finish(data, con, cfg, by, now, report, "retention.run")
    finally:
        con.close()
    if not dry_run:
        log.info("retention: %d call(s) destroyed, %d held, %d key epoch(s) erased; trim: %s",
                 len(report.destroyed), len(report.held), len(report.epochs_destroyed), report.trim or "-")
    return report


# -- disk space -------------------------------------------------------------------------
def disk_report(data: Path, cfg: NokboxConfig, now: float | None = None) -> dict:
    """Free space, the last week's recording volume and the projected days left; state ok/warn/full."""
    now = time.time() if now is None else now
    try:
        du = _disk_usage(data)
    except OSError:
        return {}
    r = cfg.retention
    out = {"free_bytes": du.free, "total_bytes": du.total, "free_percent": round(100.0 * du.free / du.total, 1)}
    per_day = None
    try:
        con = connect_vault(data)
        try:
            row = con.execute("SELECT COALESCE(SUM(size), 0) AS b, MIN(start_utc) AS first FROM calls"
                              " WHERE start_utc >= ?", (iso_utc(now - 7 * DAY),)).fetchone()
        finally:
            con.close()
        if row["first"] is not None and row["b"] > 0:
            span = max(now - parse_utc(row["first"]).timestamp(), 3600.0)
            per_day = row["b"] / (span / DAY)
    except sqlite3.Error:
        pass
    days_left = round(du.free / per_day, 1) if per_day else None
    full = du.free < r.disk_full_free_mb * 1024 * 1024
    warn = full or out["free_percent"] < r.disk_warn_free_percent
    state = "full" if full else "warn" if warn else "ok"
    left = f"{days_left:.1f} days left at the last week's volume" if days_left is not None else "no recent calls"
    alarm = ""
    if full:
        alarm = (f"DISK FULL: {du.free / 1e6:.0f} MB free; new calls cannot be stored. "
                 + ("The oldest unheld recordings are destroyed to make room (retention.when_full = oldest_first)."
                    if r.when_full == "oldest_first" else
                    "Recordings within retention are kept (retention.when_full = keep): free space or add a disk."))
    elif warn:
        alarm = f"disk space low: {out['free_percent']} % free, {left}"
    return out | {"state": state, "bytes_per_day": round(per_day) if per_day else None, "days_left": days_left,
                  "warn_free_percent": r.disk_warn_free_percent, "full_free_mb": r.disk_full_free_mb,
                  "when_full": r.when_full, "alarm": alarm}


def make_room(data: Path, cfg: NokboxConfig, now: float | None = None, by: str = "system") -> RetentionReport:
    """Disk full and ``when_full = oldest_first``: destroy the oldest unheld calls, even within
    retention, until twice the full threshold is free. Does nothing under 'keep'."""
    now = time.time() if now is None else now
    report = RetentionReport(now, False)
    if cfg.retention.when_full != "oldest_first":
        return report
    want = 2 * cfg.retention.disk_full_free_mb * 1024 * 1024
    con = connect_vault(data)
    try:
        while _disk_usage(data).free < want:
            holds = open_holds(con)
            row = next((r for r in con.execute("SELECT * FROM calls WHERE state != 'recording' ORDER BY start_utc"
                                               " LIMIT 200") if r["id"] not in holds), None)
            if row is None:
                report.errors.append("nothing left that may be destroyed")
                break
            expires, days, group = _expires(row, cfg)
            early = max(0.0, (expires - now) / DAY)
            reason = (f"disk full: retention.when_full = oldest_first; destroyed {early:.1f} days before its "
                      f"{days}-day retention (group {group}) ended")
            entry = destroy_call(data, con, row, reason, by, now)
            if entry is not None:
                report.destroyed.append(entry)
        _finish(data, con, cfg, by, now, report, "retention.make-room")
    finally:
        con.close()
    return report


# -- the housekeeper --------------------------------------------------------------------
class RetentionMaintainer(threading.Thread):
    """Watches the disk every ``check_s``; every ``retention.interval_h`` rotates the key epoch
    when due and destroys expired recordings. Owns no state the other threads write."""

    def __init__(self, rec, check_s: float = 60.0, first_s: float = 30.0) -> None:
        super().__init__(name="retention", daemon=True)
        self.rec = rec
        self.check_s = check_s
        self.first_s = first_s
        self.stop_event = threading.Event()
        self.error = ""
        self.last_report: RetentionReport | None = None
        self._full_alarmed = False
        self._policy_seen: str | None = None

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        if self.is_alive():
            self.join(timeout)
            if self.is_alive():
                log.error("retention did not stop within %.0f s", timeout)

    def run(self) -> None:
        wait = self.first_s
        while not self.stop_event.wait(wait):
            try:
                self.tick()
                self.error = ""
            except Exception as exc:  # noqa: BLE001 - housekeeping must not kill the recorder; shown in status
                self.error = f"{type(exc).__name__}: {exc}"
                log.exception("retention pass failed")
            wait = self.check_s

    # -- one pass -----------------------------------------------------------------------
    def tick(self, now: float | None = None) -> None:
        rec = self.rec
        cfg = rec.cfg  # replaced whole on reload
        now = rec.clock.wall() if now is None else now
        self._policy(cfg)
        self._disk(cfg, now)
        con = connect_vault(rec.data_dir)
        try:
            last = con.execute("SELECT value FROM meta WHERE key = 'retention_last_run'").fetchone()
            due = last is None or now - parse_utc(last["value"]).timestamp() >= cfg.retention.interval_h * 3600
            rotate_due = [cls for cls in list(rec.recipients) if epoch_due(con, now, cfg.retention.epoch_days, cls)]
        finally:
            con.close()
        if not due:
            return
        for cls in rotate_due:
            self.rotate(now, cls)
        self.last_report = run_retention(rec.data_dir, cfg, now)
        con = connect_vault(rec.data_dir)
        try:
            with con:
                con.execute("INSERT INTO meta (key, value) VALUES ('retention_last_run', ?)"
                            " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (iso_utc(now),))
        finally:
            con.close()

    def rotate(self, now: float, key_class: str | None) -> None:
        """Start a class's new key epoch and switch the running writer to it before retiring the old one."""
        rec = self.rec
        if getattr(rec.writer, "recipients", None) is not rec.recipients:
            # a writer with its own copy would keep using the old epoch after it is retired
            log.error("key epoch not rotated: the writer does not share the recorder's recipient lists")
            return
        shared = rec.recipients[key_class]

        def swap(new: list[bytes]) -> None:
            shared[:] = new  # one list store: the writer reads it at each call open

        rotate(rec.data_dir, now, swap, key_class)

    def _policy(self, cfg: NokboxConfig) -> None:
        when = cfg.retention.when_full
        if when != self._policy_seen:
            if when == "oldest_first" or self._policy_seen is not None:
                AuditLog(self.rec.data_dir).append(
                    "retention.policy", actor="system", obj="retention.when_full", outcome="ok",
                    reason=(f"when the disk is full: {when}"
                            + (" (recordings within retention may be destroyed, oldest first)"
                               if when == "oldest_first" else " (recordings within retention are never destroyed)")),
                    detail={"previous": self._policy_seen})
            self._policy_seen = when

    def _disk(self, cfg: NokboxConfig, now: float) -> None:
        d = disk_report(self.rec.data_dir, cfg, now)
        if d.get("state") != "full":
            if self._full_alarmed:
                log.warning("disk no longer full: %s MB free", d.get("free_bytes", 0) // 1_000_000)
            self._full_alarmed = False
            if d.get("state") == "warn":
                log.warning("%s", d["alarm"])
            return
        log.critical("%s", d["alarm"])
        if not self._full_alarmed:
            self._full_alarmed = True
            AuditLog(self.rec.data_dir).append("disk.full", actor="system", obj="data-disk", outcome="alarm",
                                               reason=d["alarm"], detail={"free_bytes": d["free_bytes"],
                                                                          "when_full": cfg.retention.when_full})
        if cfg.retention.when_full == "oldest_first":
            make_room(self.rec.data_dir, cfg, now)

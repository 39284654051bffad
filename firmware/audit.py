"""The audit log: append-only, hash-chained JSON lines under DATA/audit/.

Every security-relevant event (key operations, destruction, configuration, access)
is one entry. Entries never carry audio or a clear phone number. Each entry stores
the hash of the previous one, so an edit, a deletion or a reordering breaks the chain.
Several processes (the daemon, CLI commands) may append: an exclusive ``flock`` on the
log file serialises them; a thread lock serialises threads within one process.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Iterator

from .errors import NokboxError

GENESIS = "0" * 64
_FIELDS = ("seq", "time_utc", "mono", "action", "actor", "role", "object", "outcome", "reason", "source",
           "detail", "prev")


class AuditError(NokboxError, ValueError):
    """The audit log is damaged or an entry is malformed."""


def _entry_hash(entry: dict) -> str:
    body = {k: entry[k] for k in _FIELDS}
    canon = json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


class AuditLog:
    """Append and read the audit trail of one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = Path(data_dir) / "audit"
        self.path = self.dir / "audit.jsonl"
        self._lock = threading.Lock()  # guards appends from threads of this process

    def append(self, action: str, *, actor: str = "system", role: str = "system", obj: str = "",
               outcome: str = "ok", reason: str = "", source: str = "local",
               detail: dict | None = None) -> dict:
        """Write one entry durably (fsync) and return it."""
        if not action:
            raise AuditError("audit entry without an action")
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                seq, prev = self._tail(fd)
                now = time.time()
                entry = {
                    "seq": seq + 1, "time_utc": _utc(now), "mono": round(time.monotonic(), 6),
                    "action": action, "actor": actor, "role": role, "object": obj, "outcome": outcome,
                    "reason": reason, "source": source, "detail": detail or {}, "prev": prev,
                }
                entry["hash"] = _entry_hash(entry)
                line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)  # releases the flock
        return entry

    @staticmethod
    def _tail(fd: int) -> tuple[int, str]:
        """(seq, hash) of the last entry in the open log, or (0, GENESIS)."""
        size = os.lseek(fd, 0, os.SEEK_END)
        if size == 0:
            return 0, GENESIS
        back = min(size, 65536)
        os.lseek(fd, size - back, os.SEEK_SET)
        tail = os.read(fd, back)
        lines = tail.rstrip(b"\n").split(b"\n")
        try:
            last = json.loads(lines[-1])
            return int(last["seq"]), str(last["hash"])
        except (ValueError, KeyError) as exc:
            raise AuditError(f"{fd}: last audit entry is unreadable ({exc}); run 'nokbox audit verify'") from None

    def entries(self) -> Iterator[dict]:
        """Every entry in order (no verification)."""
        try:
            f = open(self.path, encoding="utf-8")
        except FileNotFoundError:
            return
        with f:
            for n, line in enumerate(f, 1):
                try:
                    yield json.loads(line)
                except ValueError:
                    raise AuditError(f"audit line {n} is not JSON") from None

    def verify(self) -> tuple[int, str | None]:
        """Check the chain; returns (entries checked, None) or raises AuditError naming the entry."""
        prev = GENESIS
        count = 0
        for n, e in enumerate(self.entries(), 1):
            if not isinstance(e, dict) or any(k not in e for k in (*_FIELDS, "hash")):
                raise AuditError(f"entry {n}: missing fields")
            if e["seq"] != n:
                raise AuditError(f"entry {n}: sequence number {e['seq']} (entries deleted, inserted or reordered)")
            if e["prev"] != prev:
                raise AuditError(f"entry {n}: does not follow entry {n - 1} (chain broken)")
            if _entry_hash(e) != e["hash"]:
                raise AuditError(f"entry {n}: content does not match its hash (edited)")
            prev = e["hash"]
            count = n
        return count, None

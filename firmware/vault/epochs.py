"""Key epochs: what a call's encryption depends on, so that expiry can erase the key, not just the file.

Calls are not encrypted to the long-term records recipient but to the recipient of the
current *key epoch* (a fresh X25519 pair every ``retention.epoch_days``). The epoch's
identity is stored only as ``keys/epochs/<id>.age``, an age file sealed to the records
recipient: the box can create epochs (public operation) but not read them. The approver's
records identity opens the epoch identities and those open the calls; ``nokbox keys
export-identity`` writes the records identity plus every live epoch identity into one age
identity file, so the stock ``age -d -i exported.txt call.age`` reads a call in one step.

When an epoch is retired (a newer one took over) and no call that could have been written
under it remains in the index, its sealed identity is overwritten and deleted: every
remnant of its recordings (unlinked blocks, a stray ``.part``, a disk image taken later)
becomes unreadable even with the records identity. "Could have been written under it" is
decided by time, not by bookkeeping: a file is written at or after its call's start, so a
call can depend on epoch E only if it started before E was retired. The rule keeps E while
any call started before ``retired + EPOCH_SLACK`` is still in the index.

Epochs come in *key classes*, one per retention period in use ("30d", "1095d"): a line's
calls are encrypted to the current epoch of its class, so a 30-day call's epoch key is erased
soon after 30 days even on a box that also keeps 3-year lines. Its calls record their class
(``calls.key_class``). Epochs made before classes existed have class NULL and serve every
line; the first class epoch retires them (the time rule then keeps them while older calls
remain).

The running recorder rotates epochs in place: it keeps one recipient list per class (a dict
the writer shares), and ``RetentionMaintainer`` replaces a list's contents (the writer must
read the list at each call open, never copy it; ``tests/test_retention.py`` checks it does).
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import sqlite3
import time
from pathlib import Path

from .age import AgeWriter, generate_identity, parse_recipient
from ..config import shared_mode
from ..errors import VaultError
from ..index import iso_utc, parse_utc
from .sealing import identity_text, open_with_identity, write_private
from ..vaultdb import connect_vault

log = logging.getLogger(__name__)

EPOCH_DIR = "epochs"
EPOCH_SLACK_S = 86400.0  # clock steps (no RTC, NTP at boot) and files written just after a rotation


def _records_recipient(data: Path) -> str:
    return (Path(data) / "keys" / "recipient.txt").read_text().split()[0]


def key_class_for(cfg, channel: int) -> str:
    """The key class of a line: its retention period."""
    days, _ = cfg.retention.days_for(channel)
    return f"{days}d"


def default_key_class() -> str:
    """The class of a line in no retention group under the default configuration."""
    from ..config import NokboxConfig

    return f"{NokboxConfig().retention.default_days}d"


def new_epoch(data: Path, con: sqlite3.Connection, now: float, key_class: str | None = None) -> tuple[int, str, str]:
    """Create an epoch sealed to the records recipient. Returns (id, recipient, identity).

    The caller drops the identity unless it must show it (``init --identity-out``).
    """
    data = Path(data)
    identity, recipient = generate_identity()
    d = data / "keys" / EPOCH_DIR
    d.mkdir(mode=shared_mode(0o700), parents=True, exist_ok=True)
    cur = con.execute("INSERT INTO key_epochs (recipient, file, created_utc, key_class) VALUES (?, '', ?, ?)",
                      (recipient, iso_utc(now), key_class))
    eid = int(cur.lastrowid)
    rel = f"keys/{EPOCH_DIR}/{eid:06d}.age"
    buf = io.BytesIO()
    w = AgeWriter(buf, [parse_recipient(_records_recipient(data))])
    w.write(identity_text(identity, recipient, f"nokbox key epoch {eid}"))
    w.close()
    write_private(data / rel, buf.getvalue())
    con.execute("UPDATE key_epochs SET file = ? WHERE id = ?", (rel, eid))
    return eid, recipient, identity


def current_epoch(con: sqlite3.Connection, key_class: str | None = None) -> sqlite3.Row | None:
    return con.execute("SELECT * FROM key_epochs WHERE retired_utc IS NULL AND destroyed_utc IS NULL"
                       " AND key_class IS ? ORDER BY id DESC LIMIT 1", (key_class,)).fetchone()


def current_recipients(data: Path, now: float | None = None, key_class: str | None = None) -> list[bytes]:
    """The recipients a class's new calls are encrypted to; creates the class's first epoch."""
    key_class = key_class or default_key_class()
    con = connect_vault(data)
    now = time.time() if now is None else now
    try:
        con.execute("BEGIN IMMEDIATE")
        try:
            row = current_epoch(con, key_class)
            if row is None:
                eid, rec, _ = new_epoch(data, con, now, key_class)
                log.info("key epoch %d created (class %s)", eid, key_class)
            else:
                rec = row["recipient"]
            # no new call goes to a class-less epoch (one made before classes): retire it
            con.execute("UPDATE key_epochs SET retired_utc = ? WHERE key_class IS NULL AND retired_utc IS NULL"
                        " AND destroyed_utc IS NULL", (iso_utc(now),))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    finally:
        con.close()
    return [parse_recipient(rec)]


def rotate(data: Path, now: float, swap=None, key_class: str | None = None) -> tuple[int, int | None]:
    """Start a new epoch of a class (default: the default class); ``swap(new_recipients)`` switches the running writer before
    the old one is marked retired. Returns (new id, retired id)."""
    key_class = key_class or default_key_class()
    con = connect_vault(data)
    try:
        old = current_epoch(con, key_class)
        with con:
            eid, rec, _ = new_epoch(data, con, now, key_class)
        if swap is not None:
            swap([parse_recipient(rec)])
        if old is not None:
            with con:
                con.execute("UPDATE key_epochs SET retired_utc = ? WHERE id = ?", (iso_utc(now), old["id"]))
    finally:
        con.close()
    log.info("key epoch %d started%s", eid, f"; epoch {old['id']} retired" if old is not None else "")
    return eid, (old["id"] if old is not None else None)


def epoch_due(con: sqlite3.Connection, now: float, epoch_days: float, key_class: str | None = None) -> bool:
    row = current_epoch(con, key_class or default_key_class())
    return row is None or now - parse_utc(row["created_utc"]).timestamp() >= epoch_days * 86400


def destroyable(con: sqlite3.Connection, ignore: set[int] = frozenset()) -> list[sqlite3.Row]:
    """Retired epochs that no call still in the index (other than ``ignore``, for a dry run) can depend on.

    A call can depend on an epoch of its own class (or, for a call from before classes, of any
    class) that it started before the epoch's retirement (plus slack); a class-less epoch on
    any call started before that.
    """
    out = []
    for e in con.execute("SELECT * FROM key_epochs WHERE retired_utc IS NOT NULL AND destroyed_utc IS NULL"
                         " ORDER BY id"):
        limit = iso_utc(parse_utc(e["retired_utc"]).timestamp() + EPOCH_SLACK_S)
        if e["key_class"] is None:
            rows = con.execute("SELECT id FROM calls WHERE start_utc <= ?", (limit,))
        else:
            rows = con.execute("SELECT id FROM calls WHERE start_utc <= ? AND (key_class = ? OR key_class IS NULL)",
                               (limit, e["key_class"]))
        if not any(r["id"] not in ignore for r in rows):
            out.append(e)
    return out


def erase_file(path: Path) -> bool:
    """Overwrite a file in place with random bytes, fsync, unlink, fsync the directory.

    True if the file existed. On flash the overwrite reaches the same logical blocks, not
    necessarily the same cells (see docs/threat-model.md).
    """
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        return False
    try:
        size = os.fstat(fd).st_size
        os.pwrite(fd, os.urandom(size), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.unlink(path)
    dfd = os.open(Path(path).parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return True


def destroy_epoch(data: Path, con: sqlite3.Connection, row: sqlite3.Row, now: float) -> None:
    """Erase the sealed identity of one epoch and mark it destroyed."""
    erase_file(Path(data) / row["file"])
    with con:
        con.execute("UPDATE key_epochs SET destroyed_utc = ? WHERE id = ?", (iso_utc(now), row["id"]))


def live_identities(data: Path, records_identity: str) -> list[tuple[sqlite3.Row, str]]:
    """Every epoch identity not yet destroyed, opened with the records identity."""
    con = connect_vault(data)
    try:
        rows = list(con.execute("SELECT * FROM key_epochs WHERE destroyed_utc IS NULL ORDER BY id"))
    finally:
        con.close()
    out = []
    for row in rows:
        try:
            blob = (Path(data) / row["file"]).read_bytes()
        except FileNotFoundError:
            raise VaultError(f"{row['file']} (key epoch {row['id']}) is missing but not marked destroyed") from None
        plain = open_with_identity(blob, records_identity).decode()
        ident = next(ln.strip() for ln in plain.splitlines() if ln.startswith("AGE-SECRET-KEY-1"))
        out.append((row, ident))
    return out


def export_text(data: Path, records_identity: str, records_recipient: str) -> str:
    """An age identity file: the records identity, then each live epoch identity."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [f"# nokbox identities, exported {now}; age -d -i THIS_FILE call.age",
             f"# records identity (opens DATA/keys/epochs/*.age): public key {records_recipient}",
             records_identity]
    for row, ident in live_identities(data, records_identity):
        until = row["retired_utc"] or "current"
        lines += [f"# key epoch {row['id']} ({row['created_utc']} .. {until}): public key {row['recipient']}",
                  ident]
    lines.append("# keep this file off the box; an export outlives the crypto-erase of the epochs it holds")
    return "\n".join(lines) + "\n"


"""Recovery after a power cut or a killed process, and the consistency check of the store.

Runs at every daemon start and as ``nokbox recover``; needs only the device-bound secret,
never the approver's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .age import CHUNK, TAG, HeaderError, read_header
from ..audit import AuditLog
from .callfile import recover_call
from ..errors import VaultError
from ..index import CallIndex
from .keys import device_for, device_recovery_identity, load_recipients

log = logging.getLogger(__name__)


def recover_data_dir(data: Path, key_class_of=None) -> list[dict]:
    """Finish every call left 'recording'; returns what was done (no personal data).

    A recovered call is encrypted to the current epoch of its own key class; a call from before
    key classes to that of its line (``key_class_of(channel)``, from the config) when given.
    """
    data = Path(data)
    idx = CallIndex(data / "index.sqlite")
    done: list[dict] = []
    try:
        rows = list(idx.con.execute("SELECT id, file, rate, line, key_class FROM calls WHERE state = 'recording'"))
        recording = {data / r["file"] for r in rows}
        # journals of calls the index already has as finished: the cut came just before their deletion
        finals = (j.with_name(j.name[:-len(".journal")]) for j in (data / "calls").rglob("*.age.journal"))
        stale = [f for f in finals if f not in recording and f.exists()]
        if not rows and not stale:
            return done
        identity = device_recovery_identity(device_for(data))
        for final in stale:
            recover_call(final, [], identity)  # deletes the journal; the file and its row are complete
        recipients: dict[str | None, list[bytes]] = {}
        audit = AuditLog(data)
        for row in rows:
            final = data / row["file"]
            cls = row["key_class"] or (key_class_of(row["line"]) if key_class_of else None)
            try:
                if cls not in recipients:
                    recipients[cls] = load_recipients(data, cls)
                res = recover_call(final, recipients[cls], identity)
            except (VaultError, OSError) as exc:
                log.error("call %s could not be recovered: %s", row["id"], exc)
                idx.finish_call(row["id"], 0, 0, "power_loss", 0, state="failed")
                done.append({"id": row["id"], "outcome": "failed", "reason": str(exc)})
                continue
            except Exception as exc:  # noqa: BLE001 - a fault of ours: keep the call for a later try
                # its journal and partial file stay as they are and the row stays 'recording' (nokbox
                # verify names it; nokbox recover tries again); the recorder goes on recording
                log.exception("call %s: recovery failed (%s); its journal is kept for `nokbox recover`",
                              row["id"], type(exc).__name__)
                done.append({"id": row["id"], "outcome": "error", "reason": type(exc).__name__})
                continue
            if res is not None and res.complete:
                # finished on disk; the index update was what the cut interrupted. The journal's
                # end record gave the frame count (the box cannot read a finished file to count it)
                idx.finish_call(row["id"], res.frames, res.size, res.end.get("reason", "power_loss"),
                                int(res.end.get("lost", 0)), state="finished")
                done.append({"id": row["id"], "outcome": "already complete"})
            elif res is None and final.exists():
                # a journal-less finished file (written before end records existed): length unknown
                idx.finish_call(row["id"], 0, final.stat().st_size, "power_loss", 0, state="finished")
                done.append({"id": row["id"], "outcome": "already complete"})
            elif res is None:
                idx.finish_call(row["id"], 0, 0, "power_loss", 0, state="failed")
                done.append({"id": row["id"], "outcome": "nothing recorded"})
            else:
                idx.finish_call(row["id"], res.frames, res.size, "power_loss", 0, state="finished")
                done.append({"id": row["id"], "outcome": "recovered", "seconds": round(res.frames / row["rate"], 3)})
            audit.append("recording.recover", obj=f"call:{row['id']}", outcome=done[-1]["outcome"],
                         reason="interrupted by power loss or a killed process")
        log.warning("recovered %d interrupted call(s)", len(done))
    finally:
        idx.close()
    return done


@dataclass
class VerifyReport:
    """Result of ``verify_data_dir``."""

    files: int = 0
    finished: int = 0
    problems: list[str] = field(default_factory=list)


def check_age_structure(path: Path) -> None:
    """Without any key: the header parses and the payload is a whole number of STREAM chunks."""
    with open(path, "rb") as f:
        try:
            read_header(f)
        except HeaderError as exc:
            raise VaultError(f"{path.name}: {exc}") from None
        start = f.tell()
        nonce = f.read(16)
        if len(nonce) != 16:
            raise VaultError(f"{path.name}: payload nonce missing")
        size = path.stat().st_size - start - 16
    enc = CHUNK + TAG
    full, rest = divmod(size, enc)
    if size < TAG or (rest and rest < TAG) or (rest == 0 and full == 0):
        raise VaultError(f"{path.name}: payload is not a complete STREAM ({size} bytes)")


def verify_data_dir(data: Path) -> VerifyReport:
    """Every file parses, every finished call is complete, index and files agree."""
    data = Path(data)
    rep = VerifyReport()
    idx = CallIndex(data / "index.sqlite")
    try:
        rows = list(idx.con.execute("SELECT id, file, size, state FROM calls"))
    finally:
        idx.close()
    known = set()
    finished = set()
    for row in rows:
        f = data / row["file"]
        known.add(f.resolve())
        if row["state"] == "finished":
            finished.add(f.resolve())
        if row["state"] == "recording":
            rep.problems.append(f"call {row['id']}: still marked recording (run 'nokbox recover' if no recorder runs)")
            continue
        if row["state"] != "finished":
            continue
        rep.finished += 1
        if not f.exists():
            rep.problems.append(f"call {row['id']}: file {row['file']} is missing")
            continue
        if f.stat().st_size != row["size"]:
            rep.problems.append(f"call {row['id']}: size {f.stat().st_size} differs from the index ({row['size']})")
        try:
            check_age_structure(f)
        except VaultError as exc:
            rep.problems.append(f"call {row['id']}: {exc}")
    calls = data / "calls"
    if calls.exists():
        for f in sorted(calls.rglob("*")):
            if not f.is_file():
                continue
            rep.files += 1
            if f.name.endswith((".part", ".journal", ".recovering")):
                base = f.with_name(f.name.rsplit(".", 1)[0]).resolve()
                if base not in known:
                    rep.problems.append(f"{f.relative_to(data)}: leftover file of no known call")
                elif base in finished:  # a journal holds the call's audio under the device key
                    rep.problems.append(f"{f.relative_to(data)}: leftover file of a finished call "
                                        "(run 'nokbox recover')")
                continue
            if f.resolve() not in known:
                rep.problems.append(f"{f.relative_to(data)}: file not in the index")
    return rep

"""Recovery after a power cut or a killed process, and the consistency check of the store.

Runs at every daemon start and as ``nokbox recover``; needs only the device-bound secret,
never the approver's.
"""

from __future__ import annotations

import io
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .age import CHUNK, TAG, AgeWriter, HeaderError, read_header
from ..audit import AuditLog
from .ahead import AheadContents, pending_journals, read_ahead
from .callfile import encode_pcm, recover_call
from ..errors import VaultError
from ..index import CallIndex
from .keys import device_for, device_recovery_identity, load_recipients

log = logging.getLogger(__name__)
AHEAD_STALE_S = 120.0  # a write-ahead journal not written for this long belongs to no call in progress


def recover_data_dir(data: Path, key_class_of=None) -> list[dict]:
    """Finish every call left 'recording'; returns what was done (no personal data).

    A recovered call is encrypted to the current epoch of its own key class; a call from before
    key classes to that of its line (``key_class_of(channel)``, from the config) when given. The
    write-ahead journals (``vault.ahead``) add the audio the segmenter had not analysed yet: to
    their confirmed call, or as a call of their own when the cut came before the confirmation.
    """
    data = Path(data)
    idx = CallIndex(data / "index.sqlite")
    done: list[dict] = []
    try:
        rows = list(idx.con.execute("SELECT id, file, rate, line, key_class, start_sample FROM calls"
                                    " WHERE state = 'recording'"))
        recording = {data / r["file"] for r in rows}
        # journals of calls the index already has as finished: the cut came just before their deletion
        finals = (j.with_name(j.name[:-len(".journal")]) for j in (data / "calls").rglob("*.age.journal"))
        stale = [f for f in finals if f not in recording and f.exists()]
        aheads = pending_journals(data)
        if not rows and not stale and not aheads:
            return done
        identity = device_recovery_identity(device_for(data))
        for final in stale:
            recover_call(final, [], identity)  # deletes the journal; the file and its row are complete
        recipients: dict[str | None, list[bytes]] = {}
        audit = AuditLog(data)
        by_call: dict[int, AheadContents] = {}
        for path in aheads:
            try:
                got = read_ahead(path, identity)
            except (VaultError, OSError, ValueError) as exc:
                log.error("%s could not be read (%s); it is kept", path.name, exc)
                continue
            if not got.confirmed and got.meta:
                # the cut came between the call's index row and the journal's confirmation record: the
                # row of the same line that starts inside this journal's audio is its call
                first = int(got.meta["start"])
                last = max((f + len(x) for f, x in got.segments), default=first)
                for r in rows:
                    if (r["line"] == int(got.meta["channel"]) and first <= int(r["start_sample"]) <= last
                            and int(r["id"]) not in by_call):
                        got.confirmed = {"call_id": int(r["id"]), "file": r["file"], "start": int(r["start_sample"])}
                        break
            if got.confirmed:
                by_call[int(got.confirmed["call_id"])] = got
            else:
                try:
                    res = _call_from_ahead(data, idx, got, recipients, key_class_of)
                except Exception as exc:  # noqa: BLE001 - kept for `nokbox recover`; recording goes on
                    log.exception("%s: recovery failed (%s); it is kept", path.name, type(exc).__name__)
                    continue
                if res is not None:
                    done.append(res)
                    audit.append("recording.recover", obj=f"call:{res['id']}", outcome=res["outcome"],
                                 reason="interrupted by power loss or a killed process before it was confirmed")
                path.unlink()
        for row in rows:
            final = data / row["file"]
            cls = row["key_class"] or (key_class_of(row["line"]) if key_class_of else None)
            try:
                if cls not in recipients:
                    recipients[cls] = load_recipients(data, cls)
                res = recover_call(final, recipients[cls], identity, ahead=by_call.get(row["id"]))
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
                by_call.pop(row["id"], None)  # its write-ahead journal is kept with it
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
            if row["id"] in by_call:
                by_call.pop(row["id"]).path.unlink()
        for got in by_call.values():  # its call was finished; the cut came before the journal's deletion
            got.path.unlink()
        if done:
            log.warning("recovered %d interrupted call(s)", len(done))
    finally:
        idx.close()
    return done


def _call_from_ahead(data: Path, idx: CallIndex, got: AheadContents, recipients: dict, key_class_of) -> dict | None:
    """A call the cut interrupted before the segmenter confirmed it: its index row and file from
    the ahead journal alone (end reason power_loss). None when it holds no audio."""
    import time as _time

    m = got.meta
    if not m:
        return None
    pcm = got.audio_from(int(m["start"]))
    if not len(pcm):
        return None
    cls = m.get("key_class")
    if cls is None and key_class_of is not None:
        cls = key_class_of(int(m["channel"]))
    if cls not in recipients:
        recipients[cls] = load_recipients(data, cls)
    codec, rate = m["codec"], int(m["rate"])
    wall = float(m["wall"])
    day = _time.strftime("%Y/%m/%d", _time.gmtime(wall))
    call_id, rel = idx.open_call(int(m["channel"]), m.get("line_name", ""), wall, int(m["start"]), rate, codec,
                                 lambda i: f"calls/{day}/{i:08d}.{codec}.age", cls)
    blob = encode_pcm(pcm, rate, codec, float(m.get("opus_kbps", 16.0)), int(m.get("opus_complexity", 5)))
    final = data / rel
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".recovering")
    buf = io.BytesIO()
    w = AgeWriter(buf, recipients[cls])
    w.write(blob)
    w.close()
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    idx.finish_call(call_id, len(pcm), final.stat().st_size, "power_loss", 0)
    return {"id": call_id, "outcome": "recovered", "seconds": round(len(pcm) / rate, 3)}


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
            if f.name.endswith(".ahead"):
                # a call in progress appends to its write-ahead journal every 0.5 s: one left unwritten
                # for minutes is a cut's leftover (the recorder's next start recovers it)
                if time.time() - f.stat().st_mtime > AHEAD_STALE_S:
                    rep.problems.append(f"{f.relative_to(data)}: leftover write-ahead journal of an interrupted "
                                        "call (run 'nokbox recover' if no recorder runs)")
                continue
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

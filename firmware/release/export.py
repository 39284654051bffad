"""Export (제공): the approved request's calls as one signed AES-256 ZIP on a USB stick (or a folder).

The steps, each audited with the request number:

1. the officer's grant for an approved ``provide`` request (``Requests.grant_for``); one export of
   a request at a time (a lock file under ``DATA/export/``);
2. the package is built under ``DATA/export/`` (``package.build``): each attached call streamed
   from the keeper as WAV (``open_call(use="export")``, counted against ``release.max_exports``),
   the handover receipt (form 2) as PDF inside, the manifest signed by the keeper's export key;
   read back against its manifest and signature before anything is written to the stick;
3. written to the stick under a temporary name and renamed last (``hal/usb.UsbMedia.write``),
   then read back from the stick and compared by SHA-256, then the stick is ejected;
4. only then the request is delivered (closed; holds end; the grant ends) and the ledger has
   the delivery. A failure anywhere leaves no complete-looking package, records the attempt with
   its reason, and can be retried.

The ZIP password is returned once and never stored.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import shared_mode
from ..errors import NokboxError
from ..index import KST, parse_utc
from . import package
from .requests import GROUNDS, KINDS, RequestError, Requests

CHUNK = 1 << 20


@dataclass
class Exported:
    number: str
    name: str
    password: str
    size: int
    sha256: str
    files: dict[str, str]
    medium: str


class FolderTarget:
    """A folder as the export target (``--to DIR``): the same temporary-name, rename-last, read-back
    steps as a stick."""

    kind = "folder"

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def describe(self) -> str:
        return str(self.folder)

    def write(self, name: str, src, total: int, progress=None) -> str:
        from ..hal.usb import UsbError, write_into

        if not self.folder.is_dir():
            raise RequestError(f"폴더가 없습니다 · no such folder: {self.folder}", "no_target")
        try:
            return write_into(self.folder, name, src, total, "folder", progress)
        except UsbError as exc:
            raise RequestError(f"쓸 수 없습니다 · cannot write to {self.folder}: {exc}", "write_failed") from None

    def read_back(self, name: str):
        with open(self.folder / name, "rb") as f:
            yield from iter(lambda: f.read(CHUNK), b"")

    def delete(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)

    def eject(self) -> None:
        os.sync()


class StickTarget:
    """One stick of a ``hal/usb.UsbMedia`` backend as the export target."""

    kind = "usb"

    def __init__(self, media, stick_id: str) -> None:
        self.media = media
        self.stick_id = stick_id

    def describe(self) -> str:
        return self.stick_id

    def write(self, name: str, src, total: int, progress=None) -> str:
        return self.media.write(self.stick_id, name, src, total, progress)

    def read_back(self, name: str):
        return self.media.read_back(self.stick_id, name)

    def delete(self, name: str) -> None:
        self.media.delete(self.stick_id, name)

    def eject(self) -> None:
        self.media.eject(self.stick_id)


def _local(iso: str | None) -> str:
    return parse_utc(iso).astimezone(KST).strftime("%Y-%m-%d %H:%M") if iso else ""


def receipt_input(req: dict, *, signer: str, checkpoint: str, rows: list[dict] | None = None,
                  delivered: dict | None = None, office: str = "") -> dict:
    """The dict ``forms.receipt_pdf`` prints, from ``Requests.get`` (with details)."""
    d = req.get("details") or {}
    files = {r["call_id"]: r for r in rows or []}
    calls = []
    for c in req["calls"]:
        f = files.get(c["call_id"], {})
        calls.append({"id": c["call_id"], "line": c["line"] + 1, "line_name": c["line_name"], "start": c["start_utc"],
                      "duration": c["duration"] or 0.0, "file": f.get("name", ""), "sha256": f.get("sha256", "")})
    return {"number": req["number"], "kind": req["kind"], "requester": d.get("requester") or {},
            "organisation": office, "sending_number": d.get("sending_number", ""),
            "receiving_number": d.get("receiving_number", ""), "call_from": req["call_from"], "call_to": req["call_to"],
            "purpose": d.get("purpose", ""), "relation": d.get("relation", ""), "reason": d.get("reason", ""),
            "legal_ground": req["legal_ground"], "document_number": req["document_number"],
            "requesting_body": (d.get("requester") or {}).get("name", "") if req["legal_ground"] >= 3 else "",
            "officer": {"name": req["officer"], "display": req["officer"]},
            "approvals": [{"stage": a["stage"], "name": a["approver"], "display": a["approver"], "decision": a["decision"],
                           "time": a["time_utc"], "comment": a["comment"]} for a in req["approvals"]],
            "calls": calls, "delivered": delivered, "signer_fingerprint": signer, "checkpoint": checkpoint}


def details_lines(req: dict) -> list[tuple[str, str]]:
    """RELEASE.txt's request fields (what the recipient is given about their own request)."""
    d = req.get("details") or {}
    who = d.get("requester") or {}
    return [("신청번호 · Request", req["number"]), ("구분 · Kind", KINDS[req["kind"]]),
            ("신청인 · Requester", who.get("name", "")), ("근거 · Legal ground",
                                                        f"제7조제1항 제{req['legal_ground']}호 {GROUNDS[req['legal_ground']]}"),
            ("공문번호 · Document", req["document_number"] or "-"),
            ("통화 기간 · Calls between", f"{req['call_from_local']} ~ {req['call_to_local']} KST"),
            ("목적 · Purpose", d.get("purpose", ""))]


@contextlib.contextmanager
def export_lock(data: Path, number: str):
    """One export of a request at a time (across the page's threads and the CLI)."""
    folder = Path(data) / "export"
    folder.mkdir(mode=shared_mode(0o700), exist_ok=True)
    fd = os.open(folder / f"{number}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RequestError("이 신청의 내보내기가 이미 진행 중입니다 · an export of this request is already running",
                               "busy") from None
        yield
    finally:
        os.close(fd)


def export(reqs: Requests, number: str, target, *, actor: str, checkpoint: Callable[[], str],
           progress: Callable[[str, int, int], None] | None = None, source: str = "local") -> Exported:
    """Write the request's package to ``target`` (FolderTarget or StickTarget); see the module doc."""
    keeper = reqs.keeper
    r, token = reqs.grant_for(number, None, actor=actor, action="request.export", source=source)
    number = r["number"]
    with export_lock(reqs.data, number):
        req = reqs.get(number, actor=actor, source=source)
        if req["state"] != "approved":
            raise RequestError("승인된 신청이 아닙니다 · the request is not approved", "state")
        signer = keeper.signer(actor)
        work = reqs.data / "export" / f"{number}.zip"
        name = f"nokbox-{number}.zip"

        def calls():
            for c in req["calls"]:
                try:
                    head, chunks = keeper.open_call(actor, token, c["call_id"], use="export")
                except NokboxError as exc:
                    if getattr(exc, "code", "") in ("no_call", "destroyed"):
                        reqs.mark_destroyed_calls()
                    if getattr(exc, "code", "") == "no_grant":
                        reqs.lapse(number, actor=actor, source=source)
                        raise RequestError("키 관리자가 다시 시작되어 승인이 풀렸습니다: 승인권자가 다시 승인해야 합니다 · the "
                                           "keeper restarted and the approval lapsed: the approver must approve again",
                                           "lapsed") from None
                    raise
                yield package.PackedCall(c["call_id"], f"{c['line'] + 1} {c['line_name']}", _local(c["start_utc"]),
                                         head["frames"] / head["rate"], chunks)

        rate = reqs.cfg.audio.rate  # the WAV the keeper gives is 16-bit mono at the capture rate
        total_audio = sum(44 + int((c["duration"] or 0) * rate * 2) for c in req["calls"])

        def packed(done: int) -> None:
            if progress:
                progress("pack", done, total_audio)

        def receipt(rows: list[dict]) -> dict[str, bytes]:
            from . import forms

            return {"인계인수증-receipt.pdf": forms.receipt_pdf(receipt_input(
                req, signer=signer["fingerprint"], checkpoint=cp, rows=rows, office=reqs.cfg.release.office))}

        try:
            cp = checkpoint()
            pkg = package.build(work, number, details_lines(req), list(calls()), cp,
                                sign=lambda m: keeper.sign(actor, token, m)["signature"], extra=receipt,
                                progress=packed)
        except (NokboxError, OSError) as exc:
            work.unlink(missing_ok=True)
            reqs.record_use(number, "export", actor=actor, call=None, outcome=f"package: {exc}"[:200], source=source)
            raise
        try:
            from ..vault.signing import verify

            problems = package.check(work, pkg.password, lambda m, sig: verify(signer["public"], m, sig))
            if problems:
                raise RequestError("패키지 확인 실패 · the package does not check: " + "; ".join(problems), "check")
            h = hashlib.sha256()
            with open(work, "rb") as f:
                for chunk in iter(lambda: f.read(CHUNK), b""):
                    h.update(chunk)
            digest = h.hexdigest()
            with open(work, "rb") as src:
                target.write(name, src, pkg.size, (lambda d, t: progress("write", d, t)) if progress else None)
            if progress:
                progress("verify", 0, pkg.size)
            back = hashlib.sha256()
            n = 0
            for chunk in target.read_back(name):
                back.update(chunk)
                n += len(chunk)
                if progress:
                    progress("verify", n, pkg.size)
            if back.hexdigest() != digest:
                with contextlib.suppress(NokboxError, OSError):
                    target.delete(name)
                raise RequestError("USB에 쓴 내용이 원본과 다릅니다: 다시 시도하십시오 · what was read back from the stick "
                                   "differs: try again (another stick)", "verify")
            target.eject()
        except (NokboxError, OSError) as exc:
            reqs.record_use(number, "export", actor=actor, call=None,
                            outcome=f"{type(exc).__name__}: {exc}"[:200], detail={"medium": target.kind}, source=source)
            raise
        finally:
            work.unlink(missing_ok=True)
        files = [{"call_id": c["call_id"], "name": f"call-{i:02d}.wav", "sha256": pkg.files.get(f"call-{i:02d}.wav", "")}
                 for i, c in enumerate(req["calls"], 1)]  # the receipt printed later lists them again
        detail = {"package": name, "bytes": pkg.size, "sha256": digest, "medium": target.kind,
                  "files": files, "signer": signer["fingerprint"], "checkpoint": cp[:300]}
        reqs.delivered(number, actor=actor, detail=detail, source=source)
        return Exported(number, name, pkg.password, pkg.size, digest, pkg.files, target.kind)

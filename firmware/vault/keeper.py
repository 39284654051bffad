"""The key keeper: the one process that ever holds the records identity (``nokbox keeper``).

It answers on ``DATA/run/keeper.sock`` (``firmware/ipc.py``) and nothing else: no HTTP, no
network. What it does needs the approver's secret or the device secret:

- ``pin_check``: try an approver's PIN (the slot's wrong-PIN counter, back-off and lockout);
- ``unlock_for``: an approver's PIN opens the records identity for a purpose, a grantee and a
  list of finished calls, for at most ``keeper.grant_max_hours``; the keeper keeps only the
  epoch identity each of those calls needs (found by opening the call's age header) and
  forgets the records identity at once; it answers with a random grant token;
- ``open_call``: the grantee streams one call of the grant as 16-bit WAV (decoded here from
  Opus, FLAC or WAV); the page relays the bytes and never sees a key;
- ``numbers``: the grantee reads a call's dialled number and caller ID in clear;
- ``masked``: the masked numbers of listed calls (sealed under the device secret), for a
  person whose role may see them;
- ``end_grant``, ``status``;
- first run (``init_status``, ``init_begin``, ``init_commit``): on a data directory without a
  records key the keeper serves only these and ``status``. ``init_begin`` generates the recovery
  passphrase and returns it once, keeping it in memory only; ``init_commit`` takes it typed back
  and only when it matches writes the key files as ``nokbox init`` does (``init_records_key``).

The keeper never trusts the page for what it can check itself: the PIN (PinGuard), the
grant's expiry (its own clock), that a call belongs to the grant, that the grantee is the one
asking, and the acting people's roles (``authorize``, read from the accounts database by the
caller that builds the keeper; this module cannot import ``people/``). An identity is dropped
when its grant ends, when it has not been used for ``keeper.idle_minutes``, and at exit.
Python cannot wipe memory it has freed: what is dropped is every reference to the key objects.
Every outcome, refusals included, is an audit entry.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..audit import AuditLog
from ..errors import NokboxError
from ..index import CallIndex, iso_utc
from ..ipc import IpcError, Request, Server, Stream, allowed_uids, run_dir
from .age import X25519Identity, decrypt, read_header, unwrap_file_key
from .epochs import live_identities
from .keys import box_device, device_for
from .personal import BoxSealer, open_masked
from .sealing import (DeviceMismatch, NoPinSlot, PinGuard, PinLockedOut, PinRateLimited, UnlockError,
                      WrongPin)

log = logging.getLogger(__name__)

SOCKET = "keeper.sock"
PENDING_S = 3600.0  # a recovery passphrase shown and not typed back is forgotten after this long
WAV_CHUNK = 64 * 1024
MAX_MASKED = 1000

# authorize(actor, permission) -> None when allowed, else the reason (people.accounts.role_check)
Authorize = Callable[[str, str], "str | None"]


class Refused(IpcError):
    """The keeper will not do this; the message says why (Korean · English)."""

    def __init__(self, message: str, code: str = "refused") -> None:
        super().__init__(code, message)


@dataclass
class Grant:
    token_hash: str
    approver: str
    grantee: str
    purpose: str
    calls: dict[int, X25519Identity]  # call id -> the epoch identity that opens it
    expires: float
    last_used: float
    plays: int = 0
    request: str = ""               # the request number the grant serves ("" only in tests of the mechanism)
    max_plays: int = 0              # per call; 0 = no limit
    max_exports: int = 0            # export reads per call; 0 = none allowed
    played: dict = field(default_factory=dict)    # call id -> plays started
    exported: dict = field(default_factory=dict)  # call id -> export reads
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def ref(self) -> str:
        """A name for the grant in logs and the audit trail (not the token)."""
        return "grant:" + self.token_hash[:12]


def passphrase_key(text: str) -> str:
    """A recovery passphrase as compared when typed back: spaces and dashes dropped, upper case,
    and the letters Crockford base32 reads as digits (O→0, I/L→1)."""
    t = "".join(str(text).split()).replace("-", "").replace("\u2010", "").replace("\u2011", "").upper()
    return t.translate(str.maketrans("OIL", "011"))


def canonical_passphrase(text: str) -> str:
    """A generated passphrase as it is sealed (``XXXXX-XXXXX-XXXXX-XXXXX``) from however it was typed;
    any other text (a passphrase chosen with ``nokbox init --passphrase-file``) as typed, trimmed."""
    from .sealing import _PASS_ALPHABET, _PASS_GROUP_LEN, _PASS_GROUPS

    key = passphrase_key(text)
    if len(key) == _PASS_GROUP_LEN * _PASS_GROUPS and all(c in _PASS_ALPHABET for c in key):
        return "-".join(key[i:i + _PASS_GROUP_LEN] for i in range(0, len(key), _PASS_GROUP_LEN))
    return str(text).strip()


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _pin_refusal(exc: UnlockError) -> Refused:
    if isinstance(exc, WrongPin):
        return Refused(f"PIN이 틀렸습니다 ({exc.tries_left}회 남음) · {exc}", "wrong_pin")
    if isinstance(exc, PinRateLimited):
        return Refused(f"잠시 후 다시 시도하십시오 · {exc}", "rate_limited")
    if isinstance(exc, PinLockedOut):
        return Refused(f"PIN이 잠겼습니다 · {exc}", "locked")
    if isinstance(exc, NoPinSlot):
        return Refused(f"이 승인권자의 PIN이 등록되지 않았습니다 · {exc}", "no_pin")
    if isinstance(exc, DeviceMismatch):
        return Refused(f"다른 장치에서 만든 PIN입니다 · {exc}", "device")
    return Refused(f"열 수 없습니다 · {exc}")


def wav_header(frames: int, rate: int, channels: int = 1) -> bytes:
    """A canonical 44-byte PCM WAV header for 16-bit samples."""
    data = frames * channels * 2
    return (b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE" + b"fmt " +
            struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * 2, channels * 2, 16) +
            b"data" + struct.pack("<I", data))


class _Decoder:
    """One call's decrypted file opened with libsndfile, read as 16-bit mono PCM by byte ranges.
    Reads are serialised (one file position); a range past what the codec yields is silence, so
    the WAV's announced length always holds."""

    def __init__(self, plain: bytes) -> None:
        import soundfile as sf

        from .callfile import memfd_with

        # an in-memory file descriptor, not a Python file object (callfile.plain_audio says why).
        # This object owns it and closes it once (libsndfile never does: closefd=False), so a
        # failed open can never close a number another thread has been given since
        self._fd = memfd_with(plain)
        try:
            self.sf = sf.SoundFile(self._fd, closefd=False)
        except sf.LibsndfileError as exc:
            self._close_fd()
            raise RuntimeError(str(exc)) from None
        self.rate, self.frames = int(self.sf.samplerate), int(self.sf.frames)
        self.lock = threading.Lock()

    def _close_fd(self) -> None:
        fd, self._fd = getattr(self, "_fd", -1), -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        s = getattr(self, "sf", None)
        if s is not None:
            s.close()
        self._close_fd()

    def pcm_bytes(self, start: int, stop: int) -> bytes:
        """Bytes [start, stop) of the PCM data (2 bytes a frame, first channel)."""
        import numpy as np

        first, skip = divmod(start, 2)
        n = (stop - start + skip + 1) // 2
        with self.lock:
            if self.sf.tell() != first:
                self.sf.seek(first)
            pcm = self.sf.read(n, dtype="int16", always_2d=True)
        raw = np.ascontiguousarray(pcm[:, 0]).tobytes()
        if len(raw) < 2 * n:
            raw += bytes(2 * n - len(raw))
        return raw[skip:skip + stop - start]


class Keeper:
    """Grants and the identities behind them, for one data directory."""

    def __init__(self, data: Path, cfg, *, authorize: Authorize, clock=None, requests=None,
                 config_given: bool = False) -> None:
        from ..hal.clock import Clock

        self.data = Path(data)
        self.cfg = cfg
        self.authorize = authorize
        # the release workflow's view of its requests (release.requests.KeeperView, built by the CLI:
        # this module cannot import release/): who may see a request, its sealed details, its calls
        self.requests = requests
        self._pcm: tuple | None = None  # (grant hash, call, _Decoder): the one call opened for listening
        self.clock = clock or Clock()
        self.audit = AuditLog(self.data, clock=self.clock, every=cfg.audit.seal_every)
        self.device = box_device(self.data, cfg)
        self._sealer: BoxSealer | None = None
        self._grants: dict[str, Grant] = {}
        self._lock = threading.Lock()  # guards _grants
        # first run: whether a config file was named (nokbox init's choice of device secret), and the
        # recovery passphrase shown by init_begin and not yet typed back: (passphrase, actor, monotonic)
        self.config_given = config_given
        self._pending: tuple[str, str, float] | None = None
        self._init_lock = threading.Lock()  # guards _pending and the writing of the key files

    # -- grants --------------------------------------------------------------------------------
    def _allow(self, actor: str, perm: str, obj: str, purpose: str) -> None:
        why = self.authorize(actor, perm)
        if why:
            self.audit.append("keeper.refused", actor=actor, role="-", obj=obj, outcome="refused",
                              reason=f"{perm}: {why}", detail={"purpose": purpose[:200]})
            raise Refused(why, "forbidden")

    def pin_check(self, actor: str, pin: str) -> dict:
        """Try ``actor``'s PIN slot; counts a wrong PIN like any other attempt."""
        try:
            PinGuard(self.data, self.device, self.cfg.vault.pin_backoff_s).attempt(actor, pin, self.clock.wall())
        except UnlockError as exc:
            raise _pin_refusal(exc) from None
        return {"ok": True}

    def unlock_for(self, actor: str, pin: str, *, grantee: str, purpose: str, calls: list[int],
                   ttl_s: float, request: str = "", max_plays: int = 0, max_exports: int = 0) -> dict:
        """Open the calls for ``grantee`` with ``actor``'s PIN; the grant token (shown to no one but the page)."""
        obj = f"calls:{','.join(str(c) for c in calls[:20])}"
        self._allow(actor, "request.approve", obj, purpose)
        if grantee == actor:
            self.audit.append("keeper.refused", actor=actor, role="approver", obj=obj, outcome="refused",
                              reason="self-approval")
            raise Refused("자기 자신에게 승인할 수 없습니다 · an approver cannot grant to themselves", "self_approval")
        self._allow(grantee, "call.play", obj, purpose)
        limit = self.cfg.keeper.grant_max_hours * 3600.0
        if not 0 < ttl_s <= limit:
            raise Refused(f"승인 기간은 {self.cfg.keeper.grant_max_hours:g}시간 이내여야 합니다 · "
                          f"a grant lasts at most {self.cfg.keeper.grant_max_hours:g} h", "bad_args")
        if not calls or len(calls) > self.cfg.keeper.grant_max_calls or len(set(calls)) != len(calls):
            raise Refused(f"통화는 1~{self.cfg.keeper.grant_max_calls}건, 중복 없이 · 1 to "
                          f"{self.cfg.keeper.grant_max_calls} distinct calls per grant", "bad_args")
        files = self._call_files(calls)
        try:
            records = PinGuard(self.data, self.device, self.cfg.vault.pin_backoff_s).attempt(
                actor, pin, self.clock.wall())
        except UnlockError as exc:
            raise _pin_refusal(exc) from None
        try:
            epochs = [X25519Identity(ident) for _, ident in live_identities(self.data, records)]
        finally:
            del records  # the records identity is not kept past this call
        opened: dict[int, X25519Identity] = {}
        for cid, path in files.items():
            ident = self._identity_for(path, epochs)
            if ident is None:
                self.audit.append("keeper.refused", actor=actor, role="approver", obj=f"call:{cid}",
                                  outcome="refused", reason="its key epoch was destroyed (retention)")
                raise Refused(f"{cid}번 통화는 보존기간이 끝나 열 수 없습니다 · call {cid} can no longer be "
                              "opened (its key was destroyed by retention)", "destroyed")
            opened[cid] = ident
        del epochs
        token = secrets.token_urlsafe(32)
        now = self.clock.wall()
        g = Grant(_hash(token), actor, grantee, purpose, opened, now + ttl_s, self.clock.monotonic(),
                  request=request, max_plays=max_plays, max_exports=max_exports)
        with self._lock:
            self._grants[g.token_hash] = g
        self.audit.append("keeper.grant", actor=actor, role="approver", obj=g.ref, reason=purpose[:200],
                          detail={"grantee": grantee, "calls": sorted(opened), "expires": iso_utc(g.expires),
                                  "request": request, "max_plays": max_plays, "max_exports": max_exports})
        log.info("%s: %d call(s) opened by %s for %s until %s", g.ref, len(opened), actor, grantee,
                 iso_utc(g.expires))
        return {"grant": token, "ref": g.ref, "expires": iso_utc(g.expires), "calls": sorted(opened)}

    def _call_files(self, calls: list[int]) -> dict[int, Path]:
        idx = CallIndex(self.data / "index.sqlite")
        try:
            out = {}
            for cid in calls:
                if not isinstance(cid, int) or isinstance(cid, bool):
                    raise Refused("통화 번호는 정수입니다 · call ids are integers", "bad_args")
                row = idx.con.execute("SELECT file, state FROM calls WHERE id = ?", (cid,)).fetchone()
                if row is None:
                    raise Refused(f"{cid}번 통화가 없습니다 (보존기간 만료로 파기되었을 수 있음) · no call {cid} "
                                  "(it may have been destroyed by retention)", "no_call")
                if row["state"] != "finished":
                    raise Refused(f"{cid}번 통화는 아직 완결되지 않았습니다 · call {cid} is {row['state']}", "not_finished")
                out[cid] = self.data / row["file"]
            return out
        finally:
            idx.close()

    @staticmethod
    def _identity_for(path: Path, identities: list[X25519Identity]) -> X25519Identity | None:
        try:
            with open(path, "rb") as f:
                stanzas, _, _ = read_header(f)
        except (OSError, NokboxError):
            return None
        for ident in identities:
            try:
                unwrap_file_key(stanzas, [ident])
                return ident
            except NokboxError:
                continue
        return None

    def _grant(self, token: str, actor: str, call: int | None, what: str) -> Grant:
        """The live grant behind ``token`` for ``actor`` (and ``call``), or an audited refusal."""
        if not isinstance(token, str) or not token:
            raise Refused("승인이 없습니다 · no grant given", "no_grant")
        with self._lock:
            g = self._grants.get(_hash(token))
        obj = f"call:{call}" if call is not None else "grant"
        reason = ""
        if g is None:
            reason, code = "unknown or ended grant", "no_grant"
        elif self.clock.wall() >= g.expires:
            self._forget(g, "expired")
            reason, code = "grant expired", "expired"
        elif g.grantee != actor:
            reason, code = f"grant is for {g.grantee}", "not_grantee"
        elif call is not None and call not in g.calls:
            reason, code = "call not in the grant", "not_in_grant"
        if reason:
            self.audit.append(f"keeper.{what}", actor=actor, role="-", obj=obj, outcome="refused", reason=reason,
                              detail={"grant": g.ref} if g else None)
            raise Refused({"no_grant": "승인이 없거나 끝났습니다 · no such grant (ended, or the keeper restarted)",
                           "expired": "승인 기간이 지났습니다 · the grant has expired",
                           "not_grantee": "이 승인은 다른 사람의 것입니다 · this grant is for someone else",
                           "not_in_grant": "이 통화는 승인에 없습니다 · this call is not in the grant"}[code], code)
        self._allow(actor, "call.play", obj, g.purpose)
        g.last_used = self.clock.monotonic()
        return g

    def _opened(self, g: Grant, call: int, actor: str, what: str) -> "_Decoder":
        """A granted call, decrypted in memory (the encoded file: Opus or FLAC, a few MB an hour)
        and opened for decoding by blocks. Only the blocks a read asks for are decoded, so the
        first byte of an hour-long call comes as fast as of a short one, and a seek decodes from
        the seek point. The last call opened for listening is kept (one call, for the grant) so
        the player's range requests do not decrypt it again."""
        cached = self._pcm
        if cached is not None and cached[0] == g.token_hash and cached[1] == call:
            return cached[2]
        path = self._call_files([call])[call]
        try:
            with open(path, "rb") as f, g.lock:
                ident = g.calls[call]
                if ident is None:
                    raise Refused("승인이 끝났습니다 · the grant has ended", "no_grant")
                plain = b"".join(decrypt(f, [ident]))
            dec = _Decoder(plain)
        except (OSError, NokboxError, RuntimeError) as exc:
            if isinstance(exc, Refused):
                raise
            self.audit.append(f"keeper.{what}", actor=actor, role="officer", obj=f"call:{call}", outcome="failed",
                              reason=f"does not open: {type(exc).__name__}", detail={"grant": g.ref, "request": g.request})
            raise Refused(f"녹음 파일을 열 수 없습니다 · the recording does not open ({type(exc).__name__})",
                          "unreadable") from None
        if what == "play":
            self._pcm = (g.token_hash, call, dec)
        return dec

    def open_call(self, actor: str, token: str, call: int, *, offset: int = 0, length: int | None = None,
                  use: str = "play", count: bool = True) -> tuple[dict, object]:
        """(head, chunks): the call as 16-bit mono WAV, decrypted and decoded here.

        ``offset``/``length`` select bytes of that WAV (the player's HTTP range requests). A play is
        counted when a read starts at byte 0 (``max_plays`` per call); ``use="export"`` reads the
        whole file for a package (``max_exports`` per call, so a failed stick can be retried)."""
        if use not in ("play", "export"):
            raise Refused("use는 play 또는 export · use is play or export", "bad_args")
        g = self._grant(token, actor, call, use)
        counted = use == "export" or (offset == 0 and bool(count))
        if counted:
            with g.lock:
                done = (g.exported if use == "export" else g.played).get(call, 0)
                limit = g.max_exports if use == "export" else g.max_plays
                if g.request and (limit <= 0 or done >= limit):
                    self.audit.append(f"keeper.{use}", actor=actor, role="officer", obj=f"call:{call}",
                                      outcome="refused", reason=f"{use} limit reached ({done} of {limit})",
                                      detail={"grant": g.ref, "request": g.request})
                    raise Refused(("재생" if use == "play" else "내보내기") +
                                  f" 허용 횟수({limit}회)를 모두 썼습니다 · the approval allows {limit} "
                                  f"{use}{'s' if limit != 1 else ''} of this call", "limit")
                (g.exported if use == "export" else g.played)[call] = done + 1
        dec = self._opened(g, call, actor, use)
        rate, frames = dec.rate, dec.frames
        total = 44 + 2 * frames
        if not isinstance(offset, int) or offset < 0 or offset >= total:
            raise Refused(f"범위가 잘못되었습니다 · range starts outside the file ({total} bytes)", "range")
        end = total if length is None else min(total, offset + max(0, int(length)))
        if counted:
            g.plays += use == "play"
            self.audit.append(f"keeper.{use}", actor=actor, role="officer", obj=f"call:{call}", reason=g.purpose[:200],
                              detail={"grant": g.ref, "approver": g.approver, "request": g.request,
                                      "count": (g.exported if use == "export" else g.played)[call],
                                      "seconds": round(frames / rate, 1)})
        head = {"call": call, "rate": rate, "frames": frames, "mime": "audio/wav", "total": total,
                "offset": offset, "bytes": end - offset, "counted": counted}
        header = wav_header(frames, rate)

        def chunks():
            pos = offset
            if pos < 44:
                yield header[pos:min(44, end)]
                pos = 44
            while pos < end:
                stop = min(end, pos + WAV_CHUNK)
                yield dec.pcm_bytes(pos - 44, stop - 44)
                pos = stop

        return head, chunks()

    def numbers(self, actor: str, token: str, call: int) -> dict:
        """A call's dialled number and caller ID in clear, for the grantee."""
        from .age import decrypt_bytes  # sealed like personal.seal_value, to the call's own epoch

        g = self._grant(token, actor, call, "numbers")
        idx = CallIndex(self.data / "index.sqlite")
        try:
            row = idx.con.execute("SELECT numbers_sealed FROM calls WHERE id = ?", (call,)).fetchone()
        finally:
            idx.close()
        if row is None or row["numbers_sealed"] is None:
            out = {}
        else:
            try:
                with g.lock:
                    out = json.loads(decrypt_bytes(row["numbers_sealed"], [g.calls[call]]).decode("utf-8"))
            except (NokboxError, ValueError) as exc:
                self.audit.append("keeper.numbers", actor=actor, role="officer", obj=f"call:{call}", outcome="failed",
                                  reason=f"does not open: {type(exc).__name__}", detail={"grant": g.ref})
                raise Refused("번호를 열 수 없습니다 · the numbers do not open", "unreadable") from None
        self.audit.append("keeper.numbers", actor=actor, role="officer", obj=f"call:{call}", reason=g.purpose[:200],
                          detail={"grant": g.ref, "fields": sorted(out)})
        return {"call": call, "numbers": out}

    def masked(self, actor: str, calls: list[int], purpose: str, request: str | None = None) -> dict:
        """{call id: masked numbers} for the calls listed that have numbers: for the roles that see
        masked numbers in lists (numbers.masked), or, with ``request``, for the officer searching
        inside that request, and only for calls within its window and lines."""
        if not isinstance(calls, list) or len(calls) > MAX_MASKED or not all(
                isinstance(c, int) and not isinstance(c, bool) for c in calls):
            raise Refused(f"통화 번호 목록이 잘못되었습니다 · calls must be a list of at most {MAX_MASKED} ids", "bad_args")
        if request:
            why = self._view().may_search(actor, str(request), calls)
            if why:
                self.audit.append("keeper.refused", actor=actor, role="-", obj=f"request:{request}", outcome="refused",
                                  reason=f"masked numbers: {why}")
                raise Refused("이 신청의 검색 범위 밖입니다 · outside this request's search", "forbidden")
        else:
            self._allow(actor, "numbers.masked", f"calls:{len(calls)}", purpose)
        if self._sealer is None:
            try:
                self._sealer = BoxSealer(device_for(self.data))  # the secret the recorder sealed them with
            except (OSError, NokboxError) as exc:
                raise Refused(f"번호를 열 수 없음 · masked numbers unavailable: {exc}", "device") from None
        out: dict[str, object] = {}
        if calls:
            idx = CallIndex(self.data / "index.sqlite")
            try:
                marks = ",".join("?" * len(calls))
                rows = list(idx.con.execute(f"SELECT id, numbers_masked FROM calls WHERE id IN ({marks})"
                                            " AND numbers_masked IS NOT NULL", calls))
            finally:
                idx.close()
            for r in rows:
                try:
                    out[str(r["id"])] = open_masked(self._sealer, r["numbers_masked"])
                except NokboxError:
                    out[str(r["id"])] = {"error": "열 수 없음 · does not open"}
        self.audit.append("keeper.masked", actor=actor, role="-", obj=f"calls:{len(calls)}", reason=purpose[:200],
                          detail={"ids": calls[:100], "masked_numbers": len(out)})
        return out

    # -- the release workflow ------------------------------------------------------------------
    def _view(self):
        if self.requests is None:
            raise Refused("신청 기능이 이 키 관리자에 연결되지 않았습니다 · the keeper was started without the "
                          "request workflow", "unavailable_here")
        return self.requests

    def _blind_key(self) -> bytes:
        from .personal import BLIND_INFO

        return self._box_secret().derive(BLIND_INFO)  # the secret the recorder derived the calls' values with

    def _box_secret(self):
        """The device secret the data directory was initialised with (the recorder's, for masked and
        blind values); the PIN slots use ``self.device``, which follows the config."""
        return device_for(self.data)

    def request_key(self, actor: str) -> dict:
        """The public recipient the page seals requests' personal details to (it cannot open them)."""
        from .age import recipient_of
        from .keys import request_identity

        self._allow(actor, "request.create", "request-key", "seal a request")
        return {"recipient": recipient_of(request_identity(self._box_secret()))}

    def blind(self, actor: str, numbers: list) -> dict:
        """Blind index values of the numbers a request names (the page never holds the key)."""
        from .personal import blind_number

        if not isinstance(numbers, list) or len(numbers) > 10 or not all(isinstance(n, str) and len(n) <= 40
                                                                          for n in numbers):
            raise Refused("numbers는 최대 10개의 문자열 · numbers is a list of at most 10 strings", "bad_args")
        self._allow(actor, "request.create", "blind-index", "match a request's numbers")
        key = self._blind_key()
        return {"blind": [blind_number(key, n) for n in numbers]}

    def request_details(self, actor: str, numbers: list, purpose: str) -> dict:
        """{number: details}: the requesters' personal details, for the officer handling the request,
        its approvers and the auditor only; every request opened is a ``request.view`` entry."""
        from .age import X25519Identity as _Id, decrypt_bytes
        from .keys import request_identity

        view = self._view()
        if not isinstance(numbers, list) or not 0 < len(numbers) <= 2000 or not all(isinstance(n, str) for n in numbers):
            raise Refused("numbers는 신청번호 목록 · numbers is a list of request numbers", "bad_args")
        ident = _Id(request_identity(self._box_secret()))
        out = {}
        refused = []
        for number in numbers:
            why = view.may_view(actor, number)
            if why:
                refused.append(number)
                self.audit.append("request.view", actor=actor, role="-", obj=f"request:{number}", outcome="refused",
                                  reason=why[:200])
                continue
            blob = view.sealed_details(number)
            try:
                out[number] = json.loads(decrypt_bytes(blob, [ident]).decode("utf-8")) if blob else {}
            except (NokboxError, ValueError) as exc:
                out[number] = {"error": f"열 수 없음 · does not open ({type(exc).__name__})"}
        if out:
            self.audit.append("request.view", actor=actor, role="-",
                              obj=f"request:{numbers[0]}" if len(out) == 1 else f"requests:{len(out)}",
                              reason=purpose[:200], detail={"requests": sorted(out)[:100]})
        if refused and not out:
            raise Refused("이 신청을 볼 권한이 없습니다 · you may not see this request "
                          "(only its officer, its approvers and the auditor)", "forbidden")
        return {"details": out, "refused": refused}

    def attachment(self, actor: str, number: str, index: int) -> tuple[dict, object]:
        """(head, chunks): one attached scan of a request, decrypted, for those who may see the request."""
        from .age import X25519Identity as _Id
        from .keys import request_identity

        view = self._view()
        obj = f"request:{number}"
        why = view.may_view(actor, number)
        if why:
            self.audit.append("request.view", actor=actor, role="-", obj=obj, outcome="refused", reason=why[:200],
                              detail={"attachment": index})
            raise Refused("이 신청을 볼 권한이 없습니다 · you may not see this request", "forbidden")
        found = view.attachment(number, index)
        if found is None:
            raise Refused("첨부 파일이 없습니다 · no such attachment", "no_attachment")
        path, mime = found
        try:
            with open(path, "rb") as f:
                plain = b"".join(decrypt(f, [_Id(request_identity(self._box_secret()))]))
        except (OSError, NokboxError) as exc:
            raise Refused(f"첨부 파일을 열 수 없습니다 · the attachment does not open ({type(exc).__name__})",
                          "unreadable") from None
        self.audit.append("request.view", actor=actor, role="-", obj=obj, reason="attachment",
                          detail={"attachment": index, "bytes": len(plain)})
        return {"mime": mime, "bytes": len(plain)}, (plain[i:i + WAV_CHUNK] for i in range(0, len(plain), WAV_CHUNK))

    def approve(self, actor: str, pin: str, number: str, *, comment: str, final: bool) -> dict:
        """An approver decides on a request with their PIN. ``final``: the approval that opens the
        request's attached calls for its officer (a grant bound to the request, ``release`` limits);
        otherwise a review stage (the team leader's), where the PIN is only checked."""
        view = self._view()
        req = view.for_approval(number)
        obj = f"request:{number}"
        if req is None:
            raise Refused(f"{number}: 신청이 없습니다 · no such request", "no_request")
        self._allow(actor, "request.approve", obj, req["purpose_ref"])
        if actor == req["officer"]:
            self.audit.append("keeper.refused", actor=actor, role="approver", obj=obj, outcome="refused",
                              reason="self-approval: the approver entered this request")
            raise Refused("자신이 접수한 신청은 승인할 수 없습니다 · you cannot approve a request you entered",
                          "self_approval")
        if not final:
            self.pin_check(actor, pin)
            self.audit.append("keeper.review", actor=actor, role="approver", obj=obj, reason=comment[:200])
            return {"ok": True}
        rc = self.cfg.release
        res = self.unlock_for(actor, pin, grantee=req["officer"], purpose=req["purpose_ref"], calls=req["calls"],
                              ttl_s=min(rc.approval_hours, self.cfg.keeper.grant_max_hours) * 3600.0, request=number,
                              max_plays=rc.max_plays if req["kind"] in ("listen", "provide") else 0,
                              max_exports=rc.max_exports if req["kind"] == "provide" else 0)
        return res

    def pin_status(self, actor: str) -> dict:
        """Whether ``actor`` has a PIN slot, and its counter (no secret)."""
        from .sealing import MAX_PIN_TRIES, pin_slots

        have = actor in pin_slots(self.data)
        st, _ = PinGuard(self.data, self.device, self.cfg.vault.pin_backoff_s).load(actor) if have else (None, "")
        return {"slot": have, "locked": bool(st and st.locked), "failures": st.failures if st else 0,
                "tries_left": MAX_PIN_TRIES - (st.failures if st else 0)}

    def enroll_pin(self, actor: str, pin: str, via: dict) -> dict:
        """Seal ``actor``'s PIN slot: the one PIN that approves requests and opens calls. Needs the
        records identity, opened here with the recovery passphrase (``via.passphrase``) or with an
        approver's PIN (``via.approver`` + ``via.pin``: an existing approver, or the actor's own old PIN)."""
        from .sealing import open_recovery, pin_slots, pin_strength_problem, seal_pin_slot, check_pin as _check_pin

        self._allow(actor, "approver.pin", f"pin-slot:{actor}", "enrol PIN")
        obj = f"pin-slot:{actor}"
        try:
            pin = _check_pin(pin)
        except NokboxError as exc:
            raise Refused(f"PIN은 숫자 6~12자리입니다 · {exc}", "bad_pin") from None
        weak = pin_strength_problem(pin, tpm=getattr(self.device, "tpm", None) is not None,
                                    allow_short=self.cfg.vault.allow_short_pin, log_n=self.cfg.vault.pin_scrypt_log_n)
        if weak:
            raise Refused(weak, "weak_pin")
        if not isinstance(via, dict):
            raise Refused("via가 필요합니다 · via is required", "bad_args")
        if via.get("passphrase"):
            try:
                records = open_recovery(self.data, str(via["passphrase"]))
            except (UnlockError, NokboxError) as exc:
                self.audit.append("keys.pin.add", actor=actor, role="approver", obj=obj, outcome="denied",
                                  reason=f"recovery passphrase: {type(exc).__name__}")
                raise Refused("복구 암호가 틀렸습니다 · the recovery passphrase is wrong", "wrong_passphrase") from None
            how = "recovery passphrase"
        elif via.get("approver") and via.get("pin"):
            by = str(via["approver"])
            if by != actor:
                self._allow(by, "approver.pin", obj, "vouch for a new approver's PIN")
            try:
                records = PinGuard(self.data, self.device, self.cfg.vault.pin_backoff_s).attempt(
                    by, str(via["pin"]), self.clock.wall())
            except UnlockError as exc:
                raise _pin_refusal(exc) from None
            how = "own previous PIN" if by == actor else f"PIN of approver {by}"
        else:
            raise Refused("복구 암호 또는 기존 승인권자의 PIN이 필요합니다 · the recovery passphrase or an existing "
                          "approver's PIN is needed", "bad_args")
        replaced = actor in pin_slots(self.data)
        try:
            seal_pin_slot(self.data, records, actor, pin, self.device, self.cfg.vault.pin_scrypt_log_n)
        finally:
            del records
        guard = PinGuard(self.data, self.device, self.cfg.vault.pin_backoff_s)
        with guard.locked_slot():
            guard.reset(actor)
        self.audit.append("keys.pin.add", actor=actor, role="approver", obj=obj,
                          reason=("PIN replaced" if replaced else "new approver PIN") + f" ({how})")
        return {"ok": True, "replaced": replaced}

    def signer(self, actor: str) -> dict:
        from .signing import allowed_signers, fingerprint, public_line

        line = public_line(self.data)
        return {"public": line, "fingerprint": fingerprint(line), "allowed_signers": allowed_signers(line)}

    def sign(self, actor: str, token: str, message: bytes) -> dict:
        """The box's SSHSIG over an export manifest, for the grantee of a live grant that allows export."""
        from .signing import sign as _sign

        g = self._grant(token, actor, None, "sign")
        if g.max_exports <= 0:
            raise Refused("이 승인은 제공(내보내기)을 허용하지 않습니다 · this approval does not allow export", "no_export")
        if len(message) > 256 * 1024:
            raise Refused("서명할 내용이 너무 큽니다 · message too large", "bad_args")
        sig = _sign(self.data, self.device, message)
        self.audit.append("keeper.sign", actor=actor, role="officer", obj=g.ref, reason="export manifest",
                          detail={"request": g.request, "sha256": hashlib.sha256(message).hexdigest()})
        return {"signature": sig}

    def end_grant(self, actor: str, token: str) -> dict:
        with self._lock:
            g = self._grants.get(_hash(token)) if isinstance(token, str) else None
        if g is None or actor not in (g.grantee, g.approver):
            raise Refused("승인이 없거나 끝났습니다 · no such grant", "no_grant")
        self._forget(g, f"ended by {actor}")
        return {"ended": g.ref}

    def _forget(self, g: Grant, why: str) -> None:
        with self._lock:
            if self._grants.pop(g.token_hash, None) is None:
                return
        with g.lock:
            g.calls = {cid: None for cid in g.calls}  # type: ignore[misc] - drop the identities
        if self._pcm is not None and self._pcm[0] == g.token_hash:
            self._pcm = None
        self.audit.append("keeper.forget", actor="system", role="system", obj=g.ref, reason=why,
                          detail={"plays": g.plays})
        log.info("%s: identities forgotten (%s)", g.ref, why)

    def sweep(self) -> int:
        """Forget grants that expired or sat idle; how many were forgotten."""
        idle = self.cfg.keeper.idle_minutes * 60.0
        now, mono = self.clock.wall(), self.clock.monotonic()
        with self._lock:
            grants = list(self._grants.values())
        n = 0
        for g in grants:
            if now >= g.expires:
                self._forget(g, "expired")
                n += 1
            elif mono - g.last_used >= idle:
                self._forget(g, f"idle for {self.cfg.keeper.idle_minutes:g} min")
                n += 1
        return n

    def close(self) -> None:
        with self._lock:
            grants = list(self._grants.values())
        for g in grants:
            self._forget(g, "keeper stopped")

    def status(self) -> dict:
        with self._lock:
            grants = list(self._grants.values())
        return {"grants": len(grants), "calls_open": sum(len(g.calls) for g in grants),
                "idle_minutes": self.cfg.keeper.idle_minutes, "initialised": self.initialised}

    # -- first run ---------------------------------------------------------------------------
    @property
    def initialised(self) -> bool:
        from .keys import MARKER

        return (self.data / MARKER).exists() and (self.data / "keys" / "recipient.txt").exists()

    def init_status(self, actor: str) -> dict:
        """What the first-run wizard needs to know (nothing secret): is there a records key, is it
        sealed under a recovery passphrase, how many approvers have a PIN, is a passphrase pending."""
        from .sealing import RECOVERY_FILE, pin_slots

        with self._init_lock:
            pending = self._pending is not None and self._pending[1] == actor and not self._expired()
        if not self.initialised:
            return {"initialised": False, "recovery_sealed": False, "approver_pins": 0, "pending": pending}
        approvers = [n for n in pin_slots(self.data) if not self.authorize(n, "approver.pin")]
        return {"initialised": True, "recovery_sealed": (self.data / "keys" / RECOVERY_FILE).exists(),
                "approver_pins": len(approvers), "pending": False}

    def _expired(self) -> bool:
        return self._pending is not None and self.clock.monotonic() - self._pending[2] > PENDING_S

    def init_begin(self, actor: str, restart: bool = False) -> dict:
        """A new recovery passphrase for this uninitialised box, returned this once and kept only in
        memory until ``init_commit``; nothing is written. A pending one is never returned again:
        ``restart`` replaces it with a new one (the technician lost it before typing it back)."""
        from .sealing import generate_passphrase

        self._allow(actor, "users.manage", "records-key", "first-run key creation")
        with self._init_lock:
            if self.initialised:
                raise Refused("기록 키가 이미 있습니다 · this box already has its records key", "initialised")
            if self._pending is not None and not self._expired() and not restart:
                raise Refused("복구 암호가 이미 표시되었습니다. 입력하여 확인하거나 새 암호로 다시 시작하십시오 · the "
                              "recovery passphrase was already shown: type it back, or start again with a new one",
                              "pending")
            passphrase = generate_passphrase()
            self._pending = (passphrase, actor, self.clock.monotonic())
        self.audit.append("keys.init.begin", actor=actor, role="admin", obj="records-key",
                          reason="new recovery passphrase shown" + (" (restarted)" if restart else ""))
        return {"passphrase": passphrase}

    def init_commit(self, actor: str, typed: str) -> dict:
        """Write the records key, sealed under the pending passphrase, if ``typed`` is that passphrase
        (spaces, dashes and case ignored; Crockford's O/I/L read as 0/1/1). A mismatch writes nothing."""
        from .keys import init_records_key

        self._allow(actor, "users.manage", "records-key", "first-run key creation")
        with self._init_lock:
            if self.initialised:
                raise Refused("기록 키가 이미 있습니다 · this box already has its records key", "initialised")
            if self._pending is None or self._pending[1] != actor or self._expired():
                if self._expired():
                    self._pending = None
                raise Refused("표시된 복구 암호가 없습니다. 새 암호로 다시 시작하십시오 · no recovery passphrase is "
                              "waiting to be confirmed (the keeper restarted, or it expired): start again", "no_pending")
            passphrase = self._pending[0]
            if not hmac.compare_digest(passphrase_key(typed).encode(), passphrase_key(passphrase).encode()):
                self.audit.append("keys.init", actor=actor, role="admin", obj="records-key", outcome="refused",
                                  reason="the recovery passphrase typed back does not match")
                raise Refused("입력한 복구 암호가 표시된 것과 다릅니다. 아무것도 저장되지 않았습니다 · the passphrase "
                              "typed back differs from the one shown; nothing was written", "mismatch")
            recipient = init_records_key(self.data, self.cfg, passphrase, config_given=self.config_given)
            self._pending = None
            del passphrase
            self.device = box_device(self.data, self.cfg)
        self.audit.append("keys.init", actor=actor, role="admin", obj="records-key",
                          reason="records key created by the first-run wizard", detail={"recipient": recipient})
        log.info("records key created (first-run wizard, by %s)", actor)
        return {"recipient": recipient}


class KeeperService:
    """The keeper's socket: one verb per Keeper method; a sweeper thread forgets idle grants."""

    def __init__(self, keeper: Keeper, *, path=None) -> None:
        self.keeper = keeper
        cfg = keeper.cfg
        self.path = path or run_dir(keeper.data, cfg) / SOCKET
        self.server = Server(self.path, {
            "status": lambda r: keeper.status(),
            "pin_check": lambda r: keeper.pin_check(r.actor, _str(r, "pin")),
            "open_call": self._open_call,
            "approve": lambda r: keeper.approve(r.actor, _str(r, "pin"), _str(r, "request"),
                                                comment=str(r.args.get("comment") or "")[:2000],
                                                final=bool(r.args.get("final"))),
            "request_key": lambda r: keeper.request_key(r.actor),
            "blind": lambda r: keeper.blind(r.actor, r.args.get("numbers")),
            "request_details": lambda r: keeper.request_details(r.actor, r.args.get("numbers"), r.purpose),
            "attachment": self._attachment,
            "pin_status": lambda r: keeper.pin_status(r.actor),
            "enroll_pin": lambda r: keeper.enroll_pin(r.actor, _str(r, "pin"), r.args.get("via")),
            "signer": lambda r: keeper.signer(r.actor),
            "sign": self._sign,
            "numbers": lambda r: keeper.numbers(r.actor, _str(r, "grant"), _int(r, "call")),
            "masked": lambda r: keeper.masked(r.actor, r.args.get("calls"), r.purpose, r.args.get("request")),
            "end_grant": lambda r: keeper.end_grant(r.actor, _str(r, "grant")),
        }, name="keeper", allow_uids=allowed_uids(cfg.ipc.keeper_allow))
        # a box without its records key yet: only these verbs answer until the wizard creates it
        for verb, handler in list(self.server.handlers.items()):
            if verb != "status":
                self.server.handlers[verb] = self._after_init(handler)
        self.server.handlers.update({
            "init_status": lambda r: keeper.init_status(r.actor),
            "init_begin": lambda r: keeper.init_begin(r.actor, restart=bool(r.args.get("restart"))),
            "init_commit": lambda r: keeper.init_commit(r.actor, _str(r, "passphrase")),
        })
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, name="keeper-sweep", daemon=True)

    def _after_init(self, handler):
        def gated(r: Request):
            if not self.keeper.initialised:
                raise Refused("기록 키가 아직 없습니다: 첫 설정을 마치십시오 · this box has no records key yet: "
                              "finish the first-run set-up", "not_initialised")
            return handler(r)

        return gated

    def _open_call(self, r: Request) -> Stream:
        length = r.args.get("length")
        if length is not None and (not isinstance(length, int) or isinstance(length, bool)):
            raise Refused("length는 정수 · length must be an integer", "bad_args")
        head, chunks = self.keeper.open_call(r.actor, _str(r, "grant"), _int(r, "call"),
                                             offset=r.args.get("offset", 0), length=length,
                                             use=str(r.args.get("use") or "play"), count=r.args.get("count", True) is not False)
        return Stream("bytes", head, chunks, trailer=lambda: {"call": head["call"], "bytes": head["bytes"]})

    def _attachment(self, r: Request) -> Stream:
        head, chunks = self.keeper.attachment(r.actor, _str(r, "request"), _int(r, "index"))
        return Stream("bytes", head, chunks, trailer=lambda: {"bytes": head["bytes"]})

    def _sign(self, r: Request) -> dict:
        import base64

        try:
            message = base64.b64decode(_str(r, "message"), validate=True)
        except ValueError:
            raise Refused("message는 base64 · message must be base64", "bad_args") from None
        return self.keeper.sign(r.actor, _str(r, "grant"), message)

    def _sweep(self) -> None:
        while not self._stop.wait(5.0):
            try:
                self.keeper.sweep()
            except Exception:  # noqa: BLE001 - the sweeper must keep running
                log.exception("keeper sweep failed")

    def start(self) -> "KeeperService":
        self.server.start()
        self._sweeper.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self.server.close()
        self.keeper.close()


def _str(r: Request, key: str) -> str:
    v = r.args.get(key)
    if not isinstance(v, str) or not v or len(v) > 4096:
        raise Refused(f"{key}: 값이 필요합니다 · {key} is required (a string)", "bad_args")
    return v


def _int(r: Request, key: str) -> int:
    v = r.args.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise Refused(f"{key}: 정수가 필요합니다 · {key} must be an integer", "bad_args")
    return v


class KeeperClient:
    """The page's handle on the keeper process (same calls as ``Keeper``, over its socket)."""

    def __init__(self, data_dir, cfg, *, path=None) -> None:
        from ..ipc import Client

        self.client = Client(path or run_dir(data_dir, cfg) / SOCKET, "keeper", cfg.ipc.timeout_s)

    def status(self, actor: str = "system") -> dict:
        return self.client.call("status", actor=actor, purpose="status")

    def init_status(self, actor: str) -> dict:
        return self.client.call("init_status", actor=actor, purpose="first-run status")

    def init_begin(self, actor: str, restart: bool = False) -> dict:
        return self.client.call("init_begin", actor=actor, purpose="first-run key creation", restart=restart)

    def init_commit(self, actor: str, typed: str) -> dict:
        return self.client.call("init_commit", actor=actor, purpose="first-run key creation", passphrase=typed)

    def pin_check(self, actor: str, pin: str) -> dict:
        return self.client.call("pin_check", actor=actor, purpose="PIN check", pin=pin)

    def open_call(self, actor: str, token: str, call: int, *, offset: int = 0, length: int | None = None,
                  use: str = "play", count: bool = True):
        return self.client.stream_bytes("open_call", actor=actor, purpose="listening" if use == "play" else "export",
                                        grant=token, call=call, offset=offset, length=length, use=use, count=count)

    def approve(self, actor: str, pin: str, number: str, *, comment: str, final: bool) -> dict:
        return self.client.call("approve", actor=actor, purpose=f"approve {number}", pin=pin, request=number,
                                comment=comment, final=final)

    def request_key(self, actor: str) -> dict:
        return self.client.call("request_key", actor=actor, purpose="seal a request")

    def blind(self, actor: str, numbers: list) -> dict:
        return self.client.call("blind", actor=actor, purpose="blind index", numbers=list(numbers))

    def request_details(self, actor: str, numbers: list, purpose: str) -> dict:
        return self.client.call("request_details", actor=actor, purpose=purpose, numbers=list(numbers))

    def attachment(self, actor: str, number: str, index: int):
        return self.client.stream_bytes("attachment", actor=actor, purpose="attachment", request=number, index=index)

    def pin_status(self, actor: str) -> dict:
        return self.client.call("pin_status", actor=actor, purpose="PIN status")

    def enroll_pin(self, actor: str, pin: str, via: dict) -> dict:
        return self.client.call("enroll_pin", actor=actor, purpose="enrol PIN", pin=pin, via=via)

    def signer(self, actor: str = "system") -> dict:
        return self.client.call("signer", actor=actor, purpose="export key")

    def sign(self, actor: str, token: str, message: bytes) -> dict:
        import base64

        return self.client.call("sign", actor=actor, purpose="sign manifest", grant=token,
                                message=base64.b64encode(message).decode())

    def numbers(self, actor: str, token: str, call: int) -> dict:
        return self.client.call("numbers", actor=actor, purpose="numbers", grant=token, call=call)

    def masked(self, actor: str, calls: list[int], purpose: str, request: str | None = None) -> dict:
        return self.client.call("masked", actor=actor, purpose=purpose, calls=list(calls), request=request)

    def end_grant(self, actor: str, token: str) -> dict:
        return self.client.call("end_grant", actor=actor, purpose="end grant", grant=token)

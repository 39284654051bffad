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
- ``end_grant``, ``status``.

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
import io
import json
import logging
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
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def ref(self) -> str:
        """A name for the grant in logs and the audit trail (not the token)."""
        return "grant:" + self.token_hash[:12]


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


class Keeper:
    """Grants and the identities behind them, for one data directory."""

    def __init__(self, data: Path, cfg, *, authorize: Authorize, clock=None) -> None:
        from ..hal.clock import Clock

        self.data = Path(data)
        self.cfg = cfg
        self.authorize = authorize
        self.clock = clock or Clock()
        self.audit = AuditLog(self.data, clock=self.clock, every=cfg.audit.seal_every)
        self.device = box_device(self.data, cfg)
        self._sealer: BoxSealer | None = None
        self._grants: dict[str, Grant] = {}
        self._lock = threading.Lock()  # guards _grants

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
                   ttl_s: float) -> dict:
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
        g = Grant(_hash(token), actor, grantee, purpose, opened, now + ttl_s, self.clock.monotonic())
        with self._lock:
            self._grants[g.token_hash] = g
        self.audit.append("keeper.grant", actor=actor, role="approver", obj=g.ref, reason=purpose[:200],
                          detail={"grantee": grantee, "calls": sorted(opened), "expires": iso_utc(g.expires)})
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

    def open_call(self, actor: str, token: str, call: int) -> tuple[dict, object]:
        """(head, chunks): the call as 16-bit mono WAV, decrypted and decoded here."""
        import numpy as np
        import soundfile as sf

        g = self._grant(token, actor, call, "play")
        path = self._call_files([call])[call]
        try:
            with open(path, "rb") as f, g.lock:
                plain = b"".join(decrypt(f, [g.calls[call]]))
            pcm, rate = sf.read(io.BytesIO(plain), dtype="int16", always_2d=True)
        except (OSError, NokboxError, sf.LibsndfileError, RuntimeError) as exc:
            self.audit.append("keeper.play", actor=actor, role="officer", obj=f"call:{call}", outcome="failed",
                              reason=f"does not open: {type(exc).__name__}", detail={"grant": g.ref})
            raise Refused(f"녹음 파일을 열 수 없습니다 · the recording does not open ({type(exc).__name__})",
                          "unreadable") from None
        del plain
        mono = np.ascontiguousarray(pcm[:, 0])
        g.plays += 1
        self.audit.append("keeper.play", actor=actor, role="officer", obj=f"call:{call}", reason=g.purpose[:200],
                          detail={"grant": g.ref, "approver": g.approver, "play": g.plays,
                                  "seconds": round(len(mono) / rate, 1)})
        head = {"call": call, "rate": int(rate), "frames": int(len(mono)), "mime": "audio/wav",
                "bytes": 44 + 2 * len(mono)}

        def chunks():
            yield wav_header(len(mono), int(rate))
            raw = mono.tobytes()
            for i in range(0, len(raw), WAV_CHUNK):
                yield raw[i:i + WAV_CHUNK]

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

    def masked(self, actor: str, calls: list[int], purpose: str) -> dict:
        """{call id: masked numbers} for the calls listed that have numbers (role numbers.masked)."""
        if not isinstance(calls, list) or len(calls) > MAX_MASKED or not all(
                isinstance(c, int) and not isinstance(c, bool) for c in calls):
            raise Refused(f"통화 번호 목록이 잘못되었습니다 · calls must be a list of at most {MAX_MASKED} ids", "bad_args")
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
                "idle_minutes": self.cfg.keeper.idle_minutes}


class KeeperService:
    """The keeper's socket: one verb per Keeper method; a sweeper thread forgets idle grants."""

    def __init__(self, keeper: Keeper, *, path=None) -> None:
        self.keeper = keeper
        cfg = keeper.cfg
        self.path = path or run_dir(keeper.data, cfg) / SOCKET
        self.server = Server(self.path, {
            "status": lambda r: keeper.status(),
            "pin_check": lambda r: keeper.pin_check(r.actor, _str(r, "pin")),
            "unlock_for": self._unlock_for,
            "open_call": self._open_call,
            "numbers": lambda r: keeper.numbers(r.actor, _str(r, "grant"), _int(r, "call")),
            "masked": lambda r: keeper.masked(r.actor, r.args.get("calls"), r.purpose),
            "end_grant": lambda r: keeper.end_grant(r.actor, _str(r, "grant")),
        }, name="keeper", allow_uids=allowed_uids(cfg.ipc.keeper_allow))
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep, name="keeper-sweep", daemon=True)

    def _unlock_for(self, r: Request) -> dict:
        calls = r.args.get("calls")
        if not isinstance(calls, list):
            raise Refused("calls는 목록입니다 · calls must be a list", "bad_args")
        ttl = r.args.get("ttl_s")
        if not isinstance(ttl, (int, float)) or isinstance(ttl, bool):
            raise Refused("ttl_s는 초 단위 숫자입니다 · ttl_s must be a number of seconds", "bad_args")
        return self.keeper.unlock_for(r.actor, _str(r, "pin"), grantee=_str(r, "grantee"), purpose=r.purpose,
                                      calls=calls, ttl_s=float(ttl))

    def _open_call(self, r: Request) -> Stream:
        head, chunks = self.keeper.open_call(r.actor, _str(r, "grant"), _int(r, "call"))
        return Stream("bytes", head, chunks, trailer=lambda: {"call": head["call"], "bytes": head["bytes"]})

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

    def pin_check(self, actor: str, pin: str) -> dict:
        return self.client.call("pin_check", actor=actor, purpose="PIN check", pin=pin)

    def unlock_for(self, actor: str, pin: str, *, grantee: str, purpose: str, calls: list[int], ttl_s: float) -> dict:
        return self.client.call("unlock_for", actor=actor, purpose=purpose, pin=pin, grantee=grantee,
                                calls=list(calls), ttl_s=ttl_s)

    def open_call(self, actor: str, token: str, call: int):
        return self.client.stream_bytes("open_call", actor=actor, purpose="listening", grant=token, call=call)

    def numbers(self, actor: str, token: str, call: int) -> dict:
        return self.client.call("numbers", actor=actor, purpose="numbers", grant=token, call=call)

    def masked(self, actor: str, calls: list[int], purpose: str) -> dict:
        return self.client.call("masked", actor=actor, purpose=purpose, calls=list(calls))

    def end_grant(self, actor: str, token: str) -> dict:
        return self.client.call("end_grant", actor=actor, purpose="end grant", grant=token)

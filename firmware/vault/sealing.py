"""Sealing the records identity: a recovery passphrase (stock-age scrypt file) and approver PIN slots.

The records identity (the X25519 secret that opens the key epochs, see ``epochs.py``) is
never stored in clear. Two sealed copies live under ``DATA/keys/``:

- ``identity.recovery.age``: an age v1 file with a single scrypt recipient stanza
  (age-encryption.org/v1 spec, "scrypt recipient type"), so the stock ``age -d`` opens it
  with the recovery passphrase generated at set-up (>= 80 bits, shown once, kept in the
  office safe).
- ``pin/<slot>.slot``: the identity under a key derived from the approver's PIN *and*
  the device-bound secret: ``HKDF(scrypt(PIN, salt) || device.derive("nokbox/v1/pin"))``.
  Without the device secret (which is not on the SSD) the slot gives no PIN oracle.

Wrong PINs are counted in ``pin/<slot>.state``: a JSON record MACed with a key derived
from the device secret, its sequence number mirrored in the index (``pin_state``), so
editing it, deleting it or restoring an older copy of it alone is detected and treated as
a lockout. Five wrong PINs lock the slot persistently; the recovery passphrase unlocks it.
Every attempt, lockout and unlock is appended to the audit log.

All primitives come from ``cryptography`` (scrypt, HKDF-SHA256, HMAC-SHA256,
ChaCha20-Poly1305, X25519); the age framing reuses ``firmware.age``'s helpers.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .age import _X25519_INFO, CHUNK, VERSION_LINE, _b64, _hkdf, _nonce, parse_identity, recipient_of
from ..audit import AuditLog
from ..config import shared_mode
from ..errors import VaultError
from ..hal.devicekey import DeviceSecret

log = logging.getLogger(__name__)

RECOVERY_FILE = "identity.recovery.age"
PIN_DIR = "pin"
DEFAULT_APPROVER = "approver"
MAX_PIN_TRIES = 5
RECOVERY_LOG_N = 18      # the stock age default work factor (~1 s on a desktop, a few s on a Pi 4)
PIN_LOG_N = 16           # 64 MiB, ~0.2 s a try on a desktop core, ~1 s on a Pi 4 (benchmarks/vault_keys.py)
MIN_PASSPHRASE_CHARS = 16
_PASS_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: 5 bits a character
_PASS_GROUPS = 4
_PASS_GROUP_LEN = 5      # 20 characters = 100 bits
_SCRYPT_LABEL = b"age-encryption.org/v1/scrypt"
_PIN_INFO = "nokbox/v1/pin"
_STATE_INFO = "nokbox/v1/pin-state"


# -- errors ------------------------------------------------------------------------------
class UnlockError(VaultError):
    """An unlock failed; the message says why and what to do."""


class WrongPassphrase(UnlockError):
    """The recovery passphrase does not open the sealed identity."""


class WrongPin(UnlockError):
    """The PIN is wrong; ``tries_left`` more are allowed before the lockout."""

    def __init__(self, msg: str, tries_left: int) -> None:
        super().__init__(msg)
        self.tries_left = tries_left


class PinLockedOut(UnlockError):
    """Five wrong PINs (or tampering with the counter): only the recovery passphrase unlocks."""


class PinRateLimited(UnlockError):
    """Too soon after a wrong PIN; try again after ``retry_after`` seconds (not counted)."""

    def __init__(self, msg: str, retry_after: float) -> None:
        super().__init__(msg)
        self.retry_after = retry_after


class NoPinSlot(UnlockError):
    """No PIN was set for that approver."""


class DeviceMismatch(UnlockError):
    """The PIN slot was sealed with another device secret (SSD moved to another box?)."""


# -- secrets ----------------------------------------------------------------------------
def generate_passphrase() -> str:
    """A 100-bit recovery passphrase: four groups of five Crockford base32 characters."""
    groups = ["".join(secrets.choice(_PASS_ALPHABET) for _ in range(_PASS_GROUP_LEN)) for _ in range(_PASS_GROUPS)]
    return "-".join(groups)


def check_passphrase(passphrase: str) -> str:
    """The passphrase as used (surrounding whitespace removed); refuse short ones."""
    p = passphrase.strip()
    if len(p) < MIN_PASSPHRASE_CHARS:
        raise VaultError(f"the recovery passphrase must have at least {MIN_PASSPHRASE_CHARS} characters "
                         "(a generated one has 100 bits)")
    return p


def check_pin(pin: str) -> str:
    """Refuse PINs shorter than 6 characters or trivially guessable (one digit repeated, a run)."""
    p = pin.strip()
    if len(p) < 6:
        raise VaultError("a PIN needs at least 6 characters")
    if p.isdigit():
        steps = {(int(b) - int(a)) % 10 for a, b in zip(p, p[1:])}
        if steps in ({0}, {1}, {9}):
            raise VaultError("that PIN is too easy to guess (repeated digit or a run)")
    return p


MIN_PIN_DIGITS_WITHOUT_TPM = 8


@functools.lru_cache(maxsize=4)
def scrypt_guess_s(log_n: int = PIN_LOG_N) -> float:
    """Seconds one PIN guess costs an offline attacker on one core of this machine (measured once)."""
    t0 = time.perf_counter()
    _scrypt("00000000", bytes(16), log_n)
    return time.perf_counter() - t0


def human_duration(seconds: float) -> str:
    """'3.2일 · 3.2 days' and the like, for people."""
    for unit, ko, en in ((365 * 86400, "년", "years"), (86400, "일", "days"), (3600, "시간", "hours"), (60, "분", "minutes")):
        if seconds >= unit:
            n = seconds / unit
            return f"{n:,.1f}{ko} · {n:,.1f} {en}"
    return f"{seconds:.0f}초 · {seconds:.0f} s"


def offline_search_s(digits: int, log_n: int = PIN_LOG_N) -> float:
    """Expected time (half the space) for someone holding the whole box to find a PIN of ``digits`` digits."""
    return 10 ** digits / 2 * scrypt_guess_s(log_n)


def pin_strength_problem(pin: str, *, tpm: bool, allow_short: bool, log_n: int = PIN_LOG_N) -> str:
    """Why a new PIN is too short for a box without a TPM ('' when it is acceptable). With a TPM its
    lockout bounds the search; without one, only the PIN's length does."""
    p = pin.strip()
    if tpm or allow_short or len(p) >= MIN_PIN_DIGITS_WITHOUT_TPM:
        return ""
    n = len(p)
    return (f"이 장치에는 TPM이 없어 PIN은 {MIN_PIN_DIGITS_WITHOUT_TPM}자리 이상이어야 합니다: 장치를 통째로 가진 사람은 "
            f"{n}자리 PIN을 약 {human_duration(offline_search_s(n, log_n))} 안에 찾습니다 · without a TPM a PIN needs at "
            f"least {MIN_PIN_DIGITS_WITHOUT_TPM} digits: someone holding the whole box finds a {n}-digit PIN in about "
            f"that long on one core ({scrypt_guess_s(log_n):.3g} s a guess here); "
            f"{MIN_PIN_DIGITS_WITHOUT_TPM} digits take {human_duration(offline_search_s(MIN_PIN_DIGITS_WITHOUT_TPM, log_n))}"
            " (vault.allow_short_pin = true allows shorter PINs, audited)")


def _scrypt(secret: str, salt: bytes, log_n: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=1 << log_n, r=8, p=1).derive(secret.encode("utf-8"))


# -- a minimal age v1 container for small secrets ----------------------------------------
def _age_seal(plaintext: bytes, stanza: bytes, file_key: bytes) -> bytes:
    """An age v1 file around ``plaintext`` with one given recipient stanza."""
    header = VERSION_LINE + stanza + b"---"
    mac = hmac.new(_hkdf(file_key, b"", b"header"), header, hashlib.sha256).digest()
    nonce = os.urandom(16)
    aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
    chunks = [plaintext[i:i + CHUNK] for i in range(0, len(plaintext), CHUNK)] or [b""]
    body = b"".join(aead.encrypt(_nonce(i, i == len(chunks) - 1), c, None) for i, c in enumerate(chunks))
    return header + b" " + _b64(mac) + b"\n" + nonce + body


def _unb64(s: bytes) -> bytes:
    """Unpadded canonical base64, as the age header requires."""
    try:
        out = base64.b64decode(s + b"=" * (-len(s) % 4), validate=True)
    except ValueError:
        raise VaultError("age header: bad base64") from None
    if b"=" in s or _b64(out) != s:
        raise VaultError("age header: non-canonical base64")
    return out


def _age_parse(blob: bytes) -> tuple[list[tuple[list[bytes], bytes]], bytes, bytes, bytes]:
    """(stanzas [(args, body)], header bytes covered by the MAC, mac, payload)."""
    if not blob.startswith(VERSION_LINE):
        raise VaultError("not an age v1 file")
    pos = len(VERSION_LINE)
    stanzas = []
    while True:
        end = blob.find(b"\n", pos)
        if end < 0:
            raise VaultError("age header is truncated")
        line = blob[pos:end]
        if line.startswith(b"--- "):
            return stanzas, blob[:pos + 3], _unb64(line[4:]), blob[end + 1:]
        if not line.startswith(b"-> "):
            raise VaultError("age header: malformed stanza")
        args = line[3:].split(b" ")
        pos = end + 1
        body = b""
        while True:
            end = blob.find(b"\n", pos)
            if end < 0:
                raise VaultError("age header is truncated")
            chunk = blob[pos:end]
            pos = end + 1
            body += chunk
            if len(chunk) < 64:
                break
        stanzas.append((args, _unb64(body)))


def _age_open(blob: bytes, file_key: bytes, header: bytes, mac: bytes, payload: bytes) -> bytes:
    want = hmac.new(_hkdf(file_key, b"", b"header"), header, hashlib.sha256).digest()
    if not hmac.compare_digest(want, mac):
        raise VaultError("age header MAC does not match (file damaged or edited)")
    nonce, rest = payload[:16], payload[16:]
    aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
    out = bytearray()
    step = CHUNK + 16
    n = max(1, -(-len(rest) // step))
    try:
        for i in range(n):
            out += aead.decrypt(_nonce(i, i == n - 1), rest[i * step:(i + 1) * step], None)
    except InvalidTag:
        raise VaultError("age payload is damaged or truncated") from None
    return bytes(out)


def seal_with_passphrase(plaintext: bytes, passphrase: str, log_n: int = RECOVERY_LOG_N) -> bytes:
    """An age v1 file with one scrypt stanza: ``age -d`` asks for the passphrase and opens it."""
    file_key = os.urandom(16)
    salt = os.urandom(16)
    wrap = _scrypt(passphrase, _SCRYPT_LABEL + salt, log_n)
    body = ChaCha20Poly1305(wrap).encrypt(bytes(12), file_key, None)
    stanza = b"-> scrypt " + _b64(salt) + b" " + str(log_n).encode() + b"\n" + _b64(body) + b"\n"
    return _age_seal(plaintext, stanza, file_key)


def open_with_passphrase(blob: bytes, passphrase: str, max_log_n: int = 22) -> bytes:
    """Decrypt a scrypt-recipient age file (as stock age does, the stanza must be alone)."""
    stanzas, header, mac, payload = _age_parse(blob)
    if len(stanzas) != 1 or stanzas[0][0][0] != b"scrypt" or len(stanzas[0][0]) != 3:
        raise VaultError("not a passphrase-sealed age file")
    args, body = stanzas[0]
    salt = _unb64(args[1])
    if len(salt) != 16 or not args[2].isdigit() or args[2].startswith(b"0") or not 1 <= int(args[2]) <= max_log_n:
        raise VaultError("scrypt stanza parameters out of range")
    if len(body) != 32:
        raise VaultError("scrypt stanza body has the wrong length")
    wrap = _scrypt(passphrase, _SCRYPT_LABEL + salt, int(args[2]))
    try:
        file_key = ChaCha20Poly1305(wrap).decrypt(bytes(12), body, None)
    except InvalidTag:
        raise WrongPassphrase("wrong recovery passphrase") from None
    return _age_open(blob, file_key, header, mac, payload)


def open_with_identity(blob: bytes, identity: str) -> bytes:
    """Decrypt an age file addressed (among others) to an X25519 identity."""
    key = X25519PrivateKey.from_private_bytes(parse_identity(identity))
    ours = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    stanzas, header, mac, payload = _age_parse(blob)
    for args, body in stanzas:
        if args[0] != b"X25519" or len(args) != 2:
            continue
        share = _unb64(args[1])
        shared = key.exchange(X25519PublicKey.from_public_bytes(share))
        wrap = _hkdf(shared, share + ours, _X25519_INFO)
        if len(body) != 32:
            raise VaultError("X25519 stanza body has the wrong length")
        try:
            file_key = ChaCha20Poly1305(wrap).decrypt(bytes(12), body, None)
        except InvalidTag:
            continue
        return _age_open(blob, file_key, header, mac, payload)
    raise VaultError("no stanza of this age file is addressed to that identity")


# -- files ------------------------------------------------------------------------------
def write_private(path: Path, data: bytes, *, replace: bool = False) -> None:
    """Write a 0600 file durably: new files with O_EXCL, replacements through a renamed temp file."""
    path = Path(path)
    target = path.with_name(path.name + ".tmp") if replace else path
    if replace:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if replace:
        os.replace(target, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def identity_text(identity: str, recipient: str, what: str = "nokbox records identity") -> bytes:
    """An age identity file (what ``age -i`` reads)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"# {what}, sealed {stamp}\n# public key: {recipient}\n{identity}\n".encode()


def _identity_from(plain: bytes) -> str:
    for line in plain.decode("utf-8", "replace").splitlines():
        if line.startswith("AGE-SECRET-KEY-1"):
            parse_identity(line)
            return line.strip()
    raise VaultError("the sealed file holds no age identity")


def seal_recovery(data: Path, identity: str, passphrase: str, log_n: int = RECOVERY_LOG_N) -> Path:
    """Write ``keys/identity.recovery.age`` (refuses to replace an existing one)."""
    path = Path(data) / "keys" / RECOVERY_FILE
    blob = seal_with_passphrase(identity_text(identity, recipient_of(identity)), check_passphrase(passphrase), log_n)
    write_private(path, blob)
    return path


def _records_recipient(data: Path) -> str:
    return (Path(data) / "keys" / "recipient.txt").read_text().split()[0]


def open_recovery(data: Path, passphrase: str) -> str:
    """The records identity from the recovery file (no audit: see ``unlock_with_passphrase``)."""
    path = Path(data) / "keys" / RECOVERY_FILE
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise UnlockError(f"{path} is missing: this box has no recovery-sealed identity") from None
    identity = _identity_from(open_with_passphrase(blob, passphrase.strip()))
    if recipient_of(identity) != _records_recipient(data):
        raise VaultError("the recovery file does not match keys/recipient.txt (files swapped?)")
    return identity


# -- PIN slots --------------------------------------------------------------------------
def _slot_name(approver: str) -> str:
    if not approver or len(approver) > 64 or any(c in approver for c in "/\\\0\n"):
        raise VaultError("an approver name is 1-64 characters without slashes or newlines")
    return hashlib.sha256(("nokbox approver\0" + approver).encode()).hexdigest()[:16]


def _canon(obj: dict) -> bytes:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def _stretch(pin: str, kdf: dict) -> bytes:
    return _scrypt(pin, base64.b64decode(kdf["salt"]), int(kdf["log_n"]))


def _pin_key(pin: str, kdf: dict, approver: str, device: DeviceSecret, *, stretched: bytes | None = None,
             factor: bytes | None = None) -> bytes:
    """The slot key: scrypt(PIN) and the device secret, and, on a TPM box, the factor the TPM unseals
    only for the right PIN (so a weak TPM never makes a slot weaker than without one)."""
    stretched = stretched if stretched is not None else _stretch(pin, kdf)
    info = b"nokbox/v1/pin-slot\0" if factor is None else b"nokbox/v1/pin-slot+tpm\0"
    return HKDF(algorithm=SHA256(), length=32, salt=base64.b64decode(kdf["salt"]),
                info=info + approver.encode()).derive(stretched + device.derive(_PIN_INFO) + (factor or b""))


def _tpm_auth(stretched: bytes, approver: str) -> bytes:
    """The authorisation value of a slot's TPM factor (from scrypt(PIN), never the PIN itself)."""
    return HKDF(algorithm=SHA256(), length=32, salt=None,
                info=b"nokbox/v1/pin-tpm-auth\0" + approver.encode()).derive(stretched)


def _slot_tpm(device: DeviceSecret):
    return getattr(device, "tpm", None)


def seal_pin_slot(data: Path, identity: str, approver: str, pin: str, device: DeviceSecret,
                  log_n: int = PIN_LOG_N) -> Path:
    """Write (or replace) the approver's PIN slot and reset its counter."""
    pin = check_pin(pin)
    d = Path(data) / "keys" / PIN_DIR
    d.mkdir(mode=shared_mode(0o700), exist_ok=True)
    kdf = {"alg": "scrypt", "log_n": log_n, "r": 8, "p": 1, "salt": base64.b64encode(os.urandom(16)).decode()}
    head = {"format": "nokbox-pin-slot/1", "approver": approver, "recipient": recipient_of(identity),
            "kdf": kdf, "device": device.fingerprint()}
    stretched = _stretch(pin, kdf)
    factor = None
    tpm = _slot_tpm(device)
    if tpm is not None:  # a factor that only the TPM gives back, and only for this PIN (counted when wrong)
        factor = os.urandom(32)
        head["tpm"] = base64.b64encode(tpm.seal(factor, auth=_tpm_auth(stretched, approver), da=True)).decode()
    nonce = os.urandom(12)
    sealed = ChaCha20Poly1305(_pin_key(pin, kdf, approver, device, stretched=stretched, factor=factor)).encrypt(
        nonce, identity.encode(), _canon(head))
    slot = head | {"nonce": base64.b64encode(nonce).decode(), "sealed": base64.b64encode(sealed).decode()}
    path = d / (_slot_name(approver) + ".slot")
    write_private(path, _canon(slot) + b"\n", replace=True)
    return path


def slot_path(data: Path, approver: str) -> Path:
    return Path(data) / "keys" / PIN_DIR / (_slot_name(approver) + ".slot")


def pin_slots(data: Path) -> list[str]:
    """Approver names that have a PIN slot."""
    out = []
    for p in sorted((Path(data) / "keys" / PIN_DIR).glob("*.slot")):
        with contextlib.suppress(ValueError, KeyError, OSError):
            out.append(json.loads(p.read_text())["approver"])
    return out


@dataclass
class PinState:
    """The wrong-PIN counter of one slot."""

    approver: str
    failures: int = 0
    locked: bool = False
    reason: str = ""
    not_before: float = 0.0
    seq: int = 0

    def body(self) -> dict:
        return {"approver": self.approver, "failures": self.failures, "locked": self.locked,
                "reason": self.reason, "not_before": self.not_before, "seq": self.seq}


class PinGuard:
    """Counts, delays and locks PIN attempts of one data directory (one flock serialises attempts)."""

    def __init__(self, data: Path, device: DeviceSecret, backoff_s: float = 1.0) -> None:
        self.data = Path(data)
        self.dir = self.data / "keys" / PIN_DIR
        self.device = device
        self.backoff_s = backoff_s
        self.audit = AuditLog(self.data)

    # state file + its mirror in the index
    def _state_path(self, approver: str) -> Path:
        return self.dir / (_slot_name(approver) + ".state")

    def _mac(self, body: dict) -> str:
        return hmac.new(self.device.derive(_STATE_INFO), _canon(body), hashlib.sha256).hexdigest()

    def _db(self):
        from ..vaultdb import connect_vault

        return connect_vault(self.data)

    def _mirror_seq(self, approver: str) -> int:
        con = self._db()
        try:
            row = con.execute("SELECT seq FROM pin_state WHERE slot = ?", (_slot_name(approver),)).fetchone()
        finally:
            con.close()
        return int(row["seq"]) if row else 0

    def save(self, st: PinState) -> None:
        """File first, then the mirror: a crash between them leaves file >= mirror, which is accepted."""
        body = st.body()
        write_private(self._state_path(st.approver), _canon(body | {"mac": self._mac(body)}) + b"\n", replace=True)
        con = self._db()
        try:
            with con:
                con.execute("INSERT INTO pin_state (slot, approver, seq) VALUES (?, ?, ?) ON CONFLICT(slot)"
                            " DO UPDATE SET seq = excluded.seq, approver = excluded.approver",
                            (_slot_name(st.approver), st.approver, st.seq))
        finally:
            con.close()

    def load(self, approver: str) -> tuple[PinState, str]:
        """The verified state, or ('', tamper reason) folded into a locked state."""
        mirror = self._mirror_seq(approver)
        try:
            raw = json.loads(self._state_path(approver).read_text())
            mac = raw.pop("mac")
            st = PinState(**raw)
        except FileNotFoundError:
            return PinState(approver, seq=mirror), "the wrong-PIN counter file was deleted"
        except (ValueError, TypeError, KeyError):
            return PinState(approver, seq=mirror), "the wrong-PIN counter file is unreadable"
        if not hmac.compare_digest(mac, self._mac(st.body())) or st.approver != approver:
            return PinState(approver, seq=max(mirror, st.seq)), "the wrong-PIN counter file was edited"
        if st.seq < mirror:
            return PinState(approver, seq=mirror), "the wrong-PIN counter file was replaced by an older copy"
        return st, ""

    @contextlib.contextmanager
    def locked_slot(self):
        self.dir.mkdir(mode=shared_mode(0o700), parents=True, exist_ok=True)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def reset(self, approver: str, *, seq_floor: int | None = None) -> PinState:
        st, _ = self.load(approver)
        new = PinState(approver, seq=max(st.seq, seq_floor or 0) + 1)
        self.save(new)
        return new

    def attempt(self, approver: str, pin: str, now: float | None = None) -> str:
        """Try a PIN; the identity on success, else a clear UnlockError. Every outcome is audited."""
        now = time.time() if now is None else now
        obj = f"pin-slot:{approver}"
        with self.locked_slot():
            slot_path = self.dir / (_slot_name(approver) + ".slot")
            try:
                slot = json.loads(slot_path.read_text())
            except FileNotFoundError:
                self.audit.append("keys.unlock", actor=approver, role="approver", obj=obj, outcome="denied",
                                  reason="no PIN slot for this approver", detail={"method": "pin"})
                raise NoPinSlot(f"no PIN is set for approver {approver!r} (nokbox keys add-pin)") from None
            if slot.get("device") != self.device.fingerprint():
                self.audit.append("keys.unlock", actor=approver, role="approver", obj=obj, outcome="denied",
                                  reason="PIN slot sealed with another device secret", detail={"method": "pin"})
                raise DeviceMismatch("this PIN slot was sealed on another box (device secret differs); "
                                     "use the recovery passphrase")
            st, tamper = self.load(approver)
            if tamper:
                st.locked, st.reason, st.seq = True, tamper, st.seq + 1
                self.save(st)
                log.error("PIN slot %s locked: %s", obj, tamper)
                self.audit.append("keys.pin.lockout", actor="system", obj=obj, outcome="locked", reason=tamper,
                                  detail={"seq": st.seq})
            if st.locked:
                self.audit.append("keys.unlock", actor=approver, role="approver", obj=obj, outcome="denied",
                                  reason=f"locked out: {st.reason}", detail={"method": "pin", "seq": st.seq})
                raise PinLockedOut(f"the PIN of {approver!r} is locked ({st.reason}); "
                                   "unlock it with the recovery passphrase: nokbox keys unlock")
            if now < st.not_before:
                wait = st.not_before - now
                self.audit.append("keys.unlock", actor=approver, role="approver", obj=obj, outcome="denied",
                                  reason=f"too soon after a wrong PIN; retry in {wait:.0f} s",
                                  detail={"method": "pin", "seq": st.seq})
                raise PinRateLimited(f"too soon after a wrong PIN: wait {wait:.0f} s (this try was not counted)",
                                     wait)
            head = {k: slot[k] for k in ("format", "approver", "recipient", "kdf", "device", "tpm") if k in slot}
            stretched = _stretch(pin.strip(), slot["kdf"])
            factor, tpm_said = None, ""
            if "tpm" in slot:
                factor, tpm_said = self._tpm_factor(slot, stretched, approver, obj, st)
            try:
                if "tpm" in slot and factor is None:
                    raise InvalidTag
                identity = ChaCha20Poly1305(_pin_key(pin.strip(), slot["kdf"], approver, self.device,
                                                     stretched=stretched, factor=factor)).decrypt(
                    base64.b64decode(slot["nonce"]), base64.b64decode(slot["sealed"]), _canon(head)).decode()
            except InvalidTag:
                st.failures += 1
                st.seq += 1
                st.not_before = now + self.backoff_s * (2 ** (st.failures - 1))
                left = MAX_PIN_TRIES - st.failures
                if left <= 0:
                    st.locked, st.reason = True, f"{MAX_PIN_TRIES} wrong PINs"
                self.save(st)
                self.audit.append("keys.unlock", actor=approver, role="approver", obj=obj, outcome="denied",
                                  reason=f"wrong PIN ({st.failures} of {MAX_PIN_TRIES}){tpm_said}",
                                  detail={"method": "pin", "seq": st.seq})
                if st.locked:
                    log.error("PIN slot %s locked after %d wrong PINs", obj, MAX_PIN_TRIES)
                    self.audit.append("keys.pin.lockout", actor="system", obj=obj, outcome="locked",
                                      reason=st.reason, detail={"seq": st.seq})
                    raise PinLockedOut(f"wrong PIN; the PIN of {approver!r} is now locked after {MAX_PIN_TRIES} "
                                       "wrong tries; unlock it with the recovery passphrase: nokbox keys unlock")
                raise WrongPin(f"wrong PIN ({left} tries left before the lockout{tpm_said})", left) from None
            if st.failures or st.not_before:
                st.failures, st.not_before, st.seq = 0, 0.0, st.seq + 1
                self.save(st)
            self.audit.append("keys.unlock", actor=approver, role="approver", obj=obj, outcome="ok",
                              detail={"method": "pin" if factor is None else "pin+tpm", "seq": st.seq})
            if "tpm" not in slot and _slot_tpm(self.device) is not None:
                # a slot from before the box had its TPM: the right PIN is here, so it gets its TPM factor now
                seal_pin_slot(self.data, identity, approver, pin, self.device, int(slot["kdf"]["log_n"]))
                self.audit.append("keys.pin.tpm-factor", actor=approver, role="approver", obj=obj,
                                  reason="PIN slot re-sealed with a TPM factor at its first unlock on the TPM")
            return identity

    def _tpm_factor(self, slot: dict, stretched: bytes, approver: str, obj: str, st: "PinState"):
        """(factor, '') when the TPM gives it back; (None, why) for a wrong PIN the TPM counted.
        Raises PinRateLimited while the TPM is in its lockout (that try is counted by nobody)."""
        from ..hal.tpm import TpmAuthFailed, TpmLockedOut

        tpm = _slot_tpm(self.device)
        if tpm is None:
            raise DeviceMismatch("this PIN slot needs the box's TPM (vault.device_secret = 'tpm')")
        try:
            return tpm.unseal(base64.b64decode(slot["tpm"]), auth=_tpm_auth(stretched, approver)), ""
        except TpmAuthFailed as exc:
            return None, f"; the TPM counted it, {exc.tries_left} TPM tries left"
        except TpmLockedOut as exc:
            self.audit.append("keys.unlock", actor=approver, role="approver", obj=obj, outcome="denied",
                              reason=f"TPM dictionary-attack lockout; retry in {exc.retry_after:.0f} s",
                              detail={"method": "pin+tpm", "seq": st.seq})
            raise PinRateLimited(f"the TPM is locked against PIN guessing: one more try in about "
                                 f"{exc.retry_after:.0f} s, or lift it with the recovery passphrase "
                                 "(nokbox keys unlock); this try was not counted", exc.retry_after) from None

    def clear(self, approver: str, actor: str, reason: str) -> None:
        """Lift a lockout (the caller has proven the recovery passphrase)."""
        with self.locked_slot():
            st = self.reset(approver)
        self.audit.append("keys.pin.unlock-lockout", actor=actor, role="operator", obj=f"pin-slot:{approver}",
                          reason=reason or "recovery passphrase given", detail={"seq": st.seq})

"""The audit log: append-only, hash-chained, forward-securely sealed JSON lines under DATA/audit/.

Every security-relevant event (sign-in, search, playback, export, approval, key operation,
destruction, configuration, user change) is one entry. Entries never carry audio, and a
string that looks like a Korean telephone number is masked before it is stored.

Integrity (see docs/audit.md):
- each entry stores the hash of the previous one (a chain: an edit, deletion, insertion or
  reordering breaks it);
- each entry carries a MAC made with the key of the current *epoch*; an epoch ends with a
  seal entry after at most ``every`` entries (counted, never timed), after which the key
  evolves one way (HKDF) and the old key is erased, so whoever holds the box today cannot
  forge or re-seal yesterday's entries;
- the initial key (epoch 0) is the auditor's verification key, shown once at set-up and
  kept off the box; ``verify(key=...)`` re-derives every epoch key from it;
- signed checkpoints (size + head hash, Ed25519) go into daily reviews, export manifests and
  the remote syslog, so a truncation is caught against a copy the box no longer controls.

Several processes (the daemon, CLI commands) may append: an exclusive ``flock`` on
``audit/.lock`` serialises them; ``self._lock`` serialises threads within one process.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import datetime as dt
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import secrets
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import bech32
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from .config import shared_mode
from .errors import NokboxError
from .hal.clock import Clock

log = logging.getLogger(__name__)

GENESIS = "0" * 64
SEAL = "audit.seal"
RETENTION = "audit.retention"
CHECKPOINT = "audit.checkpoint"
KEY_PREFIX = "nokbox-audit-v2"  # the verification key's text, with a bech32 checksum (docs/audit.md)
KEY_PREFIX_V1 = "nokbox-audit-v1"  # keys shown before the checksum (no typo detection); still accepted
_KEY_CHARS = 61  # 55 data characters (K0 and N, 34 bytes) and 6 check characters
_KEY_GROUP = 5
DEFAULT_EVERY = 100
MAX_EVERY = 10_000
SEGMENT_MAX_BYTES = 8 * 1024 * 1024
_FIELDS = ("seq", "time_utc", "mono", "boot", "action", "actor", "role", "object", "outcome", "reason",
           "source", "detail", "prev")
# A Korean telephone number written whole (02-123-4567, 010 1234 5678, 0311234567 …).
_PHONE = re.compile(r"(?<![0-9A-Za-z])(0[1-9][0-9]{0,2})[-. )]{0,2}([0-9]{3,4})[-. ]?([0-9]{4})(?![0-9A-Za-z])")


class AuditError(NokboxError, ValueError):
    """The audit log is damaged or an entry is malformed; the message names the entry."""

    outcome = "forged"  # what the auditor is told: the log (not the key) is wrong


class AuditKeyError(AuditError):
    """The verification key given cannot check this log (the log itself is not blamed)."""


class AuditKeyMistyped(AuditKeyError):
    """The text is not a verification key: wrong prefix, a character never used, one missing, or a
    checksum that does not match (a typo)."""

    outcome = "mistyped"


class AuditWrongKey(AuditKeyError):
    """A well-formed verification key that is not this log's (another box's, or an old one)."""

    outcome = "wrong_key"


# -- primitives (from the cryptography package; nothing hand-made) -------------------------
def _entry_hash(entry: dict) -> str:
    body = {k: entry[k] for k in _FIELDS}
    canon = json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def _mac(key: bytes, entry_hash: str) -> str:
    h = crypto_hmac.HMAC(key, hashes.SHA256())
    h.update(b"nokbox-audit-entry\0" + entry_hash.encode("ascii"))
    return h.finalize().hex()


def _mac_ok(key: bytes, entry_hash: str, mac: str) -> bool:
    h = crypto_hmac.HMAC(key, hashes.SHA256())
    h.update(b"nokbox-audit-entry\0" + entry_hash.encode("ascii"))
    try:
        h.verify(bytes.fromhex(mac))
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def evolve_key(key: bytes) -> bytes:
    """The next epoch's key: one-way (HKDF-Expand with SHA-256)."""
    return HKDFExpand(algorithm=hashes.SHA256(), length=32, info=b"nokbox audit: next epoch key").derive(key)


def epoch_key(key0: bytes, epoch: int) -> bytes:
    k = key0
    for _ in range(epoch):
        k = evolve_key(k)
    return k


def key_id(key0: bytes) -> str:
    """The key's identifier: a hash of the epoch-0 key (never the key), kept in the sealing state and
    in every seal so that verify can say "not this log's key" before any MAC is checked."""
    return hashlib.sha256(b"nokbox audit key id\0" + key0).hexdigest()[:16]


def format_verification_key(key0: bytes, every: int) -> str:
    """``nokbox-audit-v2-`` and K0 ‖ N (2 bytes) in bech32 characters with its 6-character checksum,
    in groups of five to read aloud: a typo of up to four characters is always caught."""
    data = bech32.convertbits(key0 + int(every).to_bytes(2, "big"), 8, 5, True)
    text = "".join(bech32.CHARSET[d] for d in data + bech32.bech32_create_checksum(KEY_PREFIX, data))
    groups = [text[i:i + _KEY_GROUP] for i in range(0, len(text) - 6, _KEY_GROUP)] + [text[-6:]]
    return f"{KEY_PREFIX}-" + "-".join(groups)


def _mistyped(why: str) -> AuditKeyMistyped:
    return AuditKeyMistyped(f"검증 키 오타 · the verification key is mistyped: {why}")


def parse_verification_key(text: str) -> tuple[bytes, int]:
    """(epoch-0 key, seal interval) from the text shown at set-up (v2; v1 as shown before the checksum).

    Raises AuditKeyMistyped naming what is wrong; spaces, dashes and letter case do not matter."""
    t = "".join(str(text).split()).lower()
    if t.startswith(KEY_PREFIX_V1 + "-"):
        return _parse_v1(t)
    if not t.startswith(KEY_PREFIX + "-"):
        raise _mistyped(f"it does not start with {KEY_PREFIX}-")
    body = t[len(KEY_PREFIX) + 1:].replace("-", "")
    for n, c in enumerate(body):
        if c not in bech32.CHARSET:
            raise _mistyped(f"group {n // _KEY_GROUP + 1}, character {n % _KEY_GROUP + 1}: {c!r} is never used "
                            "in a key (b, i, o and 1 are left out; 0 and l are used)")
    if len(body) != _KEY_CHARS:
        raise _mistyped(f"{len(body)} characters after {KEY_PREFIX}- where {_KEY_CHARS} belong "
                        "(one left out or typed twice)")
    data = [bech32.CHARSET.find(c) for c in body]
    if not bech32.bech32_verify_checksum(KEY_PREFIX, data):
        raise _mistyped("its check characters do not match (a character was typed wrong or two swapped); "
                        "compare it group by group with the printed sheet")
    raw = bytes(bech32.convertbits(data[:-6], 5, 8, False) or b"")
    every = int.from_bytes(raw[32:34], "big")
    if len(raw) != 34 or not 1 <= every <= MAX_EVERY:
        raise _mistyped("it holds no valid seal interval")
    return raw[:32], every


def _parse_v1(t: str) -> tuple[bytes, int]:
    """The first format (no checksum): only its length and alphabet can catch a typo."""
    every_s, _, b32 = t[len(KEY_PREFIX_V1) + 1:].partition("-")
    try:
        every = int(every_s)
        raw = b32.replace("-", "").upper()
        key0 = base64.b32decode(raw + "=" * (-len(raw) % 8))
    except (ValueError, base64.binascii.Error):
        raise _mistyped("not base32 after the seal interval") from None
    if len(key0) != 32 or not 1 <= every <= MAX_EVERY:
        raise _mistyped("wrong length or seal interval")
    return key0, every


def _utc(ts: float) -> str:
    d = dt.datetime.fromtimestamp(ts, dt.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


def parse_utc(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


_BOOT = _boot_id()


def mask_number(text: str) -> str:
    """Mask the middle of every telephone number in ``text`` (010-****-5678)."""
    return _PHONE.sub(lambda m: f"{m.group(1)}-{'*' * len(m.group(2))}-{m.group(3)}", text)


def _clean(value, where: str):
    """Reject audio; mask telephone numbers; keep JSON-able values only."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise AuditError(f"{where}: binary data (audio?) may not enter the audit log")
    if isinstance(value, str):
        return mask_number(value)
    if isinstance(value, dict):
        return {str(k): _clean(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v, where) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return mask_number(str(value))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _share_new(fd: int) -> None:
    """A file this process just created (empty, its own) gets ``shared_mode`` whatever the umask."""
    st = os.fstat(fd)
    if st.st_size == 0 and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != shared_mode(0o600):
        os.fchmod(fd, shared_mode(0o600))


def _write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, shared_mode(mode))  # whatever the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _shred(path: Path) -> None:
    """Overwrite a small secret file in place, then unlink it (best effort on flash)."""
    try:
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.write(b"\0" * size)
            f.flush()
            os.fsync(f.fileno())
        path.unlink()
    except FileNotFoundError:
        pass


# -- reports -------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A signed statement of the log's size and head hash at one moment."""

    size: int
    head: str
    epoch: int
    time_utc: str
    signer: str  # short fingerprint of the box's checkpoint key
    sig: str = ""

    def body(self) -> str:
        return (f"NOKBOX-CHECKPOINT v1 size={self.size} head={self.head} epoch={self.epoch} "
                f"time={self.time_utc} signer={self.signer}")

    def line(self) -> str:
        return f"{self.body()} sig={self.sig}"

    @classmethod
    def parse(cls, text: str) -> "Checkpoint":
        m = re.search(r"NOKBOX-CHECKPOINT v1 size=(\d+) head=([0-9a-f]{64}) epoch=(\d+) time=(\S+) "
                      r"signer=([0-9a-f]+) sig=([A-Za-z0-9_\-=]+)", text)
        if not m:
            raise AuditError("not a nokbox checkpoint line (NOKBOX-CHECKPOINT v1 size=… sig=…)")
        return cls(int(m.group(1)), m.group(2), int(m.group(3)), m.group(4), m.group(5), m.group(6))


@dataclass
class VerifyReport:
    """What ``verify_report`` proved."""

    entries: int = 0
    first_seq: int = 1
    last_seq: int = 0
    head: str = GENESIS
    epochs_sealed: int = 0
    sealed_upto: int = 0
    open_tail: int = 0
    macs_checked: bool = False
    checkpoints_checked: int = 0
    key_id: str | None = None  # of the verification key given, else the one the log names
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"audit log intact: entries {self.first_seq}..{self.last_seq} ({self.entries})",
                 f"{self.epochs_sealed} sealed epoch(s) up to entry {self.sealed_upto}"]
        parts.append((f"seals verified with the verification key (key id {self.key_id})" if self.key_id
                      else "seals verified with the verification key") if self.macs_checked
                     else "seal MACs NOT checked (give --key to prove no entry was forged)")
        if self.open_tail:
            parts.append(f"open tail: entries {self.sealed_upto + 1}..{self.last_seq} not yet sealed "
                         f"({self.open_tail}; root on the box could still change or drop them)")
        if self.checkpoints_checked:
            parts.append(f"{self.checkpoints_checked} checkpoint(s) matched")
        return "; ".join(parts)


# -- the log -------------------------------------------------------------------------------
class AuditLog:
    """Append to, read, seal, rotate, prune and verify the audit trail of one data directory."""

    def __init__(self, data_dir: Path, *, clock: Clock | None = None, every: int = DEFAULT_EVERY,
                 on_seal: Callable[[Checkpoint], None] | None = None) -> None:
        self.dir = Path(data_dir) / "audit"
        self.path = self.dir / "audit.jsonl"  # the open segment
        self.state_path = self.dir / "seal-state.json"
        self.once_path = self.dir / "verification-key.once"
        self.anchor_path = self.dir / "anchor.json"
        self.sign_path = self.dir / "checkpoint-signing.key"
        self.pub_path = self.dir / "checkpoint-signing.pub"
        self.clock = clock or Clock()
        self.every = max(1, min(int(every), MAX_EVERY))  # used only when the sealing state is created
        self.on_seal = on_seal
        self._lock = threading.Lock()  # guards appends and seals from threads of this process
        self._modes_checked = False

    def _share_own_files(self) -> None:
        """Once per log: the folder and the files this user owns get ``shared_mode`` (the appliance's
        three services append to one trail; a file one of them made before stays theirs to widen)."""
        me = os.geteuid()
        for p in [self.dir, *self.dir.iterdir()]:
            try:
                if p.stat().st_uid == me:
                    os.chmod(p, shared_mode(0o700 if p.is_dir() else 0o600))
            except (FileNotFoundError, PermissionError):
                pass
        self._modes_checked = True

    # -- locking and state ----------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self):
        """This process's thread lock, then the cross-process flock on audit/.lock."""
        with self._lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            if not self._modes_checked:
                self._share_own_files()
            fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, shared_mode(0o600))
            _share_new(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the flock

    def _load_state(self) -> dict | None:
        try:
            st = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            raise AuditError(f"{self.state_path}: sealing state is unreadable") from None
        return st

    def _create_state(self) -> dict:
        key0 = secrets.token_bytes(32)
        # format 2: the key's identifier (a hash of K0, not K0) tells a wrong verification key apart from
        # a forged log; a format-1 state (a box set up before) has none and is checked without it
        st = {"format": 2, "epoch": 0, "key": key0.hex(), "every": self.every, "sealed_seq": 0,
              "key_id": key_id(key0)}
        # the verification key waits here until the first-run set-up shows it once and erases it
        _write_atomic(self.once_path, (format_verification_key(key0, self.every) + "\n").encode())
        sk = Ed25519PrivateKey.generate()
        _write_atomic(self.sign_path, sk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
        _write_atomic(self.pub_path, sk.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        self._save_state(st)
        log.info("audit sealing initialised: seal every %d entries", self.every)
        return st

    def _save_state(self, st: dict) -> None:
        """Replace the state and erase the old key's bytes (link, replace, shred the old inode)."""
        old = self.state_path.with_name(self.state_path.name + ".old")
        if self.state_path.exists():
            try:
                old.unlink()
            except FileNotFoundError:
                pass
            os.link(self.state_path, old)
        _write_atomic(self.state_path, json.dumps(st).encode())
        _shred(old)

    def _state(self) -> dict:
        return self._load_state() or self._create_state()

    def take_verification_key(self) -> str | None:
        """The auditor's verification key, once: it is erased from the box when returned."""
        with self._locked():
            self._state()
            try:
                text = self.once_path.read_text().strip()
            except FileNotFoundError:
                return None
            _shred(self.once_path)
            return text

    def verification_key_pending(self) -> bool:
        return self.once_path.exists()

    # -- files ----------------------------------------------------------------------------
    def segments(self) -> list[Path]:
        """Every segment in order: rotated ones (named by first seq), then the open one."""
        rotated = sorted(self.dir.glob("audit-*.jsonl"))
        return rotated + ([self.path] if self.path.exists() else [])

    @staticmethod
    def _read_lines(path: Path) -> Iterator[tuple[int, dict]]:
        try:
            f = open(path, encoding="utf-8")
        except FileNotFoundError:
            return
        with f:
            for n, line in enumerate(f, 1):
                if not line.endswith("\n"):
                    raise AuditError(f"{path.name} line {n}: entry cut short (file truncated mid-entry)")
                try:
                    e = json.loads(line)
                except ValueError:
                    raise AuditError(f"{path.name} line {n}: entry is not JSON") from None
                if not isinstance(e, dict):
                    raise AuditError(f"{path.name} line {n}: entry is not an object")
                yield n, e

    def entries(self) -> Iterator[dict]:
        """Every entry in order across all segments (no verification)."""
        anchor = self._anchor()
        for seg in self.segments():
            for _, e in self._read_lines(seg):
                if isinstance(e.get("seq"), int) and e["seq"] < anchor["first_seq"]:
                    continue  # left behind by an interrupted retention run
                yield e

    def _anchor(self) -> dict:
        try:
            return json.loads(self.anchor_path.read_text())
        except FileNotFoundError:
            return {"first_seq": 1, "prev": GENESIS, "epoch": 0}

    @staticmethod
    def _last_line(path: Path) -> dict | None:
        try:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                if size == 0:
                    return None
                back = min(size, 262144)
                f.seek(size - back)
                tail = f.read(back)
        except FileNotFoundError:
            return None
        try:
            return json.loads(tail.rstrip(b"\n").split(b"\n")[-1])
        except ValueError:
            raise AuditError(f"{path.name}: last audit entry is unreadable; run 'nokbox audit verify'") from None

    def _last(self) -> dict | None:
        for seg in reversed(self.segments()):
            e = self._last_line(seg)
            if e is not None:
                return e
        return None

    # -- writing --------------------------------------------------------------------------
    def append(self, action: str, *, actor: str = "system", role: str = "system", obj: str = "",
               outcome: str = "ok", reason: str = "", source: str = "local",
               detail: dict | None = None) -> dict:
        """Write one entry durably (fsync) and return it; seals when the epoch is full."""
        if not action:
            raise AuditError("audit entry without an action")
        fields = {"action": _clean(action, "action"), "actor": _clean(actor, "actor"), "role": _clean(role, "role"),
                  "object": _clean(obj, "object"), "outcome": _clean(outcome, "outcome"),
                  "reason": _clean(reason, "reason"), "source": _clean(source, "source"),
                  "detail": _clean(detail or {}, "detail")}
        sealed = None
        with self._locked():
            st, last = self._prepare()
            entry = self._write(st, last, fields)
            if entry["seq"] - st["sealed_seq"] >= st["every"]:
                sealed = self._seal(st, entry, "interval")
        self._notify(sealed)
        return entry

    def _prepare(self) -> tuple[dict, dict | None]:
        """Under the lock: the sealing state (repaired after a crash) and the last entry; rotate."""
        st = self._state()
        last = self._last()
        if last and last.get("action") == SEAL and last.get("detail", {}).get("epoch") == st["epoch"]:
            # a crash came between writing a seal and evolving the key: finish the evolution
            self._evolve(st, last["seq"])
        if last and self.path.exists() and self._should_rotate():
            if last.get("action") != SEAL:
                last = self._seal(st, last, "rotate")
            self.path.rename(self.dir / f"audit-{self._first_seq_of(self.path):012d}.jsonl")
            _fsync_dir(self.dir)
        return st, last

    def _should_rotate(self) -> bool:
        size = self.path.stat().st_size
        if size == 0:
            return False
        if size >= SEGMENT_MAX_BYTES:
            return True
        with open(self.path, encoding="utf-8") as f:
            first = json.loads(f.readline())
        now = _utc(self.clock.wall())
        return first["time_utc"][:7] != now[:7]  # a new month (UTC) starts a new segment

    @staticmethod
    def _first_seq_of(path: Path) -> int:
        with open(path, encoding="utf-8") as f:
            return int(json.loads(f.readline())["seq"])

    def _write(self, st: dict, last: dict | None, fields: dict) -> dict:
        if last is None:
            anchor = self._anchor()
            seq, prev = anchor["first_seq"] - 1, anchor["prev"]
        else:
            seq, prev = int(last["seq"]), str(last["hash"])
        entry = {"seq": seq + 1, "time_utc": _utc(self.clock.wall()), "mono": round(self.clock.monotonic(), 6),
                 "boot": _BOOT, **fields, "prev": prev}
        entry["hash"] = _entry_hash(entry)
        entry["mac"] = _mac(bytes.fromhex(st["key"]), entry["hash"])
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, shared_mode(0o600))
        try:
            _share_new(fd)
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        return entry

    def _seal(self, st: dict, last: dict, reason: str) -> dict:
        """Close the epoch: a seal entry MACed with the epoch key, then evolve the key."""
        seal = self._write(st, last, {
            "action": SEAL, "actor": "system", "role": "system", "object": f"epoch {st['epoch']}",
            "outcome": "ok", "reason": reason, "source": "local",
            "detail": {"epoch": st["epoch"], "first": st["sealed_seq"] + 1, "last": last["seq"],
                       "head": last["hash"], **({"key_id": st["key_id"]} if st.get("key_id") else {})}})
        self._evolve(st, seal["seq"])
        return seal

    def _evolve(self, st: dict, seal_seq: int) -> None:
        st["key"] = evolve_key(bytes.fromhex(st["key"])).hex()
        st["epoch"] += 1
        st["sealed_seq"] = seal_seq
        self._save_state(st)

    def seal(self, reason: str = "requested") -> dict | None:
        """Seal the open tail now (shutdown, checkpoint, rotation); None when nothing is open."""
        with self._locked():
            st, last = self._prepare()
            if last is None or last.get("action") == SEAL:
                return None
            sealed = self._seal(st, last, reason)
        self._notify(sealed)
        return sealed

    def _notify(self, sealed: dict | None) -> None:
        if sealed is not None and self.on_seal is not None:
            try:
                self.on_seal(self.sign_checkpoint(sealed))
            except Exception:  # noqa: BLE001 - forwarding must never break an append
                log.exception("audit: forwarding the seal checkpoint failed")

    # -- checkpoints ----------------------------------------------------------------------
    def _signing_key(self) -> Ed25519PrivateKey:
        key = serialization.load_pem_private_key(self.sign_path.read_bytes(), password=None)
        assert isinstance(key, Ed25519PrivateKey)
        return key

    def public_key(self) -> Ed25519PublicKey:
        key = serialization.load_pem_public_key(self.pub_path.read_bytes())
        assert isinstance(key, Ed25519PublicKey)
        return key

    def signer_id(self) -> str:
        raw = self.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return hashlib.sha256(raw).hexdigest()[:16]

    def sign_checkpoint(self, seal: dict) -> Checkpoint:
        cp = Checkpoint(size=seal["seq"], head=seal["hash"], epoch=seal["detail"]["epoch"],
                        time_utc=seal["time_utc"], signer=self.signer_id())
        sig = self._signing_key().sign(cp.body().encode())
        cp.sig = base64.urlsafe_b64encode(sig).decode()
        return cp

    def checkpoint(self, *, actor: str, role: str, source: str = "local", purpose: str = "") -> Checkpoint:
        """Log who asked, seal, and return the signed (size, head) of the sealed log."""
        self.append(CHECKPOINT, actor=actor, role=role, obj=purpose, source=source)
        with self._locked():
            st, last = self._prepare()
            assert last is not None
            seal = last if last.get("action") == SEAL else self._seal(st, last, "checkpoint")
        cp = self.sign_checkpoint(seal)
        if self.on_seal is not None:
            try:
                self.on_seal(cp)
            except Exception:  # noqa: BLE001
                log.exception("audit: forwarding the checkpoint failed")
        return cp

    def check_signature(self, cp: Checkpoint) -> bool:
        try:
            self.public_key().verify(base64.urlsafe_b64decode(cp.sig), cp.body().encode())
            return cp.signer == self.signer_id()
        except (InvalidSignature, ValueError, FileNotFoundError):
            return False

    # -- retention ------------------------------------------------------------------------
    def prune(self, retention_years: int, *, actor: str = "system", role: str = "system") -> int:
        """Remove rotated segments older than the retention period (never below 1 year).

        The removal is itself an entry, sealed before any file goes. "Now" is the earlier of the
        clock and the newest entry, so a clock that jumped ahead cannot age the log.
        Returns the number of entries removed.
        """
        years = max(1, int(retention_years))
        with self._locked():
            st, last = self._prepare()
            if last is None:
                return 0
            now = min(self.clock.wall(), parse_utc(last["time_utc"]).timestamp())
            cutoff = now - years * 365.25 * 86400
            rotated = [p for p in self.segments() if p != self.path]
            doomed: list[tuple[Path, dict]] = []
            for seg in rotated:
                seg_last = self._last_line(seg)
                if seg_last is None or parse_utc(seg_last["time_utc"]).timestamp() >= cutoff:
                    break
                doomed.append((seg, seg_last))
            if not doomed:
                return 0
            anchor = self._anchor()
            tail = doomed[-1][1]
            if tail.get("action") != SEAL:
                raise AuditError(f"{doomed[-1][0].name} does not end with a seal; not pruning")
            new_anchor = {"first_seq": tail["seq"] + 1, "prev": tail["hash"], "epoch": tail["detail"]["epoch"] + 1}
            removed = tail["seq"] - anchor["first_seq"] + 1
            entry = self._write(st, last, {
                "action": RETENTION, "actor": actor, "role": role, "object": "audit log",
                "outcome": "ok", "reason": f"older than {years} year(s)", "source": "local",
                "detail": {"removed_first": anchor["first_seq"], "removed_last": tail["seq"],
                           "last_hash": tail["hash"], "next_epoch": new_anchor["epoch"],
                           "segments": [p.name for p, _ in doomed],
                           "cutoff_utc": _utc(cutoff)}})
            sealed = self._seal(st, entry, "retention")
            _write_atomic(self.anchor_path, json.dumps(new_anchor).encode())
            for seg, _ in doomed:
                seg.unlink()
            _fsync_dir(self.dir)
        self._notify(sealed)
        log.info("audit retention: removed %d entries older than %d year(s)", removed, years)
        return removed

    # -- verification ---------------------------------------------------------------------
    def _log_key_id(self, st: dict | None) -> str | None:
        """The identifier of the key this log was made with: from the sealing state, else from its
        first seal (an offline copy without the state), else None (a log from before key ids)."""
        if st is not None:
            return st.get("key_id") or None
        for e in self.entries():
            if e.get("action") == SEAL:
                d = e.get("detail")
                return (d.get("key_id") if isinstance(d, dict) else None) or None
        return None

    def _check_key_belongs(self, key0: bytes, st: dict | None, anchor: dict, log_kid: str | None) -> None:
        """Raise AuditWrongKey unless ``key0`` is this log's key; AuditError when the log's key
        identifier names another key than the one its MACs and sealing state derive from."""
        kid = key_id(key0)
        if log_kid == kid:
            return
        # no identifier (a format-1 log), or another one: do the box's current key or the first
        # entry's MAC derive from this key? Either one says the key is right and the log was changed.
        derives = st is not None and epoch_key(key0, int(st["epoch"])).hex() == st.get("key")
        first = next(self.entries(), None)
        first_ok = (first is not None and isinstance(first.get("hash"), str)
                    and _mac_ok(epoch_key(key0, int(anchor["epoch"])), first["hash"], str(first.get("mac", ""))))
        if derives or first_ok:
            if log_kid is not None:
                raise AuditError(f"the log names key id {log_kid}, but its MACs are this key's ({kid}): "
                                 "the sealing state was edited")
            return
        if first is None and st is None:
            return  # an empty log: nothing to check a key against
        raise AuditWrongKey(
            "검증 키가 이 기록의 키가 아닙니다 · wrong key: this verification key "
            f"(key id {kid}) is not the key of this audit log"
            + (f" (key id {log_kid})" if log_kid else "")
            + ". Check that it is this box's key (another box's or an older key?); if it surely is, "
              "the log and its sealing state were replaced")

    def verify(self) -> tuple[int, None]:
        """Check the chain and the seal structure; (entries checked, None) or AuditError naming the entry."""
        rep = self.verify_report()
        return rep.entries, None

    def verify_report(self, key: str | None = None, checkpoints: Iterable[str | Checkpoint] = ()) -> VerifyReport:
        """Prove the whole log intact (with the auditor's key: unforged too) or name the first bad entry.

        With a key, three failures are told apart: AuditKeyMistyped (the text is no key: a typo),
        AuditWrongKey (a key, but not this log's: known from the key identifier before any MAC is
        checked) and AuditError (the right key, and the log was forged, edited or cut)."""
        key0, every = parse_verification_key(key) if key else (None, None)
        st = self._load_state()
        if every is None:
            every = int(st["every"]) if st else MAX_EVERY
        anchor = self._anchor()
        log_kid = self._log_key_id(st)
        if key0 is not None:
            self._check_key_belongs(key0, st, anchor, log_kid)
        expect_kid = key_id(key0) if key0 is not None else log_kid
        rep = VerifyReport(first_seq=anchor["first_seq"], last_seq=anchor["first_seq"] - 1, head=anchor["prev"],
                           macs_checked=key0 is not None, key_id=expect_kid)
        expect, prev, epoch = anchor["first_seq"], anchor["prev"], anchor["epoch"]
        k = epoch_key(key0, epoch) if key0 is not None else None
        first_open, in_epoch, last_seal = expect, 0, expect - 1
        heads: dict[int, str] = {}
        retention_ok = anchor["first_seq"] == 1
        retention_seq = 0
        for e in self.entries():
            n = expect
            if any(f not in e for f in (*_FIELDS, "hash", "mac")):
                raise AuditError(f"entry {n}: missing fields")
            if e["seq"] != n:
                raise AuditError(f"entry {n}: sequence number {e['seq']} found where {n} belongs "
                                 "(entries deleted, inserted or reordered)")
            if e["prev"] != prev:
                raise AuditError(f"entry {n}: does not follow entry {n - 1} (chain broken: an entry before it "
                                 "was deleted, inserted, reordered or edited)")
            if _entry_hash(e) != e["hash"]:
                raise AuditError(f"entry {n}: content does not match its hash (edited)")
            if k is not None and not _mac_ok(k, e["hash"], e["mac"]):
                raise AuditError(f"entry {n}: MAC does not verify with the key of epoch {epoch} "
                                 "(forged, edited and re-hashed, or re-sealed with a later key)")
            if e["action"] == SEAL:
                d = e["detail"] if isinstance(e["detail"], dict) else {}
                if d.get("epoch") != epoch:
                    raise AuditError(f"entry {n}: seal of epoch {d.get('epoch')} where epoch {epoch} belongs "
                                     "(a seal was replayed, removed or forged: epoch gap)")
                if in_epoch == 0 or d.get("first") != first_open or d.get("last") != n - 1 or d.get("head") != prev:
                    raise AuditError(f"entry {n}: seal covers entries {d.get('first')}..{d.get('last')} but the "
                                     f"open range is {first_open}..{n - 1}")
                if expect_kid is not None and log_kid is not None and d.get("key_id") != expect_kid:
                    raise AuditError(f"entry {n}: seal names key id {d.get('key_id')} where {expect_kid} belongs "
                                     "(a seal forged, or entries of another log spliced in)")
                epoch += 1
                if k is not None:
                    k = evolve_key(k)
                first_open, in_epoch, last_seal = n + 1, 0, n
                if retention_seq:
                    retention_ok, retention_seq = True, 0
            else:
                in_epoch += 1
                if in_epoch > every:
                    raise AuditError(f"entry {n}: more than {every} entries after the seal at entry {last_seal} "
                                     "(a seal was removed or sealing was bypassed)")
                if e["action"] == RETENTION and not retention_ok:
                    d = e["detail"] if isinstance(e["detail"], dict) else {}
                    if (d.get("removed_last") == anchor["first_seq"] - 1 and d.get("last_hash") == anchor["prev"]
                            and d.get("next_epoch") == anchor["epoch"]):
                        retention_seq = n  # confirmed once it is sealed
            heads[n] = e["hash"]
            prev = e["hash"]
            rep.entries += 1
            rep.last_seq = n
            expect += 1
        rep.head = prev
        rep.epochs_sealed = epoch - anchor["epoch"]
        rep.sealed_upto = last_seal
        rep.open_tail = in_epoch
        if not retention_ok:
            raise AuditError(f"entry {anchor['first_seq']}: entries before it are missing and no sealed retention "
                             "run in the log accounts for them")
        if rep.entries and st is None:
            raise AuditError(f"entry {rep.last_seq}: the sealing state of the box is missing (audit/seal-state.json)")
        if st is not None:
            if key0 is not None and epoch_key(key0, int(st["epoch"])).hex() != st["key"]:
                raise AuditError("the sealing key on the box does not derive from this verification key, "
                                 "which is this log's (the box's sealing key was replaced)")
            if int(st["epoch"]) > epoch or int(st["sealed_seq"]) > last_seal:
                raise AuditError(f"entry {rep.last_seq + 1}: missing — the "
                                 f"log ends after epoch {epoch - 1} (entry {rep.last_seq}) but the box has sealed "
                                 f"up to epoch {int(st['epoch']) - 1} (entry {st['sealed_seq']}): the log was "
                                 "truncated")
            if int(st["epoch"]) < epoch:
                raise AuditError(f"entry {last_seal}: the log has seals beyond the box's sealing state "
                                 "(state file replaced or restored from a backup)")
        for c in checkpoints:
            cp = c if isinstance(c, Checkpoint) else Checkpoint.parse(c)
            if not self.check_signature(cp):
                raise AuditError(f"checkpoint size={cp.size}: signature does not verify with this box's "
                                 "checkpoint key (forged, or the key was replaced)")
            if cp.size < rep.first_seq:
                rep.notes.append(f"checkpoint size={cp.size} is older than the retained log")
            elif cp.size > rep.last_seq:
                raise AuditError(f"entry {rep.last_seq + 1}: missing — a checkpoint of {cp.time_utc} "
                                 f"shows {cp.size} entries but the log ends at entry {rep.last_seq} (truncated)")
            elif heads.get(cp.size) != cp.head:
                raise AuditError(f"entry {cp.size}: hash differs from the checkpoint of {cp.time_utc} "
                                 "(the log was rewritten)")
            rep.checkpoints_checked += 1
        return rep

    # -- export ---------------------------------------------------------------------------
    def export_csv(self, frm: dt.date, to: dt.date, tz: dt.tzinfo) -> tuple[str, int]:
        """CSV of the entries whose local date lies in [frm, to]: (text, rows)."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["seq", "time_utc", "time_local", "mono", "boot", "action", "actor", "role", "object",
                    "outcome", "reason", "source", "detail", "hash"])
        rows = 0
        for e in self.entries():
            local = parse_utc(e["time_utc"]).astimezone(tz)
            if frm <= local.date() <= to:
                w.writerow([e["seq"], e["time_utc"], local.isoformat(timespec="seconds"), e["mono"], e["boot"]]
                           + [csv_text(v) for v in (e["action"], e["actor"], e["role"], e["object"], e["outcome"],
                                                    e["reason"], e["source"],
                                                    json.dumps(e["detail"], ensure_ascii=False, sort_keys=True))]
                           + [e["hash"]])
                rows += 1
        return buf.getvalue(), rows


# a cell a spreadsheet would run as a formula (OWASP "CSV injection"): names, reasons and objects can
# be typed by anyone, a sign-in name by someone who is not even signed in
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def csv_text(v) -> str:
    """A text cell for a CSV that Excel or LibreOffice opens: formula-looking text gets a leading '."""
    s = "" if v is None else str(v)
    return "'" + s if s.startswith(_FORMULA) else s


_SECRET_KEYS = re.compile(r"password|secret|token|identity|pin\b|key$", re.I)


def config_changes(old: dict, new: dict, prefix: str = "") -> dict:
    """{key: {"old": …, "new": …}} for every changed setting; values of secret-looking keys hidden."""
    out: dict = {}
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        key = f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(config_changes(a, b, key + "."))
        elif a != b:
            out[key] = {"old": "(hidden)", "new": "(hidden)"} if _SECRET_KEYS.search(k) else {"old": a, "new": b}
    return out


def export_manifest(csv_name: str, csv_text: str, rows: int, frm: dt.date, to: dt.date, cp: Checkpoint,
                    actor: str) -> str:
    """The text that goes beside an export: what it holds, its digest, and the signed checkpoint."""
    digest = hashlib.sha256(csv_text.encode("utf-8")).hexdigest()
    return (f"nokbox audit export / 감사 기록 내보내기\n"
            f"file: {csv_name}\nperiod (KST): {frm.isoformat()} .. {to.isoformat()}\nrows: {rows}\n"
            f"sha256: {digest}\nexported by: {actor}\n"
            f"checkpoint (keep this line off the box; `nokbox audit verify --checkpoint` checks it):\n"
            f"{cp.line()}\n")

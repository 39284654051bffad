"""age v1 (age-encryption.org/v1) streaming encryption to X25519 recipients.

The container is written on the ``cryptography`` primitives (X25519, HKDF-SHA256,
HMAC-SHA256, ChaCha20-Poly1305) rather than through an age binding because the
recorder must seal each 64 KiB STREAM chunk to disk the moment it fills: a call is
encrypted as it is recorded and never exists in clear on disk. Output is checked
against the stock ``age`` tool in the tests. Key strings use Bech32 (BIP 173)
from the ``bech32`` reference package.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import BinaryIO

import bech32
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives import serialization

from ..errors import VaultError

CHUNK = 64 * 1024
TAG = 16
VERSION_LINE = b"age-encryption.org/v1\n"
_X25519_INFO = b"age-encryption.org/v1/X25519"


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _bech32_encode(hrp: str, data: bytes) -> str:
    return bech32.bech32_encode(hrp, bech32.convertbits(data, 8, 5, True))


def _bech32_decode(s: str, hrp: str) -> bytes:
    got_hrp, words = bech32.bech32_decode(s)
    if got_hrp != hrp or words is None:
        raise VaultError(f"not an age {hrp!r} key string")
    data = bech32.convertbits(words, 5, 8, False)
    if data is None or len(data) != 32:
        raise VaultError("age key string has the wrong length")
    return bytes(data)


def generate_identity() -> tuple[str, str]:
    """A new X25519 identity: (AGE-SECRET-KEY-1..., age1... recipient)."""
    key = X25519PrivateKey.generate()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _bech32_encode("age-secret-key-", raw).upper(), _bech32_encode("age", pub)


def parse_recipient(s: str) -> bytes:
    """The 32-byte X25519 public key of an ``age1...`` recipient string."""
    return _bech32_decode(s.strip(), "age")


def parse_identity(s: str) -> bytes:
    """The 32-byte X25519 secret of an ``AGE-SECRET-KEY-1...`` string."""
    return _bech32_decode(s.strip().lower(), "age-secret-key-")


def recipient_of(identity: str) -> str:
    """The recipient string matching an identity string."""
    key = X25519PrivateKey.from_private_bytes(parse_identity(identity))
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _bech32_encode("age", pub)


def _x25519_stanza(file_key: bytes, recipient: bytes) -> bytes:
    eph = X25519PrivateKey.generate()
    share = eph.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    shared = eph.exchange(X25519PublicKey.from_public_bytes(recipient))
    if shared == bytes(32):
        raise VaultError("recipient is a low-order point")
    wrap = _hkdf(shared, share + recipient, _X25519_INFO)
    body = ChaCha20Poly1305(wrap).encrypt(bytes(12), file_key, None)
    return b"-> X25519 " + _b64(share) + b"\n" + _b64(body) + b"\n"


def _nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


class AgeWriter:
    """Streams plaintext into an age file; each full 64 KiB chunk is sealed and written at once.

    Not thread-safe: one writer thread owns it. ``sealed`` counts plaintext bytes
    already encrypted and handed to the file; bytes after it can still be patched.
    """

    def __init__(self, out: BinaryIO, recipients: list[bytes]) -> None:
        if not recipients:
            raise VaultError("no recipient")
        self._out = out
        file_key = os.urandom(16)
        header = VERSION_LINE + b"".join(_x25519_stanza(file_key, r) for r in recipients) + b"---"
        mac = hmac.new(_hkdf(file_key, b"", b"header"), header, hashlib.sha256).digest()
        nonce = os.urandom(16)
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        out.write(header + b" " + _b64(mac) + b"\n" + nonce)
        self.bytes_out = len(header) + 1 + 43 + 1 + 16
        self._buf = bytearray()
        self._counter = 0
        self.sealed = 0
        self.closed = False

    @property
    def length(self) -> int:
        """Plaintext bytes received so far."""
        return self.sealed + len(self._buf)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append plaintext; full chunks are sealed and written (not yet fsynced)."""
        self._buf += data
        # A full chunk can only be sealed as non-final once more data follows it.
        while len(self._buf) > CHUNK:
            self._seal(bytes(self._buf[:CHUNK]), last=False)
            del self._buf[:CHUNK]

    def patch(self, offset: int, data: bytes) -> bool:
        """Overwrite plaintext at ``offset`` if it is not sealed yet; False if it is."""
        if offset < self.sealed or offset + len(data) > self.length:
            return False
        i = offset - self.sealed
        self._buf[i:i + len(data)] = data
        return True

    def _seal(self, chunk: bytes, last: bool) -> None:
        ct = self._aead.encrypt(_nonce(self._counter, last), chunk, None)
        self._out.write(ct)
        self._counter += 1
        self.sealed += len(chunk)
        self.bytes_out += len(ct)

    def close(self) -> None:
        """Seal the final chunk (possibly empty only when the whole payload is empty)."""
        if self.closed:
            return
        self._seal(bytes(self._buf), last=True)
        self._buf.clear()
        self.closed = True


# -- reading ------------------------------------------------------------------------------
MAX_HEADER = 1 << 20
MAX_SCRYPT_LOG_N = 22
_SCRYPT_LABEL = b"age-encryption.org/v1/scrypt"


class AgeError(VaultError):
    """An age file could not be decrypted; ``kind`` says which check failed."""

    kind = "error"


class HeaderError(AgeError):
    kind = "header failure"


class HmacError(AgeError):
    kind = "HMAC failure"


class NoMatchError(AgeError):
    kind = "no match"


class PayloadError(AgeError):
    kind = "payload failure"


def _b64d(data: bytes, what: str) -> bytes:
    """Strict, canonical, unpadded standard base64 (as age requires)."""
    if b"=" in data or b"\r" in data or b"\n" in data:
        raise HeaderError(f"{what}: not unpadded base64")
    try:
        out = base64.b64decode(data + b"=" * (-len(data) % 4), validate=True)
    except ValueError:
        raise HeaderError(f"{what}: invalid base64") from None
    if _b64(out) != data:
        raise HeaderError(f"{what}: non-canonical base64")
    return out


class X25519Identity:
    """An ``AGE-SECRET-KEY-1...`` identity."""

    def __init__(self, identity: str) -> None:
        self._key = X25519PrivateKey.from_private_bytes(parse_identity(identity))
        self._pub = self._key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def unwrap(self, args: list[bytes], body: bytes) -> bytes | None:
        share = _b64d(args[1], "X25519 share")
        try:
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(share))
        except ValueError:  # the all-zero shared secret of a low-order point
            shared = bytes(32)
        if shared == bytes(32):
            raise HeaderError("X25519 share is a low-order point")
        wrap = _hkdf(shared, share + self._pub, _X25519_INFO)
        try:
            return ChaCha20Poly1305(wrap).decrypt(bytes(12), body, None)
        except Exception:  # InvalidTag: this stanza is not for us
            return None


class ScryptIdentity:
    """A passphrase (age scrypt recipient)."""

    def __init__(self, passphrase: bytes | str, max_log_n: int = MAX_SCRYPT_LOG_N) -> None:
        self._pw = passphrase.encode() if isinstance(passphrase, str) else passphrase
        self._max = max_log_n

    def unwrap(self, args: list[bytes], body: bytes) -> bytes | None:
        from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

        salt = _b64d(args[1], "scrypt salt")
        if len(salt) != 16:
            raise HeaderError("scrypt salt must be 16 bytes")
        log_n = args[2]
        if not log_n.isdigit() or (log_n.startswith(b"0")):
            raise HeaderError("scrypt work factor is not a canonical decimal")
        n = int(log_n)
        if n < 1 or n > self._max:
            raise HeaderError(f"scrypt work factor {n} out of range")
        key = Scrypt(salt=_SCRYPT_LABEL + salt, length=32, n=1 << n, r=8, p=1).derive(self._pw)
        try:
            return ChaCha20Poly1305(key).decrypt(bytes(12), body, None)
        except Exception:
            return None


def _read_line(src: BinaryIO, budget: list[int]) -> bytes:
    line = src.readline(budget[0] + 1)
    budget[0] -= len(line)
    if budget[0] < 0:
        raise HeaderError("header too long")
    if not line.endswith(b"\n"):
        raise HeaderError("header truncated")
    return line[:-1]


def read_header(src: BinaryIO) -> tuple[list[tuple[list[bytes], bytes]], bytes, bytes]:
    """Parse an age header: (stanzas, header bytes covered by the MAC, MAC)."""
    budget = [MAX_HEADER]
    first = _read_line(src, budget)
    if first + b"\n" != VERSION_LINE:
        raise HeaderError("not an age v1 file")
    covered = bytearray(VERSION_LINE)
    stanzas = []
    while True:
        line = _read_line(src, budget)
        if line.startswith(b"--- "):
            covered += b"---"
            mac_b64 = line[4:]
            if len(mac_b64) != 43:
                raise HeaderError("malformed header MAC")
            return stanzas, bytes(covered), _b64d(mac_b64, "header MAC")
        if not line.startswith(b"-> "):
            raise HeaderError("malformed stanza line")
        covered += line + b"\n"
        args = line[3:].split(b" ")
        if not args or any(not a or any(c < 33 or c > 126 for c in a) for a in args):
            raise HeaderError("malformed stanza arguments")
        body = bytearray()
        while True:
            bl = _read_line(src, budget)
            covered += bl + b"\n"
            if len(bl) > 64:
                raise HeaderError("stanza body line too long")
            body += _b64d(bl, "stanza body") if bl else b""
            if len(bl) < 64:
                break
        stanzas.append((args, bytes(body)))


def unwrap_file_key(stanzas: list[tuple[list[bytes], bytes]], identities: list) -> bytes:
    """Check every known stanza and return the file key one of ``identities`` opens."""
    types = [args[0] for args, _ in stanzas]
    if b"scrypt" in types and len(stanzas) != 1:
        raise HeaderError("an scrypt stanza must be alone")
    for args, body in stanzas:
        if args[0] == b"X25519":
            if len(args) != 2:
                raise HeaderError("X25519 stanza takes one argument")
            if len(_b64d(args[1], "X25519 share")) != 32:
                raise HeaderError("X25519 share must be 32 bytes")
            if len(body) != 32:
                raise HeaderError("X25519 body must be 32 bytes")
        elif args[0] == b"scrypt":
            if len(args) != 3:
                raise HeaderError("scrypt stanza takes two arguments")
            if len(body) != 32:
                raise HeaderError("scrypt body must be 32 bytes")
    for args, body in stanzas:
        for ident in identities:
            if args[0] == b"X25519" and isinstance(ident, X25519Identity):
                key = ident.unwrap(args, body)
            elif args[0] == b"scrypt" and isinstance(ident, ScryptIdentity):
                key = ident.unwrap(args, body)
            else:
                continue
            if key is not None:
                return key
    raise NoMatchError("no identity matches any recipient of the file")


def verify_header_mac(covered: bytes, mac: bytes, file_key: bytes) -> None:
    expect = hmac.new(_hkdf(file_key, b"", b"header"), covered, hashlib.sha256).digest()
    if not hmac.compare_digest(expect, mac):
        raise HmacError("header MAC does not match")


def payload_key(file_key: bytes, nonce: bytes) -> ChaCha20Poly1305:
    return ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))


def decrypt_chunks(src: BinaryIO, aead: ChaCha20Poly1305):
    """Yield each verified plaintext chunk of a STREAM payload; PayloadError on any fault.

    As the reference implementation does, a chunk is released once it authenticates; a
    full-size chunk that fails as non-final is tried as final; trailing bytes after the
    final chunk are an error raised after its plaintext was released.
    """
    enc = CHUNK + TAG
    counter = 0
    while True:
        buf = src.read(enc)
        if not buf:
            raise PayloadError("payload truncated" if counter else "payload has no chunks")
        last = len(buf) < enc
        if last and counter > 0 and len(buf) == TAG:
            raise PayloadError("final chunk is empty")
        try:
            out = aead.decrypt(_nonce(counter, last), buf, None)
        except Exception:
            out = None
            if not last:
                last = True
                try:
                    out = aead.decrypt(_nonce(counter, True), buf, None)
                except Exception:
                    out = None
        if out is None:
            raise PayloadError(f"chunk {counter} fails authentication")
        yield out
        if last:
            if src.read(1):
                raise PayloadError("trailing data after the final chunk")
            return
        counter += 1


def decrypt(src: BinaryIO, identities: list):
    """Yield the plaintext of an age file chunk by chunk, each verified before it is released."""
    stanzas, covered, mac = read_header(src)
    file_key = unwrap_file_key(stanzas, identities)
    verify_header_mac(covered, mac, file_key)
    nonce = src.read(16)
    if len(nonce) != 16:
        raise HeaderError("payload nonce missing")
    yield from decrypt_chunks(src, payload_key(file_key, nonce))


def decrypt_bytes(data: bytes, identities: list) -> bytes:
    """Decrypt a whole in-memory age file."""
    import io

    return b"".join(decrypt(io.BytesIO(data), identities))

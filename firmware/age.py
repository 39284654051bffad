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

from .errors import VaultError

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

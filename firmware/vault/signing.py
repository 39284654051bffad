"""The box's export-signing key and OpenSSH signatures (SSHSIG) over what leaves the box.

An export package's manifest is signed so that anyone can check it with the stock tool:

    ssh-keygen -Y verify -f allowed_signers -I nokbox-export -n file -s MANIFEST.sha256.sig < MANIFEST.sha256

The signature format is OpenSSH's PROTOCOL.sshsig (no PyPI library writes it; the signing itself is
``cryptography``'s Ed25519, deterministic, so the bytes equal ``ssh-keygen -Y sign``'s with the same
key). The private key is kept in ``DATA/keys/signer.sealed`` under a key derived from the device
secret (ChaCha20-Poly1305): the SSD alone cannot sign, and only processes that hold the device
secret (the key keeper) can. The public key is ``DATA/keys/signer.pub`` in OpenSSH format.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ..errors import VaultError
from ..hal.devicekey import DeviceSecret

PRINCIPAL = "nokbox-export"
SEALED = "signer.sealed"
PUBLIC = "signer.pub"
_INFO = "nokbox/v1/export-signer"
_AAD = b"nokbox export signer v1"
_MAGIC = b"SSHSIG"
_VERSION = 1
_HASH = "sha512"


def _string(b: bytes | str) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return struct.pack(">I", len(b)) + b


def _public_blob(raw_public: bytes) -> bytes:
    return _string("ssh-ed25519") + _string(raw_public)


def ensure_signer(data: Path, device: DeviceSecret) -> str:
    """Create the signing key pair once (sealed private part, public part in clear); the public line."""
    keys = Path(data) / "keys"
    pub = keys / PUBLIC
    if (keys / SEALED).exists() and pub.exists():
        return pub.read_text().strip()
    from .sealing import write_private

    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    nonce = os.urandom(12)
    sealed = nonce + ChaCha20Poly1305(device.derive(_INFO)).encrypt(nonce, raw, _AAD)
    write_private(keys / SEALED, sealed)
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    pub.write_text(line.decode() + f" {PRINCIPAL}\n")
    return pub.read_text().strip()


def public_line(data: Path) -> str:
    """``ssh-ed25519 AAAA… nokbox-export`` (VaultError when the box has no signing key yet)."""
    try:
        return (Path(data) / "keys" / PUBLIC).read_text().strip()
    except FileNotFoundError:
        raise VaultError("this box has no export-signing key yet (nokbox keys signer creates it)") from None


def _raw_public(line: str) -> bytes:
    blob = base64.b64decode(line.split()[1])
    # string "ssh-ed25519", string key
    (n,) = struct.unpack(">I", blob[:4])
    (m,) = struct.unpack(">I", blob[4 + n:8 + n])
    return blob[8 + n:8 + n + m]


def fingerprint(line: str) -> str:
    """The key's SHA256 fingerprint as ``ssh-keygen -l`` prints it."""
    digest = hashlib.sha256(base64.b64decode(line.split()[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def allowed_signers(line: str) -> str:
    """The ``allowed_signers`` line a recipient keeps to verify packages from this box."""
    kind, b64 = line.split()[:2]
    return f'{PRINCIPAL} namespaces="file" {kind} {b64}'


def _private(data: Path, device: DeviceSecret) -> Ed25519PrivateKey:
    blob = (Path(data) / "keys" / SEALED).read_bytes()
    try:
        raw = ChaCha20Poly1305(device.derive(_INFO)).decrypt(blob[:12], blob[12:], _AAD)
    except InvalidTag:
        raise VaultError("the export-signing key does not open with this box's device secret") from None
    return Ed25519PrivateKey.from_private_bytes(raw)


def sign(data: Path, device: DeviceSecret, message: bytes, namespace: str = "file") -> str:
    """An armored SSH signature (``-----BEGIN SSH SIGNATURE-----``) over ``message`` in ``namespace``."""
    key = _private(data, device)
    raw_public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    signed = (_MAGIC + _string(namespace) + _string(b"") + _string(_HASH)
              + _string(hashlib.sha512(message).digest()))
    sig = _string("ssh-ed25519") + _string(key.sign(signed))
    blob = (_MAGIC + struct.pack(">I", _VERSION) + _string(_public_blob(raw_public)) + _string(namespace)
            + _string(b"") + _string(_HASH) + _string(sig))
    b64 = base64.b64encode(blob).decode()
    lines = [b64[i:i + 70] for i in range(0, len(b64), 70)]
    return "-----BEGIN SSH SIGNATURE-----\n" + "\n".join(lines) + "\n-----END SSH SIGNATURE-----\n"


def verify(line: str, message: bytes, armored: str, namespace: str = "file") -> bool:
    """Our own check of a signature by the key ``line`` (the stock one is ``ssh-keygen -Y verify``)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    body = "".join(ln for ln in armored.strip().splitlines() if not ln.startswith("-----"))
    try:
        blob = base64.b64decode(body)
        assert blob[:6] == _MAGIC and struct.unpack(">I", blob[6:10])[0] == _VERSION
        pos, fields = 10, []
        while pos < len(blob):
            (n,) = struct.unpack(">I", blob[pos:pos + 4])
            fields.append(blob[pos + 4:pos + 4 + n])
            pos += 4 + n
        pub, ns, _reserved, hash_alg, sig = fields
        if pub != _public_blob(_raw_public(line)) or ns != namespace.encode() or hash_alg != _HASH.encode():
            return False
        (n,) = struct.unpack(">I", sig[:4])
        raw_sig = sig[8 + n:]
        signed = (_MAGIC + _string(namespace) + _string(b"") + _string(_HASH)
                  + _string(hashlib.sha512(message).digest()))
        Ed25519PublicKey.from_public_bytes(_raw_public(line)).verify(raw_sig, signed)
        return True
    except (ValueError, AssertionError, struct.error, InvalidSignature):
        return False

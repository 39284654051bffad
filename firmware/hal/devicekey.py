"""The device-bound secret: 32 bytes that live on the box but not on the data SSD.

Backends: the Raspberry Pi OTP customer private key (read with ``rpi-otp-private-key``,
present on Raspberry Pi OS for Pi 4/5 once provisioned), a key file on a separate
partition (the SD card holding / while recordings live on the SSD), or a TPM 2.0 that
seals the secret (``tpm``: the blob on the SD card opens only in that TPM; ``hal/tpm.py``).
Nothing is read at import; the file and TPM backends create their secret only through
``provision()``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import DeviceError

SECRET_LEN = 32


class DeviceSecret:
    """Interface: ``read()`` the 32-byte secret; ``provision()`` creates it where that is safe."""

    name = "device-secret"

    def read(self) -> bytes:
        raise NotImplementedError

    def provision(self) -> bytes:
        raise NotImplementedError

    def derive(self, info: str, length: int = 32) -> bytes:
        """A purpose-bound key from the secret (HKDF-SHA256); the raw secret is never used directly."""
        return HKDF(algorithm=SHA256(), length=length, salt=b"nokbox device secret v1",
                    info=info.encode()).derive(self.read())

    def fingerprint(self) -> str:
        """A short public tag that tells which secret is in use (for logs and status)."""
        return hashlib.sha256(b"nokbox fp" + self.derive("fingerprint")).hexdigest()[:16]


class FileDeviceSecret(DeviceSecret):
    """A 0600 key file, meant for a partition other than the data SSD."""

    name = "file"

    def __init__(self, path: str | os.PathLike, *, origin: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        # where the key file lives when ``path`` is its copy as a systemd credential (which is per
        # service run: /run/credentials/<unit>/device.key): the data directory's marker names the origin
        self.origin = Path(origin) if origin is not None else self.path

    def read(self) -> bytes:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise DeviceError(f"device key file {self.path} is missing (was the key partition mounted?)") from None
        except OSError as exc:
            raise DeviceError(f"device key file {self.path}: {exc.strerror}") from None
        if len(data) != SECRET_LEN:
            raise DeviceError(f"device key file {self.path} is damaged ({len(data)} bytes)")
        return data

    def provision(self) -> bytes:
        if self.path.exists():
            return self.read()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        secret = os.urandom(SECRET_LEN)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret)
            f.flush()
            os.fsync(f.fileno())
        return secret


class OtpDeviceSecret(DeviceSecret):
    """The Raspberry Pi OTP customer private key (256 bits, one-time programmable)."""

    name = "otp"
    TOOL = "rpi-otp-private-key"

    def read(self) -> bytes:
        tool = shutil.which(self.TOOL)
        if tool is None:
            raise DeviceError("rpi-otp-private-key is not installed; this is not a Raspberry Pi OS box")
        out = subprocess.run([tool], capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            raise DeviceError(f"reading the OTP private key failed: {out.stderr.strip()}")
        hexkey = out.stdout.strip()
        try:
            secret = bytes.fromhex(hexkey)
        except ValueError:
            raise DeviceError("the OTP private key is not hex") from None
        if len(secret) != SECRET_LEN or secret == bytes(SECRET_LEN):
            raise DeviceError("the OTP private key is not provisioned")
        return secret

    def provision(self) -> bytes:
        # Writing OTP is irreversible; it is done on purpose by the installer, never implicitly.
        return self.read()


class TpmDeviceSecret(DeviceSecret):
    """The secret sealed in a TPM 2.0 (no authorisation, not subject to its lockout); the blob
    file holds only what that TPM can unseal. The PIN slots use the same TPM for their factor."""

    name = "tpm"

    def __init__(self, blob: str | os.PathLike, tcti: str, *, origin: str | os.PathLike | None = None) -> None:
        from .tpm import Tpm

        self.path = Path(blob)
        self.origin = Path(origin) if origin is not None else self.path  # as FileDeviceSecret.origin
        self.tcti = tcti
        self.tpm = Tpm(tcti)
        self._secret: bytes | None = None

    def read(self) -> bytes:
        if self._secret is None:
            try:
                blob = self.path.read_bytes()
            except FileNotFoundError:
                raise DeviceError(f"TPM blob {self.path} is missing (was the SD card's partition mounted?)") from None
            secret = self.tpm.unseal(blob)
            if len(secret) != SECRET_LEN:
                raise DeviceError(f"TPM blob {self.path} holds {len(secret)} bytes, not a device secret")
            self._secret = secret
        return self._secret

    def provision(self, value: bytes | None = None) -> bytes:
        """Seal a new secret (or ``value``, when a box moves its existing secret into the TPM)."""
        if self.path.exists():
            return self.read()
        secret = value if value is not None else os.urandom(SECRET_LEN)
        if len(secret) != SECRET_LEN:
            raise DeviceError("a device secret is 32 bytes")
        blob = self.tpm.seal(secret, da=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        self._secret = secret
        return secret


CREDENTIAL = "device.key"  # the name in LoadCredential=device.key:/etc/nokbox/device.key


TPM_CREDENTIAL = "device.tpm"  # LoadCredential=device.tpm:/etc/nokbox/device.tpm (nokbox firstboot's drop-in)


def _credential(name: str) -> Path | None:
    """This service's copy of credential ``name`` ($CREDENTIALS_DIRECTORY, systemd), if it has one."""
    cred = os.environ.get("CREDENTIALS_DIRECTORY")
    path = Path(cred) / name if cred else None
    return path if path is not None and path.is_file() else None


def tpm_secret(blob: str | os.PathLike, tcti: str) -> "TpmDeviceSecret":
    """The TPM-sealed blob, or under systemd its credential copy (the blob is root's, 0600)."""
    copy = _credential(TPM_CREDENTIAL)
    return TpmDeviceSecret(copy, tcti, origin=blob) if copy else TpmDeviceSecret(blob, tcti)


def file_secret(key_file: str | os.PathLike) -> FileDeviceSecret:
    """The key file, or under systemd its credential: the file is root's (0600) and reaches the service
    as a copy only that service's user can read (LoadCredential=device.key:...)."""
    copy = _credential(CREDENTIAL)
    return FileDeviceSecret(copy, origin=key_file) if copy else FileDeviceSecret(key_file)


def device_secret(backend: str, key_file: str | os.PathLike, *, tpm_blob: str | os.PathLike = "",
                  tpm_tcti: str = "device:/dev/tpmrm0") -> DeviceSecret:
    """The backend the config names ('file', 'otp' or 'tpm')."""
    if backend == "otp":
        return OtpDeviceSecret()
    if backend == "file":
        # under systemd the key file is root's (0600) and reaches the service as a credential
        # (LoadCredential=device.key:...): a copy only that service's user can read
        return file_secret(key_file)
    if backend == "tpm":
        return tpm_secret(tpm_blob, tpm_tcti)
    raise DeviceError(f"unknown device secret backend {backend!r}")

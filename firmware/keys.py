"""The data directory and the records key pair.

Until the vault issue seals the identity, the box keeps only the public recipient
(``keys/recipient.txt``); the identity goes to ``--identity-out`` (or is shown once)
and is never written under the data directory.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives import serialization

from .age import _bech32_encode, generate_identity, parse_recipient, recipient_of
from .errors import DataDirError, VaultError
from .hal.devicekey import DeviceSecret, FileDeviceSecret
from .index import connect

MARKER = "nokbox.json"


DEVICE_RECOVERY_INFO = "nokbox/v1/device-recovery"


def device_recovery_identity(secret: DeviceSecret) -> str:
    """The box's own recovery identity, derived from the device-bound secret.

    It opens only crash journals of calls in progress (never a finished call), so the
    box can finish interrupted recordings after a power cut without the approver.
    """
    raw = X25519PrivateKey.from_private_bytes(secret.derive(DEVICE_RECOVERY_INFO)).private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return _bech32_encode("age-secret-key-", raw).upper()


def load_device_recovery_recipient(data: Path) -> bytes:
    """The public half of the device recovery identity (written at init)."""
    path = Path(data) / "keys" / "device-recovery.txt"
    try:
        return parse_recipient(path.read_text().strip())
    except FileNotFoundError:
        raise DataDirError(f"{path} is missing; the data directory was not initialised by this version") from None


def init_data_dir(data: Path, identity_out: Path | None = None,
                  device: DeviceSecret | None = None) -> tuple[str, str]:
    """Create the data directory and a new records key pair. Returns (identity, recipient).

    ``device`` is the device-bound secret (provisioned here if it is a new key file);
    by default a key file beside the data directory, as on a development machine.
    """
    data = Path(data)
    if device is None:
        device = FileDeviceSecret(data.parent / (data.name + "-device.key"))
    if (data / MARKER).exists():
        raise VaultError(f"{data} is already initialised; refusing to replace its records key")
    for sub in ("keys", "calls", "run"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(data, 0o750)
    identity, recipient = generate_identity()
    if identity_out is not None:
        identity_out = Path(identity_out)
        if identity_out.resolve().is_relative_to(data.resolve()):
            raise VaultError("the identity must not be stored inside the data directory")
        fd = os.open(identity_out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"# nokbox records identity, created {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
            f.write(f"# public key: {recipient}\n{identity}\n")
    (data / "keys" / "recipient.txt").write_text(recipient + "\n")
    device.provision()
    (data / "keys" / "device-recovery.txt").write_text(recipient_of(device_recovery_identity(device)) + "\n")
    connect(data / "index.sqlite").close()
    where = {"backend": device.name}
    if isinstance(device, FileDeviceSecret):
        where["path"] = str(Path(device.path).resolve())
    (data / MARKER).write_text(json.dumps({"format": 1, "created": time.time(), "device": where}) + "\n")
    return identity, recipient


def device_for(data: Path) -> DeviceSecret:
    """The device-bound secret this data directory was initialised with."""
    from .hal.devicekey import OtpDeviceSecret

    try:
        where = json.loads((Path(data) / MARKER).read_text()).get("device") or {}
    except FileNotFoundError:
        raise DataDirError(f"{data} is not an initialised nokbox data directory") from None
    if where.get("backend") == "otp":
        return OtpDeviceSecret()
    if where.get("backend") == "file" and where.get("path"):
        return FileDeviceSecret(where["path"])
    raise DataDirError(f"{data}: the device secret is not recorded in {MARKER}")


def load_recipients(data: Path) -> list[bytes]:
    """The public keys recordings are encrypted to."""
    data = Path(data)
    path = data / "keys" / "recipient.txt"
    if not (data / MARKER).exists() or not path.exists():
        raise DataDirError(f"{data} is not an initialised nokbox data directory (run: nokbox init --data {data})")
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(parse_recipient(line))
    if not out:
        raise VaultError(f"{path}: no recipient")
    return out

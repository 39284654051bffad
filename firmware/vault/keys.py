"""The data directory, the records key pair, and who can unlock it.

The box keeps only the public recipient (``keys/recipient.txt``) in clear. The records
identity is sealed under the recovery passphrase (``keys/identity.recovery.age``, stock
age scrypt) and under each approver's PIN combined with the device-bound secret
(``keys/pin/``), see ``sealing.py``. Calls are encrypted to key epochs (``epochs.py``).
``--identity-out`` (development, tests) additionally writes the identities outside DATA.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives import serialization

from .age import _bech32_encode, generate_identity, parse_recipient, recipient_of
from ..config import shared_data
from ..errors import DataDirError, VaultError
from ..hal.devicekey import DeviceSecret, FileDeviceSecret, TpmDeviceSecret, file_secret, tpm_secret
from ..index import connect
from .sealing import DEFAULT_APPROVER, PIN_LOG_N, RECOVERY_LOG_N

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


REQUEST_INFO = "nokbox/v1/request-details"


def request_identity(secret: DeviceSecret) -> str:
    """The identity that opens requests' personal details (requesters' names, numbers, scans).

    Derived from the device-bound secret, so only the keeper (which holds that secret) opens
    them; the page seals to its public half and can never read back what it stored.
    """
    raw = X25519PrivateKey.from_private_bytes(secret.derive(REQUEST_INFO)).private_bytes(
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
                  device: DeviceSecret | None = None, *, passphrase: str | None = None,
                  pin: str | None = None, approver: str = DEFAULT_APPROVER,
                  recovery_log_n: int = RECOVERY_LOG_N, pin_log_n: int = PIN_LOG_N,
                  key_classes: list[str] | None = None, tpm_policy: tuple[int, int, int] = (10, 600, 86400)
                  ) -> tuple[str, str]:
    """Create the data directory and a new records key pair. Returns (identity, recipient).

    ``device`` is the device-bound secret (provisioned here if it is a new key file);
    by default a key file beside the data directory, as on a development machine.
    ``passphrase`` seals the identity for recovery (stock age scrypt); ``pin`` opens a PIN
    slot for ``approver``. Without a passphrase nothing sealed is kept (the caller holds
    the identity: tests, development). The first key epoch of each key class (retention
    period; by default that of the default configuration) is created here, so
    ``identity_out`` (records identity, then the epoch identities) reads the first calls.
    """
    from .epochs import default_key_class, new_epoch
    from .sealing import PinGuard, seal_pin_slot, seal_recovery

    data = Path(data)
    if device is None:
        device = FileDeviceSecret(data.parent / (data.name + "-device.key"))
    if (data / MARKER).exists():
        raise VaultError(f"{data} is already initialised; refusing to replace its records key")
    if identity_out is not None and _inside(identity_out, data):
        raise VaultError("the identity must not be stored inside the data directory")
    if identity_out is not None and Path(identity_out).exists():
        raise VaultError(f"{identity_out} exists; refusing to overwrite it")
    if pin is not None and passphrase is None:
        raise VaultError("a PIN slot needs the recovery passphrase too (it unlocks a PIN lockout)")
    if isinstance(device, TpmDeviceSecret) and passphrase is None:
        raise VaultError("a TPM box needs the recovery passphrase (it seals the TPM's lockout authorisation)")
    for sub in ("keys", "calls", "run"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    if not shared_data():
        # owner-only, as every file and folder under it (the CLI's umask 077). On the appliance
        # (NOKBOX_SHARED_DATA=1) DATA is root's and its modes and ACLs are systemd-tmpfiles'
        # (a chmod there would fail, and one on DATA/keys would reset its ACL mask to nothing)
        os.chmod(data, 0o700)
        os.chmod(data / "keys", 0o700)
    identity, recipient = generate_identity()
    (data / "keys" / "recipient.txt").write_text(recipient + "\n")
    device.provision()
    (data / "keys" / "device-recovery.txt").write_text(recipient_of(device_recovery_identity(device)) + "\n")
    if passphrase is not None:
        seal_recovery(data, identity, passphrase, recovery_log_n)
    if isinstance(device, TpmDeviceSecret):
        take_tpm_lockout(data, device, passphrase, tpm_policy, recovery_log_n)
    from .signing import ensure_signer

    ensure_signer(data, device)  # the export-signing key (SSHSIG), sealed under the device secret
    if pin is not None:
        seal_pin_slot(data, identity, approver, pin, device, pin_log_n)
        PinGuard(data, device).reset(approver)
    from ..vaultdb import connect_vault

    if key_classes is None:
        key_classes = [default_key_class()]
    con = connect_vault(data)
    try:
        with con:
            epochs = [(cls, *new_epoch(data, con, time.time(), cls)) for cls in sorted(set(key_classes))]
    finally:
        con.close()
    if identity_out is not None:
        fd = os.open(identity_out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"# nokbox records identity, created {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
            f.write(f"# public key: {recipient}\n{identity}\n")
            for cls, eid, epoch_recipient, epoch_identity in epochs:
                f.write(f"# key epoch {eid}, class {cls} (calls until its first rotation): public key {epoch_recipient}\n")
                f.write(f"{epoch_identity}\n")
    connect(data / "index.sqlite").close()
    write_marker(data, device)
    return identity, recipient


def init_device(data: Path, cfg, *, config_given: bool) -> DeviceSecret | None:
    """The device secret a new box is initialised with: the configured one; on a development box
    (no config given, /etc/nokbox not writable) a key file or TPM blob beside the data directory
    (None: ``init_data_dir``'s default key file)."""
    from ..hal.devicekey import device_secret

    v = cfg.vault
    data = Path(data)
    device = device_secret(v.device_secret, v.device_key_file, tpm_blob=v.tpm_blob, tpm_tcti=v.tpm_tcti)
    if not config_given and v.device_secret == "file" and not os.access(Path(v.device_key_file).parent, os.W_OK):
        device = None
    if v.device_secret == "tpm" and not os.access(Path(v.tpm_blob).parent, os.W_OK):
        device = TpmDeviceSecret(data.parent / (data.name + "-device.tpm"), v.tpm_tcti)
    return device


def init_records_key(data: Path, cfg, passphrase: str, *, config_given: bool, identity_out: Path | None = None,
                     pin: str | None = None, approver: str = DEFAULT_APPROVER) -> str:
    """A new box's records key as ``nokbox init`` and the first-run wizard (the keeper) create it:
    the device secret, the identity sealed under ``passphrase``, the first key epoch of every key
    class the configured lines use. Returns the public recipient."""
    from .epochs import key_class_for

    v = cfg.vault
    channels = [ln.channel for ln in cfg.line] or range(cfg.audio.channels)
    _, recipient = init_data_dir(data, identity_out, init_device(data, cfg, config_given=config_given),
                                 passphrase=passphrase, pin=pin, approver=approver, pin_log_n=v.pin_scrypt_log_n,
                                 key_classes=[key_class_for(cfg, c) for c in channels],
                                 tpm_policy=(v.tpm_max_tries, v.tpm_recovery_s, v.tpm_lockout_recovery_s))
    return recipient


def write_marker(data: Path, device: DeviceSecret, created: float | None = None) -> None:
    """``nokbox.json``: which device secret this data directory was initialised with (never the secret)."""
    where = {"backend": device.name}
    if isinstance(device, FileDeviceSecret):
        where["path"] = str(Path(device.origin).resolve())  # the key file, not a service's credential copy
    elif isinstance(device, TpmDeviceSecret):
        where["path"] = str(Path(device.origin).resolve())
    if isinstance(device, TpmDeviceSecret):
        where["tcti"] = device.tcti
    tmp = Path(data) / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"format": 1, "created": created or time.time(), "device": where}) + "\n")
    os.replace(tmp, Path(data) / MARKER)


TPM_LOCKOUT_FILE = "tpm-lockout.age"


def take_tpm_lockout(data: Path, device: "TpmDeviceSecret", passphrase: str, policy: tuple[int, int, int],
                     log_n: int = RECOVERY_LOG_N) -> None:
    """Set the TPM's dictionary-attack policy and a new lockout authorisation, sealed under the recovery
    passphrase (``keys/tpm-lockout.age``, stock age scrypt): never kept in clear, never in the config."""
    import secrets as _secrets

    from .sealing import seal_with_passphrase, write_private

    auth = _secrets.token_bytes(32)
    max_tries, recovery_s, lockout_recovery_s = policy
    write_private(Path(data) / "keys" / TPM_LOCKOUT_FILE, seal_with_passphrase(auth.hex().encode(), passphrase, log_n),
                  replace=True)
    device.tpm.take_lockout(auth, max_tries=max_tries, recovery_s=recovery_s, lockout_recovery_s=lockout_recovery_s)


def reset_tpm_lockout(data: Path, device: DeviceSecret, passphrase: str) -> bool:
    """Lift the TPM's lockout with the authorisation sealed under the passphrase; False without a TPM."""
    from .sealing import open_with_passphrase

    tpm = getattr(device, "tpm", None)
    path = Path(data) / "keys" / TPM_LOCKOUT_FILE
    if tpm is None or not path.exists():
        return False
    auth = bytes.fromhex(open_with_passphrase(path.read_bytes(), passphrase).decode())
    tpm.reset_lockout(auth)
    return True


def device_for(data: Path) -> DeviceSecret:
    """The device-bound secret this data directory was initialised with."""
    from ..hal.devicekey import OtpDeviceSecret

    try:
        where = json.loads((Path(data) / MARKER).read_text()).get("device") or {}
    except FileNotFoundError:
        raise DataDirError(f"{data} is not an initialised nokbox data directory") from None
    if where.get("backend") == "otp":
        return OtpDeviceSecret()
    if where.get("backend") == "file" and where.get("path"):
        return file_secret(where["path"])
    if where.get("backend") == "tpm" and where.get("path"):
        return tpm_secret(where["path"], where.get("tcti") or "device:/dev/tpmrm0")
    raise DataDirError(f"{data}: the device secret is not recorded in {MARKER}")


def _inside(path: Path, data: Path) -> bool:
    return Path(path).resolve().is_relative_to(Path(data).resolve())


def require_initialised(data: Path) -> Path:
    """The records recipient file of an initialised data directory; DataDirError otherwise."""
    path = Path(data) / "keys" / "recipient.txt"
    if not (Path(data) / MARKER).exists() or not path.exists():
        raise DataDirError(f"{data} is not an initialised nokbox data directory (run: nokbox init --data {data})")
    return path


def load_recipients(data: Path, key_class: str | None = None) -> list[bytes]:
    """The public keys new recordings of a key class are encrypted to: its current epoch's recipient.

    The returned list is the one the writer keeps; ``RetentionMaintainer`` rotates epochs by
    replacing its contents in place. Creates the class's first epoch when it has none.
    """
    from .epochs import current_recipients

    data = Path(data)
    path = require_initialised(data)
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            parse_recipient(line)
            break
    else:
        raise VaultError(f"{path}: no recipient")
    return current_recipients(data, key_class=key_class)


# -- who can read: the API the approval workflow calls -----------------------------------
def marker_device(data: Path) -> dict:
    """The device record of ``nokbox.json`` (backend, path, tcti); empty when there is none yet."""
    try:
        return json.loads((Path(data) / MARKER).read_text()).get("device") or {}
    except (FileNotFoundError, ValueError):
        return {}


def box_device(data: Path, cfg) -> DeviceSecret:
    """The device-bound secret the config names; on a development box whose configured key
    file does not exist, the key file ``init`` put beside the data directory."""
    from ..hal.devicekey import device_secret

    v = cfg.vault
    data = Path(data)
    where = marker_device(data)  # a box whose secret moved into its TPM (keys move-to-tpm) follows its marker
    if where.get("backend") == "tpm" and where.get("path"):
        return tpm_secret(where["path"], v.tpm_tcti)
    dev = device_secret(v.device_secret, v.device_key_file, tpm_blob=v.tpm_blob, tpm_tcti=v.tpm_tcti)
    if isinstance(dev, TpmDeviceSecret):
        beside = data.parent / (data.name + "-device.tpm")
        return TpmDeviceSecret(beside, v.tpm_tcti) if not dev.path.exists() and beside.exists() else dev
    beside = data.parent / (data.name + "-device.key")
    if isinstance(dev, FileDeviceSecret) and not dev.path.exists() and beside.exists():
        return FileDeviceSecret(beside)
    return dev


def unlock_with_pin(data: Path, cfg, approver: str, pin: str, *, now: float | None = None) -> str:
    """The records identity, opened with the approver's PIN and this box's device secret.

    Raises WrongPin (tries left), PinRateLimited (retry_after), PinLockedOut, NoPinSlot or
    DeviceMismatch; every attempt is audited, the fifth wrong PIN locks the slot for good.
    """
    from .sealing import PinGuard

    return PinGuard(data, box_device(data, cfg), cfg.vault.pin_backoff_s).attempt(approver, pin, now)


def unlock_with_passphrase(data: Path, passphrase: str, *, actor: str = "operator", reason: str = "") -> str:
    """The records identity, opened with the recovery passphrase; audited either way."""
    from ..audit import AuditLog
    from .sealing import UnlockError, open_recovery

    audit = AuditLog(data)
    try:
        identity = open_recovery(data, passphrase)
    except (UnlockError, VaultError) as exc:
        audit.append("keys.unlock", actor=actor, role="operator", obj="records-identity", outcome="denied",
                     reason=str(exc), detail={"method": "passphrase"})
        raise
    audit.append("keys.unlock", actor=actor, role="operator", obj="records-identity", outcome="ok",
                 reason=reason, detail={"method": "passphrase"})
    return identity


def add_pin(data: Path, cfg, approver: str, passphrase: str, pin: str, *, actor: str = "operator") -> None:
    """Seal the identity for another approver (or a new PIN), proving the recovery passphrase."""
    from ..audit import AuditLog
    from .sealing import PinGuard, pin_slots, seal_pin_slot

    identity = unlock_with_passphrase(data, passphrase, actor=actor, reason=f"add PIN for {approver}")
    replaced = approver in pin_slots(data)
    device = box_device(data, cfg)
    seal_pin_slot(data, identity, approver, pin, device, cfg.vault.pin_scrypt_log_n)
    guard = PinGuard(data, device, cfg.vault.pin_backoff_s)
    with guard.locked_slot():
        guard.reset(approver)
    AuditLog(data).append("keys.pin.add", actor=actor, role="operator", obj=f"pin-slot:{approver}",
                          reason="PIN replaced" if replaced else "new approver PIN")


def clear_lockout(data: Path, cfg, approver: str, passphrase: str, *, actor: str = "operator") -> None:
    """Lift a PIN lockout with the recovery passphrase (audited)."""
    from .sealing import PinGuard

    unlock_with_passphrase(data, passphrase, actor=actor, reason=f"lift the PIN lockout of {approver}")
    device = box_device(data, cfg)
    PinGuard(data, device, cfg.vault.pin_backoff_s).clear(approver, actor, "recovery passphrase given")
    if reset_tpm_lockout(data, device, passphrase):
        from ..audit import AuditLog

        AuditLog(data).append("keys.tpm.lockout-reset", actor=actor, role="operator", obj="tpm",
                              reason=f"recovery passphrase given (lifting the PIN lockout of {approver})")


def move_to_tpm(data: Path, cfg, passphrase: str, device: TpmDeviceSecret, *, actor: str = "operator") -> list[str]:
    """Seal this box's existing device secret into its TPM (the same 32 bytes: masked numbers, crash
    journals and PIN slots keep opening), take the TPM's lockout under the recovery passphrase, and
    erase the old key file. Returns the approvers whose slots get their TPM factor at their next
    right PIN (a slot can be re-sealed only with its PIN, which the box never keeps)."""
    from ..audit import AuditLog
    from .epochs import erase_file
    from .sealing import pin_slots

    data = Path(data)
    old = device_for(data)
    if isinstance(old, TpmDeviceSecret):
        raise VaultError("the device secret is already sealed in the TPM")
    if device.path.exists():
        raise VaultError(f"{device.path} exists; refusing to replace a TPM blob")
    unlock_with_passphrase(data, passphrase, actor=actor, reason="move the device secret into the TPM")
    secret = old.read()
    device.provision(value=secret)
    if device.read() != secret:
        raise VaultError("the TPM did not give the device secret back; the old key file is kept")
    v = cfg.vault
    take_tpm_lockout(data, device, passphrase, (v.tpm_max_tries, v.tpm_recovery_s, v.tpm_lockout_recovery_s))
    try:
        created = json.loads((data / MARKER).read_text()).get("created")
    except (OSError, ValueError):
        created = None
    write_marker(data, device, created)
    erased = erase_file(old.path) if isinstance(old, FileDeviceSecret) else False
    pending = pin_slots(data)
    AuditLog(data).append("keys.device.move-to-tpm", actor=actor, role="operator", obj="device-secret",
                          reason=f"from {old.name} to the TPM at {device.tcti}",
                          detail={"old_file_erased": erased, "slots_to_upgrade": pending})
    return pending


def export_identity(data: Path, passphrase: str, out: Path | None, *, actor: str = "operator") -> str:
    """The age identity file (records + live epoch identities); written 0600 to ``out`` when given."""
    from ..audit import AuditLog
    from .epochs import export_text
    from .sealing import write_private

    data = Path(data)
    if out is not None and _inside(out, data):
        raise VaultError("the exported identity must not be written inside the data directory")
    if out is not None and Path(out).exists():
        raise VaultError(f"{out} exists; refusing to overwrite it")
    identity = unlock_with_passphrase(data, passphrase, actor=actor, reason="export identity")
    text = export_text(data, identity, recipient_of(identity))
    if out is not None:
        write_private(Path(out), text.encode())
    AuditLog(data).append("keys.export-identity", actor=actor, role="operator", obj="records-identity",
                          reason=f"written to {out}" if out is not None else "written to standard output")
    return text

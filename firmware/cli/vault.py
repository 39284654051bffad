"""``nokbox init`` secrets, ``nokbox keys ...`` and ``nokbox retention run``.

Every secret comes from a file (scripted installs, tests) or, without one and on a
terminal, from a getpass prompt. Secrets are never echoed into logs; files are 0600 and
never inside the data directory.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path

from ..config import load_config
from ..errors import NokboxError, VaultError

PASSPHRASE_HELP = ("file holding the recovery passphrase. If the file does not exist, a new 100-bit passphrase "
                   "is generated and written there (0600); if it exists, its passphrase is used. Without this "
                   "option the generated passphrase is shown once on the terminal")


def _inside(path: Path, data: Path) -> bool:
    return Path(path).resolve().is_relative_to(Path(data).resolve())


def read_secret(path: Path | None, what: str, data: Path, *, confirm: bool = False,
                required: bool = True) -> str | None:
    """A secret from ``path``, else from a getpass prompt on a terminal, else an error (or None)."""
    if path is not None:
        if _inside(path, data):
            raise VaultError(f"the {what} file must not be inside the data directory")
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise VaultError(f"{path}: no such file (the {what} file)") from None
        if not value:
            raise VaultError(f"{path}: the {what} file is empty")
        return value
    if not sys.stdin.isatty():
        if required:
            option = "--pin-file" if "PIN" in what else "--passphrase-file"
            raise VaultError(f"no terminal to ask for the {what}: give it in a file ({option})")
        return None
    value = getpass.getpass(f"{what}: ").strip()
    if confirm and getpass.getpass(f"{what} again: ").strip() != value:
        raise VaultError(f"the two {what} entries differ")
    return value


def _write_new_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
        f.flush()
        os.fsync(f.fileno())


def _actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def add_parsers(sub, common) -> None:
    """Register ``keys`` and ``retention`` (``init``'s secret options are added by ``init_options``)."""
    keys = sub.add_parser("keys", help="recovery passphrase, approver PINs, identity export")
    ksub = keys.add_subparsers(dest="keys_cmd", required=True)

    p = ksub.add_parser("add-pin", help="seal the records identity for an approver's PIN (needs the passphrase)")
    common(p)
    p.add_argument("--approver", default="approver", help="approver name (PIN slot), default 'approver'")
    p.add_argument("--passphrase-file", type=Path, help="file holding the recovery passphrase (else prompt)")
    p.add_argument("--pin-file", type=Path, help="file holding the new PIN (else prompt twice)")

    p = ksub.add_parser("check-pin", help="try an approver's PIN (counts as a try; 5 wrong ones lock it)")
    common(p)
    p.add_argument("--approver", default="approver", help="approver name (PIN slot)")
    p.add_argument("--pin-file", type=Path, help="file holding the PIN (else prompt)")

    p = ksub.add_parser("unlock", help="lift an approver's PIN lockout with the recovery passphrase")
    common(p)
    p.add_argument("--approver", default="approver", help="approver name (PIN slot)")
    p.add_argument("--passphrase-file", type=Path, help="file holding the recovery passphrase (else prompt)")

    p = ksub.add_parser("export-identity", help="write the age identities for offline safekeeping (audited)")
    common(p)
    p.add_argument("--passphrase-file", type=Path, help="file holding the recovery passphrase (else prompt)")
    p.add_argument("--out", type=Path, help="new file to write (0600, not inside the data directory); "
                   "default standard output")

    p = ksub.add_parser("signer", help="the box's export-signing key as an allowed_signers line, and its fingerprint")
    common(p)

    p = ksub.add_parser("move-to-tpm", help="seal the device secret into this box's TPM 2.0 (needs the passphrase)")
    common(p)
    p.add_argument("--passphrase-file", type=Path, help="file holding the recovery passphrase (else prompt)")

    p = ksub.add_parser("status", help="PIN slots, lockouts and key epochs (nothing secret)")
    common(p)
    p.add_argument("--json", action="store_true", help="print JSON")

    ret = sub.add_parser("retention", help="destroy recordings whose retention has ended")
    rsub = ret.add_subparsers(dest="retention_cmd", required=True)
    p = rsub.add_parser("run", help="crypto-erase expired, unheld recordings now (the daemon does it daily)")
    common(p)
    p.add_argument("--dry-run", action="store_true", help="list what would be destroyed; change nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def init_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--passphrase-file", type=Path, help=PASSPHRASE_HELP)
    p.add_argument("--pin-file", type=Path, help="file holding the first approver's PIN (else prompt on a "
                   "terminal; without either, no PIN is set: add one with 'nokbox keys add-pin')")
    p.add_argument("--approver", default="approver", help="name of the first approver's PIN slot")


def new_pin(pin: str, cfg, *, tpm: bool) -> str:
    """A new approver PIN checked against the policy: guessable ones refused; without a TPM, fewer than
    8 digits refused unless ``vault.allow_short_pin`` (the caller audits that use)."""
    from ..vault.sealing import check_pin, pin_strength_problem

    pin = check_pin(pin)
    problem = pin_strength_problem(pin, tpm=tpm, allow_short=cfg.vault.allow_short_pin,
                                   log_n=cfg.vault.pin_scrypt_log_n)
    if problem:
        raise VaultError(problem)
    return pin


def audit_short_pin(data, cfg, pin: str, approver: str, *, tpm: bool) -> None:
    from ..audit import AuditLog
    from ..vault.sealing import MIN_PIN_DIGITS_WITHOUT_TPM, human_duration, offline_search_s

    if tpm or len(pin.strip()) >= MIN_PIN_DIGITS_WITHOUT_TPM:
        return
    AuditLog(data).append("keys.pin.short", actor=_actor(), role="operator", obj=f"pin-slot:{approver}",
                          reason=f"{len(pin.strip())}-digit PIN without a TPM, allowed by vault.allow_short_pin "
                                 f"(offline search about {human_duration(offline_search_s(len(pin.strip())))})")


def init_secrets(args, cfg=None, *, tpm: bool = False) -> tuple[str, str | None, str]:
    """(passphrase, pin or None, how the passphrase was obtained) for ``nokbox init``."""
    from ..vault.sealing import check_passphrase, generate_passphrase

    data = args.data
    pf = args.passphrase_file
    if pf is not None and _inside(pf, data):
        raise VaultError("the passphrase file must not be inside the data directory")
    if pf is not None and pf.exists():
        passphrase, how = check_passphrase(read_secret(pf, "recovery passphrase", data)), "file"
    else:
        passphrase, how = generate_passphrase(), ("new-file" if pf is not None else "shown")
    pin = read_secret(args.pin_file, "approver PIN", data, confirm=True, required=False)
    if pin is not None:
        pin = new_pin(pin, cfg or load_config(args.config)[0], tpm=tpm)
    if how == "new-file":
        _write_new_secret(pf, passphrase)
    return passphrase, pin, how


def run(args) -> int:
    handler = {"add-pin": _add_pin, "check-pin": _check_pin, "unlock": _unlock, "move-to-tpm": _move_to_tpm, "signer": _signer,
               "export-identity": _export, "status": _status}
    if args.cmd == "retention":
        return _retention(args)
    return handler[args.keys_cmd](args)


def _need_box(data: Path) -> None:
    from ..vault.keys import MARKER

    if not (Path(data) / MARKER).exists():
        raise VaultError(f"{data} is not an initialised data directory")


def _add_pin(args) -> int:
    from ..vault.keys import add_pin, box_device

    _need_box(args.data)
    cfg, _ = load_config(args.config)
    tpm = box_device(args.data, cfg).name == "tpm"
    passphrase = read_secret(args.passphrase_file, "recovery passphrase", args.data)
    pin = new_pin(read_secret(args.pin_file, "approver PIN", args.data, confirm=True), cfg, tpm=tpm)
    add_pin(args.data, cfg, args.approver, passphrase, pin, actor=_actor())
    audit_short_pin(args.data, cfg, pin, args.approver, tpm=tpm)
    print(f"PIN set for approver {args.approver!r}")
    return 0


def _check_pin(args) -> int:
    from ..vault.keys import unlock_with_pin

    _need_box(args.data)
    cfg, _ = load_config(args.config)
    unlock_with_pin(args.data, cfg, args.approver, read_secret(args.pin_file, "approver PIN", args.data))
    print(f"PIN of {args.approver!r} is correct (the unlock was audited)")
    return 0


def _unlock(args) -> int:
    from ..vault.keys import clear_lockout

    _need_box(args.data)
    cfg, _ = load_config(args.config)
    clear_lockout(args.data, cfg, args.approver, read_secret(args.passphrase_file, "recovery passphrase", args.data),
                  actor=_actor())
    print(f"PIN lockout of {args.approver!r} lifted (audited)")
    return 0


def _export(args) -> int:
    from ..vault.keys import export_identity

    _need_box(args.data)
    passphrase = read_secret(args.passphrase_file, "recovery passphrase", args.data)
    text = export_identity(args.data, passphrase, args.out, actor=_actor())
    if args.out is None:
        sys.stdout.write(text)
    else:
        print(f"identities written to {args.out} (0600); keep it off the box", file=sys.stderr)
    return 0


def _status(args) -> int:
    from ..vault.sealing import PIN_DIR, PinGuard, pin_slots
    from ..vault.keys import box_device
    from ..vaultdb import connect_vault

    _need_box(args.data)
    cfg, _ = load_config(args.config)
    device = box_device(args.data, cfg)
    guard = PinGuard(args.data, device)
    tpm = None
    if getattr(device, "tpm", None) is not None:
        try:
            tpm = device.tpm.da_status()
        except NokboxError as exc:
            tpm = {"error": str(exc)}
    slots = []
    for name in pin_slots(args.data):
        try:
            st, tamper = guard.load(name)
            factor = slot_has_tpm_factor(args.data, name)
            slots.append({"approver": name, "failures": st.failures, "locked": st.locked or bool(tamper),
                          "reason": tamper or st.reason, "tpm_factor": factor,
                          "tpm_tries_left": (tpm["max_tries"] - tpm["counter"]) if factor and tpm and "error" not in tpm
                          else None,
                          "tpm_locked_out": bool(tpm.get("in_lockout")) if factor and tpm else None})
        except NokboxError as exc:
            slots.append({"approver": name, "error": str(exc)})
    con = connect_vault(args.data)
    try:
        epochs = [dict(r) for r in con.execute("SELECT id, recipient, created_utc, retired_utc, destroyed_utc"
                                               " FROM key_epochs ORDER BY id")]
    finally:
        con.close()
    out = {"recovery_sealed": (args.data / "keys" / "identity.recovery.age").exists(),
           "device": {"backend": device.name, "fingerprint": _fingerprint(device)}, "tpm": tpm,
           "pin_dir": str(args.data / "keys" / PIN_DIR), "pin_slots": slots, "key_epochs": epochs}
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
        return 0
    print(f"recovery passphrase seal: {'present' if out['recovery_sealed'] else 'MISSING'}")
    print(f"device secret: {device.name} ({out['device']['fingerprint']})")
    if tpm:
        print("TPM: " + (tpm.get("error") or (f"{tpm['max_tries'] - tpm['counter']} of {tpm['max_tries']} PIN tries "
                                              f"left, one back every {tpm['recovery_s']} s"
                                              + (", LOCKED OUT" if tpm["in_lockout"] else ""))))
    for s in slots:
        print(f"PIN {s['approver']}: " + (s.get("error") or ("LOCKED (" + s["reason"] + ")" if s["locked"]
                                                              else f"{s['failures']} wrong since last success"))
              + ("" if s.get("error") or tpm is None else
                 ("; TPM factor" if s["tpm_factor"] else "; no TPM factor yet (added at its next right PIN)")))
    for e in epochs:
        state = "destroyed " + e["destroyed_utc"] if e["destroyed_utc"] else (
            "retired " + e["retired_utc"] if e["retired_utc"] else "current")
        print(f"key epoch {e['id']}: {e['created_utc']} {state}")
    return 0


def _signer(args) -> int:
    from ..audit import AuditLog
    from ..vault.keys import box_device
    from ..vault.signing import PUBLIC, allowed_signers, ensure_signer, fingerprint

    _need_box(args.data)
    cfg, _ = load_config(args.config)
    existed = (args.data / "keys" / PUBLIC).exists()
    line = ensure_signer(args.data, box_device(args.data, cfg))
    if not existed:  # a box initialised before export signing: its key is made now
        AuditLog(args.data).append("keys.signer.create", actor=_actor(), role="operator", obj="export-signer",
                                   reason="export-signing key created", detail={"fingerprint": fingerprint(line)})
    print(allowed_signers(line))
    print(fingerprint(line))
    return 0


def _move_to_tpm(args) -> int:
    from ..hal.devicekey import TpmDeviceSecret
    from ..vault.keys import move_to_tpm

    _need_box(args.data)
    cfg, _ = load_config(args.config)
    blob = Path(cfg.vault.tpm_blob)
    if not os.access(blob.parent, os.W_OK):  # a development box: beside the data directory, as init does
        blob = args.data.parent / (args.data.name + "-device.tpm")
    passphrase = read_secret(args.passphrase_file, "recovery passphrase", args.data)
    pending = move_to_tpm(args.data, cfg, passphrase, TpmDeviceSecret(blob, cfg.vault.tpm_tcti), actor=_actor())
    print(f"device secret sealed in the TPM ({blob}); the old key file was erased")
    print("set [vault] device_secret = \"tpm\" in the config; until then the box follows its marker")
    for name in pending:
        print(f"PIN slot {name!r}: gets its TPM factor at its next right PIN (or: nokbox keys add-pin)")
    return 0


def _fingerprint(device) -> str:
    try:
        return device.fingerprint()
    except NokboxError as exc:
        return f"unavailable: {exc}"


def slot_has_tpm_factor(data, approver: str) -> bool:
    from ..vault.sealing import slot_path

    try:
        return "tpm" in json.loads(slot_path(data, approver).read_text())
    except (OSError, ValueError):
        return False


def _retention(args) -> int:
    from ..vault.retention import run_retention

    _need_box(args.data)
    cfg, _ = load_config(args.config)
    rep = run_retention(args.data, cfg, dry_run=args.dry_run, by=_actor())
    if args.json:
        print(json.dumps({"dry_run": rep.dry_run, "destroyed": rep.destroyed, "held": rep.held,
                          "key_epochs_destroyed": rep.epochs_destroyed, "trim": rep.trim, "errors": rep.errors},
                         ensure_ascii=False))
    else:
        verb = "would destroy" if rep.dry_run else "destroyed"
        for d in rep.destroyed:
            print(f"{verb} call {d['call']} (line {d['line']}, {d['start']}): {d['reason']}")
        for e in rep.epochs_destroyed:
            print(f"{verb} key epoch {e}")
        for c in rep.held:
            print(f"kept call {c}: expired but on hold")
        print(f"{len(rep.destroyed)} call(s) {verb}, {len(rep.held)} held, {len(rep.epochs_destroyed)} key epoch(s)"
              + (f"; trim: {rep.trim}" if rep.trim else ""))
        for e in rep.errors:
            print(f"error: {e}", file=sys.stderr)
    return 1 if rep.errors else 0

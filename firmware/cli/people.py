"""``nokbox user …`` and ``nokbox audit …``: root-only administrative commands with a sign-in.

Root on the box is needed to reach the data directory; the sign-in (``--as NAME`` with
``--as-password-file F`` or a prompt) says which person acts and checks their role, exactly as
the web page does, and every refusal is written to the audit log.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import sys
from pathlib import Path

from ..people.accounts import ROLES, Accounts, AuthError, PasswordPolicyError, User
from ..audit import AuditError, AuditLog
from ..config import load_config
from ..people.review import KST
from ..syslog import SyslogForwarder

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_REFUSED = 4
EXIT_BAD_LOG = 5
EXIT_KEY_MISTYPED = 2  # audit verify: the key's text has a typo (its checksum fails); nothing was checked
EXIT_WRONG_KEY = 6  # audit verify: a well-formed key, not this log's (the log is not blamed)
VERIFY_KEY_REASON = {"mistyped": "verification key mistyped (checksum)", "wrong_key": "not this log's verification key"}

# What every command needs. "service": root on the box, no personal data (the recorder's own
# commands); None: no sign-in possible yet (first run); otherwise the permission checked after sign-in.
CLI_PERMISSIONS: dict[str, str | None] = {
    "init": "service", "run": "service", "recorder": "service", "keeper": "service", "web": "service",
    "firstboot": "service",
    "replay": "service", "calls": "service", "check-config": "service",
    "status": "service", "recover": "service", "verify": "service", "analyze": "service",
    # decrypting needs the records identity file itself (the approver's secret); it is audited
    "decrypt": "service",
    "notice check": "service", "notice set": "config.edit", "notice upload": "config.edit",
    # the vault's key commands are gated by the secret they need (recovery passphrase or PIN)
    "keys add-pin": "service", "keys check-pin": "service", "keys unlock": "service",
    "keys export-identity": "service", "keys status": "service", "keys move-to-tpm": "service", "keys signer": "service",
    "retention run": "service",
    # the release workflow (firmware/cli/release.py); the keeper checks again what it opens
    "request new": "request.create", "request list": "requests.view", "request show": "requests.view",
    "request search": "request.search", "request attach": "request.search", "request submit": "request.create",
    "request approve": "request.approve", "request reject": "request.reject", "request export": "request.export",
    "request receipt": "requests.view", "request close": "request.create", "request destroyed": "request.create",
    "ledger": "ledger.view",
    "user setup": None,
    "user add": "users.manage", "user list": "users.manage", "user disable": "users.manage",
    "user restrict": "users.manage", "user enable": "users.manage", "user roles": "users.manage",
    "user unlock": "users.manage", "user revoke": "users.manage", "user password": "users.manage",
    "user reset-admin": None,  # root at the console, for the last administrator only
    "audit verify": "audit.verify", "audit export": "audit.export", "audit checkpoint": "audit.verify",
}


def add_parsers(sub, common) -> None:
    """Add ``user`` and ``audit`` to the ``nokbox`` parser."""

    def cmd(group, name: str, help: str, *, signin: bool = True, target: bool = False, reason: bool = False):
        p = group.add_parser(name, help=help)
        common(p)
        if signin:
            p.add_argument("--as", dest="as_user", default=os.environ.get("NOKBOX_AS"),
                           help="the person signing in for this command (default $NOKBOX_AS)")
            p.add_argument("--as-password-file", type=Path, help="file holding that person's password (else a prompt)")
        if target:
            p.add_argument("name", help="the account")
        if reason:
            p.add_argument("--reason", required=True, help="why (written to the audit log)")
        return p

    user = sub.add_parser("user", help="accounts: first-run set-up, add, restrict, disable, roles (root only)")
    us = user.add_subparsers(dest="user_cmd", required=True)
    p = cmd(us, "setup", "first run: create the first administrator and show the audit key once", signin=False)
    p.add_argument("--name", required=True)
    p.add_argument("--display", default="")
    p.add_argument("--role", action="append", default=[], choices=ROLES, help="further roles besides admin")
    p.add_argument("--password-file", type=Path, help="file holding the new password (else a prompt)")
    p = cmd(us, "add", "create an account", target=True)
    p.add_argument("--display", default="")
    p.add_argument("--role", action="append", required=True, choices=ROLES)
    p.add_argument("--password-file", type=Path, help="file holding the new account's password (else a prompt)")
    cmd(us, "list", "list accounts")
    cmd(us, "disable", "disable an account (no sign-in)", target=True, reason=True)
    p = cmd(us, "restrict", "restrict an account (every role suspended; seed 001 art. 9)", target=True, reason=True)
    p.add_argument("--ground", type=int, choices=(1, 2, 3, 4), default=4, help="the art. 9 item the restriction rests on")
    p.add_argument("--notice-pdf", type=Path, help="write the written notice (사용 제한 통지서, A4 PDF) here")
    cmd(us, "enable", "make an account active again", target=True, reason=True)
    p = cmd(us, "roles", "set an account's roles", target=True, reason=True)
    p.add_argument("--role", action="append", required=True, choices=ROLES)
    cmd(us, "unlock", "lift a sign-in or PIN lock", target=True, reason=True)
    cmd(us, "revoke", "end every session of an account", target=True)
    p = cmd(us, "password", "reset an account's password", target=True)
    p.add_argument("--password-file", type=Path)
    p = cmd(us, "reset-admin", "the last administrator's lost password: an offline reset by root at the console "
            "(no sign-in; audited; opens no recording)", signin=False, target=True, reason=True)
    p.add_argument("--password-file", type=Path, help="file holding the new password (else a prompt)")

    audit = sub.add_parser("audit", help="verify and export the audit trail (root only)")
    aus = audit.add_subparsers(dest="audit_cmd", required=True)
    p = cmd(aus, "verify", "prove the whole log intact, or name the first bad entry (exit 5)")
    p.add_argument("--key", help="the auditor's verification key (proves no entry was forged)")
    p.add_argument("--key-file", type=Path, help="file holding the verification key")
    p.add_argument("--checkpoint", action="append", default=[],
                   help="a checkpoint line (or a file of them) from a review, export or syslog")
    p = cmd(aus, "export", "CSV of the entries between two days (KST) and a manifest")
    p.add_argument("--from", dest="frm", required=True, help="first day, YYYY-MM-DD")
    p.add_argument("--to", required=True, help="last day, YYYY-MM-DD")
    p.add_argument("--out", type=Path, default=Path("."), help="directory for the CSV and manifest")
    cmd(aus, "checkpoint", "seal the log and print a signed checkpoint")


def _read_secret(path: Path | None, prompt: str) -> str:
    if path is not None:
        return path.read_text(encoding="utf-8").splitlines()[0] if path.read_text(encoding="utf-8") else ""
    if not sys.stdin.isatty():
        raise AuthError(f"{prompt}: give a file (…-password-file) or run on a terminal", "no_password")
    return getpass.getpass(prompt + ": ")


def _context(args) -> tuple[Accounts, AuditLog, object]:
    cfg, _ = load_config(args.config)
    audit = AuditLog(args.data, every=cfg.audit.seal_every, on_seal=SyslogForwarder.from_config(cfg.audit))
    return Accounts(args.data, cfg.auth, audit), audit, cfg


def _require_root(cmd: str) -> None:
    if os.geteuid() != 0:
        raise AuthError(f"'nokbox {cmd}' must be run as root (sudo)", "not_root")


def _signin(acc: Accounts, args, perm: str) -> User:
    if not args.as_user:
        raise AuthError("sign in with --as NAME (and --as-password-file F, or type it)", "no_user")
    pw = _read_secret(args.as_password_file, f"password for {args.as_user}")
    user = acc.authenticate(args.as_user, pw, source="cli", purpose="cli sign-in")
    sub = next(getattr(args, a) for a in ("user_cmd", "audit_cmd", "notice_cmd") if getattr(args, a, None))
    acc.authorize(user, perm, obj=f"nokbox {args.cmd} {sub}", source="cli")
    return user


def signed_in(args, key: str) -> tuple[User, AuditLog]:
    """Root plus a sign-in with the permission ``CLI_PERMISSIONS[key]``; raises AuthError."""
    _require_root(key)
    acc, audit, _ = _context(args)
    return _signin(acc, args, CLI_PERMISSIONS[key]), audit


def add_signin_args(p) -> None:
    """The --as / --as-password-file options of a command that needs a sign-in."""
    p.add_argument("--as", dest="as_user", default=os.environ.get("NOKBOX_AS"),
                   help="the person signing in for this command (default $NOKBOX_AS)")
    p.add_argument("--as-password-file", type=Path, help="file holding that person's password (else a prompt)")


def cmd_user(args) -> int:
    key = f"user {args.user_cmd}"
    try:
        _require_root(key)
        acc, audit, cfg = _context(args)
        if args.user_cmd == "setup":
            pw = _read_secret(args.password_file, f"new password for {args.name}")
            user, vkey = acc.setup_first(args.name, pw, ["admin", *args.role], source="cli", display=args.display)
            print(f"created {user.name} ({', '.join(user.roles)})")
            if vkey:
                print("audit verification key — shown once, not kept on the box; hand it to the auditor:")
                print(vkey)
            print(f"checkpoint signing key fingerprint: {audit.signer_id()}")
            return EXIT_OK
        if args.user_cmd == "reset-admin":
            pw = _read_secret(args.password_file, f"new password for {args.name}")
            acc.console_reset(args.name, pw, args.reason)
            print(f"{args.name}: password reset at the console (audited); sign-in locks lifted, sessions ended")
            return EXIT_OK
        by = _signin(acc, args, CLI_PERMISSIONS[key])
        if args.user_cmd == "add":
            pw = _read_secret(args.password_file, f"new password for {args.name}")
            u = acc.create(args.name, pw, args.role, by=by, source="cli", display=args.display)
            print(f"created {u.name} ({', '.join(u.roles)})")
        elif args.user_cmd == "list":
            for u in acc.users():
                lock = " locked" if u.locked_until > acc.clock.wall() else ""
                print(f"{u.name:<20} {','.join(u.roles):<40} {u.state}{lock}"
                      + (f"  ({u.state_reason})" if u.state_reason else ""))
        elif args.user_cmd in ("disable", "restrict", "enable"):
            state = {"disable": "disabled", "restrict": "restricted", "enable": "active"}[args.user_cmd]
            u = acc.set_state(args.name, state, args.reason, by=by, source="cli",
                              ground=getattr(args, "ground", None) if state == "restricted" else None)
            print(f"{u.name}: {u.state} ({u.state_reason})")
            if state == "restricted" and getattr(args, "notice_pdf", None):
                from ..release.forms import notice_input, restriction_notice_pdf

                cfg = _context(args)[2]
                args.notice_pdf.write_bytes(restriction_notice_pdf(notice_input(
                    u, args.ground, args.reason, by.name, acc.clock.wall(), office=cfg.release.office,
                    head=cfg.release.head_title)))
                print(f"사용 제한 통지서 · written notice: {args.notice_pdf}")
        elif args.user_cmd == "roles":
            u = acc.set_roles(args.name, args.role, args.reason, by=by, source="cli")
            print(f"{u.name}: {', '.join(u.roles)}")
        elif args.user_cmd == "unlock":
            acc.unlock(args.name, args.reason, by=by, source="cli")
            print(f"{args.name}: unlocked")
        elif args.user_cmd == "revoke":
            n = acc.revoke_sessions(args.name, by=by, reason="revoked from the command line", source="cli")
            print(f"{args.name}: {n} session(s) ended")
        elif args.user_cmd == "password":
            acc.set_password(args.name, _read_secret(args.password_file, f"new password for {args.name}"), by=by,
                             source="cli")
            print(f"{args.name}: password reset; sessions ended")
        return EXIT_OK
    except AuthError as exc:
        print(f"nokbox {key}: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except PasswordPolicyError as exc:
        print(f"nokbox {key}: {exc}", file=sys.stderr)
        return EXIT_ERROR


def cmd_audit(args) -> int:
    key = f"audit {args.audit_cmd}"
    try:
        offline = args.audit_cmd == "verify" and not (args.data / "accounts.sqlite").exists()
        if not offline:
            _require_root(key)
        if offline:
            audit, by = AuditLog(args.data), None  # a copy of DATA/audit on the auditor's own machine
        else:
            acc, audit, cfg = _context(args)
            by = _signin(acc, args, CLI_PERMISSIONS[key])
        if args.audit_cmd == "verify":
            return _verify(args, audit, by)
        if args.audit_cmd == "checkpoint":
            print(audit.checkpoint(actor=by.name, role="auditor", source="cli", purpose="cli checkpoint").line())
            return EXIT_OK
        return _export(args, audit, by)
    except AuthError as exc:
        print(f"nokbox {key}: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED


def _verify(args, audit: AuditLog, by: User | None) -> int:
    vkey = args.key or (args.key_file.read_text().strip() if args.key_file else None)
    cps: list[str] = []
    for c in args.checkpoint:
        p = Path(c)
        if "NOKBOX-CHECKPOINT" not in c and p.exists():
            cps += [ln for ln in p.read_text().splitlines() if "NOKBOX-CHECKPOINT" in ln]
        else:
            cps.append(c)
    try:
        rep = audit.verify_report(key=vkey, checkpoints=cps)
    except AuditError as exc:
        # three answers: a typo in the key (nothing was checked), a key that is not this log's, a forged log
        kind = exc.outcome
        if by is not None:  # the key's own text never goes into the log, not even a mistyped one
            audit.append("audit.verify", actor=by.name, role="auditor", outcome="failed" if kind == "forged" else kind,
                         reason=str(exc)[:300] if kind == "forged" else VERIFY_KEY_REASON[kind], source="cli")
        if kind == "mistyped":
            print(f"nokbox audit verify: {exc}", file=sys.stderr)
            return EXIT_KEY_MISTYPED
        if kind == "wrong_key":
            print(f"WRONG KEY: {exc}")
            return EXIT_WRONG_KEY
        print(f"감사 기록 위조·손상 · AUDIT LOG NOT INTACT: {exc}")
        return EXIT_BAD_LOG
    if by is not None:
        audit.append("audit.verify", actor=by.name, role="auditor", source="cli",
                     detail={"entries": rep.entries, "with_key": rep.macs_checked, "checkpoints": rep.checkpoints_checked})
    print(rep.summary())
    return EXIT_OK


def _export(args, audit: AuditLog, by: User) -> int:
    from ..audit import export_manifest

    frm, to = dt.date.fromisoformat(args.frm), dt.date.fromisoformat(args.to)
    cp = audit.checkpoint(actor=by.name, role="auditor", source="cli", purpose=f"export {frm}..{to}")
    text, rows = audit.export_csv(frm, to, KST)
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"nokbox-audit-{frm}-{to}.csv"
    (args.out / name).write_bytes(text.encode("utf-8"))  # exactly the bytes the manifest digests
    manifest = export_manifest(name, text, rows, frm, to, cp, by.name)
    (args.out / f"nokbox-audit-{frm}-{to}.manifest.txt").write_text(manifest, encoding="utf-8")
    audit.append("audit.export", actor=by.name, role="auditor", obj=f"{frm}..{to}", source="cli",
                 detail={"rows": rows, "checkpoint": cp.line()})
    print(manifest, end="")
    return EXIT_OK

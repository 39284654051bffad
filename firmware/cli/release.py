"""``nokbox request …`` and ``nokbox ledger``: the release workflow from the shell (a contract: scripts
and acceptance checks call these). Every command signs in with ``--as NAME`` and talks to the
running key keeper (``nokbox keeper`` / ``nokbox run``) over its socket, as the page does: grants
live in the keeper, never in this process. Every refusal exits non-zero with a one-line
Korean/English reason and is an audit entry."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..audit import AuditLog
from ..config import load_config
from ..errors import NokboxError
from ..syslog import SyslogForwarder
from .people import _read_secret, add_signin_args

EXIT_FORM = 2


def add_parsers(sub, common) -> None:
    def cmd(group, name: str, help: str):
        p = group.add_parser(name, help=help)
        common(p)
        add_signin_args(p)
        return p

    req = sub.add_parser("request", help="release requests (열람·제공 신청): new, search, attach, submit, approve, export")
    rs = req.add_subparsers(dest="request_cmd", required=True)
    p = cmd(rs, "new", "enter a request from a JSON form (form 1); prints its number on the last line")
    p.add_argument("--form", type=Path, required=True, help="the form as JSON (keys: see docs/release.md)")
    p = cmd(rs, "list", "requests, newest first")
    p.add_argument("--mine", action="store_true", help="only the requests I entered")
    p.add_argument("--json", action="store_true")
    p = cmd(rs, "show", "one request with its calls, approvals and uses (its personal details: audited)")
    p.add_argument("number")
    p.add_argument("--json", action="store_true")
    p = cmd(rs, "search", "the calls inside the request's window and lines (audited)")
    p.add_argument("number")
    p.add_argument("--json", action="store_true", help="one JSON object per candidate call")
    p = cmd(rs, "attach", "attach found calls (each is held from retention until the request closes)")
    p.add_argument("number")
    p.add_argument("calls", nargs="+", type=int)
    p.add_argument("--reason", default="", help="why a call matching neither of the request's numbers is attached")
    p = cmd(rs, "submit", "send the request for approval")
    p.add_argument("number")
    p = cmd(rs, "approve", "approve with your PIN (the one PIN of your keeper slot)")
    p.add_argument("number")
    p.add_argument("--pin-file", type=Path, required=True)
    p.add_argument("--comment", default="")
    p = cmd(rs, "reject", "reject with a comment")
    p.add_argument("number")
    p.add_argument("--comment", required=True)
    p = cmd(rs, "export", "write the approved request's package (a signed AES-256 ZIP) to a folder or a stick image")
    p.add_argument("number")
    to = p.add_mutually_exclusive_group(required=True)
    to.add_argument("--to", type=Path, help="a folder (for example a mounted stick)")
    to.add_argument("--image", type=Path, help="a FAT32 or exFAT filesystem image presented as the stick")
    p.add_argument("--password-out", type=Path, help="write the ZIP password here (0600, refused inside DATA) "
                                                     "instead of showing it once on the terminal")
    p = cmd(rs, "receipt", "the handover receipt (form 2) as PDF")
    p.add_argument("number")
    p.add_argument("--pdf", type=Path, required=True)
    p = cmd(rs, "close", "close a request (withdrawn, listened, or another reason); its holds end")
    p.add_argument("number")
    p.add_argument("--reason", required=True)
    p.add_argument("--state", choices=("closed", "withdrawn", "listened"), default="closed")
    p = cmd(rs, "destroyed", "record the recipient's report that the copy was destroyed (art. 10(3))")
    p.add_argument("number")
    p.add_argument("--date", required=True, help="when (ISO date or date-time, KST)")
    p.add_argument("--note", default="")

    p = sub.add_parser("ledger", help="the management ledger (form 3) of a period, as CSV or PDF")
    common(p)
    add_signin_args(p)
    p.add_argument("--from", dest="frm", required=True, help="first day, YYYY-MM-DD (KST)")
    p.add_argument("--to", required=True, help="last day, YYYY-MM-DD (KST)")
    p.add_argument("--kind", choices=("listen", "provide"))
    p.add_argument("--officer")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--csv", action="store_true", help="CSV on standard output")
    out.add_argument("--pdf", type=Path, help="PDF file")


EXIT_REFUSED = 4  # as the other signed-in commands (cli/people.py)


def _context(args):
    from ..people.accounts import Accounts
    from ..release.requests import Requests
    from ..vault.keeper import KeeperClient

    cfg, _ = load_config(args.config)
    audit = AuditLog(args.data, every=cfg.audit.seal_every, on_seal=SyslogForwarder.from_config(cfg.audit))
    acc = Accounts(args.data, cfg.auth, audit)
    return cfg, audit, acc, Requests(args.data, cfg, audit, KeeperClient(args.data, cfg))


def _signin(acc, args, perm: str):
    from ..people.accounts import AuthError

    if not args.as_user:
        raise AuthError("--as NAME 으로 로그인하십시오 · sign in with --as NAME (and --as-password-file F)", "no_user")
    pw = _read_secret(args.as_password_file, f"password for {args.as_user}")
    user = acc.authenticate(args.as_user, pw, source="cli", purpose="cli sign-in")
    acc.authorize(user, perm, obj=f"nokbox {args.cmd} {getattr(args, 'request_cmd', '')}".strip(), source="cli")
    return user


def _out(obj) -> None:
    print(json.dumps(obj, ensure_ascii=False, sort_keys=True))


def cmd_request(args) -> int:
    from ..release.requests import FormError, validate_form
    from .people import CLI_PERMISSIONS

    cfg, audit, acc, reqs = _context(args)
    c = args.request_cmd
    try:
        user = _signin(acc, args, CLI_PERMISSIONS[f"request {c}"])
    except NokboxError as exc:
        print(f"nokbox request {c}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    me = user.name
    try:
        if c == "new":
            try:
                form = json.loads(args.form.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                audit.append("request.create", actor=me, role="officer", obj="request:-", outcome="refused",
                             reason="form is not readable JSON", source="cli")
                print(f"nokbox request new: form: 읽을 수 없는 JSON입니다 · not readable JSON ({exc})", file=sys.stderr)
                return EXIT_FORM
            try:
                checked = validate_form(form, cfg=cfg, now=reqs.clock.wall(),
                                        read_file=lambda p: Path(p).expanduser().read_bytes())
            except FormError as exc:
                audit.append("request.create", actor=me, role="officer", obj="request:-", outcome="refused",
                             reason=f"form: {exc.key}", source="cli")
                print(f"nokbox request new: {exc}", file=sys.stderr)
                return EXIT_FORM
            number = reqs.create(checked, actor=me, source="cli")
            print(f"신청이 접수되었습니다 · request entered (search next: nokbox request search {number})")
            print(number)
        elif c == "list":
            for r in reqs.list(officer=me if args.mine else None):
                if args.json:
                    _out(r)
                else:
                    print(f"{r['number']}  {r['kind_label']}  {r['state_label']:<8} {r['officer']:<16} "
                          f"{r['call_from_local']} ~ {r['call_to_local']}")
        elif c == "show":
            r = reqs.get(args.number, actor=me, source="cli")
            if args.json:
                _out(r)
            else:
                d = r.get("details") or {}
                who = d.get("requester") or {}
                print(f"{r['number']}  {r['kind_label']} · {r['state_label']} ({r['state']})")
                print(f"  신청인 · requester: {who.get('name', '')}  근거 · ground: 제{r['legal_ground']}호")
                print(f"  통화 기간 · window: {r['call_from_local']} ~ {r['call_to_local']} KST")
                for x in r["calls"]:
                    mark = "" if x["matches"] else "  (다른 당사자 · other parties: " + x["reason"] + ")"
                    print(f"  call {x['call_id']}: line {x['line'] + 1} {x['line_name']} {x['start_utc']} "
                          f"{x['duration']:.0f} s{mark}")
                for a in r["approvals"]:
                    print(f"  {a['stage']}: {a['approver']} {a['decision']} {a['time_utc']} {a['comment']}")
        elif c == "search":
            rows = reqs.search(args.number, actor=me, source="cli")
            for x in rows:
                rec = {"id": x["id"], "line": x["line"] + 1, "start": x["start"], "duration": x["duration"],
                       "masked": x["masked"], "matches": x["matches"]}
                if args.json:
                    _out(rec)
                else:
                    nums = " ".join(x["masked"].values()) if x["masked"] else "-"
                    print(f"{x['id']:>8}  line {x['line'] + 1}  {x['start_local']}  {x['duration']:>7.1f} s  {nums}"
                          f"  {'일치 · matches' if x['matches'] else '불일치 · other parties'}")
            if not args.json:
                print(f"{len(rows)} call(s)")
        elif c == "attach":
            got = reqs.attach(args.number, args.calls, actor=me, reason=args.reason, source="cli")
            print(f"{len(got)} call(s) attached and held · 통화 {len(got)}건 첨부(보존 유지)")
        elif c == "submit":
            reqs.submit(args.number, actor=me, source="cli")
            print("결재를 요청했습니다 · sent for approval")
        elif c in ("approve", "reject"):
            pin = _read_secret(args.pin_file, "PIN") if c == "approve" else ""
            res = reqs.decide(args.number, actor=me, decision="approved" if c == "approve" else "rejected", pin=pin,
                              comment=args.comment, source="cli")
            if c == "reject":
                print("반려했습니다 · rejected")
            elif res["final"]:
                print(f"승인했습니다 · approved until {res['expires']}")
            else:
                print("팀장 검토를 마쳤습니다 · reviewed (the head's approval is next)")
        elif c == "export":
            return _export(args, cfg, audit, reqs, me)
        elif c == "receipt":
            _receipt(args, reqs, me, audit)
        elif c == "close":
            reqs.close(args.number, actor=me, reason=args.reason, state=args.state, source="cli")
            print("종결했습니다 · closed")
        elif c == "destroyed":
            reqs.record_destruction(args.number, actor=me, when=args.date, note=args.note, source="cli")
            print("파기 확인을 기록했습니다 · destruction recorded")
    except FormError as exc:
        print(f"nokbox request {c}: {exc}", file=sys.stderr)
        return EXIT_FORM
    except NokboxError as exc:
        print(f"nokbox request {c}: {exc}", file=sys.stderr)
        return 1
    return 0


def _checkpoint(audit: AuditLog, me: str, number: str):
    return lambda: audit.checkpoint(actor=me, role="officer", purpose=f"export {number}").line()


def _export(args, cfg, audit, reqs, me: str) -> int:
    from ..release.export import FolderTarget, StickTarget, export

    pw_out = args.password_out
    if pw_out is not None:
        if pw_out.resolve().is_relative_to(Path(args.data).resolve()):
            audit.append("request.export", actor=me, role="officer", obj=f"request:{args.number}", outcome="refused",
                         reason="password file inside DATA", source="cli")
            print("nokbox request export: 암호 파일은 데이터 폴더 밖에 두십시오 · --password-out must be outside "
                  "the data directory", file=sys.stderr)
            return 1
        if pw_out.exists():
            print(f"nokbox request export: {pw_out} 이(가) 이미 있습니다 · already exists", file=sys.stderr)
            return 1
    if args.to is not None:
        target = FolderTarget(args.to)
    else:
        from ..hal.usb import usb_media

        media = usb_media("image", images=[args.image])
        sticks = media.sticks()
        if not sticks:
            print(f"nokbox request export: {args.image}: USB 이미지로 쓸 수 없습니다 · not a usable stick image",
                  file=sys.stderr)
            return 1
        target = StickTarget(media, sticks[0].id)
    last = [""]

    def progress(phase: str, done: int, total: int) -> None:
        if sys.stderr.isatty():
            word = {"pack": "패키지 작성 · packing", "write": "쓰는 중 · writing", "verify": "확인 중 · verifying"}[phase]
            line = f"\r{word} {done / 1e6:.1f} / {total / 1e6:.1f} MB"
            if line != last[0]:
                sys.stderr.write(line)
                last[0] = line

    res = export(reqs, args.number, target, actor=me, checkpoint=_checkpoint(audit, me, args.number), progress=progress,
                 source="cli")
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    print(f"제공 완료 · delivered: {res.name} ({res.size} bytes, SHA-256 {res.sha256}) to {target.describe()}")
    if pw_out is not None:
        fd = os.open(pw_out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(res.password + "\n")
        print(f"ZIP 암호를 {pw_out} 에 썼습니다 (0600) · the ZIP password is in {pw_out}")
    else:
        print("ZIP 암호 (한 번만 표시됩니다; 수령인에게 따로 전달하십시오) · ZIP password, shown once:")
        print(res.password)
    return 0


def _receipt(args, reqs, me: str, audit) -> None:
    from ..release.export import receipt_input

    r = reqs.get(args.number, actor=me, source="cli")
    from ..release import forms  # (ReportLab: only when a form is printed)

    signer = reqs.keeper.signer(me)
    done = [u for u in r["uses"] if u["kind"] == "export" and u["outcome"] == "ok" and u["call_id"] is None]
    delivered = None
    files = []
    if done:
        d = done[-1]["detail"]
        files = d.get("files") if isinstance(d.get("files"), list) else []
        delivered = {"time": done[-1]["time_utc"], "medium": "USB" if d.get("medium") == "usb" else d.get("medium", ""),
                     "package": d.get("package", ""), "bytes": d.get("bytes", 0), "recipient": (r.get("details") or {}).get(
                         "requester", {}).get("name", "")}
    pdf = forms.receipt_pdf(receipt_input(r, signer=signer["fingerprint"], checkpoint=done[-1]["detail"].get("checkpoint", "")
                                          if done else "", rows=files, delivered=delivered, office=reqs.cfg.release.office))
    args.pdf.write_bytes(pdf)
    audit.append("request.receipt", actor=me, role="officer", obj=f"request:{r['number']}", source="cli",
                 detail={"pdf": args.pdf.name})
    print(f"{args.pdf} ({len(pdf)} bytes)")


def cmd_ledger(args) -> int:
    from ..release import forms
    from ..release.requests import FormError, kst_day_bounds

    cfg, audit, acc, reqs = _context(args)
    try:
        user = _signin(acc, args, "ledger.view")
    except NokboxError as exc:
        print(f"nokbox ledger: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        start, end = kst_day_bounds(args.frm, args.to)
        rows = reqs.ledger(actor=user.name, start=start, end=end, kind=args.kind, officer=args.officer, source="cli")
    except FormError as exc:
        print(f"nokbox ledger: {exc}", file=sys.stderr)
        return EXIT_FORM
    except NokboxError as exc:
        print(f"nokbox ledger: {exc}", file=sys.stderr)
        return 1
    if args.csv:
        sys.stdout.buffer.write(forms.ledger_csv(rows, period=(args.frm, args.to)))
        sys.stdout.flush()
    else:
        args.pdf.write_bytes(forms.ledger_pdf(rows, period=(args.frm, args.to), office=cfg.release.office))
        print(f"{args.pdf}: {len(rows)} row(s)")
    return 0


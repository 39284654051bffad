"""The first-run wizard: nothing else opens until, in order, the first administrator exists, the
records key is created (its recovery passphrase shown once, printed, typed back), the first
approver has a PIN, and the audit verification key has been shown once for the auditor.

The step is derived from facts every time, never from a flag: accounts exist (accounts.sqlite);
the box has its records key (``DATA/nokbox.json``, written last by the key's creation); an
approver holds a PIN slot (asked of the key keeper: the page never opens DATA/keys); the audit
verification key has left the box (``audit/verification-key.once`` is gone). The wizard is over
when the last fact holds (it can only be reached through the others, or by the scripted
``nokbox user setup`` of a scripted install, which shows the key itself). A box initialised
without a recovery passphrase (the library's test boxes; ``nokbox init`` always makes one) has
no way to enrol a first PIN, so that step is passed over there.

Secrets never touch the disk in this process: the keeper returns the passphrase once and the
page sends it in one response and its PDF sheet in one more (kept in memory for that one fetch
and at most ``SHEET_S``), both ``Cache-Control: no-store``. Every step is served to the box
itself only (loopback), as ``/setup`` always was.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path

from flask import Blueprint, current_app, g, jsonify, make_response, redirect, render_template, request, url_for

from firmware.ipc import IpcError
from firmware.people.accounts import AuthError, PasswordPolicyError

from . import setupcode
from .auth import _pin_context, ext, requires, session_token, source

log = logging.getLogger(__name__)
bp = Blueprint("wizard", __name__)

STEPS = ("admin", "keys", "pin", "audit")
STEP_ENDPOINT = {"admin": "auth.setup", "keys": "wizard.keys", "pin": "wizard.pin", "audit": "wizard.audit_key"}
STEP_LABEL = {"admin": ("관리자 계정", "Administrator"), "keys": ("기록 키와 복구 암호", "Records key"),
              "pin": ("승인권자 PIN", "Approver PIN"), "audit": ("감사 검증 키", "Audit key")}
# what a visitor may open while the wizard is not over (besides the current step, which each view checks)
_OPEN_DURING = {"auth.login", "auth.logout", "auth.setup", "wizard.keys", "wizard.pin", "wizard.audit_key",
                "wizard.sheet", "setupcode.enter"}
SHEET_S = 600.0  # a printable sheet not fetched within this long is forgotten


# -- where the box stands ---------------------------------------------------------------------
def current_step() -> str | None:
    """The first step whose fact does not hold yet, or None when the wizard is over."""
    from firmware.vault.keys import MARKER

    x = ext()
    if getattr(x, "wizard_over", False):  # every fact below only ever goes from false to true
        return None
    if x.accounts.count() == 0:
        return "admin"
    if not (Path(x.data_dir) / MARKER).exists():
        return "keys"
    if x.audit.state_path.exists() and not x.audit.once_path.exists():
        x.wizard_over = True
        setupcode.wizard_over()  # the set-up code is spent
        return None
    st = keeper().init_status(g.user.name if g.get("user") else "system")
    if st.get("recovery_sealed") and not st.get("approver_pins"):
        return "pin"
    return "audit"


def keeper():
    return current_app.config["KEEPER"]


def step_url(step: str | None) -> str:
    return url_for(STEP_ENDPOINT[step]) if step else finish_url()


def finish_url() -> str:
    """After the wizard: the line map when the page has one and the person may open it (a
    technician), else the status page."""
    from firmware.people.accounts import can

    view = current_app.view_functions.get("lines.index")
    if view is not None and can(g.get("user"), getattr(view, "_nokbox_perm", None) or "status.view"):
        return url_for("lines.index")
    return url_for("status.page")


def gate():
    """Called for every request by ``auth._load``: during the wizard, every page but its own steps
    and sign-in redirects to the current step (the API answers 503)."""
    if request.endpoint == "static":
        return None
    step = current_step()
    if step is None:
        return None
    if step == "admin":
        allowed = request.endpoint in ("auth.setup", "setupcode.enter")
    else:
        allowed = request.endpoint in _OPEN_DURING
    if allowed:
        return None
    if request.path.startswith("/api/"):
        return jsonify(error="first-run set-up required"), 503
    return redirect(step_url(step))


def lan_refusal(what: str):
    """The wizard's steps answer only the box itself: a refusal page that says so (audited)."""
    x = ext()
    x.audit.append("setup.refused", actor=g.user.name if g.get("user") else "-", role="-", obj=what,
                   outcome="refused", reason="not from the box itself", source=source())
    if setupcode.code_pending():
        return render_template("error.html", code=403, message=(
            "첫 설정은 장치 자체에서, 또는 장치의 콘솔에 표시된 첫 설정 코드로만 할 수 있습니다 · the first-run set-up "
            "answers the box itself, or a browser given the set-up code shown on the box's console"),
            link=(url_for("setupcode.enter"), "첫 설정 코드 입력", "Enter the set-up code")), 403
    return render_template("error.html", code=403, message=(
        "첫 설정은 장치 자체에서만 할 수 있습니다: 장치에 모니터와 키보드를 연결하여 http://127.0.0.1:8080/ 을 여십시오 "
        "(원격이면 ssh -L 8080:127.0.0.1:8080). 명령으로는 'nokbox init', 'nokbox user setup' · the first-run "
        "set-up is only served to the box itself: open http://127.0.0.1:8080/ on the box (or through "
        "ssh -L 8080:127.0.0.1:8080), or use 'nokbox init' and 'nokbox user setup'")), 403


def _ready(step: str):
    """None when ``step`` is the current one and asked from the box itself, else the answer to give."""
    now = current_step()
    if now is None:  # the wizard is over (current_step spent the set-up code): its pages lead on
        return redirect(finish_url())
    if not setupcode.from_box_or_granted():
        return lan_refusal(STEP_ENDPOINT[step])
    if now != step:
        return redirect(step_url(now))
    return None


def _page(template: str, status: int = 200, **kw):
    from .auth import ROLE_LABELS  # noqa: F401 - templates use the global

    resp = make_response(render_template(template, steps=STEPS, step_label=STEP_LABEL, **({"error": "",
                                         "message": ""} | kw)), status)
    resp.headers["Cache-Control"] = "no-store"
    return resp


# -- one printable sheet per session, in memory, fetched once ---------------------------------
_sheets: dict[str, tuple[str, bytes, float]] = {}  # session hash -> (file name, PDF, monotonic deadline)
_sheets_lock = threading.Lock()  # guards _sheets (waitress serves on several threads)


def _session_key() -> str:
    return hashlib.sha256(session_token().encode()).hexdigest()


def _keep_sheet(name: str, pdf: bytes) -> None:
    now = time.monotonic()
    with _sheets_lock:
        for k in [k for k, v in _sheets.items() if v[2] < now]:
            del _sheets[k]
        _sheets[_session_key()] = (name, pdf, now + SHEET_S)


def _drop_sheet() -> None:
    with _sheets_lock:
        _sheets.pop(_session_key(), None)


@bp.get("/setup/sheet.pdf")
@requires("users.manage")
def sheet():
    """The A4 sheet of the secret just shown (recovery passphrase or audit key): given once."""
    if not setupcode.from_box_or_granted() and current_step() is not None:
        return lan_refusal("wizard.sheet")  # (a LAN session never has a sheet: every step refused it)
    with _sheets_lock:
        found = _sheets.pop(_session_key(), None)
    if found is None or found[2] < time.monotonic():
        return _page("error.html", 410, code=410, message="인쇄용 시트는 한 번만 열 수 있습니다. 이미 열었거나 시간이 "
                     "지났습니다 · the printable sheet opens once: it was already opened or it expired")
    name, pdf, _ = found
    ext().audit.append("setup.sheet", actor=g.user.name, role="admin", obj=name, source=source(),
                       reason="printable sheet sent once")
    resp = make_response(pdf)
    resp.headers.update({"Content-Type": "application/pdf", "Cache-Control": "no-store",
                         "Content-Disposition": f'inline; filename="{name}"'})
    return resp


# -- step 2: the records key ------------------------------------------------------------------
@bp.route("/setup/keys", methods=["GET", "POST"])
@requires("users.manage")
def keys():
    not_now = _ready("keys")
    if not_now is not None:
        return not_now
    k, me = keeper(), g.user.name
    if request.method == "POST":
        action = request.form.get("action", "")
        if action in ("begin", "restart"):
            try:
                passphrase = k.init_begin(me, restart=action == "restart")["passphrase"]
            except IpcError as exc:
                if exc.code == "unavailable":
                    raise
                return _page("wizard_keys.html", 409, phase="confirm", error=exc.message)
            _keep_sheet("nokbox-recovery-passphrase.pdf", recovery_sheet(passphrase, ext().cfg.release.office))
            return _page("wizard_keys.html", phase="shown", passphrase=passphrase)
        if action == "confirm":
            typed = request.form.get("typed", "")
            if not typed.strip():
                return _page("wizard_keys.html", 400, phase="confirm",
                             error="복구 암호를 입력하십시오 · type the recovery passphrase back")
            try:
                k.init_commit(me, typed[:200])
            except IpcError as exc:
                if exc.code == "unavailable":
                    raise
                return _page("wizard_keys.html", 400 if exc.code == "mismatch" else 409,
                             phase="confirm" if exc.code == "mismatch" else "begin", error=exc.message)
            _drop_sheet()
            return redirect(step_url(current_step()))
        return _page("wizard_keys.html", 400, phase="begin", error="알 수 없는 동작 · unknown action")
    pending = k.init_status(me).get("pending")
    return _page("wizard_keys.html", phase="confirm" if pending else "begin")


# -- step 3: the first approver's PIN ---------------------------------------------------------
@bp.route("/setup/pin", methods=["GET", "POST"])
@requires("users.manage")
def pin():
    """The approver account (created here when it does not exist yet) and its PIN, sealed by the
    keeper with the recovery passphrase from the sheet."""
    not_now = _ready("pin")
    if not_now is not None:
        return not_now
    x = ext()
    approvers = [u for u in x.accounts.users() if "approver" in u.roles and u.state == "active"]
    ctx = {"approvers": approvers, **_pin_context()}
    if request.method == "GET":
        return _page("wizard_pin.html", form={"name": approvers[0].name if approvers else "approver"}, **ctx)
    f = request.form
    kept = {"name": f.get("name", "").strip()[:64], "display": f.get("display", "").strip()[:100]}

    def refuse(msg: str):
        return _page("wizard_pin.html", 400, error=msg, form=kept, **ctx)

    from firmware.vault.keeper import canonical_passphrase
    from firmware.vault.sealing import check_pin, pin_strength_problem

    name, pin_text = kept["name"], f.get("pin", "")
    if not name:
        return refuse("승인권자 계정 이름을 입력하십시오 · give the approver's account name")
    if pin_text != f.get("pin2", ""):
        return refuse("두 PIN이 서로 다릅니다 · the two PINs differ")
    try:
        check_pin(pin_text)
    except Exception as exc:  # noqa: BLE001 - a VaultError naming the rule
        return refuse(f"PIN은 숫자 {ctx['pin_min']}~12자리입니다 · {exc}")
    problem = pin_strength_problem(pin_text, tpm=ctx["pin_tpm"], allow_short=x.cfg.vault.allow_short_pin,
                                   log_n=x.cfg.vault.pin_scrypt_log_n)
    if problem:
        return refuse(problem)
    if not f.get("passphrase", "").strip():
        return refuse("복구 암호 시트의 암호를 입력하십시오 · type the recovery passphrase from the sheet")
    existing = x.accounts.get(name) if name in {u.name for u in x.accounts.users()} else None
    try:
        if existing is None:
            if f.get("password", "") != f.get("password2", ""):
                return refuse("비밀번호가 서로 다릅니다 · the passwords differ")
            x.accounts.create(name, f.get("password", ""), ["approver"], by=g.user, source=source(),
                              display=kept["display"])
        else:
            if "approver" not in existing.roles:
                return refuse(f"{name} 계정은 승인권자가 아닙니다 · {name} does not hold the approver role")
            x.accounts.authenticate(name, f.get("password", ""), source=source(), purpose="first PIN")
    except (PasswordPolicyError, AuthError) as exc:
        return refuse(str(exc))
    try:
        keeper().enroll_pin(name, pin_text, {"passphrase": canonical_passphrase(f.get("passphrase", ""))})
    except IpcError as exc:
        if exc.code == "unavailable":
            raise
        kept["created"] = existing is None
        return refuse(exc.message + (" (계정은 만들어졌습니다: 같은 비밀번호로 다시 시도하십시오 · the account was created: "
                                     "try again with the same password)" if existing is None else ""))
    if not ctx["pin_tpm"] and len(pin_text.strip()) < 8:
        x.audit.append("auth.pin_short", actor=name, role="approver", obj=name, source=source(),
                       reason=f"{len(pin_text.strip())}-digit PIN without a TPM, allowed by vault.allow_short_pin")
    return redirect(step_url(current_step()))


# -- step 4: the audit verification key -------------------------------------------------------
@bp.route("/setup/audit-key", methods=["GET", "POST"])
@requires("users.manage")
def audit_key():
    not_now = _ready("audit")
    if not_now is not None:
        return not_now
    x = ext()
    if request.method == "GET":
        return _page("wizard_audit.html", key=None)
    key = x.audit.take_verification_key()
    x.audit.append("audit.key.shown", actor=g.user.name, role="admin", obj="audit-verification-key", source=source(),
                   reason="shown once by the first-run wizard" if key else "already taken")
    if key:
        _keep_sheet("nokbox-audit-verification-key.pdf",
                    audit_sheet(key, x.audit.signer_id(), x.cfg.release.office))
    return _page("wizard_audit.html", key=key, taken=not key, signer=x.audit.signer_id(), next_url=finish_url())


# -- the printable sheets (A4 PDF, ReportLab with the Nanum fonts of the release forms) -----------
def _sheet(title: str, title_en: str, secret: str, lines: list[tuple[str, str]], fields: list[tuple[str, str]],
           office: str) -> bytes:
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, Spacer

    from firmware.release import forms

    forms._fonts()
    st = forms._Styles(11)
    from reportlab.lib.enums import TA_CENTER
    from reportlab.lib.styles import ParagraphStyle

    size = 22 if len(secret) <= 30 else 15
    big = ParagraphStyle("secret", fontName=forms.MONO, fontSize=size, leading=size * 1.5, alignment=TA_CENTER)
    lines_, line = [], ""
    for group in secret.split("-"):  # a long key breaks between its groups, never inside one
        if line and len(line) + len(group) + 1 > 36:
            lines_.append(line + "-")
            line = group
        else:
            line = f"{line}-{group}" if line else group
    shown = "<br/>".join(forms._text(x) for x in lines_ + [line])
    story = [forms._p(title, st.title), forms._p(title_en, st.sub), Spacer(1, 4 * mm)]
    if office:
        story += [forms._p(office, st.c), Spacer(1, 2 * mm)]
    import datetime as dt

    story += [forms._p(dt.datetime.now(forms.KST).strftime("%Y-%m-%d %H:%M KST") + " · nokbox", st.sub),
              Spacer(1, 8 * mm)]
    box = forms._table([[Paragraph(shown, big)]], [forms._width() - 20 * mm],
                       extra=[("TOPPADDING", (0, 0), (-1, -1), 4 * mm), ("BOTTOMPADDING", (0, 0), (-1, -1), 4 * mm)])
    story += [box, Spacer(1, 8 * mm)]
    for ko, en in lines:
        story += [forms._p(ko, st.p, en, st.en), Spacer(1, 2.5 * mm)]
    story.append(Spacer(1, 6 * mm))
    rows = [[forms._label(ko, en, st), ""] for ko, en in fields]
    story.append(forms._table(rows, [45 * mm, forms._width() - 45 * mm], label_cols=(0,), heights=[14 * mm] * len(rows)))
    return forms._build(story, title=title_en)


def recovery_sheet(passphrase: str, office: str = "") -> bytes:
    """The recovery passphrase on one A4 page, for the office safe."""
    return _sheet("녹음 장치 복구 암호", "nokbox recovery passphrase", passphrase, [
        ("이 암호는 녹음 기록 키의 복구 수단입니다. 장치에는 저장되지 않으며 이 종이가 유일한 사본입니다.",
         "This passphrase recovers the records key. It is not stored on the box: this sheet is the only copy."),
        ("봉투에 넣어 봉인하고 사무실 금고에 보관하십시오. 사진을 찍거나 파일로 저장하지 마십시오.",
         "Seal it in an envelope and keep it in the office safe. Do not photograph it or save it as a file."),
        ("다음 때에 필요합니다: 첫 승인권자의 PIN 설정, 잠긴 PIN의 해제, 기록 키 내보내기, 장치 교체.",
         "Needed to set the first approver's PIN, lift a PIN lockout, export the records key, replace the box."),
        ("대소문자와 하이픈(-)은 구분하지 않습니다. 글자 O, I, L은 쓰이지 않습니다: 0(영)과 1(일)은 숫자입니다.",
         "Case and dashes do not matter. The letters O, I and L are never used: 0 and 1 are digits."),
    ], [("작성일 · Date", ""), ("작성자 · Written by", ""), ("보관자 · Kept by", ""), ("봉인 확인 · Sealed", "")], office)


def audit_sheet(key: str, signer: str, office: str = "") -> bytes:
    """The audit verification key on one A4 page, for the auditor."""
    return _sheet("감사 기록 검증 키", "nokbox audit verification key", key, [
        ("감사 담당자에게 전달하십시오. 이 키는 장치에 남지 않으며, 감사 기록이 위조되지 않았음을 증명하는 데 쓰입니다.",
         "Hand this to the auditor. It is not kept on the box; it proves that no audit entry was forged."),
        ("감사 검토 화면의 '기록 무결성' 칸에 입력하거나 명령 'nokbox audit verify --key …'로 확인합니다.",
         "Type it into the log-integrity box of the audit review page, or run 'nokbox audit verify --key …'."),
        (f"체크포인트 서명 키 지문: {signer}", f"Checkpoint signing key fingerprint: {signer}"),
    ], [("전달일 · Date", ""), ("전달자 · Handed by", ""), ("감사 담당자 · Auditor", "")], office)


# -- the scripted development default (./run.sh): the same facts, made without the page -------------
def _write_secret(path: Path, text: str) -> None:
    import os

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def new_pin_file(path: Path) -> None:
    """A random 10-digit approver PIN that the PIN policy accepts, in a new 0600 file."""
    import secrets

    from firmware.errors import NokboxError
    from firmware.vault.sealing import check_pin

    while True:
        pin = "".join(secrets.choice("0123456789") for _ in range(10))
        try:
            check_pin(pin)
            break
        except NokboxError:
            continue
    _write_secret(path, pin + "\n")


def scripted(data: Path, secrets_dir: Path, config: Path | None = None, approver: str = "approver") -> list[str]:
    """What the wizard's account steps leave behind, for a development box: the first administrator
    ``admin`` and the approver account ``approver`` (whose PIN ``nokbox init --pin-file`` set) with
    random passwords, and the audit verification key taken off the box; all three secrets in new
    0600 files in ``secrets_dir`` (never inside DATA). Returns the lines to print; nothing when
    accounts exist already."""
    import secrets

    from firmware.audit import AuditLog
    from firmware.config import load_config
    from firmware.people.accounts import Accounts

    data, secrets_dir = Path(data), Path(secrets_dir)
    if secrets_dir.resolve().is_relative_to(data.resolve()):
        raise SystemExit("the secrets must not be written inside the data directory")
    cfg, _ = load_config(config)
    acc = Accounts(data, cfg.auth, AuditLog(data, every=cfg.audit.seal_every))
    if acc.count():
        return []
    accounts, key_file = secrets_dir / "dev-accounts.txt", secrets_dir / "audit-verification-key.txt"
    pw = {n: secrets.token_urlsafe(18) for n in ("admin", approver)}
    admin, key = acc.setup_first("admin", pw["admin"], ["admin"], source="run.sh", display="관리자 (개발)")
    acc.create(approver, pw[approver], ["approver"], by=admin, source="run.sh", display="승인권자 (개발)")
    _write_secret(accounts, "".join(f"{n} {p}\n" for n, p in pw.items()))
    _write_secret(key_file, (key or "") + "\n")
    out = [f"first-run set-up done without the wizard (development): accounts 'admin' and '{approver}' with their "
           f"passwords in {accounts} (0600)", f"audit verification key (for the auditor) in {key_file} (0600)"]
    if (secrets_dir / "approver-pin.txt").exists():
        out.append(f"approver PIN of '{approver}' in {secrets_dir / 'approver-pin.txt'} (0600)")
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m web.wizard", description="./run.sh's scripted first run")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("new-pin", help="write a new random approver PIN file (0600)")
    p.add_argument("file", type=Path)
    p = sub.add_parser("accounts", help="the first administrator and approver, the audit key taken; secrets to files")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--secrets", type=Path, required=True, help="folder for the secret files (outside DATA)")
    p.add_argument("--config", type=Path)
    args = ap.parse_args(argv)
    import os

    os.umask(0o077)  # as the nokbox command: everything created under DATA is the owner's alone
    if args.cmd == "new-pin":
        if not args.file.exists():
            new_pin_file(args.file)
        return 0
    for line in scripted(args.data, args.secrets, args.config):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

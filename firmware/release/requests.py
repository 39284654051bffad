"""Requests to release recordings (열람·제공 신청): form 1, the search inside a request, the approval
line, plays and exports, closing, and the ledger's rows (seed 001 art. 7, 8, 10 and its forms).

Everything lives in ``DATA/requests.sqlite`` (WAL). **The requester's own details are personal
data** (seed 002): name, birth date or business number, address, contact, the two numbers, the
purpose, the relation and the reason are sealed as one age file to the *request recipient*, whose
identity only the key keeper derives from the device secret (``vault/keys.request_identity``).
The page seals and can never read back what it stored; the keeper opens a request only for the
officer who entered it, an approver once it is submitted, and the auditor
(``KeeperView.may_view``), and writes every opening to the audit log. Scans of the attached
proof are sealed the same way under ``DATA/requests/<number>/``. What stays in clear is what
the workflow decides on: the kind, the legal ground, the agency's document number, the call
window and lines, the state, who acted and when.

The request's numbers are matched to calls through the keyed blind index (``vault/personal``):
the keeper gives the page the index values of the request's numbers; calls carry theirs from
the moment they were recorded; no number is decrypted to search.

No call is searched, listed or attached for release outside a saved request; the search is
bounded by the request's window (± ``release.search_margin_min``) and its lines. Attached calls
are on hold (``vault/retention.open_hold``) until the request closes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..audit import AuditLog
from ..config import share_sqlite, shared_mode
from ..errors import NokboxError
from ..index import KST, CallIndex, iso_utc, parse_utc
from ..vault.age import AgeWriter, parse_recipient
from ..vault.personal import normal_number
from ..vault.retention import close_hold, open_hold
from .forms import GROUNDS  # seed 001 art. 7(1), as written (the forms print it)

KINDS = {"listen": "열람", "provide": "제공"}
# Grounds where an authority's written request replaces form 1 (seed 001 art. 7(2)).
AUTHORITY_GROUNDS = frozenset({3, 4, 5})
STATES = {
    "entered": "접수", "submitted": "결재 대기", "reviewed": "팀장 검토", "approved": "승인",
    "delivered": "제공 완료", "listened": "열람 완료", "rejected": "반려", "withdrawn": "취하",
    "expired": "기간 만료", "closed": "종결",
}
OPEN_STATES = ("entered", "submitted", "reviewed", "approved")
CLOSED_STATES = tuple(s for s in STATES if s not in OPEN_STATES)

FORM_KEYS = ("kind", "requester", "sending_number", "receiving_number", "call_from", "call_to", "purpose",
             "relation", "reason", "legal_ground", "document_number", "attachments")
REQUESTER_KEYS = ("name", "id_number", "address", "contact")
SEALED_KEYS = ("requester", "sending_number", "receiving_number", "purpose", "relation", "reason")
LABELS = {
    "kind": "신청 구분 (열람/제공)", "requester": "신청인", "requester.name": "성명(기관명)",
    "requester.id_number": "생년월일(사업자등록번호)", "requester.address": "주소(부서)",
    "requester.contact": "연락처", "sending_number": "발신번호", "receiving_number": "수신번호",
    "call_from": "통화 일시(부터)", "call_to": "통화 일시(까지)", "purpose": "신청 목적",
    "relation": "정보주체와의 관계", "reason": "신청 사유", "legal_ground": "근거 (제7조제1항)",
    "document_number": "공문번호", "attachments": "첨부 서류",
}
MIMES = {"pdf": "application/pdf", "jpeg": "image/jpeg", "png": "image/png"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY,
    number TEXT NOT NULL UNIQUE,        -- 2026-0042: the year (KST) and its sequence
    year INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    created_utc TEXT NOT NULL,
    officer TEXT NOT NULL,              -- who entered it (and handles it)
    kind TEXT NOT NULL CHECK (kind IN ('listen', 'provide')),
    legal_ground INTEGER NOT NULL CHECK (legal_ground BETWEEN 1 AND 5),
    document_number TEXT NOT NULL DEFAULT '',
    call_from_utc TEXT NOT NULL,
    call_to_utc TEXT NOT NULL,
    lines TEXT NOT NULL,                -- JSON list of input channels the search is bounded to; [] = every line
    details_sealed BLOB NOT NULL,       -- age file to the request recipient: the requester's personal details
    blind TEXT NOT NULL DEFAULT '',     -- blind index values of the request's numbers (space-separated)
    state TEXT NOT NULL,
    state_utc TEXT NOT NULL,
    approval_expires_utc TEXT,
    grant_token TEXT,                   -- the keeper's grant (a bearer capability the keeper bounds; see threat model)
    grant_ref TEXT,
    closed_utc TEXT,
    close_reason TEXT,
    destroyed_utc TEXT,                 -- the recipient reported destroying what was provided (art. 10(3))
    destroyed_note TEXT,
    UNIQUE (year, seq)
);
CREATE TABLE IF NOT EXISTS attachments (
    id INTEGER PRIMARY KEY,
    request_id INTEGER NOT NULL REFERENCES requests (id),
    idx INTEGER NOT NULL,
    mime TEXT NOT NULL,
    size INTEGER NOT NULL,
    file TEXT NOT NULL                  -- relative to DATA: requests/<number>/<idx>.age
);
CREATE TABLE IF NOT EXISTS request_calls (
    request_id INTEGER NOT NULL REFERENCES requests (id),
    call_id INTEGER NOT NULL,
    line INTEGER NOT NULL,
    line_name TEXT NOT NULL,
    start_utc TEXT NOT NULL,
    duration REAL,
    matches INTEGER NOT NULL,           -- 1: one of the request's numbers is the call's
    reason TEXT NOT NULL DEFAULT '',    -- why a call matching neither number is attached (the approver sees it)
    hold_id INTEGER,
    attached_by TEXT NOT NULL,
    attached_utc TEXT NOT NULL,
    destroyed_utc TEXT,                 -- the call was destroyed by retention before it was released
    PRIMARY KEY (request_id, call_id)
);
CREATE TABLE IF NOT EXISTS approvals (
    id INTEGER PRIMARY KEY,
    request_id INTEGER NOT NULL REFERENCES requests (id),
    stage TEXT NOT NULL CHECK (stage IN ('team', 'head')),
    approver TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('approved', 'rejected')),
    comment TEXT NOT NULL,
    time_utc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS uses (
    id INTEGER PRIMARY KEY,
    request_id INTEGER NOT NULL REFERENCES requests (id),
    kind TEXT NOT NULL CHECK (kind IN ('play', 'export')),
    call_id INTEGER,
    actor TEXT NOT NULL,
    time_utc TEXT NOT NULL,
    outcome TEXT NOT NULL,              -- 'ok' (delivered / played) or what went wrong
    detail TEXT NOT NULL DEFAULT '{}'   -- JSON: package name, bytes, medium, sha256 (no personal data)
);
CREATE TABLE IF NOT EXISTS request_destructions (
    number TEXT PRIMARY KEY,
    created_utc TEXT NOT NULL,
    closed_utc TEXT,
    destroyed_utc TEXT NOT NULL,
    reason TEXT NOT NULL
);
"""


class FormError(NokboxError, ValueError):
    """A field of the request form is missing or wrong; ``key`` names it (the JSON key)."""

    def __init__(self, key: str, message: str) -> None:
        label = LABELS.get(key, key)
        super().__init__(f"{key} ({label}): {message}")
        self.key = key
        self.text = message


class RequestError(NokboxError):
    """The workflow refuses this step; the message says why (Korean · English). ``code`` for scripts."""

    def __init__(self, message: str, code: str = "refused") -> None:
        super().__init__(message)
        self.code = code


# -- the form ---------------------------------------------------------------------------
@dataclass
class Attachment:
    name: str
    data: bytes
    mime: str


@dataclass
class Form:
    kind: str
    requester: dict
    sending_number: str
    receiving_number: str
    call_from: float
    call_to: float
    purpose: str
    relation: str
    reason: str
    legal_ground: int
    document_number: str
    attachments: list[Attachment] = field(default_factory=list)

    def sealed(self) -> dict:
        return {k: getattr(self, k) for k in SEALED_KEYS}


def sniff(data: bytes) -> str | None:
    """The scan's type from its content (never its name): pdf, jpeg or png."""
    if data.startswith(b"%PDF-"):
        return "pdf"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    return None


_PHONE = re.compile(r"^\+?[0-9][0-9 ()-]{2,24}$")
_BIRTH = re.compile(r"^(19|20)\d\d-?(0[1-9]|1[0-2])-?(0[1-9]|[12]\d|3[01])$|^\d{6}$")
_BUSINESS = re.compile(r"^\d{3}-?\d{2}-?\d{5}$")
_CONTACT = re.compile(r"^(\+?[0-9][0-9 ()-]{6,24}|[^@\s]{1,64}@[^@\s]{1,190}\.[A-Za-z]{2,})$")


def _text(form: dict, key: str, *, required: bool, max_len: int, label_key: str | None = None) -> str:
    v = form.get(key, "")
    k = label_key or key
    if v is None:
        v = ""
    if not isinstance(v, str):
        raise FormError(k, "문자열이어야 합니다 · must be text")
    v = v.strip()
    if required and not v:
        raise FormError(k, "입력하십시오 · required")
    if len(v) > max_len:
        raise FormError(k, f"{max_len}자 이내로 입력하십시오 · at most {max_len} characters")
    if any(ord(c) < 32 and c not in "\n\t" for c in v):
        raise FormError(k, "제어 문자는 쓸 수 없습니다 · control characters are not allowed")
    return v


def parse_local(value, key: str) -> float:
    """An ISO date-time; KST when it carries no offset. A date alone is its first instant."""
    if not isinstance(value, str) or not value.strip():
        raise FormError(key, "날짜와 시각을 입력하십시오 (예: 2026-12-01T14:00) · a date and time is required")
    try:
        t = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise FormError(key, "날짜 형식이 잘못되었습니다 (예: 2026-12-01T14:00) · not an ISO date-time") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=KST)
    if not 2000 <= t.year <= 2100:
        raise FormError(key, "2000년부터 2100년 사이의 날짜여야 합니다 · the year must be 2000-2100")
    return t.timestamp()


def _number(form: dict, key: str, *, required: bool) -> str:
    v = _text(form, key, required=required, max_len=30)
    if v and (not _PHONE.match(v) or not 3 <= len(normal_number(v)) <= 16):
        raise FormError(key, "전화번호 형식이 잘못되었습니다 (예: 010-1234-5678, 내선 2401) · not a telephone number")
    return v


def validate_form(form, *, cfg, now: float, read_file: Callable[[str], bytes] | None = None) -> Form:
    """The request form checked field by field; FormError names the first wrong key. Nothing is
    saved here. ``attachments`` are file paths (read with ``read_file``) or (name, bytes) pairs."""
    if not isinstance(form, dict):
        raise FormError("form", "JSON 객체여야 합니다 · the form must be a JSON object")
    for k in form:
        if k not in FORM_KEYS:
            raise FormError(k, "알 수 없는 항목입니다 · unknown key")
    kind = form.get("kind")
    if kind not in KINDS:
        raise FormError("kind", "listen(열람) 또는 provide(제공) · must be 'listen' or 'provide'")
    ground = form.get("legal_ground")
    if isinstance(ground, str) and ground.strip().isdigit():
        ground = int(ground)
    if not isinstance(ground, int) or isinstance(ground, bool) or ground not in GROUNDS:
        raise FormError("legal_ground", "제7조제1항 1~5호 중 하나 · must be 1-5 (art. 7(1))")
    authority = ground in AUTHORITY_GROUNDS
    req = form.get("requester")
    if not isinstance(req, dict):
        raise FormError("requester", "신청인 정보(name, id_number, address, contact)가 필요합니다 · an object is required")
    for k in req:
        if k not in REQUESTER_KEYS:
            raise FormError(f"requester.{k}", "알 수 없는 항목입니다 · unknown key")
    requester = {
        "name": _text(req, "name", required=True, max_len=100, label_key="requester.name"),
        "id_number": _text(req, "id_number", required=not authority, max_len=20, label_key="requester.id_number"),
        "address": _text(req, "address", required=not authority, max_len=200, label_key="requester.address"),
        "contact": _text(req, "contact", required=not authority, max_len=100, label_key="requester.contact"),
    }
    idn = requester["id_number"]
    if idn and not (_BIRTH.match(idn) or _BUSINESS.match(idn)):
        raise FormError("requester.id_number", "생년월일(1980-01-31) 또는 사업자등록번호(123-45-67890) 형식 · "
                                               "a birth date or a business registration number")
    if requester["contact"] and not _CONTACT.match(requester["contact"]):
        raise FormError("requester.contact", "전화번호 또는 전자우편 주소 · a telephone number or an e-mail address")
    sending = _number(form, "sending_number", required=False)
    receiving = _number(form, "receiving_number", required=False)
    if not sending and not receiving:
        raise FormError("sending_number", "발신번호와 수신번호 중 하나 이상 · give the sending or the receiving number")
    if not authority and not (sending and receiving):
        raise FormError("receiving_number" if sending else "sending_number",
                        "발신번호와 수신번호를 모두 입력하십시오 · both numbers are required")
    start = parse_local(form.get("call_from"), "call_from")
    end = parse_local(form.get("call_to"), "call_to")
    if end < start:
        raise FormError("call_to", "끝 시각이 시작 시각보다 앞섭니다 · ends before it starts")
    rc = cfg.release
    if end - start > rc.window_max_days * 86400:
        raise FormError("call_to", f"통화 기간은 {rc.window_max_days}일 이내 · the window is at most {rc.window_max_days} days")
    if start > now + 60:
        raise FormError("call_from", "미래의 통화는 신청할 수 없습니다 · the window starts in the future")
    purpose = _text(form, "purpose", required=True, max_len=500)
    relation = _text(form, "relation", required=not authority, max_len=100)
    reason = _text(form, "reason", required=True, max_len=2000)
    doc = _text(form, "document_number", required=authority, max_len=64)
    atts = form.get("attachments", [])
    if atts is None:
        atts = []
    if not isinstance(atts, list):
        raise FormError("attachments", "파일 목록이어야 합니다 · must be a list of files")
    if len(atts) > rc.attachments_max:
        raise FormError("attachments", f"첨부는 {rc.attachments_max}개까지 · at most {rc.attachments_max} files")
    limit = int(rc.attachment_max_mb * 1024 * 1024)
    files = []
    for i, a in enumerate(atts):
        key = f"attachments[{i}]"
        if isinstance(a, (tuple, list)) and len(a) == 2:
            name, data = str(a[0]), a[1]
        elif isinstance(a, str) and read_file is not None:
            name = Path(a).name
            try:
                data = read_file(a)
            except OSError as exc:
                raise FormError(key, f"파일을 읽을 수 없습니다 · cannot read the file ({exc.strerror})") from None
        else:
            raise FormError(key, "파일이어야 합니다 · must be a file")
        if not data:
            raise FormError(key, "빈 파일입니다 · the file is empty")
        if len(data) > limit:
            raise FormError(key, f"파일이 {rc.attachment_max_mb:g} MB를 넘습니다 · larger than {rc.attachment_max_mb:g} MB")
        kind_ = sniff(data)
        if kind_ is None:
            raise FormError(key, "PDF, JPEG, PNG 파일만 첨부할 수 있습니다 (내용으로 확인) · only PDF, JPEG or PNG "
                                 "(checked by content)")
        files.append(Attachment(name[:100], data, kind_))
    if not authority and not files:
        raise FormError("attachments", "신분·관계를 증명하는 서류를 첨부하십시오 · attach the proof of identity and relation")
    return Form(kind, requester, sending, receiving, start, end, purpose, relation, reason, ground, doc, files)


# -- the store --------------------------------------------------------------------------
def connect(data: Path) -> sqlite3.Connection:
    con = sqlite3.connect(str(Path(data) / "requests.sqlite"), timeout=10.0)
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA journal_mode=WAL")
    share_sqlite(Path(data) / "requests.sqlite")  # the page writes it; the keeper reads it
    con.execute("PRAGMA synchronous=FULL")
    con.execute("PRAGMA foreign_keys=ON")
    con.execute("PRAGMA secure_delete=ON")
    with con:
        con.executescript(_SCHEMA)
    return con


def connect_readonly(data: Path) -> sqlite3.Connection | None:
    path = Path(data) / "requests.sqlite"
    if not path.exists():
        return None
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10.0)
    con.row_factory = sqlite3.Row
    return con


def _seal(recipient: str, payload: bytes) -> bytes:
    buf = io.BytesIO()
    w = AgeWriter(buf, [parse_recipient(recipient)])
    w.write(payload)
    w.close()
    return buf.getvalue()


def lines_for(cfg, numbers: list[str]) -> list[int]:
    """The input channels a request's numbers name (a line's extension, or a number ending in it);
    [] when none does: then the search covers every line and the numbers decide."""
    out = set()
    digits = [normal_number(n) for n in numbers if n]
    for ln in cfg.line:
        ext = normal_number(ln.extension or "")
        if len(ext) >= 2 and any(d == ext or (len(ext) >= 3 and d.endswith(ext)) for d in digits):
            out.add(ln.channel)
    return sorted(out)


def _local(iso: str | None) -> str:
    return parse_utc(iso).astimezone(KST).strftime("%Y-%m-%d %H:%M") if iso else ""


class Requests:
    """The request store of one data directory, used by the page process and the CLI.

    ``keeper`` is the key keeper (socket client or in-process): it gives the request recipient,
    the blind index values, and opens details for those who may see them. Every step is audited
    with the request number (``request.create/view/search/attach/submit/approve/reject/play/export/close``).
    """

    def __init__(self, data: Path, cfg, audit: AuditLog, keeper, *, clock=None) -> None:
        from ..hal.clock import Clock

        self.data = Path(data)
        self.cfg = cfg
        self.audit = audit
        self.keeper = keeper
        self.clock = clock or Clock()

    @contextlib.contextmanager
    def _db(self):
        con = connect(self.data)
        try:
            yield con
        finally:
            con.close()

    def _now(self) -> float:
        return self.clock.wall()

    # -- reading ---------------------------------------------------------------------------
    def row(self, number: str) -> sqlite3.Row:
        with self._db() as con:
            r = con.execute("SELECT * FROM requests WHERE number = ?", (str(number),)).fetchone()
        if r is None:
            raise RequestError(f"{number}: 신청이 없습니다 · no such request", "no_request")
        return r

    def _expire(self, con: sqlite3.Connection, now: float) -> None:
        """Approvals unused past their time: the request expires, its holds end."""
        for r in list(con.execute("SELECT * FROM requests WHERE state = 'approved' AND approval_expires_utc < ?",
                                  (iso_utc(now),))):
            self._close_locked(con, r, "expired", "승인 기간 경과 · the approval expired unused", "system", now)

    def get(self, number: str, *, actor: str, source: str = "local", details: bool = True) -> dict:
        """The request as the workflow shows it; ``details`` opens the sealed part through the keeper
        (refused unless the actor may see it; audited there as ``request.view``)."""
        now = self._now()
        with self._db() as con:
            with con:
                self._expire(con, now)
            r = con.execute("SELECT * FROM requests WHERE number = ?", (str(number),)).fetchone()
            if r is None:
                raise RequestError(f"{number}: 신청이 없습니다 · no such request", "no_request")
            calls = [dict(c) for c in con.execute("SELECT * FROM request_calls WHERE request_id = ? ORDER BY start_utc",
                                                  (r["id"],))]
            approvals = [dict(a) for a in con.execute("SELECT * FROM approvals WHERE request_id = ? ORDER BY id",
                                                      (r["id"],))]
            atts = [dict(a) for a in con.execute("SELECT idx, mime, size FROM attachments WHERE request_id = ? ORDER BY idx",
                                                 (r["id"],))]
            uses = [dict(u) | {"detail": json.loads(u["detail"])} for u in
                    con.execute("SELECT * FROM uses WHERE request_id = ? ORDER BY id", (r["id"],))]
        out = self._public(r) | {"calls": calls, "approvals": approvals, "attachments": atts, "uses": uses}
        if details:
            got = self.keeper.request_details(actor, [r["number"]], f"view {r['number']}")
            out["details"] = got["details"].get(r["number"], {})
        return out

    @staticmethod
    def _public(r: sqlite3.Row) -> dict:
        return {"number": r["number"], "created": r["created_utc"], "created_local": _local(r["created_utc"]),
                "officer": r["officer"], "kind": r["kind"], "kind_label": KINDS[r["kind"]],
                "legal_ground": r["legal_ground"], "ground_label": GROUNDS[r["legal_ground"]],
                "document_number": r["document_number"], "call_from": r["call_from_utc"], "call_to": r["call_to_utc"],
                "call_from_local": _local(r["call_from_utc"]), "call_to_local": _local(r["call_to_utc"]),
                "lines": json.loads(r["lines"]), "state": r["state"], "state_label": STATES[r["state"]],
                "approval_expires": r["approval_expires_utc"], "approval_expires_local": _local(r["approval_expires_utc"]),
                "closed": r["closed_utc"], "close_reason": r["close_reason"], "destroyed": r["destroyed_utc"],
                "destroyed_note": r["destroyed_note"], "granted": bool(r["grant_token"])}

    def list(self, *, officer: str | None = None, states: tuple[str, ...] | None = None, limit: int = 200) -> list[dict]:
        now = self._now()
        q, args = "SELECT * FROM requests", []
        where = []
        if officer:
            where.append("officer = ?")
            args.append(officer)
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args += list(states)
        if where:
            q += " WHERE " + " AND ".join(where)
        q += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._db() as con:
            with con:
                self._expire(con, now)
            return [self._public(r) for r in con.execute(q, args)]

    # -- entering ----------------------------------------------------------------------------
    def create(self, form: Form, *, actor: str, source: str = "local") -> str:
        """Save a checked form as one transaction (sealed details, sealed scans, number); the number."""
        rec = self.keeper.request_key(actor)["recipient"]
        numbers = [n for n in (form.sending_number, form.receiving_number) if n]
        blind = " ".join(sorted({b for b in self.keeper.blind(actor, numbers)["blind"] if b}))
        sealed = _seal(rec, json.dumps(form.sealed(), ensure_ascii=False).encode("utf-8"))
        lines = lines_for(self.cfg, numbers)
        now = self._now()
        year = dt.datetime.fromtimestamp(now, KST).year
        written: list[Path] = []
        try:
            with self._db() as con:
                con.execute("BEGIN IMMEDIATE")
                try:
                    seq = con.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM requests WHERE year = ?", (year,)).fetchone()[0]
                    number = f"{year}-{seq:04d}"
                    rid = con.execute(
                        "INSERT INTO requests (number, year, seq, created_utc, officer, kind, legal_ground, document_number,"
                        " call_from_utc, call_to_utc, lines, details_sealed, blind, state, state_utc)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'entered', ?)",
                        (number, year, seq, iso_utc(now), actor, form.kind, form.legal_ground, form.document_number,
                         iso_utc(form.call_from), iso_utc(form.call_to), json.dumps(lines), sealed, blind,
                         iso_utc(now))).lastrowid
                    folder = self.data / "requests" / number
                    for i, a in enumerate(form.attachments):
                        folder.mkdir(parents=True, exist_ok=True, mode=shared_mode(0o700))
                        path = folder / f"{i}.age"
                        blob = _seal(rec, a.data)
                        with open(path, "wb") as f:
                            f.write(blob)
                            f.flush()
                            os.fsync(f.fileno())
                        written.append(path)
                        con.execute("INSERT INTO attachments (request_id, idx, mime, size, file) VALUES (?, ?, ?, ?, ?)",
                                    (rid, i, a.mime, len(a.data), str(path.relative_to(self.data))))
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
        except BaseException:
            for p in written:
                p.unlink(missing_ok=True)
            raise
        self.audit.append("request.create", actor=actor, role="officer", obj=f"request:{number}", source=source,
                          detail={"kind": form.kind, "legal_ground": form.legal_ground, "attachments": len(written),
                                  "lines": lines, "window": [iso_utc(form.call_from), iso_utc(form.call_to)]})
        return number

    def _mine(self, r: sqlite3.Row, actor: str, action: str, source: str) -> None:
        if r["officer"] != actor:
            self._refuse(action, actor, r["number"], "not the officer who entered it", source,
                         "이 신청을 접수한 담당자만 할 수 있습니다 · only the officer who entered this request may do this",
                         "not_officer")

    def _refuse(self, action: str, actor: str, number: str, reason: str, source: str, message: str, code: str):
        self.audit.append(action, actor=actor, role="-", obj=f"request:{number}", outcome="refused", reason=reason,
                          source=source)
        raise RequestError(message, code)

    # -- search and attach -----------------------------------------------------------------
    def window(self, r: sqlite3.Row) -> tuple[str, str]:
        m = self.cfg.release.search_margin_min * 60
        return (iso_utc(parse_utc(r["call_from_utc"]).timestamp() - m),
                iso_utc(parse_utc(r["call_to_utc"]).timestamp() + m))

    def search(self, number: str, *, actor: str, source: str = "local") -> list[dict]:
        """The calls a request may release: inside its window (± margin) and lines, each marked
        whether one of the request's numbers is the call's (blind index). Audited ``request.search``."""
        r = self._search_row(number, actor, source)
        rows = candidates(self.data, r, self.cfg)
        masked = self.keeper.masked(actor, [c["id"] for c in rows], f"request {r['number']}",
                                    request=r["number"]) if rows else {}
        out = []
        for c in rows:
            out.append(c | {"masked": masked.get(str(c["id"]), {}), "start_local": _local(c["start"])})
        self.audit.append("request.search", actor=actor, role="officer", obj=f"request:{r['number']}", source=source,
                          detail={"window": list(self.window(r)), "lines": json.loads(r["lines"]), "results": len(out),
                                  "matching": sum(1 for c in out if c["matches"]),
                                  "other_parties": sum(1 for c in out if not c["matches"])})
        return out

    def _search_row(self, number, actor: str, source: str) -> sqlite3.Row:
        if not number:
            self.audit.append("request.search", actor=actor, role="officer", obj="request:-", outcome="refused",
                              reason="no request", source=source)
            raise RequestError("신청서를 먼저 접수하십시오: 신청 없이는 통화를 검색할 수 없습니다 · enter the request "
                               "first: no call can be searched without one", "no_request")
        try:
            r = self.row(number)
        except RequestError:
            self.audit.append("request.search", actor=actor, role="officer", obj=f"request:{str(number)[:20]}",
                              outcome="refused", reason="no such request", source=source)
            raise
        self._mine(r, actor, "request.search", source)
        if r["state"] != "entered":
            self._refuse("request.search", actor, r["number"], f"state {r['state']}", source,
                         f"{STATES[r['state']]} 상태의 신청은 검색·첨부를 바꿀 수 없습니다 · the request is {r['state']}: "
                         "its calls can no longer change", "state")
        return r

    def attach(self, number: str, calls: list[int], *, actor: str, reason: str = "", source: str = "local") -> list[dict]:
        """Attach calls found by the search; a call matching neither number needs ``reason``. Each
        attached call is put on hold until the request closes."""
        r = self._search_row(number, actor, source)
        found = {c["id"]: c for c in candidates(self.data, r, self.cfg)}
        out = []
        for cid in calls:
            c = found.get(cid)
            if c is None:
                self._refuse("request.attach", actor, r["number"], f"call {cid} outside the request's window/lines",
                             source, f"{cid}번 통화는 이 신청의 기간·회선 밖에 있습니다 · call {cid} is outside the "
                                     "request's window and lines", "outside")
            if not c["matches"] and not reason.strip():
                self._refuse("request.attach", actor, r["number"], f"call {cid} matches neither number, no reason",
                             source, f"{cid}번 통화는 신청인의 번호와 맞지 않습니다: 첨부 사유를 적으십시오 · call {cid} "
                                     "matches neither of the request's numbers: give a written reason", "reason")
        now = self._now()
        with self._db() as con:
            have = {x["call_id"] for x in con.execute("SELECT call_id FROM request_calls WHERE request_id = ?", (r["id"],))}
        for cid in calls:
            if cid in have:
                continue
            c = found[cid]
            hid = open_hold(self.data, cid, f"request {r['number']}", actor, now)
            with self._db() as con, con:
                con.execute("INSERT INTO request_calls (request_id, call_id, line, line_name, start_utc, duration,"
                            " matches, reason, hold_id, attached_by, attached_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (r["id"], cid, c["line"], c["line_name"], c["start"], c["duration"], int(c["matches"]),
                             "" if c["matches"] else reason.strip()[:500], hid, actor, iso_utc(now)))
            self.audit.append("request.attach", actor=actor, role="officer", obj=f"request:{r['number']}", source=source,
                              reason="" if c["matches"] else "other parties: " + reason.strip()[:200],
                              detail={"call": cid, "matches": c["matches"], "hold": hid})
            out.append(c)
        return out

    def detach(self, number: str, call: int, *, actor: str, source: str = "local") -> None:
        r = self._search_row(number, actor, source)
        with self._db() as con:
            c = con.execute("SELECT * FROM request_calls WHERE request_id = ? AND call_id = ?", (r["id"], call)).fetchone()
            if c is None:
                raise RequestError(f"{call}번 통화는 첨부되어 있지 않습니다 · call {call} is not attached", "not_attached")
            with con:
                con.execute("DELETE FROM request_calls WHERE request_id = ? AND call_id = ?", (r["id"], call))
        if c["hold_id"]:
            with contextlib.suppress(NokboxError):
                close_hold(self.data, c["hold_id"], actor, f"detached from request {r['number']}")
        self.audit.append("request.attach", actor=actor, role="officer", obj=f"request:{r['number']}", source=source,
                          reason="detached", detail={"call": call, "detached": True})

    def submit(self, number: str, *, actor: str, source: str = "local") -> None:
        r = self.row(number)
        self._mine(r, actor, "request.submit", source)
        if r["state"] != "entered":
            self._refuse("request.submit", actor, r["number"], f"state {r['state']}", source,
                         f"이미 {STATES[r['state']]} 상태입니다 · the request is already {r['state']}", "state")
        with self._db() as con:
            calls = [x["call_id"] for x in con.execute("SELECT call_id FROM request_calls WHERE request_id = ?", (r["id"],))]
            if not calls:
                self._refuse("request.submit", actor, r["number"], "no calls attached", source,
                             "첨부된 통화가 없습니다: 먼저 검색하여 첨부하십시오 · no calls attached: search and attach first",
                             "no_calls")
            marks = ",".join("?" * len(calls))
            prior = [x["number"] for x in con.execute(
                f"SELECT DISTINCT q.number FROM requests q JOIN request_calls c ON c.request_id = q.id WHERE"
                f" q.state = 'rejected' AND q.officer = ? AND q.id != ? AND c.call_id IN ({marks})",
                [actor, r["id"], *calls])]
            with con:
                con.execute("UPDATE requests SET state = 'submitted', state_utc = ? WHERE id = ?", (iso_utc(self._now()), r["id"]))
        detail = {"calls": calls}
        if prior:
            detail["after_rejection"] = prior  # the same calls asked again after a rejection: the review flags it
        self.audit.append("request.submit", actor=actor, role="officer", obj=f"request:{r['number']}", source=source,
                          detail=detail)

    # -- approval ---------------------------------------------------------------------------
    def stage_due(self, r: sqlite3.Row) -> str | None:
        """The approval stage the request waits for: 'team', 'head', or None."""
        if r["state"] == "submitted":
            return "team" if self.cfg.release.approval == "team+head" else "head"
        if r["state"] == "reviewed":
            return "head"
        return None

    def decide(self, number: str, *, actor: str, decision: str, pin: str, comment: str, source: str = "local") -> dict:
        """An approver approves or rejects with their PIN and a comment; the final approval asks the
        keeper for the grant that opens the attached calls for the officer."""
        action = "request.approve" if decision == "approved" else "request.reject"
        r = self.row(number)
        stage = self.stage_due(r)
        if stage is None:
            self._refuse(action, actor, r["number"], f"state {r['state']}", source,
                         f"{STATES[r['state']]} 상태의 신청은 결재할 수 없습니다 · the request is {r['state']}", "state")
        if actor == r["officer"]:
            self._refuse(action, actor, r["number"], "self-approval", source,
                         "자신이 접수한 신청은 결재할 수 없습니다 · you cannot decide on a request you entered",
                         "self_approval")
        with self._db() as con:
            team = con.execute("SELECT approver FROM approvals WHERE request_id = ? AND stage = 'team' AND decision = 'approved'",
                               (r["id"],)).fetchone()
        if stage == "head" and team is not None and team["approver"] == actor:
            self._refuse(action, actor, r["number"], "same person at both stages", source,
                         "팀장 검토자와 과장 승인자는 다른 사람이어야 합니다 · the reviewer and the approver must differ",
                         "same_approver")
        if not comment.strip() and decision == "rejected":
            raise RequestError("반려 사유를 적으십시오 · a rejection needs a comment", "comment")
        final = decision == "approved" and stage == "head"
        # the PIN is checked by the keeper (a rejection opens nothing and needs only the comment)
        res = self.keeper.approve(actor, pin, r["number"], comment=comment, final=final) if decision == "approved" else {}
        now = self._now()
        with self._db() as con, con:
            con.execute("INSERT INTO approvals (request_id, stage, approver, decision, comment, time_utc) VALUES (?, ?, ?, ?, ?, ?)",
                        (r["id"], stage, actor, decision, comment.strip()[:2000], iso_utc(now)))
            if decision == "rejected":
                self._close_locked(con, r, "rejected", comment.strip()[:500], actor, now)
            elif final:
                con.execute("UPDATE requests SET state = 'approved', state_utc = ?, approval_expires_utc = ?,"
                            " grant_token = ?, grant_ref = ? WHERE id = ?",
                            (iso_utc(now), res["expires"], res["grant"], res["ref"], r["id"]))
            else:
                con.execute("UPDATE requests SET state = 'reviewed', state_utc = ? WHERE id = ?", (iso_utc(now), r["id"]))
        self.audit.append(action, actor=actor, role="approver", obj=f"request:{r['number']}", source=source,
                          reason=comment.strip()[:200], detail={"stage": stage, "final": final,
                                                                "grant": res.get("ref") if final else None})
        return {"stage": stage, "final": final, "expires": res.get("expires") if final else None}

    # -- use ---------------------------------------------------------------------------------
    def grant_for(self, number: str, call: int | None, *, actor: str, action: str, source: str = "local") -> tuple[sqlite3.Row, str]:
        """(row, grant token) for a play or export by the officer of an approved request."""
        r = self.row(number)
        if r["officer"] != actor:
            self._refuse(action, actor, r["number"], "not the request's officer", source,
                         "이 신청의 담당자만 할 수 있습니다 · only the request's officer may do this", "not_officer")
        now = self._now()
        if r["state"] == "approved" and r["approval_expires_utc"] and r["approval_expires_utc"] < iso_utc(now):
            with self._db() as con, con:
                self._close_locked(con, r, "expired", "승인 기간 경과 · the approval expired unused", "system", now)
            self._refuse(action, actor, r["number"], "approval expired", source,
                         "승인 기간이 지났습니다: 새로 신청하십시오 · the approval has expired: enter a new request", "expired")
        if r["state"] != "approved" or not r["grant_token"]:
            self._refuse(action, actor, r["number"], f"state {r['state']}", source,
                         f"{STATES[r['state']]} 상태입니다: 승인된 신청만 열람·제공할 수 있습니다 · the request is "
                         f"{r['state']}: only an approved request can be played or exported", "state")
        if action == "request.export" and r["kind"] != "provide":
            self._refuse(action, actor, r["number"], "a listening request", source,
                         "열람 신청입니다: 파일 제공은 제공 신청으로만 · a listening (열람) request cannot be exported",
                         "kind")
        if call is not None:
            with self._db() as con:
                ok = con.execute("SELECT 1 FROM request_calls WHERE request_id = ? AND call_id = ?", (r["id"], call)).fetchone()
            if not ok:
                self._refuse(action, actor, r["number"], f"call {call} not in the request", source,
                             f"{call}번 통화는 이 신청에 없습니다 · call {call} is not in this request", "not_in_request")
        return r, r["grant_token"]

    def lapse(self, number: str, *, actor: str, source: str = "local") -> None:
        """The keeper no longer knows the request's grant (it restarted: grants live only in its memory):
        the request goes back to the head's approval, which can then be given again."""
        r = self.row(number)
        if r["state"] != "approved":
            return
        with self._db() as con, con:
            team = con.execute("SELECT 1 FROM approvals WHERE request_id = ? AND stage = 'team' AND decision = 'approved'",
                               (r["id"],)).fetchone()
            back = "reviewed" if team else "submitted"
            con.execute("UPDATE requests SET state = ?, state_utc = ?, grant_token = NULL, grant_ref = NULL,"
                        " approval_expires_utc = NULL WHERE id = ?", (back, iso_utc(self._now()), r["id"]))
        self.audit.append("request.lapse", actor=actor, role="officer", obj=f"request:{r['number']}", source=source,
                          reason="the keeper restarted and forgot the grant: approve again",
                          detail={"state": back})

    def record_use(self, number: str, kind: str, *, actor: str, call: int | None, outcome: str = "ok",
                   detail: dict | None = None, source: str = "local") -> None:
        """A ledger line: a play, or an export attempt and its outcome (only 'ok' counts as delivered)."""
        r = self.row(number)
        with self._db() as con, con:
            con.execute("INSERT INTO uses (request_id, kind, call_id, actor, time_utc, outcome, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (r["id"], kind, call, actor, iso_utc(self._now()), outcome, json.dumps(detail or {}, ensure_ascii=False)))
        self.audit.append(f"request.{kind}", actor=actor, role="officer", obj=f"request:{r['number']}", source=source,
                          outcome=outcome if outcome in ("ok", "failed", "refused") else "failed",
                          reason="" if outcome == "ok" else outcome[:200], detail=(detail or {}) | {"call": call})

    def delivered(self, number: str, *, actor: str, detail: dict, source: str = "local") -> None:
        """The package reached the stick and read back whole: the request is delivered (closed)."""
        r = self.row(number)
        self.record_use(number, "export", actor=actor, call=None, outcome="ok", detail=detail, source=source)
        now = self._now()
        with self._db() as con, con:
            self._close_locked(con, r, "delivered", "USB 제공 완료 · delivered on USB", actor, now)
        self._end_grant(r, actor)

    # -- closing -----------------------------------------------------------------------------
    def close(self, number: str, *, actor: str, reason: str, state: str = "closed", source: str = "local") -> None:
        r = self.row(number)
        self._mine(r, actor, "request.close", source)
        if r["state"] in CLOSED_STATES:
            self._refuse("request.close", actor, r["number"], f"already {r['state']}", source,
                         f"이미 종결된 신청입니다 ({STATES[r['state']]}) · the request is already closed", "closed")
        if not reason.strip():
            raise RequestError("종결 사유를 적으십시오 · a reason is required", "reason")
        if state not in ("closed", "withdrawn", "listened"):
            raise RequestError("종결 구분이 잘못되었습니다 · bad closing state", "bad_args")
        with self._db() as con, con:
            self._close_locked(con, r, state, reason.strip()[:500], actor, self._now())
        self._end_grant(r, actor)

    def _end_grant(self, r: sqlite3.Row, actor: str) -> None:
        if r["grant_token"]:
            with contextlib.suppress(NokboxError, OSError):
                self.keeper.end_grant(actor, r["grant_token"])

    def _close_locked(self, con: sqlite3.Connection, r: sqlite3.Row, state: str, reason: str, actor: str, now: float) -> None:
        """Close inside the caller's transaction: state, time, grant forgotten here; holds end."""
        con.execute("UPDATE requests SET state = ?, state_utc = ?, closed_utc = ?, close_reason = ?, grant_token = NULL"
                    " WHERE id = ?", (state, iso_utc(now), iso_utc(now), reason, r["id"]))
        holds = [x["hold_id"] for x in con.execute("SELECT hold_id FROM request_calls WHERE request_id = ? AND hold_id IS NOT NULL",
                                                   (r["id"],))]
        for hid in holds:
            with contextlib.suppress(NokboxError):
                close_hold(self.data, hid, actor, f"request {r['number']} {state}")
        self.audit.append("request.close", actor=actor, role="officer" if actor != "system" else "system",
                          obj=f"request:{r['number']}", reason=reason[:200], detail={"state": state, "holds": len(holds)})

    def record_destruction(self, number: str, *, actor: str, when: str, note: str, source: str = "local") -> None:
        """The recipient reported destroying what was provided (art. 10(3))."""
        r = self.row(number)
        self._mine(r, actor, "request.close", source)
        if r["state"] != "delivered":
            raise RequestError("제공 완료된 신청에만 파기 확인을 적습니다 · only a delivered request records destruction",
                               "state")
        t = parse_local(when, "destroyed")
        with self._db() as con, con:
            con.execute("UPDATE requests SET destroyed_utc = ?, destroyed_note = ? WHERE id = ?",
                        (iso_utc(t), note.strip()[:500], r["id"]))
        self.audit.append("request.close", actor=actor, role="officer", obj=f"request:{r['number']}", source=source,
                          reason="recipient destroyed the copy", detail={"destroyed": iso_utc(t)})

    def mark_destroyed_calls(self) -> int:
        """Attached calls that retention destroyed (their request never released them): noted for the ledger."""
        idx = CallIndex(self.data / "index.sqlite")
        try:
            with self._db() as con:
                rows = list(con.execute("SELECT request_id, call_id FROM request_calls WHERE destroyed_utc IS NULL"))
                gone = [x for x in rows if idx.con.execute("SELECT 1 FROM calls WHERE id = ?", (x["call_id"],)).fetchone() is None]
                with con:
                    for x in gone:
                        con.execute("UPDATE request_calls SET destroyed_utc = ? WHERE request_id = ? AND call_id = ?",
                                    (iso_utc(self._now()), x["request_id"], x["call_id"]))
        finally:
            idx.close()
        return len(gone)

    def purge(self) -> list[str]:
        """Destroy requests closed more than ``release.keep_years`` ago (rows, sealed details, scans),
        keeping a record of the destruction; what was destroyed."""
        cutoff = iso_utc(self._now() - self.cfg.release.keep_years * 365.25 * 86400)
        out = []
        with self._db() as con:
            old = list(con.execute("SELECT * FROM requests WHERE closed_utc IS NOT NULL AND closed_utc < ?", (cutoff,)))
            for r in old:
                for a in con.execute("SELECT file FROM attachments WHERE request_id = ?", (r["id"],)):
                    (self.data / a["file"]).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    (self.data / "requests" / r["number"]).rmdir()
                with con:
                    for t in ("attachments", "request_calls", "approvals", "uses"):
                        con.execute(f"DELETE FROM {t} WHERE request_id = ?", (r["id"],))
                    con.execute("DELETE FROM requests WHERE id = ?", (r["id"],))
                    con.execute("INSERT OR REPLACE INTO request_destructions (number, created_utc, closed_utc, destroyed_utc,"
                                " reason) VALUES (?, ?, ?, ?, ?)",
                                (r["number"], r["created_utc"], r["closed_utc"], iso_utc(self._now()),
                                 f"보존기간 {self.cfg.release.keep_years}년 경과 · kept {self.cfg.release.keep_years} years"))
                self.audit.append("request.destroy", actor="system", role="system", obj=f"request:{r['number']}",
                                  reason=f"closed more than {self.cfg.release.keep_years} years ago")
                out.append(r["number"])
        return out

    # -- the ledger (form 3) --------------------------------------------------------------------
    def ledger(self, *, actor: str, start: float, end: float, kind: str | None = None, officer: str | None = None,
               source: str = "local") -> list[dict]:
        """Rows of the management ledger for requests entered in [start, end), with their approvals
        (팀장 / 과장) and deliveries; the requesters' names are opened through the keeper."""
        q = "SELECT * FROM requests WHERE created_utc >= ? AND created_utc < ?"
        args: list = [iso_utc(start), iso_utc(end)]
        if kind:
            q += " AND kind = ?"
            args.append(kind)
        if officer:
            q += " AND officer = ?"
            args.append(officer)
        q += " ORDER BY year, seq"
        with self._db() as con:
            reqs = list(con.execute(q, args))
            rows = []
            for r in reqs:
                calls = list(con.execute("SELECT * FROM request_calls WHERE request_id = ? ORDER BY start_utc", (r["id"],)))
                aps = {a["stage"]: a for a in con.execute(
                    "SELECT * FROM approvals WHERE request_id = ? ORDER BY id", (r["id"],))}
                done = con.execute("SELECT time_utc FROM uses WHERE request_id = ? AND kind = 'export' AND outcome = 'ok'"
                                   " AND call_id IS NULL ORDER BY id DESC LIMIT 1", (r["id"],)).fetchone()
                plays = con.execute("SELECT COUNT(*) FROM uses WHERE request_id = ? AND kind = 'play'", (r["id"],)).fetchone()[0]
                gone = [c for c in calls if c["destroyed_utc"]]
                summary = ""
                if calls:
                    c0 = calls[0]
                    summary = f"{c0['line'] + 1}번 회선 {_local(c0['start_utc'])}" + (f" 외 {len(calls) - 1}건" if len(calls) > 1 else "")
                note = []
                if gone:
                    note.append(f"보존기간 만료로 파기된 통화 {len(gone)}건 · {len(gone)} call(s) destroyed by retention")
                if plays:
                    note.append(f"재생 {plays}회")
                if r["close_reason"] and r["state"] in ("rejected", "withdrawn", "closed", "expired"):
                    note.append(r["close_reason"])
                if r["document_number"]:
                    note.append(f"공문 {r['document_number']}")
                rows.append({"number": r["number"], "received": r["created_utc"], "requester": "", "kind": KINDS[r["kind"]],
                             "ground": f"제7조제1항 제{r['legal_ground']}호" + (f" ({r['document_number']})" if r["document_number"] else ""),
                             "address": "", "reason": "", "numbers": "", "call_time": _local(calls[0]["start_utc"]) if calls else "",
                             "purpose": "", "calls": len(calls), "call_summary": summary, "officer": r["officer"],
                             "team": _approval_cell(aps.get("team")), "head": _approval_cell(aps.get("head")),
                             "delivered": done["time_utc"] if done else "", "state": STATES[r["state"]],
                             "destroyed": r["destroyed_utc"] or "", "note": "; ".join(note)})
        if rows:
            got = self.keeper.request_details(actor, [x["number"] for x in rows], "ledger")["details"]
            from ..vault.personal import mask_number

            for x in rows:
                d = got.get(x["number"]) or {}
                x["requester"] = (d.get("requester") or {}).get("name", "")
                x["address"] = (d.get("requester") or {}).get("address", "")
                x["purpose"] = d.get("purpose", "")
                x["reason"] = d.get("reason", "")
                nums = []
                for n in (d.get("sending_number"), d.get("receiving_number")):
                    if n:
                        try:
                            nums.append(mask_number(normal_number(n)))
                        except NokboxError:
                            nums.append("*" * len(n))
                x["numbers"] = " / ".join(nums)
        self.audit.append("ledger.view", actor=actor, role="-", obj="ledger", source=source,
                          detail={"from": iso_utc(start), "to": iso_utc(end), "rows": len(rows), "kind": kind,
                                  "officer": officer})
        return rows


def _approval_cell(a) -> str:
    if a is None:
        return ""
    word = "승인" if a["decision"] == "approved" else "반려"
    return f"{a['approver']} {word} {_local(a['time_utc'])}"


def candidates(data: Path, r, cfg) -> list[dict]:
    """The finished calls inside a request's window (± margin) and lines, and whether each matches
    one of the request's numbers by blind index. Reads the index only (no number is opened)."""
    m = cfg.release.search_margin_min * 60
    lo = iso_utc(parse_utc(r["call_from_utc"]).timestamp() - m)
    hi = iso_utc(parse_utc(r["call_to_utc"]).timestamp() + m)
    lines = json.loads(r["lines"])
    blind = set((r["blind"] or "").split())
    idx = CallIndex(Path(data) / "index.sqlite")
    try:
        q = ("SELECT id, line, line_name, start_utc, duration, numbers_blind FROM calls INDEXED BY calls_start"
             " WHERE start_utc >= ? AND start_utc <= ? AND state = 'finished'")
        args: list = [lo, hi]
        if lines:
            q += f" AND line IN ({','.join('?' * len(lines))})"
            args += lines
        rows = list(idx.con.execute(q + " ORDER BY start_utc LIMIT 2000", args))
    finally:
        idx.close()
    return [{"id": c["id"], "line": c["line"], "line_name": c["line_name"], "start": c["start_utc"],
             "duration": round(c["duration"] or 0.0, 1),
             "matches": bool(blind & set((c["numbers_blind"] or "").split()))} for c in rows]


class KeeperView:
    """What the keeper process needs of the requests, read-only (built by the CLI; the keeper cannot
    import this module): who may see a request, its sealed details and scans, what an approval opens,
    and which calls a request's search may show masked numbers for."""

    def __init__(self, data: Path, cfg, authorize: Callable[[str, str], "str | None"]) -> None:
        self.data = Path(data)
        self.cfg = cfg
        self.authorize = authorize

    @contextlib.contextmanager
    def _row(self, number: str):
        """(the request's row or None, the read-only connection or None), closed afterwards."""
        con = connect_readonly(self.data)
        try:
            yield (con.execute("SELECT * FROM requests WHERE number = ?", (str(number),)).fetchone()
                   if con is not None else None), con
        finally:
            if con is not None:
                con.close()

    def may_view(self, actor: str, number: str) -> str | None:
        with self._row(number) as (r, con):
            if r is None:
                return "no such request"
            if actor == r["officer"] and not self.authorize(actor, "request.create"):
                return None
            if not self.authorize(actor, "audit.review"):
                return None
            if r["state"] != "entered" and not self.authorize(actor, "request.approve"):
                return None
            return "only the request's officer, its approvers (once submitted) and the auditor"

    def sealed_details(self, number: str) -> bytes | None:
        with self._row(number) as (r, con):
            return bytes(r["details_sealed"]) if r is not None else None

    def attachment(self, number: str, index: int):
        with self._row(number) as (r, con):
            if r is None:
                return None
            a = con.execute("SELECT * FROM attachments WHERE request_id = ? AND idx = ?", (r["id"], index)).fetchone()
            return (self.data / a["file"], MIMES[a["mime"]]) if a else None

    def for_approval(self, number: str) -> dict | None:
        with self._row(number) as (r, con):
            if r is None or r["state"] not in ("submitted", "reviewed"):
                return None
            calls = [x["call_id"] for x in con.execute("SELECT call_id FROM request_calls WHERE request_id = ? ORDER BY call_id",
                                                       (r["id"],))]
            return {"officer": r["officer"], "kind": r["kind"], "calls": calls, "purpose_ref": f"request {r['number']}"}

    def may_search(self, actor: str, number: str, calls: list[int]) -> str | None:
        with self._row(number) as (r, con):
            if r is None:
                return "no such request"
            if r["officer"] != actor:
                return "not the request's officer"
            if self.authorize(actor, "request.search"):
                return "no request.search permission"
        allowed = {c["id"] for c in candidates(self.data, r, self.cfg)}
        if not set(calls) <= allowed:
            return "calls outside the request's window and lines"
        return None


def kst_day_bounds(day_from: str, day_to: str) -> tuple[float, float]:
    """[first instant of day_from, first instant after day_to) in KST, for the ledger's period."""
    try:
        a = dt.date.fromisoformat(day_from)
        b = dt.date.fromisoformat(day_to)
    except ValueError:
        raise FormError("period", "날짜 형식 YYYY-MM-DD · dates are YYYY-MM-DD") from None
    if b < a:
        raise FormError("period", "끝 날짜가 시작 날짜보다 앞섭니다 · the end is before the start")
    if a.year < 2000 or b.year > 9998:  # an instant UTC and the index can hold (year 1 KST is year 0 UTC)
        raise FormError("period", "날짜는 2000-01-01부터 9998-12-31까지 · dates from 2000-01-01 to 9998-12-31")
    start = dt.datetime.combine(a, dt.time(), KST).timestamp()
    end = dt.datetime.combine(b + dt.timedelta(days=1), dt.time(), KST).timestamp()
    return start, end


"""The printed forms of the release workflow as A4 PDF, laid out like seed 001's forms: the handover
receipt (별지 제2호서식 녹취정보 인계·인수증), the management ledger (별지 제3호서식 관리대장, also as
CSV) and the written notice of a restriction (제9조 시스템 사용 제한 통지서). Korean first, English
smaller under it.

Why ReportLab with the Nanum TTF fonts (Debian ``fonts-nanum``): measured on this box at about 0.2 s
and 56 MB per page against WeasyPrint's 0.9 s and 150 MB (``shared/notes/machine.md``), and memory
matters on a Pi; ReportLab cannot load the Noto CJK OpenType fonts, Nanum works. Plain dicts in,
bytes out: no files, no logging (every value here is personal data). User text is escaped (ReportLab's
Paragraph parses markup) and wraps inside its cell: between words, as Korean is set (ReportLab's
``wordWrap='CJK'`` breaks anywhere, "요청드립니 / 다"), and ``splitLongWords`` cuts a word wider than
its cell, so nothing overflows. Times are ISO 8601 strings (a naive one is taken as UTC) printed in
KST as ``2026-12-03 14:05``; a missing key prints blank.

``receipt_pdf(req)`` — 인계·인수증; page 1 is form 2 (its rows, pledge and signature boxes), then an
annex with the request (form 1's fields), the approvals and how to verify the package:

- ``number`` 관리번호 ("2026-0042"); ``kind`` "listen" (열람) or "provide" (제공)
- ``requester`` {``name`` 성명, ``id_number`` 생년월일·법인번호, ``address`` 주소(부서명), ``contact`` 연락처}
- ``organisation`` the office handing over (인계자 소속; optional); ``office`` (기관명, optional, default
  ``organisation``) names the rules in the pledge: 「{office} 행정전화 녹취시스템 운영 지침」
- ``sending_number`` 송신번호, ``receiving_number`` 수신번호; ``call_from``, ``call_to`` the requested window
- ``purpose`` 신청용도, ``relation`` 정보주체와의 관계, ``reason`` 신청사유
- ``legal_ground`` 1-5: art. 7(1) item, printed with its text; ``document_number`` 공문번호 and
  ``requesting_body`` 요청기관·기관·단체명 (both optional)
- ``officer`` {``name``, ``display``} 인계자; ``approvals`` [{``stage`` "team" (팀장) | "head" (과장),
  ``name``, ``display``, ``decision`` "approved" | "rejected", ``time``, ``comment``}]
- ``calls`` [{``id``, ``line`` (from 1), ``line_name``, ``start``, ``duration`` (s), ``file`` (name in
  the package), ``sha256``}] — the file table, SHA-256 in full
- ``delivered`` {``time`` 수령일자, ``medium`` "USB" | "열람", ``package`` file name, ``bytes``,
  ``recipient`` 인수자 name} or None (then the date and names are left blank to be written by hand)
- ``signer_fingerprint`` ("SHA256:…", the export signing key), ``checkpoint`` (audit checkpoint line)

``ledger_pdf(rows, period=(from, to), office="")`` — 관리대장, landscape A4, both header rows on every
page, "1 / 3" page numbers; ``ledger_csv(rows, period=…)`` one column per key (CSV_HEADER; the period
is not in the CSV: callers put it in the file name). Row keys and the seed's column each fills:

- 번호 ← ``number`` (with ``received``, the date the request was entered, under it)
- 구분 ← ``kind`` ("listen"/"provide" or 열람/제공), printed as ▣ 제공 □ 열람
- 신청인 ← ``requester``; 소속(주소) ← ``address`` (optional)
- 녹취일시 ← ``call_summary`` (else ``call_time``, else ``calls``, the number of calls, as "3건")
- 녹취 전화번호 ← ``numbers`` (optional, already masked by the caller)
- 신청사유 ← ``purpose`` (and ``reason`` when given); 이용·제공 근거(공문번호) ← ``ground`` (optional)
- 인계자 ← ``officer``; 인수자 ← ``requester`` with ``delivered`` (the time it was handed over)
- 결재 팀장 ← ``team``, 결재 과장 ← ``head`` (the approver's display and decision, or "")
- 비고 ← ``state`` (a Korean word), ``destroyed`` (the recipient confirmed destruction) and ``note``

``restriction_notice_pdf(notice)`` — 사용 제한 통지서 (art. 9: the head notifies the user in writing):
``number`` 문서번호, ``person`` {``name``, ``display``, ``roles`` [str]}, ``ground`` 1-4 (art. 9
item, printed with its text, the others listed unticked), ``reason`` 구체적 사유, ``date`` 제한일,
``head`` the head of the operating department (a name, or {``name``, ``display``}), ``by`` the admin
who restricted the account; optional ``office`` (기관명) and ``head_title`` (default 운영부서의 장).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from pathlib import Path
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

from ..audit import csv_text
from ..errors import NokboxError

KST = ZoneInfo("Asia/Seoul")
FONT_DIR = Path("/usr/share/fonts/truetype/nanum")
FONTS = {"NanumGothic": "NanumGothic.ttf", "NanumGothicBold": "NanumGothicBold.ttf",
         "NanumGothicCoding": "NanumGothicCoding.ttf"}
FONT, BOLD, MONO = FONTS

RULES = "행정전화 녹취시스템 운영 지침"
PLEDGE = ("본인은 상기 녹취정보를 인수함에 있어 목적 이외의 용도로 사용하지 않고, 타인에게 양도 또는 제공하지 않으며, "
          "녹취정보 관리 및 취급에 있어 「{rules}」 및 「개인정보 보호법」 등 관련 규정을 준수할 것이며, "
          "인수 이후의 제반 사고에 대해서는 인수자 본인이 모두 책임질 것을 서약합니다.")
PLEDGE_EN = ("I will use this information only for the stated purpose, not pass it on or provide it to anyone, "
             "handle it under these rules and the Personal Information Protection Act, and bear all responsibility "
             "for anything that happens to it after I receive it.")
DISPOSAL = "본 녹취정보는 당초 요구한 목적을 달성한 경우 즉시 파기하겠습니다."
DISPOSAL_EN = "I will destroy this information as soon as the purpose of the request has been achieved."
GROUNDS = {  # seed 001 art. 7(1), as written
    1: "당사자 중 일방의 동의가 있는 경우",
    2: "당사자 중 일방에게 열람·제공되는 경우",
    3: "다른 법령에서 특별히 규정하고 있는 경우",
    4: "수사와 공소의 제기 및 유지에 필요하여 관계기관의 문서로 요청된 경우",
    5: "법원의 재판업무 수행을 위하여 법원의 문서로 요청된 경우",
}
RESTRICT_GROUNDS = {  # seed 001 art. 9, as written
    1: "녹취정보의 관리를 소홀히 하여 타인에게 유출시킨 경우",
    2: "녹취 시 사전고지를 하지 않고 사용한 경우",
    3: "녹취정보를 업무와 상관없이 개인적으로 부정하게 사용한 경우",
    4: "그 밖에 운영부서의 장이 사용 제한이 필요하다고 판단하는 경우",
}
VERIFY = ("ssh-keygen -Y verify -f allowed_signers -I nokbox-export -n file -s MANIFEST.sha256.sig "
          "< MANIFEST.sha256")
KINDS = {"listen": "열람", "provide": "제공"}
STAGES = {"team": "팀장", "head": "과장"}
DECISIONS = {"approved": "승인", "rejected": "반려"}

# The ledger's columns in the seed's order: (key, Korean header, English header, width share).
LEDGER_COLUMNS = [
    ("number", "번호", "No.", 0.068), ("kind", "구분", "Kind", 0.046), ("requester", "신청인", "Requester", 0.066),
    ("address", "소속(주소)", "Affiliation", 0.08), ("call_time", "녹취일시", "Calls", 0.098),
    ("numbers", "녹취 전화번호", "Numbers", 0.075), ("reason", "신청사유", "Reason", 0.105),
    ("ground", "이용·제공 근거\n(공문번호)", "Legal ground", 0.08), ("officer", "인계자", "Handed by", 0.058),
    ("recipient", "인수자", "Received by", 0.08), ("team", "팀장", "Team lead", 0.068),
    ("head", "과장", "Head", 0.068), ("note", "비고", "Note", 0.108),
]
CSV_HEADER = ["번호", "접수일시", "구분", "신청인", "소속(주소)", "녹취일시", "통화 수", "녹취 전화번호", "신청용도",
              "신청사유", "이용·제공 근거(공문번호)", "인계자", "인수자", "제공일시", "결재 팀장", "결재 과장", "상태",
              "파기 확인", "비고"]
PAD_LR, PAD_TOP, PAD_BOTTOM = 3, 2.5, 3          # cell padding (pt)
LEDGER_CLIP = 240                                 # characters of one ledger cell in the PDF
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class FormsError(NokboxError, FileNotFoundError):
    """A form cannot be printed: the Korean font is not installed."""


def _fonts() -> None:
    """Register the Nanum fonts (once); raises FormsError naming the Debian package if one is missing."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    for name, file in FONTS.items():
        path = FONT_DIR / file
        if not path.is_file():
            raise FormsError(f"한글 글꼴이 없습니다 · the Korean font {path} is missing: "
                             "install the Debian package fonts-nanum (apt-get install fonts-nanum)")
    registered = set(pdfmetrics.getRegisteredFontNames())
    for name, file in FONTS.items():
        if name not in registered:
            pdfmetrics.registerFont(TTFont(name, str(FONT_DIR / file)))


def _time(iso, fmt: str = "%Y-%m-%d %H:%M") -> str:
    if not iso:
        return ""
    try:
        t = dt.datetime.fromisoformat(str(iso).replace("Z", "+00:00"))
    except ValueError:
        return str(iso)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.astimezone(KST).strftime(fmt)


def _day(iso) -> str:
    return _time(iso, "%Y년 %m월 %d일")


def _text(v) -> str:
    """User text made safe for a Paragraph: markup escaped, control characters dropped, lines kept."""
    s = _CONTROL.sub("", "" if v is None else str(v))
    return escape(s).replace("\r\n", "\n").replace("\n", "<br/>")


class _Styles:
    def __init__(self, size: float = 9):
        from reportlab.lib.enums import TA_CENTER, TA_JUSTIFY
        from reportlab.lib.styles import ParagraphStyle as S

        base = S("p", fontName=FONT, fontSize=size, leading=size * 1.35, splitLongWords=1)
        self.p = base
        self.c = S("c", parent=base, alignment=TA_CENTER)
        self.j = S("j", parent=base, alignment=TA_JUSTIFY)
        self.en = S("en", parent=base, fontSize=size - 2, leading=(size - 2) * 1.3, textColor="#555555")
        self.small = S("sm", parent=base, fontSize=size - 1.5, leading=(size - 1.5) * 1.3)
        self.mono = S("mo", parent=base, fontName=MONO, fontSize=size - 2, leading=(size - 2) * 1.3)
        self.th = S("th", parent=base, fontName=BOLD, alignment=TA_CENTER, leading=size * 1.25)
        self.title = S("ti", parent=base, fontName=BOLD, fontSize=17, leading=22, alignment=TA_CENTER)
        self.sub = S("su", parent=base, fontSize=8.5, leading=11, alignment=TA_CENTER, textColor="#555555")
        self.h = S("h", parent=base, fontName=BOLD, fontSize=size + 1.5, leading=(size + 1.5) * 1.3,
                   spaceBefore=7, spaceAfter=3)
        self.form = S("fo", parent=base, fontSize=8, leading=10, textColor="#333333")


def _p(text, style, en: str = "", en_style=None):
    """A paragraph of user text (escaped), optionally with an English line under it."""
    from reportlab.platypus import Paragraph

    body = _text(text)
    if en:
        size = en_style.fontSize if en_style else style.fontSize - 2
        body += f"<br/><font size={size} color='#555555'>{escape(en)}</font>"
    return Paragraph(body, style)


def _label(ko: str, en: str, st: _Styles, style=None):
    """A bold Korean label with its English name smaller under it."""
    from reportlab.platypus import Paragraph

    style = style or st.th
    en_size = max(style.fontSize - 2.5, 5.5)
    return Paragraph(f"{_text(ko)}<br/><font name='{FONT}' size={en_size} color='#555555'>{escape(en)}</font>",
                     style)


def _table(data, widths, *, header_rows: int = 0, label_cols=(), spans=(), extra=(), heights=None,
           splitInRow: int = 1):
    from reportlab.lib import colors
    from reportlab.platypus import Table, TableStyle

    shade = colors.HexColor("#EFEFEF")
    cmds = [("GRID", (0, 0), (-1, -1), 0.5, colors.black), ("BOX", (0, 0), (-1, -1), 1.0, colors.black),
            ("VALIGN", (0, 0), (-1, -1), "MIDDLE"), ("FONTNAME", (0, 0), (-1, -1), FONT),
            ("LEFTPADDING", (0, 0), (-1, -1), PAD_LR), ("RIGHTPADDING", (0, 0), (-1, -1), PAD_LR),
            ("TOPPADDING", (0, 0), (-1, -1), PAD_TOP), ("BOTTOMPADDING", (0, 0), (-1, -1), PAD_BOTTOM)]
    cmds += [("BACKGROUND", (c, 0), (c, -1), shade) for c in label_cols]
    if header_rows:
        cmds.append(("BACKGROUND", (0, 0), (-1, header_rows - 1), shade))
    cmds += [("SPAN", a, b) for a, b in spans]
    cmds += list(extra)
    # splitInRow: a row taller than what is left of the page (a 2,000-character reason) splits
    t = Table(data, colWidths=widths, rowHeights=heights, repeatRows=header_rows, splitInRow=splitInRow)
    t.setStyle(TableStyle(cmds))
    return t


def _numbered(left_later: str):
    """A canvas class that prints "page / pages" (known only at the end, so pages are kept until then)."""
    from reportlab.pdfgen.canvas import Canvas

    class Numbered(Canvas):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self._saved: list[dict] = []

        def showPage(self):
            self._saved.append(dict(self.__dict__))
            self._startPage()

        def save(self):
            total = len(self._saved)
            for page in self._saved:
                self.__dict__.update(page)
                w, _ = self._pagesize
                self.setFont(FONT, 7.5)
                self.setFillGray(0.3)
                self.drawCentredString(w / 2, 22, f"{self._pageNumber} / {total}")
                if self._pageNumber > 1 and left_later:  # page 1 names itself at its top
                    self.drawString(36, 22, left_later)
                self.drawRightString(w - 36, 22, "nokbox")
                super().showPage()
            super().save()

    return Numbered


def _build(story, *, title: str, landscape_: bool = False, margin_mm: float = 16,
           left_later: str = "") -> bytes:
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.units import mm
    from reportlab.platypus import SimpleDocTemplate

    buf = io.BytesIO()
    doc = SimpleDocTemplate(buf, pagesize=landscape(A4) if landscape_ else A4, leftMargin=margin_mm * mm,
                            rightMargin=margin_mm * mm, topMargin=margin_mm * mm, bottomMargin=margin_mm * mm,
                            title=title, author="nokbox", subject=title, creator="nokbox")
    doc.build(story, canvasmaker=_numbered(left_later))
    return buf.getvalue()


def _height(landscape_: bool = False, margin_mm: float = 16) -> float:
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm

    return (A4[0] if landscape_ else A4[1]) - 2 * margin_mm * mm


def _width(landscape_: bool = False, margin_mm: float = 16) -> float:
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.units import mm

    return (A4[1] if landscape_ else A4[0]) - 2 * margin_mm * mm


def _rules(office: str) -> str:
    return f"{office} {RULES}".strip()


def _duration(seconds) -> str:
    s = int(round(float(seconds or 0)))
    return f"{s // 60}:{s % 60:02d}"


def _name(person) -> str:
    if isinstance(person, dict):
        return person.get("display") or person.get("name") or ""
    return person or ""


# -- form 2: 인계·인수증 -------------------------------------------------------------------------
def receipt_pdf(req: dict) -> bytes:
    """별지 제2호서식 녹취정보 인계·인수증 (handover receipt) and its annex; see the module doc for ``req``."""
    from reportlab.lib import colors
    from reportlab.lib.units import mm
    from reportlab.platypus import CondPageBreak, KeepTogether, Spacer

    _fonts()
    st = _Styles(9)
    w = _width()
    number = req.get("number") or ""
    kind = KINDS.get(req.get("kind"), req.get("kind") or "")
    who = req.get("requester") or {}
    calls = req.get("calls") or []
    got = req.get("delivered") or {}
    unit = req.get("organisation") or ""
    office = req.get("office") or unit
    try:
        ground = int(req.get("legal_ground") or 0)
    except (TypeError, ValueError):
        ground = 0
    ground_short = f"제7조제1항 제{ground}호" if ground else ""
    blank_day = "20      년      월      일"

    story = [_p("[별지 제2호서식]", st.form), Spacer(1, 2 * mm),
             _p("녹취정보 인계 · 인수증", st.title),
             _p(f"Handover receipt of recorded call information  ·  관리번호 {number}  ·  {kind}", st.sub),
             Spacer(1, 3 * mm), _p("1. 녹취정보 내용", st.h, "Recorded calls", st.en)]

    phones = "\n".join(f"{ko} {n}" for ko, n in (("송신", req.get("sending_number")), ("수신", req.get("receiving_number")))
                       if n)
    if calls:
        starts = sorted(_time(c.get("start")) for c in calls)
        when = starts[0] if len(starts) == 1 else f"{starts[0]} ~\n{starts[-1]}"
    else:
        when = f"{_time(req.get('call_from'))} ~\n{_time(req.get('call_to'))}"
    note = "\n".join(x for x in (kind, ground_short, req.get("document_number") or "") if x)
    story.append(_table(
        [[_label("관리번호", "Number", st), _label("전화번호", "Telephone", st), _label("통화일시", "Call time", st),
          _label("녹취 파일 수", "Files", st), _label("신청목적", "Purpose", st), _label("비 고", "Note", st)],
         [_p(number, st.c), _p(phones, st.p), _p(when, st.c), _p(f"{len(calls)}", st.c),
          _p(req.get("purpose"), st.p), _p(note, st.c)]],
        [w * f for f in (0.13, 0.19, 0.2, 0.12, 0.21, 0.15)], header_rows=1))

    if calls:
        rows = [[_label("#", "", st), _label("파일", "File", st), _label("통화 번호", "Call ID", st),
                 _label("회선", "Line", st), _label("시작 (KST)", "Start", st), _label("길이", "Length", st),
                 _label("SHA-256", "file hash", st)]]
        for i, c in enumerate(calls, 1):
            rows.append([_p(i, st.c), _p(c.get("file"), st.small), _p(c.get("id"), st.small),
                         _p(f"{c.get('line', '')} {c.get('line_name') or ''}".strip(), st.small),
                         _p(_time(c.get("start")), st.small), _p(_duration(c.get("duration")), st.c),
                         _p(c.get("sha256"), st.mono)])
        story += [Spacer(1, 2 * mm),
                  _table(rows, [w * f for f in (0.05, 0.15, 0.1, 0.13, 0.15, 0.07, 0.35)], header_rows=1)]

    received = _day(got.get("time")) if got else blank_day
    medium = ""
    if got:
        size = int(got.get("bytes") or 0)
        medium = " · ".join(x for x in (got.get("medium") or "", got.get("package") or "",
                                        f"{size:,} bytes" if size else "") if x)
    pledge = PLEDGE.format(rules=_rules(office))
    tail = [_p(f"2. 수령일자 : {received}", st.h, "Date received" + (f" — {medium}" if medium else ""), st.en),
            _p("3. 서약 사항", st.h, "Pledge", st.en),
            _table([[[_p(pledge, st.j), Spacer(1, 1.5 * mm), _p(PLEDGE_EN, st.en)]]], [w],
                   extra=[("TOPPADDING", (0, 0), (-1, -1), 6), ("BOTTOMPADDING", (0, 0), (-1, -1), 7),
                          ("LEFTPADDING", (0, 0), (-1, -1), 8), ("RIGHTPADDING", (0, 0), (-1, -1), 8)]),
            _p("4. 녹취정보의 처리", st.h, "Disposal", st.en),
            _p(DISPOSAL, st.p), _p(DISPOSAL_EN, st.en),
            Spacer(1, 5 * mm), _p(received, st.c), Spacer(1, 4 * mm)]

    officer = req.get("officer") or {}
    recipient = got.get("recipient") or who.get("name") or ""
    body = req.get("requesting_body") or ""
    sign = _p("(서 명)", st.c, "signature", st.en)
    grey = colors.HexColor("#EFEFEF")
    tail.append(_table([
        [_label("인 계 자", "Handed over by", st), _p(f"소 속 : {unit}", st.p), ""],
        ["", _p("직 급 :", st.p), ""],
        ["", _p(f"성 명 : {_name(officer)}", st.p), sign],
        [_label("인 수 자", "Received by", st), _p(f"주 소 : {who.get('address') or ''}", st.p), ""],
        ["", _p("(부 서 명)", st.p), ""],
        ["", _p(f"성 명 : {recipient}", st.p), sign],
        ["", _p(f"(기관·단체명) {body}", st.p), ""],
    ], [w * 0.18, w * 0.6, w * 0.22], label_cols=(0,),
        spans=[((0, 0), (0, 2)), ((0, 3), (0, 6)), ((1, 0), (2, 0)), ((1, 1), (2, 1)), ((1, 3), (2, 3)),
               ((1, 4), (2, 4)), ((1, 6), (2, 6))],
        heights=[None, None, 30, None, None, 30, None],
        extra=[("BACKGROUND", (0, 0), (0, -1), grey), ("TEXTCOLOR", (2, 0), (2, -1), colors.grey)]))
    story.append(KeepTogether(tail))

    # -- annex: the request (form 1's fields), approvals, verification ------------------------------
    story += [CondPageBreak(90 * mm), Spacer(1, 6 * mm),
              _p("붙임 · 신청 내용 및 확인 방법", st.h, "Annex: the request, its approvals, and how to verify the package",
                 st.en)]
    lw = w * 0.2
    fields = [
        ("신청인 성명", "Requester", who.get("name")),
        ("생년월일 (법인·사업자번호)", "Date of birth / registration", who.get("id_number")),
        ("주소 (부서명)", "Address", who.get("address")),
        ("연락처", "Contact", who.get("contact")),
        ("기관·단체명", "Requesting body", body),
        ("송신번호 · 수신번호", "Numbers", " / ".join(x for x in (req.get("sending_number"), req.get("receiving_number"))
                                                 if x)),
        ("통화일시 (신청)", "Calls between (KST)", f"{_time(req.get('call_from'))} ~ {_time(req.get('call_to'))}"),
        ("신청용도", "Purpose", req.get("purpose")),
        ("정보주체와의 관계", "Relation to the data subject", req.get("relation")),
        ("신청사유", "Reason", req.get("reason")),
        ("이용·제공 근거", "Legal ground (art. 7(1))",
         f"{ground_short} {GROUNDS.get(ground, '')}".strip()),
        ("공문번호", "Document number", req.get("document_number") or "-"),
    ]
    story.append(_table([[_label(ko, en, st, st.th), _p(v, st.p)] for ko, en, v in fields], [lw, w - lw],
                        label_cols=(0,)))
    aps = req.get("approvals") or []
    rows = [[_label("결재", "Stage", st), _label("결재자", "Approver", st), _label("결정", "Decision", st),
             _label("일시 (KST)", "Time", st), _label("의견", "Comment", st)]]
    for a in aps:
        rows.append([_p(STAGES.get(a.get("stage"), a.get("stage")), st.c), _p(_name(a), st.p),
                     _p(DECISIONS.get(a.get("decision"), a.get("decision")), st.c), _p(_time(a.get("time")), st.c),
                     _p(a.get("comment"), st.small)])
    if not aps:
        rows.append([_p("-", st.c), "", "", "", ""])
    story += [Spacer(1, 3 * mm), _table(rows, [w * f for f in (0.1, 0.2, 0.1, 0.2, 0.4)], header_rows=1)]

    verify = [
        ("인계 파일", "Package", f"{got.get('package') or ''}" + (f" ({int(got.get('bytes') or 0):,} bytes)"
                                                               if got.get("bytes") else "")),
        ("서명 키", "Signing key", req.get("signer_fingerprint")),
        ("확인 방법", "How to verify", None),
        ("감사 체크포인트", "Audit checkpoint", req.get("checkpoint")),
    ]
    how = [_p("패키지를 풀고 그 폴더에서 실행합니다 (allowed_signers: 기관이 알려 준 이 장치의 공개키 한 줄). "
              "서명 키의 지문이 위와 같아야 합니다.", st.small,
              "Unpack the package and run in its folder (allowed_signers: this box's public key line, from the "
              "office); the key's fingerprint must match the one above.", st.en),
           _p(f"1) {VERIFY}", st.mono), _p("2) sha256sum -c MANIFEST.sha256", st.mono)]
    story += [Spacer(1, 3 * mm), _table(
        [[_label(ko, en, st), how if v is None else _p(v, st.mono if en != "Package" else st.p)]
         for ko, en, v in verify], [lw, w - lw], label_cols=(0,))]
    return _build(story, title=f"녹취정보 인계·인수증 {number}",
                  left_later=f"인계·인수증 {number}")


# -- form 3: 관리대장 -------------------------------------------------------------------------
def _kind(v) -> str:
    return KINDS.get(v, v or "")


def _ledger_cells(r: dict) -> dict:
    """The printed cells of one ledger row (column key -> text)."""
    calls = r.get("calls")
    summary = r.get("call_summary") or r.get("call_time") or ""
    if not summary and calls:
        summary = f"{calls}건"
    reason = "\n".join(x for x in (r.get("purpose") or "", r.get("reason") or "") if x)
    recipient = r.get("requester") or ""
    if r.get("delivered"):
        recipient += f"\n수령 {_time(r['delivered'])}"
    note = "\n".join(x for x in (r.get("state") or "",
                                 f"파기 확인 {_time(r['destroyed'])}" if r.get("destroyed") else "",
                                 r.get("note") or "") if x)
    return {"number": r.get("number") or "", "received": _time(r.get("received"), "%Y-%m-%d"),
            "kind": _kind(r.get("kind")), "requester": r.get("requester") or "", "address": r.get("address") or "",
            "call_time": summary, "numbers": r.get("numbers") or "", "reason": reason, "ground": r.get("ground") or "",
            "officer": r.get("officer") or "", "recipient": recipient, "team": r.get("team") or "",
            "head": r.get("head") or "", "note": note}


def _fit(text: str, style, width: float):
    """A cell's value and height: the plain string when every line fits (drawn directly, far cheaper
    than a Paragraph: the ledger has 13 cells a row), else a wrapping Paragraph."""
    from reportlab.pdfbase.pdfmetrics import stringWidth

    text = _CONTROL.sub("", text).replace("\r\n", "\n")
    lines = text.split("\n")
    if all(stringWidth(x, style.fontName, style.fontSize) <= width for x in lines):
        return text, len(lines) * style.leading
    par = _p(text, style)
    return par, par.wrap(width, 1e6)[1]


def _clip(text: str, limit: int = LEDGER_CLIP) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def ledger_pdf(rows: list[dict], *, period: tuple[str, str], office: str = "") -> bytes:
    """별지 제3호서식 관리대장 (management ledger): landscape A4, header rows repeated, "1 / N" page numbers.

    Rows are measured once and packed into one table per page here: letting ReportLab split one long
    table re-measures the rest of it at every page (1,000 rows took 13 s instead of about 3). A cell is
    clipped at LEDGER_CLIP characters (the CSV has the full text) so that no row outgrows a page."""
    from reportlab.lib.units import mm
    from reportlab.platypus import PageBreak, Spacer

    _fonts()
    st = _Styles(7)
    margin = 12
    w = _width(True, margin)
    widths = [w * c[3] for c in LEDGER_COLUMNS]
    cols = {k: i for i, (k, *_rest) in enumerate(LEDGER_COLUMNS)}
    labels = {k: _label(ko, en, st) for k, ko, en, _ in LEDGER_COLUMNS}
    labels["number"] = _label("번호", "No. (received)", st)
    # two header rows as in the seed: 신청내용 over six columns and 결재 over 팀장 · 과장
    under = ("requester", "address", "call_time", "numbers", "reason", "ground", "team", "head")
    head0 = ["" if k in under else labels[k] for k, *_ in LEDGER_COLUMNS]
    head1 = [labels[k] if k in under else "" for k, *_ in LEDGER_COLUMNS]
    head0[cols["requester"]] = _label("신청내용", "Request", st)
    head0[cols["team"]] = _label("결재", "Approval", st)
    spans = [((cols["requester"], 0), (cols["ground"], 0)), ((cols["team"], 0), (cols["head"], 0))]
    spans += [((cols[k], 0), (cols[k], 1)) for k in ("number", "kind", "officer", "recipient", "note")]

    body: list[tuple[list, float]] = []       # (cells, row height)
    inner = [cw - PAD_LR * 2 for cw in widths]
    centred = {cols["number"], cols["kind"]}
    for r in rows:
        cell = {k: _clip(str(v)) for k, v in _ledger_cells(r).items()}
        kind = cell["kind"]
        cell["kind"] = "▣ 제공\n□ 열람" if kind == "제공" else "□ 제공\n▣ 열람" if kind == "열람" else kind
        cell["number"] = f"{cell['number']}\n{cell['received']}".strip()
        line, height = [], 0.0
        for i, (k, *_rest) in enumerate(LEDGER_COLUMNS):
            value, h = _fit(cell[k], st.c if i in centred else st.p, inner[i])
            line.append(value)
            height = max(height, h)
        body.append((line, height + PAD_TOP + PAD_BOTTOM))
    if not rows:
        body.append(([_p("해당 기간의 기록이 없습니다 · no requests in this period", st.c)]
                     + [""] * (len(LEDGER_COLUMNS) - 1), 20))

    title = f"{office} 행정전화 통화(녹취)정보 (열람 · 제공) 관리대장".strip()
    sub = f"Management ledger of recorded calls viewed or provided  ·  기간 {period[0]} ~ {period[1]}  ·  {len(rows)}건"
    story = [_p("[별지 제3호서식]", st.form), _p(title, st.title), _p(sub, st.sub), Spacer(1, 3 * mm)]
    frame = _height(True, margin) - 12 - 2               # the frame's own padding, and 2 pt to spare
    header = _table([head0, head1], widths, header_rows=2, spans=spans).wrap(w, 1e6)[1]
    room = frame - sum(f.wrap(w, 1e6)[1] for f in story) - header
    page: list[tuple[list, float]] = []
    used = 0.0
    strings = [("FONTSIZE", (0, 2), (-1, -1), st.p.fontSize), ("LEADING", (0, 2), (-1, -1), st.p.leading),
               ("ALIGN", (0, 2), (1, -1), "CENTER")]

    def flush():
        n = len(page)
        story.append(_table([head0, head1] + [c for c, _ in page], widths, header_rows=2, splitInRow=1,
                            heights=[None, None] + [h for _, h in page],
                            spans=spans + ([((0, 2), (-1, 2))] if not rows else []), extra=strings))
        del page[:]
        return n

    for line, height in body:
        if page and used + height > room:
            flush()
            story.append(PageBreak())
            room, used = frame - header, 0.0
        page.append((line, height))
        used += height
    flush()
    return _build(story, title=f"관리대장 {period[0]} ~ {period[1]}", landscape_=True, margin_mm=margin,
                  left_later=f"관리대장 {period[0]} ~ {period[1]}")


def ledger_csv(rows: list[dict], *, period: tuple[str, str]) -> bytes:
    """The ledger as CSV for Excel: UTF-8 with a BOM, a Korean header row, formula-looking cells quoted
    with a leading ``'`` (CSV injection). ``period`` is not written: the caller's file name carries it."""
    del period
    out = io.StringIO()
    wr = csv.writer(out, lineterminator="\r\n")
    wr.writerow(CSV_HEADER)
    for r in rows:
        cell = _ledger_cells(r)
        wr.writerow([csv_text(v) for v in (
            r.get("number"), _time(r.get("received")), cell["kind"], r.get("requester"), r.get("address"),
            cell["call_time"], r.get("calls", ""), r.get("numbers"), r.get("purpose"), r.get("reason"), r.get("ground"),
            r.get("officer"), r.get("requester"), _time(r.get("delivered")), r.get("team"), r.get("head"),
            r.get("state"), _time(r.get("destroyed")), r.get("note"))])
    return ("\ufeff" + out.getvalue()).encode("utf-8")


# -- art. 9: 사용 제한 통지서 --------------------------------------------------------------------
def restriction_notice_pdf(notice: dict) -> bytes:
    """제9조 시스템 사용 제한 통지서 (written notice of a restricted account); see the module doc."""
    from reportlab.lib import colors
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, Spacer, Table, TableStyle

    _fonts()
    st = _Styles(10)
    w = _width()
    person = notice.get("person") or {}
    office = notice.get("office") or ""
    head_title = notice.get("head_title") or "운영부서의 장"
    try:
        g = int(notice.get("ground") or 0)
    except (TypeError, ValueError):
        g = 0
    number = notice.get("number") or ""
    date = _day(notice.get("date"))
    roles = person.get("roles") or []
    who = _name(person)
    if person.get("name") and person.get("name") != who:
        who += f" ({person['name']})"

    grounds = [Paragraph(f"{'▣' if i == g else '□'} 제{i}호 {_text(text)}", st.p) for i, text in RESTRICT_GROUNDS.items()]
    lw = w * 0.24
    story = [_p(f"문서번호 · No. {number}", st.small), Spacer(1, 6 * mm),
             _p("시스템 사용 제한 통지서", st.title),
             _p("Notice of restricted use of the call recording system", st.sub), Spacer(1, 8 * mm),
             _table([[_label("대 상 자", "Person", st), _p(who, st.p)],
                     [_label("역 할", "Roles", st), _p(", ".join(str(x) for x in roles), st.p)],
                     [_label("제한 일자", "Restricted from", st), _p(date, st.p)],
                     [_label("제한 근거 (제9조)", "Ground (art. 9)", st), grounds],
                     [_label("구체적 사유", "Reason", st), _p(notice.get("reason"), st.p)],
                     [_label("처 리 자", "Restricted by", st), _p(_name(notice.get("by")), st.p)]],
                    [lw, w - lw], label_cols=(0,), heights=[28, None, 28, None, 60, 28],
                    extra=[("TOPPADDING", (0, 0), (-1, -1), 5), ("BOTTOMPADDING", (0, 0), (-1, -1), 6),
                           ("LEFTPADDING", (1, 0), (1, -1), 8)]),
             Spacer(1, 10 * mm),
             _p(f"「{_rules(office)}」 제9조에 따라 위와 같이 시스템 사용을 제한함을 서면으로 통지합니다.", st.j),
             Spacer(1, 1.5 * mm),
             _p("Under article 9 of the rules for the office's call recording system, your use of the system is "
                "restricted as stated above; this is the written notice the article requires.", st.en),
             Spacer(1, 18 * mm), _p(date, st.c), Spacer(1, 16 * mm)]
    seal = Table([[_p("(인)", st.c)]], colWidths=[16 * mm], rowHeights=[16 * mm])
    seal.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 0.6, colors.grey), ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
                              ("TEXTCOLOR", (0, 0), (-1, -1), colors.grey)]))
    sig = Table([[_p(f"{office} {head_title}".strip(), st.h), _p(_name(notice.get("head")), st.h), seal]],
                colWidths=[w * 0.45, w * 0.3, 20 * mm])
    sig.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "MIDDLE"), ("ALIGN", (0, 0), (0, 0), "RIGHT")]))
    story.append(sig)
    return _build(story, title=f"시스템 사용 제한 통지서 {number}", left_later=f"사용 제한 통지서 {number}")


def notice_input(user, ground: int, reason: str, by: str, when: float, *, office: str = "", head: str = "") -> dict:
    """What ``restriction_notice_pdf`` prints for an account (``people.accounts.User``) restricted at ``when``."""
    at = dt.datetime.fromtimestamp(when, dt.timezone.utc)
    return {"number": f"제한-{at.astimezone(KST).strftime('%Y%m%d')}-{user.name}",
            "person": {"name": user.name, "display": user.display, "roles": list(user.roles)},
            "ground": ground, "reason": reason, "date": at.isoformat(), "head": head, "by": by, "office": office}

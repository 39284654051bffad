"""The printed forms (seed 001 forms 2 and 3, the art. 9 notice) as real PDFs read back with
poppler's ``pdftotext`` / ``pdfinfo``: labels, values, page size and count, literal markup, wrapping
inside the page; the ledger's CSV through ``csv.reader``."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from firmware.errors import NokboxError
from firmware.release import forms

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "build" / "screenshots" / "forms"
NASTY = "홍<b>길동</b> & <font size=40>x</font>"

SHAS = ["9f3c2a9e1b7d4c6a8e0f2b4d6c8a0e2f4b6d8c0a2e4f6b8d0c2a4e6f8b0d2c4a",
        "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9",
        "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"]


def request(**over) -> dict:
    req = {
        "number": "2026-0042", "kind": "provide",
        "requester": {"name": "홍길동", "id_number": "1980-01-02", "contact": "010-1234-5678",
                      "address": "경기도 이천시 부악로 40, 101동 1203호 (중리동)"},
        "organisation": "이천시", "sending_number": "031-644-2000", "receiving_number": "010-1234-5678",
        "call_from": "2026-12-01T00:00:00Z", "call_to": "2026-12-02T09:00:00Z",
        "purpose": "민원 분쟁 해결을 위한 통화내용 확인", "relation": "본인 (통화 당사자)",
        "reason": "12월 1일 상담 통화에서 안내받은 내용과 처리 결과가 달라 확인하고자 합니다.",
        "legal_ground": 2, "document_number": "", "requesting_body": "",
        "officer": {"name": "kim", "display": "김담당"},
        "approvals": [
            {"stage": "team", "name": "lee", "display": "이팀장", "decision": "approved",
             "time": "2026-12-02T01:00:00Z", "comment": "확인함"},
            {"stage": "head", "name": "park", "display": "박과장", "decision": "approved",
             "time": "2026-12-02T03:30:00Z", "comment": ""}],
        "calls": [{"id": 1000 + i, "line": i + 1, "line_name": "민원실", "start": f"2026-12-01T0{i}:05:00Z",
                   "duration": 125.4 + i, "file": f"call-{i + 1:02d}.wav", "sha256": SHAS[i]} for i in range(3)],
        "delivered": {"time": "2026-12-03T05:05:00Z", "medium": "USB", "package": "nokbox-2026-0042.zip",
                      "bytes": 6543210, "recipient": "홍길동"},
        "signer_fingerprint": "SHA256:q5ZkT4o3m9u1Yx0v6cJ0pW3iL8sN2bR7eH4fA1dG9kM",
        "checkpoint": "NOKBOX-CHECKPOINT v1 size=12345 head=" + "ab" * 32 + " sig=" + "Zm9v" * 16,
    }
    req.update(over)
    return req


def ledger_row(i: int, **over) -> dict:
    row = {"number": f"2026-{i:04d}", "received": "2026-12-01T01:00:00Z", "requester": f"신청인{i}",
           "kind": "제공" if i % 2 else "열람", "purpose": "민원 분쟁 확인", "calls": 3,
           "call_summary": "1번 회선 2026-12-01 10:00 외 2건", "officer": "김담당",
           "team": "이팀장 승인 2026-12-02 10:00", "head": "박과장 승인 2026-12-02 12:30",
           "delivered": "2026-12-03T05:05:00Z", "state": "제공 완료", "destroyed": "", "note": "",
           "address": "이천시 중리동", "numbers": "010-****-5678", "ground": "제7조제1항 제2호"}
    row.update(over)
    return row


def notice(**over) -> dict:
    n = {"number": "2026-R-003", "person": {"name": "choi", "display": "최사용", "roles": ["listener", "officer"]},
         "ground": 2, "reason": "2026-11-30 민원 통화 3건을 사전고지 없이 녹취한 사실이 감사 기록에서 확인됨",
         "date": "2026-12-03T00:00:00Z", "head": {"name": "park", "display": "박과장"}, "by": "admin",
         "office": "이천시"}
    n.update(over)
    return n


@pytest.fixture(scope="module")
def poppler():
    for tool in ("pdftotext", "pdfinfo", "pdftoppm"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is required (Debian poppler-utils; scripts/setup.sh --test installs it)")


def _run(args: list, data: bytes | None = None) -> str:
    out = subprocess.run(args, input=data, capture_output=True, check=True)
    return out.stdout.decode()


def text(pdf: bytes) -> str:
    return _run(["pdftotext", "-layout", "-", "-"], pdf)


def flow(pdf: bytes) -> str:
    """The text in drawing order (``-raw``): a wrapped cell reads as one run, not interleaved with its row."""
    return _run(["pdftotext", "-raw", "-", "-"], pdf)


def info(pdf: bytes) -> dict:
    return dict(line.split(":", 1) for line in _run(["pdfinfo", "-"], pdf).splitlines() if ":" in line)


def flat(s: str) -> str:
    """Text without any whitespace: wrapped lines and justified spacing compare equal."""
    return re.sub(r"\s+", "", s)


def page_size(pdf: bytes) -> tuple[float, float]:
    w, h = re.match(r"\s*([\d.]+) x ([\d.]+) pts", info(pdf)["Page size"]).groups()
    return round(float(w)), round(float(h))


def words_inside(pdf: bytes, margin: float = 20) -> None:
    """Every word poppler finds lies inside the page, ``margin`` points in from each edge."""
    html = _run(["pdftotext", "-bbox", "-", "-"], pdf)
    pages = re.findall(r'<page width="([\d.]+)" height="([\d.]+)">(.*?)</page>', html, re.S)
    assert pages
    for w, h, body in pages:
        for x0, y0, x1, y1, word in re.findall(
                r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">(.*?)</word>', body):
            assert float(x0) >= margin and float(x1) <= float(w) - margin, (word, x0, x1, w)
            assert float(y0) >= margin and float(y1) <= float(h) - margin, (word, y0, y1, h)


def test_receipt_prints_form_2_with_the_requests_values(poppler):
    pdf = forms.receipt_pdf(request())
    assert pdf.startswith(b"%PDF-")
    assert page_size(pdf) == (595, 842)
    out = text(pdf)
    f = flat(out)
    for label in ("녹취정보 인계 · 인수증", "[별지 제2호서식]", "1. 녹취정보 내용", "관리번호", "전화번호", "통화일시",
                  "녹취 파일 수", "신청목적", "비 고", "2. 수령일자", "3. 서약 사항", "4. 녹취정보의 처리",
                  "인 계 자", "인 수 자", "소 속", "직 급", "성 명", "(부 서 명)", "(기관·단체명)", "(서 명)",
                  "Handover receipt", "Pledge", "SHA-256", "신청사유", "정보주체와의 관계", "이용·제공 근거"):
        assert flat(label) in f, label
    for value in ("2026-0042", "홍길동", "1980-01-02", "010-1234-5678", "031-644-2000", "김담당", "이팀장", "박과장",
                  "nokbox-2026-0042.zip", "6,543,210", "call-01.wav", "call-03.wav", "2:05",
                  "민원 분쟁 해결을 위한 통화내용 확인", "본인 (통화 당사자)"):
        assert flat(value) in f, value
    # times in KST: 00:05 UTC is 09:05
    assert "2026-12-01 09:05" in out and "2026년 12월 03일" in out
    for sha in SHAS:
        assert sha[:32] in out                   # the first line of the wrapped hash, and all of it in order
        assert sha in flat(flow(pdf))
    assert flat(forms.GROUNDS[2]) in f and "제7조제1항제2호" in f
    assert flat(forms.PLEDGE.format(rules="이천시 행정전화 녹취시스템 운영 지침")) in f
    assert flat(forms.DISPOSAL) in f
    assert "SHA256:q5ZkT4o3m9u1Yx0v6cJ0pW3iL8sN2bR7eH4fA1dG9kM" in f
    assert flat(forms.VERIFY) in f and "sha256sum-cMANIFEST.sha256" in f
    assert flat(request()["checkpoint"]) in flat(flow(pdf))
    assert re.search(r"\b1 ?/ ?2\b", out)        # page numbers


def test_receipt_before_delivery_leaves_date_and_signature_blank(poppler):
    pdf = forms.receipt_pdf(request(kind="listen", delivered=None, calls=[], legal_ground=4,
                                    document_number="수사과-1234", requesting_body="이천경찰서"))
    f = flat(text(pdf))
    assert "20년월일" in f                      # written by hand
    assert flat(forms.GROUNDS[4]) in f and "수사과-1234" in f and "이천경찰서" in f
    assert "열람" in f and "2026-12-0109:00~" in f    # the requested window when no call is attached yet


def test_markup_in_user_text_prints_literally(poppler):
    req = request(requester={"name": NASTY, "id_number": "", "address": "<br/>&amp;", "contact": ""},
                  purpose="a < b > c && d")
    f = flat(text(forms.receipt_pdf(req)))
    assert flat(NASTY) in f and "<br/>&amp;" in f and "a<b>c&&d" in f
    f = flat(text(forms.ledger_pdf([ledger_row(1, requester="<b>&", note="<i>x</i>")], period=("a", "b"))))
    assert "<b>&" in f and "<i>x</i>" in f
    f = flat(text(forms.restriction_notice_pdf(notice(reason=NASTY))))
    assert flat(NASTY) in f


def test_long_text_wraps_inside_the_page(poppler):
    long_ko = "가나다라마바사아자차카타파하" * 40                    # no space to break at
    long_ascii = "x" * 300
    req = request(reason=("통화 내용을 확인하고자 합니다 " * 60)[:1990], purpose=long_ko[:300],
                  requester={"name": long_ascii, "id_number": "", "address": long_ko, "contact": ""})
    pdf = forms.receipt_pdf(req)
    words_inside(pdf)
    assert flat(long_ko) in flat(flow(pdf))
    pdf = forms.ledger_pdf([ledger_row(i, requester=long_ascii, note=long_ko, purpose="사유 " * 300)
                            for i in range(1, 6)], period=("2026-12-01", "2026-12-31"))
    words_inside(pdf)
    assert "…" in text(pdf)                      # cells are clipped in the PDF; the CSV has them in full
    words_inside(forms.restriction_notice_pdf(notice(reason=long_ko * 2, person={"name": long_ascii})))


@pytest.mark.slow
def test_ledger_of_1000_rows_pages_and_numbers(poppler):
    rows = [ledger_row(i) for i in range(1, 1001)]
    pdf = forms.ledger_pdf(rows, period=("2026-12-01", "2026-12-31"), office="이천시")
    assert page_size(pdf) == (842, 595)          # landscape
    pages = int(info(pdf)["Pages"])
    out = text(pdf).split("\f")
    out = [p for p in out if p.strip()]
    assert len(out) == pages
    per_page = [re.findall(r"\b2026-(\d{4})\b", p) for p in out]
    numbers = [n for page in per_page for n in page]
    assert numbers == [f"{i:04d}" for i in range(1, 1001)]    # every row once, in order
    for i, page in enumerate(out, 1):
        assert re.search(rf"\b{i} ?/ ?{pages}\b", page)        # page numbers
        assert "신청내용" in page and "결재" in page and "비고" in page   # both header rows on every page
    # uniform rows: the same number on every full page, fewer under the title on page 1
    counts = [len(p) for p in per_page]
    full = counts[1]
    assert all(c == full for c in counts[1:-1]) and counts[0] <= full and 0 < counts[-1] <= full
    assert pages == 1 + math.ceil((1000 - counts[0]) / full)
    first = out[0]
    assert "이천시 행정전화 통화(녹취)정보 (열람 · 제공) 관리대장" in first and "[별지 제3호서식]" in first
    assert "2026-12-01 ~ 2026-12-31" in first and "1000건" in first
    for label in ("번호", "구분", "신청인", "소속(주소)", "녹취일시", "녹취 전화번호", "신청사유", "이용·제공 근거",
                  "인계자", "인수자", "팀장", "과장"):
        assert label in first, label
    assert "▣ 제공" in first and "□ 열람" in first and "신청인1" in first and "010-****-5678" in first
    assert "수령 2026-12-03" in first           # delivered, in KST


def test_ledger_cost_of_1000_rows():
    """Time and peak memory of a 1,000-row ledger in a fresh interpreter (printed, not asserted)."""
    # peak RSS from VmHWM: ru_maxrss of a spawned child starts at the parent's peak (Linux keeps it across exec)
    code = f"""
import json, sys, time
sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_forms import ledger_row
from firmware.release import forms
rows = [ledger_row(i) for i in range(1, 1001)]
forms.ledger_pdf(rows[:1], period=("a", "b"))
def hwm():
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM"))
base = hwm()
t = time.perf_counter()
pdf = forms.ledger_pdf(rows, period=("2026-12-01", "2026-12-31"))
dt = time.perf_counter() - t
print(json.dumps({{"seconds": dt, "peak_mb": hwm() / 1024,
                   "before_mb": base / 1024, "bytes": len(pdf)}}))
"""
    got = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True).stdout)
    print(f"\n1,000-row ledger: {got['seconds']:.2f} s, peak RSS {got['peak_mb']:.0f} MB "
          f"(warmed up: {got['before_mb']:.0f} MB), {got['bytes'] / 1e6:.2f} MB of PDF")


def test_ledger_without_rows(poppler):
    pdf = forms.ledger_pdf([], period=("2026-12-01", "2026-12-31"))
    assert int(info(pdf)["Pages"]) == 1
    assert "해당 기간의 기록이 없습니다" in text(pdf)


def test_ledger_csv_round_trips_with_formulas_defused():
    rows = [ledger_row(1, requester="=HYPERLINK(\"http://x\")", note="+82 10", purpose="-5", address="@SUM(A1)",
                       officer="\tkim", team="\rlee"),
            ledger_row(2, requester="홍길동, \"따옴표\"\n두 줄", destroyed="2026-12-10T01:00:00Z")]
    data = forms.ledger_csv(rows, period=("2026-12-01", "2026-12-31"))
    assert data.startswith(b"\xef\xbb\xbf")
    got = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    head = got[0]
    assert head == forms.CSV_HEADER and "번호" in head and "신청인" in head and "비고" in head
    assert len(got) == 3 and all(len(r) == len(head) for r in got)
    a, b = (dict(zip(head, r)) for r in got[1:])
    assert a["신청인"] == "'=HYPERLINK(\"http://x\")" and a["비고"] == "'+82 10" and a["신청용도"] == "'-5"
    assert a["소속(주소)"] == "'@SUM(A1)" and a["인계자"] == "'\tkim" and a["결재 팀장"] == "'\rlee"
    assert a["번호"] == "2026-0001" and a["구분"] == "제공" and a["통화 수"] == "3" and a["녹취 전화번호"] == "010-****-5678"
    assert a["접수일시"] == "2026-12-01 10:00" and a["제공일시"] == "2026-12-03 14:05" and a["상태"] == "제공 완료"
    assert b["신청인"] == "홍길동, \"따옴표\"\n두 줄" and b["파기 확인"] == "2026-12-10 10:00" and b["구분"] == "열람"


def test_restriction_notice_prints_article_9(poppler):
    pdf = forms.restriction_notice_pdf(notice())
    assert page_size(pdf) == (595, 842)
    out = text(pdf)
    f = flat(out)
    for label in ("시스템 사용 제한 통지서", "대 상 자", "역 할", "제한 일자", "제한 근거 (제9조)", "구체적 사유",
                  "처 리 자", "Notice of restricted use", "(인)"):
        assert flat(label) in f, label
    for value in ("2026-R-003", "최사용", "choi", "listener, officer", "admin", "박과장", "2026년 12월 03일",
                  "이천시 운영부서의 장", notice()["reason"]):
        assert flat(value) in f, value
    assert flat(f"▣ 제2호 {forms.RESTRICT_GROUNDS[2]}") in f
    for i in (1, 3, 4):
        assert flat(f"□ 제{i}호 {forms.RESTRICT_GROUNDS[i]}") in f
    assert flat("「이천시 행정전화 녹취시스템 운영 지침」 제9조에 따라") in f


def test_missing_font_names_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setattr(forms, "FONT_DIR", tmp_path)
    for render in (lambda: forms.receipt_pdf(request()), lambda: forms.ledger_pdf([], period=("a", "b")),
                   lambda: forms.restriction_notice_pdf(notice())):
        with pytest.raises(forms.FormsError, match="fonts-nanum") as exc:
            render()
        assert isinstance(exc.value, NokboxError) and isinstance(exc.value, FileNotFoundError)
        assert str(tmp_path / "NanumGothic.ttf") in str(exc.value)


def test_first_pages_as_png_for_review(poppler):
    """Page 1 of each form under build/screenshots/forms/ (for a person to look at)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for name, pdf in (("receipt", forms.receipt_pdf(request())),
                      ("ledger", forms.ledger_pdf([ledger_row(i) for i in range(1, 40)],
                                                  period=("2026-12-01", "2026-12-31"), office="이천시")),
                      ("notice", forms.restriction_notice_pdf(notice()))):
        subprocess.run(["pdftoppm", "-png", "-r", "60", "-f", "1", "-l", "1", "-singlefile", "-", str(SHOTS / name)],
                       input=pdf, check=True)
        png = (SHOTS / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000

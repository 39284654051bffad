"""The auditor's daily review: lookups per person, flags, overdue days, sign-off — the rules, and the
page in real headless Chromium (Debian chromium driven by Playwright)."""

from __future__ import annotations

import datetime as dt
import pytest

from firmware.audit import AuditLog, parse_verification_key
from firmware.recording.recorder import Recorder
from firmware.hal.clock import FakeClock
from firmware.people.review import KST, overdue_days, review_day
from web import serve

from .authutil import PASSWORD, fast_cfg, make_people
from .test_web import browser  # noqa: F401 - the shared Chromium fixture

CFG = {"audio": {"channels": 1}, "review": {"office_days": [0, 1, 2, 3, 4, 5, 6], "many_searches": 20}}


def _at(day: dt.date, hh: int, mm: int = 0) -> float:
    return dt.datetime(day.year, day.month, day.day, hh, mm, tzinfo=KST).timestamp()


@pytest.fixture
def day_of_lookups(box):
    """Yesterday (KST): an officer's searches (one at 03:10, 22 in the morning, one without a request),
    a playback, an approver's wrong PINs, and the notice switched off. One entry the day before."""
    data, _ = box
    cfg = fast_cfg(CFG)
    make_people(data, cfg)
    today = dt.datetime.now(KST).date()
    y = today - dt.timedelta(days=1)
    clock = FakeClock(wall=_at(y - dt.timedelta(days=1), 12))
    log = AuditLog(data, clock=clock)
    log.append("auth.signin", actor="officer", role="officer", source="192.0.2.21")
    clock._wall = _at(y, 3, 10)
    log.append("request.search", actor="officer", role="officer", obj="line 1, 2 calls", source="192.0.2.21",
               detail={"request": "R-2026-001"})
    for i in range(22):
        clock._wall = _at(y, 10, i)
        log.append("request.search", actor="officer", role="officer", obj=f"line 2, {i} calls",
                   source="192.0.2.21", detail={"request": "R-2026-002"})
    clock._wall = _at(y, 11)
    log.append("request.search", actor="officer", role="officer", obj="line 3", source="192.0.2.21", detail={})
    clock._wall = _at(y, 16)
    log.append("call.play", actor="officer", role="officer", obj="call 42", source="192.0.2.21",
               detail={"request": "R-2026-002"})
    clock._wall = _at(y, 14)
    # a wrong PIN as the key keeper's PinGuard records it (the one approver PIN lives in its slot)
    log.append("keys.unlock", actor="approver", role="approver", obj="pin-slot:approver", outcome="denied",
               reason="wrong PIN (1 of 5)", detail={"method": "pin", "seq": 3})
    clock._wall = _at(y, 15)
    log.append("config.change", actor="technician", role="technician", obj="/etc/nokbox/nokbox.toml",
               detail={"changes": {"notice.enabled": {"old": True, "new": False}}})
    return data, cfg, y, today


def test_review_rules(day_of_lookups):
    data, cfg, y, today = day_of_lookups
    rv = review_day(AuditLog(data), y, cfg.review)
    assert rv.people["officer"]["request.search"] == 24 and rv.people["officer"]["call.play"] == 1
    kinds = {f.kind for f in rv.flags}
    assert {"outside_hours", "many_searches", "no_request", "pin_failure", "notice_disabled"} <= kinds
    outside = [f for f in rv.flags if f.kind == "outside_hours"]
    assert [f.time_local for f in outside] == ["03:10:00"]
    assert [f.actor for f in rv.flags if f.kind == "pin_failure"] == ["approver"]
    assert rv.signoff is None
    assert overdue_days(AuditLog(data), today)[:2] == [y, y - dt.timedelta(days=1)]


@pytest.mark.browser
def test_auditor_reviews_and_signs_off_a_day_in_chromium(browser, day_of_lookups, tmp_path):
    data, cfg, y, today = day_of_lookups
    server = serve(Recorder(cfg, data), "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.port}"
    try:
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(base + "/review")
        assert "/login" in page.url
        page.fill("input[name=name]", "auditor")
        page.fill("input[name=password]", PASSWORD["auditor"])
        page.click("#login-form button[type=submit]")
        page.wait_for_selector("#day")
        # the review opens on the oldest overdue day
        assert page.locator("#day").inner_text() == (y - dt.timedelta(days=1)).isoformat()
        assert y.isoformat() in page.locator("#overdue").inner_text()
        page.click("#next-day")
        page.wait_for_selector(f"#day[datetime='{y.isoformat()}']")
        h1 = page.locator("h1").inner_text()
        assert h1.index("일일 접근 기록 검토") < h1.index("Daily review of access")
        flags = page.locator("#flags").inner_text()
        for label in ("근무시간 외 조회", "과다 검색", "신청 없는 검색", "PIN 실패", "고지 안내 꺼짐"):
            assert label in flags, label
        assert "03:10:00" in flags
        row = page.locator("#people tr[data-person=officer]").inner_text()
        assert row.split()[1:3] == ["24", "1"]
        assert page.locator("#checkpoint").inner_text().startswith("NOKBOX-CHECKPOINT v1 size=")
        assert "audit log intact" in page.locator("#chain").inner_text()
        page.screenshot(path=str(tmp_path / "review-before.png"), full_page=True)
        # sign off the day
        page.fill("#signoff-form input[name=note]", "03:10 조회는 당직 민원 건으로 확인함")
        page.click("#signoff-button")
        page.wait_for_selector("#signed")
        assert "auditor" in page.locator("#signed").inner_text()
        assert y.isoformat() not in page.locator("#overdue").inner_text()
        page.screenshot(path=str(tmp_path / "review-after.png"), full_page=True)
        # the auditor changes nothing: the accounts page is refused (and the refusal logged)
        page.goto(base + "/users")
        assert "권한이 없습니다" in page.locator("#refusal").inner_text()
        assert not errors
        page.close()
    finally:
        server.close()
    log = AuditLog(data)
    signoffs = [e for e in log.entries() if e["action"] == "review.signoff"]
    assert len(signoffs) == 1
    s = signoffs[0]
    assert (s["actor"], s["role"], s["object"]) == ("auditor", "auditor", y.isoformat())
    assert s["reason"] == "03:10 조회는 당직 민원 건으로 확인함" and s["detail"]["flags"] >= 5
    assert s["detail"]["checkpoint"].startswith("NOKBOX-CHECKPOINT v1")
    assert any(e["action"] == "access.denied" and e["actor"] == "auditor" for e in log.entries())
    assert log.verify_report().entries > 30


# -- the log-integrity box: the verification key typed in, never kept ---------------------------
@pytest.fixture
def auditor_page(box):
    """The page signed in as the auditor, and the verification key shown at set-up."""
    from firmware.people.accounts import Accounts
    from web import create_app

    from .test_roles import TC

    data, _ = box
    cfg = fast_cfg(CFG)
    acc = Accounts(data, cfg.auth, AuditLog(data, every=cfg.audit.seal_every))
    admin, key = acc.setup_first("admin", PASSWORD["admin"], ["admin"])
    acc.create("auditor", PASSWORD["auditor"], ["auditor"], by=admin)
    log = AuditLog(data)
    for i in range(7):
        log.append("request.search", actor="officer", role="officer", obj=f"line 1, {i} calls",
                   detail={"request": "R-2026-003"})
    tc = TC(create_app(Recorder(cfg, data)))
    assert tc.sign_in("auditor", PASSWORD["auditor"]).status_code == 302
    day = (dt.datetime.now(KST).date() - dt.timedelta(days=1)).isoformat()
    return tc, data, key, f"/review/{day}"


def _verify(tc, url, key):
    r = tc.get(url)
    assert r.status_code == 200 and b'id="verify-form"' in r.data
    return tc.post(url + "/verify", {"key": key})


def _result(r) -> tuple[str, str]:
    import re

    m = re.search(r'id="verify-result"\s+data-outcome="([a-z_]+)"[^>]*>(.*?)</div>', r.data.decode(), re.S)
    assert m, r.data.decode()
    return m.group(1), m.group(2)


def test_the_verify_box_says_intact_typo_wrong_key_or_forged(auditor_page, tmp_path):
    from .test_audit import _lines, _rechain, _write

    tc, data, key, url = auditor_page
    r = _verify(tc, url, key)
    outcome, text = _result(r)
    assert r.status_code == 200 and outcome == "ok" and "키로 검증됨" in text and "audit log intact" in text
    # a typo: one character changed; the checksum catches it and nothing is checked
    i = len("nokbox-audit-v2-") + 7
    typo = key[:i] + ("q" if key[i] != "q" else "p") + key[i + 1:]
    r = _verify(tc, url, typo)
    outcome, text = _result(r)
    assert r.status_code == 400 and outcome == "mistyped"
    assert "검증 키 오타" in text and "mistyped" in text and "위조" not in text
    assert typo.encode() not in r.data and key.encode() not in r.data  # a secret is never shown back
    assert b'class="field invalid"' in r.data
    r = tc.post(url + "/verify", {"key": "   "})
    assert r.status_code == 400 and "검증 키를 입력하세요" in _result(r)[1]
    # another box's key
    other = AuditLog(tmp_path / "other")
    other.append("x")
    r = _verify(tc, url, other.take_verification_key())
    outcome, text = _result(r)
    assert r.status_code == 200 and outcome == "wrong_key"
    assert "다른 키" in text and "wrong key" in text and "위조" not in text.split("·")[0]
    # an insider edits a search and re-hashes the chain: the right key says forged, naming the entry
    log = AuditLog(data)
    es = _lines(log)
    n = next(j for j, e in enumerate(es) if e["action"] == "request.search")
    es[n]["object"] = "nothing to see"
    _write(log, _rechain(es, n))
    r = _verify(tc, url, key)
    outcome, text = _result(r)
    assert r.status_code == 200 and outcome == "forged"
    assert "기록 위조 또는 손상" in text and f"entry {es[n]['seq']}: MAC does not verify" in text
    # every check is in the log by its outcome; the key is stored nowhere
    got = [(e["outcome"], e["actor"]) for e in AuditLog(data).entries() if e["action"] == "audit.verify"]
    assert got == [("ok", "auditor"), ("mistyped", "auditor"), ("wrong_key", "auditor"), ("failed", "auditor")]
    key0, _ = parse_verification_key(key)
    for p in data.rglob("*"):
        if p.is_file():
            blob = p.read_bytes()
            assert key.encode() not in blob and key0.hex().encode() not in blob and key0 not in blob, p


def test_only_the_auditor_may_verify_with_a_key(auditor_page):
    from firmware.people.accounts import PERMISSIONS

    assert PERMISSIONS["audit.verify"] == frozenset({"auditor"})
    tc, data, key, url = auditor_page
    from web.review import verify

    assert verify._nokbox_perm == "audit.verify"
    r = tc.post(url + "/verify", {"key": key}, csrf=False)  # no CSRF token: refused before anything is checked
    assert r.status_code in (400, 403)
    assert not any(e["action"] == "audit.verify" for e in AuditLog(data).entries())

"""The page probed as an attacker would (issue 14's list): each test fails on the code before its fix."""

from __future__ import annotations

import csv
import io

from firmware.audit import AuditLog
from firmware.people.accounts import AuthError
from firmware.people.review import review_day
from firmware.config import ReviewConfig
from firmware.index import KST

import datetime as dt

import pytest

from .authutil import PASSWORD
from .test_roles import TC, site  # noqa: F401  (the fixture)


@pytest.mark.parametrize("nxt", ["/%09/evil.example", "//evil.example", "/\\evil.example", "/%0a/evil.example",
                                 "https://evil.example/", "/%5Cevil.example"])
def test_sign_in_never_redirects_off_the_box(site, nxt):
    app, _ = site
    tc = TC(app)
    tc.get(f"/login?next={nxt}")
    r = tc.post(f"/login?next={nxt}", {"name": "admin", "password": PASSWORD["admin"]})
    assert r.status_code == 302
    loc = r.headers["Location"]
    assert loc.startswith("/") and not loc.startswith("//") and "evil" not in loc, loc


def test_a_plain_next_path_is_kept(site):
    app, _ = site
    tc = TC(app)
    tc.get("/login?next=/calls%3Fday%3D2026-01-02")
    r = tc.post("/login?next=/calls%3Fday%3D2026-01-02", {"name": "admin", "password": PASSWORD["admin"]})
    assert r.headers["Location"] == "/calls?day=2026-01-02"


def test_signing_in_again_ends_the_previous_session(site):
    app, _ = site
    tc = TC(app)
    tc.sign_in("admin", PASSWORD["admin"])
    old = tc.c.get_cookie("nokbox_session").value
    assert tc.get("/account").status_code == 200
    tc.get("/login")
    tc.post("/login", {"name": "technician", "password": PASSWORD["technician"]})
    new = tc.c.get_cookie("nokbox_session").value
    assert new != old
    other = TC(app)
    other.c.set_cookie("nokbox_session", old)
    assert other.get("/account").status_code == 302  # the old cookie is dead at once
    tc.get("/account")
    tc.post("/logout")
    assert other.get("/account").status_code == 302


def test_a_disabled_or_locked_account_answers_a_wrong_password_as_an_unknown_name(site):
    app, data = site
    acc = app.extensions["nokbox"].accounts
    acc.set_state("target", "disabled", "left the office", by=acc.get("admin"))
    for _ in range(5):
        with pytest.raises(AuthError):
            acc.authenticate("officer", "not-the-password-at-all")
    calls = []

    class Counted:  # the real hasher, counting its checks
        def __init__(self, ph):
            self.ph = ph

        def __getattr__(self, k):
            return getattr(self.ph, k)

        def verify(self, h, p):
            calls.append(h)
            return self.ph.verify(h, p)

    acc.ph = Counted(acc.ph)
    answers = {}
    for name in ("target", "officer", "nobody-here"):
        with pytest.raises(AuthError) as exc:
            acc.authenticate(name, "a-wrong-password-123")
        answers[name] = (str(exc.value), exc.value.reason)
    assert len(set(answers.values())) == 1, answers  # nothing tells the three apart
    assert len(calls) == 3  # each one paid for a real hash check
    with pytest.raises(AuthError, match="disabled"):  # the right password may learn the state
        acc.authenticate("target", "Hangang-bridge-at-night-777")
    reasons = [e["reason"] for e in AuditLog(data).entries() if e["action"] == "auth.signin"][-4:]
    assert reasons[:2] == ["account disabled, wrong password", "account locked, wrong password"]


def test_oversize_bodies_are_refused_before_they_are_read(site, tmp_path):
    app, _ = site
    anon = TC(app)
    # an anonymous upload announcing 1 GB: refused on its announced length, the body never read
    r = anon.c.post("/notice/upload", input_stream=io.BytesIO(b"x" * 1024), content_type="multipart/form-data; "
                    "boundary=xyz", environ_overrides={"CONTENT_LENGTH": str(1 << 30), "REMOTE_ADDR": anon.addr})
    assert r.status_code == 413
    # a form route takes no more than a form
    r = anon.c.post("/users/target/state", data=b"a=" + b"x" * (2 << 20),
                    content_type="application/x-www-form-urlencoded", environ_base={"REMOTE_ADDR": anon.addr})
    assert r.status_code == 413
    # a signed-in technician's 200 MB WAV is refused on its length, with a Korean page
    tc = TC(app)
    tc.sign_in("technician", PASSWORD["technician"])
    r = tc.c.post("/notice/upload", data=b"x" * (9 << 20), content_type="multipart/form-data; boundary=xyz",
                  environ_base={"REMOTE_ADDR": tc.addr})
    assert r.status_code == 413 and "너무 큽니다" in r.get_data(as_text=True)


def test_an_anonymous_post_to_a_signed_in_page_is_not_parsed(site):
    app, data = site
    tc = TC(app)
    r = tc.c.post("/notice/upload", data={"file": (io.BytesIO(b"RIFF" + b"\0" * 1000), "a.wav")},
                  environ_base={"REMOTE_ADDR": tc.addr})
    assert r.status_code == 302 and "/login" in r.headers["Location"]


@pytest.mark.parametrize("path,code", [("/no/such/page", 404), ("/favicon-nope.ico", 404)])
def test_unknown_pages_are_korean(site, path, code):
    app, _ = site
    r = TC(app).get(path)
    text = r.get_data(as_text=True)
    assert r.status_code == code and "없는 페이지" in text and "Not Found" not in text


def test_a_wrong_method_is_korean(site):
    app, _ = site
    tc = TC(app)
    tc.sign_in("admin", PASSWORD["admin"])
    r = tc.c.put("/account", environ_base={"REMOTE_ADDR": tc.addr})
    assert r.status_code == 405 and "방식" in r.get_data(as_text=True)


def test_a_fault_in_a_page_is_a_korean_500_without_a_trace(site, caplog):
    app, _ = site

    @app.get("/boom-for-test")
    def boom():
        raise RuntimeError("/var/lib/nokbox/secret-path exploded")

    app.view_functions["boom"]._nokbox_perm = None
    r = TC(app).get("/boom-for-test")
    text = r.get_data(as_text=True)
    assert r.status_code == 500 and "내부 오류" in text
    assert "secret-path" not in text and "Traceback" not in text
    assert "secret-path" in caplog.text  # the fault is in the log, for the administrator


def test_the_audit_csv_carries_no_formulas(site):
    app, data = site
    tc = TC(app)
    tc.get("/login")
    tc.post("/login", {"name": '=HYPERLINK("http://evil.example","x")', "password": "whatever-123456"})
    tc.post("/login", {"name": "@SUM(1+1)", "password": "whatever-123456"})
    log = AuditLog(data)
    today = dt.datetime.now(KST).date()
    text, _ = log.export_csv(today - dt.timedelta(days=1), today + dt.timedelta(days=1), KST)
    cells = [c for row in csv.reader(io.StringIO(text)) for c in row]
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@")], "a cell starts like a formula"
    assert "'=HYPERLINK" in text and "'@SUM" in text


def test_a_line_notice_switched_off_is_flagged_in_the_review(tmp_path):
    from firmware.recording.notice import set_line_mode

    (tmp_path / "d").mkdir()
    log = AuditLog(tmp_path / "d")
    set_line_mode(tmp_path / "d", 0, "off", "quiet please", log, {"actor": "tech", "role": "technician",
                                                                 "source": "192.0.2.1"})
    set_line_mode(tmp_path / "d", 1, "beep", "short", log, {"actor": "tech", "role": "technician",
                                                           "source": "192.0.2.1"})
    rv = review_day(AuditLog(tmp_path / "d"), dt.datetime.now(KST).date(), ReviewConfig())
    kinds = [(f.kind, f.text) for f in rv.flags]
    assert ("notice_disabled", "quiet please") in kinds
    assert len([k for k, _ in kinds if k == "notice_disabled"]) == 1  # beep is not off


def test_session_cookie_flags_over_http_and_https(site):
    app, _ = site
    for base, name, secure in (("http://127.0.0.1", "nokbox_session", False),
                               ("https://192.0.2.1", "__Host-nokbox_session", True)):
        c = app.test_client()
        c.get("/login", base_url=base)
        token = c.get_cookie("nokbox_csrf", domain=base.split("//")[1]).value
        r = c.post("/login", base_url=base, data={"name": "technician", "password": PASSWORD["technician"],
                                                  "csrf": token})
        assert r.status_code == 302
        [cookie] = [h for h in r.headers.getlist("Set-Cookie") if h.startswith(name + "=")]
        flags = {f.strip().split("=")[0].lower(): f.strip() for f in cookie.split(";")[1:]}
        assert "httponly" in flags and flags["samesite"] == "SameSite=Strict" and flags["path"] == "Path=/"
        assert ("secure" in flags) is secure and "domain" not in flags
        assert c.get("/", base_url=base).status_code == 200  # the cookie is the session


def test_security_headers_on_every_answer(site):
    app, _ = site
    tc = TC(app)
    tc.sign_in("technician", PASSWORD["technician"])
    for path in ("/", "/login", "/no-such-page", "/static/nokbox.css", "/api/status"):
        r = tc.get(path)
        h = r.headers
        r.close()
        csp = h["Content-Security-Policy"]
        for d in ("default-src 'self'", "frame-ancestors 'none'", "object-src 'none'", "base-uri 'none'"):
            assert d in csp, (path, csp)
        assert "unsafe-inline" not in csp
        assert h["Referrer-Policy"] == "no-referrer" and h["X-Content-Type-Options"] == "nosniff"
        assert h["X-Frame-Options"] == "DENY"

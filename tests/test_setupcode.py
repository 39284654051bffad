"""The first-run wizard from the LAN with the one-time set-up code (web/setupcode.py), for a box with
no keyboard: ``nokbox firstboot`` prints a code on the console and keeps only its digest; a LAN
browser that types it over HTTPS is served the wizard's steps, the whole way through; a wrong code,
plain HTTP, too many tries and a code that was replaced are refused and audited; when the wizard
is over the code is gone."""

from __future__ import annotations

import re
import stat
import subprocess
import sys

import pytest

from firmware.audit import AuditLog
from firmware.people.accounts import role_check
from firmware.recording.service import RecorderClient
from firmware.vault.keeper import Keeper
from firmware.vault.keys import MARKER
from web import create_app, setupcode

from .authutil import PASSWORD, fast_cfg
from .conftest import ROOT
from .test_web import browser  # noqa: F401 - the fixture

APIN = "31415926"
LAN = "192.0.2.77"


class Browser:
    """Flask's test client as a LAN browser: its address, https (through nginx) or not, the last CSRF."""

    def __init__(self, app, addr=LAN, https=True):
        self.c, self.csrf = app.test_client(), ""
        self.env = {"REMOTE_ADDR": addr}
        self.base = "https://nokbox.local/" if https else "http://nokbox.local/"

    def _keep(self, r):
        m = re.search(rb'name="csrf" value="([^"]+)"', r.data)
        if m:
            self.csrf = m.group(1).decode()
        return r

    def get(self, path):
        return self._keep(self.c.get(path, base_url=self.base, environ_base=self.env))

    def post(self, path, data=None):
        return self._keep(self.c.post(path, data={"csrf": self.csrf, **(data or {})}, base_url=self.base,
                                      environ_base=self.env))


@pytest.fixture(autouse=True)
def _clean_state():
    setupcode._grants.clear()
    setupcode._wrong.clear()
    yield
    setupcode._grants.clear()
    setupcode._wrong.clear()


@pytest.fixture
def fresh(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o750)
    conf = tmp_path / "etc" / "nokbox.toml"
    conf.parent.mkdir()
    conf.write_text("")
    cfg = fast_cfg({"audio": {"channels": 1}, "vault": {"pin_scrypt_log_n": 10, "pin_backoff_s": 0.0}})
    keeper = Keeper(data, cfg, authorize=role_check(data))
    app = create_app(RecorderClient(data, cfg, actor="page"), data_dir=data, cfg=cfg, keeper=keeper,
                     config_path=conf)
    return data, conf, keeper, app


def _actions(data, action):
    return [e for e in AuditLog(data).entries() if e["action"] == action]


def test_issue_keeps_only_a_digest_and_a_new_boot_replaces_the_code(fresh):
    data, conf, _, _ = fresh
    code = setupcode.issue(conf, data)
    assert re.fullmatch(r"[A-HJ-NP-Z2-9]{4}-[A-HJ-NP-Z2-9]{4}-[A-HJ-NP-Z2-9]{4}", code)
    f = conf.parent / "setup-code"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert code not in f.read_text() and code.replace("-", "") not in f.read_text()
    assert f.read_text().strip() == setupcode.digest(code) == setupcode.digest(code.lower().replace("-", " "))
    again = setupcode.issue(conf, data)
    assert again != code and f.read_text().strip() == setupcode.digest(again)


def test_firstboot_prints_the_code_on_the_console(fresh, tmp_path):
    data, conf, _, _ = fresh
    conf.write_text(f'[vault]\ndevice_key_file = "{tmp_path}/etc/device.key"\n')
    r = subprocess.run([sys.executable, "-m", "firmware.cli", "firstboot", "--data", str(data), "--config", str(conf),
                        "--tls-dir", str(tmp_path / "etc/tls")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    m = re.search(r"첫 설정 코드 · set-up code: ([A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4})", r.stdout)
    assert m, r.stdout
    assert (conf.parent / "setup-code").read_text().strip() == setupcode.digest(m.group(1))


def test_the_whole_wizard_from_the_lan_with_the_code(fresh):
    data, conf, keeper, app = fresh
    code = setupcode.issue(conf, data)
    lan = Browser(app)
    r = lan.get("/setup")
    assert r.status_code == 403 and b'id="refusal-link"' in r.data and b'href="/setup/code"' in r.data
    r = lan.get("/setup/code")
    assert r.status_code == 200 and b'id="code-form"' in r.data
    r = lan.post("/setup/code", {"code": "ABCD-EFGH-JKLM"})
    assert r.status_code == 403 and "코드가 맞지 않습니다".encode() in r.data
    assert lan.get("/setup").status_code == 403  # still refused
    r = lan.post("/setup/code", {"code": " " + code.lower().replace("-", "") + " "})  # as a person types it
    assert r.status_code == 302 and r.headers["Location"].endswith("/setup")
    cookie = r.headers.get("Set-Cookie", "")
    assert "nokbox_setup=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" in cookie
    # the steps, from the LAN
    assert lan.get("/setup").status_code == 200
    r = lan.post("/setup", {"name": "boss", "display": "정보팀 김", "password": PASSWORD["admin"],
                            "password2": PASSWORD["admin"]})
    assert r.status_code == 302 and r.headers["Location"].endswith("/setup/keys"), r.data[:500]
    lan.get("/setup/keys")
    r = lan.post("/setup/keys", {"action": "begin"})
    passphrase = re.search(rb'id="passphrase">([^<]+)<', r.data).group(1).decode()
    r = lan.post("/setup/keys", {"action": "confirm", "typed": passphrase})
    assert r.status_code == 302 and r.headers["Location"].endswith("/setup/pin") and (data / MARKER).exists()
    lan.get("/setup/pin")
    r = lan.post("/setup/pin", {"name": "kim", "display": "김 팀장", "password": PASSWORD["approver"],
                                "password2": PASSWORD["approver"], "pin": APIN, "pin2": APIN, "passphrase": passphrase})
    assert r.status_code == 302 and r.headers["Location"].endswith("/setup/audit-key"), r.data[:500]
    lan.get("/setup/audit-key")
    r = lan.post("/setup/audit-key", {})
    assert b'id="verification-key"' in r.data
    # over: the code is spent, the grant with it
    assert lan.get("/setup/audit-key").status_code == 302
    assert not (conf.parent / "setup-code").exists()
    assert setupcode._grants == {}
    outcomes = [(e["outcome"], e["reason"]) for e in _actions(data, "setup.code")]
    assert outcomes == [("refused", "wrong set-up code"), ("ok", "set-up code accepted: the wizard answers this browser"),
                        ("ok", "first-run set-up over: the set-up code deleted")]
    assert all(e["source"] == LAN for e in _actions(data, "setup.code"))
    assert setupcode.issue(conf, data) is None and not (conf.parent / "setup-code").exists()  # the next boot


def test_a_grant_is_no_good_once_the_code_is_replaced_or_for_another_browser(fresh):
    data, conf, _, app = fresh
    code = setupcode.issue(conf, data)
    lan = Browser(app)
    lan.get("/setup/code")
    assert lan.post("/setup/code", {"code": code}).status_code == 302
    assert lan.get("/setup").status_code == 200
    assert Browser(app, addr="192.0.2.78").get("/setup").status_code == 403  # no grant there
    setupcode.issue(conf, data)  # a reboot: a new code
    setupcode._grants.clear()  # and a new page process, which holds no grant
    assert lan.get("/setup").status_code == 403
    lan.get("/setup/code")
    assert lan.post("/setup/code", {"code": code}).status_code == 403  # the old code is no good


def test_plain_http_and_too_many_wrong_codes_are_refused(fresh):
    data, conf, _, app = fresh
    code = setupcode.issue(conf, data)
    http = Browser(app, https=False)
    r = http.get("/setup/code")
    assert r.status_code == 403 and "HTTPS".encode() in r.data
    lan = Browser(app)
    lan.get("/setup/code")
    for _ in range(setupcode.MAX_WRONG):
        assert lan.post("/setup/code", {"code": "WRONG-CODE-XXXX"}).status_code == 403
    r = lan.post("/setup/code", {"code": code})  # the right one, too late
    assert r.status_code == 429 and lan.get("/setup").status_code == 403
    assert _actions(data, "setup.code")[-1]["reason"] == "too many wrong set-up codes"
    assert not (data / "accounts.sqlite").exists() or app.extensions["nokbox"].accounts.count() == 0


def test_without_a_code_the_lan_is_told_to_use_the_box(fresh):
    _, _, _, app = fresh
    r = Browser(app).get("/setup")
    assert r.status_code == 403 and b"127.0.0.1" in r.data and b"refusal-link" not in r.data
    assert Browser(app).get("/setup/code").status_code == 404


@pytest.mark.browser
def test_the_code_page_in_chromium_from_the_lan_through_the_proxy(browser, tmp_path):  # noqa: F811
    """In headless Chromium, as a LAN browser behind nginx (X-Forwarded-For/-Proto, web.behind_proxy):
    refused with a link, the code page, a wrong code, the right one, and the wizard's first step.
    Screenshots in build/screenshots/setupcode/."""
    from web import serve

    shots = ROOT / "build" / "screenshots" / "setupcode"
    shots.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "data"
    data.mkdir(mode=0o750)
    conf = tmp_path / "nokbox.toml"
    conf.write_text("")
    cfg = fast_cfg({"audio": {"channels": 1}, "web": {"behind_proxy": True}})
    keeper = Keeper(data, cfg, authorize=role_check(data))
    code = setupcode.issue(conf, data)
    server = serve(RecorderClient(data, cfg, actor="page"), "127.0.0.1", 0, data_dir=data, cfg=cfg, keeper=keeper,
                   config_path=conf)
    try:
        base = f"http://127.0.0.1:{server.port}"
        ctx = browser.new_context(locale="ko-KR", viewport={"width": 1000, "height": 720},
                                  extra_http_headers={"X-Forwarded-For": "192.168.10.23", "X-Forwarded-Proto": "https"})
        page = ctx.new_page()
        r = page.goto(base + "/setup")
        assert r.status == 403, page.content()[:3000]
        page.screenshot(path=str(shots / "1-refused.png"), full_page=True)
        page.click("#refusal-link")
        page.wait_for_selector("#code-form")
        page.screenshot(path=str(shots / "2-code.png"), full_page=True)
        page.fill("#code", "ABCD-EFGH-JKLM")
        page.click("#code-form button[type=submit]")
        page.wait_for_selector("#error")
        assert "맞지 않습니다" in page.inner_text("#error")
        page.screenshot(path=str(shots / "3-wrong.png"), full_page=True)
        page.fill("#code", code.lower())
        page.click("#code-form button[type=submit]")
        page.wait_for_selector("#setup-form")
        assert page.url.endswith("/setup")
        page.screenshot(path=str(shots / "4-admin-step.png"), full_page=True)
        ctx.close()
    finally:
        server.close()
    assert [e["source"] for e in _actions(data, "setup.code")] == ["192.168.10.23", "192.168.10.23"]


def test_the_box_itself_needs_no_code(fresh):
    data, conf, _, app = fresh
    setupcode.issue(conf, data)
    r = Browser(app, addr="127.0.0.1", https=False).get("/setup/code")
    assert r.status_code == 302 and r.headers["Location"].endswith("/setup")


def test_a_code_file_that_cannot_be_deleted_never_breaks_the_page(fresh, monkeypatch):
    data, conf, _, app = fresh
    setupcode.issue(conf, data)
    real_unlink = type(conf).unlink

    def refuse(self, *a, **kw):
        if self.name == "setup-code":
            raise PermissionError(13, "Permission denied")
        return real_unlink(self, *a, **kw)

    monkeypatch.setattr(type(conf), "unlink", refuse)
    with app.test_request_context("/", environ_base={"REMOTE_ADDR": "127.0.0.1"}):
        setupcode._grants["x"] = 1e18
        setupcode.wizard_over()  # logs, does not raise
        assert setupcode._grants == {}

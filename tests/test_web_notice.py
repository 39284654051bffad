"""The technician's notice page in headless Chromium: mode with a reason, upload, test call, alarm."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from firmware.audit import AuditLog
from firmware.config import parse_config
from firmware.recording.recorder import Recorder
from web import serve

from .authutil import FAST_AUTH, PASSWORD, make_people
from .test_web import browser  # noqa: F401 - the shared Chromium fixture

pytestmark = pytest.mark.browser


def boot(data, notice):
    cfg = parse_config({
        "auth": FAST_AUTH, "audio": {"channels": 2},
        "simulate": {"first_call_s": 600},  # quiet lines: the test drives the notice itself
        "notice": {"gpio": "mock", **notice},
        "line": [{"channel": 0, "name": "민원실"}, {"channel": 1, "name": "당직실"}],
    })
    make_people(data, cfg)
    rec = Recorder(cfg, data)
    rec.start()
    return rec, serve(rec, "127.0.0.1", 0)


def sign_in(page, url, who):
    page.goto(url + "login")
    page.fill("input[name=name]", who)
    page.fill("input[name=password]", PASSWORD[who])
    page.click("#login-form button[type=submit]")
    page.wait_for_load_state()


def test_technician_sets_mode_uploads_and_tests(browser, box, tmp_path):  # noqa: F811
    data, _ = box
    rec, server = boot(data, {})
    url = f"http://127.0.0.1:{server.port}/"
    try:
        page = browser.new_page()
        sign_in(page, url, "technician")
        page.click("#nav-notice")
        assert "녹음 안내 방송" in page.locator("h1").inner_text()
        row = page.locator("#notice-lines tr[data-channel='1']")
        row.locator("select[name=mode]").select_option("off")
        row.locator("input[name=reason]").fill("회선 공사")
        row.locator("form[action$='/notice/mode'] button").click()
        page.wait_for_load_state()
        assert "끔 · Off" in page.locator("#notice-lines tr[data-channel='1'] .mode").inner_text()
        wav = tmp_path / "mine.wav"
        sf.write(wav, (0.2 * np.sin(np.arange(8000) / 3)).astype(np.float32), 8000)
        page.set_input_files("#upload input[type=file]", str(wav))
        page.click("#upload button")
        page.wait_for_load_state()
        assert "announcement installed (1.0 s)" in page.locator("#message").inner_text()
        page.locator("#notice-lines tr[data-channel='0'] form[action$='/notice/test'] button").click()
        page.wait_for_selector("#message", timeout=15000)
        assert "test notice played on line 0" in page.locator("#message").inner_text()
        page.close()
        # an auditor sees the page but no forms
        page = browser.new_page()
        sign_in(page, url, "auditor")
        r = page.goto(url + "notice")
        if r.status == 200:
            assert page.locator("form[action$='/notice/mode']").count() == 0
        page.close()
    finally:
        server.close()
        rec.stop()
    acts = [(e["action"], e["actor"], e["reason"]) for e in AuditLog(data).entries() if e["action"].startswith("notice.")]
    assert ("notice.mode", "technician", "회선 공사") in acts
    assert any(a[0] == "notice.upload" for a in acts) and any(a[0] == "notice.test" for a in acts)


def test_status_page_raises_the_notice_alarm(browser, box):  # noqa: F811
    data, _ = box
    rec, server = boot(data, {"outputs": ["no_such_notice_output"]})
    url = f"http://127.0.0.1:{server.port}/"
    try:
        rec.notice.request(0, None)
        rec.notice.request(0, None)
        page = browser.new_page()
        sign_in(page, url, "technician")
        page.wait_for_function("document.querySelector('#lines tr[data-channel=\"0\"] .notice.bad') !== null",
                               timeout=15000)
        text = page.locator("#lines tr[data-channel='0'] .notice").inner_text()
        assert "ALARM (출력 실패 · Output failed)" in text, text  # the failure in words, not its code
        assert page.locator("#lines tr[data-channel='0'] .state").inner_text() == "고장 · Fault"
        page.close()
    finally:
        server.close()
        rec.stop()

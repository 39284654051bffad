"""The status page in real headless Chromium (Debian chromium driven by Playwright), behind sign-in."""

from __future__ import annotations

import shutil

import pytest

from firmware.config import parse_config
from firmware.recording.recorder import Recorder
from web import serve

from .authutil import FAST_AUTH, PASSWORD, Client, make_people

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("Debian chromium is required (scripts/setup.sh --test installs it)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def live_box(box):
    data, _ = box
    cfg = parse_config({
        "auth": FAST_AUTH,
        "audio": {"channels": 2},
        "simulate": {"first_call_s": 0.3, "idle_min_s": 2, "idle_max_s": 3, "talk_min_s": 5, "talk_max_s": 8},
        "line": [{"channel": 0, "name": "민원실", "extension": "1234"}, {"channel": 1, "name": "당직실"}],
    })
    make_people(data, cfg)
    rec = Recorder(cfg, data)
    rec.start()
    server = serve(rec, "127.0.0.1", 0)
    yield rec, f"http://127.0.0.1:{server.port}/"
    server.close()
    rec.stop()


def test_status_page_shows_lines_live_in_korean_first(browser, live_box, tmp_path):
    rec, url = live_box
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    # signed out: the status page sends you to sign in first; any role may then see it
    assert "/login" in page.url
    page.fill("input[name=name]", "technician")
    page.fill("input[name=password]", PASSWORD["technician"])
    page.click("#login-form button[type=submit]")
    page.wait_for_url(url)
    assert page.locator("html").get_attribute("lang") == "ko"
    h1 = page.locator("h1").inner_text()
    assert h1.index("녹음 장치 상태") < h1.index("Recorder status")
    rows = page.locator("#lines tbody tr")
    assert rows.count() == 2
    assert "민원실" in rows.nth(0).inner_text() and "1234" in rows.nth(0).inner_text()
    # the level of a line moves while someone talks, without reloading the page
    seen = set()
    for _ in range(12):
        seen.add(rows.nth(0).locator(".db").inner_text())
        page.wait_for_timeout(500)
    assert len(seen) >= 3, seen
    page.locator('#lines tbody tr.in_call').first.wait_for(timeout=15000)
    assert "통화 중" in page.locator("#lines tbody tr.in_call .state").first.inner_text()
    assert page.locator("#dev-state").inner_text() == "동작 · Running"
    page.screenshot(path=str(tmp_path / "status.png"), full_page=True)
    assert not errors
    page.close()


def test_status_api_has_no_personal_data(live_box):
    import json

    rec, url = live_box
    anonymous = Client(url)
    assert anonymous.get("/api/status")[0] == 401
    assert anonymous.get("/")[0] == 302
    c = Client(url)
    assert c.sign_in("auditor", PASSWORD["auditor"]) == 302
    status, headers, body = c.get("/api/status")
    assert status == 200
    st = json.loads(body)
    assert headers["X-Frame-Options"] == "DENY" and "default-src 'self'" in headers["Content-Security-Policy"]
    text = json.dumps(st, ensure_ascii=False)
    for lab in rec.source.lines[0].labels:
        if lab.dialed:
            assert lab.dialed not in text

"""The line map: live meters over server-sent events (in the Flask client and in real Chromium), the
test call (a line's own audio played back onto it through the notice relay and an ALSA output, never
to the browser), its refusals and its audit entries."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from firmware.audit import AuditLog
from firmware.config import parse_config
from firmware.recording.recorder import Recorder
from web import create_app, serve

from .authutil import FAST_AUTH, PASSWORD, make_people
from .test_roles import TC
from .test_web import browser  # noqa: F401 - the fixture

SHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots" / "lines"


@pytest.fixture
def box_out(box, tmp_path, monkeypatch):
    """A box whose notice output is an ALSA ``file`` PCM: what is played onto a line lands in a file."""
    out = tmp_path / "notice-out.raw"
    conf = tmp_path / "asound.conf"
    conf.write_text(f'pcm.nbnotice {{\n type file\n slave.pcm "null"\n file "{out}"\n format "raw"\n}}\n')
    monkeypatch.setenv("ALSA_CONFIG_PATH", f"/usr/share/alsa/alsa.conf:{conf}")
    data, _ = box
    cfg = parse_config({
        "auth": FAST_AUTH, "audio": {"channels": 2},
        "simulate": {"first_call_s": 600},  # quiet lines: nothing but the line's idle noise
        "notice": {"gpio": "mock", "outputs": ["nbnotice"], "settle_ms": 0},
        "line": [{"channel": 0, "name": "민원실", "extension": "1234"}, {"channel": 1, "name": "당직실"}],
    })
    make_people(data, cfg)
    rec = Recorder(cfg, data)
    rec.start()
    try:
        yield rec, data, out
    finally:
        rec.stop()


def _events(client, seconds: float) -> list[dict]:
    r = client.c.get("/api/levels", environ_base={"REMOTE_ADDR": client.addr}, buffered=False)
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    out, t0 = [], time.monotonic()
    for chunk in r.response:
        for line in chunk.decode().splitlines():
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
        if time.monotonic() - t0 > seconds:
            break
    r.close()
    return out


def test_levels_stream_is_live_and_only_for_the_technician(box_out):
    rec, data, _ = box_out
    app = create_app(rec)
    tc = TC(app)
    tc.sign_in("technician", PASSWORD["technician"])
    t0 = time.monotonic()
    msgs = _events(tc, 2.0)
    rate = len(msgs) / (time.monotonic() - t0)
    assert rate >= 5, rate  # ≥ 5 readings a second
    assert {ln["channel"] for ln in msgs[-1]["lines"]} == {0, 1}
    assert len({m["lines"][0]["level_dbfs"] for m in msgs}) >= 3  # the line's noise moves the meter
    assert all(m["lines"][0]["state"] == "idle" for m in msgs)
    text = json.dumps(msgs)
    assert "민원실" not in text and "1234" not in text  # levels and states only
    officer = TC(app)
    officer.sign_in("officer", PASSWORD["officer"])
    assert officer.get("/api/levels").status_code == 403
    assert TC(app).get("/api/levels").status_code == 401


def test_test_call_plays_the_line_back_onto_it_and_never_to_the_browser(box_out):
    rec, data, out = box_out
    app = create_app(rec)
    tc = TC(app)
    tc.sign_in("technician", PASSWORD["technician"])
    page = tc.get("/lines")
    assert page.status_code == 200 and "민원실" in page.get_data(as_text=True)
    r = tc.post("/lines/test-call", {"channel": "0", "seconds": "3"})
    assert r.status_code == 302
    # a second test on the same line while the first runs is refused
    assert tc.post("/lines/test-call", {"channel": "0", "seconds": "3"}).status_code == 409
    deadline = time.monotonic() + 20
    while (rec.tests.get(0) or {}).get("phase") in ("recording", "playing") and time.monotonic() < deadline:
        time.sleep(0.1)
    st = rec.tests[0]
    assert st["phase"] == "done", st
    a, b = st["samples"]
    assert b - a == 3 * rec.rate
    recorded, _ = rec.rings.read(0, a, b)
    played = np.fromfile(out, dtype="<i2")
    assert np.array_equal(played[:len(recorded)], recorded)  # the line's own audio, sample for sample
    assert recorded.any()
    # no page or stream carries the sample: the meter stream has the phase only
    assert tc.get("/lines").status_code == 200
    entries = [e for e in AuditLog(data).entries() if e["action"] == "notice.test_call"]
    assert [e["outcome"] for e in entries] == ["ok", "ok"] and entries[-1]["reason"] == "played back"
    assert entries[0]["actor"] == "technician" and entries[0]["object"] == "line:0"


def test_test_call_refusals(box_out):
    rec, data, _ = box_out
    app = create_app(rec)
    tc = TC(app)
    tc.sign_in("technician", PASSWORD["technician"])
    for form in ({"channel": "7", "seconds": "3"}, {"channel": "x", "seconds": "3"},
                 {"channel": "0", "seconds": "60"}, {"channel": "9" * 400, "seconds": "3"}):
        r = tc.post("/lines/test-call", form)
        assert r.status_code == 400, form
        assert "회선" in r.get_data(as_text=True) or "시험 통화" in r.get_data(as_text=True)
    rec.segmenter.lines[1].call_key = 99  # a citizen is on line 2
    try:
        r = tc.post("/lines/test-call", {"channel": "1", "seconds": "3"})
        assert r.status_code == 409 and "통화 중" in r.get_data(as_text=True)
    finally:
        rec.segmenter.lines[1].call_key = None
    auditor = TC(app)
    auditor.sign_in("auditor", PASSWORD["auditor"])
    assert auditor.post("/lines/test-call", {"channel": "0", "seconds": "3"}).status_code == 403


def test_line_map_meters_move_in_chromium(browser, box_out):  # noqa: F811
    rec, data, _ = box_out
    srv = serve(rec, port=0)
    try:
        pg = browser.new_page(viewport={"width": 1280, "height": 800})
        errors = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(f"http://127.0.0.1:{srv.port}/login?next=/lines")
        pg.fill("input[name=name]", "technician")
        pg.fill("input[name=password]", PASSWORD["technician"])
        pg.click("button[type=submit]")
        pg.wait_for_url("**/lines")
        card = pg.locator('section.card[data-channel="0"]')
        assert "1번 회선" in card.locator("h3").inner_text() and "민원실" in card.inner_text()
        grid = pg.locator("#lines")
        pg.wait_for_timeout(500)
        n0, t0 = int(grid.get_attribute("data-updates") or 0), time.monotonic()
        widths = set()
        for _ in range(10):
            widths.add(card.locator(".meter > span").evaluate("e => e.style.width"))
            pg.wait_for_timeout(200)
        per_s = (int(grid.get_attribute("data-updates")) - n0) / (time.monotonic() - t0)
        assert per_s >= 5, per_s  # the meters update ≥ 5 times a second without a reload
        assert len(widths) >= 2, widths  # and the bar follows the line's level
        assert pg.locator("#stream-state").inner_text() == "실시간 · live"
        assert card.locator(".badge.state").inner_text() == "대기 · Idle"
        SHOTS.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(SHOTS / "line-map.png"), full_page=True)
        assert not errors
        pg.close()
    finally:
        srv.close()

"""Health and alarms: each alarm kind judged from its facts; raised, cleared and acknowledged in
``DATA/alarms.sqlite`` with an audit entry for each; the banner on every page until acknowledged (and
only the roles that may acknowledge get the button); the health page's SVG pictures as well-formed
XML; ``/metrics`` as Prometheus text with no personal data, for a scraper's token or a technician;
the disk forecast's arithmetic; and an alarm raised, shown and acknowledged in real Chromium, with a
screenshot of the health page under build/screenshots/health/."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import stat
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from firmware.alarms import AlarmStore, evaluate
from firmware.audit import AuditLog
from firmware.index import KST, CallIndex, iso_utc
from firmware.recording.recorder import Recorder
from firmware.vault import forecast
from web import create_app

from .authutil import PASSWORD, fast_cfg, make_people
from .test_calllist import keeper
from .test_roles import TC
from .test_web import browser  # noqa: F401 - the fixture

SHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots" / "health"
NAMES = ["민원실", "당직실"]
# alarms judged only where a test asks for them: this machine's clock and disk are not the box's
QUIET = {"clock": "off", "review_overdue_days": 0}
ROOMY = {"disk_warn_free_percent": 0.0, "disk_full_free_mb": 16}


def _cfg(alarms=None, retention=None, channels=2):
    return fast_cfg({"audio": {"channels": channels},
                     "line": [{"channel": i, "name": NAMES[i]} for i in range(channels)],
                     "alarms": {**QUIET, **(alarms or {})}, "retention": {**ROOMY, **(retention or {})}})


def _audit(data, action):
    return [e for e in AuditLog(data).entries() if e["action"] == action]


def add_call(data, line, ts, size=100_000, state="finished", duration=60.0):
    idx = CallIndex(data / "index.sqlite")
    with idx.con:
        cur = idx.con.execute(
            "INSERT INTO calls (line, line_name, start_utc, end_utc, start_sample, frames, rate, duration, file, codec,"
            " state, size) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (line, NAMES[line % 2], iso_utc(ts), None if state == "recording" else iso_utc(ts + duration), 0,
             int(duration * 8000), 8000, duration, f"calls/t/{ts}.opus.age", "opus", state, size))
    idx.close()
    return cur.lastrowid


# -- evaluate: each kind from its facts ------------------------------------------------------------
NOW = dt.datetime(2026, 12, 4, 10, 0, tzinfo=KST).timestamp()


def _status(*lines, device="running"):
    return {"lines": [{"channel": ch, "name": NAMES[ch], "state": state, "notice": notice or {}}
                      for ch, state, notice in lines], "device": {"state": device, "last_error": "no such card"}}


def _facts(**kw):
    base = {"recorder": _status((0, "idle", None), (1, "idle", None)), "processes": [
        {"name": "keeper", "state": "running"}], "open_calls": {}, "last_call": {0: NOW - 3600, 1: NOW - 3600},
        "first_call": NOW - 86400 * 30, "today": dt.date(2026, 12, 4), "clock": {"synced": True, "source": "timedatectl"},
        "disk": {"state": "ok", "free_bytes": 50e9, "free_percent": 50, "warn_free_percent": 10, "full_free_mb": 512}}
    return base | kw


def banner(page: str) -> str:
    m = re.search(r'<section class="alarms" id="alarms".*?</section>', page, re.S)
    return m.group(0) if m else ""


def _kinds(facts, cfg=None, now=NOW):
    alarms, judged = evaluate(facts, cfg or _cfg({"clock": "auto", "review_overdue_days": 7}), now)
    return {(a.kind, a.subject) for a in alarms}, judged, alarms


def test_a_healthy_box_raises_nothing():
    kinds, judged, _ = _kinds(_facts(overdue=None))
    assert kinds == set()
    assert {"stuck_call", "no_call", "notice_failed", "device_missing", "disk_low", "disk_full", "clock",
            "process_down", "review_overdue"} <= judged


def test_each_kind_is_raised_by_its_own_fact():
    cfg = _cfg({"clock": "auto", "review_overdue_days": 7, "stuck_call_min": 120, "no_call_days": 7})
    # stuck: in a call for 121 minutes; 119 is not
    f = _facts(recorder=_status((0, "in_call", None), (1, "in_call", None)),
               open_calls={0: NOW - 121 * 60, 1: NOW - 119 * 60})
    kinds, _, alarms = _kinds(f, cfg)
    assert kinds == {("stuck_call", "line:0")}
    assert "1번 회선 (민원실)" in alarms[0].text and "121분" in alarms[0].text
    # no call for 8 days on line 2 (channel 1); a disabled line is not judged
    kinds, _, alarms = _kinds(_facts(last_call={0: NOW - 3600, 1: NOW - 8 * 86400}), cfg)
    assert kinds == {("no_call", "line:1")} and "2번 회선" in alarms[0].text and "8일" in alarms[0].text
    off = fast_cfg({"audio": {"channels": 2}, "line": [{"channel": 0, "name": "a"}, {"channel": 1, "name": "b", "enabled": False}],
                    "alarms": QUIET})
    assert _kinds(_facts(last_call={0: NOW - 3600, 1: NOW - 8 * 86400}), off)[0] == set()
    # a line that never had a call is judged from the box's first call
    kinds, _, _ = _kinds(_facts(last_call={0: NOW - 3600}, first_call=NOW - 9 * 86400), cfg)
    assert kinds == {("no_call", "line:1")}
    # the notice failed twice in a row (the recorder's own count says so)
    f = _facts(recorder=_status((0, "idle", {"alarm": True, "failures_in_row": 2, "last_failure": "output_busy"}),
                                (1, "idle", None)))
    kinds, _, alarms = _kinds(f, cfg)
    assert kinds == {("notice_failed", "line:0")} and "output_busy" in alarms[0].text
    # the audio device is gone
    assert _kinds(_facts(recorder=_status((0, "fault", None), device="lost")), cfg)[0] == {("device_missing", "device")}
    # the disk
    low = {"state": "warn", "free_bytes": 5e9, "free_percent": 4, "warn_free_percent": 10, "full_free_mb": 512}
    assert _kinds(_facts(disk=low), cfg)[0] == {("disk_low", "disk")}
    assert _kinds(_facts(disk=low | {"state": "full"}), cfg)[0] == {("disk_full", "disk")}
    # the clock: timedatectl says unsynchronised; the kernel's guess alarms only when the clock is required
    assert _kinds(_facts(clock={"synced": False, "source": "timedatectl"}), cfg)[0] == {("clock", "clock")}
    assert _kinds(_facts(clock={"synced": False, "source": "adjtimex"}), cfg)[0] == set()
    req = _cfg({"clock": "required", "review_overdue_days": 7})
    assert _kinds(_facts(clock={"synced": None, "source": None}), req)[0] == {("clock", "clock")}
    # a process down; the recorder not answering is the recorder down, and its lines are not judged
    kinds, judged, _ = _kinds(_facts(processes=[{"name": "keeper", "state": "stopped"}]), cfg)
    assert kinds == {("process_down", "process:keeper")}
    kinds, judged, _ = _kinds(_facts(recorder=None), cfg)
    assert kinds == {("process_down", "process:recorder")} and "stuck_call" not in judged
    # the audit review: 8 days behind with a limit of 7; 7 is not
    kinds, _, alarms = _kinds(_facts(overdue=dt.date(2026, 11, 26)), cfg)
    assert kinds == {("review_overdue", "audit")} and "2026-11-26" in alarms[0].text
    assert _kinds(_facts(overdue=dt.date(2026, 11, 27)), cfg)[0] == set()


# -- the store ---------------------------------------------------------------------------------------
def test_raised_cleared_acknowledged_each_once_and_audited(box):
    data, _ = box
    cfg = _cfg({"no_call_days": 7})
    store = AlarmStore(data)
    audit = AuditLog(data)
    assert stat.S_IMODE(os.stat(data / "alarms.sqlite").st_mode) == 0o600
    f = _facts(last_call={0: NOW - 3600, 1: NOW - 8 * 86400})
    for _ in range(3):  # judged again and again: raised once
        raised, cleared = store.sync(*evaluate(f, cfg, NOW), NOW, audit=audit)
    assert len(store.open()) == 1 and len(_audit(data, "alarm.raise")) == 1
    (row,) = store.unacknowledged()
    assert row["kind"] == "no_call" and row["subject"] == "line:1"
    e = _audit(data, "alarm.raise")[0]
    assert e["object"] == f"alarm:{row['id']}" and e["detail"] == {"kind": "no_call", "subject": "line:1"}
    # the recorder stops answering: line alarms are not judged, so this one neither clears nor doubles
    store.sync(*evaluate(_facts(recorder=None, last_call={}), cfg, NOW), NOW, audit=audit)
    assert [r["id"] for r in store.open() if r["kind"] == "no_call"] == [row["id"]]
    # a call comes: cleared, still shown until acknowledged
    store.sync(*evaluate(_facts(), cfg, NOW), NOW + 60, audit=audit)
    assert store.open() == [] and len(_audit(data, "alarm.clear")) == 2  # no_call and the recorder's
    assert row["id"] in {r["id"] for r in store.unacknowledged()}
    done = store.acknowledge(row["id"], "technician", NOW + 120)
    assert done["acked_by"] == "technician" and store.acknowledge(row["id"], "admin", NOW + 130) is None
    assert row["id"] not in {r["id"] for r in store.unacknowledged()}
    # it comes back: a new raising, shown again
    store.sync(*evaluate(f, cfg, NOW + 200), NOW + 200, audit=audit)
    assert len(_audit(data, "alarm.raise")) == 3 and store.unacknowledged()[0]["id"] != row["id"]


# -- the page, the banner, the acknowledgement -------------------------------------------------------
@pytest.fixture
def site(box):
    data, _ = box
    cfg = _cfg({"no_call_days": 7})
    make_people(data, cfg)
    now = time.time()
    add_call(data, 0, now - 10 * 86400)  # line 1: its last call 10 days ago; line 2 never had one
    for h in (1, 2, 2, 30):
        add_call(data, 1, now - h * 3600 - 60)
    return create_app(Recorder(cfg, data), keeper=keeper(data, cfg), data_dir=data, cfg=cfg), data


def test_an_alarm_shows_on_every_page_until_acknowledged_and_the_acknowledgement_is_audited(site):
    app, data = site
    tech = TC(app)
    tech.sign_in("technician", PASSWORD["technician"])
    page = banner(tech.get("/").get_data(as_text=True))
    ids = re.findall(r'data-alarm="([0-9]+)" data-kind="no_call"', page)
    assert len(ids) == 1, page
    alarm = int(ids[0])
    assert "1번 회선 (민원실)" in page and f'id="ack-{alarm}"' in page
    for path in ("/calls", "/settings", "/account", "/health"):
        assert f'data-alarm="{alarm}"' in banner(tech.get(path).get_data(as_text=True)), path
    # the auditor sees it and may not acknowledge it
    aud = TC(app, addr="192.0.2.11")
    aud.sign_in("auditor", PASSWORD["auditor"])
    page = aud.get("/health").get_data(as_text=True)
    assert f'data-alarm="{alarm}"' in banner(page) and f'id="ack-{alarm}"' not in page
    assert f'id="ack-row-{alarm}"' not in page
    assert aud.post(f"/health/alarms/{alarm}/ack").status_code == 403
    # acknowledged by the technician, back to the page they were on
    tech.get("/calls?line=1")
    r = tech.post(f"/health/alarms/{alarm}/ack", {"back": "/calls?line=1"})
    assert r.status_code == 302 and r.headers["Location"].endswith("/calls?line=1")
    (e,) = _audit(data, "alarm.ack")
    assert e["actor"] == "technician" and e["object"] == f"alarm:{alarm}" and e["detail"]["kind"] == "no_call"
    for path in ("/", "/calls", "/health"):
        assert f'data-alarm="{alarm}"' not in banner(tech.get(path).get_data(as_text=True)), path
    assert 'id="alarms"' not in aud.get("/").get_data(as_text=True)
    # the health page still lists it, acknowledged by whom
    row = re.search(rf'id="alarm-row-{alarm}".*?</tr>', tech.get("/health").get_data(as_text=True), re.S)
    assert row and "technician" in row.group(0)
    # again: 409; an alarm that does not exist: 404
    assert tech.post(f"/health/alarms/{alarm}/ack").status_code == 409
    assert tech.post("/health/alarms/99999/ack").status_code == 404
    assert len(_audit(data, "alarm.ack")) == 1


def test_the_health_page_draws_its_pictures_as_well_formed_svg(site):
    app, data = site
    tc = TC(app)
    tc.sign_in("officer", PASSWORD["officer"])
    page = tc.get("/health").get_data(as_text=True)
    for part in ("id=\"system\"", "id=\"processes\"", "id=\"disk\"", "id=\"line-counters\""):
        assert part in page, part
    svgs = {}
    for m in re.finditer(r"<svg\b.*?</svg>", page, re.S):
        el = ET.fromstring(m.group(0))  # raises on anything that is not well-formed XML
        svgs[el.get("id")] = el
        assert "style" not in m.group(0).split(">", 1)[0]  # the CSP allows no inline style
    assert {"disk-chart", "hours-day-1", "hours-week-1", "hours-day-2", "hours-week-2"} <= svgs.keys()
    ns = "{http://www.w3.org/2000/svg}"
    ids = {e.get("id") for e in svgs["disk-chart"].iter()}
    assert {"disk-chart-used", "disk-chart-forecast", "disk-chart-space", "disk-chart-horizon"} <= ids
    # line 2: calls 1 h, 2 h (two) and 30 h ago: three bars in the week, two in the last day
    assert len(svgs["hours-week-2"].findall(f"{ns}rect")) == 3
    assert len(svgs["hours-day-2"].findall(f"{ns}rect")) == 2
    assert svgs["hours-week-1"].findall(f"{ns}rect") == []  # its call is 10 days old
    # per-line counters: calls today is a KST count; the last call shown for line 1
    counters = re.search(r'id="line-counters".*?</table>', page, re.S).group(0)
    assert "민원실" in counters and "당직실" in counters


# -- /metrics --------------------------------------------------------------------------------------------
def test_metrics_are_prometheus_text_without_personal_data(site):
    app, data = site
    tc = TC(app)
    tc.sign_in("technician", PASSWORD["technician"])
    r = tc.get("/metrics")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain; version=")
    text = r.get_data(as_text=True)
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["nokbox_process_up"].samples
    assert {s.labels["line"] for s in fams["nokbox_line_calls_today"].samples} == {"1", "2"}
    today = {s.labels["line"]: s.value for s in fams["nokbox_line_calls_today"].samples}
    assert today["1"] == 0
    assert fams["nokbox_calls_kept"].samples[0].value == 5
    alarms = {s.labels["kind"]: s.value for s in fams["nokbox_alarms_active"].samples}
    assert alarms["no_call"] == 1  # line 1: its last call 10 days ago
    # no line name, no person, no number: only counts, states and sizes
    for word in (*NAMES, "technician", "admin", "officer", "auditor", "calls/t/"):
        assert word not in text, word


def test_metrics_need_a_token_or_a_role_that_may(site):
    app, data = site
    anon = app.test_client()
    assert anon.get("/metrics").status_code == 401
    appr = TC(app, addr="192.0.2.12")
    appr.sign_in("approver", PASSWORD["approver"])
    before = len(_audit(data, "access.denied"))
    assert appr.get("/metrics").status_code == 403
    assert len(_audit(data, "access.denied")) == before + 1
    # the technician makes a token: shown once, only its hash kept, owner-only
    tech = TC(app)
    tech.sign_in("technician", PASSWORD["technician"])
    page = tech.post("/health/metrics-token").get_data(as_text=True)
    token = re.search(r'id="metrics-token".*?<code>(nokbox-metrics-[A-Za-z0-9_-]+)</code>', page, re.S).group(1)
    f = data / "metrics-token.sha256"
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert f.read_text().strip() == hashlib.sha256(token.encode()).hexdigest() and token not in f.read_text()
    assert token not in tech.get("/health").get_data(as_text=True)  # shown once
    assert _audit(data, "metrics.token")[-1]["actor"] == "technician"
    # a scraper with it
    r = anon.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and "nokbox_process_up" in r.get_data(as_text=True)
    # a wrong token: 401, audited once per source and ten minutes
    before = len(_audit(data, "access.denied"))
    for _ in range(3):
        assert anon.get("/metrics", headers={"Authorization": "Bearer nokbox-metrics-guess"}).status_code == 401
    assert len(_audit(data, "access.denied")) == before + 1
    assert token not in "".join(str(e) for e in AuditLog(data).entries())
    # withdrawn: the token no longer works
    assert tech.post("/health/metrics-token/delete").status_code == 302
    assert not f.exists()
    assert anon.get("/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 401


# -- the forecast -------------------------------------------------------------------------------------
T0 = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.timezone.utc).timestamp()


def _index(tmp_path):
    from firmware.vaultdb import ensure_schema

    idx = CallIndex(tmp_path / "index.sqlite")
    ensure_schema(idx.con)
    return idx


def _put(idx, line, ts, size):
    with idx.con:
        idx.con.execute("INSERT INTO calls (line, line_name, start_utc, end_utc, start_sample, frames, rate, duration,"
                        " file, codec, state, size) VALUES (?,?,?,?,0,8000,8000,1.0,?,?,'finished',?)",
                        (line, "x", iso_utc(ts), iso_utc(ts + 1), f"c/{line}/{ts}", "opus", size))


def test_the_forecast_levels_off_at_volume_times_retention(tmp_path):
    idx = _index(tmp_path)
    mb = 1_000_000
    for k in range(1, 7 * 24):  # a call every hour for the last week, 1 MB each, on line 0
        _put(idx, 0, T0 - k * 3600, mb)
    ret = fast_cfg({"retention": {"default_days": 30}}).retention
    o = forecast.outlook(idx.con, ret, [0], T0, free=100 * 10**9, total=200 * 10**9)
    span = (T0 - (T0 - (7 * 24 - 1) * 3600)) / 86400
    assert o.stored == 167 * mb and o.bytes_per_day == pytest.approx(167 * mb / span)
    assert o.steady == pytest.approx(o.bytes_per_day * 30) and o.horizon_days == 30
    assert o.full_in_days is None
    # day 30: every call kept now is gone except today's (its UTC day ends after now), plus 30 days of new ones
    today = sum(mb for k in range(1, 7 * 24) if iso_utc(T0 - k * 3600)[:10] == iso_utc(T0)[:10])
    assert o.forecast[-1][1] == pytest.approx(o.steady + today, rel=1e-6)
    assert o.forecast[0][1] == o.stored
    # a second line with 7 days' retention: its share levels off after a week
    ret2 = fast_cfg({"audio": {"channels": 2}, "retention": {"default_days": 30, "group": [
        {"name": "short", "channels": [1], "days": 7}]}}).retention
    for k in range(1, 7 * 24):
        _put(idx, 1, T0 - k * 3600, mb)
    o2 = forecast.outlook(idx.con, ret2, [0, 1], T0, free=100 * 10**9, total=200 * 10**9)
    assert o2.steady == pytest.approx(o.bytes_per_day * 30 + o.bytes_per_day * 7)
    assert {p["channel"]: p["days"] for p in o2.lines} == {0: 30, 1: 7}


def test_days_until_full_where_the_volume_passes_the_space(tmp_path):
    idx = _index(tmp_path)
    for k in range(1, 7 * 24):
        _put(idx, 0, T0 - k * 3600, 1_000_000)
    ret = fast_cfg({"retention": {"default_days": 90, "disk_full_free_mb": 100}}).retention
    o = forecast.outlook(idx.con, ret, [0], T0, free=10**9, total=10**10)
    reserve = 100 * 1024 * 1024
    assert o.space == o.stored + 10**9 - reserve
    # nothing leaves for 90 days, so the use grows by the volume: full when it has taken the free space
    assert o.full_in_days == pytest.approx((10**9 - reserve) / o.bytes_per_day, abs=0.01)
    # an empty week: nothing to forecast
    (tmp_path / "e").mkdir()
    empty = forecast.outlook(_index(tmp_path / "e").con, ret, [0], T0, free=10**9, total=10**10)
    assert empty.bytes_per_day == 0 and empty.full_in_days is None and empty.stored == 0


def test_the_past_counts_destroyed_calls_until_their_destruction(tmp_path):
    idx = _index(tmp_path)
    _put(idx, 0, T0 - 2 * 86400, 300)  # kept
    with idx.con:  # a call of 40 days ago, destroyed 10 days ago
        idx.con.execute("INSERT INTO destructions (kind, object, call_id, line, start_utc, size, reason, method,"
                        " destroyed_utc, destroyed_by) VALUES ('call', 'call:9', 9, 0, ?, 700, 'retention', 'x', ?,"
                        " 'keeper')", (iso_utc(T0 - 40 * 86400), iso_utc(T0 - 10 * 86400)))
    h = dict((iso_utc(t - 1)[:10], b) for t, b in forecast.history(idx.con, T0, days=60))

    def on(days_ago):
        return h[iso_utc(T0 - days_ago * 86400)[:10]]

    assert on(50) == 0 and on(40) == 700 and on(11) == 700 and on(10) == 0 and on(2) == 300 and on(0) == 300
    assert forecast.history(idx.con, T0, days=60)[-1] == (T0, 300)


def test_calls_per_hour_buckets_end_with_the_current_hour(tmp_path):
    idx = _index(tmp_path)
    top = int(T0 // 3600) * 3600
    for ts in (top + 5, top + 3599, top - 1, top - 23 * 3600, top - 24 * 3600):
        _put(idx, 2, ts, 1)
    _put(idx, 3, top - 3600 * 5 + 10, 1)
    got = forecast.calls_per_hour(idx.con, T0, 24)
    assert got[2][-1] == 2 and got[2][-2] == 1 and got[2][0] == 1 and sum(got[2]) == 4  # 24 h ago is out
    assert got[3][-6] == 1 and sum(got[3]) == 1


def test_the_charts_scale_and_escape():
    from web.charts import disk_chart, hourly_bars, nice_top, size_text

    assert [nice_top(v) for v in (0, 0.3, 1, 3, 7, 12, 99, 101)] == [1, 0.5, 1, 5, 10, 20, 100, 200]
    assert size_text(1_234_567_890) == "1.2 GB" and size_text(512) == "512 B"
    svg = hourly_bars([0, 3, 1], T0, title="<b>&x", ident="t")
    el = ET.fromstring(str(svg))
    assert el.find("{http://www.w3.org/2000/svg}title").text == "<b>&x"
    o = forecast.DiskOutlook(now=T0, stored=10, free=100, total=200, reserve=0, space=110, history=[(T0 - 86400, 5),
                             (T0, 10)], forecast=[(T0 + d * 86400, 10 + 20 * d) for d in range(8)], bytes_per_day=20,
                             steady=140, horizon_days=7, full_in_days=5.0)
    el = ET.fromstring(str(disk_chart(o)))
    assert el.find(".//*[@id='disk-chart-full']") is not None
    assert el.find(".//*[@id='disk-chart-space']").tag.endswith("line")  # near: the full line is drawn
    # a disk far from full is scaled to its use (the line does not lie flat); the full line is named
    far = forecast.DiskOutlook(now=T0, stored=10, free=10**9, total=2 * 10**9, reserve=0, space=10**9, history=[
        (T0 - 86400, 5), (T0, 10)], forecast=[(T0 + d * 86400, 10 + d) for d in range(8)], bytes_per_day=1, steady=7,
        horizon_days=7, full_in_days=None)
    el = ET.fromstring(str(disk_chart(far)))
    space = el.find(".//*[@id='disk-chart-space']")
    assert space.tag.endswith("text") and "1.0 GB" in space.text
    ys = [float(p.split(",")[1]) for p in el.find(".//*[@id='disk-chart-forecast']").get("points").split()]
    assert min(ys) < 18 + (250 - 18 - 26) * 0.3  # the forecast's top is in the upper part of the chart


# -- in the browser -----------------------------------------------------------------------------------
@pytest.mark.browser
def test_an_alarm_raised_and_acknowledged_in_chromium(browser, box):  # noqa: F811
    from web import serve

    data, _ = box
    cfg = _cfg({"no_call_days": 7})
    make_people(data, cfg)
    now = time.time()
    add_call(data, 0, now - 10 * 86400)
    for h in range(1, 160, 3):
        add_call(data, 1, now - h * 3600, size=2_000_000)
    rec = Recorder(cfg, data)
    rec.start()
    srv = serve(rec, port=0, keeper=keeper(data, cfg), data_dir=data, cfg=cfg)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        base = f"http://127.0.0.1:{srv.port}"
        ctx = browser.new_context(viewport={"width": 1280, "height": 900}, locale="ko-KR")
        pg = ctx.new_page()
        errors = []
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        pg.goto(base + "/login")
        pg.fill("input[name=name]", "technician")
        pg.fill("input[name=password]", PASSWORD["technician"])
        pg.click("button[type=submit]")
        pg.goto(base + "/calls")
        banner = pg.locator("#alarms li[data-kind=no_call]")
        assert banner.count() == 1 and "1번 회선 (민원실)" in banner.inner_text()
        alarm = banner.get_attribute("data-alarm")
        pg.screenshot(path=str(SHOTS / "banner-on-calls.png"), full_page=False)
        pg.goto(base + "/health")
        assert pg.locator("#disk svg#disk-chart").count() == 1
        assert pg.locator("svg#hours-week-2 rect").count() > 40
        pg.screenshot(path=str(SHOTS / "health.png"), full_page=True)
        pg.goto(base + "/calls")
        pg.click(f"#ack-{alarm}")
        pg.wait_for_load_state()
        assert pg.url.endswith("/calls")
        assert pg.locator(f"#alarms li[data-alarm='{alarm}']").count() == 0
        pg.goto(base + "/health")
        assert "technician" in pg.inner_text(f"#alarm-row-{alarm}")
        pg.screenshot(path=str(SHOTS / "health-acknowledged.png"), full_page=True)
        assert errors == []
        ctx.close()
    finally:
        srv.close()
        rec.stop()
    (e,) = _audit(data, "alarm.ack")
    assert e["actor"] == "technician" and e["object"] == f"alarm:{alarm}"

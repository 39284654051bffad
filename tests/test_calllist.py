"""The call list: masked numbers for the oversight roles only, none for the others, never in
clear; sealed under the device-bound secret (the SSD alone shows no digits); every view audited."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from firmware.people.accounts import AuthError, role_check
from firmware.audit import AuditLog
from firmware.release.calllist import list_calls
from firmware.recording.recorder import Recorder
from firmware.hal.audio import ArraySource
from firmware.index import KST, NOTICE_RESULTS, CallIndex, ListFilter, call_page, iso_utc, list_sql
from firmware.vault.keeper import Keeper
from firmware.vault.keys import device_for
from firmware.vault.personal import BoxSealer, mask_number, open_masked
from web import create_app

from .authutil import PASSWORD, fast_cfg, make_people
from .conftest import place_calls
from .test_roles import TC
from .test_web import browser  # noqa: F401 - the fixture

RATE = 8000


@pytest.fixture
def recorded(box):
    """Two calls with dialled numbers recorded by the real pipeline, and the box's people."""
    data, ident = box
    cfg = fast_cfg({"audio": {"channels": 2}})
    audio, labels = place_calls(RATE, 80.0, [[(3.0, 20.0)], [(10.0, 15.0)]])
    numbers = [lab[4] for line in labels for lab in line]
    assert all(numbers)
    rec = Recorder(cfg, data, source=ArraySource(audio, RATE, 160))
    rec.start()
    assert rec.wait(60)
    acc = make_people(data, cfg)
    idx = CallIndex(data / "index.sqlite")
    start = idx.calls()[0]["start_utc"]
    idx.close()
    day = dt.datetime.fromisoformat(start.replace("Z", "+00:00")).astimezone(KST).date()  # the list is by KST day
    return data, cfg, acc, numbers, day


def keeper(data, cfg=None):
    """The key keeper in this process (the page reaches the real one over its socket)."""
    return Keeper(data, cfg or fast_cfg(), authorize=role_check(data))


def _audit(data):
    return list(AuditLog(data).entries())


def test_masked_numbers_are_stored_sealed_to_the_box(recorded):
    data, _, _, numbers, _ = recorded
    idx = CallIndex(data / "index.sqlite")
    rows = idx.calls()
    idx.close()
    sealer = BoxSealer(device_for(data))
    got = sorted(open_masked(sealer, r["numbers_masked"])["dialed"] for r in rows)
    assert got == sorted(mask_number(n) for n in numbers)
    assert all("*" in g for g in got)
    for n in numbers:  # neither the number nor its masked form is in any file in clear
        for f in data.rglob("*"):
            if f.is_file():
                blob = f.read_bytes()
                assert n.encode() not in blob and mask_number(n).encode() not in blob


@pytest.mark.parametrize("role,masked", [("approver", True), ("auditor", True), ("technician", False)])
def test_each_role_sees_what_it_may_and_the_view_is_audited(recorded, role, masked):
    data, _, acc, numbers, day = recorded
    user = acc.get(role)
    cl = list_calls(data, user, AuditLog(data), day, keeper=keeper(data), source="test")
    assert len(cl.calls) == 2 and cl.masked_shown is masked
    text = json.dumps(cl.calls, ensure_ascii=False)
    for n in numbers:
        assert n not in text  # never in clear
        assert (mask_number(n) in text) is masked
    assert all("file" not in c for c in cl.calls)
    e = _audit(data)[-1]
    assert e["action"] == "call.view" and e["actor"] == role and e["source"] == "test"
    if masked:  # the keeper, which opened them, wrote its own entry first
        k = _audit(data)[-2]
        assert k["action"] == "keeper.masked" and k["actor"] == role and k["detail"]["masked_numbers"] == 2
    assert e["detail"]["calls"] == 2 and e["detail"]["masked_numbers"] == (2 if masked else 0)
    assert sorted(e["detail"]["ids"]) == sorted(c["id"] for c in cl.calls)


@pytest.mark.parametrize("role", ["officer", "admin", "restricted"])
def test_roles_without_the_list_are_refused_and_logged(recorded, role):
    data, _, acc, _, day = recorded
    name = role
    if role == "restricted":
        name = "auditor"
        acc.set_state("auditor", "restricted", "under investigation", by=acc.get("admin"))
    with pytest.raises(AuthError):
        list_calls(data, acc.get(name), AuditLog(data), day, keeper=keeper(data))
    e = _audit(data)[-1]
    assert e["action"] == "access.denied" and e["actor"] == name and e["outcome"] == "refused"


def test_the_ssd_alone_shows_no_masked_digits(recorded):
    """Without the device-bound secret (the SSD in another machine) the masked column stays shut."""
    data, _, acc, numbers, day = recorded
    key = device_for(data).path
    key.rename(key.with_name("moved.key"))
    cl = list_calls(data, acc.get("auditor"), AuditLog(data), day, keeper=keeper(data))
    assert cl.note and all(c["numbers"] is None for c in cl.calls)
    text = json.dumps(cl.calls, ensure_ascii=False)
    assert not any(mask_number(n) in text for n in numbers)


def test_calls_page_in_korean_first_with_masks_by_role(recorded):
    data, cfg, _, numbers, day = recorded
    app = create_app(Recorder(cfg, data), keeper=keeper(data, cfg))
    for role, masked in (("auditor", True), ("technician", False)):
        tc = TC(app)
        tc.sign_in(role, PASSWORD[role])
        r = tc.get(f"/calls?day={day.isoformat()}")
        assert r.status_code == 200
        page = r.data.decode()
        assert page.index("통화 목록") < page.index("Calls")
        assert page.count('<tr data-id="') == 2
        for n in numbers:
            assert n not in page
            assert (mask_number(n) in page) is masked
        assert ("발신 번호" in page) is masked
    r = tc.get("/calls?day=not-a-day")
    assert r.status_code == 400
    other = day - dt.timedelta(days=3)
    r = tc.get(f"/calls?day={other.isoformat()}")
    assert r.status_code == 200 and "이 날의 통화가 없습니다" in r.data.decode()


def test_out_of_range_days_and_lines_are_refused_in_korean_not_a_500(recorded):
    data, cfg, _, _, day = recorded
    app = create_app(Recorder(cfg, data), keeper=keeper(data, cfg))
    tc = TC(app)
    tc.sign_in("auditor", PASSWORD["auditor"])
    for url in ("/calls?line=99999999999999999999999", "/calls?line=-1", "/calls?line=1.5", "/calls?day=0001-01-01",
                "/calls?day=9999-12-31", "/review/0001-01-01", "/review/9999-12-31", "/review/2026-02-30"):
        r = tc.get(url)
        assert r.status_code == 400, url
        page = r.data.decode()
        assert ("날짜" in page or "회선" in page) and "Traceback" not in page, url
    assert tc.get(f"/calls?day={day.isoformat()}&line=1").status_code == 200  # lines count from 1
    assert tc.get(f"/review/{day.isoformat()}").status_code == 200


# -- the list at scale: keyset pages, filters, indexes, parameters -----------------------------------
DAY = dt.date(2026, 3, 4)
# (mode, played, failure) of the synthetic calls' notices, in turn; None: no notice stored
NAMES = ["민원실", "당직실", "상황실"]  # as the line was named when the call was recorded
NOTICES = [("on", 1, None), ("beep", 1, None), ("off", 0, "disabled"), ("on", 0, "output_busy"), None]


def _result(n):
    if n is None:
        return "none"
    if n[0] == "off":
        return "off"
    return "failed" if not n[1] else ("beep" if n[0] == "beep" else "played")


def fill(data, rows=450, lines=3):
    assert lines <= len(NAMES)
    """``rows`` finished calls on DAY (KST) and the two days before, some sharing a start time (the
    id orders those); returns [(id, start_utc, line, result)] as the database holds them."""
    idx = CallIndex(data / "index.sqlite")
    t0 = dt.datetime.combine(DAY, dt.time(9), KST).timestamp()
    out = []
    with idx.con:
        for i in range(rows):
            ts = t0 - 86400.0 * (i % 3) + (i // 2) * 60.0  # two calls a minute: equal starts
            n, ch = NOTICES[i % len(NOTICES)], (i // 3) % lines
            cur = idx.con.execute(
                "INSERT INTO calls (line, line_name, start_utc, end_utc, start_sample, frames, rate, duration, file,"
                " codec, state, notice_mode, notice_played, notice_failure) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (ch, NAMES[ch], iso_utc(ts), iso_utc(ts + 75.0), 0, 600000, 8000, 75.0,
                 f"calls/x/{i}.opus.age", "opus", "finished", *(n or (None, None, None))))
            out.append((cur.lastrowid, iso_utc(ts), ch, _result(n)))
    idx.close()
    return out


def newest_first(rows, pred=lambda r: True):
    return [r[0] for r in sorted(rows, key=lambda r: (r[1], r[0]), reverse=True) if pred(r)]


@pytest.fixture
def listing(box):
    data, _ = box
    cfg = fast_cfg({"audio": {"channels": 3}, "line": [{"channel": 0, "name": "민원실"}, {"channel": 1, "name": "당직실"},
                                                      {"channel": 2, "name": "상황실"}]})
    make_people(data, cfg)
    rows = fill(data)
    app = create_app(Recorder(cfg, data), keeper=keeper(data, cfg))
    return app, data, rows


def ids_on(page: str) -> list[int]:
    return [int(x) for x in re.findall(r'<tr data-id="([0-9]+)"', page)]


def link(page: str, which: str) -> str | None:
    m = re.search(rf'<a href="([^"]+)" id="{which}"', page)
    return m.group(1).replace("&amp;", "&") if m else None


def walk(tc, url):
    """Every page from ``url`` by the older links, then back by the newer links: (ids down, ids up)."""
    down, pages = [], []
    while url:
        r = tc.get(url)
        assert r.status_code == 200, url
        page = r.data.decode()
        pages.append(ids_on(page))
        down += pages[-1]
        url = link(page, "older")
    assert all(len(p) == 100 for p in pages[:-1])
    up = [pages[-1]]
    url = link(page, "newer")
    while url:
        page = tc.get(url).data.decode()
        up.insert(0, ids_on(page))
        url = link(page, "newer")
    return down, up, pages


@pytest.mark.parametrize("query,pred", [
    ("", lambda r: True),
    ("?line=2", lambda r: r[2] == 1),
    ("?notice=failed", lambda r: r[3] == "failed"),
    ("?notice=none&line=1", lambda r: r[3] == "none" and r[2] == 0),
    ("?line=3&notice=played", lambda r: r[2] == 2 and r[3] == "played"),
    (f"?day={DAY}", lambda r: r[1] >= "2026-03-04" and r[1] < "2026-03-05"),  # 09:00 KST is 00:00 UTC
    (f"?day={DAY - dt.timedelta(days=1)}&line=1", lambda r: "2026-03-03" <= r[1] < "2026-03-04" and r[2] == 0),
])
def test_pages_follow_their_cursors_newest_first_with_nothing_lost_or_repeated(listing, query, pred):
    app, _, rows = listing
    tc = TC(app)
    tc.sign_in("technician", PASSWORD["technician"])
    down, up, pages = walk(tc, "/calls" + query)
    assert down == newest_first(rows, pred) and down
    assert up == pages  # back by the newer links, the same pages
    first = tc.get("/calls" + query).data.decode()
    assert link(first, "newer") is None and (link(first, "older") is not None) == (len(pages) > 1)


def test_links_keep_the_filters_and_count_lines_from_one(listing):
    app, _, rows = listing
    tc = TC(app)
    tc.sign_in("approver", PASSWORD["approver"])
    page = tc.get(f"/calls?day={DAY}&line=2&notice=off").data.decode()
    first = tc.get("/calls?line=1&notice=").data.decode()
    second = tc.get(link(first, "older")).data.decode()  # 150 calls on line 1: the last page
    assert link(second, "older") is None and link(first, "newer") is None
    for page_, which in ((first, "older"), (second, "newer"), (second, "newest")):
        q = parse_qs(urlsplit(link(page_, which)).query)
        assert q["line"] == ["1"] and "notice" not in q and "day" not in q, which
    assert '<option value="2" selected>2번 · 당직실</option>' in page
    cells = re.findall(r'<td class="line">([^<]+)</td>', page)
    assert cells and set(cells) == {"2번 · 당직실"}
    assert "안내 꺼짐 · Notice off" in page
    failed = tc.get("/calls?notice=failed").data.decode()
    assert "실패 · Failed: 출력 사용 중 · Output busy" in failed and "output_busy" not in failed.replace(
        'value="failed"', "")


def test_a_page_before_a_cursor_near_the_newest_is_the_first_page(box):
    """Going back to the newest page never gives a short page when calls came in between."""
    data, _ = box
    rows = fill(data, rows=130)
    order = newest_first(rows)
    idx = CallIndex(data / "index.sqlite")
    try:
        by_id = {r[0]: r for r in rows}
        second = call_page(idx.con, ListFilter(), after=(by_id[order[99]][1], order[99]), limit=100)
        assert [r["id"] for r in second.rows] == order[100:] and second.newer and not second.older
        back = call_page(idx.con, ListFilter(), before=(by_id[order[100]][1], order[100]), limit=100)
        assert [r["id"] for r in back.rows] == order[:100] and not back.newer and back.older
        near = call_page(idx.con, ListFilter(), before=(by_id[order[10]][1], order[10]), limit=100)
        assert [r["id"] for r in near.rows] == order[:100] and not near.newer  # the first page, full
    finally:
        idx.close()


def test_every_filter_walks_an_index_never_the_table(box):
    """EXPLAIN QUERY PLAN of every filter combination, each page direction: an index search in the
    page's order (no full scan of calls, no sorting step), as at a million rows."""
    data, _ = box
    fill(data, rows=50)
    idx = CallIndex(data / "index.sqlite")
    lo, hi = iso_utc(dt.datetime.combine(DAY, dt.time(0), KST).timestamp()), "2026-03-04T15:00:00.000Z"
    cursor = ("2026-03-04T03:00:00.000Z", 10)
    try:
        for day in (False, True):
            for line in (None, 1):
                for notice in (None, *NOTICE_RESULTS):
                    flt = ListFilter(lo if day else None, hi if day else None, line, notice)
                    for kw in ({}, {"after": cursor}, {"before": cursor}):
                        sql, args = list_sql(flt, **kw, limit=101)
                        plan = " / ".join(r["detail"] for r in idx.con.execute("EXPLAIN QUERY PLAN " + sql, args))
                        assert re.fullmatch(r"(SEARCH|SCAN) calls USING INDEX calls_\w+( \(.*\))?", plan), (flt, kw, plan)
                        assert "TEMP B-TREE" not in plan
                        if line is not None or notice is not None or day or kw:
                            assert plan.startswith("SEARCH"), (flt, kw, plan)  # bounded, not the whole index
                        if notice is not None:
                            assert "<expr>=?" in plan, plan
    finally:
        idx.close()


BAD = [
    "/calls?line=99999999999999999999999", "/calls?line=0", "/calls?line=-1", "/calls?line=33", "/calls?line=1.5",
    "/calls?line=1e3", "/calls?line=%D9%A1", "/calls?line=%EF%BC%91", "/calls?line=%00", "/calls?line=+1+1",
    "/calls?day=0001-01-01", "/calls?day=9999-12-31", "/calls?day=2026-02-30", "/calls?day=%EC%98%A4%EB%8A%98",
    "/calls?day=%EF%BC%92%EF%BC%90%EF%BC%92%EF%BC%96-01-01", "/calls?day=-2026-01-01",
    "/calls?notice=재생", "/calls?notice=PLAYED", "/calls?notice=1", "/calls?notice=%FF%FE",
    "/calls?after=1", "/calls?after=", "/calls?after=2026-03-04T00:00:00.000Z_-5", "/calls?after=2026-03-04T00:00:00.000Z_0",
    "/calls?after=2026-03-04T00:00:00.000Z_99999999999999999999", "/calls?after=2026-13-04T00:00:00.000Z_5",
    "/calls?after=2026-03-04T25:00:00.000Z_5", "/calls?before=' OR 1=1 --", "/calls?after=%E2%80%AE%00",
    "/calls?after=2026-03-04T00:00:00.000Z_5&before=2026-03-04T00:00:00.000Z_5",
    f"/calls?day={DAY}&after=2026-03-06T00:00:00.000Z_5",  # a cursor of another day than the one asked
    "/review/0001-01-01", "/review/9999-12-31",
]


@pytest.mark.parametrize("url", BAD)
def test_each_bad_parameter_is_a_korean_400_never_a_500(listing, url):
    app, _, _ = listing
    tc = TC(app)
    tc.sign_in("auditor", PASSWORD["auditor"])
    r = tc.get(url)
    assert r.status_code == 400, url
    page = r.data.decode()
    refusal = re.search(r'<p class="alert" id="refusal">([^<]+)</p>', page).group(1)
    assert re.search("[가-힣]", refusal) and " · " in refusal, refusal
    assert "Traceback" not in page and "sqlite" not in page.lower()


def test_a_well_formed_cursor_from_anywhere_only_positions_the_list(listing):
    """A cursor is a place in the list, not a key: one typed by hand shows the calls older than it."""
    app, _, rows = listing
    tc = TC(app)
    tc.sign_in("technician", PASSWORD["technician"])
    r = tc.get("/calls?after=2026-03-03T00:00:00.000Z_1")
    assert r.status_code == 200
    assert ids_on(r.data.decode()) == newest_first(rows, lambda x: (x[1], x[0]) < ("2026-03-03T00:00:00.000Z", 1))[:100]
    r = tc.get("/calls?after=2000-01-01T00:00:00.000Z_1")
    assert r.status_code == 200 and "조건에 맞는 통화가 없습니다" in r.data.decode()


def test_each_page_is_audited_with_its_filters(listing):
    app, data, _ = listing
    tc = TC(app)
    tc.sign_in("technician", PASSWORD["technician"])
    page = tc.get(f"/calls?day={DAY}&line=1&notice=played").data.decode()
    e = [x for x in _audit(data) if x["action"] == "call.view"][-1]
    assert e["object"] == f"calls {DAY} line:1 notice:played" and e["actor"] == "technician"
    assert e["detail"]["ids"] == ids_on(page) and e["detail"]["masked_numbers"] == 0
    tc.get("/calls")
    assert [x for x in _audit(data) if x["action"] == "call.view"][-1]["object"] == "calls all"


def test_masked_numbers_on_a_later_page_come_from_the_keeper_and_are_audited(recorded):
    data, cfg, _, numbers, day = recorded
    fill(data, rows=120, lines=2)  # the two recorded calls are now past the first page
    app = create_app(Recorder(cfg, data), keeper=keeper(data, cfg))
    tc = TC(app)
    tc.sign_in("auditor", PASSWORD["auditor"])
    url, pages = f"/calls?day={day}", []
    while url:
        page = tc.get(url).data.decode()
        pages.append(page)
        url = link(page, "older")
    found = [p for p in pages if any(mask_number(n) in p for n in numbers)]
    assert found and all(n not in "".join(pages) for n in numbers)
    k = [x for x in _audit(data) if x["action"] == "keeper.masked"]
    assert k and all(x["actor"] == "auditor" for x in k)


SHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots" / "calls"


@pytest.mark.browser
def test_the_calls_list_in_chromium(browser, box):  # noqa: F811
    """The list as a person uses it: filter by line and result from the form, page older and back."""
    from web import serve

    data, _ = box
    cfg = fast_cfg({"audio": {"channels": 3}, "line": [{"channel": 0, "name": "민원실"}, {"channel": 1, "name": "당직실"},
                                                      {"channel": 2, "name": "상황실"}]})
    make_people(data, cfg)
    rows = fill(data)
    srv = serve(Recorder(cfg, data), port=0, keeper=keeper(data, cfg), data_dir=data, cfg=cfg)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        pg = ctx.new_page()
        base = f"http://127.0.0.1:{srv.port}"
        pg.goto(base + "/login")
        pg.fill("input[name=name]", "approver")
        pg.fill("input[name=password]", PASSWORD["approver"])
        pg.click("button[type=submit]")
        with pg.expect_navigation():  # the next page loaded before it is read
            pg.click("#nav-calls")
        assert pg.locator("#calls tbody tr").count() == 100
        pg.screenshot(path=str(SHOTS / "1-first-page.png"), full_page=True)
        with pg.expect_navigation():  # the next page loaded before it is read
            pg.click("#older")
        assert "after=" in pg.url
        pg.screenshot(path=str(SHOTS / "2-older.png"), full_page=True)
        with pg.expect_navigation():  # the next page loaded before it is read
            pg.click("#newer")
        assert pg.locator("#calls tbody tr").first.get_attribute("data-id") == str(newest_first(rows)[0])
        pg.select_option("#line", "2")
        pg.select_option("#notice", "failed")
        with pg.expect_navigation():  # the next page loaded before it is read
            pg.click("#show")
        q = parse_qs(urlsplit(pg.url).query)
        assert q["line"] == ["2"] and q["notice"] == ["failed"]
        want = newest_first(rows, lambda r: r[2] == 1 and r[3] == "failed")
        got = [int(x) for x in pg.locator("#calls tbody tr").evaluate_all("rs => rs.map(r => r.dataset.id)")]
        assert got == want
        assert set(pg.locator("#calls td.line").all_inner_texts()) == {"2번 · 당직실"}
        pg.screenshot(path=str(SHOTS / "3-line-2-failed.png"), full_page=True)
        pg.fill("#day", DAY.isoformat())
        pg.select_option("#notice", "")
        with pg.expect_navigation():  # the next page loaded before it is read
            pg.click("#show")
        pg.screenshot(path=str(SHOTS / "4-day-line-2.png"), full_page=True)
        pg.goto(base + "/calls?line=99999999999999999999999")
        assert "1부터 32" in pg.inner_text("#refusal")
        pg.screenshot(path=str(SHOTS / "5-bad-line.png"), full_page=True)
        ctx.close()
    finally:
        srv.close()

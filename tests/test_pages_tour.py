"""A tour of every page as every role in real headless Chromium: each page the role may open renders
with the one header (the box's name, the person, the role in Korean), navigation that offers only
what the role may open, no raw status codes, and no browser-side error; a screenshot of each is
saved under build/screenshots/pages/ for a person to look at."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from firmware.people.accounts import ROLE_LABELS, ROLES, can
from firmware.recording.recorder import Recorder

from .authutil import PASSWORD, fast_cfg
from .test_roles import PUBLIC, _url
from .test_web import browser  # noqa: F401 - the fixture

pytestmark = pytest.mark.browser
SHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots" / "pages"
# pages that are downloads or streams, not pages a person looks at
NOT_PAGES = re.compile(r"(\.pdf|/attachment|/export/status|\.csv|/audio|/download|/backup|/metrics|/api/|/events|/sheet)")
# raw codes a person must never read as they are (roles, account, process, device, line states), as a
# cell's, a badge's or an option's whole text (prose may use the words: "the officer", "running")
RAW = {"admin", "technician", "officer", "approver", "auditor", "active", "restricted", "disabled", "simulated",
       "running", "starting", "stopped", "in_call", "idle", "mock", "on", "off", "beep", "output_busy"}


# account names that are not role words, so a role code left on a page is caught as a code
NAMES = {"admin": "boss", "technician": "tech1", "officer": "clerk1", "approver": "head1", "auditor": "audit1"}
DISPLAY = {"admin": "김관리", "technician": "이기술", "officer": "박담당", "approver": "최과장", "auditor": "정감사"}


@pytest.fixture
def site(box):
    from firmware.audit import AuditLog
    from firmware.people.accounts import Accounts, role_check
    from firmware.release.requests import KeeperView
    from firmware.vault.keeper import Keeper
    from web import serve

    data, _ = box
    cfg = fast_cfg({"audio": {"channels": 2}})
    acc = Accounts(data, cfg.auth, AuditLog(data, every=cfg.audit.seal_every))
    boss, _ = acc.setup_first(NAMES["admin"], PASSWORD["admin"], ["admin"], display=DISPLAY["admin"])
    for r in ROLES[1:]:
        acc.create(NAMES[r], PASSWORD[r], [r], by=boss, display=DISPLAY[r])
    rec = Recorder(cfg, data)
    rec.start()
    keeper = Keeper(data, cfg, authorize=role_check(data), requests=KeeperView(data, cfg, role_check(data)))
    srv = serve(rec, port=0, keeper=keeper, data_dir=data, cfg=cfg)
    try:
        yield srv, data
    finally:
        srv.close()
        rec.stop()


def _pages(app, user):
    for rule in app.url_map.iter_rules():
        if rule.endpoint in PUBLIC or "GET" not in rule.methods:
            continue
        path = _url(rule)
        if "<" in path or NOT_PAGES.search(path) or path.startswith("/setup"):  # the wizard: test_wizard
            continue
        perm = app.view_functions[rule.endpoint]._nokbox_perm
        yield rule.endpoint, path, can(user, perm), bool(rule.arguments - {"day"})


@pytest.mark.parametrize("role", ROLES)
def test_every_page_as_every_role(browser, site, role):  # noqa: F811
    srv, data = site
    app = srv.app
    user = app.extensions["nokbox"].accounts.get(NAMES[role])
    base = f"http://127.0.0.1:{srv.port}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    ctx = browser.new_context(viewport={"width": 1280, "height": 860}, locale="ko-KR")
    pg = ctx.new_page()
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.goto(base + "/login")
    pg.fill("input[name=name]", NAMES[role])
    pg.fill("input[name=password]", PASSWORD[role])
    pg.click("button[type=submit]")
    seen = 0
    for endpoint, path, allowed, of_a_record in _pages(app, user):
        problems.clear()
        r = pg.goto(base + path)
        if not allowed:
            assert r.status == 403, (role, path, r.status)
            continue
        if of_a_record and r.status in (403, 404):  # one request or call: none in this box (the keeper says so)
            continue
        assert r.status < 400, (role, path, r.status)
        header = pg.locator("header.site")
        assert header.count() == 1, (role, path, "one site header")
        assert "nokbox" in header.inner_text()
        who = pg.locator("#who").inner_text()
        assert user.display in who, (role, path, who)
        assert ROLE_LABELS[role].split(" · ")[0] in who, (role, path, who)
        # the navigation offers only what this role may open
        for href in pg.locator("nav.top a").evaluate_all("els => els.map(e => e.getAttribute('href'))"):
            target = app.url_map.bind("localhost").match(href.split("?")[0])
            perm = app.view_functions[target[0]]._nokbox_perm
            assert perm is None or can(user, perm), (role, path, href)
        cells = pg.locator("main").locator("td, dd, .badge, option, li").evaluate_all(
            "els => els.map(e => e.textContent.trim())")
        raw = [c for c in cells if c and all(w.strip() in RAW for w in c.split(","))]
        assert not raw, (role, path, raw)
        pg.wait_for_timeout(300)  # the page's own scripts have run (live refresh, meters)
        assert not problems, (role, path, problems)
        pg.screenshot(path=str(SHOTS / f"{role}-{endpoint.replace('.', '-')}.png"), full_page=True)
        seen += 1
    assert seen >= 2
    ctx.close()

"""The route × role security matrix, written down once: every route of the page with the permission it
needs (None: open before sign-in). The test fails on a route that is not in the table, on a table entry
the page no longer has, and on a route whose declared permission differs; then every route is tried as
nobody, as every role, and every form without, with a wrong and with another session's CSRF token."""

from __future__ import annotations

import pytest

from firmware.audit import AuditLog
from firmware.people.accounts import ROLES, can

from .authutil import PASSWORD, fast_cfg, make_people
from .test_roles import TC, _url

# endpoint -> permission (firmware/people/accounts.py PERMISSIONS says which roles hold it)
MATRIX: dict[str, str | None] = {
    "static": None,
    "auth.login": None, "auth.logout": None, "auth.setup": None, "setupcode.enter": None,
    "auth.account": "account.self", "auth.account_password": "account.self", "auth.account_pin": "approver.pin",
    "wizard.keys": "users.manage", "wizard.sheet": "users.manage", "wizard.pin": "users.manage",
    "wizard.audit_key": "users.manage",
    "status.page": "status.view", "status.api": "status.view",
    "health.page": "health.view", "health.ack": "alarms.ack", "health.metrics": "metrics.view",
    "health.new_token": "metrics.view", "health.delete_token": "metrics.view",
    "calls.index": "calls.list",
    "lines.index": "config.view", "lines.events": "config.view", "lines.test_call": "config.edit",
    "notice.index": "config.view", "notice.mode": "config.edit", "notice.test": "config.edit",
    "notice.upload": "config.edit",
    "settings.index": "config.view", "settings.lines": "config.view", "settings.backup": "config.view",
    "settings.preview": "config.edit", "settings.apply": "config.edit", "settings.restore": "config.edit",
    "release.index": "requests.view", "release.show": "requests.view", "release.attachment": "requests.view",
    "release.receipt": "requests.view", "release.ledger": "ledger.view",
    "release.new": "request.create", "release.create": "request.create", "release.submit": "request.create",
    "release.close": "request.create",
    "release.search": "request.search", "release.attach": "request.search", "release.detach": "request.search",
    "release.decide": "request.approve",
    "release.play": "call.play", "release.audio": "call.play",
    "release.export_start": "request.export", "release.export_password": "request.export",
    "release.export_status": "request.export",
    "review.index": "audit.review", "review.day": "audit.review", "review.export": "audit.export",
    "review.signoff": "audit.signoff", "review.verify": "audit.verify",
    "users.index": "users.manage", "users.create": "users.manage", "users.notice": "users.manage",
    "users.password": "users.manage", "users.revoke": "users.manage", "users.roles": "users.manage",
    "users.state": "users.manage", "users.unlock": "users.manage",
}


@pytest.fixture
def site(box):
    from firmware.people.accounts import role_check
    from firmware.recording.recorder import Recorder
    from firmware.release.requests import KeeperView
    from firmware.vault.keeper import Keeper
    from web import create_app

    data, _ = box
    cfg = fast_cfg({"audio": {"channels": 2}})
    make_people(data, cfg)
    keeper = Keeper(data, cfg, authorize=role_check(data), requests=KeeperView(data, cfg, role_check(data)))
    return create_app(Recorder(cfg, data), keeper=keeper), data


def _routes(app):
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if rule.endpoint == "static":
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield rule, method, _url(rule)


def test_the_matrix_is_the_page(site):
    app, _ = site
    endpoints = {r.endpoint for r in app.url_map.iter_rules()}
    assert endpoints - MATRIX.keys() == set(), "routes missing from MATRIX"
    assert MATRIX.keys() - endpoints == set(), "MATRIX names routes the page does not have"
    for e in endpoints - {"static"}:
        assert getattr(app.view_functions[e], "_nokbox_perm", "undeclared") == MATRIX[e], e


def test_nobody_signed_in_gets_nothing_but_sign_in(site):
    app, _ = site
    tc = TC(app)
    for rule, method, path in _routes(app):
        if MATRIX[rule.endpoint] is None:
            continue
        r = tc.get(path, headers={"X-Nokbox-Poll": "1"}) if method == "GET" else tc.post(path, {"x": "1"}, csrf=False)
        if path.startswith("/api/") or path == "/metrics":  # a scraper gets 401, not a sign-in page
            assert r.status_code == 401, (method, path, r.status_code)
        else:
            assert r.status_code == 302 and "/login" in r.headers["Location"], (method, path, r.status_code)


@pytest.mark.parametrize("role", ROLES)
def test_each_role_against_the_matrix(site, role):
    app, data = site
    user = app.extensions["nokbox"].accounts.get(role)
    tc = TC(app)
    tc.sign_in(role, PASSWORD[role])
    for rule, method, path in _routes(app):
        perm = MATRIX[rule.endpoint]
        if perm is None or rule.endpoint == "lines.events":
            continue
        before = _gate_refusals(data, perm)
        r = tc.get(path, headers={"X-Nokbox-Poll": "1"}) if method == "GET" else tc.post(path, {})
        refused_at_the_gate = _gate_refusals(data, perm) > before
        assert r.status_code < 500, (role, method, path, r.status_code)
        if can(user, perm):
            # past the gate (a page of a request that does not exist may still be refused by the keeper)
            assert not refused_at_the_gate and r.status_code != 401, (role, method, path, r.status_code)
        else:
            assert r.status_code == 403 and refused_at_the_gate, (role, method, path, r.status_code)


def _gate_refusals(data, perm) -> int:
    return sum(1 for e in AuditLog(data).entries()
               if e["action"] == "access.denied" and (e.get("detail") or {}).get("permission") == perm)


def test_every_form_needs_this_sessions_csrf_token(site):
    app, data = site
    other = TC(app)
    other.sign_in("officer", PASSWORD["officer"])
    foreign = other.csrf
    for role in ROLES:
        tc = TC(app)
        tc.sign_in(role, PASSWORD[role])
        user = app.extensions["nokbox"].accounts.get(role)
        for rule, method, path in _routes(app):
            perm = MATRIX[rule.endpoint]
            if method != "POST" or perm is None or not can(user, perm):
                continue
            for token in (None, "wrong-" + tc.csrf[:10], foreign):
                before = sum(1 for e in AuditLog(data).entries() if e["action"] == "access.csrf")
                form = {} if token is None else {"csrf": token}
                r = tc.c.post(path, data=form, environ_base={"REMOTE_ADDR": tc.addr})
                assert r.status_code == 400, (role, path, token, r.status_code)
                after = sum(1 for e in AuditLog(data).entries() if e["action"] == "access.csrf")
                assert after == before + 1, (role, path)

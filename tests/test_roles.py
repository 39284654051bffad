"""Role tests over every web route and every CLI command: each role gets exactly what the
permission table allows, and every refusal is written to the audit log."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from firmware import cli
from firmware.people.accounts import PERMISSIONS, ROLES
from firmware.cli.people import CLI_PERMISSIONS, EXIT_REFUSED
from firmware.audit import AuditLog
from firmware.recording.recorder import Recorder
from firmware.hal.clock import FakeClock
from firmware.people.review import KST
from web import create_app

from .authutil import PASSWORD, fast_cfg, make_people

PUBLIC = {"auth.setup", "auth.login", "auth.logout", "setupcode.enter", "static"}


class TC:
    """Flask's test client with the CSRF token of the last page."""

    def __init__(self, app, addr="192.0.2.10"):
        self.c = app.test_client()
        self.addr = addr
        self.csrf = ""

    def _keep(self, r):
        m = re.search(rb'name="csrf" value="([^"]+)"', r.data)
        if m:
            self.csrf = m.group(1).decode()
        return r

    def get(self, path, **kw):
        return self._keep(self.c.get(path, environ_base={"REMOTE_ADDR": self.addr}, **kw))

    def post(self, path, data=None, csrf=True):
        d = dict(data or {})
        if csrf:
            d.setdefault("csrf", self.csrf)
        return self._keep(self.c.post(path, data=d, environ_base={"REMOTE_ADDR": self.addr}))

    def sign_in(self, name, password):
        self.get("/login")
        r = self.post("/login", {"name": name, "password": password})
        self.get("/account")
        return r


@pytest.fixture
def site(box):
    data, _ = box
    cfg = fast_cfg({"audio": {"channels": 1}})
    make_people(data, cfg)
    rec = Recorder(cfg, data)
    app = create_app(rec)
    x = app.extensions["nokbox"]
    x.accounts.create("target", "Hangang-bridge-at-night-777", ["technician"], by=x.accounts.get("admin"))
    return app, data


def _url(rule) -> str:
    yesterday = (dt.datetime.now(KST).date() - dt.timedelta(days=1)).isoformat()
    return (rule.rule.replace("<name>", "target").replace("<day>", yesterday).replace("<ref>", "grant:0")
            .replace("<int:call>", "1").replace("<number>", "2026-0001").replace("<int:index>", "0")
            .replace("<int:alarm>", "1"))


def _denials(data):
    return [e for e in AuditLog(data).entries() if e["action"] == "access.denied"]


def test_every_route_declares_a_permission(site):
    app, _ = site
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        if rule.endpoint in PUBLIC:
            continue
        perm = getattr(view, "_nokbox_perm", "MISSING")
        assert perm in PERMISSIONS, (rule.rule, perm)


@pytest.mark.parametrize("role", [*ROLES, "restricted"])
def test_each_role_gets_exactly_its_routes(site, role):
    app, data = site
    x = app.extensions["nokbox"]
    name = role
    if role == "restricted":
        name = "auditor"
        x.accounts.set_state("auditor", "restricted", "under investigation", by=x.accounts.get("admin"))
    tc = TC(app)
    assert tc.sign_in(name, PASSWORD[name]).status_code == 302
    user = x.accounts.get(name)
    from firmware.people.accounts import can

    checked = 0
    for rule in app.url_map.iter_rules():
        if rule.endpoint in PUBLIC:
            continue
        perm = app.view_functions[rule.endpoint]._nokbox_perm
        allowed = can(user, perm)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            before = len(_denials(data))
            path = _url(rule)
            r = tc.get(path) if method == "GET" else tc.post(path, {})
            if allowed:
                assert r.status_code not in (401, 403), (role, method, path, r.status_code)
            else:
                assert r.status_code == 403, (role, method, path, r.status_code)
                d = _denials(data)
                assert len(d) == before + 1, (role, method, path)
                assert d[-1]["actor"] == name and d[-1]["object"] == f"{method} {path}"
                assert d[-1]["detail"]["permission"] == perm and d[-1]["outcome"] == "refused"
            checked += 1
    assert checked >= 16


def test_signed_out_visitors_are_sent_to_sign_in(site):
    app, _ = site
    tc = TC(app)
    for rule in app.url_map.iter_rules():
        if rule.endpoint in PUBLIC or "GET" not in rule.methods:
            continue
        r = tc.get(_url(rule))
        if rule.rule.startswith("/api/") or rule.rule == "/metrics":  # a scraper: 401, not a sign-in page
            assert r.status_code == 401
        else:
            assert r.status_code == 302 and "/login" in r.headers["Location"], rule.rule


def test_forms_need_the_csrf_token(site):
    app, data = site
    tc = TC(app)
    tc.sign_in("admin", PASSWORD["admin"])
    r = tc.post("/users/target/state", {"state": "disabled", "reason": "x"}, csrf=False)
    assert r.status_code == 400
    assert AuditLog(data).entries().__next__()  # the log exists
    assert [e for e in AuditLog(data).entries() if e["action"] == "access.csrf"][-1]["object"] == "/users/target/state"
    assert app.extensions["nokbox"].accounts.get("target").state == "active"
    # with the token it works, and the reason is logged
    r = tc.post("/users/target/state", {"state": "disabled", "reason": "left the office"})
    assert r.status_code == 302
    assert app.extensions["nokbox"].accounts.get("target").state == "disabled"


def test_first_run_setup_is_forced_and_local(box):
    """The first-run wizard's first step (tests/test_wizard.py has the rest): forced, local, once."""
    from firmware.people.accounts import role_check
    from firmware.vault.keeper import Keeper

    data, _ = box
    cfg = fast_cfg({"audio": {"channels": 1}})
    app = create_app(Recorder(cfg, data), keeper=Keeper(data, cfg, authorize=role_check(data)))
    tc = TC(app, addr="127.0.0.1")
    assert tc.get("/").headers["Location"].endswith("/setup")
    assert tc.get("/login").headers["Location"].endswith("/setup")
    assert tc.get("/api/status").status_code == 503
    lan = TC(app, addr="192.0.2.50")
    assert lan.get("/setup").status_code == 403
    tc.get("/setup")
    r = tc.post("/setup", {"name": "boss", "password": PASSWORD["admin"], "password2": PASSWORD["admin"],
                           "roles": ["auditor"]})
    # signed in straight away; this box has its key already (and no recovery seal, so no PIN step):
    # on to the audit verification key, shown once
    assert r.status_code == 302 and r.headers["Location"].endswith("/setup/audit-key")
    assert tc.get("/").headers["Location"].endswith("/setup/audit-key")
    tc.get("/setup/audit-key")
    r = tc.post("/setup/audit-key", {})
    key = re.search(rb'id="verification-key">([^<]+)<', r.data).group(1).decode()
    assert key.startswith("nokbox-audit-v")
    assert AuditLog(data).verify_report(key=key).macs_checked
    assert tc.get("/").status_code == 200
    assert TC(app, addr="127.0.0.1").get("/setup").headers["Location"].endswith("/login")  # once only
    assert app.extensions["nokbox"].accounts.get("boss").roles == ("admin", "auditor")


def test_idle_sign_out_in_the_web_page(box):
    data, _ = box
    cfg = fast_cfg({"audio": {"channels": 1}})
    clock = FakeClock(wall=1_800_000_000.0)
    make_people(data, cfg, clock=clock)
    app = create_app(Recorder(cfg, data), clock=clock)
    tc = TC(app)
    tc.sign_in("technician", PASSWORD["technician"])
    assert tc.get("/").status_code == 200
    clock.advance(10 * 60)
    assert tc.get("/api/status", headers={"X-Nokbox-Poll": "1"}).status_code == 200  # polling is not use
    clock.advance(6 * 60)
    assert tc.get("/api/status", headers={"X-Nokbox-Poll": "1"}).status_code == 401
    assert tc.get("/").status_code == 302


def test_web_sign_in_lockout_survives_a_restart(box):
    data, _ = box
    cfg = fast_cfg({"audio": {"channels": 1}})
    make_people(data, cfg)
    tc = TC(create_app(Recorder(cfg, data)))
    for _ in range(5):
        assert tc.sign_in("approver", "guess-guess-guess-1").status_code == 401
    tc = TC(create_app(Recorder(cfg, data)))  # the service restarted
    r = tc.sign_in("approver", PASSWORD["approver"])
    assert r.status_code == 401 and "locked".encode() in r.data


# -- the command line -------------------------------------------------------------------------
def _cli_commands() -> set[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "cmd")
    out = set()
    for name, p in sub.choices.items():
        nested = [a for a in p._actions if a.dest in ("user_cmd", "audit_cmd", "notice_cmd", "keys_cmd", "retention_cmd",
                                                      "request_cmd")]
        if nested:
            out |= {f"{name} {n}" for n in nested[0].choices}
        else:
            out.add(name)
    return out


def test_every_cli_command_is_in_the_table():
    assert _cli_commands() == set(CLI_PERMISSIONS)


def _short_wav(tmp_path):
    import numpy as np
    import soundfile as sf

    p = tmp_path / "notice.wav"
    if not p.exists():
        sf.write(p, (0.2 * np.sin(np.arange(8000) / 3)).astype(np.float32), 8000)
    return p


def _cli_args(cmd: str, tmp_path) -> list[str]:
    today = dt.datetime.now(KST).date().isoformat()
    extra = {
        "user add": ["newbie", "--role", "officer", "--password-file", str(tmp_path / "newpw")],
        "user disable": ["target", "--reason", "r"], "user restrict": ["target", "--reason", "r"],
        "user enable": ["target", "--reason", "r"], "user roles": ["target", "--role", "technician", "--reason", "r"],
        "user unlock": ["target", "--reason", "r"], "user revoke": ["target"],
        "user password": ["target", "--password-file", str(tmp_path / "newpw")],
        "audit export": ["--from", today, "--to", today, "--out", str(tmp_path / "export")],
        "notice set": ["--line", "0", "--mode", "beep", "--reason", "점검"],
        "notice upload": [str(_short_wav(tmp_path))],
        "request new": ["--form", str(tmp_path / "form.json")], "request show": ["2026-0001"],
        "request search": ["2026-0001"], "request attach": ["2026-0001", "1"], "request submit": ["2026-0001"],
        "request approve": ["2026-0001", "--pin-file", str(tmp_path / "newpw")],
        "request reject": ["2026-0001", "--comment", "c"], "request export": ["2026-0001", "--to", str(tmp_path)],
        "request receipt": ["2026-0001", "--pdf", str(tmp_path / "r.pdf")],
        "request close": ["2026-0001", "--reason", "r"], "request destroyed": ["2026-0001", "--date", today],
        "ledger": ["--from", today, "--to", today, "--csv"],
    }.get(cmd, [])
    return [*cmd.split(), *extra]


def test_each_role_gets_exactly_its_cli_commands(box, tmp_path, capsys):
    data, _ = box
    cfg_path = tmp_path / "nokbox.toml"
    cfg_path.write_text("[auth]\nargon2_memory_kib = 19456\nargon2_time_cost = 2\nargon2_parallelism = 1\n")
    acc = make_people(data, fast_cfg())
    acc.create("target", "Hangang-bridge-at-night-777", ["technician"], by=acc.get("admin"))
    (tmp_path / "newpw").write_text("Hangang-bridge-at-night-888\n")
    from firmware.people.accounts import can

    for cmd, perm in CLI_PERMISSIONS.items():
        if perm in ("service", None):
            continue
        for role in ROLES:
            pwf = tmp_path / f"pw-{role}"
            pwf.write_text(PASSWORD[role] + "\n")
            argv = [*_cli_args(cmd, tmp_path), "--data", str(data), "--config", str(cfg_path), "--as", role,
                    "--as-password-file", str(pwf)]
            if cmd == "user add":
                argv[2] = f"newbie-{role}"
            before = len(_denials(data))
            rc = cli.main(argv)
            out = capsys.readouterr()
            if can(acc.get(role), perm):
                if cmd.split()[0] in ("request", "ledger"):
                    continue  # the workflow's commands run against a keeper in tests/test_release_cli.py
                assert rc == 0, (cmd, role, out.err)
            else:
                assert rc == EXIT_REFUSED, (cmd, role, rc, out.err)
                d = _denials(data)
                assert len(d) == before + 1 and d[-1]["actor"] == role and d[-1]["source"] == "cli"
                assert d[-1]["object"] == f"nokbox {cmd}", d[-1]


def test_cli_needs_root_and_a_sign_in(box, tmp_path, capsys, monkeypatch):
    data, _ = box
    make_people(data, fast_cfg())
    bad = tmp_path / "bad"
    bad.write_text("not-the-password-at-all\n")
    assert cli.main(["user", "list", "--data", str(data), "--as", "admin", "--as-password-file", str(bad)]) == 4
    assert "wrong name or password" in capsys.readouterr().err
    assert cli.main(["user", "list", "--data", str(data)]) == 4
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert cli.main(["user", "list", "--data", str(data), "--as", "admin"]) == 4
    assert "must be run as root" in capsys.readouterr().err


def test_every_cli_command_takes_data_and_config():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "cmd")
    for name, p in sub.choices.items():
        nested = [a for a in p._actions if a.dest in ("user_cmd", "audit_cmd", "notice_cmd", "keys_cmd", "retention_cmd",
                                                      "request_cmd")]
        leaves = nested[0].choices.items() if nested else [(name, p)]
        for leaf, q in leaves:
            assert "--data" in q._option_string_actions and "--config" in q._option_string_actions, (name, leaf)

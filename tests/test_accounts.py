"""Accounts: password policy, Argon2id, brute force and lockout across restarts, the approver's PIN,
sessions (idle sign-out, revocation), restriction and disabling with a logged reason."""

from __future__ import annotations

import sqlite3

import pytest

from firmware.people.accounts import (PERMISSIONS, ROLES, Accounts, AuthError, PasswordPolicyError, can, common_passwords,
                               password_problems, pin_problems)
from firmware.audit import AuditLog
from firmware.hal.clock import FakeClock

from .authutil import PASSWORD, fast_auth, make_people


def _actions(data, action):
    return [e for e in AuditLog(data).entries() if e["action"] == action]


def test_password_policy():
    assert len(common_passwords()) > 25000
    assert password_problems("Hangang-bridge-at-night-000") == []
    assert "at least 12" in password_problems("short1!")[0]
    for bad in ("password1234", "qwertyuiop12", "1q2w3e4r5t6y", "aaaaaaaaaaaaaa", "tkfkdgo12345"):
        assert any("common" in p for p in password_problems(bad)), bad
    assert any("account name" in p for p in password_problems("my-name-is-kimchulsoo-77", "kimchulsoo"))
    assert pin_problems("482915") == []
    for bad in ("1234", "123456", "000000", "987654", "12ab56"):
        assert pin_problems(bad), bad


def test_passwords_are_argon2id_and_never_stored_clear(tmp_path):
    acc = make_people(tmp_path)
    con = sqlite3.connect(tmp_path / "accounts.sqlite")
    hashes = [r[0] for r in con.execute("SELECT pw_hash FROM users")]
    con.close()
    assert all(h.startswith("$argon2id$v=19$m=19456,t=2,p=1$") for h in hashes)
    raw = (tmp_path / "accounts.sqlite").read_bytes()
    for pw in PASSWORD.values():
        assert pw.encode() not in raw
    with pytest.raises(PasswordPolicyError, match="common"):
        acc.create("kim", "iloveyou12345", ["officer"], by=acc.get("admin"))
    assert _actions(tmp_path, "user.create")[-1]["outcome"] == "refused"


def test_signin_lockout_holds_across_restarts_and_is_logged(tmp_path):
    clock = FakeClock(wall=1_800_000_000.0)
    make_people(tmp_path, clock=clock)
    acc = Accounts(tmp_path, fast_auth(), clock=clock)
    for _ in range(5):
        with pytest.raises(AuthError) as exc:
            acc.authenticate("officer", "not-the-password-at-all", source="198.51.100.9")
        assert exc.value.reason == "bad_credentials"
    # a restart: a new process opens the same data directory
    acc = Accounts(tmp_path, fast_auth(), clock=clock)
    with pytest.raises(AuthError) as exc:
        acc.authenticate("officer", PASSWORD["officer"], source="198.51.100.9")
    assert exc.value.reason == "locked"
    fails = [e for e in _actions(tmp_path, "auth.signin") if e["actor"] == "officer" and e["outcome"] != "ok"]
    assert [e["reason"] for e in fails] == ["wrong password"] * 5 + ["account locked"]
    assert all(e["source"] == "198.51.100.9" for e in fails)
    assert len(_actions(tmp_path, "auth.lockout")) == 1
    # the lock ends after lock_minutes; the next one lasts twice as long
    clock.advance(15 * 60 + 1)
    assert acc.authenticate("officer", PASSWORD["officer"]).name == "officer"
    for _ in range(5):
        with pytest.raises(AuthError):
            acc.authenticate("officer", "still-not-the-password")
    clock.advance(15 * 60 + 1)
    with pytest.raises(AuthError, match="locked"):
        Accounts(tmp_path, fast_auth(), clock=clock).authenticate("officer", PASSWORD["officer"])
    # an administrator may lift it (logged)
    acc.unlock("officer", "called the office", by=acc.get("admin"))
    assert acc.authenticate("officer", PASSWORD["officer"]).name == "officer"
    assert _actions(tmp_path, "user.unlock")[-1]["reason"] == "called the office"


def test_unknown_names_fail_like_wrong_passwords(tmp_path):
    acc = make_people(tmp_path)
    with pytest.raises(AuthError) as exc:
        acc.authenticate("nobody-here", "whatever-password-1")
    assert exc.value.reason == "bad_credentials"
    assert _actions(tmp_path, "auth.signin")[-1]["reason"] == "unknown account"


def test_accounts_hold_no_pin_of_their_own(tmp_path):
    """One PIN per approver: it lives in the key keeper's slot (tests/test_release.py), not here."""
    acc = make_people(tmp_path)
    assert not hasattr(acc, "set_pin") and not hasattr(acc, "check_pin")


def test_permission_table_and_separation_of_duties(tmp_path):
    acc = make_people(tmp_path)
    for role in ROLES:
        u = acc.get(role)
        for perm, allowed in PERMISSIONS.items():
            assert can(u, perm) == (role in allowed), (role, perm)
    # one person may hold several roles, but never approves or rejects their own request
    both = acc.create("kim", "Hangang-bridge-at-night-999", ["officer", "approver"], by=acc.get("admin"))
    assert can(both, "request.approve", request_owner="someone-else")
    assert not can(both, "request.approve", request_owner="kim")
    assert not can(both, "request.reject", request_owner="kim")
    with pytest.raises(AuthError):
        acc.authorize(both, "request.approve", obj="request 7", request_owner="kim")
    denied = _actions(tmp_path, "access.denied")[-1]
    assert (denied["actor"], denied["reason"], denied["object"]) == ("kim", "own request", "request 7")
    # the auditor changes nothing
    assert not any(can(acc.get("auditor"), p) for p in ("users.manage", "config.edit", "request.approve"))


def test_restrict_and_disable_with_reason(tmp_path):
    acc = make_people(tmp_path)
    admin = acc.get("admin")
    token, _ = acc.start_session(acc.get("officer"), "192.0.2.1")
    with pytest.raises(PasswordPolicyError, match="reason"):
        acc.set_state("officer", "restricted", " ", by=admin)
    u = acc.set_state("officer", "restricted", "seed 001 art. 9(3): private use", by=admin)
    assert u.state == "restricted" and not can(u, "request.search") and can(u, "status.view")
    assert acc.session(token) is None  # restriction ends the sessions
    e = _actions(tmp_path, "user.restrict")[-1]
    assert e["reason"] == "seed 001 art. 9(3): private use" and e["detail"] == {"old": "active", "new": "restricted", "ground": 4}
    acc.set_state("officer", "disabled", "left the office", by=admin)
    with pytest.raises(AuthError, match="disabled"):
        acc.authenticate("officer", PASSWORD["officer"])
    with pytest.raises(PasswordPolicyError):
        acc.set_state("admin", "disabled", "oops", by=admin)
    with pytest.raises(AuthError):
        acc.set_state("officer", "active", "sneaky", by=acc.get("technician"))
    assert _actions(tmp_path, "access.denied")[-1]["actor"] == "technician"


def test_sessions_idle_out_and_can_be_revoked(tmp_path):
    clock = FakeClock(wall=1_800_000_000.0)
    acc = make_people(tmp_path, clock=clock)
    officer = acc.get("officer")
    token, csrf = acc.start_session(officer, "192.0.2.1")
    assert acc.session(token)[0].name == "officer"
    clock.advance(14 * 60)
    assert acc.session(token, touch=False) is not None  # a poll does not count as use …
    clock.advance(2 * 60)
    assert acc.session(token) is None  # … so 16 min after the last use the session has ended
    assert _actions(tmp_path, "auth.signout")[-1]["reason"] == "idle"
    t2, _ = acc.start_session(officer, "192.0.2.1")
    assert acc.revoke_sessions("officer", by=acc.get("admin"), reason="lost laptop") == 1
    assert acc.session(t2) is None
    assert _actions(tmp_path, "auth.revoke")[-1]["reason"] == "lost laptop"
    # only a hash of the token is stored
    assert token.encode() not in (tmp_path / "accounts.sqlite").read_bytes()


def test_first_setup_only_once_and_key_shown_once(tmp_path):
    acc = Accounts(tmp_path, fast_auth())
    with pytest.raises(PasswordPolicyError):
        acc.setup_first("boss", PASSWORD["admin"], ["auditor"])
    user, key = acc.setup_first("boss", PASSWORD["admin"], ["admin", "auditor"])
    assert key.startswith("nokbox-audit-v2-") and user.roles == ("admin", "auditor")
    with pytest.raises(AuthError):
        acc.setup_first("mallory", PASSWORD["admin"], ["admin"])
    assert AuditLog(tmp_path).take_verification_key() is None


def test_the_last_administrators_lost_password_is_reset_by_root_at_the_console(tmp_path):
    """`nokbox user reset-admin`: no sign-in (the password is lost), root only, administrators only,
    and only when no other active administrator could do it; audited as root's; locks and sessions
    end; a recording stays as closed as before (a password opens none)."""
    from .authutil import FAST_AUTH, fast_cfg
    from .conftest import run_cli

    data = tmp_path / "data"
    data.mkdir()
    cfg = fast_cfg()
    conf = tmp_path / "nokbox.toml"
    conf.write_text("[auth]\n" + "".join(f"{k} = {v}\n" for k, v in FAST_AUTH.items()))
    acc = make_people(data, cfg)
    new = tmp_path / "new.txt"
    new.write_text("Sejong-daero-110-office\n")
    base = ["user", "reset-admin", "--data", str(data), "--config", str(conf), "--password-file", str(new)]
    r = run_cli(*base, "officer", "--reason", "lost")
    assert r.returncode != 0 and "not an administrator" in r.stderr, r.stderr  # not for other accounts
    acc.create("second", PASSWORD["admin"] + "x", ["admin"], by=acc.get("admin"))
    r = run_cli(*base, "admin", "--reason", "lost")
    assert r.returncode != 0 and "--as second" in r.stderr  # another administrator can do it
    acc.set_state("second", "disabled", "left the office", by=acc.get("admin"))
    for _ in range(cfg.auth.lock_after):  # the forgotten password, tried until locked
        with pytest.raises(AuthError):
            acc.authenticate("admin", "wrong password guess", source="192.0.2.9")
    r = run_cli(*base, "admin")
    assert r.returncode != 0  # --reason is required
    r = run_cli(*base, "admin", "--reason", "정보팀장 분실 신고 (2026-12-04)")
    assert r.returncode == 0, r.stderr
    assert acc.authenticate("admin", "Sejong-daero-110-office", source="console").name == "admin"
    e = [x for x in AuditLog(data).entries() if x["action"] == "user.password"][-1]
    assert e["actor"] == "root" and e["object"] == "admin" and "offline reset at the console" in e["reason"]
    assert "정보팀장 분실 신고" in e["reason"] and "Sejong" not in str(e)

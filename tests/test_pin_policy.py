"""Without a TPM, a new approver PIN needs 8 digits unless the configuration allows fewer (audited);
the PIN form says what a whole-box thief's offline search would cost."""

from __future__ import annotations

import subprocess

from firmware.audit import AuditLog
from firmware.recording.recorder import Recorder
from firmware.vault import sealing
from web import create_app

from .authutil import PASSWORD, fast_cfg, make_people
from .conftest import run_cli
from .test_roles import TC


def test_init_refuses_a_six_digit_pin_without_a_tpm_unless_allowed(tmp_path):
    pin, pf = tmp_path / "pin", tmp_path / "pass"
    pin.write_text("730154\n")
    r = run_cli("init", "--data", str(tmp_path / "a"), "--passphrase-file", str(pf), "--pin-file", str(pin),
                stdin=subprocess.DEVNULL)
    assert r.returncode != 0 and "8자리 이상" in r.stderr and "at least 8 digits" in r.stderr
    assert "6-digit PIN in about" in r.stderr and "vault.allow_short_pin" in r.stderr
    assert not (tmp_path / "a").exists() and not pf.exists()  # nothing created, not even the passphrase
    conf = tmp_path / "nokbox.toml"
    # the key file beside the data (a config naming none would put it in /etc/nokbox, outside the test)
    conf.write_text(f'[vault]\nallow_short_pin = true\npin_scrypt_log_n = 12\ndevice_key_file = "{tmp_path / "b.key"}"\n')
    r = run_cli("init", "--data", str(tmp_path / "b"), "--config", str(conf), "--passphrase-file", str(pf),
                "--pin-file", str(pin), stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    (e,) = [e for e in AuditLog(tmp_path / "b").entries() if e["action"] == "keys.pin.short"]
    assert e["object"] == "pin-slot:approver" and "allowed by vault.allow_short_pin" in e["reason"]


def test_the_offline_search_cost_is_measured_and_grows_tenfold_a_digit():
    assert sealing.scrypt_guess_s(12) > 0
    six, eight = sealing.offline_search_s(6, 12), sealing.offline_search_s(8, 12)
    assert abs(eight / six - 100) < 1e-6
    assert sealing.human_duration(3 * 86400) == "3.0일 · 3.0 days"
    assert sealing.pin_strength_problem("73015498", tpm=False, allow_short=False) == ""
    assert sealing.pin_strength_problem("730154", tpm=True, allow_short=False) == ""


def test_the_pin_form_shows_the_cost_and_keeps_the_rule(tmp_path):
    from firmware.people.accounts import role_check
    from firmware.vault.keeper import Keeper
    from firmware.vault.keys import init_data_dir

    data = tmp_path / "data"
    init_data_dir(data, tmp_path / "ident.txt", passphrase="correct-horse-battery-staple-42", recovery_log_n=10)
    cfg = fast_cfg({"vault": {"pin_scrypt_log_n": 12}})
    make_people(data, cfg)
    app = create_app(Recorder(cfg, data), keeper=Keeper(data, cfg, authorize=role_check(data)))
    tc = TC(app)
    tc.sign_in("approver", PASSWORD["approver"])
    page = tc.get("/account").data.decode()
    assert 'id="pin-cost"' in page and "6자리 · 6 digits" in page and 'minlength="8"' in page
    r = tc.post("/account/pin", {"pin": "730154", "password": PASSWORD["approver"]})
    assert r.status_code == 400 and "8자리 이상" in r.data.decode()
    r = tc.post("/account/pin", {"pin": "73015498", "pin2": "73015498", "password": PASSWORD["approver"],
                                 "via": "passphrase", "passphrase": "correct-horse-battery-staple-42"})
    assert r.status_code == 200 and "PIN이 설정되었습니다" in r.data.decode(), r.data.decode()[-800:]

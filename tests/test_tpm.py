"""The TPM backend (issue 17) against the real TPM 2.0 simulator (Debian swtpm), started here on a
socket: the device secret and each PIN slot's factor live in the TPM, and the TPM's own
dictionary-attack lockout counts wrong PINs where root cannot reset it."""

from __future__ import annotations

import base64
import json
import subprocess
import time

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from firmware.audit import AuditLog
from firmware.errors import DeviceError
from firmware.hal.devicekey import FileDeviceSecret, TpmDeviceSecret
from firmware.vault import sealing
from firmware.vault.keys import clear_lockout, device_for, init_data_dir, unlock_with_pin
from firmware.vault.sealing import PinGuard, PinRateLimited, WrongPin

from .authutil import fast_cfg
from .conftest import Swtpm, run_cli

PIN = "24681357"
PASSPHRASE = "correct-horse-battery-staple-42"


@pytest.fixture
def tpm(tmp_path):
    t = Swtpm(tmp_path / "tpm-a")
    yield t
    t.stop()


def _box(tmp_path, tpm, policy=(10, 600, 86400)):
    data = tmp_path / "data"
    ident = tmp_path / "records-identity.txt"
    device = TpmDeviceSecret(tmp_path / "sd-card" / "device.tpm", tpm.tcti)
    identity, _ = init_data_dir(data, ident, device, passphrase=PASSPHRASE, pin=PIN, approver="approver",
                                recovery_log_n=10, pin_log_n=10, tpm_policy=policy)
    cfg = fast_cfg({"vault": {"device_secret": "tpm", "tpm_tcti": tpm.tcti, "pin_backoff_s": 0.0,
                              "tpm_blob": str(device.path)}})
    return data, identity, device, cfg


def test_the_device_secret_and_the_pin_slot_live_in_the_tpm(tmp_path, tpm):
    data, identity, device, cfg = _box(tmp_path, tpm)
    blob = device.path.read_bytes()
    assert json.loads(blob)["format"] == "nokbox-tpm-sealed/1" and len(blob) > 100  # sealed, not the secret
    assert json.loads((data / "nokbox.json").read_text())["device"] == {
        "backend": "tpm", "path": str(device.path.resolve()), "tcti": tpm.tcti}
    assert device_for(data).read() == device.read()
    slot = json.loads(sealing.slot_path(data, "approver").read_text())
    assert "tpm" in slot  # the slot's TPM factor, sealed with a PIN-derived authorisation
    assert unlock_with_pin(data, cfg, "approver", PIN) == identity
    lockout = data / "keys" / "tpm-lockout.age"
    assert lockout.read_bytes().startswith(b"age-encryption.org/v1\n-> scrypt ")  # under the passphrase only
    da = device.tpm.da_status()
    assert da["max_tries"] == 10 and da["recovery_s"] == 600 and da["lockout_auth_set"] and da["counter"] == 0


def test_a_copy_of_the_sd_card_and_the_ssd_opens_nothing_in_another_tpm(tmp_path, tpm):
    data, identity, device, cfg = _box(tmp_path, tpm)
    other = Swtpm(tmp_path / "tpm-b")
    try:
        thief = TpmDeviceSecret(device.path, other.tcti)  # the same blob, another TPM
        with pytest.raises(DeviceError, match="another TPM"):
            thief.read()
        with pytest.raises(DeviceError, match="another TPM"):  # even with the right PIN
            PinGuard(data, thief, 0.0).attempt("approver", PIN)
    finally:
        other.stop()


def test_without_the_tpm_the_right_pin_does_not_open_the_slot_offline(tmp_path, tpm):
    """An attacker with the slot file and the device secret (read while the box ran) but not the TPM."""
    data, identity, device, cfg = _box(tmp_path, tpm)
    stolen = FileDeviceSecret(tmp_path / "stolen.key")
    stolen.path.write_bytes(device.read())
    slot = json.loads(sealing.slot_path(data, "approver").read_text())
    head = {k: slot[k] for k in ("format", "approver", "recipient", "kdf", "device", "tpm")}
    nonce, sealed = base64.b64decode(slot["nonce"]), base64.b64decode(slot["sealed"])
    for key in (sealing._pin_key(PIN, slot["kdf"], "approver", stolen),  # today's maths, no TPM factor
                sealing._pin_key(PIN, slot["kdf"], "approver", stolen, factor=bytes(32))):  # a guessed factor
        with pytest.raises(InvalidTag):
            ChaCha20Poly1305(key).decrypt(nonce, sealed, sealing._canon(head))


def test_the_tpm_locks_out_guessing_even_when_root_resets_the_software_counter(tmp_path, tpm):
    data, identity, device, cfg = _box(tmp_path, tpm, policy=(3, 2, 5))
    guard = PinGuard(data, device, 0.0)
    for left in (2, 1):
        with pytest.raises(WrongPin, match=f"the TPM counted it, {left} TPM tries left"):
            guard.attempt("approver", "13572468")
    with pytest.raises(WrongPin):
        guard.attempt("approver", "13572468")  # the third: the TPM is now in its lockout
    assert device.tpm.da_status()["in_lockout"]
    # root, who holds the device secret, deletes the counter file and writes a fresh valid one
    for p in (data / "keys" / "pin").glob("*.state"):
        p.unlink()
    with guard.locked_slot():
        guard.reset("approver", seq_floor=100)
    assert guard.load("approver")[0].failures == 0
    with pytest.raises(PinRateLimited, match="the TPM is locked against PIN guessing"):
        guard.attempt("approver", PIN)  # the right PIN, refused: the TPM's counter is not root's
    time.sleep(2.5)  # recovery_s: the TPM forgives one failure, so one try is allowed again
    assert guard.attempt("approver", PIN) == identity
    # a right PIN does not clear the TPM's counter (only time or the lockout authorisation does):
    # one more wrong one locks it again; the recovery passphrase lifts the TPM's lockout at once
    with pytest.raises(WrongPin, match="0 TPM tries left"):
        guard.attempt("approver", "13572468")
    with pytest.raises(PinRateLimited):
        guard.attempt("approver", PIN)
    clear_lockout(data, cfg, "approver", PASSPHRASE, actor="test")
    assert unlock_with_pin(data, cfg, "approver", PIN) == identity
    reasons = [(e["action"], e["outcome"], e["reason"]) for e in AuditLog(data).entries()]
    assert sum(1 for a, o, r in reasons if a == "keys.unlock" and "TPM dictionary-attack lockout" in r) == 2
    assert sum(1 for a, o, r in reasons if a == "keys.unlock" and "the TPM counted it" in r) == 4
    assert any(a == "keys.tpm.lockout-reset" for a, _, _ in reasons)


def test_cli_status_and_check_pin_through_the_tpm(tmp_path, tpm):
    data, identity, device, cfg = _box(tmp_path, tpm)
    conf = tmp_path / "nokbox.toml"
    conf.write_text(f'[vault]\ndevice_secret = "tpm"\ntpm_tcti = "{tpm.tcti}"\ntpm_blob = "{device.path}"\n'
                    "pin_backoff_s = 0.0\n")
    good, bad = tmp_path / "pin", tmp_path / "bad"
    good.write_text(PIN + "\n")
    bad.write_text("13572468\n")
    common = ["--data", str(data), "--config", str(conf)]
    r = run_cli("keys", "check-pin", *common, "--approver", "approver", "--pin-file", str(bad))
    assert r.returncode != 0 and "wrong PIN" in r.stderr and "TPM" in r.stderr
    r = run_cli("keys", "check-pin", *common, "--approver", "approver", "--pin-file", str(good))
    assert r.returncode == 0, r.stderr
    r = run_cli("keys", "status", *common, "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["device"]["backend"] == "tpm" and st["tpm"]["max_tries"] == 10
    (slot,) = st["pin_slots"]
    assert slot["tpm_factor"] is True and slot["tpm_tries_left"] == 9 and slot["tpm_locked_out"] is False


def test_an_existing_box_moves_its_secret_into_the_tpm(tmp_path, tpm):
    """`nokbox keys move-to-tpm`: the same secret (masked numbers still open), the old key file erased,
    a PIN slot that gets its TPM factor at its next right PIN, and from then on the TPM counts."""
    from firmware.vault.personal import BoxSealer

    data = tmp_path / "data"
    ident = tmp_path / "records-identity.txt"
    identity, _ = init_data_dir(data, ident, passphrase=PASSPHRASE, pin=PIN, approver="approver",
                                recovery_log_n=10, pin_log_n=10)
    old = device_for(data)
    masked = BoxSealer(old).seal("010-****-5678")
    conf = tmp_path / "nokbox.toml"
    conf.write_text(f'[vault]\ntpm_tcti = "{tpm.tcti}"\ntpm_blob = "{tmp_path / "sd" / "device.tpm"}"\n'
                    "pin_backoff_s = 0.0\n")
    pw = tmp_path / "pass"
    pw.write_text(PASSPHRASE + "\n")
    r = run_cli("keys", "move-to-tpm", "--data", str(data), "--config", str(conf), "--passphrase-file", str(pw))
    assert r.returncode == 0, r.stderr
    assert "PIN slot 'approver': gets its TPM factor at its next right PIN" in r.stdout
    assert not old.path.exists()
    new = device_for(data)
    assert isinstance(new, TpmDeviceSecret) and BoxSealer(new).open(masked) == "010-****-5678"
    assert "tpm" not in json.loads(sealing.slot_path(data, "approver").read_text())
    cfg = fast_cfg({"vault": {"tpm_tcti": tpm.tcti, "pin_backoff_s": 0.0}})  # config still says 'file'
    assert unlock_with_pin(data, cfg, "approver", PIN) == identity
    assert "tpm" in json.loads(sealing.slot_path(data, "approver").read_text())  # upgraded by the right PIN
    with pytest.raises(WrongPin, match="the TPM counted it, 9 TPM tries left"):
        unlock_with_pin(data, cfg, "approver", "13572468")
    acts = [e["action"] for e in AuditLog(data).entries()]
    assert "keys.device.move-to-tpm" in acts and "keys.pin.tpm-factor" in acts
    r = run_cli("keys", "move-to-tpm", "--data", str(data), "--config", str(conf), "--passphrase-file", str(pw))
    assert r.returncode != 0 and "already sealed in the TPM" in r.stderr


def test_init_on_a_tpm_box_takes_a_six_digit_pin(tmp_path, tpm):
    """The TPM's lockout bounds a search, so the 8-digit rule of boxes without one does not apply."""
    conf = tmp_path / "nokbox.toml"
    conf.write_text(f'[vault]\ndevice_secret = "tpm"\ntpm_tcti = "{tpm.tcti}"\ntpm_blob = "{tmp_path / "sd" / "d.tpm"}"\n'
                    "pin_scrypt_log_n = 12\n")
    pin = tmp_path / "pin"
    pin.write_text("730154\n")
    r = run_cli("init", "--data", str(tmp_path / "data"), "--config", str(conf), "--passphrase-file",
                str(tmp_path / "pass"), "--pin-file", str(pin), stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert device_for(tmp_path / "data").name == "tpm"
    assert not [e for e in AuditLog(tmp_path / "data").entries() if e["action"] == "keys.pin.short"]

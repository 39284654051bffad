"""Who can read: the recovery passphrase (stock age), approver PINs bound to the device secret,
the persistent wrong-PIN lockout and its tamper detection, identity export. Real files,
real SQLite, the stock age CLI, fresh processes for persistence."""

from __future__ import annotations

import base64
import io
import json
import os
import select
import shutil
import stat
import subprocess

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from firmware.vault.age import AgeWriter, recipient_of
from firmware.audit import AuditLog
from firmware.config import parse_config
from firmware.hal.devicekey import FileDeviceSecret
from firmware.vault.keys import (add_pin, clear_lockout, export_identity, init_data_dir, load_recipients,
                           unlock_with_passphrase, unlock_with_pin)
from firmware.vault.sealing import (DeviceMismatch, NoPinSlot, PinLockedOut, PinRateLimited, WrongPassphrase, WrongPin,
                              _canon, _pin_key, generate_passphrase, open_recovery, open_with_passphrase,
                              seal_with_passphrase)
from firmware.errors import VaultError

from .conftest import age_decrypt, run_cli

PASS = "K7Q2M-9XWZD-4RTHB-NP0VC"
PIN = "48291357"


def make_box(tmp_path, name="data", backoff=2.0):
    """A box with a recovery passphrase and an approver PIN; returns (data, cfg, files)."""
    data = tmp_path / name
    key = tmp_path / f"{name}-dev.key"
    cfg = parse_config({"vault": {"device_key_file": str(key), "pin_backoff_s": backoff, "pin_scrypt_log_n": 10}})
    init_data_dir(data, device=FileDeviceSecret(key), passphrase=PASS, pin=PIN, recovery_log_n=10, pin_log_n=10)
    files = {}
    for what, value in (("pass", PASS), ("pin", PIN), ("badpin", "99911173")):
        p = tmp_path / f"{name}-{what}.txt"
        p.write_text(value + "\n")
        files[what] = p
    conf = tmp_path / f"{name}.toml"
    conf.write_text(f'[vault]\ndevice_key_file = "{key}"\npin_backoff_s = {backoff}\npin_scrypt_log_n = 10\n')
    files["config"] = conf
    return data, cfg, files


def audit_actions(data):
    return [(e["action"], e["outcome"], e["reason"]) for e in AuditLog(data).entries()]


def age_with_passphrase(args: list[str], passphrase: str) -> tuple[int, bytes]:
    """Run the stock age CLI on a pseudo-terminal (it reads passphrases only from a terminal).

    ``setsid --ctty`` makes the pty the child's controlling terminal, so no fork() happens in
    this (multi-threaded) test process.
    """
    master, slave = os.openpty()
    proc = subprocess.Popen([shutil.which("setsid"), "--wait", "--ctty", shutil.which("age"), *args],
                            stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    out, sent = b"", False
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(master, 1024)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if not sent and b"passphrase" in out.lower():
                os.write(master, passphrase.encode() + b"\n")
                sent = True
    finally:
        code = proc.wait(30)
        os.close(master)
    return code, out


def record_call(data, payload: bytes, name="call.age"):
    """What the writer does: an age file to the recipients load_recipients() gives."""
    path = data / "calls" / name
    with open(path, "wb") as f:
        w = AgeWriter(f, load_recipients(data))
        w.write(payload)
        w.close()
    return path


# -- the recovery passphrase ------------------------------------------------------------
def test_passphrase_seal_round_trip_and_generated_strength():
    blob = seal_with_passphrase(b"secret identity", PASS, log_n=10)
    assert open_with_passphrase(blob, PASS) == b"secret identity"
    with pytest.raises(WrongPassphrase):
        open_with_passphrase(blob, PASS.replace("K", "X"))
    p = generate_passphrase()
    assert len(p.replace("-", "")) * 5 >= 80 and p != generate_passphrase()


def test_stock_age_opens_the_recovery_file_with_the_passphrase(tmp_path, age_tool):
    data, cfg, f = make_box(tmp_path)
    out = tmp_path / "recovered.txt"
    code, tty = age_with_passphrase(["-d", "-o", str(out), str(data / "keys" / "identity.recovery.age")], PASS)
    assert code == 0, tty
    identity = [ln for ln in out.read_text().splitlines() if ln.startswith("AGE-SECRET-KEY-1")][0]
    assert recipient_of(identity) == (data / "keys" / "recipient.txt").read_text().strip()
    # the recovered identity opens the epoch key with stock age, and that opens a call
    epoch_id = tmp_path / "epoch.txt"
    epoch_id.write_bytes(age_decrypt(age_tool, out, data / "keys" / "epochs" / "000001.age"))
    call = record_call(data, b"hello from line 1")
    assert age_decrypt(age_tool, epoch_id, call) == b"hello from line 1"
    # and a wrong passphrase is refused by stock age too
    code, tty = age_with_passphrase(["-d", "-o", str(tmp_path / "x"), str(data / "keys" / "identity.recovery.age")],
                                    "WRONG-WRONG-WRONG-WRONG")
    assert code != 0 and b"incorrect passphrase" in tty


def test_nothing_secret_is_stored_in_clear(tmp_path):
    data, cfg, f = make_box(tmp_path)
    identity = unlock_with_passphrase(data, PASS)
    epoch = export_identity(data, PASS, None).splitlines()[-2]
    for p in data.rglob("*"):
        if p.is_file():
            blob = p.read_bytes()
            for secret in (identity, epoch, PASS, PIN, identity.lower(), epoch.lower()):
                assert secret.encode() not in blob, (p, secret[:12])
    mode = stat.S_IMODE((data / "keys" / "identity.recovery.age").stat().st_mode)
    assert mode == 0o600


# -- PINs -------------------------------------------------------------------------------
def test_pin_round_trip_and_a_second_approver(tmp_path):
    data, cfg, f = make_box(tmp_path)
    identity = unlock_with_pin(data, cfg, "approver", PIN)
    assert identity == unlock_with_passphrase(data, PASS)
    with pytest.raises(NoPinSlot):
        unlock_with_pin(data, cfg, "김과장", "135790")
    r = run_cli("keys", "add-pin", "--data", str(data), "--config", str(f["config"]), "--approver", "김과장",
                "--passphrase-file", str(f["pass"]), "--pin-file", str(f["badpin"]))
    assert r.returncode == 0, r.stderr
    assert unlock_with_pin(data, cfg, "김과장", "99911173") == identity
    with pytest.raises(VaultError):  # a wrong passphrase cannot add a PIN
        add_pin(data, cfg, "mallory", PASS[::-1], "246802")
    actions = audit_actions(data)
    assert ("keys.pin.add", "ok", "new approver PIN") in actions
    assert sum(1 for a in actions if a[0] == "keys.unlock" and a[1] == "ok") >= 3
    assert AuditLog(data).verify()[0] == len(actions)


def test_the_ssd_alone_gives_no_pin_oracle(tmp_path):
    """A thief with the SSD but not the device secret cannot test PINs: even the right PIN fails."""
    data, cfg, f = make_box(tmp_path)
    stolen = tmp_path / "stolen"
    shutil.copytree(data, stolen)
    thief_key = tmp_path / "thief.key"
    thief = FileDeviceSecret(thief_key)
    thief.provision()
    thief_cfg = parse_config({"vault": {"device_key_file": str(thief_key), "pin_backoff_s": 0}})
    with pytest.raises(DeviceMismatch):
        unlock_with_pin(stolen, thief_cfg, "approver", PIN)
    # the thief can skip our counter and run the slot's maths directly: even the right PIN fails
    slot = json.loads(next((stolen / "keys" / "pin").glob("*.slot")).read_text())
    head = {k: slot[k] for k in ("format", "approver", "recipient", "kdf", "device")}

    def try_pin(pin, device):
        key = _pin_key(pin, slot["kdf"], "approver", device)
        return ChaCha20Poly1305(key).decrypt(base64.b64decode(slot["nonce"]), base64.b64decode(slot["sealed"]),
                                             _canon(head))

    with pytest.raises(InvalidTag):
        try_pin(PIN, thief)
    assert try_pin(PIN, FileDeviceSecret(tmp_path / "data-dev.key")).startswith(b"AGE-SECRET-KEY-1")
    # on the real box the same PIN opens it through the API
    assert unlock_with_pin(data, cfg, "approver", PIN)


def test_wrong_pins_wait_longer_each_time(tmp_path):
    data, cfg, f = make_box(tmp_path, backoff=2.0)
    t = 1_800_000_000.0
    with pytest.raises(WrongPin) as e:
        unlock_with_pin(data, cfg, "approver", "111222", now=t)
    assert e.value.tries_left == 4
    with pytest.raises(PinRateLimited) as e:
        unlock_with_pin(data, cfg, "approver", PIN, now=t + 1)  # too soon: not counted, not tried
    first_wait = e.value.retry_after
    with pytest.raises(WrongPin) as e:
        unlock_with_pin(data, cfg, "approver", "111222", now=t + 2)
    assert e.value.tries_left == 3  # the rate-limited try did not count
    with pytest.raises(PinRateLimited) as e:
        unlock_with_pin(data, cfg, "approver", PIN, now=t + 2.5)
    assert e.value.retry_after > first_wait  # 4 s after the second wrong PIN vs 2 s after the first
    assert unlock_with_pin(data, cfg, "approver", PIN, now=t + 10)
    with pytest.raises(WrongPin) as e:  # a success resets the count
        unlock_with_pin(data, cfg, "approver", "111222", now=t + 20)
    assert e.value.tries_left == 4


def test_five_wrong_pins_lock_persistently_until_the_passphrase(tmp_path):
    data, cfg, f = make_box(tmp_path, backoff=0.0)
    for i in range(4):
        with pytest.raises(WrongPin):
            unlock_with_pin(data, cfg, "approver", f"11122{i}")
    with pytest.raises(PinLockedOut):
        unlock_with_pin(data, cfg, "approver", "111229")
    with pytest.raises(PinLockedOut):  # even the right PIN
        unlock_with_pin(data, cfg, "approver", PIN)
    # a new process (a restart) sees the same lockout
    r = run_cli("keys", "check-pin", "--data", str(data), "--config", str(f["config"]), "--pin-file", str(f["pin"]))
    assert r.returncode != 0 and "locked" in r.stderr
    r = run_cli("keys", "status", "--data", str(data), "--config", str(f["config"]), "--json")
    assert json.loads(r.stdout)["pin_slots"][0]["locked"] is True
    # a wrong passphrase does not lift it; the right one does, and both are audited
    bad = tmp_path / "badpass.txt"
    bad.write_text("NOT-THE-RECOVERY-PASSPHRASE\n")
    r = run_cli("keys", "unlock", "--data", str(data), "--config", str(f["config"]), "--passphrase-file", str(bad))
    assert r.returncode != 0 and "wrong recovery passphrase" in r.stderr
    r = run_cli("keys", "unlock", "--data", str(data), "--config", str(f["config"]),
                "--passphrase-file", str(f["pass"]))
    assert r.returncode == 0, r.stderr
    r = run_cli("keys", "check-pin", "--data", str(data), "--config", str(f["config"]), "--pin-file", str(f["pin"]))
    assert r.returncode == 0, r.stderr
    actions = audit_actions(data)
    assert actions.count(("keys.pin.lockout", "locked", "5 wrong PINs")) == 1
    assert [a[2] for a in actions if a[0] == "keys.unlock" and a[1] == "denied"][:5] == [
        f"wrong PIN ({n} of 5)" for n in range(1, 6)]
    assert ("keys.unlock", "denied", "wrong recovery passphrase") in actions
    assert ("keys.pin.unlock-lockout", "ok", "recovery passphrase given") in actions
    assert actions[-1][:2] == ("keys.unlock", "ok")
    assert AuditLog(data).verify()[0] == len(actions)


@pytest.mark.parametrize("tamper", ["delete", "edit", "rollback"])
def test_tampering_with_the_counter_locks_instead_of_resetting(tmp_path, tamper):
    data, cfg, f = make_box(tmp_path, backoff=0.0)
    state = next((data / "keys" / "pin").glob("*.state"))
    old = state.read_bytes()
    for _ in range(3):
        with pytest.raises(WrongPin):
            unlock_with_pin(data, cfg, "approver", "111333")
    if tamper == "delete":
        state.unlink()
    elif tamper == "edit":
        s = json.loads(state.read_text())
        s["failures"] = 0
        state.write_text(json.dumps(s))
    else:
        state.write_bytes(old)  # a valid, MACed, older copy
    with pytest.raises(PinLockedOut):
        unlock_with_pin(data, cfg, "approver", PIN)
    reasons = [a[2] for a in audit_actions(data) if a[0] == "keys.pin.lockout"]
    assert reasons and {"delete": "deleted", "edit": "edited", "rollback": "older copy"}[tamper] in reasons[0]
    clear_lockout(data, cfg, "approver", PASS)
    assert unlock_with_pin(data, cfg, "approver", PIN)


# -- export -----------------------------------------------------------------------------
def test_export_identity_reads_calls_with_stock_age(tmp_path, age_tool):
    data, cfg, f = make_box(tmp_path)
    call = record_call(data, b"x" * 70000)
    out = tmp_path / "safe" / "identity.txt"
    out.parent.mkdir()
    r = run_cli("keys", "export-identity", "--data", str(data), "--passphrase-file", str(f["pass"]),
                "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "AGE-SECRET-KEY" not in r.stdout + r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert age_decrypt(age_tool, out, call) == b"x" * 70000
    # refused: inside the data directory, over an existing file, with a wrong passphrase
    r = run_cli("keys", "export-identity", "--data", str(data), "--passphrase-file", str(f["pass"]),
                "--out", str(data / "id.txt"))
    assert r.returncode != 0 and "inside the data directory" in r.stderr and not (data / "id.txt").exists()
    r = run_cli("keys", "export-identity", "--data", str(data), "--passphrase-file", str(f["pass"]), "--out", str(out))
    assert r.returncode != 0 and "exists" in r.stderr
    r = run_cli("keys", "export-identity", "--data", str(data), "--passphrase-file", str(f["pin"]))
    assert r.returncode != 0 and r.stdout == ""
    actions = audit_actions(data)
    assert [a[0] for a in actions].count("keys.export-identity") == 1
    assert ("keys.unlock", "denied", "wrong recovery passphrase") in actions


def test_no_secret_on_a_pipe_without_a_file(tmp_path):
    data, cfg, f = make_box(tmp_path)
    r = run_cli("keys", "export-identity", "--data", str(data), stdin=subprocess.DEVNULL)
    assert r.returncode != 0 and "--passphrase-file" in r.stderr


# -- init from the command line ---------------------------------------------------------
def test_init_generates_the_passphrase_file_or_uses_the_existing_one(tmp_path):
    pin = tmp_path / "pin.txt"
    pin.write_text("73015498\n")
    pf = tmp_path / "safe-pass.txt"
    r = run_cli("init", "--data", str(tmp_path / "a"), "--passphrase-file", str(pf), "--pin-file", str(pin),
                stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(pf.stat().st_mode) == 0o600
    generated = pf.read_text().strip()
    assert generated not in r.stdout and "written to" in r.stdout
    assert open_recovery(tmp_path / "a", generated)
    r = run_cli("init", "--data", str(tmp_path / "b"), "--passphrase-file", str(pf), "--pin-file", str(pin),
                stdin=subprocess.DEVNULL)
    assert r.returncode == 0 and "taken from" in r.stdout
    assert open_recovery(tmp_path / "b", generated)
    help_text = " ".join(run_cli("init", "--help").stdout.split())
    assert "does not exist" in help_text and "exists" in help_text
    # a guessable PIN is refused before anything is created
    pin.write_text("123456\n")
    r = run_cli("init", "--data", str(tmp_path / "c"), "--passphrase-file", str(pf), "--pin-file", str(pin))
    assert r.returncode != 0 and "too easy" in r.stderr and not (tmp_path / "c").exists()


def test_recipient_list_is_the_current_epoch_not_the_records_key(tmp_path):
    data, cfg, f = make_box(tmp_path)
    identity = unlock_with_passphrase(data, PASS)
    recips = load_recipients(data)
    assert len(recips) == 1
    from firmware.vault.age import parse_recipient

    assert recips[0] != parse_recipient(recipient_of(identity))
    buf = io.BytesIO()
    AgeWriter(buf, recips).close()


def _testkit_dir():
    from .conftest import ROOT

    for d in (ROOT / "tests" / "vectors" / "age-testkit", ROOT / "tests" / "age-testkit",
              ROOT.parent / "shared" / "vectors" / "age-testkit"):
        if d.is_dir():
            return d
    return None


def test_the_passphrase_reader_passes_the_age_testkit_scrypt_vectors():
    """Our small reader for sealed files against every scrypt vector of the C2SP age testkit."""
    import hashlib

    d = _testkit_dir()
    if d is None:
        pytest.skip("age testkit vectors not found")
    names = sorted(p for p in d.glob("scrypt*"))
    assert names
    for p in names:
        head, _, body = p.read_bytes().partition(b"\n\n")
        meta = dict(ln.split(": ", 1) for ln in head.decode().splitlines())
        if meta["expect"] == "success":
            out = open_with_passphrase(body, meta["passphrase"])
            assert hashlib.sha256(out).hexdigest() == meta["payload"], p.name
        else:
            with pytest.raises(VaultError):
                open_with_passphrase(body, meta.get("passphrase", ""))

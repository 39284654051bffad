"""The first-run wizard (web/wizard.py): on a fresh data directory every page leads to the current
step; the steps come in order (administrator, records key with its recovery passphrase typed
back, first approver's PIN, audit verification key); secrets are shown once and never written
under DATA by the page; only the box itself is served. The keeper's init verbs over its socket,
./run.sh's scripted default, and one run through real `nokbox run` processes in Chromium with a
screenshot of every step (build/screenshots/wizard/)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firmware.audit import AuditLog
from firmware.ipc import IpcError
from firmware.people.accounts import role_check
from firmware.recording.service import RecorderClient
from firmware.vault.keeper import Keeper, KeeperClient, KeeperService, canonical_passphrase, passphrase_key
from firmware.vault.keys import MARKER
from web import create_app

from .authutil import PASSWORD, fast_cfg
from .conftest import ROOT, decrypt_audio, run_cli
from .test_roles import TC, _url
from .test_web import browser  # noqa: F401 - the fixture

SHOTS = ROOT / "build" / "screenshots" / "wizard"
APIN = "31415926"


def _fresh(tmp_path, **extra):
    data = tmp_path / "data"
    data.mkdir(mode=0o750)
    cfg = fast_cfg({"audio": {"channels": 1}, "vault": {"pin_scrypt_log_n": 10, "pin_backoff_s": 0.0}, **extra})
    keeper = Keeper(data, cfg, authorize=role_check(data))
    app = create_app(RecorderClient(data, cfg, actor="page"), data_dir=data, cfg=cfg, keeper=keeper)
    return data, cfg, keeper, app


def _admin(tc):
    tc.get("/setup")
    return tc.post("/setup", {"name": "boss", "display": "정보팀 김", "password": PASSWORD["admin"],
                              "password2": PASSWORD["admin"]})


def _shown(r, what="passphrase"):
    m = re.search(rf'id="{what}">([^<]+)<'.encode(), r.data)
    return m.group(1).decode() if m else None


def _files_holding(root: Path, needles: list[bytes]) -> list[str]:
    out = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            blob = p.read_bytes()
            if any(n in blob for n in needles):
                out.append(str(p))
    return out


def _gets(app):
    for rule in app.url_map.iter_rules():
        if "GET" in rule.methods and rule.endpoint != "static":
            yield rule


# -- the gate ---------------------------------------------------------------------------------------
def test_a_fresh_box_leads_every_route_to_the_current_step(tmp_path):
    data, _, _, app = _fresh(tmp_path)
    tc = TC(app, addr="127.0.0.1")
    n = 0
    for rule in _gets(app):
        r = tc.get(_url(rule))
        if rule.endpoint == "auth.setup":
            assert r.status_code == 200
        elif rule.rule.startswith("/api/"):
            assert r.status_code == 503, rule.rule
        else:
            assert r.status_code == 302 and r.headers["Location"].endswith("/setup"), (rule.rule, r.status_code)
        n += 1
    assert n >= 20
    assert tc.post("/users/target/state", {"state": "disabled"}).status_code in (302, 400)  # never served
    assert _admin(tc).headers["Location"].endswith("/setup/keys")
    for rule in _gets(app):
        if rule.endpoint.startswith("wizard.") or rule.endpoint in ("auth.login", "auth.setup") or \
                rule.rule.startswith("/api/"):
            continue
        r = tc.get(_url(rule))
        assert r.status_code == 302 and r.headers["Location"].endswith("/setup/keys"), (rule.rule, r.status_code)
    assert tc.get("/setup").headers["Location"].endswith("/setup/keys")  # the account step is over
    # a signed-out visitor signs in, then is led on to the step too
    other = TC(app, addr="127.0.0.1")
    r = other.get("/")
    assert r.headers["Location"].endswith("/setup/keys")
    assert "/login" in other.get("/setup/keys").headers["Location"]
    assert other.sign_in("boss", PASSWORD["admin"]).status_code == 302
    assert other.get("/calls").headers["Location"].endswith("/setup/keys")


def test_the_wizard_is_served_to_the_box_itself_only(tmp_path):
    data, _, _, app = _fresh(tmp_path)
    lan = TC(app, addr="192.0.2.50")
    r = lan.get("/setup")
    assert r.status_code == 403 and "장치 자체".encode() in r.data and b"127.0.0.1" in r.data
    assert lan.post("/setup", {"name": "evil", "password": PASSWORD["admin"], "password2": PASSWORD["admin"]}
                    ).status_code in (400, 403)  # refused for its missing CSRF token before the address
    assert app.extensions["nokbox"].accounts.count() == 0
    _admin(TC(app, addr="127.0.0.1"))
    assert lan.sign_in("boss", PASSWORD["admin"]).status_code == 302
    r = lan.get("/setup/keys")
    assert r.status_code == 403 and "ssh -L".encode() in r.data
    assert lan.post("/setup/keys", {"action": "begin"}).status_code == 403
    refused = [e for e in AuditLog(data).entries() if e["action"] == "setup.refused"]
    assert len(refused) >= 3 and all(e["source"] == "192.0.2.50" for e in refused)
    assert not (data / MARKER).exists()


# -- the steps, in order ------------------------------------------------------------------------
def test_the_steps_in_order_with_secrets_shown_once_and_never_on_disk(tmp_path, age_tool):
    data, cfg, keeper, app = _fresh(tmp_path)
    tc = TC(app, addr="127.0.0.1")
    _admin(tc)
    assert AuditLog(data).verification_key_pending()  # the key waits for the last step
    # the records key: shown once
    r = tc.get("/setup/keys")
    assert r.status_code == 200 and b'id="begin"' in r.data
    assert tc.get("/setup/pin").headers["Location"].endswith("/setup/keys")  # no skipping ahead
    assert tc.get("/setup/audit-key").headers["Location"].endswith("/setup/keys")
    r = tc.post("/setup/keys", {"action": "begin"})
    first = _shown(r)
    assert re.fullmatch(r"[0-9A-Z]{5}(-[0-9A-Z]{5}){3}", first) and r.headers["Cache-Control"] == "no-store"
    r = tc.get("/setup/keys")  # a reload: the passphrase is not shown again
    assert first.encode() not in r.data and b'id="typed"' in r.data
    assert tc.post("/setup/keys", {"action": "begin"}).status_code == 409  # not twice either
    # lost before confirming: start again, nothing was written; the old one no longer counts
    r = tc.post("/setup/keys", {"action": "restart"})
    passphrase = _shown(r)
    assert passphrase and passphrase != first
    pdf = tc.get("/setup/sheet.pdf")
    assert pdf.status_code == 200 and pdf.headers["Content-Type"] == "application/pdf"
    assert pdf.headers["Cache-Control"] == "no-store" and pdf.data.startswith(b"%PDF-")
    assert tc.get("/setup/sheet.pdf").status_code == 410  # the sheet opens once
    text = _pdf_text(pdf.data, tmp_path)
    assert passphrase in text and "복구 암호" in text
    for wrong in (first, passphrase[:-1] + ("0" if passphrase[-1] != "0" else "1"), "x"):
        r = tc.post("/setup/keys", {"action": "confirm", "typed": wrong})
        assert r.status_code == 400 and "다릅니다".encode() in r.data, wrong
        assert not (data / MARKER).exists() and not (data / "keys").exists()  # nothing written
    secrets = [passphrase.encode(), passphrase.replace("-", "").encode(), passphrase.lower().encode(), first.encode()]
    assert _files_holding(tmp_path, secrets) == []
    # typed back as a person types it: lower case, spaces for dashes
    r = tc.post("/setup/keys", {"action": "confirm", "typed": " " + passphrase.lower().replace("-", " ") + " "})
    assert r.status_code == 302 and r.headers["Location"].endswith("/setup/pin")
    assert (data / MARKER).exists() and (data / "keys" / "identity.recovery.age").exists()
    assert [e["outcome"] for e in AuditLog(data).entries() if e["action"] == "keys.init"] == ["refused"] * 3 + ["ok"]
    assert tc.get("/setup/keys").headers["Location"].endswith("/setup/pin")
    # the first approver: a new account and its PIN, sealed by the keeper with the passphrase
    r = tc.get("/setup/pin")
    assert r.status_code == 200 and tc.get("/").headers["Location"].endswith("/setup/pin")
    form = {"name": "kim", "display": "김 팀장", "password": PASSWORD["approver"], "password2": PASSWORD["approver"],
            "pin": APIN, "pin2": APIN, "passphrase": passphrase}
    r = tc.post("/setup/pin", form | {"pin": "12345678", "pin2": "12345678"})
    assert r.status_code == 400 and "kim".encode() in r.data  # a run of digits; the name is kept
    assert tc.post("/setup/pin", form | {"pin2": "27182818"}).status_code == 400
    r = tc.post("/setup/pin", form | {"passphrase": first})
    assert r.status_code == 400 and "복구 암호가 틀렸습니다".encode() in r.data
    r = tc.post("/setup/pin", form | {"passphrase": passphrase.lower().replace("-", "")})  # the account exists now
    assert r.status_code == 302 and r.headers["Location"].endswith("/setup/audit-key"), r.data
    assert keeper.pin_check("kim", APIN) == {"ok": True}
    assert app.extensions["nokbox"].accounts.get("kim").roles == ("approver",)
    # the audit verification key: shown once
    assert tc.get("/").headers["Location"].endswith("/setup/audit-key")
    r = tc.get("/setup/audit-key")
    assert r.status_code == 200 and b'id="verification-key"' not in r.data
    r = tc.post("/setup/audit-key", {})
    key = _shown(r, "verification-key")
    assert key and key.startswith("nokbox-audit-") and AuditLog(data).verify_report(key=key).macs_checked
    sheet = tc.get("/setup/sheet.pdf")
    assert sheet.status_code == 200 and key.split("-")[-1] in _pdf_text(sheet.data, tmp_path).replace("\n", "")
    assert not AuditLog(data).verification_key_pending()
    r = tc.get("/setup/audit-key")  # a second view: over, and the key is not shown
    assert r.status_code == 302 and key.encode() not in r.data
    assert key.encode() not in tc.post("/setup/audit-key", {}).data
    assert r.headers["Location"].endswith(("/lines", "/"))
    assert tc.get("/account").status_code == 200  # the page is open now
    assert _files_holding(data, secrets + [key.encode(), b"%PDF-"]) == []
    # the key made by the wizard: a recording decrypts with the identity the recovery passphrase opens
    pf = tmp_path / "passphrase.txt"
    pf.write_text(passphrase + "\n")
    ids = tmp_path / "ids.txt"
    r = run_cli("keys", "export-identity", "--data", str(data), "--passphrase-file", str(pf), "--out", str(ids))
    assert r.returncode == 0, r.stderr
    call = _record_one_call(data, cfg)
    audio, rate = decrypt_audio(age_tool, ids, data / call["file"])
    assert rate == 8000 and len(audio) > rate


def _pdf_text(pdf: bytes, tmp_path: Path) -> str:
    path = tmp_path / "sheet-under-test.pdf"
    path.write_bytes(pdf)
    try:
        return subprocess.run(["pdftotext", "-layout", str(path), "-"], capture_output=True, text=True,
                              check=True).stdout
    finally:
        path.unlink()


def _record_one_call(data: Path, cfg) -> dict:
    from firmware.hal.audio import ArraySource
    from firmware.index import CallIndex
    from firmware.recording.recorder import Recorder

    from .conftest import place_calls

    audio, _ = place_calls(8000, 40.0, [[(3.0, 8.0)]])
    rec = Recorder(cfg, data, source=ArraySource(audio, 8000, 160))
    rec.start()
    assert rec.wait(60)
    idx = CallIndex(data / "index.sqlite")
    calls = [dict(c) for c in idx.calls()]
    idx.close()
    assert len(calls) == 1 and calls[0]["state"] == "finished"
    return calls[0]


def test_an_existing_approver_sets_the_pin_with_their_password(tmp_path):
    data, cfg, keeper, app = _fresh(tmp_path)
    tc = TC(app, addr="127.0.0.1")
    tc.get("/setup")
    tc.post("/setup", {"name": "boss", "password": PASSWORD["admin"], "password2": PASSWORD["admin"],
                       "roles": ["approver"]})
    tc.get("/setup/keys")  # the signed-in session's own CSRF token
    passphrase = _shown(tc.post("/setup/keys", {"action": "begin"}))
    tc.post("/setup/keys", {"action": "confirm", "typed": passphrase})
    r = tc.get("/setup/pin")
    assert b'value="boss"' in r.data  # the approver that exists is offered
    bad = tc.post("/setup/pin", {"name": "boss", "password": "not-the-password-123", "pin": APIN, "pin2": APIN,
                                 "passphrase": passphrase})
    assert bad.status_code == 400 and keeper.pin_status("boss")["slot"] is False
    r = tc.post("/setup/pin", {"name": "boss", "password": PASSWORD["admin"], "pin": APIN, "pin2": APIN,
                               "passphrase": passphrase})
    assert r.headers["Location"].endswith("/setup/audit-key")
    assert keeper.pin_check("boss", APIN) == {"ok": True}


def test_passphrase_comparison_ignores_what_its_format_allows():
    p = "KY99C-7Y3DR-9RZBV-HW930"
    for typed in ("ky99c7y3dr9rzbvhw930", " KY99C 7Y3DR 9RZBV HW930 ", "KY99C‐7Y3DR‐9RZBV‐HW93O"):
        assert passphrase_key(typed) == passphrase_key(p)
        assert canonical_passphrase(typed) == p
    assert passphrase_key("KY99C-7Y3DR-9RZBV-HW931") != passphrase_key(p)
    assert canonical_passphrase(" my own long passphrase ") == "my own long passphrase"


# -- the keeper on a box without its key -------------------------------------------------------------
def test_the_keeper_serves_only_the_init_verbs_until_the_key_exists(tmp_path):
    data, cfg, keeper, app = _fresh(tmp_path)
    _admin(TC(app, addr="127.0.0.1"))
    svc = KeeperService(keeper).start()
    try:
        kc = KeeperClient(data, cfg)
        assert kc.status()["initialised"] is False
        with pytest.raises(IpcError) as exc:
            kc.pin_status("boss")
        assert exc.value.code == "not_initialised"
        with pytest.raises(IpcError) as exc:
            kc.init_begin("nobody")
        assert exc.value.code == "forbidden"
        passphrase = kc.init_begin("boss")["passphrase"]
        assert kc.init_status("boss")["pending"] is True
        with pytest.raises(IpcError) as exc:
            kc.init_commit("boss", passphrase[::-1])
        assert exc.value.code == "mismatch" and not (data / MARKER).exists()
        assert kc.init_commit("boss", passphrase)["recipient"].startswith("age1")
        assert kc.status()["initialised"] is True and kc.pin_status("boss")["slot"] is False
        with pytest.raises(IpcError) as exc:
            kc.init_begin("boss")
        assert exc.value.code == "initialised"
    finally:
        svc.close()


# -- ./run.sh's scripted default -------------------------------------------------------------------
def test_the_scripted_development_default_needs_no_wizard(tmp_path):
    """The commands ./run.sh runs on a fresh checkout: the secrets beside DATA (0600), the page open."""
    var = tmp_path / "var"
    var.mkdir()
    data = var / "data"
    cfg_file = tmp_path / "nokbox.toml"
    cfg_file.write_text("[auth]\n" + "".join(f"{k} = {v}\n" for k, v in fast_cfg().auth.__dict__.items()
                                             if k.startswith("argon2")) + "[vault]\npin_scrypt_log_n = 10\n"
                        f"device_key_file = \"{tmp_path / 'device.key'}\"\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    py = [sys.executable, "-m", "web.wizard"]
    subprocess.run([*py, "new-pin", str(var / "approver-pin.txt")], check=True, env=env, cwd=ROOT)
    r = run_cli("init", "--data", str(data), "--config", str(cfg_file), "--identity-out", str(var / "records-identity.txt"),
                "--passphrase-file", str(var / "recovery-passphrase.txt"), "--pin-file", str(var / "approver-pin.txt"),
                "--approver", "approver", stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([*py, "accounts", "--data", str(data), "--secrets", str(var), "--config", str(cfg_file)],
                         check=True, env=env, cwd=ROOT, capture_output=True, text=True).stdout
    assert str(var / "dev-accounts.txt") in out and str(var / "audit-verification-key.txt") in out
    for f in ("approver-pin.txt", "recovery-passphrase.txt", "records-identity.txt", "dev-accounts.txt",
              "audit-verification-key.txt"):
        assert (var / f).stat().st_mode & 0o777 == 0o600, f
    key = (var / "audit-verification-key.txt").read_text().strip()
    assert AuditLog(data).verify_report(key=key).macs_checked
    again = subprocess.run([*py, "accounts", "--data", str(data), "--secrets", str(var)], env=env, cwd=ROOT,
                           capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout == ""  # accounts exist: nothing is made twice
    pw = dict(line.split() for line in (var / "dev-accounts.txt").read_text().splitlines())
    from firmware.config import load_config

    cfg, _ = load_config(cfg_file)
    keeper = Keeper(data, cfg, authorize=role_check(data))
    app = create_app(RecorderClient(data, cfg, actor="page"), data_dir=data, cfg=cfg, keeper=keeper)
    tc = TC(app, addr="127.0.0.1")
    assert tc.sign_in("admin", pw["admin"]).status_code == 302
    assert tc.get("/account").status_code == 200 and tc.get("/setup").headers["Location"].endswith("/login")
    assert keeper.pin_check("approver", (var / "approver-pin.txt").read_text().strip()) == {"ok": True}


# -- the whole wizard in Chromium, over the real three processes ---------------------------------------
def _run_config(tmp_path: Path) -> Path:
    """test_run's fast simulated box, with the PIN work factor lowered and the device key in tmp."""
    from .test_run import FAST

    path = tmp_path / "nokbox.toml"
    path.write_text(FAST + f'\n[vault]\npin_scrypt_log_n = 12\ndevice_key_file = "{tmp_path / "device.key"}"\n')
    return path


@pytest.mark.browser
@pytest.mark.slow
def test_the_wizard_in_chromium_over_nokbox_run(browser, tmp_path, age_tool):  # noqa: F811
    from .test_run import free_port

    data = tmp_path / "data"  # does not exist: `nokbox run` starts on nothing
    cfg_file = _run_config(tmp_path)
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "firmware.cli", "run", "--data", str(data), "--config",
                             str(cfg_file), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    if SHOTS.exists():
        shutil.rmtree(SHOTS)
    SHOTS.mkdir(parents=True)
    ctx = None
    try:
        _wait_http(base, proc, tmp_path / "run.log")
        waiting = run_cli("status", "--data", str(data), "--config", str(cfg_file))
        assert "NOT recording" in waiting.stdout, waiting.stdout + waiting.stderr
        ctx = browser.new_context(viewport={"width": 1280, "height": 900})
        pg = ctx.new_page()
        pg.goto(base + "/calls")
        assert pg.url.endswith("/setup")
        pg.screenshot(path=str(SHOTS / "1-admin.png"), full_page=True)
        pg.fill("#name", "boss")
        pg.fill("#display", "정보팀 김")
        pg.fill("#password", PASSWORD["admin"])
        pg.fill("#password2", PASSWORD["admin"])
        pg.check("input[name=roles][value=technician]")  # the installer: administrator and technician
        pg.click("#setup-submit")
        pg.wait_for_url("**/setup/keys")
        pg.screenshot(path=str(SHOTS / "2-keys-begin.png"), full_page=True)
        pg.click("#begin")
        passphrase = pg.locator("#passphrase").inner_text().strip()
        pg.screenshot(path=str(SHOTS / "3-keys-shown.png"), full_page=True)
        pdf = ctx.request.get(base + "/setup/sheet.pdf")
        assert pdf.status == 200 and pdf.headers["cache-control"] == "no-store"
        sheet = tmp_path / "recovery-sheet.pdf"  # the test's own copy, outside DATA, to look at
        sheet.write_bytes(pdf.body())
        subprocess.run(["pdftoppm", "-png", "-r", "80", "-singlefile", str(sheet), str(SHOTS / "3b-recovery-sheet")],
                       check=True)
        sheet.unlink()
        pg.reload()  # the passphrase is not shown again
        assert pg.locator("#passphrase").count() == 0
        pg.fill("#typed", "00000-00000-00000-00000")
        pg.click("#confirm")
        assert "다릅니다" in pg.locator("#error").inner_text()
        pg.screenshot(path=str(SHOTS / "4-keys-mismatch.png"), full_page=True)
        assert not (data / MARKER).exists()
        pg.fill("#typed", passphrase.lower().replace("-", " "))
        pg.click("#confirm")
        pg.wait_for_url("**/setup/pin")
        pg.screenshot(path=str(SHOTS / "5-pin.png"), full_page=True)
        pg.fill("#name", "kim")
        pg.fill("#display", "김 팀장")
        pg.fill("#password", PASSWORD["approver"])
        pg.fill("#password2", PASSWORD["approver"])
        pg.fill("#pin", APIN)
        pg.fill("#pin2", APIN)
        pg.fill("#passphrase", passphrase)
        pg.click("#pin-submit")
        pg.wait_for_url("**/setup/audit-key", timeout=60000)
        pg.screenshot(path=str(SHOTS / "6-audit-before.png"), full_page=True)
        pg.click("#show-key")
        key = pg.locator("#verification-key").inner_text().strip()
        pg.screenshot(path=str(SHOTS / "7-audit-shown.png"), full_page=True)
        pdf = ctx.request.get(base + "/setup/sheet.pdf")
        sheet = tmp_path / "audit-sheet.pdf"
        sheet.write_bytes(pdf.body())
        subprocess.run(["pdftoppm", "-png", "-r", "80", "-singlefile", str(sheet), str(SHOTS / "7b-audit-sheet")],
                       check=True)
        sheet.unlink()
        pg.emulate_media(media="print")
        pg.screenshot(path=str(SHOTS / "7c-audit-print-view.png"), full_page=True)
        pg.emulate_media(media="screen")
        pg.click("#continue")
        pg.wait_for_load_state()
        assert pg.url.endswith("/lines")  # the line map
        pg.screenshot(path=str(SHOTS / "8-after.png"), full_page=True)
        pg.goto(base + "/setup/audit-key")
        assert "/setup" not in pg.url and key not in pg.content()
        assert AuditLog(data).verify_report(key=key).macs_checked
        # the recorder waited for the key, then records: a simulated call opens with the passphrase
        call = _first_finished_call(data, proc)
        pf = tmp_path / "passphrase.txt"
        pf.write_text(passphrase + "\n")
        ids = tmp_path / "ids.txt"
        r = run_cli("keys", "export-identity", "--data", str(data), "--config", str(cfg_file),
                    "--passphrase-file", str(pf), "--out", str(ids))
        assert r.returncode == 0, r.stderr
        audio, rate = decrypt_audio(age_tool, ids, data / call["file"])
        assert len(audio) > rate
        assert _files_holding(data, [passphrase.encode(), passphrase.replace("-", "").encode(), key.encode(),
                                     b"%PDF-"]) == []
    finally:
        if ctx is not None:
            ctx.close()
        proc.terminate()
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_http(base: str, proc, log: Path) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(base + "/setup", timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("nokbox run did not come up on a fresh data directory: " + log.read_text())
            time.sleep(0.2)


def _first_finished_call(data: Path, proc) -> dict:
    from firmware.index import CallIndex

    deadline = time.monotonic() + 180
    while True:
        if (data / "index.sqlite").exists():
            idx = CallIndex(data / "index.sqlite")
            try:
                done = [dict(c) for c in idx.calls() if c["state"] == "finished"]
            finally:
                idx.close()
            if done:
                return done[0]
        assert proc.poll() is None and time.monotonic() < deadline, "no call recorded after the wizard"
        time.sleep(0.5)

"""The whole release workflow in real headless Chromium: an officer enters a request with a scan,
searches, attaches, submits; the approver approves with the PIN; the officer plays the call (the
player streams; no download control) and exports onto a FAT32 stick image; the password is shown
once; the package opens with 7-Zip; the receipt and the ledger PDFs hold the request's fields. A
second request is delivered onto an exFAT stick image (loop device + FUSE exFAT) beside it.
Screenshots of every page go to build/screenshots/release/."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from firmware.index import KST
from firmware.people.accounts import role_check
from firmware.release.requests import KeeperView
from firmware.vault.keeper import Keeper

from .authutil import APPROVER_PIN, PASSWORD, fast_cfg, recorded_vault
from .test_release import png, submitted
from .test_usb import _names, copy_out, fat32
from .udisks import exfat, mounted_exfat, need_root_tools
from .test_web import browser  # noqa: F401 - the fixture

SHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots" / "release"


@pytest.mark.browser
def test_the_release_workflow_in_chromium(browser, tmp_path):  # noqa: F811
    from firmware.audit import AuditLog
    from firmware.hal.clock import FakeClock
    from firmware.recording.recorder import Recorder
    from firmware.release.requests import Requests
    from web import serve

    need_root_tools()  # the exFAT stick is a loop device
    sticks = tmp_path / "sticks"
    sticks.mkdir()
    cfg = fast_cfg({"audio": {"channels": 2}, "vault": {"pin_backoff_s": 0.0},
                    "release": {"usb_images": str(sticks), "office": "이천시청"}})
    data, ident, calls, numbers = recorded_vault(tmp_path, cfg)
    img = fat32(sticks / "KINGSTON.img")
    ex = exfat(sticks / "SAMSUNG.img", 64, label="SAMSUNG")
    keeper = Keeper(data, cfg, authorize=role_check(data), requests=KeeperView(data, cfg, role_check(data)))
    srv = serve(Recorder(cfg, data), port=0, keeper=keeper, data_dir=data, cfg=cfg)
    base = f"http://127.0.0.1:{srv.port}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    first = calls[0]
    t0 = dt.datetime.fromisoformat(first["start_utc"].replace("Z", "+00:00")).astimezone(KST)
    scan = tmp_path / "신분증.png"
    scan.write_bytes(png())
    try:
        def person(who):
            ctx = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
            pg = ctx.new_page()
            pg.goto(base + "/login")
            pg.fill("input[name=name]", who)
            pg.fill("input[name=password]", PASSWORD[who])
            pg.click("button[type=submit]")
            return pg

        o = person("officer")
        o.click("#nav-requests")
        o.click("#new-request")
        o.select_option("#kind", "provide")
        o.fill("#requester-name", "박민원")
        o.fill("#requester-id_number", "1975-05-05")
        o.fill("#requester-address", "이천시 중리천로 115")
        o.fill("#requester-contact", "010-5555-6666")
        o.fill("#sending_number", numbers[first["id"]])
        o.fill("#receiving_number", "031-644-2000")
        o.fill("#call_from", (t0 - dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M"))
        o.fill("#call_to", (t0 + dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M"))
        o.fill("#purpose", "통화 내용 확인")
        o.fill("#relation", "본인")
        o.fill("#reason", "민원 처리 경위 확인")
        o.screenshot(path=str(SHOTS / "1-request-new.png"), full_page=True)
        o.click("#save-request")  # no scan attached: refused, naming the field, nothing saved
        assert "attachments" in o.inner_text("#error")
        o.set_input_files("#attachments", str(scan))
        o.click("#save-request")
        number = re.search(r"/requests/([0-9]{4}-[0-9]{4})", o.url).group(1)
        o.click("#search")
        o.screenshot(path=str(SHOTS / "2-search.png"), full_page=True)
        assert o.locator(f"#found tr[data-call='{first['id']}'].match").count() == 1
        o.check(f"#pick-{first['id']}")
        o.click("#attach")
        o.click("#submit")
        assert "결재 대기" in o.inner_text("#state")

        a = person("approver")
        a.click("#nav-requests")
        a.click(f"#waiting a:text('{number}')")
        assert "박민원" in a.inner_text("#details")
        a.screenshot(path=str(SHOTS / "3-approve.png"), full_page=True)
        a.fill("#pin", "11112222")
        a.click("#approve")
        assert "PIN" in a.inner_text("#error")  # a wrong PIN: refused, counted
        a.fill("#pin", APPROVER_PIN)
        a.fill("#comment", "승인합니다")
        a.click("#approve")
        assert "승인" in a.inner_text("#state")

        o.goto(f"{base}/requests/{number}")
        o.screenshot(path=str(SHOTS / "4-approved.png"), full_page=True)
        o.click(f"button.play[data-call='{first['id']}']")
        player = o.locator("#player")
        assert "nodownload" in player.get_attribute("controlslist")
        deadline = time.monotonic() + 20
        while not player.evaluate("el => el.duration > 1"):  # the player fetched the WAV's head by a range
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert abs(player.evaluate("el => el.duration") - first["duration"]) < 0.5
        o.screenshot(path=str(SHOTS / "5-listen.png"), full_page=True)

        o.goto(f"{base}/requests/{number}")
        o.check("input[name=stick][value='KINGSTON.img']")
        o.click("#export-button")
        # the page polls the export's progress and reloads itself when it ends
        try:
            o.wait_for_selector("#show-password, #export-error", timeout=60000)
        finally:
            o.screenshot(path=str(SHOTS / "6-exporting.png"), full_page=True)
        assert o.locator("#export-error").count() == 0, o.inner_text("#export-error")
        o.click("#show-password")
        password = o.inner_text("#zip-password").strip()
        assert re.fullmatch(r"([2-9A-HJ-NP-Z]{4}-){4}[2-9A-HJ-NP-Z]{4}", password)
        o.screenshot(path=str(SHOTS / "6-delivered.png"), full_page=True)
        o.go_back()
        o.goto(f"{base}/requests/{number}")
        assert "제공 완료" in o.inner_text("#state") and o.locator("#show-password").count() == 0

        name = f"nokbox-{number}.zip"
        assert _names(img) == {name}
        assert subprocess.run(["fsck.fat", "-n", str(img)], capture_output=True).returncode == 0
        got = copy_out(img, name, tmp_path / "got.zip")
        seven = shutil.which("7z") or shutil.which("7zz")
        assert subprocess.run([seven, "t", f"-p{password}", str(got)], capture_output=True).returncode == 0

        receipt = o.request.get(f"{base}/requests/{number}/receipt.pdf")
        (tmp_path / "r.pdf").write_bytes(receipt.body())
        text = subprocess.run(["pdftotext", "-layout", str(tmp_path / "r.pdf"), "-"], capture_output=True,
                              text=True).stdout
        assert number in text and "박민원" in text and name in text and "call-01.wav" in text
        subprocess.run(["pdftoppm", "-png", "-r", "60", "-f", "1", "-l", "1", str(tmp_path / "r.pdf"),
                        str(SHOTS / "7-receipt")], check=True)
        a.goto(f"{base}/ledger")
        assert number in a.inner_text("#ledger") and "박민원" in a.inner_text("#ledger")
        a.screenshot(path=str(SHOTS / "8-ledger.png"), full_page=True)
        ledger = a.request.get(f"{base}/ledger?format=pdf")
        (tmp_path / "l.pdf").write_bytes(ledger.body())
        assert number in subprocess.run(["pdftotext", str(tmp_path / "l.pdf"), "-"], capture_output=True,
                                         text=True).stdout

        # a second request, entered and submitted by the officer's script, approved on the page and
        # delivered onto the exFAT stick
        reqs = Requests(data, cfg, AuditLog(data), keeper)
        second = submitted(reqs, cfg, FakeClock(wall=time.time()), numbers, calls[1])
        a.goto(f"{base}/requests/{second}")
        a.fill("#pin", APPROVER_PIN)
        a.click("#approve")
        assert "승인" in a.inner_text("#state")
        o.goto(f"{base}/requests/{second}")
        rows = o.inner_text("#sticks")
        assert "SAMSUNG" in rows and "exFAT" in rows and "FAT32" in rows
        o.screenshot(path=str(SHOTS / "9-sticks-fat32-exfat.png"), full_page=True)
        o.check("input[name=stick][value='SAMSUNG.img']")
        o.click("#export-button")
        o.wait_for_selector("#show-password, #export-error", timeout=60000)
        assert o.locator("#export-error").count() == 0, o.inner_text("#export-error")
        o.click("#show-password")
        password2 = o.inner_text("#zip-password").strip()
        assert password2 != password
        name2 = f"nokbox-{second}.zip"
        r = subprocess.run(["fsck.exfat", "-n", str(ex)], capture_output=True, text=True)  # ejected: unmounted
        assert r.returncode == 0 and "clean" in r.stdout, r.stdout + r.stderr
        with mounted_exfat(ex) as mnt:
            assert sorted(p.name for p in mnt.iterdir()) == [name2]
            assert subprocess.run([seven, "t", f"-p{password2}", str(mnt / name2)], capture_output=True).returncode == 0
            assert subprocess.run([seven, "t", "-pWRONG-PASS", str(mnt / name2)], capture_output=True).returncode != 0
        assert _names(img) == {name}  # the FAT32 stick kept only the first package
    finally:
        srv.close()
        from firmware.hal.usb import usb_media

        media = usb_media("image", directory=sticks)
        for s in media.sticks():
            if s.fs == "exfat":
                media.eject(s.id)

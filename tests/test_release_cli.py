"""``nokbox request …`` and ``nokbox ledger`` as scripts call them (a contract), against a running
``nokbox keeper``: new → search → attach → submit → approve → export onto a FAT32 image → receipt →
ledger; the package opens with stock 7-Zip, the image checks with fsck.fat; refusals exit non-zero."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import shutil
import subprocess

import pytest

from firmware.audit import AuditLog
from firmware.index import KST

from .authutil import APPROVER_PIN, PASSWORD, fast_cfg, recorded_vault
from .conftest import run_cli
from .test_processes import CONFIG, _start, _stop, wait_socket
from .test_release import png
from .test_usb import _names, copy_out, fat32


@pytest.fixture
def box(tmp_path):
    data, ident, calls, numbers = recorded_vault(tmp_path, fast_cfg({"audio": {"channels": 2}}))
    conf = tmp_path / "nokbox.toml"
    conf.write_text(CONFIG)
    keeper = _start("keeper", "--data", str(data), "--config", str(conf), log=tmp_path / "keeper.log")
    try:
        wait_socket(data / "run" / "keeper.sock", "keeper")
        yield data, conf, calls, numbers, tmp_path
    finally:
        _stop(keeper)


def nokbox(box, who: str, *args: str):
    data, conf, _, _, tmp = box
    pw = tmp / f"pw-{who}"
    pw.write_text(PASSWORD[who] + "\n")
    return run_cli(*args, "--data", str(data), "--config", str(conf), "--as", who, "--as-password-file", str(pw))


@pytest.mark.slow
def test_the_workflow_from_the_shell(box):
    data, conf, calls, numbers, tmp = box
    first = calls[0]
    t0 = dt.datetime.fromisoformat(first["start_utc"].replace("Z", "+00:00")).astimezone(KST)
    scan = tmp / "id.png"
    scan.write_bytes(png())
    form = {"kind": "provide", "requester": {"name": "박민원", "id_number": "1975-05-05", "address": "이천시 중리천로 115",
                                             "contact": "010-5555-6666"},
            "sending_number": numbers[first["id"]], "receiving_number": "031-644-2000",
            "call_from": (t0 - dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M"),
            "call_to": (t0 + dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M"),
            "purpose": "통화 내용 확인", "relation": "본인", "reason": "민원 처리 경위 확인", "legal_ground": 2,
            "attachments": [str(scan)]}
    f = tmp / "form.json"
    # a bad key exits 2 naming it, and saves nothing
    f.write_text(json.dumps(form | {"legal_ground": 9}, ensure_ascii=False))
    r = nokbox(box, "officer", "request", "new", "--form", str(f))
    assert r.returncode == 2 and "legal_ground" in r.stderr, r.stderr
    f.write_text(json.dumps(form, ensure_ascii=False))
    r = nokbox(box, "officer", "request", "new", "--form", str(f))
    assert r.returncode == 0, r.stderr
    number = r.stdout.strip().splitlines()[-1]
    assert len(number) == 9 and number[4] == "-"
    r = nokbox(box, "officer", "request", "search", number, "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    mine = [x for x in rows if x["id"] == first["id"]]
    assert mine and mine[0]["matches"] and set(rows[0]) == {"id", "line", "start", "duration", "masked", "matches"}
    assert nokbox(box, "officer", "request", "attach", number, str(first["id"])).returncode == 0
    assert nokbox(box, "officer", "request", "submit", number).returncode == 0
    pin = tmp / "pin"
    pin.write_text(APPROVER_PIN + "\n")
    r = nokbox(box, "officer", "request", "approve", number, "--pin-file", str(pin))
    assert r.returncode == 4  # an officer is no approver: refused at sign-in, audited
    r = nokbox(box, "approver", "request", "approve", number, "--pin-file", str(pin), "--comment", "승인")
    assert r.returncode == 0, r.stderr
    img = fat32(tmp / "stick.img")
    pw_out = tmp / "zip-password.txt"
    inside = data / "pw.txt"
    r = nokbox(box, "officer", "request", "export", number, "--image", str(img), "--password-out", str(inside))
    assert r.returncode == 1 and not inside.exists()  # never inside DATA
    r = nokbox(box, "officer", "request", "export", number, "--image", str(img), "--password-out", str(pw_out))
    assert r.returncode == 0, r.stderr
    assert oct(pw_out.stat().st_mode & 0o777) == "0o600"
    password = pw_out.read_text().strip()
    assert password not in r.stdout and password not in (data / "requests.sqlite").read_bytes().decode("latin-1")
    name = f"nokbox-{number}.zip"
    assert _names(img) == {name}
    assert subprocess.run(["fsck.fat", "-n", str(img)], capture_output=True).returncode == 0
    out = copy_out(img, name, tmp / "got.zip")
    seven = shutil.which("7z") or shutil.which("7zz")
    x = tmp / "x"
    assert subprocess.run([seven, "x", f"-p{password}", f"-o{x}", str(out)], capture_output=True).returncode == 0
    assert subprocess.run(["sha256sum", "-c", "MANIFEST.sha256"], cwd=x, capture_output=True).returncode == 0
    # delivered: a second export is refused
    r = nokbox(box, "officer", "request", "export", number, "--image", str(img))
    assert r.returncode == 1 and "승인된 신청만" in r.stderr, r.stderr
    # the receipt and the ledger carry the request's fields
    pdf = tmp / "receipt.pdf"
    assert nokbox(box, "officer", "request", "receipt", number, "--pdf", str(pdf)).returncode == 0
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True).stdout
    assert number in text and "박민원" in text and "서약" in text
    day = t0.date().isoformat()
    r = nokbox(box, "auditor", "ledger", "--from", day, "--to", day, "--csv")
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(io.StringIO(r.stdout.lstrip("\ufeff"))))
    assert rows[0][0] == "번호" and rows[1][0] == number and "박민원" in rows[1]
    lp = tmp / "ledger.pdf"
    assert nokbox(box, "approver", "ledger", "--from", day, "--to", day, "--pdf", str(lp)).returncode == 0
    assert number in subprocess.run(["pdftotext", str(lp), "-"], capture_output=True, text=True).stdout
    r = nokbox(box, "technician", "ledger", "--from", day, "--to", day, "--csv")
    assert r.returncode == 4
    acts = [e["action"] for e in AuditLog(data).entries() if e["object"] == f"request:{number}"]
    for a in ("request.create", "request.search", "request.attach", "request.submit", "request.approve",
              "request.export", "request.close", "request.view"):
        assert a in acts, a

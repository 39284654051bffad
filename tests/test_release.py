"""The release workflow (firmware/release/requests.py, export.py) over the real key keeper: a request
(form 1) with sealed personal details, the search bounded by it (blind index), attach with holds,
approval with the one approver PIN, listening by ranges, export of a signed AES ZIP checked with
stock 7-Zip and ssh-keygen, closing, the ledger; and each refusal with its audit entry."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import subprocess
import time
import zlib

import numpy as np
import pytest
import soundfile as sf

from firmware.audit import AuditLog
from firmware.hal.clock import FakeClock
from firmware.people.accounts import role_check
from firmware.release.export import FolderTarget, export
from firmware.release.requests import FormError, KeeperView, RequestError, Requests, validate_form
from firmware.vault.keeper import Keeper, Refused
from firmware.vault.personal import mask_number

from .authutil import APPROVER_PIN as PIN
from .authutil import fast_cfg, recorded_vault
from .conftest import decrypt_audio

NAME = "김민원<b>&"  # markup characters must come out as typed, everywhere


def png(n: int = 64) -> bytes:
    raw = b"".join(b"\x00" + bytes([i % 256]) * 3 * 8 for i in range(8))

    def chunk(kind: bytes, data: bytes) -> bytes:
        import struct

        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    import struct

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def form(numbers: dict, cid: int, start: float, end: float, **kw) -> dict:
    f = {"kind": "provide", "requester": {"name": NAME, "id_number": "1980-01-31", "address": "서울시 중구 세종대로 110",
                                          "contact": "010-2222-3333"},
         "sending_number": numbers[cid], "receiving_number": "02-120", "call_from": _iso(start - 600),
         "call_to": _iso(end + 600), "purpose": "민원 통화 내용 확인", "relation": "본인", "reason": "통화 내용 분쟁",
         "legal_ground": 2, "document_number": "", "attachments": [("신분증.png", png())]}
    f.update(kw)
    return f


def _iso(ts: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat()


def submitted(reqs, cfg, clock, numbers, call: dict, **kw) -> str:
    """A request for ``call`` (its number, a minute around it) entered, with the call attached, submitted."""
    from firmware.index import parse_utc

    t0 = parse_utc(call["start_utc"]).timestamp()
    number = reqs.create(validate_form(form(numbers, call["id"], t0, t0 + 60, **kw), cfg=cfg, now=clock.wall()),
                         actor="officer")
    reqs.attach(number, [call["id"]], actor="officer")
    reqs.submit(number, actor="officer")
    return number


@pytest.fixture
def box(tmp_path):
    cfg = fast_cfg({"audio": {"channels": 2}, "vault": {"pin_backoff_s": 0.0}})
    data, ident, calls, numbers = recorded_vault(tmp_path, cfg)
    clock = FakeClock(wall=time.time())
    view = KeeperView(data, cfg, role_check(data))
    keeper = Keeper(data, cfg, authorize=role_check(data), clock=clock, requests=view)
    reqs = Requests(data, cfg, AuditLog(data, clock=clock), keeper, clock=clock)
    return data, ident, cfg, calls, numbers, clock, keeper, reqs


def _entries(data, action=None):
    return [e for e in AuditLog(data).entries() if action is None or e["action"] == action]


def _open_holds(data):
    con = sqlite3.connect(data / "index.sqlite")
    try:
        return con.execute("SELECT COUNT(*) FROM holds WHERE closed_utc IS NULL").fetchone()[0]
    finally:
        con.close()


def test_the_whole_workflow_and_its_package(box, age_tool, tmp_path):
    data, ident, cfg, calls, numbers, clock, keeper, reqs = box
    first, second = calls[0], calls[1]
    start = min(c["start_utc"] for c in calls)
    from firmware.index import parse_utc

    t0 = parse_utc(start).timestamp()
    f = validate_form(form(numbers, first["id"], t0, t0 + 60), cfg=cfg, now=clock.wall())
    number = reqs.create(f, actor="officer")
    assert number.endswith("-0001") and len(number) == 9
    # the requester's details are sealed: not in the database file, not in the audit log, not in any file
    raw = (data / "requests.sqlite").read_bytes() + b"".join(p.read_bytes() for p in (data / "requests").rglob("*") if p.is_file())
    for secret in (NAME, "1980-01-31", "세종대로", "010-2222-3333", numbers[first["id"]]):
        assert secret.encode() not in raw
        assert secret not in json.dumps(_entries(data), ensure_ascii=False)
    # only the officer, approvers once submitted, and the auditor see them; each view audited
    assert reqs.get(number, actor="officer")["details"]["requester"]["name"] == NAME
    with pytest.raises(Refused):
        reqs.get(number, actor="technician")
    with pytest.raises(Refused):
        reqs.get(number, actor="approver")  # not yet submitted
    assert reqs.get(number, actor="auditor")["details"]["relation"] == "본인"
    assert [e["outcome"] for e in _entries(data, "request.view")] == ["ok", "refused", "refused", "ok"]

    # search: bounded by the window and matched by blind index; masked numbers for the officer
    found = reqs.search(number, actor="officer")
    by_id = {c["id"]: c for c in found}
    assert set(by_id) == {first["id"], second["id"]}
    assert by_id[first["id"]]["matches"] and not by_id[second["id"]]["matches"]
    assert by_id[first["id"]]["masked"]["dialed"] == mask_number(numbers[first["id"]])
    s = _entries(data, "request.search")[-1]
    assert s["object"] == f"request:{number}" and s["detail"]["other_parties"] == 1
    # a call of other parties needs a written reason that the approver sees
    with pytest.raises(RequestError) as e:
        reqs.attach(number, [second["id"]], actor="officer")
    assert e.value.code == "reason" and "사유" in str(e.value)
    reqs.attach(number, [first["id"]], actor="officer")
    assert _open_holds(data) == 1
    reqs.submit(number, actor="officer")
    with pytest.raises(RequestError):
        reqs.attach(number, [second["id"]], actor="officer", reason="x")  # submitted: calls fixed

    # approval: never by the officer; the PIN is the keeper slot's
    with pytest.raises(RequestError) as e:
        reqs.decide(number, actor="officer", decision="approved", pin=PIN, comment="")
    assert e.value.code in ("self_approval", "state") or "승인" in str(e.value)
    res = reqs.decide(number, actor="approver", decision="approved", pin=PIN, comment="확인함")
    assert res["final"] and reqs.row(number)["state"] == "approved"

    # listening: ranges of the decrypted WAV; a play counted at byte 0 only
    token = reqs.row(number)["grant_token"]
    head, chunks = keeper.open_call("officer", token, first["id"])
    wav = b"".join(chunks)
    head2, part = keeper.open_call("officer", token, first["id"], offset=1000, length=500)
    assert b"".join(part) == wav[1000:1500] and not head2["counted"]
    for off, n in ((len(wav) - 301, 300), (1001, 333), (45, 7), (len(wav) // 2 + 1, 200_001), (3, 100)):
        # the player seeks anywhere, odd offsets and backwards: each range decodes from its own point
        assert b"".join(keeper.open_call("officer", token, first["id"], offset=off, length=n)[1]) == wav[off:off + n]
    got, rate = sf.read(io.BytesIO(wav), dtype="int16")
    want, _ = decrypt_audio(age_tool, ident, data / first["file"])
    assert np.array_equal(got, want.reshape(len(want), -1)[:, 0])
    with pytest.raises(Refused) as e:
        keeper.open_call("officer", token, second["id"])  # not in the request
    assert e.value.code == "not_in_grant"

    # export to a folder: package, 7-Zip, manifest signature, then delivered and closed
    out = tmp_path / "stick"
    out.mkdir()
    cp = lambda: AuditLog(data).checkpoint(actor="officer", role="officer", purpose="export").line()  # noqa: E731
    res = export(reqs, number, FolderTarget(out), actor="officer", checkpoint=cp)
    pkg = out / res.name
    assert pkg.exists() and not list(out.glob("*.part"))
    seven = shutil.which("7z") or shutil.which("7zz")
    x = tmp_path / "x"
    r = subprocess.run([seven, "x", f"-p{res.password}", f"-o{x}", str(pkg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert subprocess.run([seven, "t", "-pWRONG-PASS-WORD", str(pkg)], capture_output=True).returncode != 0
    assert subprocess.run(["sha256sum", "-c", "MANIFEST.sha256"], cwd=x, capture_output=True).returncode == 0
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(keeper.signer("officer")["allowed_signers"] + "\n")
    v = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "nokbox-export", "-n", "file", "-s",
                        str(x / "MANIFEST.sha256.sig")], input=(x / "MANIFEST.sha256").read_bytes(), capture_output=True)
    assert v.returncode == 0, v.stderr
    wav_out, _ = sf.read(x / "call-01.wav", dtype="int16")
    assert np.array_equal(wav_out, got)
    text = (x / "RELEASE.txt").read_text()
    assert number in text and NAME in text
    assert any(p.suffix == ".pdf" for p in x.iterdir())
    row = reqs.row(number)
    assert row["state"] == "delivered" and row["grant_token"] is None and _open_holds(data) == 0
    # a second export of a closed request is refused and audited
    with pytest.raises(RequestError) as e:
        export(reqs, number, FolderTarget(out), actor="officer", checkpoint=cp)
    assert e.value.code == "state"
    assert _entries(data, "request.export")[-1]["outcome"] == "refused"
    # the ledger row
    rows = reqs.ledger(actor="auditor", start=clock.wall() - 86400, end=clock.wall() + 86400)
    assert rows[0]["number"] == number and rows[0]["requester"] == NAME and rows[0]["head"].startswith("approver")
    assert rows[0]["delivered"]


def test_refusals_each_audited(box):
    data, ident, cfg, calls, numbers, clock, keeper, reqs = box
    from firmware.index import parse_utc

    first = calls[0]
    t0 = parse_utc(first["start_utc"]).timestamp()
    # no search without a request
    with pytest.raises(RequestError) as e:
        reqs.search("", actor="officer")
    assert e.value.code == "no_request" and "신청" in str(e.value)
    with pytest.raises(RequestError):
        reqs.search("2026-9999", actor="officer")
    # a search outside the window finds nothing; attaching a call outside it is refused
    f = validate_form(form(numbers, first["id"], t0 - 7200, t0 - 5400) | {}, cfg=cfg, now=clock.wall())
    far = reqs.create(f, actor="officer")
    assert reqs.search(far, actor="officer") == []
    with pytest.raises(RequestError) as e:
        reqs.attach(far, [first["id"]], actor="officer")
    assert e.value.code == "outside"
    # another officer may not search someone else's request
    number = submitted(reqs, cfg, clock, numbers, first)
    # five wrong PINs lock the approver's slot
    for i in range(4):
        with pytest.raises(Refused) as e:
            reqs.decide(number, actor="approver", decision="approved", pin="97531086", comment="")
        assert e.value.code == "wrong_pin"
    with pytest.raises(Refused) as e:
        reqs.decide(number, actor="approver", decision="approved", pin="97531086", comment="")
    assert e.value.code == "locked"
    with pytest.raises(Refused) as e:
        reqs.decide(number, actor="approver", decision="approved", pin=PIN, comment="")
    assert e.value.code == "locked"
    refusals = {e["action"] for e in AuditLog(data).entries() if e["outcome"] in ("refused", "denied", "locked")}
    assert {"request.search", "request.attach", "keys.unlock"} <= refusals


def test_expired_approval_and_destroyed_call(box):
    data, ident, cfg, calls, numbers, clock, keeper, reqs = box

    first = calls[0]
    number = submitted(reqs, cfg, clock, numbers, first, kind="listen")
    reqs.decide(number, actor="approver", decision="approved", pin=PIN, comment="")
    clock.advance(cfg.release.approval_hours * 3600 + 1)
    with pytest.raises(RequestError) as e:
        reqs.grant_for(number, first["id"], actor="officer", action="request.play")
    assert e.value.code == "expired"
    assert reqs.row(number)["state"] == "expired" and _open_holds(data) == 0
    # the call is then destroyed by retention: the ledger says so
    con = sqlite3.connect(data / "index.sqlite")
    with con:
        con.execute("DELETE FROM calls WHERE id = ?", (first["id"],))
    con.close()
    assert reqs.mark_destroyed_calls() == 1
    rows = reqs.ledger(actor="auditor", start=clock.wall() - 3 * 86400, end=clock.wall() + 86400)
    assert "파기" in rows[0]["note"]


@pytest.mark.parametrize("key,value,needle", [
    ("kind", "copy", "kind"), ("legal_ground", 6, "legal_ground"), ("call_to", "yesterday", "call_to"),
    ("sending_number", "call me", "sending_number"), ("surprise", 1, "surprise"),
    ("attachments", [("x.png", b"MZ\x90\x00 not an image")], "attachments[0]"),
    ("document_number", "", "attachments"),
])
def test_a_bad_form_names_its_key_and_saves_nothing(box, key, value, needle):
    data, ident, cfg, calls, numbers, clock, keeper, reqs = box
    from firmware.index import parse_utc

    t0 = parse_utc(calls[0]["start_utc"]).timestamp()
    f = form(numbers, calls[0]["id"], t0, t0 + 60)
    f[key] = value
    if key == "document_number":  # ground 2 without the proof attached
        f["attachments"] = []
    with pytest.raises(FormError) as e:
        validate_form(f, cfg=cfg, now=clock.wall())
    assert e.value.key == needle and needle in str(e.value)
    # an authority's request (ground 4) needs its document number instead of form 1's proof
    g = form(numbers, calls[0]["id"], t0, t0 + 60, legal_ground=4, attachments=[])
    with pytest.raises(FormError) as e:
        validate_form(g, cfg=cfg, now=clock.wall())
    assert e.value.key == "document_number"
    assert not (data / "requests.sqlite").exists() or reqs.list() == []


def test_one_pin_per_approver_enrolled_through_the_keeper(box):
    data, ident, cfg, calls, numbers, clock, keeper, reqs = box
    from firmware.people.accounts import Accounts
    from firmware.vault.sealing import pin_slots

    from .authutil import PASSWORD

    acc = Accounts(data, cfg.auth)
    acc.create("head2", PASSWORD["approver"], ["approver"], by=acc.get("admin"))
    assert keeper.pin_status("head2")["slot"] is False
    with pytest.raises(Refused):
        keeper.enroll_pin("head2", "86420975", {"approver": "approver", "pin": "00000000"})
    with pytest.raises(Refused):
        keeper.enroll_pin("head2", "86420975", {"passphrase": "wrong passphrase words"})
    keeper.enroll_pin("head2", "86420975", {"approver": "approver", "pin": PIN})
    assert "head2" in pin_slots(data) and keeper.pin_status("head2")["slot"]
    keeper.enroll_pin("head2", "97531864", {"approver": "head2", "pin": "86420975"})  # change with the old PIN
    keeper.pin_check("head2", "97531864")
    with pytest.raises(Refused):
        keeper.enroll_pin("officer", "86420975", {"approver": "approver", "pin": PIN})  # not an approver
    assert [e["object"] for e in _entries(data, "keys.pin.add") if e["outcome"] == "ok"] == ["pin-slot:head2"] * 2


def test_team_review_then_head_approval(box):
    data, ident, cfg, calls, numbers, clock, keeper, reqs = box
    from firmware.people.accounts import Accounts

    from .authutil import PASSWORD

    cfg = fast_cfg({"audio": {"channels": 2}, "vault": {"pin_backoff_s": 0.0}, "release": {"approval": "team+head"}})
    reqs = Requests(data, cfg, AuditLog(data, clock=clock), keeper, clock=clock)
    acc = Accounts(data, cfg.auth)
    acc.create("teamlead", PASSWORD["approver"], ["approver"], by=acc.get("admin"))
    keeper.enroll_pin("teamlead", "86420975", {"approver": "approver", "pin": PIN})
    first = calls[0]
    number = submitted(reqs, cfg, clock, numbers, first)
    assert reqs.decide(number, actor="teamlead", decision="approved", pin="86420975", comment="검토")["stage"] == "team"
    assert reqs.row(number)["state"] == "reviewed" and not reqs.row(number)["grant_token"]
    with pytest.raises(RequestError) as e:
        reqs.decide(number, actor="teamlead", decision="approved", pin="86420975", comment="")
    assert e.value.code == "same_approver"
    reqs.decide(number, actor="approver", decision="approved", pin=PIN, comment="승인")
    rows = reqs.ledger(actor="auditor", start=clock.wall() - 86400, end=clock.wall() + 86400)
    assert rows[0]["team"].startswith("teamlead 승인") and rows[0]["head"].startswith("approver 승인")


def test_rejected_then_resubmitted_is_flagged(box):
    data, ident, cfg, calls, numbers, clock, keeper, reqs = box
    import datetime as dt

    from firmware.index import KST
    from firmware.people.review import review_day

    first = calls[0]
    for attempt in range(2):
        number = submitted(reqs, cfg, clock, numbers, first)
        if attempt == 0:
            reqs.decide(number, actor="approver", decision="rejected", pin="", comment="근거 부족")
    day = dt.datetime.fromtimestamp(clock.wall(), KST).date()
    rv = review_day(AuditLog(data), day, cfg.review)
    assert any(f.kind == "resubmitted" and f.actor == "officer" for f in rv.flags)


def test_a_restriction_prints_its_written_notice(tmp_path, capsys):
    """Seed 001 art. 9: restricting a user prints the 사용 제한 통지서 (CLI and the users page)."""
    from firmware import cli
    from firmware.people.accounts import Accounts
    from firmware.vault.keys import init_data_dir

    from .authutil import PASSWORD, make_people
    from .test_roles import TC

    data = tmp_path / "data"
    init_data_dir(data, tmp_path / "ident.txt")
    cfg_path = tmp_path / "nokbox.toml"
    cfg_path.write_text("[auth]\nargon2_memory_kib = 19456\nargon2_time_cost = 2\nargon2_parallelism = 1\n"
                        "[release]\noffice = \"이천시청\"\n")
    make_people(data, fast_cfg())
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD["admin"] + "\n")
    pdf = tmp_path / "notice.pdf"
    rc = cli.main(["user", "restrict", "officer", "--reason", "녹취정보를 사적으로 조회함", "--ground", "3",
                   "--notice-pdf", str(pdf), "--data", str(data), "--config", str(cfg_path), "--as", "admin",
                   "--as-password-file", str(pw)])
    assert rc == 0, capsys.readouterr().err
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True).stdout
    assert "통지서" in text
    assert "officer" in text and "사적으로" in text and "부정하게" in text  # art. 9 item 3's own words
    assert Accounts(data, fast_cfg().auth).get("officer").state == "restricted"
    from web import create_app
    from firmware.recording.recorder import Recorder
    from firmware.config import load_config

    cfg, _ = load_config(cfg_path)
    app = create_app(Recorder(cfg, data), keeper=object())
    tc = TC(app)
    tc.sign_in("admin", PASSWORD["admin"])
    assert "notice.pdf" in tc.get("/users").data.decode()
    r = tc.get("/users/officer/notice.pdf")
    assert r.status_code == 200 and r.data.startswith(b"%PDF-")
    assert tc.get("/users/auditor/notice.pdf").status_code == 404  # never restricted


def test_closed_requests_are_destroyed_after_keep_years(box):
    data, ident, cfg, calls, numbers, clock, keeper, reqs = box
    from firmware.index import parse_utc

    t0 = parse_utc(calls[0]["start_utc"]).timestamp()
    number = reqs.create(validate_form(form(numbers, calls[0]["id"], t0, t0 + 60), cfg=cfg, now=clock.wall()),
                         actor="officer")
    assert (data / "requests" / number / "0.age").exists()
    assert reqs.purge() == []  # open: kept
    reqs.close(number, actor="officer", reason="취하", state="withdrawn")
    clock.advance(cfg.release.keep_years * 365.25 * 86400 - 3600)
    assert reqs.purge() == []
    clock.advance(7200)
    assert reqs.purge() == [number]
    assert not (data / "requests" / number).exists() and reqs.list() == []
    con = sqlite3.connect(data / "requests.sqlite")
    assert con.execute("SELECT number FROM request_destructions").fetchall() == [(number,)]
    con.close()
    assert _entries(data, "request.destroy")[-1]["object"] == f"request:{number}"


def test_a_keeper_restart_lapses_the_approval_which_can_be_given_again(box, tmp_path):
    data, ident, cfg, calls, numbers, clock, keeper, reqs = box

    first = calls[0]
    number = submitted(reqs, cfg, clock, numbers, first)
    reqs.decide(number, actor="approver", decision="approved", pin=PIN, comment="")
    keeper.close()  # the keeper process stops; a new one knows no grant
    reqs.keeper = Keeper(data, cfg, authorize=role_check(data), clock=clock, requests=KeeperView(data, cfg, role_check(data)))
    out = tmp_path / "stick"
    out.mkdir()
    cp = lambda: AuditLog(data).checkpoint(actor="officer", role="officer", purpose="export").line()  # noqa: E731
    with pytest.raises(RequestError) as e:
        export(reqs, number, FolderTarget(out), actor="officer", checkpoint=cp)
    assert e.value.code == "lapsed" and reqs.row(number)["state"] == "submitted" and list(out.iterdir()) == []
    reqs.decide(number, actor="approver", decision="approved", pin=PIN, comment="다시 승인")
    res = export(reqs, number, FolderTarget(out), actor="officer", checkpoint=cp)
    assert (out / res.name).exists() and reqs.row(number)["state"] == "delivered"
    assert _entries(data, "request.lapse")[-1]["object"] == f"request:{number}"

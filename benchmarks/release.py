"""``benchmarks/release.py``: the release workflow's costs on this machine. Prints, asserts nothing.

A box with ``--calls`` recorded calls of ``--minutes`` each (recorded by the real pipeline from
synthetic speech-band audio, FLAC/Opus as configured, encrypted), its people and an in-process keeper:

- the server time of each step (create, search, attach, submit, approve, export);
- the listening start delay: time to the first WAV byte of a play (keeper decrypt + decode);
- export throughput onto a FAT32 image (mtools), AES ZIP included, as audio hours per minute;
- peak RSS of a child process rendering the ledger PDF for ``--ledger-rows`` rows.

    .venv/bin/python benchmarks/release.py --calls 6 --minutes 10      # 1 h of audio
    .venv/bin/python benchmarks/release.py --calls 10 --minutes 60     # 10 h, hour-long calls
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=6)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--ledger-rows", type=int, default=1000)
    a = ap.parse_args()

    from firmware.audit import AuditLog
    from firmware.hal.audio import ArraySource
    from firmware.index import CallIndex, KST
    from firmware.people.accounts import role_check
    from firmware.recording.recorder import Recorder
    from firmware.release.export import StickTarget, export
    from firmware.release.requests import KeeperView, Requests, validate_form
    from firmware.vault.keeper import Keeper
    from firmware.vault.keys import init_data_dir
    from firmware.hal.usb import usb_media
    from tests.authutil import APPROVER_PIN, fast_cfg, make_people
    from tests.conftest import place_calls
    from tests.test_release import png
    from tests.test_usb import fat32

    tmp = Path(tempfile.mkdtemp(prefix="nokbox-release-bench-"))
    data = tmp / "data"
    init_data_dir(data, tmp / "ident.txt", passphrase="correct-horse-battery-staple-42", pin=APPROVER_PIN,
                  approver="approver", recovery_log_n=10, pin_log_n=10)
    cfg = fast_cfg({"audio": {"channels": 1}, "vault": {"pin_backoff_s": 0.0},
                    "keeper": {"grant_max_calls": 1000}})
    talk = a.minutes * 60
    plan = [[(5.0 + i * (talk + 20), talk) for i in range(a.calls)]]
    audio, labels = place_calls(8000, 10 + a.calls * (talk + 20), plan)
    t = time.perf_counter()
    rec = Recorder(cfg, data, source=ArraySource(audio, 8000, 160))
    rec.start()
    rec.wait(36000)
    print(f"recorded {a.calls} x {a.minutes:g} min in {time.perf_counter() - t:.1f} s")
    make_people(data, cfg)
    idx = CallIndex(data / "index.sqlite")
    calls = [dict(r) for r in idx.calls()]
    idx.close()
    keeper = Keeper(data, cfg, authorize=role_check(data), requests=KeeperView(data, cfg, role_check(data)))
    reqs = Requests(data, cfg, AuditLog(data), keeper)
    starts = [dt.datetime.fromisoformat(c["start_utc"].replace("Z", "+00:00")) for c in calls]
    form = {"kind": "provide", "requester": {"name": "김민원", "id_number": "1980-01-31", "address": "서울",
                                             "contact": "010-2222-3333"},
            "sending_number": labels[0][0][4] or "010-1234-5678", "receiving_number": "02-120",
            "call_from": min(starts).astimezone(KST).isoformat(), "call_to": max(starts).astimezone(KST).isoformat(),
            "purpose": "확인", "relation": "본인", "reason": "분쟁", "legal_ground": 2,
            "attachments": [("id.png", png())]}
    steps = {}

    def step(name, fn):
        t0 = time.perf_counter()
        out = fn()
        steps[name] = time.perf_counter() - t0
        return out

    number = step("create", lambda: reqs.create(validate_form(form, cfg=cfg, now=time.time()), actor="officer"))
    found = step("search", lambda: reqs.search(number, actor="officer"))
    step("attach", lambda: reqs.attach(number, [c["id"] for c in found], actor="officer", reason="같은 민원"))
    step("submit", lambda: reqs.submit(number, actor="officer"))
    step("approve (PIN)", lambda: reqs.decide(number, actor="approver", decision="approved", pin=APPROVER_PIN,
                                              comment=""))
    token = reqs.row(number)["grant_token"]
    t0 = time.perf_counter()
    head, chunks = keeper.open_call("officer", token, found[0]["id"])
    next(iter(chunks))
    first_byte = time.perf_counter() - t0
    t0 = time.perf_counter()  # the player seeks to the middle: a range request there
    _, chunks = keeper.open_call("officer", token, found[0]["id"], offset=head["total"] // 2 + 1, length=1 << 20)
    next(iter(chunks))
    seek_byte = time.perf_counter() - t0
    t0 = time.perf_counter()  # another call of the grant: decrypted and opened anew
    _, chunks = keeper.open_call("officer", token, found[-1]["id"]) if len(found) > 1 else (None, iter([b""]))
    next(iter(chunks))
    other_byte = time.perf_counter() - t0
    img = fat32(tmp / "stick.img", 4 * 1024 * 1024 - 1024)
    media = usb_media("image", images=[img])
    cp = lambda: AuditLog(data).checkpoint(actor="officer", role="officer", purpose="bench").line()  # noqa: E731
    res = step("export", lambda: export(reqs, number, StickTarget(media, media.sticks()[0].id), actor="officer",
                                        checkpoint=cp))
    hours = sum(c["duration"] for c in found) / 3600
    for k, v in steps.items():
        print(f"step {k:<14} {v * 1000:9.1f} ms")
    print(f"listening start (first WAV byte of a {found[0]['duration'] / 60:.0f}-min call): {first_byte * 1000:.0f} ms; "
          f"after a seek to its middle: {seek_byte * 1000:.0f} ms; another call: {other_byte * 1000:.0f} ms")
    print(f"export: {hours:.2f} h of audio, package {res.size / 1e6:.1f} MB, {steps['export']:.1f} s "
          f"= {hours / (steps['export'] / 60):.2f} audio hours per minute")
    code = ("import resource,sys,time;sys.path.insert(0,%r);from firmware.release.forms import ledger_pdf;"
            "rows=[{'number':f'2026-{i:04d}','kind':'제공','requester':'김민원','address':'서울시 중구','call_time':'2026-12-01 10:00',"
            "'numbers':'010-****-5678','reason':'민원 통화 확인 '*3,'ground':'제7조제1항 제2호','officer':'officer',"
            "'team':'','head':'approver 승인','state':'제공 완료','note':''} for i in range(%d)];t=time.perf_counter();"
            "pdf=ledger_pdf(rows,period=('2026-01-01','2026-12-31'));"
            "print(f'ledger PDF: %d rows, {len(pdf)/1e6:.2f} MB, {time.perf_counter()-t:.1f} s, peak RSS',"
            "[l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1],'kB')") % (
        str(ROOT), a.ledger_rows, a.ledger_rows)
    print(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()

"""The call list: masked numbers for the oversight roles only, none for the others, never in
clear; sealed under the device-bound secret (the SSD alone shows no digits); every view audited."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from firmware.people.accounts import AuthError, role_check
from firmware.audit import AuditLog
from firmware.release.calllist import list_calls
from firmware.recording.recorder import Recorder
from firmware.hal.audio import ArraySource
from firmware.index import KST, CallIndex
from firmware.vault.keeper import Keeper
from firmware.vault.keys import device_for
from firmware.vault.personal import BoxSealer, mask_number, open_masked
from web import create_app

from .authutil import PASSWORD, fast_cfg, make_people
from .conftest import place_calls
from .test_roles import TC

RATE = 8000


@pytest.fixture
def recorded(box):
    """Two calls with dialled numbers recorded by the real pipeline, and the box's people."""
    data, ident = box
    cfg = fast_cfg({"audio": {"channels": 2}})
    audio, labels = place_calls(RATE, 80.0, [[(3.0, 20.0)], [(10.0, 15.0)]])
    numbers = [lab[4] for line in labels for lab in line]
    assert all(numbers)
    rec = Recorder(cfg, data, source=ArraySource(audio, RATE, 160))
    rec.start()
    assert rec.wait(60)
    acc = make_people(data, cfg)
    idx = CallIndex(data / "index.sqlite")
    start = idx.calls()[0]["start_utc"]
    idx.close()
    day = dt.datetime.fromisoformat(start.replace("Z", "+00:00")).astimezone(KST).date()  # the list is by KST day
    return data, cfg, acc, numbers, day


def keeper(data, cfg=None):
    """The key keeper in this process (the page reaches the real one over its socket)."""
    return Keeper(data, cfg or fast_cfg(), authorize=role_check(data))


def _audit(data):
    return list(AuditLog(data).entries())


def test_masked_numbers_are_stored_sealed_to_the_box(recorded):
    data, _, _, numbers, _ = recorded
    idx = CallIndex(data / "index.sqlite")
    rows = idx.calls()
    idx.close()
    sealer = BoxSealer(device_for(data))
    got = sorted(open_masked(sealer, r["numbers_masked"])["dialed"] for r in rows)
    assert got == sorted(mask_number(n) for n in numbers)
    assert all("*" in g for g in got)
    for n in numbers:  # neither the number nor its masked form is in any file in clear
        for f in data.rglob("*"):
            if f.is_file():
                blob = f.read_bytes()
                assert n.encode() not in blob and mask_number(n).encode() not in blob


@pytest.mark.parametrize("role,masked", [("approver", True), ("auditor", True), ("technician", False)])
def test_each_role_sees_what_it_may_and_the_view_is_audited(recorded, role, masked):
    data, _, acc, numbers, day = recorded
    user = acc.get(role)
    cl = list_calls(data, user, AuditLog(data), day, keeper=keeper(data), source="test")
    assert len(cl.calls) == 2 and cl.masked_shown is masked
    text = json.dumps(cl.calls, ensure_ascii=False)
    for n in numbers:
        assert n not in text  # never in clear
        assert (mask_number(n) in text) is masked
    assert all("file" not in c for c in cl.calls)
    e = _audit(data)[-1]
    assert e["action"] == "call.view" and e["actor"] == role and e["source"] == "test"
    if masked:  # the keeper, which opened them, wrote its own entry first
        k = _audit(data)[-2]
        assert k["action"] == "keeper.masked" and k["actor"] == role and k["detail"]["masked_numbers"] == 2
    assert e["detail"]["calls"] == 2 and e["detail"]["masked_numbers"] == (2 if masked else 0)
    assert sorted(e["detail"]["ids"]) == sorted(c["id"] for c in cl.calls)


@pytest.mark.parametrize("role", ["officer", "admin", "restricted"])
def test_roles_without_the_list_are_refused_and_logged(recorded, role):
    data, _, acc, _, day = recorded
    name = role
    if role == "restricted":
        name = "auditor"
        acc.set_state("auditor", "restricted", "under investigation", by=acc.get("admin"))
    with pytest.raises(AuthError):
        list_calls(data, acc.get(name), AuditLog(data), day, keeper=keeper(data))
    e = _audit(data)[-1]
    assert e["action"] == "access.denied" and e["actor"] == name and e["outcome"] == "refused"


def test_the_ssd_alone_shows_no_masked_digits(recorded):
    """Without the device-bound secret (the SSD in another machine) the masked column stays shut."""
    data, _, acc, numbers, day = recorded
    key = device_for(data).path
    key.rename(key.with_name("moved.key"))
    cl = list_calls(data, acc.get("auditor"), AuditLog(data), day, keeper=keeper(data))
    assert cl.note and all(c["numbers"] is None for c in cl.calls)
    text = json.dumps(cl.calls, ensure_ascii=False)
    assert not any(mask_number(n) in text for n in numbers)


def test_calls_page_in_korean_first_with_masks_by_role(recorded):
    data, cfg, _, numbers, day = recorded
    app = create_app(Recorder(cfg, data), keeper=keeper(data, cfg))
    for role, masked in (("auditor", True), ("technician", False)):
        tc = TC(app)
        tc.sign_in(role, PASSWORD[role])
        r = tc.get(f"/calls?day={day.isoformat()}")
        assert r.status_code == 200
        page = r.data.decode()
        assert page.index("통화 목록") < page.index("Calls")
        assert page.count('<tr data-id="') == 2
        for n in numbers:
            assert n not in page
            assert (mask_number(n) in page) is masked
        assert ("발신 번호" in page) is masked
    r = tc.get("/calls?day=not-a-day")
    assert r.status_code == 400
    other = day - dt.timedelta(days=3)
    r = tc.get(f"/calls?day={other.isoformat()}")
    assert r.status_code == 200 and "이 날의 통화가 없습니다" in r.data.decode()


def test_out_of_range_days_and_lines_are_refused_in_korean_not_a_500(recorded):
    data, cfg, _, _, day = recorded
    app = create_app(Recorder(cfg, data), keeper=keeper(data, cfg))
    tc = TC(app)
    tc.sign_in("auditor", PASSWORD["auditor"])
    for url in ("/calls?line=99999999999999999999999", "/calls?line=-1", "/calls?line=1.5", "/calls?day=0001-01-01",
                "/calls?day=9999-12-31", "/review/0001-01-01", "/review/9999-12-31", "/review/2026-02-30"):
        r = tc.get(url)
        assert r.status_code == 400, url
        page = r.data.decode()
        assert ("날짜" in page or "회선" in page) and "Traceback" not in page, url
    assert tc.get(f"/calls?day={day.isoformat()}&line=0").status_code == 200
    assert tc.get(f"/review/{day.isoformat()}").status_code == 200

"""The key keeper (firmware/vault/keeper.py): a PIN opens named calls for one officer for a limited
time; it checks PINs, roles, grants and calls itself, forgets keys, and audits every outcome."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
import soundfile as sf

from firmware.audit import AuditLog
from firmware.hal.clock import FakeClock
from firmware.hal.devicekey import TpmDeviceSecret
from firmware.people.accounts import role_check
from firmware.vault.keeper import Keeper, Refused
from firmware.vault.personal import mask_number

from .authutil import APPROVER_PIN as PIN
from .authutil import fast_cfg, recorded_vault
from .conftest import Swtpm, decrypt_audio

RATE = 8000


@pytest.fixture(params=["file", "tpm"])
def vault(tmp_path, request):
    """A box with an approver PIN slot, two recorded calls with dialled numbers, its people, a keeper;
    once with the device secret in a key file, once sealed in a (simulated) TPM 2.0 with the slot's factor."""
    device, vault_cfg = None, {"pin_backoff_s": 0.0}
    if request.param == "tpm":
        tpm = Swtpm(tmp_path / "tpm")
        request.addfinalizer(tpm.stop)
        device = TpmDeviceSecret(tmp_path / "sd" / "device.tpm", tpm.tcti)
        vault_cfg |= {"device_secret": "tpm", "tpm_tcti": tpm.tcti, "tpm_blob": str(device.path)}
    cfg = fast_cfg({"audio": {"channels": 2}, "vault": vault_cfg})
    data, ident, calls, numbers = recorded_vault(tmp_path, cfg, device)
    clock = FakeClock(wall=time.time())
    return data, ident, cfg, calls, numbers, clock, Keeper(data, cfg, authorize=role_check(data), clock=clock)


def _actions(data):
    return [e for e in AuditLog(data).entries() if e["action"].startswith("keeper.")]


def test_a_grant_opens_exactly_its_calls_for_its_officer(vault, age_tool):
    data, ident, cfg, calls, numbers, clock, k = vault
    first, second = calls[0]["id"], calls[1]["id"]
    g = k.unlock_for("approver", PIN, grantee="officer", purpose="민원인 요청 2026-0001", calls=[first], ttl_s=3600)
    assert g["calls"] == [first] and g["grant"] and g["ref"].startswith("grant:")
    head, chunks = k.open_call("officer", g["grant"], first)
    wav = b"".join(chunks)
    assert len(wav) == head["bytes"] == 44 + 2 * head["frames"]
    got, rate = sf.read(io.BytesIO(wav), dtype="int16")
    want, want_rate = decrypt_audio(age_tool, ident, data / calls[0]["file"])  # stock age, then the codec
    assert rate == want_rate == RATE and np.array_equal(got, want.reshape(len(want), -1)[:, 0])
    assert k.numbers("officer", g["grant"], first)["numbers"]["dialed"] == numbers[first]
    # the same grant does not open the other call, nor serve anyone but its officer
    with pytest.raises(Refused) as e:
        k.open_call("officer", g["grant"], second)
    assert e.value.code == "not_in_grant" and "승인에 없습니다" in e.value.message
    with pytest.raises(Refused) as e:
        k.open_call("approver", g["grant"], first)
    assert e.value.code == "not_grantee"
    with pytest.raises(Refused) as e:
        k.open_call("officer", "forged-token", first)
    assert e.value.code == "no_grant"
    acts = [(e["action"], e["outcome"], e["actor"]) for e in _actions(data)]
    assert ("keeper.grant", "ok", "approver") in acts and ("keeper.play", "ok", "officer") in acts
    assert ("keeper.numbers", "ok", "officer") in acts
    assert sum(1 for a in acts if a[0] == "keeper.play" and a[1] == "refused") == 3
    # no number in clear in the audit trail
    text = json.dumps(list(AuditLog(data).entries()), ensure_ascii=False)
    assert all(n not in text for n in numbers.values())


def test_the_keeper_checks_pin_roles_and_limits_itself(vault):
    data, _, cfg, calls, _, clock, k = vault
    cid = calls[0]["id"]
    ok = dict(grantee="officer", purpose="p", calls=[cid], ttl_s=600)
    with pytest.raises(Refused) as e:  # self-approval
        k.unlock_for("approver", PIN, **(ok | {"grantee": "approver"}))
    assert e.value.code == "self_approval"
    with pytest.raises(Refused) as e:  # a technician cannot approve
        k.unlock_for("technician", PIN, **ok)
    assert e.value.code == "forbidden" and "request.approve" in e.value.message
    with pytest.raises(Refused) as e:  # the grantee must be a records officer
        k.unlock_for("approver", PIN, **(ok | {"grantee": "auditor"}))
    assert e.value.code == "forbidden"
    with pytest.raises(Refused) as e:  # longer than keeper.grant_max_hours
        k.unlock_for("approver", PIN, **(ok | {"ttl_s": 25 * 3600}))
    assert e.value.code == "bad_args"
    with pytest.raises(Refused) as e:
        k.unlock_for("approver", PIN, **(ok | {"calls": [99999]}))
    assert e.value.code == "no_call"
    for left in (4, 3, 2, 1):
        with pytest.raises(Refused) as e:
            k.unlock_for("approver", "97531086", **ok)
        assert e.value.code == "wrong_pin" and f"{left}회 남음" in e.value.message
    with pytest.raises(Refused) as e:  # the fifth wrong PIN locks the slot; the right one no longer opens
        k.unlock_for("approver", "97531086", **ok)
    assert e.value.code == "locked"
    with pytest.raises(Refused) as e:
        k.unlock_for("approver", PIN, **ok)
    assert e.value.code == "locked"
    refusals = [e for e in AuditLog(data).entries() if e["outcome"] in ("refused", "denied", "locked")]
    assert len(refusals) >= 10


def test_grants_end_at_expiry_when_idle_and_at_close(vault):
    data, _, cfg, calls, _, clock, k = vault
    cid = calls[0]["id"]
    g = k.unlock_for("approver", PIN, grantee="officer", purpose="p", calls=[cid], ttl_s=600)
    clock.advance(601)
    with pytest.raises(Refused) as e:
        k.open_call("officer", g["grant"], cid)
    assert e.value.code == "expired"
    assert k.status()["grants"] == 0
    g = k.unlock_for("approver", PIN, grantee="officer", purpose="p", calls=[cid], ttl_s=3600)
    clock.advance(cfg.keeper.idle_minutes * 60 - 5)
    assert k.sweep() == 0 and k.status()["grants"] == 1
    clock.advance(6)  # unused for idle_minutes: forgotten though the grant had time left
    assert k.sweep() == 1 and k.status()["grants"] == 0
    with pytest.raises(Refused):
        k.numbers("officer", g["grant"], cid)
    k.unlock_for("approver", PIN, grantee="officer", purpose="p", calls=[cid], ttl_s=600)
    k.close()
    assert k.status() == {"grants": 0, "calls_open": 0, "idle_minutes": cfg.keeper.idle_minutes, "initialised": True}
    reasons = [e["reason"] for e in AuditLog(data).entries() if e["action"] == "keeper.forget"]
    assert reasons == ["expired", f"idle for {cfg.keeper.idle_minutes:g} min", "keeper stopped"]


def test_a_role_taken_away_counts_at_once(vault):
    data, _, cfg, calls, _, clock, k = vault
    from firmware.people.accounts import Accounts

    cid = calls[0]["id"]
    g = k.unlock_for("approver", PIN, grantee="officer", purpose="p", calls=[cid], ttl_s=600)
    acc = Accounts(data, cfg.auth)
    acc.set_state("officer", "disabled", "left the office", by=acc.get("admin"))
    with pytest.raises(Refused) as e:
        k.open_call("officer", g["grant"], cid)
    assert e.value.code == "forbidden"


def test_masked_numbers_only_for_roles_that_may_see_them(vault):
    data, _, cfg, calls, numbers, clock, k = vault
    ids = [c["id"] for c in calls]
    got = k.masked("auditor", ids, "calls list")
    assert {int(i): v["dialed"] for i, v in got.items()} == {i: mask_number(n) for i, n in numbers.items()}
    with pytest.raises(Refused) as e:
        k.masked("technician", ids, "calls list")
    assert e.value.code == "forbidden"
    with pytest.raises(Refused):
        k.masked("auditor", ["1; DROP TABLE calls"], "calls list")

"""The audit chain: appends from threads and processes, seals, rotation, retention, and every
tampering the issue names (edit, delete, reorder, insert, truncate at and between seals, replay
an old seal, re-seal with a current key) detected with the entry named."""

from __future__ import annotations

import json
import multiprocessing
import threading

import bech32
import pytest

from firmware.audit import (SEAL, AuditError, AuditKeyError, AuditKeyMistyped, AuditLog, AuditWrongKey, Checkpoint,
                            _entry_hash, _mac, epoch_key, key_id, mask_number, parse_verification_key)
from firmware.hal.clock import FakeClock

EVERY = 5


def test_append_and_verify(tmp_path):
    log = AuditLog(tmp_path)
    threads = [threading.Thread(target=lambda i=i: log.append("test", obj=f"o{i}")) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.verify() == (20, None)
    assert [e["seq"] for e in log.entries()] == list(range(1, 21))


def _append_many(data, n):
    log = AuditLog(data, every=EVERY)
    for i in range(n):
        log.append("proc", obj=str(i))


def test_appends_from_several_processes_keep_one_sealed_chain(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(tmp_path, 12)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    log = AuditLog(tmp_path)
    key = log.take_verification_key()
    rep = log.verify_report(key=key)
    assert sum(1 for e in log.entries() if e["action"] == "proc") == 36
    assert rep.epochs_sealed == 36 // EVERY and rep.macs_checked


def test_entry_fields_and_no_clear_numbers_or_audio(tmp_path):
    log = AuditLog(tmp_path)
    e = log.append("call.search", actor="kim", role="officer", obj="request 12", source="192.0.2.7",
                   reason="caller 010-1234-5678 asked", detail={"number": "02 123 4567", "n": 3})
    for k in ("seq", "time_utc", "mono", "boot", "actor", "role", "object", "outcome", "reason", "source", "hash",
              "mac"):
        assert k in e
    text = log.path.read_text()
    assert "1234-5678" not in text and "123 4567" not in text
    assert "010-****-5678" in text and "02-***-4567" in text
    assert mask_number("calls/2026/11/22/00000001.wav.age") == "calls/2026/11/22/00000001.wav.age"
    with pytest.raises(AuditError, match="binary"):
        log.append("call.play", detail={"pcm": b"RIFF...."})


def test_verification_key_is_shown_once(tmp_path):
    log = AuditLog(tmp_path, every=EVERY)
    log.append("x")
    key = log.take_verification_key()
    assert key.startswith("nokbox-audit-v2-")
    key0, every = parse_verification_key(key)
    assert every == EVERY
    assert log.take_verification_key() is None
    assert not log.once_path.exists()
    # the key on the box is no longer the epoch-0 key once a seal has happened
    for _ in range(EVERY):
        log.append("x")
    st = json.loads(log.state_path.read_text())
    assert st["epoch"] == 1 and st["key"] == epoch_key(key0, 1).hex() and st["key"] != key0.hex()
    for p in log.dir.iterdir():
        assert key0.hex() not in p.read_text(errors="replace"), p


# -- tampering ------------------------------------------------------------------------------
@pytest.fixture
def sealed(tmp_path):
    """A log with seals at entries 6, 12, 18 (epochs 0-2) and an open tail of 19-20."""
    log = AuditLog(tmp_path, every=EVERY)
    for i in range(15):
        log.append("test", actor="kim", role="officer", obj=f"o{i}")
    log.append("test", obj="tail1")
    log.append("test", obj="tail2")
    key = log.take_verification_key()
    seals = [e["seq"] for e in log.entries() if e["action"] == SEAL]
    assert seals == [6, 12, 18]
    rep = log.verify_report(key=key)
    assert (rep.entries, rep.epochs_sealed, rep.sealed_upto, rep.open_tail) == (20, 3, 18, 2)
    return log, key


def _lines(log):
    return [json.loads(x) for x in log.path.read_text().splitlines()]


def _write(log, entries):
    log.path.write_text("".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n" for e in entries))


def _rechain(entries, start, key=None):
    """What an attacker without the old keys does: renumber, re-hash and fix the seals from ``start`` on."""
    last_seal = max([i + 1 for i in range(start) if entries[i]["action"] == SEAL], default=0)
    for i in range(start, len(entries)):
        e = entries[i]
        e["seq"] = i + 1
        e["prev"] = entries[i - 1]["hash"] if i else "0" * 64
        if e["action"] == SEAL:
            e["detail"].update(first=last_seal + 1, last=i, head=entries[i - 1]["hash"])
            last_seal = i + 1
        e["hash"] = _entry_hash(e)
        if key is not None:
            e["mac"] = _mac(key, e["hash"])
    return entries


def _fails(log, key, match):
    with pytest.raises(AuditError, match=match):
        log.verify_report(key=key)


def test_edit_is_named(sealed):
    log, key = sealed
    es = _lines(log)
    es[2]["object"] = "other"
    _write(log, es)
    _fails(log, key, r"^entry 3: content does not match")
    _fails(log, None, r"^entry 3: content does not match")


def test_edit_and_rehash_is_caught_by_the_mac(sealed):
    log, key = sealed
    es = _lines(log)
    es[2]["actor"] = "someone else"
    _write(log, _rechain(es, 2))
    _fails(log, key, r"^entry 3: MAC does not verify with the key of epoch 0")


def test_delete_is_named(sealed):
    log, key = sealed
    es = _lines(log)
    del es[2]
    _write(log, es)
    _fails(log, key, r"^entry 3: sequence number 4")


def test_delete_and_renumber_is_caught(sealed):
    log, key = sealed
    es = _lines(log)
    del es[2]
    _write(log, _rechain(es, 2))
    _fails(log, key, r"^entry 3: MAC")
    _fails(log, None, "truncated")  # without the key only the box's sealing state betrays it


def test_reorder_is_named(sealed):
    log, key = sealed
    es = _lines(log)
    es[2], es[3] = es[3], es[2]
    _write(log, es)
    _fails(log, key, r"^entry 3: sequence number 4")


def test_insert_is_named(sealed):
    log, key = sealed
    es = _lines(log)
    forged = dict(es[8], object="forged lookup")
    es.insert(9, forged)
    _write(log, _rechain(es, 9))
    _fails(log, key, r"^entry 10: MAC")
    _fails(log, None, r"^entry 12: more than 5 entries after the seal at entry 6")


def test_truncate_at_a_seal_is_named(sealed):
    log, key = sealed
    _write(log, _lines(log)[:12])  # ends exactly with the seal of epoch 1
    _fails(log, key, r"^entry 13: missing .* truncated")
    _fails(log, None, r"^entry 13: missing")


def test_truncate_between_seals_is_named(sealed):
    log, key = sealed
    _write(log, _lines(log)[:9])
    _fails(log, key, r"^entry 10: missing .* truncated")
    text = log.path.read_text()
    log.path.write_text(text[:-20])  # cut inside the last entry
    _fails(log, key, r"line 9: entry cut short")


def test_truncated_tail_is_caught_by_a_checkpoint(sealed):
    log, key = sealed
    cp = log.checkpoint(actor="lee", role="auditor", purpose="daily review")
    assert cp.size == 22 and log.verify_report(key=key, checkpoints=[cp.line()]).checkpoints_checked == 1
    forged = Checkpoint.parse(cp.line())
    forged.size = 18
    with pytest.raises(AuditError, match="signature does not verify"):
        log.verify_report(checkpoints=[forged.line()])
    # drop the sealed tail and put back the sealing state root copied earlier: only the checkpoint knows
    state = log.state_path.read_text()
    _write(log, _lines(log)[:18])
    st = json.loads(state)
    st.update(epoch=3, sealed_seq=18, key=epoch_key(parse_verification_key(key)[0], 3).hex())
    log.state_path.write_text(json.dumps(st))
    assert log.verify_report(key=key).last_seq == 18
    with pytest.raises(AuditError, match=r"^entry 19: missing — a checkpoint"):
        log.verify_report(key=key, checkpoints=[cp.line()])


def test_replay_of_an_old_seal_is_named(sealed):
    log, key = sealed
    es = _lines(log)
    old = json.loads(json.dumps(es[5]))  # the seal of epoch 0
    es.insert(18, old)
    _write(log, es)
    _fails(log, key, r"^entry 19: sequence number 6")
    _write(log, _rechain(es, 18))  # renumbered and re-chained, but it still says epoch 0
    _fails(log, key, r"^entry 19: MAC")
    _fails(log, None, r"^entry 19: seal of epoch 0 where epoch 3 belongs")


def test_reseal_with_the_current_key_is_named(sealed):
    log, key = sealed
    st = json.loads(log.state_path.read_text())
    current = bytes.fromhex(st["key"])  # what root on the box holds today (epoch 3)
    es = _lines(log)
    es[7]["object"] = "hidden lookup"  # an entry of epoch 1
    _write(log, _rechain(es, 7, key=current))
    _fails(log, key, r"^entry 8: MAC does not verify with the key of epoch 1")
    # or: drop the old seals and seal everything again as the current epoch
    es = [e for e in _lines(log) if e["action"] != SEAL or e["seq"] <= 6]
    es = _rechain(es, 6, key=current)
    seal = dict(es[5], seq=len(es) + 1, prev=es[-1]["hash"],
                detail={"epoch": 1, "first": 7, "last": len(es), "head": es[-1]["hash"]})
    seal["hash"] = _entry_hash(seal)
    seal["mac"] = _mac(current, seal["hash"])
    _write(log, es + [seal])
    _fails(log, key, r"^entry 7: MAC")
    _fails(log, None, r"^entry 12: more than 5 entries after the seal at entry 6")


def test_epoch_gap_is_named(sealed):
    log, key = sealed
    es = _lines(log)
    del es[6:12]  # a whole epoch (entries 7-12, with its seal) removed and the rest renumbered
    _write(log, _rechain(es, 6))
    _fails(log, None, r"^entry 12: seal of epoch 2 where epoch 1 belongs")


def test_replaced_sealing_state_is_caught(sealed):
    log, key = sealed
    st = json.loads(log.state_path.read_text())
    st["key"] = "11" * 32
    log.state_path.write_text(json.dumps(st))
    _fails(log, key, "does not derive from this verification key")
    log.state_path.unlink()
    _fails(log, key, "sealing state of the box is missing")


def test_wrong_key_is_told_apart_from_a_forged_log(sealed):
    log, key = sealed
    other = AuditLog(log.dir.parent / "other")
    other.append("x")
    with pytest.raises(AuditWrongKey, match="wrong key: this verification key .* is not the key of this audit log"):
        log.verify_report(key=other.take_verification_key())
    # the right key on a forged log is "forged", never "wrong key"
    es = _lines(log)
    es[0]["actor"] = "someone else"
    _write(log, _rechain(es, 0))
    with pytest.raises(AuditError, match=r"^entry 1: MAC") as exc:
        log.verify_report(key=key)
    assert not isinstance(exc.value, AuditKeyError) and exc.value.outcome == "forged"


def test_a_mistyped_key_is_a_typo_not_a_wrong_key(sealed):
    log, key = sealed
    body = key[len("nokbox-audit-v2-"):]
    # every single-character substitution and every swap of two neighbours is caught by the checksum
    for i, c in enumerate(body):
        if c == "-":
            continue
        for sub in set(bech32.CHARSET) - {c}:
            with pytest.raises(AuditKeyMistyped):
                log.verify_report(key=key[:16 + i] + sub + key[16 + i + 1:])
        j = i + 1 if i + 1 < len(body) and body[i + 1] != "-" else None
        if j is not None and body[j] != c:
            swapped = body[:i] + body[j] + c + body[j + 1:]
            with pytest.raises(AuditKeyMistyped, match="check characters do not match"):
                log.verify_report(key="nokbox-audit-v2-" + swapped)
    for bad, why in ((key[:-1], "60 characters"), (key + "q", "62 characters"), ("nokbox-audit-v3-" + body, "start"),
                     (key[:17] + "o" + key[18:], "'o' is never used"), ("", "start")):
        with pytest.raises(AuditKeyMistyped, match=why) as exc:
            parse_verification_key(bad)
        assert exc.value.outcome == "mistyped" and "검증 키 오타" in str(exc.value)
    # what a person does when reading it aloud does not matter: case, spaces for dashes
    assert log.verify_report(key=key.upper().replace("-", " ").replace("NOKBOX AUDIT V2 ", "nokbox-audit-v2-"))
    assert log.verify_report(key=key).key_id == key_id(parse_verification_key(key)[0])


def test_the_key_id_is_in_the_state_and_every_seal_and_is_no_key(sealed):
    log, key = sealed
    key0, _ = parse_verification_key(key)
    st = json.loads(log.state_path.read_text())
    assert st["key_id"] == key_id(key0) and key0.hex() not in st["key_id"]
    seals = [e for e in log.entries() if e["action"] == SEAL]
    assert seals and all(e["detail"]["key_id"] == key_id(key0) for e in seals)
    # a seal naming another key (entries of another box spliced in) is named even without the key
    es = _lines(log)
    es[5]["detail"]["key_id"] = "0" * 16
    _write(log, _rechain(es, 5))
    _fails(log, None, r"^entry 6: seal names key id 0{16}")
    # the state edited to name another key, while the MACs are this key's: the key is right, the log is not
    es = _lines(log)
    es[5]["detail"]["key_id"] = key_id(key0)
    _write(log, _rechain(es, 5, key=key0))
    st["key_id"] = "f" * 16
    log.state_path.write_text(json.dumps(st))
    with pytest.raises(AuditError, match="sealing state was edited") as exc:
        log.verify_report(key=key)
    assert not isinstance(exc.value, AuditKeyError)


def _to_format_1(log, key0):
    """A log as a box set up before key ids wrote it: state format 1, seals without key_id."""
    st = json.loads(log.state_path.read_text())
    del st["key_id"]
    st["format"] = 1
    log.state_path.write_text(json.dumps(st))
    es = _lines(log)
    epoch = 0
    for e in es:
        if e["action"] == SEAL:
            e["detail"].pop("key_id")
    # re-hash and re-MAC every entry with its own epoch's key, as the old code wrote them
    for i, e in enumerate(es):
        e["prev"] = es[i - 1]["hash"] if i else "0" * 64
        if e["action"] == SEAL:
            e["detail"]["head"] = es[i - 1]["hash"]
        e["hash"] = _entry_hash(e)
        e["mac"] = _mac(epoch_key(key0, epoch), e["hash"])
        if e["action"] == SEAL:
            epoch += 1
    _write(log, es)


def test_old_v1_keys_and_logs_without_a_key_id_still_verify_and_tell_the_three_apart(sealed):
    import base64

    log, key = sealed
    key0, every = parse_verification_key(key)
    _to_format_1(log, key0)
    b32 = base64.b32encode(key0).decode().rstrip("=")
    v1 = f"nokbox-audit-v1-{every}-" + "-".join(b32[i:i + 4] for i in range(0, len(b32), 4))
    assert parse_verification_key(v1) == (key0, every)
    for k in (v1, key):  # the same K0 in either text
        rep = log.verify_report(key=k)
        assert rep.macs_checked and rep.entries == 20
    other = AuditLog(log.dir.parent / "other", every=EVERY)
    other.append("x")
    with pytest.raises(AuditWrongKey):
        log.verify_report(key=other.take_verification_key())
    with pytest.raises(AuditKeyMistyped):
        parse_verification_key(v1[:-3])
    es = _lines(log)
    es[7]["object"] = "hidden lookup"
    _write(log, _rechain(es, 7))
    with pytest.raises(AuditError, match=r"^entry 8: MAC") as exc:
        log.verify_report(key=v1)
    assert exc.value.outcome == "forged"


# -- rotation and retention -----------------------------------------------------------------
def test_rotation_keeps_one_chain_and_retention_prunes_with_a_logged_anchor(tmp_path):
    clock = FakeClock(wall=1_700_000_000.0)  # 2023-11-14
    log = AuditLog(tmp_path, clock=clock, every=EVERY)
    for month in range(30):
        for i in range(3):
            log.append("test", obj=f"m{month}-{i}")
        clock.advance(31 * 86400)
    key = log.take_verification_key()
    segs = log.segments()
    assert len(segs) >= 29
    rep = log.verify_report(key=key)
    assert rep.first_seq == 1
    # every rotated segment ends with a seal
    for seg in segs[:-1]:
        assert json.loads(seg.read_text().splitlines()[-1])["action"] == SEAL
    removed = log.prune(0)  # never below one year
    assert removed > 0
    ret = [e for e in log.entries() if e["action"] == "audit.retention"]
    assert len(ret) == 1 and ret[0]["detail"]["removed_first"] == 1
    rep = log.verify_report(key=key)
    assert rep.first_seq == removed + 1
    newest = max(e["time_utc"] for e in log.entries())
    oldest = min(e["time_utc"] for e in log.entries() if e["action"] == "test")
    assert int(newest[:4]) - int(oldest[:4]) >= 1
    # a segment that disappears without a retention run is named
    log.segments()[0].unlink()
    with pytest.raises(AuditError, match="sequence number"):
        log.verify_report(key=key)


def test_retention_keeps_two_years_by_default_and_a_clock_jump_does_not_age_the_log(tmp_path):
    clock = FakeClock(wall=1_700_000_000.0)
    log = AuditLog(tmp_path, clock=clock, every=EVERY)
    for _ in range(20):
        log.append("test")
        clock.advance(40 * 86400)  # ~2.2 years in all
    assert log.prune(2) > 0
    before = sum(1 for _ in log.entries())
    clock.step_wall(50 * 365 * 86400)  # the clock jumps decades ahead; nothing new was logged
    assert log.prune(2) == 0
    assert sum(1 for _ in log.entries()) == before


def test_retention_is_configurable_but_never_below_one_year():
    from firmware.config import parse_config
    from firmware.errors import ConfigError

    assert parse_config({}).audit.retention_years == 2
    assert parse_config({"audit": {"retention_years": 5}}).audit.retention_years == 5
    with pytest.raises(ConfigError, match="audit.retention_years"):
        parse_config({"audit": {"retention_years": 0}})

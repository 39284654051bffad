"""The recorder with the fake audio backend: device loss and return, xruns, a stalled disk,
ring overrun accounting, clock steps, shutdown mid-call and config reload."""

from __future__ import annotations

import logging
import queue
import threading
import time

import numpy as np
import pytest

from firmware.config import NokboxConfig, parse_config
from firmware.recording.recorder import Recorder
from firmware.hal.audio import ArraySource
from firmware.hal.clock import Clock, FakeClock
from firmware.index import CallIndex, parse_utc

from .conftest import decrypt_audio, place_calls

RATE = 8000
WAV = parse_config({"storage": {"codec": "wav"}})  # lossless, so samples can be compared exactly


def calls_of(data):
    idx = CallIndex(data / "index.sqlite")
    try:
        return [dict(r) for r in idx.calls()], [dict(r) for r in idx.events()]
    finally:
        idx.close()


def test_device_lost_mid_call_and_back(box, age_tool):
    data, ident = box
    audio, labels = place_calls(RATE, 90.0, [[(5.0, 30.0)], [(50.0, 15.0)]])
    lose = int(20.0 * RATE)  # in the middle of line 0's call
    src = ArraySource(audio, RATE, 160, lose_at=(lose,), fail_opens=3)
    clock = FakeClock()
    rec = Recorder(WAV, data, source=src, clock=clock)
    rec.start()
    assert rec.wait(60)
    r = rec.reader
    assert (r.losses, r.reopens, r.open_failures) == (1, 1, 3)
    assert r.gap_seconds == pytest.approx(0.25 + 0.5 + 1.0)  # back-off while unplugged
    assert [h[0] for h in src.history] == ["open", "lost", "open-failed", "open-failed", "open-failed",
                                           "open", "close"]
    calls, events = calls_of(data)
    line0 = [c for c in calls if c["line"] == 0]
    assert line0[0]["end_reason"] == "device_lost"
    assert line0[0]["state"] == "finished"
    # the first part of the call is a complete, decryptable file ending where the device went
    y, _ = decrypt_audio(age_tool, ident, data / line0[0]["file"])
    assert line0[0]["start_sample"] + len(y) == lose
    # the call goes on after the device came back and is recorded as a new call
    assert len(line0) == 2 and line0[1]["start_sample"] >= lose
    assert [c["end_reason"] for c in calls if c["line"] == 1] == ["busy"]  # the far end hung up
    kinds = [e["kind"] for e in events]
    assert kinds.count("lost") == 1 and kinds.count("open_failed") == 3 and kinds.count("back") == 1
    back = next(e for e in events if e["kind"] == "back")
    assert back["seconds"] == pytest.approx(1.75)
    st = rec.status()
    assert st["device"]["losses"] == 1 and st["device"]["reopens"] == 1


def test_xruns_are_counted_logged_and_shown(box, caplog):
    data, _ = box
    audio, _ = place_calls(RATE, 20.0, [[(3.0, 5.0)]])
    src = ArraySource(audio, RATE, 160, xrun_at=(8000, 16000))
    rec = Recorder(NokboxConfig(), data, source=src)
    with caplog.at_level(logging.WARNING):
        rec.start()
        assert rec.wait(30)
    assert rec.reader.xruns == 2
    assert rec.status()["device"]["xruns"] == 2
    assert "capture overruns (xruns): 2" in caplog.text
    _, events = calls_of(data)
    assert [e["kind"] for e in events] == ["xrun"]


class StallingQueue(queue.Queue):
    """The writer's queue, whose consumer can be held back as a stalled disk would."""

    def __init__(self, maxsize):
        super().__init__(maxsize)
        self.gate = threading.Event()
        self.gate.set()

    def get(self, block=True, timeout=None):
        self.gate.wait()
        return super().get(block, timeout)


def stalled_run(data, audio, stall_audio_s, pace=20.0):
    """Play ``audio`` live at ``pace`` x real time; hold the writer for ``stall_audio_s`` of audio."""
    src = ArraySource(audio, RATE, 160, realtime=True, pace=pace)
    # a short writer queue, so that the rings (not the queue) absorb the stall
    # short analysis chunks, so that call audio reaches the writer queue in small blocks
    rec = Recorder(parse_config({"storage": {"queue_blocks": 8, "codec": "wav"}, "segment": {"chunk_s": 0.5}}),
                   data, source=src)
    q = StallingQueue(rec.queue.maxsize)
    rec.queue = rec.segmenter.out = rec.writer.inq = q
    rec.start()
    time.sleep(8.0 / pace)  # let 8 s of audio through, then the disk stalls
    q.gate.clear()
    before = rec.rings.write_pos
    time.sleep(stall_audio_s / pace)
    during = rec.rings.write_pos - before
    q.gate.set()
    assert rec.wait(60)
    return rec, during


def test_ten_second_disk_stall_loses_nothing(box, age_tool):
    data, ident = box
    audio, labels = place_calls(RATE, 60.0, [[(3.0, 25.0)], [(6.0, 30.0)]])
    rec, during = stalled_run(data, audio, 10.0)
    assert during > 0  # capture went on while the writer was stalled
    assert rec.rings.lost.sum() == 0
    assert rec.segmenter.waits > 0  # the writer queue really filled up
    calls, _ = calls_of(data)
    assert len(calls) == 2 and all(c["lost_frames"] == 0 for c in calls)
    for c in calls:
        y, _ = decrypt_audio(age_tool, ident, data / c["file"])
        ref = audio[c["start_sample"]:c["start_sample"] + len(y), c["line"]]
        assert np.array_equal(y, ref)


def test_overrun_beyond_the_ring_is_counted_logged_and_shown(box, caplog):
    data, _ = box
    audio, _ = place_calls(RATE, 150.0, [[(3.0, 120.0)], [(4.0, 120.0)]])
    with caplog.at_level(logging.ERROR):
        rec, _ = stalled_run(data, audio, 80.0)
    lost = rec.rings.lost
    assert (lost > 0).all()
    st = rec.status()
    assert all(ln["overrun_frames"] > 0 for ln in st["lines"])
    assert "pipeline fell behind" in caplog.text
    calls, events = calls_of(data)
    assert any(e["kind"] == "overrun" for e in events)
    hit = [c for c in calls if c["lost_frames"] > 0 or c["end_reason"] == "overrun"]
    assert hit, "the calls that lost audio say so"
    # everything lost is accounted: per line, the ring's count matches what the pipeline skipped
    for ls in rec.segmenter.lines:
        assert ls.lost_frames == int(lost[ls.idx])


def test_clock_step_does_not_break_durations(box):
    data, _ = box
    audio, _ = place_calls(RATE, 100.0, [[(3.0, 20.0), (55.0, 15.0)]])
    src = ArraySource(audio, RATE, 160)

    class LineClock(Clock):
        """Wall time follows the samples; at 20 s NTP steps it back by an hour."""

        def wall(self):
            return 1_780_000_000.0 + src.pos / RATE - (3600.0 if src.pos > 20 * RATE else 0.0)

        def monotonic(self):
            return src.pos / RATE

    rec = Recorder(NokboxConfig(), data, source=src, clock=LineClock())
    rec.start()
    assert rec.wait(30)
    calls, _ = calls_of(data)
    assert len(calls) == 2
    for c in calls:
        start, end = parse_utc(c["start_utc"]), parse_utc(c["end_utc"])
        assert c["duration"] == c["frames"] / RATE > 10
        assert (end - start).total_seconds() == pytest.approx(c["duration"], abs=0.002)
    # the second call is stamped with the corrected clock
    assert parse_utc(calls[1]["start_utc"]).timestamp() == pytest.approx(
        1_780_000_000.0 + calls[1]["start_sample"] / RATE - 3600.0, abs=0.05)


def test_shutdown_mid_call_closes_a_complete_file(box, age_tool):
    data, ident = box
    audio, _ = place_calls(RATE, 200.0, [[(2.0, 150.0)]])
    src = ArraySource(audio, RATE, 160, realtime=True, pace=10.0)
    rec = Recorder(WAV, data, source=src)
    rec.start()
    time.sleep(1.5)  # 15 s of audio: the call is in progress
    rec.stop()
    calls, _ = calls_of(data)
    assert len(calls) == 1
    assert calls[0]["state"] == "finished" and calls[0]["end_reason"] == "shutdown"
    y, _ = decrypt_audio(age_tool, ident, data / calls[0]["file"])
    assert len(y) == calls[0]["frames"] > 5 * RATE


def test_a_call_with_nothing_on_disk_is_marked_failed_at_start(box):
    data, _ = box
    idx = CallIndex(data / "index.sqlite")
    idx.open_call(0, "회선 1", time.time(), 0, RATE, "wav", lambda i: f"calls/x/{i}.wav.age")
    idx.close()
    rec = Recorder(NokboxConfig(), data, source=ArraySource(np.zeros((800, 1), np.int16), RATE, 160))
    rec.start()
    assert rec.wait(10)
    calls, _ = calls_of(data)
    assert calls[0]["state"] == "failed" and calls[0]["end_reason"] == "power_loss"


def test_reload_keeps_last_good_config(box, tmp_path, caplog):
    data, _ = box
    cfg_path = tmp_path / "nokbox.toml"
    cfg_path.write_text("[segment]\nsilence_s = 10\n[[line]]\nchannel = 0\nname = \"민원실\"\n")
    cfg = parse_config({"segment": {"silence_s": 10}, "line": [{"channel": 0, "name": "민원실"}]})
    src = ArraySource(np.zeros((8000 * 30, 1), np.int16), RATE, 160, realtime=True, pace=1.0)
    rec = Recorder(cfg, data, source=src, config_path=cfg_path)
    rec.start()
    try:
        cfg_path.write_text("[segment]\nsilence_s = 10\nbogus = 1\n")
        with caplog.at_level(logging.ERROR):
            assert rec.reload() is False
        assert "segment.bogus: unknown key" in caplog.text
        assert rec.cfg is cfg
        assert "segment.bogus" in rec.status()["config_error"]
        cfg_path.write_text("[segment]\nsilence_s = 20\n[[line]]\nchannel = 0\nname = \"당직실\"\n")
        assert rec.reload() is True
        assert rec.cfg.segment.silence_s == 20 and rec.status()["config_error"] == ""
        assert rec.status()["lines"][0]["name"] == "당직실"
        time.sleep(0.3)
        assert rec.segmenter.lines[0].seg.p.silence_s == 20  # applied while the line is idle
    finally:
        rec.stop()

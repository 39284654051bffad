"""Line state ahead of the chunk's analysis: the provisional onset stage and the line-sense input.

dsp level (deterministic, in sample time): ``dsp.linestate.HookFilter`` and ``OnsetStage`` with
``LineSegmenter``. Recorder level: gpiozero's MockFactory drives a sense pin in step with audio
played in real time; the notice relay's pin is watched for when it closes.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from dsp import synth
from dsp.linestate import HookFilter
from dsp.segment import CallEnd, CallOnset, CallStart, CallWithdrawn, LineAlarm, LineSegmenter, SegmentParams
from firmware.config import parse_config
from firmware.hal.audio import ArraySource
from firmware.index import CallIndex
from firmware.recording.recorder import Recorder

from .test_notice import factory  # noqa: F401 - gpiozero's MockFactory as the pin factory

RATE = 8000
S = RATE  # samples per second


def noisy(seconds: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return synth.line_noise(rng, int(seconds * S), RATE, hiss_dbfs=-60.0)


def put(x: np.ndarray, at_s: float, y: np.ndarray) -> None:
    a = int(at_s * S)
    x[a:a + len(y)] += y[:len(x) - a]


def speech(seconds: float, seed: int = 2, level: float = -20.0) -> np.ndarray:
    return synth.speech_like(np.random.default_rng(seed), seconds, RATE, level)


def run(x16: np.ndarray, params: SegmentParams | None = None, edges=(), block: int = 800):
    """Feed ``x16`` in ``block``s as the recorder does, with raw sense ``edges`` [(sample, off_hook)];
    returns [(fed position, event)]."""
    p = params or SegmentParams()
    seg = LineSegmenter(p)
    seg.sense_wired = bool(edges)  # (the recorder says so for a line with a sense_pin)
    hf = HookFilter(RATE, p.sense_offhook_s, p.sense_flash_s) if edges else None
    edges = sorted(edges)
    out = []
    k = 0
    for i in range(0, len(x16), block):
        end = min(i + block, len(x16))
        if hf is not None:
            while k < len(edges) and edges[k][0] < end:
                d = hf.advance(edges[k][0])
                if d:
                    out += [(end, e) for e in seg.hook(*d)]
                hf.edge(*edges[k])
                k += 1
            d = hf.advance(end)
            if d:
                out += [(end, e) for e in seg.hook(*d)]
        out += [(end, e) for e in seg.process(x16[i:end], i)]
    out += [(len(x16), e) for e in seg.finish("eof")]
    return out


def of(events, kind):
    return [e for _, e in events if isinstance(e, kind)]


# -- the hook filter ----------------------------------------------------------------------------
def ringing(t0: float, t1: float, hz: float = 20.0):
    """A detector that follows the ringing voltage: on/off at ``hz``."""
    out, t = [], t0
    while t < t1:
        out += [(int(t * S), True), (int((t + 0.5 / hz) * S), False)]
        t += 1.0 / hz
    return out


def decide(edges, upto):
    hf = HookFilter(RATE)
    got = []
    for s, off in edges:
        d = hf.advance(s)
        if d:
            got.append(d)
        hf.edge(s, off)
    d = hf.advance(upto)
    if d:
        got.append(d)
    return got, hf


def test_ringing_and_contact_bounce_are_not_an_off_hook():
    got, hf = decide(ringing(1.0, 3.0) + ringing(5.0, 7.0, hz=16.0), int(10 * S))
    assert got == [] and hf.edges > 100
    # bounce: four edges within 8 ms, then off-hook for good: one change, at the last edge
    bounce = [(int(2.000 * S), True), (int(2.003 * S), False), (int(2.005 * S), True), (int(2.008 * S), False),
              (int(2.010 * S), True)]
    got, _ = decide(bounce, int(3 * S))
    assert got == [(int(2.010 * S), True, int(2.010 * S) + 480)]  # 60 ms later


def test_a_hook_flash_is_not_a_hang_up_and_a_long_on_hook_is():
    edges = [(1 * S, True), (5 * S, False), (int(5.6 * S), True), (9 * S, False)]
    got, _ = decide(edges, 12 * S)
    assert got == [(1 * S, True, int(1.06 * S)), (9 * S, False, 10 * S)]  # the 0.6 s flash at 5 s is no change


# -- the segmenter with a sense input -------------------------------------------------------------
def sense_call():
    """Off-hook at 3 s, talk 5-12 s, 15 s of silence while still off-hook, talk 27-32 s, on-hook at 34 s."""
    x = noisy(45.0)
    put(x, 5.0, speech(7.0))
    put(x, 27.0, speech(5.0, seed=3))
    return synth.to_int16(x), [(3 * S, True), (34 * S, False)]


def test_off_hook_opens_the_call_at_once_and_only_on_hook_ends_it():
    x, edges = sense_call()
    ev = run(x, edges=edges)
    starts, ends = of(ev, CallStart), of(ev, CallEnd)
    assert len(starts) == 1 and len(ends) == 1 and not of(ev, LineAlarm)
    st = starts[0]
    assert st.evidence == "offhook" and st.onset == 3 * S and st.sample == 1 * S  # 2 s of pre-roll
    assert st.raised == int(3.06 * S)  # debounced: 60 ms after the edge
    fed = next(f for f, e in ev if e is st)
    assert fed - 3 * S <= 0.2 * S  # the recorder has it within its next 0.1 s block
    # 15 s of silence (audio alone ends a call after 10 s) did not end it; the on-hook did
    assert ends[0].reason == "onhook" and ends[0].sample == 34 * S + SegmentParams().tail
    # without the input the audio alone splits it at the silence
    alone = run(x)
    assert len(of(alone, CallStart)) == 2


def test_speech_after_the_on_hook_is_an_alarm_and_the_call_goes_on():
    x = noisy(50.0)
    put(x, 5.0, speech(20.0))  # talk until 25 s
    x16 = synth.to_int16(x)
    ev = run(x16, edges=[(3 * S, True), (12 * S, False)])  # the detector says on-hook at 12 s
    [alarm] = of(ev, LineAlarm)
    assert alarm.kind == "sense_onhook_speech" and alarm.sample == 12 * S
    [end] = of(ev, CallEnd)
    assert end.reason == "silence" and end.sample > 25 * S  # not lost: the audio decided its end


def test_off_hook_without_speech_for_too_long_is_an_alarm_and_the_audio_decides():
    x = noisy(150.0)
    put(x, 5.0, speech(4.0))
    x16 = synth.to_int16(x)
    p = SegmentParams(sense_stuck_s=60.0)
    ev = run(x16, p, edges=[(3 * S, True)])  # a stuck detector: never on-hook again
    [alarm] = of(ev, LineAlarm)
    assert alarm.kind == "sense_offhook_silent" and 68 * S <= alarm.sample <= 76 * S
    [end] = of(ev, CallEnd)
    assert end.reason == "silence" and end.sample < 80 * S


def test_a_call_the_input_never_saw_is_recorded_and_raises_an_alarm():
    x = noisy(40.0)
    put(x, 5.0, speech(8.0))
    x16 = synth.to_int16(x)
    ev = run(x16, edges=[(30 * S, True), (31 * S, False)])  # wired, but it missed the call at 5 s
    first = of(ev, CallStart)[0]
    assert first.evidence == "speech" and first.sample < 5 * S
    assert "sense_missed_call" in [a.kind for a in of(ev, LineAlarm)]


# -- the onset stage ----------------------------------------------------------------------------
def test_speech_is_raised_provisionally_within_a_fraction_of_a_second_and_confirmed_once():
    x = noisy(30.0)
    put(x, 6.0, speech(8.0))
    ev = run(synth.to_int16(x))
    [onset] = of(ev, CallOnset)
    [start] = of(ev, CallStart)
    fed = next(f for f, e in ev if e is onset)
    assert 6 * S < fed <= int(6.4 * S)  # the recorder knows it within 0.4 s of the first word
    assert start.raised == onset.raised and not of(ev, CallWithdrawn)
    assert next(f for f, e in ev if e is start) >= 8 * S  # the chunk's analysis confirms it later
    assert onset.sample <= start.sample  # everything the confirmed call holds was kept from the onset


def not_a_call(x: np.ndarray, at_s: float) -> None:
    """Something the onset stage takes for the start of speech and the analysis does not: a second
    of speech right behind a 100 ms caller-ID mark tone (the analysis keeps the 1.4 s window after
    a mark from counting as speech, and decodes no caller ID from it)."""
    t = np.arange(int(0.1 * S)) / RATE
    put(x, at_s, (0.15 * np.sin(2 * np.pi * 1200 * t)).astype(np.float32))
    put(x, at_s + 0.1, speech(1.0, level=-16.0))


def test_an_onset_the_analysis_does_not_confirm_is_withdrawn():
    x = noisy(30.0)
    not_a_call(x, 6.0)
    ev = run(synth.to_int16(x))
    onsets, gone = of(ev, CallOnset), of(ev, CallWithdrawn)
    assert not of(ev, CallStart) and not of(ev, CallEnd)
    assert len(onsets) == 1 and len(gone) == 1 and gone[0].raised == onsets[0].raised
    p = SegmentParams()
    # withdrawn once the analysis has passed it by onset_withdraw_s: within that and a chunk
    assert next(f for f, e in ev if e is gone[0]) - onsets[0].raised <= (p.onset_withdraw_s + p.chunk_s) * S


def test_tones_and_steady_hum_raise_nothing_but_a_dial_tone_does():
    x = noisy(40.0)
    put(x, 3.0, synth.cadence(synth.BUSY, 0.5, 0.5, 6.0, RATE, -18.0))  # somebody else's hang-up tone
    t = np.arange(int(8 * S)) / RATE
    put(x, 15.0, (0.05 * (np.sin(2 * np.pi * 60 * t) + 0.4 * np.sin(2 * np.pi * 180 * t))).astype(np.float32))
    ev = run(synth.to_int16(x))
    assert not of(ev, CallOnset)
    y = noisy(20.0)
    put(y, 5.0, synth.click(RATE))
    put(y, 5.02, synth.tone(synth.DIAL, 2 * S, RATE, -16.0))
    ev = run(synth.to_int16(y))
    onset = of(ev, CallOnset)[0]
    assert 5 * S <= onset.onset <= int(5.05 * S) and onset.raised <= int(5.4 * S)


def test_results_do_not_depend_on_block_size():
    x = noisy(40.0)
    put(x, 6.0, speech(8.0))
    put(x, 25.0, speech(3.0, seed=9))
    x16 = synth.to_int16(x)
    ref = [e for _, e in run(x16, block=800)]
    for block in (160, 1234, 8000, len(x16)):
        assert [e for _, e in run(x16, block=block)] == ref


# -- in the recorder ------------------------------------------------------------------------------
def watch(pin, stop: threading.Event, out: list) -> threading.Thread:
    """Note the monotonic time of each change of an output pin (polled every ms)."""
    def loop():
        last = pin.state
        while not stop.is_set():
            s = pin.state
            if s != last:
                out.append((time.monotonic(), s))
                last = s
            time.sleep(0.001)
    th = threading.Thread(target=loop, daemon=True)
    th.start()
    return th


def test_the_sense_input_starts_the_notice_within_300_ms_and_ends_the_call(box, factory):
    data, _ = box
    x = noisy(16.0)
    put(x, 3.5, speech(6.0))
    audio = synth.to_int16(x)[:, None]
    cfg = parse_config({"notice": {"gpio": "mock", "settle_ms": 20},
                        "storage": {"codec": "wav"},
                        "line": [{"channel": 0, "name": "민원실", "relay_pin": 17, "sense_pin": 23}]})
    src = ArraySource(audio, RATE, 160, realtime=True, pace=1.0)
    rec = Recorder(cfg, data, source=src)
    sense, relay = factory.pin(23), factory.pin(17)
    sense.drive_high()  # on-hook (pulled up)
    stop = threading.Event()
    changes: list = []
    watch(relay, stop, changes)
    rec.start()
    t0 = time.monotonic()

    def at(s):
        time.sleep(max(0.0, t0 + s - time.monotonic()))

    at(1.0)
    for _ in range(10):  # ringing seen by the detector: 20 Hz for 0.5 s
        sense.drive_low()
        time.sleep(0.02)
        sense.drive_high()
        time.sleep(0.03)
    at(3.0)
    sense.drive_low()  # off-hook
    t_off = time.monotonic()
    at(11.0)
    sense.drive_high()  # on-hook
    assert rec.wait(40)
    rec.stop()
    stop.set()
    on = [t for t, s in changes if s]
    assert on, "the notice relay never closed"
    assert on[0] > t_off and on[0] - t_off <= 0.3, f"relay closed {1000 * (on[0] - t_off):.0f} ms after off-hook"
    idx = CallIndex(data / "index.sqlite")
    rows = [dict(r) for r in idx.calls()]
    events = [dict(r) for r in idx.events()]
    idx.close()
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["end_reason"] == "onhook" and row["state"] == "finished"
    start_s = row["start_sample"] / RATE
    assert 0.7 <= start_s <= 1.3  # off-hook at ~3 s less 2 s of pre-roll
    assert abs(start_s + row["duration"] - 11.5) < 0.4  # on-hook at ~11 s plus the tail
    assert not [e for e in events if e["kind"] == "sense_alarm"]
    assert not list((data / "calls" / "pending").glob("*"))  # the write-ahead journal went with the call


def test_a_withdrawn_onset_leaves_no_call_and_a_confirmed_one_plays_one_notice(box, factory):
    data, _ = box
    x = noisy(40.0)
    not_a_call(x, 3.0)  # raised, then withdrawn
    put(x, 15.0, speech(6.0))  # a call
    audio = synth.to_int16(x)[:, None]
    cfg = parse_config({"notice": {"gpio": "mock", "settle_ms": 0}, "storage": {"codec": "wav"},
                        "line": [{"channel": 0, "name": "민원실", "relay_pin": 17}]})
    rec = Recorder(cfg, data, source=ArraySource(audio, RATE, 160, realtime=True, pace=4.0))
    sink = rec.notice.sinks[0]
    rec.start()
    assert rec.wait(60)
    rec.stop()
    idx = CallIndex(data / "index.sqlite")
    rows = [dict(r) for r in idx.calls()]
    kinds = [r["kind"] for r in idx.events()]
    idx.close()
    assert len(rows) == 1 and rows[0]["start_sample"] / RATE > 10.0, rows
    assert kinds.count("onset_withdrawn") == 1
    assert len(sink.history) == 2  # one for the withdrawn onset, one for the call: never two for it
    assert rows[0]["notice_played"] == 1, rows[0]
    assert not list((data / "calls" / "pending").glob("*"))
    ls = rec.segmenter.lines[0]
    assert ls.provisional == 2 and ls.withdrawn == 1 and ls.calls_started == 1

"""The line segmenter's state machine: pre-roll, pauses, hold music, hang-up evidence, bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest

from dsp import synth
from dsp.segment import CallEnd, CallStart, LineSegmenter, SegmentParams

from .corpus import music

RATE = 8000


def talk(rng, seconds, level=-20.0):
    return synth.speech_like(rng, seconds, RATE, level)


def build(parts, seconds, noise_db=-60.0, seed=1, offhook=None):
    """Line noise with ``parts`` = [(start_s, float audio)] added; ``offhook`` = (a, b, step_db)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    noise = rng.standard_normal(n).astype(np.float32) * 10 ** (noise_db / 20)
    if offhook:
        a, b, step = offhook
        noise[int(a * RATE):int(b * RATE)] *= 10 ** (step / 20)
    x = noise
    for at, sig in parts:
        i = int(at * RATE)
        x[i:i + len(sig)] += sig[: n - i]
    return synth.to_int16(x)


def run(x, params=None, block=1234):
    seg = LineSegmenter(params or SegmentParams(rate=RATE))
    ev = []
    for i in range(0, len(x), block):
        ev += seg.process(x[i:i + block], i)
    return ev + seg.finish(), seg


def calls(ev):
    s = [e for e in ev if isinstance(e, CallStart)]
    e = [e for e in ev if isinstance(e, CallEnd)]
    assert len(s) == len(e)
    return [(a.sample / RATE, a.onset / RATE, b.sample / RATE, b.reason) for a, b in zip(s, e)]


def test_call_starts_at_the_click_with_two_seconds_of_preroll():
    rng = np.random.default_rng(1)
    x = build([(10.0, synth.click(RATE)), (10.5, talk(rng, 20.0))], 60.0)
    [(start, onset, end, reason)] = calls(run(x)[0])
    assert onset == pytest.approx(10.0, abs=0.02)  # the off-hook click is the first sign
    assert start == pytest.approx(onset - 2.0, abs=0.001)
    assert 30.5 <= end <= 32.0 and reason == "silence"


@pytest.mark.parametrize("pause", [3.0, 8.0, 10.0])
def test_pauses_up_to_ten_seconds_never_split(pause):
    rng = np.random.default_rng(2)
    a = talk(rng, 10.0)
    x = build([(5.0, a), (5.0 + len(a) / RATE + pause, talk(rng, 10.0))], 60.0)
    assert len(calls(run(x)[0])) == 1


def test_silence_longer_than_the_limit_ends_the_call():
    rng = np.random.default_rng(3)
    a = talk(rng, 10.0)
    x = build([(5.0, a), (5.0 + len(a) / RATE + 13.0, talk(rng, 8.0))], 60.0)
    c = calls(run(x)[0])
    assert [r for *_, r in c] == ["silence", "silence"]
    assert c[1][0] >= c[0][2]  # the second call's pre-roll never reaches into the first


def test_hold_music_of_five_minutes_is_one_call():
    rng = np.random.default_rng(4)
    m = max(music(RATE), key=len)[5 * RATE:305 * RATE]  # one track, without its fade-out
    m = m / np.sqrt(np.mean(m * m)) * 10 ** (-26 / 20)
    x = build([(5.0, talk(rng, 10.0)), (16.0, m), (317.0, talk(rng, 10.0))], 340.0, noise_db=-45.0)
    c = calls(run(x, block=RATE)[0])
    assert len(c) == 1 and c[0][2] >= 327.0


def test_back_to_back_calls_separated_by_busy_tone_are_two_calls():
    rng = np.random.default_rng(5)
    busy = synth.cadence(synth.BUSY, 0.5, 0.5, 4.0, RATE, -18.0)
    x = build([(3.0, talk(rng, 20.0)), (23.5, busy), (28.0, synth.click(RATE)), (29.0, synth.click(RATE)),
               (29.5, talk(rng, 20.0))], 70.0)
    c = calls(run(x)[0])
    assert [r for *_, r in c] == ["busy", "silence"]
    assert c[0][2] <= 28.0 and c[1][1] >= 27.0


def test_return_to_the_idle_floor_is_a_hang_up():
    rng = np.random.default_rng(6)
    # off-hook noise 12 dB over the idle floor from 5 s to 40 s; the next call 3 s later
    x = build([(5.0, synth.click(RATE)), (5.5, talk(rng, 30.0)), (43.0, synth.click(RATE)), (43.5, talk(rng, 15.0))],
              80.0, noise_db=-55.0, offhook=(5.0, 40.0, 12.0))
    c = calls(run(x)[0])
    assert len(c) == 2 and c[0][3] == "idle"
    assert c[0][2] <= 41.5


def test_block_size_does_not_matter_and_eof_closes():
    rng = np.random.default_rng(7)
    x = build([(3.0, talk(rng, 17.0))], 21.0)
    a, _ = run(x, block=160)
    b, _ = run(x, block=48000)
    assert calls(a) == calls(b)
    assert calls(a)[0][3] == "eof"


def test_max_length_splits_and_continues_without_gap():
    rng = np.random.default_rng(8)
    ev, _ = run(build([(2.0, talk(rng, 150.0))], 155.0), SegmentParams(rate=RATE, max_call_s=60.0))
    c = calls(ev)
    assert [x[3] for x in c[:-1]] == ["max_length", "max_length"]
    for prev, nxt in zip(c, c[1:]):
        assert nxt[0] == prev[2]


def test_keep_from_and_committed_bound_what_the_caller_keeps():
    rng = np.random.default_rng(9)
    x = build([(5.0, talk(rng, 7.0)), (30.0, talk(rng, 20.0))], 70.0)
    seg = LineSegmenter(SegmentParams(rate=RATE))
    for i in range(0, len(x), 800):
        for ev in seg.process(x[i:i + 800], i):
            if isinstance(ev, CallStart):
                assert ev.sample >= seg.pos - seg.p.history
        assert seg.pos - seg.keep_from <= seg.p.history
        if seg.in_call:
            assert seg.committed_upto <= seg.pos


def test_non_contiguous_input_is_refused():
    seg = LineSegmenter(SegmentParams(rate=RATE))
    seg.process(np.zeros(800, np.int16), 0)
    with pytest.raises(ValueError, match="non-contiguous"):
        seg.process(np.zeros(800, np.int16), 1600)


def test_sixteen_khz_lines_segment_the_same():
    rng = np.random.default_rng(10)
    x = build([(5.0, synth.click(RATE)), (5.3, talk(rng, 12.0))], 40.0)
    from scipy.signal import resample_poly

    y = synth.to_int16(resample_poly(x.astype(np.float32) / 32768.0, 2, 1))
    seg = LineSegmenter(SegmentParams(rate=16000))
    ev = []
    for i in range(0, len(y), 16000):
        ev += seg.process(y[i:i + 16000], i)
    ev += seg.finish()
    [a] = [e for e in ev if isinstance(e, CallStart)]
    assert a.onset / 16000 == pytest.approx(5.0, abs=0.02)


# -- failure modes seen on the corpus (issue 3, second round) -------------------------------------
def _ten_db_line(parts, seconds, seed=11):
    """10 dB SNR: idle noise -40 dBFS, off-hook noise 12 dB above it (-28 dBFS) from 4 s on."""
    return build(parts, seconds, noise_db=-40.0, seed=seed, offhook=(4.0, seconds, 12.0))


def _hold(level_dbfs, seconds):
    m = max(music(RATE), key=len)[5 * RATE:int((5 + seconds) * RATE)]
    return (m / np.sqrt(np.mean(m * m)) * 10 ** (level_dbfs / 20)).astype(np.float32)


def test_hold_music_under_the_off_hook_noise_at_10_db_snr_is_one_call():
    rng = np.random.default_rng(21)
    # a minute of hold music 3 dB *under* the off-hook noise: no level test can see it
    x = _ten_db_line([(4.0, synth.click(RATE)), (4.5, talk(rng, 10.0, -18.0)), (15.0, _hold(-31.0, 60.0)),
                      (75.5, talk(rng, 10.0, -18.0))], 100.0)
    c = calls(run(x, block=RATE)[0])
    assert len(c) == 1 and c[0][2] >= 85.0


def test_steady_noise_at_the_same_level_is_not_music():
    rng = np.random.default_rng(21)
    hiss = (np.random.default_rng(3).standard_normal(60 * RATE) * 10 ** (-31.0 / 20)).astype(np.float32)
    x = _ten_db_line([(4.0, synth.click(RATE)), (4.5, talk(rng, 10.0, -18.0)), (15.0, hiss),
                      (75.5, talk(rng, 10.0, -18.0))], 100.0)
    c = calls(run(x, block=RATE)[0])
    assert len(c) == 2 and c[0][3] == "silence" and c[0][2] <= 27.0


def test_near_end_hang_up_after_a_caller_id_call_is_not_merged_with_the_next_call():
    from dsp import callerid

    rng = np.random.default_rng(22)
    cid = callerid.fsk_signal(callerid.encode_mdmf("0212345678", "03011200"), RATE, "bell202", -18.0)
    # caller ID 3 s before the off-hook (the call is confirmed before the line's noise rises), a
    # near-end hang-up (noise back to the idle floor) and the next call 3 s later, no tone between
    x = build([(5.0, cid), (9.0, synth.click(RATE)), (9.5, talk(rng, 40.0, -30.0)), (50.0, synth.click(RATE)),
               (53.0, synth.click(RATE)), (53.5, talk(rng, 15.0, -30.0))],
              90.0, noise_db=-50.0, seed=5, offhook=(9.0, 50.0, 12.0))
    ends = [e for e in run(x, block=RATE)[0] if isinstance(e, CallEnd)]
    assert [e.reason for e in ends][:1] == ["idle"] and len(ends) == 2
    assert ends[0].sample / RATE <= 51.0 and ends[0].caller_id == "0212345678"


def test_call_after_a_long_busy_tone_keeps_its_quiet_speech():
    rng = np.random.default_rng(23)
    # a call with 12 dB off-hook noise ends on a 6 s busy tone (recognised after ~1.5 s, the call
    # closes 3 s later while the tone still plays); 1.5 s after it the next call, no noise step,
    # whose talk is only 13 dB over the idle floor: it must not take the old call's noise as its floor
    busy = synth.cadence(synth.BUSY, 0.5, 0.5, 6.0, RATE, -18.0)
    x = build([(3.0, synth.click(RATE)), (3.5, talk(rng, 20.0, -25.0)), (24.0, busy), (30.0, synth.click(RATE)),
               (31.5, synth.click(RATE)), (32.0, talk(rng, 30.0, -47.0))],
              90.0, noise_db=-60.0, seed=6, offhook=(3.0, 30.0, 12.0))
    c = calls(run(x, block=RATE)[0])
    assert [r for *_, r in c] == ["busy", "silence"]
    assert c[1][1] >= 30.0  # its first sign is not inside the old call's busy tone
    assert c[1][0] <= 32.0 and c[1][2] >= 62.0  # the whole second call, one piece


@pytest.mark.parametrize("shift", range(24))
def test_dial_tone_completing_on_a_chunk_boundary(shift):
    # the 0.5 s that makes a dial tone is complete on, or near, the first frame of a chunk
    at = 4.0 - 0.5 - 0.03 + (shift - 12) * 0.01
    x = build([(at, synth.tone(synth.DIAL, 2 * RATE, RATE, -16.0))], 20.0)
    c = calls(run(x, params=SegmentParams(rate=RATE, chunk_s=1.0), block=RATE)[0])
    assert len(c) == 1 and c[0][1] <= at + 0.05

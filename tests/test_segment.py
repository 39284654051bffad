"""The first segmenter: pre-roll, pauses inside a call, hang-over end, tail, eof, max length."""

from __future__ import annotations

import numpy as np
import pytest

from dsp.segment import CallEnd, CallStart, EnergySegmenter, SegmentParams
from dsp.synth import line_noise, speech_like, to_int16

RATE = 8000


def line(spans, seconds, seed=1):
    """Line noise with talk spurts at the given (start_s, end_s) spans."""
    rng = np.random.default_rng(seed)
    x = line_noise(rng, int(seconds * RATE), RATE)
    for a, b in spans:
        s = speech_like(rng, b - a, RATE, -20.0)
        x[int(a * RATE):int(a * RATE) + len(s)] += s
    return to_int16(x)


def run(x, params=None, block=1234):
    seg = EnergySegmenter(params or SegmentParams())
    events = []
    for i in range(0, len(x), block):
        events += seg.process(x[i:i + block], i)
    return events + seg.finish(), seg


def pairs(events):
    starts = [e for e in events if isinstance(e, CallStart)]
    ends = [e for e in events if isinstance(e, CallEnd)]
    assert len(starts) == len(ends)
    return [(s.sample / RATE, s.onset / RATE, e.sample / RATE, e.reason) for s, e in zip(starts, ends)]


def test_one_call_with_preroll_and_tail():
    events, _ = run(line([(10.0, 30.0)], 60.0))
    [(start, onset, end, reason)] = pairs(events)
    assert onset == pytest.approx(10.0, abs=0.1)
    assert start == pytest.approx(onset - 2.0, abs=0.001)  # default pre-roll 2 s
    assert 30.0 <= end <= 31.0 and reason == "silence"


def test_pause_shorter_than_silence_does_not_split():
    events, _ = run(line([(5.0, 15.0), (23.0, 35.0)], 60.0))  # 8 s pause
    assert len(pairs(events)) == 1


def test_silence_longer_than_the_limit_ends_the_call():
    events, _ = run(line([(5.0, 15.0), (27.0, 35.0)], 60.0))  # 12 s pause
    calls = pairs(events)
    assert len(calls) == 2
    # pre-roll of the second call never reaches back into the first
    assert calls[1][0] >= calls[0][2]


def test_eof_in_a_call_and_block_size_does_not_matter():
    x = line([(3.0, 20.0)], 21.0)
    a, _ = run(x, block=160)
    b, _ = run(x, block=48000)
    assert pairs(a) == pairs(b)
    assert pairs(a)[0][3] == "eof"


def test_max_length_splits_and_continues_without_gap():
    p = SegmentParams(max_call_s=60.0)
    events, _ = run(line([(2.0, 150.0)], 155.0), p)
    calls = pairs(events)
    assert [c[3] for c in calls[:-1]] == ["max_length", "max_length"]
    for prev, nxt in zip(calls, calls[1:]):
        assert nxt[0] == prev[2]


def test_keep_from_and_committed_bound_what_the_caller_keeps():
    x = line([(5.0, 12.0)], 40.0)
    seg = EnergySegmenter(SegmentParams())
    for i in range(0, len(x), 800):
        seg.process(x[i:i + 800], i)
        assert seg.pos - seg.keep_from <= seg.p.history
        if seg.in_call:
            assert seg.committed_upto <= seg.pos


def test_non_contiguous_input_is_refused():
    seg = EnergySegmenter(SegmentParams())
    seg.process(np.zeros(800, np.int16), 0)
    with pytest.raises(ValueError, match="non-contiguous"):
        seg.process(np.zeros(800, np.int16), 1600)

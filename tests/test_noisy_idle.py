"""A noisy idle line is not a call: mains hum, crosstalk from a neighbouring pair, switching clicks.

Each test is one failure mode the segmenter had (a false call on the idle line, shown on the code
before this change) and shows it gone, with the line's real calls still found whole. The corpus
scale (precision and recall on hours of such lines) is measured by benchmarks/segmentation.py
--distractors; tests/test_corpus_golden.py holds recall on the standard corpus.
"""

from __future__ import annotations

import numpy as np
import pytest

from dsp import synth
from dsp.segment import CallEnd, CallOnset, CallStart, LineSegmenter, SegmentParams

from .corpus import LineSpec, build_line_with_distractors, english, false_by_distractor, _norm, score, segment_line

RATE = 8000
S = RATE


def line(seconds: float, seed: int = 4, noise_dbfs: float = -58.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return synth.line_noise(rng, int(seconds * S), RATE, hum_dbfs=noise_dbfs - 6, hiss_dbfs=noise_dbfs)


def put(x: np.ndarray, at_s: float, y: np.ndarray) -> None:
    a = int(at_s * S)
    x[a:a + len(y)] += y[:len(x) - a]


def talk(seconds: float, level: float, seed: int = 0) -> np.ndarray:
    """Real prompts read by a person (asterisk-core-sounds-en-wav), back to back."""
    rng = np.random.default_rng(seed)
    pool = english(RATE)
    parts, n = [], 0
    while n < seconds * S:
        x = _norm(pool[int(rng.integers(len(pool)))], level)
        parts += [x, np.zeros(int(0.4 * S), np.float32)]
        n += len(x) + int(0.4 * S)
    return np.concatenate(parts)[:int(seconds * S)]


def call(x: np.ndarray, at_s: float, seconds: float, level: float = -14.0, seed: int = 0) -> tuple[float, float]:
    """An answered call: the off-hook click, the line's noise 10 dB up while off-hook, talk."""
    put(x, at_s, synth.click(RATE, 0.3))
    put(x, at_s + 0.4, talk(seconds, level, seed))
    end = at_s + 0.4 + seconds + 0.5
    put(x, end, synth.click(RATE, 0.25))
    return at_s, end + 0.1


def calls_of(x16: np.ndarray, params: SegmentParams | None = None):
    seg = LineSegmenter(params or SegmentParams())
    ev = []
    for i in range(0, len(x16), 800):
        ev += seg.process(x16[i:i + 800], i)
    ev += seg.finish("eof")
    out, start = [], None
    for e in ev:
        if isinstance(e, CallStart):
            start = e.sample
        elif isinstance(e, CallEnd):
            out.append((start / S, e.sample / S))
    return out, [e for e in ev if isinstance(e, CallOnset)]


def check(found, real, quiet, onsets=()):
    """Every real call found once and whole; nothing at all in the quiet span."""
    for a, b in real:
        over = [f for f in found if f[0] < b and f[1] > a]
        assert len(over) == 1 and over[0][0] <= a and over[0][1] >= b - 1.0, (a, b, found)
    q0, q1 = quiet
    assert not [f for f in found if f[0] < q1 and f[1] > q0], f"false call(s) in {quiet}: {found}"
    assert not [o for o in onsets if q0 * S <= o.onset < q1 * S], "the notice would have played on it"


def hum(seconds: float, f0: float, level: float, ramp_s: float = 0.0) -> np.ndarray:
    t = np.arange(int(seconds * S)) / RATE
    w = (np.sin(2 * np.pi * f0 * t) + 0.5 * np.sin(2 * np.pi * 3 * f0 * t + 1.0)
         + 0.3 * np.sin(2 * np.pi * 5 * f0 * t + 2.0) + 0.2 * np.sin(2 * np.pi * 2 * f0 * t))
    w *= 10 ** (level / 20) / np.sqrt(np.mean(w * w))
    if ramp_s:
        r = int(ramp_s * S)
        w[:r] *= np.linspace(0, 1, r)
        w[-r:] *= np.linspace(1, 0, r)
    return w.astype(np.float32)


@pytest.mark.parametrize("f0,ramp", [(60.0, 0.0), (50.0, 0.0), (60.0, 2.0), (50.0, 1.0)])
def test_mains_hum_coming_and_going_is_not_a_call(f0, ramp):
    """Hum switched on abruptly (a fridge's compressor on a shared mains) or fading in, 15-20 dB over
    the idle noise, for 40 s, coming back for 10 s: the old segmenter took its onset for speech."""
    x = line(150.0)
    real = [call(x, 5.0, 20.0), call(x, 110.0, 20.0, seed=1)]
    put(x, 40.0, hum(40.0, f0, -40.0, ramp))
    put(x, 85.0, hum(10.0, f0, -43.0, ramp))
    found, onsets = calls_of(synth.to_int16(x))
    check(found, real, (36.0, 100.0), onsets)


def test_crosstalk_far_below_the_lines_own_calls_is_not_a_call():
    """A neighbouring pair's conversation 26 dB below this line's calls (above the fixed crosstalk
    floor of speech_min_dbfs): speech, but far under the level this line's own calls have (learned
    from its last calls: at least 3)."""
    x = line(240.0)
    real = [call(x, 5.0, 20.0), call(x, 40.0, 20.0, seed=1), call(x, 75.0, 20.0, seed=3),
            call(x, 200.0, 20.0, seed=2)]
    put(x, 120.0, talk(45.0, -40.0, seed=5))
    found, onsets = calls_of(synth.to_int16(x))
    check(found, real, (115.0, 190.0), onsets)


def test_a_burst_of_switching_clicks_is_not_a_call():
    """Relay chatter at the exchange: 30 clicks in 1.5 s, each shorter than a syllable."""
    x = line(90.0)
    real = [call(x, 5.0, 20.0), call(x, 60.0, 15.0, seed=1)]
    rng = np.random.default_rng(3)
    for t in np.sort(rng.uniform(40.0, 41.5, 30)):
        put(x, float(t), synth.click(RATE, float(rng.uniform(0.05, 0.4))) * rng.choice([-1, 1]))
    found, onsets = calls_of(synth.to_int16(x))
    check(found, real, (38.0, 50.0), onsets)


def test_a_caller_id_burst_alone_never_counts_as_speech():
    """The caller ID's channel seizure (steady alternating bits) used to count as speech when it fell
    at a chunk's end: the call was then raised, and its notice played, while the line still rang."""
    from dsp import callerid

    for at in (3.70, 3.85, 7.70):  # seizure just before a chunk boundary (4 s, 8 s)
        x = line(40.0)
        put(x, at, callerid.fsk_signal(callerid.encode_mdmf("01012345678", "03011200"), RATE, "bell202", -18.0))
        seg = LineSegmenter(SegmentParams())
        ev = []
        x16 = synth.to_int16(x)
        for i in range(0, len(x16), 800):
            ev += seg.process(x16[i:i + 800], i)
        starts = [e for e in ev if isinstance(e, CallStart)]
        assert [s.evidence for s in starts] == ["callerid"] and not starts[0].answered, (at, starts)


def test_a_corpus_of_noisy_idle_lines():
    """Two half-hour lines with calls and every distractor between them (tests/corpus.py)."""
    params = SegmentParams()
    for seed, call_dbfs, snr in ((7100, -14.0, 38.0), (7101, -20.0, 30.0)):
        spec = LineSpec(seconds=1800.0, snr_db=snr, seed=seed, call_dbfs=call_dbfs, distractors=True, idle_s=(30.0, 240.0))
        x, labels, dis = build_line_with_distractors(spec)
        assert {k for k, _, _ in dis} == {"hum", "crosstalk", "clicks"}
        found = segment_line(x, params, block=800)
        sc = score(labels, found, RATE)
        assert false_by_distractor(found, labels, dis, RATE) == {}
        assert sc["recall"] == 1.0 and sc["splits"] == 0 and sc["merges"] == 0 and sc["speech_lost_s"] == 0.0

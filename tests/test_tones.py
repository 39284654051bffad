"""DTMF (ITU-T Q.24 acceptance), call-progress tones and the Goertzel bank."""

from __future__ import annotations

import numpy as np
import pytest

from dsp import synth
from dsp.segment import CallEnd, CallStart, LineSegmenter, SegmentParams
from dsp.tones import DTMF_HIGH, DTMF_KEYS, DTMF_LOW, GoertzelBank, goertzel, half_terms

from .corpus import english, korean, music

RATE = 8000


def run(x, params=None, block=4321):
    seg = LineSegmenter(params or SegmentParams(rate=RATE))
    ev = []
    for i in range(0, len(x), block):
        ev += seg.process(x[i:i + block], i)
    return ev + seg.finish()


def dialed(x, params=None) -> str:
    """Every digit the segmenter reports, over all calls ('' when none)."""
    ends = [e for e in run(x, params) if isinstance(e, CallEnd)]
    return "".join((e.dialed or "") + (e.caller_id or "") for e in ends)


def pair(key, on_s, dev_lo=0.0, dev_hi=0.0, lo_db=-13.0, hi_db=-13.0):
    i = DTMF_KEYS.index(key)
    fl, fh = DTMF_LOW[i // 4] * (1 + dev_lo), DTMF_HIGH[i % 4] * (1 + dev_hi)
    n = int(on_s * RATE)
    t = np.arange(n) / RATE
    return (synth.db(lo_db) * np.sin(2 * np.pi * fl * t) + synth.db(hi_db) * np.sin(2 * np.pi * fh * t)).astype(np.float32)


def line(parts, noise_db=-60.0, seed=1, lead_s=1.0, tail_s=12.0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([np.zeros(int(lead_s * RATE), np.float32), *parts, np.zeros(int(tail_s * RATE), np.float32)])
    return synth.to_int16(x + rng.standard_normal(len(x)).astype(np.float32) * 10 ** (noise_db / 20))


def keys(seq, on_s=0.04, off_s=0.04, **kw):
    out = []
    for k in seq:
        out += [pair(k, on_s, **kw), np.zeros(int(off_s * RATE), np.float32)]
    return out


def test_bank_equals_the_goertzel_recursion():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(40 * 6).astype(np.float32)
    freqs = [697.0, 1633.0, 350.0, 1200.0]
    bank = GoertzelBank(freqs, RATE, 40)
    first = 123456789
    terms = bank.terms(x.reshape(6, 40), first)
    for m in range(6):
        for k, f in enumerate(freqs):
            ref = goertzel(x[m * 40:(m + 1) * 40], f, RATE) * np.exp(-2j * np.pi * f * (first + 40 * m) / RATE)
            assert terms[m, k] == pytest.approx(ref, rel=1e-4, abs=1e-3)
    # the frequency-major form the segmenter's window kernel uses holds the same terms
    steps, p0 = bank.phase_t(6, first)
    ch = half_terms(bank.raw_t(x.reshape(6, 40)), steps, p0, np.ones(3, bool))
    np.testing.assert_allclose(ch, terms.T, rtol=1e-4, atol=1e-3)
    # and 0 in the frames the spectral gate closed (frame 1: half-frames 2 and 3)
    ch = half_terms(bank.raw_t(x.reshape(6, 40)), steps, p0, np.array([True, False, True]))
    assert not ch[:, 2:4].any() and np.allclose(ch[:, [0, 1, 4, 5]], terms.T[:, [0, 1, 4, 5]], rtol=1e-4, atol=1e-3)


def test_all_sixteen_keys_at_40_ms_on_40_ms_off():
    assert dialed(line(keys(DTMF_KEYS))) == DTMF_KEYS


@pytest.mark.parametrize("dev", [(0.015, 0.015), (-0.015, -0.015), (0.015, -0.015), (-0.015, 0.015)])
def test_q24_accepts_1_5_percent_deviation(dev):
    assert dialed(line(keys("0123456789*#", 0.05, 0.05, dev_lo=dev[0], dev_hi=dev[1]))) == "0123456789*#"


@pytest.mark.parametrize("dev", [(0.035, 0.0), (-0.035, 0.0), (0.0, 0.035), (0.0, -0.035)])
def test_q24_rejects_3_5_percent_deviation(dev):
    assert dialed(line(keys("0123456789*#", 0.05, 0.05, dev_lo=dev[0], dev_hi=dev[1]))) == ""


def test_twist_limits_8_db_normal_4_db_reverse():
    digits = "159D"
    assert dialed(line(keys(digits, 0.05, 0.05, lo_db=-10.0, hi_db=-18.0))) == digits  # normal 8 dB
    assert dialed(line(keys(digits, 0.05, 0.05, lo_db=-16.0, hi_db=-12.0))) == digits  # reverse 4 dB
    assert dialed(line(keys(digits, 0.05, 0.05, lo_db=-10.0, hi_db=-20.5))) == ""  # normal 10.5 dB
    assert dialed(line(keys(digits, 0.05, 0.05, lo_db=-17.5, hi_db=-11.0))) == ""  # reverse 6.5 dB


def test_too_short_tones_and_one_long_tone():
    assert dialed(line(keys("123", 0.025, 0.06))) == ""  # 25 ms: below the 40 ms minimum
    assert dialed(line([pair("7", 2.0)])) == "7"  # a held key is one digit


def test_digits_over_dial_tone_and_at_10_db_snr():
    digits = "0212345678"
    body = np.concatenate(keys(digits, 0.06, 0.06))
    under = synth.tone(synth.DIAL, len(body), RATE, -16.0)
    assert dialed(line([body + under])) == digits
    # 10 dB SNR: white noise 10 dB under the digit power
    assert dialed(line(keys(digits, 0.06, 0.06), noise_db=-20.0, seed=5)) == digits


def test_no_talk_off_in_30_minutes_of_speech_and_music():
    rng = np.random.default_rng(9)
    parts = list(english(RATE)) + list(korean(RATE)) + list(music(RATE))
    order = rng.permutation(len(parts))
    x = np.concatenate([parts[i] * np.float32(0.5) for i in order])
    minutes = len(x) / RATE / 60
    assert minutes >= 30
    x = synth.to_int16(x + rng.standard_normal(len(x)).astype(np.float32) * 1e-3)
    digits = [e.dialed for e in run(x, block=RATE * 10) if isinstance(e, CallEnd) and e.dialed]
    assert digits == []


def tone_run(x):
    ev = run(x)
    starts = [e for e in ev if isinstance(e, CallStart)]
    ends = [e for e in ev if isinstance(e, CallEnd)]
    return starts, ends


@pytest.mark.parametrize("snr", [35.0, 10.0])
def test_call_progress_tones_are_classified(snr):
    noise = -16.0 - snr
    # dial tone alone: a call, confirmed by the dial tone and never by 'speech'
    s, e = tone_run(line([synth.tone(synth.DIAL, 3 * RATE, RATE, -16.0)], noise_db=noise))
    assert [x.evidence for x in s] == ["dial"]
    # ringback alone: confirmed as ringback
    s, e = tone_run(line([synth.cadence(synth.RINGBACK, 1.0, 2.0, 6.0, RATE, -16.0)], noise_db=noise))
    assert [x.evidence for x in s] == ["ringback"]
    # busy and reorder end the call in progress, each by its own name
    talk = synth.speech_like(np.random.default_rng(2), 6.0, RATE, -16.0)
    for on, off, name in ((0.5, 0.5, "busy"), (0.3, 0.2, "reorder")):
        s, e = tone_run(line([talk, synth.cadence(synth.BUSY, on, off, 6.0, RATE, -16.0)], noise_db=noise))
        assert [x.reason for x in e] == [name]
        assert [x.evidence for x in s] == ["speech"]


def test_busy_tone_alone_never_starts_a_call():
    s, e = tone_run(line([synth.cadence(synth.BUSY, 0.5, 0.5, 20.0, RATE, -16.0)]))
    assert s == [] and e == []

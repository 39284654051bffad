"""Caller ID: FSK Bell 202 / V.23 (SDMF, MDMF) and DTMF, generated from the standards."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from scipy.signal import resample_poly

from dsp import callerid, synth
from dsp.segment import CallEnd, LineSegmenter, SegmentParams


def noisy(x, rate, snr_db, level_db, seed=1):
    rng = np.random.default_rng(seed)
    pad = np.zeros(rate, np.float32)
    y = np.concatenate([pad, x, pad])
    return y + rng.standard_normal(len(y)).astype(np.float32) * 10 ** ((level_db - snr_db) / 20)


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("std", ["bell202", "v23"])
@pytest.mark.parametrize("fmt", ["sdmf", "mdmf"])
def test_fsk_round_trip_at_10_db_snr(rate, std, fmt):
    msg = callerid.encode_sdmf("0212345678", "11221530") if fmt == "sdmf" else \
        callerid.encode_mdmf("01098765432", "11221530", "HONG GILDONG")
    cid = callerid.decode_fsk(noisy(callerid.fsk_signal(msg, rate, std, -18.0), rate, 10.0, -18.0), rate)
    assert cid is not None and cid.standard == std and cid.when == "11221530"
    assert cid.number == ("0212345678" if fmt == "sdmf" else "01098765432")
    assert cid.name == (None if fmt == "sdmf" else "HONG GILDONG")


def test_withheld_number_and_a_corrupt_message():
    cid = callerid.decode_fsk(callerid.fsk_signal(callerid.encode_mdmf(None, absent="P"), 8000), 8000)
    assert cid.number is None and cid.absent == "P"
    bad = bytearray(callerid.encode_sdmf("0212345678"))
    bad[5] ^= 0x01  # one bit flipped: the checksum refuses it
    assert callerid.parse_message(bytes(bad)) is None


def incoming(prefix, rate=8000, seed=2):
    rng = np.random.default_rng(seed)
    x = np.concatenate([np.zeros(rate, np.float32), prefix, np.zeros(2 * rate, np.float32), synth.click(rate),
                        synth.speech_like(rng, 15.0, rate, -20.0), np.zeros(14 * rate, np.float32)])
    x = synth.to_int16(x + synth.line_noise(rng, len(x), rate))
    seg = LineSegmenter(SegmentParams(rate=rate))
    ev = []
    for i in range(0, len(x), rate):
        ev += seg.process(x[i:i + rate], i)
    return [e for e in ev + seg.finish() if isinstance(e, CallEnd)]


@pytest.mark.parametrize("std", ["bell202", "v23"])
def test_the_segmenter_gives_the_incoming_call_its_fsk_caller_id(std):
    msg = callerid.encode_mdmf("0539876543", "03051200")
    [end] = incoming(callerid.fsk_signal(msg, 8000, std, -16.0))
    assert end.caller_id == "0539876543" and end.dialed is None


def test_dtmf_caller_id():
    rng = np.random.default_rng(4)
    [end] = incoming(synth.dtmf_string(callerid.dtmf_cid_digits("0212345678"), 8000, rng))
    assert end.caller_id == "0212345678" and end.dialed is None


def _multimon(x, mode):
    exe = shutil.which("multimon-ng")
    if exe is None:
        pytest.fail("multimon-ng is required (scripts/setup.sh --test installs it)")
    raw = synth.to_int16(resample_poly(x, 441, 160)).tobytes()  # multimon-ng reads 22050 Hz
    out = subprocess.run([exe, "-q", "-t", "raw", "-a", mode, "-"], input=raw, capture_output=True, timeout=30)
    return out.stdout.decode()


def test_generators_agree_with_an_independent_decoder():
    """multimon-ng (another implementation) reads our DTMF and V.23 MDMF signals."""
    rng = np.random.default_rng(5)
    x = np.concatenate([np.zeros(4000, np.float32), synth.dtmf_string("0123456789*#ABCD", 8000, rng),
                        np.zeros(4000, np.float32)])
    assert "".join(ln.split()[-1] for ln in _multimon(x, "DTMF").splitlines()) == "0123456789*#ABCD"
    msg = callerid.encode_mdmf("0212345678", "11221530", "KIM")
    x = np.concatenate([np.zeros(4000, np.float32), callerid.fsk_signal(msg, 8000, "v23"), np.zeros(4000, np.float32)])
    out = _multimon(x, "CLIPFSK")
    assert "CID=0212345678" in out and "DATE=11221530" in out and "CNT=KIM" in out


@pytest.mark.parametrize("chunk_s", [2.0, 4.0, 8.0])
def test_a_caller_id_right_after_the_last_calls_end_is_the_next_calls(chunk_s):
    """A call ends (the line's noise back at its idle floor) and the next call's caller ID arrives
    before the analysis has seen that end, in the same chunk: the number belongs to the next call.
    (At chunk_s 4 and 8 it was given to the call that had ended; this corpus line has it.)"""
    from dsp.segment import SegmentParams as P

    from .corpus import LineSpec, build_line, score, segment_line

    x, labels = build_line(LineSpec(seconds=1800.0, snr_db=20.0, companding="mulaw", seed=2025))
    sc = score(labels, segment_line(x, P(chunk_s=chunk_s), block=800), 8000)
    assert sc["caller_id"][0] == sc["caller_id"][1] and sc["caller_id"][1] >= 5
    assert sc["dialed"][0] == sc["dialed"][1]

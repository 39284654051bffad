"""`nokbox analyze`: JSON lines per call, any of 8/16/44.1/48 kHz, clear errors, nothing logged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import resample_poly

from dsp import callerid, synth

from .conftest import run_cli

RATE = 8000
GOLDEN = Path(__file__).parent / "golden" / "analyze.jsonl"


def golden_audio():
    """Two lines, fixed seed: an outgoing call ended by busy, then an incoming call with FSK caller ID
    ended by 12 s of silence; on line 1 two calls 3 s apart separated by a reorder tone."""
    rng = np.random.default_rng(20260301)
    n = 150 * RATE
    lines = []
    truth = []
    for ch in range(2):
        x = synth.line_noise(rng, n, RATE)
        t = 4 * RATE
        for k in range(2):
            outgoing = (ch + k) % 2 == 0
            parts = [synth.click(RATE)]
            number = synth.random_number(rng)
            hook = t  # the off-hook click (an incoming call's comes after its caller ID)
            if outgoing:
                parts += [synth.tone(synth.DIAL, RATE, RATE, -16.0), synth.dtmf_string(number, RATE, rng),
                          np.zeros(RATE // 2, np.float32), synth.cadence(synth.RINGBACK, 1.0, 2.0, 4.0, RATE, -20.0)]
            else:
                parts = [callerid.fsk_signal(callerid.encode_mdmf(number, "03011200"), RATE, "bell202", -18.0),
                         np.zeros(2 * RATE, np.float32)] + parts
                hook = t + len(parts[0]) + 2 * RATE
            parts.append(synth.speech_like(rng, 25.0, RATE, -20.0))
            parts.append(np.zeros(RATE // 2, np.float32))
            ending = ["busy", "silence"][k] if ch == 0 else ["reorder", "silence"][k]
            if ending != "silence":
                on, off = (0.5, 0.5) if ending == "busy" else (0.3, 0.2)
                parts.append(synth.cadence(synth.BUSY, on, off, 4.0, RATE, -18.0))
            parts.append(synth.click(RATE))
            call = np.concatenate(parts)
            x[t:t + len(call)] += call
            truth.append((ch, t / RATE, (t + len(call)) / RATE, number if outgoing else None,
                          None if outgoing else number, ending, hook / RATE))
            t += len(call) + (3 if ending != "silence" else 15) * RATE
        lines.append(synth.to_int16(x))
    return np.stack(lines, axis=1), truth


@pytest.fixture(scope="module")
def golden_wav(tmp_path_factory):
    x, truth = golden_audio()
    p = tmp_path_factory.mktemp("analyze") / "lines.wav"
    sf.write(str(p), x, RATE, subtype="PCM_16")
    return p, x, truth


def analyze(path, *extra):
    out = run_cli("analyze", str(path), *extra)
    return out, [json.loads(ln) for ln in out.stdout.splitlines()]


def test_golden_output_and_truth(golden_wav):
    path, _, truth = golden_wav
    out, calls = analyze(path)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # nothing logged, numbers least of all
    assert out.stdout == GOLDEN.read_text()
    assert len(calls) == len(truth)
    for c in calls:
        assert set(c) == {"channel", "start", "end", "detected", "dialed", "caller_id", "end_reason"}
        ch, t0, t1, dialed, cid, ending, hook = max((t for t in truth if t[0] == c["channel"]),
                                              key=lambda t: min(t[2], c["end"]) - max(t[1], c["start"]))
        assert c["start"] <= t0  # the whole call, first sign included
        # raised (the notice switched on) within a second of the off-hook, on its dial tone or its first
        # words (the onset stage), not after the 4 s chunk's analysis; never during the caller ID, which
        # comes while the line is still on-hook between rings
        assert hook < c["detected"] <= hook + 1.0
        assert c["dialed"] == dialed and c["caller_id"] == cid and c["end_reason"] == ending
        assert c["end"] >= t1 - 4.5  # at most the tail of a hang-up tone is left out


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_other_rates_give_the_same_calls(golden_wav, tmp_path, rate):
    path, x, _ = golden_wav
    y = resample_poly(x.astype(np.float64) / 32768.0, rate // np.gcd(rate, RATE), RATE // np.gcd(rate, RATE), axis=0)
    p = tmp_path / f"lines{rate}.wav"
    sf.write(str(p), y, rate, subtype="PCM_16")
    out, calls = analyze(p)
    assert out.returncode == 0, out.stderr
    _, ref = analyze(path)
    assert [(c["channel"], c["dialed"], c["caller_id"], c["end_reason"]) for c in calls] == \
        [(c["channel"], c["dialed"], c["caller_id"], c["end_reason"]) for c in ref]
    for a, b in zip(calls, ref):
        assert a["start"] == pytest.approx(b["start"], abs=0.1) and a["end"] == pytest.approx(b["end"], abs=0.6)


def test_errors_exit_non_zero_with_one_line(tmp_path):
    out = run_cli("analyze", str(tmp_path / "missing.wav"))
    assert out.returncode != 0 and "no such file" in out.stderr and len(out.stderr.splitlines()) == 1
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio at all" * 100)
    out = run_cli("analyze", str(junk))
    assert out.returncode != 0 and "not an audio file" in out.stderr and len(out.stderr.splitlines()) == 1
    flac = tmp_path / "a.flac"
    sf.write(str(flac), np.zeros(8000, np.int16), RATE, format="FLAC")
    out = run_cli("analyze", str(flac))
    assert out.returncode != 0 and "unsupported format" in out.stderr and len(out.stderr.splitlines()) == 1
    odd = tmp_path / "odd.wav"
    sf.write(str(odd), np.zeros(22050, np.int16), 22050)
    out = run_cli("analyze", str(odd))
    assert out.returncode != 0 and "unsupported sample rate" in out.stderr and len(out.stderr.splitlines()) == 1


def test_config_settings_reach_analyze(golden_wav, tmp_path):
    path, _, _ = golden_wav
    cfg = tmp_path / "nokbox.toml"
    cfg.write_text("[segment.tones.busy]\nfreqs = [425.0]\non_s = 0.5\noff_s = 0.5\n")  # a European busy tone
    out, calls = analyze(path, "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "busy" not in [c["end_reason"] for c in calls]  # 480+620 is no longer the busy tone

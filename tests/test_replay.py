"""End to end over a multi-channel WAV: calls at known times come out as encrypted files
that the stock age tool opens, holding the line's own samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from firmware.index import CallIndex

from .conftest import decrypt_audio, place_calls, run_cli

RATE = 8000
PLAN = [
    [(5.0, 20.0), (80.0, 15.0)],
    [(12.0, 40.0)],
    [],
    [(3.0, 8.0), (45.0, 10.0), (100.0, 12.0)],
]


@pytest.mark.parametrize("codec", ["wav", "flac"])
def test_replay_records_each_call_whole_and_decryptable(tmp_path, box, age_tool, codec):
    data, ident = box
    audio, labels = place_calls(RATE, 140.0, PLAN)
    wav = tmp_path / "lines.wav"
    sf.write(wav, audio, RATE, subtype="PCM_16")

    cfg = tmp_path / "lossless.toml"
    cfg.write_text(f'[storage]\ncodec = "{codec}"\n')
    r = run_cli("replay", str(wav), "--data", str(data), "--config", str(cfg), "--start", "2026-03-03T09:00:00+09:00")
    assert r.returncode == 0, r.stderr
    assert "0 sample(s) lost" in r.stdout

    r = run_cli("calls", "--data", str(data), "--json")
    assert r.returncode == 0, r.stderr
    calls = [json.loads(line) for line in r.stdout.splitlines()]
    per_line = {ln: [c for c in calls if c["line"] == ln] for ln in range(len(PLAN))}
    assert {ln: len(cs) for ln, cs in per_line.items()} == {ln: len(p) for ln, p in enumerate(PLAN)}

    for ln, cs in per_line.items():
        cs.sort(key=lambda c: c["start"])
        for c, (start, first, last, end, dialed) in zip(cs, labels[ln]):
            assert c["state"] == "finished" and c["codec"] == codec and c["file"].endswith(f".{codec}.age")
            assert set(c) >= {"id", "line", "start", "end", "duration", "file", "state"}
            assert dialed not in json.dumps(c)  # no personal fields in the listing
            # timing: KST display, UTC storage, duration from samples
            assert c["start_local"].endswith("+09:00") and c["start"].endswith("Z")
            t0 = (np.datetime64(c["start"][:-1]) - np.datetime64("2026-03-03T00:00:00")) / np.timedelta64(1, "ms")
            call_start = int(round(t0 / 1000 * RATE))
            # pre-roll: at least 1 s before the off-hook click, and the whole call is inside
            assert call_start <= start - RATE, (c, start)
            y, rate = decrypt_audio(age_tool, ident, Path(c["file"]))
            assert rate == RATE
            assert len(y) == round(c["duration"] * RATE)
            call_end = call_start + len(y)
            assert call_end >= last, "speech cut off at the end"
            # the decrypted audio is the input over the call's span
            ref = audio[call_start:call_end, ln]
            assert len(ref) == len(y)
            corr = np.corrcoef(ref.astype(float), y.astype(float))[0, 1]
            assert corr > 0.99
            assert np.array_equal(ref, y)


def test_replay_twice_appends_and_files_are_not_readable_without_the_identity(tmp_path, box, age_tool):
    data, ident = box
    audio, _ = place_calls(RATE, 30.0, [[(3.0, 10.0)]])
    wav = tmp_path / "one.wav"
    sf.write(wav, audio, RATE, subtype="PCM_16")
    for _ in range(2):
        r = run_cli("replay", str(wav), "--data", str(data))
        assert r.returncode == 0, r.stderr
    idx = CallIndex(data / "index.sqlite")
    rows = idx.calls()
    idx.close()
    assert len(rows) == 2
    for row in rows:
        blob = (data / row["file"]).read_bytes()
        assert blob.startswith(b"age-encryption.org/v1\n-> X25519 ")
        assert b"RIFF" not in blob and b"WAVE" not in blob
    # no plain audio anywhere under the data directory
    for p in data.rglob("*"):
        if p.is_file():
            assert b"WAVEfmt" not in p.read_bytes(), p


def test_replay_errors(tmp_path, box):
    data, _ = box
    r = run_cli("replay", str(tmp_path / "missing.wav"), "--data", str(data))
    assert r.returncode != 0 and "no such file" in r.stderr
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio")
    r = run_cli("replay", str(junk), "--data", str(data))
    assert r.returncode != 0 and "not a readable audio file" in r.stderr
    sf.write(tmp_path / "cd.wav", np.zeros((4410, 2), np.int16), 44100)
    r = run_cli("replay", str(tmp_path / "cd.wav"), "--data", str(data))
    assert r.returncode != 0 and "44100 Hz" in r.stderr
    sf.write(tmp_path / "ok.wav", np.zeros((800, 1), np.int16), 8000)
    r = run_cli("replay", str(tmp_path / "ok.wav"), "--data", str(tmp_path / "uninitialised"))
    assert r.returncode != 0 and "not an initialised nokbox data directory" in r.stderr

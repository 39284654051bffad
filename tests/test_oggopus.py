"""The Ogg Opus writer (libopus + libogg): streams that the reference tools from opus-tools
accept and decode to exactly the recorded length, through the real call writer and stock age."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from dsp.synth import speech_like, to_int16
from firmware.vault.callfile import CallFile
from firmware.errors import VaultError
from firmware.vault.oggopus import OggOpusWriter

from .conftest import age_decrypt
from .test_vault_crash import keys  # noqa: F401  (the module's key pair fixture)

RATE = 8000


@pytest.fixture(scope="module")
def opus_tools():
    tools = {t: shutil.which(t) for t in ("opusinfo", "opusdec")}
    if None in tools.values():
        pytest.fail("opus-tools is required (Debian opus-tools; scripts/setup.sh --test installs it)")
    return tools


def _call(tmp_path, keys, age_tool, pcm, block=800, **kw):
    final = tmp_path / "00000001.opus.age"
    cf = CallFile(final, [keys["rec_pub"]], RATE, keys["dev_pub"], codec="opus", **kw)
    for s in range(0, len(pcm), block):
        cf.write(pcm[s:s + block])
    cf.close()
    ogg = tmp_path / "call.opus"
    ogg.write_bytes(age_decrypt(age_tool, keys["dir"] / "records.txt", final))
    return ogg


@pytest.mark.parametrize("seconds", [0.0, 0.013, 0.02, 3.3, 75.0])
def test_streams_pass_opusinfo_and_decode_to_the_recorded_length(tmp_path, keys, age_tool, opus_tools, seconds):
    pcm = to_int16(speech_like(np.random.default_rng(5), max(seconds, 0.1), RATE, -18.0))[: int(seconds * RATE)]
    ogg = _call(tmp_path, keys, age_tool, pcm)
    info = subprocess.run([opus_tools["opusinfo"], str(ogg)], capture_output=True, text=True)
    assert info.returncode == 0, info.stdout + info.stderr
    report = info.stdout + info.stderr
    assert "WARNING" not in report and "ERROR" not in report.upper().replace("ERRORS", ""), report
    assert "Original sample rate: 8000" in report
    # opus-tools' decoder honours pre-skip and the end trim: exactly the samples written
    out = tmp_path / "dec.wav"
    dec = subprocess.run([opus_tools["opusdec"], "--quiet", "--rate", str(RATE), str(ogg), str(out)],
                         capture_output=True, text=True)
    assert dec.returncode == 0, dec.stderr
    y, sr = sf.read(out, dtype="int16")
    assert sr == RATE and len(y) == len(pcm)
    # and libsndfile (what the box's own tools use) agrees
    z, _ = sf.read(io.BytesIO(ogg.read_bytes()), dtype="int16")
    assert len(z) == len(pcm)
    if seconds >= 3:
        n = len(pcm) - 200
        assert np.corrcoef(y[:n].astype(float), pcm[:n].astype(float))[0, 1] > 0.8


def test_the_bit_rate_is_applied(tmp_path, keys, age_tool):
    pcm = to_int16(speech_like(np.random.default_rng(2), 60.0, RATE, -18.0))
    sizes = {}
    for kbps in (12.0, 24.0):
        sizes[kbps] = _call(tmp_path, keys, age_tool, pcm, opus_kbps=kbps).stat().st_size
    # VBR spends less in the pauses, so the rate stays under the target but follows it
    assert sizes[24.0] > 1.4 * sizes[12.0], sizes
    assert all(size * 8 / 60.0 / 1000 < 1.1 * kbps for kbps, size in sizes.items()), sizes
    with pytest.raises(VaultError):
        OggOpusWriter(io.BytesIO(), 44100)


def _last_granule(stream: bytes) -> int:
    """The granule position of the last whole Ogg page in ``stream``."""
    pos, last = 0, -1
    while pos + 27 <= len(stream) and stream[pos:pos + 4] == b"OggS":
        nseg = stream[pos + 26]
        end = pos + 27 + nseg + sum(stream[pos + 27:pos + 27 + nseg])
        if end > len(stream):
            break
        last = int.from_bytes(stream[pos + 6:pos + 14], "little", signed=True)
        pos = end
    assert pos == len(stream), "the stream does not end on a page boundary"
    return last


def test_a_page_ends_at_every_checkpoint(tmp_path, keys):
    """The crash journal can use only whole pages: at every checkpoint the stream so far ends
    with a page that holds all the audio encoded (all but the 20 ms frame being assembled)."""
    pcm = to_int16(speech_like(np.random.default_rng(3), 10.0, RATE, -18.0))
    final = tmp_path / "00000002.opus.age"
    cf = CallFile(final, [keys["rec_pub"]], RATE, keys["dev_pub"], codec="opus", checkpoint_s=0.3)
    checks = 0
    for s in range(0, len(pcm), 240):
        before = cf._ckpt_frames
        cf.write(pcm[s:s + 240])
        if cf._ckpt_frames != before:  # this write checkpointed
            stream = bytes(cf._first)  # chunk 0 holds the first 64 KiB of plaintext: all of it here
            granule = _last_granule(stream)
            preskip = int.from_bytes(stream[28 + 10:28 + 12], "little")
            assert granule >= (cf.frames - RATE // 50) * (48000 // RATE) + preskip
            checks += 1
    assert checks >= 30
    cf.close()

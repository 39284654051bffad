"""Decrypted audio is decoded without write+execute memory: the keeper (and the page) run with
MemoryDenyWriteExecute=yes, under which soundfile's reads of a Python file object fail (cffi makes
its callbacks in W+X pages), as the boot test found when the recorder recovered a call. Here a
child process switches on the kernel's own MDWE (prctl PR_SET_MDWE, what systemd's setting sets
through seccomp) and decodes through the paths the services use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import ctypes, io, sys
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(77)
import soundfile as sf
from firmware.vault import callfile
from firmware.vault.keeper import _Decoder
flac, opus = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
if sys.argv[3] == "bytesio":  # the old way, to show the test can fail
    sf.SoundFile(io.BytesIO(flac)).read(10)
    sys.exit(0)
d = _Decoder(flac)
pcm = d.pcm_bytes(0, 2 * 8000)
assert d.frames == 16000 and len(pcm) == 16000 and any(pcm), d.frames
data, frames = callfile._flac_prefix(flac[: len(flac) * 2 // 3], 8000)   # an interrupted FLAC stream
assert data[:4] == b"fLaC" and 0 < frames < 16000, frames
kept, ogg_frames = callfile._decodable("opus", opus[: len(opus) * 2 // 3], 8000)  # whole Ogg pages of a cut
assert kept[:4] == b"OggS" and 0 < ogg_frames < 16000, ogg_frames
print("ok", d.frames, frames, ogg_frames)
"""


def _mdwe_available() -> bool:
    r = subprocess.run([sys.executable, "-c", "import ctypes,sys; sys.exit(ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0)"])
    return r.returncode == 0


@pytest.fixture
def audio(tmp_path):
    t = np.arange(16000) / 8000
    x = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    flac, opus = tmp_path / "a.flac", tmp_path / "a.opus"
    sf.write(flac, x, 8000, format="FLAC", subtype="PCM_16")
    sf.write(opus, x, 8000, format="OGG", subtype="OPUS")
    return flac, opus


@pytest.mark.skipif(not _mdwe_available(), reason="this kernel has no PR_SET_MDWE (Linux >= 6.3)")
def test_decoding_needs_no_write_execute_memory(audio):
    flac, opus = audio
    run = lambda mode: subprocess.run([sys.executable, "-c", CHILD, str(flac), str(opus), mode], cwd=ROOT,
                                      capture_output=True, text=True)
    old = run("bytesio")
    assert old.returncode != 0 and "write+execute" in old.stderr  # what a Python file object would do
    new = run("memfd")
    assert new.returncode == 0, new.stderr[-3000:]
    assert new.stdout.startswith("ok 16000")

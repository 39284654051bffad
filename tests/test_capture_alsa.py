"""The real pyalsaaudio capture path, fed known PCM through ALSA's ``file`` plugin (``infile``)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from firmware.recording.capture import CaptureReader
from firmware.errors import DeviceError
from firmware.hal.audio import AlsaSource
from firmware.hal.clock import Clock
from firmware.recording.ring import LineRings

pytestmark = pytest.mark.alsa

ALSA_CONF = Path("/usr/share/alsa/alsa.conf")
PCMS = [f"nbfile{i}" for i in range(12)]


@pytest.fixture(scope="module")
def alsa_files(tmp_path_factory):
    """A test-only ALSA config: PCMs whose capture data comes from files we write."""
    assert ALSA_CONF.exists(), "libasound2 is required (scripts/setup.sh installs it)"
    d = tmp_path_factory.mktemp("alsa")
    conf = d / "asound.conf"
    text = ""
    for name in PCMS + ["nblate"]:
        text += (f'pcm.{name} {{\n  type file\n  slave.pcm "null"\n  file "/dev/null"\n'
                 f'  infile "{d / (name + ".raw")}"\n  format "raw"\n}}\n')
    conf.write_text(text)
    old = os.environ.get("ALSA_CONFIG_PATH")
    os.environ["ALSA_CONFIG_PATH"] = f"{ALSA_CONF}:{conf}"
    names = iter(PCMS)
    yield d, names
    if old is None:
        os.environ.pop("ALSA_CONFIG_PATH", None)
    else:
        os.environ["ALSA_CONFIG_PATH"] = old


def capture(source: AlsaSource, frames: int, channels: int) -> tuple[LineRings, CaptureReader]:
    """Run the real capture reader until ``frames`` samples per line are in the rings."""
    # A blocking ring that is never released holds exactly the first frames and then
    # pauses the reader, so nothing the test looks at can be overwritten.
    rings = LineRings(channels, frames, source.rate, margin=0, blocking=True)
    reader = CaptureReader(source, rings, list(range(channels)), Clock())
    reader.start()
    deadline = time.monotonic() + 20
    while rings.write_pos < frames and time.monotonic() < deadline and reader.is_alive():
        time.sleep(0.005)
    reader.stop()
    reader.join(5)
    return rings, reader


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("channels", [1, 2, 8])
def test_samples_reach_the_rings_bit_identical(alsa_files, rate, channels):
    d, names = alsa_files
    name = next(names)
    period = rate // 50
    frames = period * 75  # 1.5 s, a whole number of periods
    rng = np.random.default_rng(rate + channels)
    pcm = rng.integers(-32768, 32768, size=(frames, channels), dtype=np.int16)
    pcm[0] = 32767  # extremes survive
    pcm[1] = -32768
    (d / f"{name}.raw").write_bytes(pcm.astype("<i2").tobytes())
    src = AlsaSource(name, rate, channels, period, periods=4)
    rings, reader = capture(src, frames, channels)
    assert reader.state in ("stopped", "running"), reader.last_error
    assert rings.write_pos >= frames
    for ch in range(channels):
        x, start = rings.read(ch, 0, frames)
        assert start == 0
        assert np.array_equal(x, pcm[:, ch]), f"channel {ch} differs"
    assert rings.lost.sum() == 0
    assert reader.xruns == 0


def test_wrong_device_is_a_clear_error(alsa_files):
    with pytest.raises(DeviceError, match="cannot open ALSA capture device 'no_such_pcm'"):
        AlsaSource("no_such_pcm", 8000, 1, 160).open()


def test_device_that_appears_later_is_picked_up(alsa_files):
    d, _ = alsa_files
    raw = d / "nblate.raw"
    frames = 160 * 50
    pcm = (np.arange(frames * 2, dtype=np.int64) % 20000 - 10000).astype(np.int16).reshape(frames, 2)
    src = AlsaSource("nblate", 8000, 2, 160)
    rings = LineRings(2, frames, 8000, margin=0, blocking=True)
    reader = CaptureReader(src, rings, [0, 1], Clock(), reopen_max_s=0.5)
    reader.start()
    time.sleep(0.6)  # unplugged: the reader keeps trying with back-off
    assert reader.open_failures >= 2
    assert rings.write_pos == 0
    assert "nblate" in reader.last_error
    raw.write_bytes(pcm.astype("<i2").tobytes())  # plugged in
    deadline = time.monotonic() + 10
    while rings.write_pos < frames and time.monotonic() < deadline:
        time.sleep(0.01)
    reader.stop()
    reader.join(5)
    x, _ = rings.read(1, 0, frames)
    assert np.array_equal(x, pcm[:, 1])
    assert reader.state == "stopped"
    events = []
    while not reader.events.empty():
        events.append(reader.events.get())
    assert [e[0] for e in events].count("open_failed") == reader.open_failures

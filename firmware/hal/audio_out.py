"""Audio outputs for the recording notice: ALSA playback (pyalsaaudio) and a simulated output.

``play`` blocks until the announcement has been handed to the device and calls
``on_first`` right after the first period was accepted (the moment the first notice
sample leaves the box).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np

from ..errors import DeviceError


class AudioSink:
    """Interface of a notice output."""

    name = "sink"

    def __init__(self, rate: int, period_frames: int) -> None:
        self.rate = rate
        self.period_frames = period_frames

    def play(self, samples: np.ndarray, on_first: Callable[[], None] | None = None) -> None:
        raise NotImplementedError


class AlsaSink(AudioSink):
    """An ALSA playback PCM, opened for each announcement (another program may hold it between)."""

    name = "alsa"

    def __init__(self, device: str, rate: int = 8000, period_frames: int = 160) -> None:
        super().__init__(rate, period_frames)
        self.device = device

    def play(self, samples: np.ndarray, on_first: Callable[[], None] | None = None) -> None:
        import alsaaudio

        try:
            pcm = alsaaudio.PCM(type=alsaaudio.PCM_PLAYBACK, mode=alsaaudio.PCM_NORMAL, device=self.device,
                                rate=self.rate, channels=1, format=alsaaudio.PCM_FORMAT_S16_LE,
                                periodsize=self.period_frames, periods=4)
        except alsaaudio.ALSAAudioError as exc:
            raise DeviceError(f"notice output {self.device!r} cannot be opened: {exc}") from None
        try:
            data = np.ascontiguousarray(samples, dtype="<i2")
            n = self.period_frames
            for i in range(0, len(data), n):
                block = data[i:i + n]
                if len(block) < n:
                    block = np.concatenate((block, np.zeros(n - len(block), dtype="<i2")))
                try:
                    pcm.write(block.tobytes())
                except alsaaudio.ALSAAudioError as exc:
                    raise DeviceError(f"notice output {self.device!r} failed: {exc}") from None
                if i == 0 and on_first is not None:
                    on_first()
            try:
                pcm.drain()
            except alsaaudio.ALSAAudioError:
                pass
        finally:
            pcm.close()


class SimulatedSink(AudioSink):
    """The simulated box's output: takes real time (or ``speed`` times faster) and keeps a history."""

    name = "simulated"

    def __init__(self, rate: int = 8000, period_frames: int = 160, speed: float = 1.0) -> None:
        super().__init__(rate, period_frames)
        self.speed = speed
        self.history: list[tuple[float, int]] = []  # (monotonic time of first sample, samples)
        self._lock = threading.Lock()  # guards history

    def play(self, samples: np.ndarray, on_first: Callable[[], None] | None = None) -> None:
        t = time.monotonic()
        with self._lock:
            self.history.append((t, len(samples)))
        if on_first is not None:
            on_first()
        if self.speed > 0:
            time.sleep(len(samples) / self.rate / self.speed)


def make_sink(device: str | None, rate: int, simulated_speed: float = 1.0) -> AudioSink:
    """ALSA playback on ``device``, or the simulated output when no device is configured."""
    if device:
        return AlsaSink(device, rate)
    return SimulatedSink(rate, speed=simulated_speed)

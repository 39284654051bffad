"""Audio sources: ALSA capture (pyalsaaudio), WAV replay, simulated lines, and a scripted fake.

Every source delivers interleaved S16 periods as a (frames, channels) int16 array
that stays valid until the next ``read``. ``read`` raises ``CaptureOverrun`` after
an xrun the source recovered from, ``DeviceLost`` when the device went away and
``EndOfStream`` when a finite source is exhausted.
"""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path

import numpy as np

from ..errors import CaptureOverrun, DeviceError, DeviceLost, EndOfStream
from .clock import Clock, SampleClock


class AudioSource:
    """Interface of every capture backend."""

    name = "source"
    realtime = True  # a live device: the capture path must never wait for consumers

    def __init__(self, rate: int, channels: int, period_frames: int) -> None:
        self.rate = rate
        self.channels = channels
        self.period_frames = period_frames

    def open(self) -> None:
        """Open the device; raises DeviceError when it is not there."""

    def read(self) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device; safe to call twice."""

    def describe(self) -> dict:
        return {"backend": self.name, "rate": self.rate, "channels": self.channels,
                "period_frames": self.period_frames}


class AlsaSource(AudioSource):
    """An ALSA capture PCM read in blocking interleaved S16_LE periods."""

    name = "alsa"

    def __init__(self, device: str, rate: int, channels: int, period_frames: int, periods: int = 4) -> None:
        super().__init__(rate, channels, period_frames)
        self.device = device
        self.periods = periods
        self._pcm = None
        self._shape = (0, channels)

    def open(self) -> None:
        import alsaaudio  # imported here: nothing touches ALSA until a source is opened

        try:
            pcm = alsaaudio.PCM(
                type=alsaaudio.PCM_CAPTURE, mode=alsaaudio.PCM_NORMAL, device=self.device,
                rate=self.rate, channels=self.channels, format=alsaaudio.PCM_FORMAT_S16_LE,
                periodsize=self.period_frames, periods=self.periods,
            )
        except alsaaudio.ALSAAudioError as exc:
            raise DeviceError(f"cannot open ALSA capture device {self.device!r}: {exc}") from None
        info = pcm.info()
        if info.get("rate") != self.rate or info.get("channels") != self.channels:
            pcm.close()
            raise DeviceError(
                f"ALSA device {self.device!r} gives {info.get('channels')} ch at {info.get('rate')} Hz, "
                f"configured {self.channels} ch at {self.rate} Hz"
            )
        self.period_frames = int(info.get("period_size") or self.period_frames)
        self._pcm = pcm

    def read(self) -> np.ndarray:
        import alsaaudio

        pcm = self._pcm
        if pcm is None:
            raise DeviceLost("ALSA device is not open")
        try:
            n, data = pcm.read()
        except alsaaudio.ALSAAudioError as exc:
            raise DeviceLost(f"ALSA read failed: {exc}") from None
        if n == -errno.EPIPE:
            raise CaptureOverrun("ALSA overrun (xrun)")
        if n < 0:
            raise DeviceLost(f"ALSA read error {n}")
        return np.frombuffer(data, dtype="<i2", count=n * self.channels).reshape(n, self.channels)

    def close(self) -> None:
        pcm, self._pcm = self._pcm, None
        if pcm is not None:
            try:
                pcm.close()
            except Exception:  # noqa: BLE001 - the device may already be gone
                pass

    def describe(self) -> dict:
        return super().describe() | {"device": self.device}


class WavSource(AudioSource):
    """A multi-channel WAV (one channel per line) replayed as fast as it is consumed."""

    name = "wav"
    realtime = False

    def __init__(self, path: str | Path, period_ms: int = 200, start_wall: float | None = None) -> None:
        import soundfile as sf

        self.path = Path(path)
        try:
            info = sf.info(str(self.path))
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise DeviceError(f"{self.path}: not a readable audio file ({exc})") from None
        if info.samplerate not in (8000, 16000):
            raise DeviceError(f"{self.path}: {info.samplerate} Hz; the recorder runs at 8000 or 16000 Hz")
        super().__init__(info.samplerate, info.channels, info.samplerate * period_ms // 1000)
        self.clock = SampleClock(time.time() if start_wall is None else start_wall, info.samplerate)
        self._snd = None
        self._buf = np.zeros((self.period_frames, info.channels), dtype=np.int16)

    def open(self) -> None:
        import soundfile as sf

        if self._snd is None:
            try:
                self._snd = sf.SoundFile(str(self.path))
            except (sf.LibsndfileError, RuntimeError, OSError) as exc:
                raise DeviceError(f"{self.path}: cannot open: {exc}") from None

    def read(self) -> np.ndarray:
        if self._snd is None:
            raise DeviceLost("replay file is not open")
        got = self._snd.read(self.period_frames, dtype="int16", always_2d=True, out=self._buf)
        if len(got) == 0:
            raise EndOfStream(str(self.path))
        self.clock.advance_frames(len(got))
        return got

    def close(self) -> None:
        snd, self._snd = self._snd, None
        if snd is not None:
            snd.close()

    def describe(self) -> dict:
        return super().describe() | {"file": self.path.name}


class SimulatedSource(AudioSource):
    """Built-in simulated lines: idle line noise and calls with dial tone, DTMF, talk and busy tone.

    Paced to real time like a sound card when ``realtime``; otherwise as fast as read.
    """

    name = "simulated"

    def __init__(self, rate: int, channels: int, period_frames: int, seed: int = 1,
                 realtime: bool = True, clock: Clock | None = None, **traffic) -> None:
        super().__init__(rate, channels, period_frames)
        from dsp.synth import LineTraffic

        self.realtime = realtime
        self.clock = clock or Clock()
        self.lines = [LineTraffic(rate, np.random.default_rng([seed, ch]), **traffic) for ch in range(channels)]
        self._render = max(period_frames, rate // 2)  # render half a second at a time
        self._pending = np.zeros((0, channels), dtype=np.int16)
        self._pos = 0
        self._out = np.zeros((period_frames, channels), dtype=np.int16)
        self._t0: float | None = None
        self._delivered = 0
        self._stop = threading.Event()

    def open(self) -> None:
        self._t0 = None
        self._delivered = 0

    def _fill(self) -> None:
        from dsp.synth import to_int16

        block = np.empty((self._render, self.channels), dtype=np.int16)
        for ch, line in enumerate(self.lines):
            block[:, ch] = to_int16(line.render(self._render))
        self._pending = block
        self._pos = 0

    def read(self) -> np.ndarray:
        n = self.period_frames
        if self.realtime:
            now = self.clock.monotonic()
            if self._t0 is None:
                self._t0 = now
            due = self._t0 + (self._delivered + n) / self.rate
            if due > now:
                self.clock.sleep(due - now)
        out = self._out
        i = 0
        while i < n:
            if self._pos >= len(self._pending):
                self._fill()
            take = min(n - i, len(self._pending) - self._pos)
            out[i:i + take] = self._pending[self._pos:self._pos + take]
            self._pos += take
            i += take
        self._delivered += n
        return out


class ArraySource(AudioSource):
    """Fake backend: plays a given (frames, channels) array and fails on a script.

    ``lose_at``: frame positions at which the device vanishes (once each);
    ``fail_opens``: how many opens fail after each loss; ``xrun_at``: frame positions
    at which one overrun is reported. ``history`` records what happened, in order.
    """

    name = "array"

    def __init__(self, audio: np.ndarray, rate: int, period_frames: int, realtime: bool = False,
                 lose_at: tuple[int, ...] = (), fail_opens: int = 0, xrun_at: tuple[int, ...] = (),
                 loop: bool = False, pace: float | None = None) -> None:
        super().__init__(rate, audio.shape[1], period_frames)
        self.audio = audio
        self.realtime = realtime
        self.pace = pace  # deliver at ``pace`` times real time, like a sound card would
        self._t0: float | None = None
        self._delivered = 0
        self.lose_at = sorted(lose_at)
        self.xrun_at = sorted(xrun_at)
        self.fail_opens = fail_opens
        self.loop = loop
        self._failures_left = 0
        self.pos = 0
        self.is_open = False
        self.history: list[tuple[str, int]] = []

    def open(self) -> None:
        if self._failures_left > 0:
            self._failures_left -= 1
            self.history.append(("open-failed", self.pos))
            raise DeviceError("fake device is unplugged")
        self.is_open = True
        self.history.append(("open", self.pos))

    def read(self) -> np.ndarray:
        if not self.is_open:
            raise DeviceLost("fake device is not open")
        if self.lose_at and self.pos >= self.lose_at[0]:
            self.lose_at.pop(0)
            self.is_open = False
            self._failures_left = self.fail_opens
            self.history.append(("lost", self.pos))
            raise DeviceLost("fake device unplugged")
        if self.xrun_at and self.pos >= self.xrun_at[0]:
            self.xrun_at.pop(0)
            self.history.append(("xrun", self.pos))
            raise CaptureOverrun("fake overrun")
        if self.pos >= len(self.audio):
            if not self.loop:
                raise EndOfStream("fake source exhausted")
            self.pos = 0
        n = min(self.period_frames, len(self.audio) - self.pos)
        if self.pace:
            now = time.monotonic()
            if self._t0 is None:
                self._t0 = now
            due = self._t0 + (self._delivered + n) / (self.rate * self.pace)
            if due > now:
                time.sleep(due - now)
            self._delivered += n
        out = self.audio[self.pos:self.pos + n]
        self.pos += n
        return out

    def close(self) -> None:
        if self.is_open:
            self.history.append(("close", self.pos))
        self.is_open = False

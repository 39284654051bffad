"""A line the recorder captures through real ALSA: the ``file`` PCM plugin reads its ``infile``, a FIFO
this module writes in real time (20 ms at a time, paced by the clock, as a sound card delivers).

Used by tests/test_watchdog.py, tests/test_boot.py (the FIFO inside a booted container) and
benchmarks/web.py. ``FifoLine`` plays idle line noise, or audio queued with ``play``; clearing
``flowing`` makes the capture read hang inside ALSA (the writer keeps the FIFO open and writes
nothing); a reader that closes the FIFO (the recorder restarting) is waited for again.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from pathlib import Path

import numpy as np


def pcm_conf(name: str, fifo: Path | str, channels: int | None = None) -> str:
    """An ALSA config defining PCM ``name`` that captures raw S16_LE from ``fifo``."""
    return (f'pcm.{name} {{\n  type file\n  slave.pcm "null"\n  file "/dev/null"\n'
            f'  infile "{fifo}"\n  format "raw"\n}}\n')


class FifoLine:
    CHUNK = 160  # frames per write: 20 ms at 8 kHz

    def __init__(self, fifo: Path, channels: int = 1, rate: int = 8000, *, noise_rms: float = 20.0,
                 seed: int = 3) -> None:
        self.path, self.channels, self.rate = Path(fifo), channels, rate
        if not self.path.exists():
            os.mkfifo(self.path)
            os.chmod(self.path, 0o666)  # the reader may be another user (a service in a container)
        rng = np.random.default_rng(seed)
        self.noise = rng.normal(0, noise_rms, (50, self.CHUNK, channels)).astype(np.int16)  # an idle line
        self.flowing = threading.Event()
        self.flowing.set()
        self.stop = threading.Event()
        self.opens = 0  # how many times a reader opened the FIFO
        self.written = 0  # frames written since the start
        self._queue: collections.deque[np.ndarray] = collections.deque()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="fifo-line", daemon=True)

    # -- what is played ---------------------------------------------------------------------
    def play(self, x: np.ndarray) -> float:
        """Queue int16 audio ((n,) for every channel alike, or (n, channels)); returns its seconds."""
        x = np.asarray(x, np.int16)
        if x.ndim == 1:
            x = np.repeat(x[:, None], self.channels, axis=1)
        with self._lock:
            for i in range(0, len(x), self.CHUNK):
                part = x[i:i + self.CHUNK]
                if len(part) < self.CHUNK:
                    part = np.concatenate([part, self.noise[0][:self.CHUNK - len(part)]])
                self._queue.append(part)
        return len(x) / self.rate

    def queued_s(self) -> float:
        with self._lock:
            return len(self._queue) * self.CHUNK / self.rate

    def next_chunk(self, n: int) -> np.ndarray:
        """The CHUNK frames to write after ``n`` frames: the queue's next, else idle noise."""
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        return self.noise[(n // self.CHUNK) % len(self.noise)]

    # -- the writer -------------------------------------------------------------------------
    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY)  # waits for a reader (the recorder opening its device)
            except OSError:
                return
            self.opens += 1
            try:
                t0, n = time.monotonic(), 0
                while not self.stop.is_set():
                    if not self.flowing.is_set():  # a hung device: the reader's read blocks
                        self.flowing.wait(0.1)
                        t0, n = time.monotonic(), 0
                        continue
                    os.write(fd, self.next_chunk(self.written).tobytes())
                    n += self.CHUNK
                    self.written += self.CHUNK
                    time.sleep(max(0.0, t0 + n / self.rate - time.monotonic()))
            except BrokenPipeError:  # the reader closed its device (reopening it, or stopping)
                pass
            finally:
                os.close(fd)

    def __enter__(self) -> "FifoLine":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.stop.set()
        self.flowing.set()
        try:  # a writer still waiting in open() for a reader
            os.close(os.open(self.path, os.O_RDONLY | os.O_NONBLOCK))
        except OSError:
            pass
        self.thread.join(5.0)


def call_audio(seconds: float, rate: int = 8000, *, seed: int = 1, talk_dbfs: float = -22.0,
               idle_dbfs: float = -62.0, step_db: float = 10.0) -> np.ndarray:
    """A call as a line delivers it (int16): the off-hook click, the off-hook noise step, ``seconds`` of
    speech from the corpus (real recorded prompts) with short pauses, the on-hook click. Played between
    idle noise it is one call for the segmenter."""
    from dsp import synth
    from tests.corpus import _norm, english

    rng = np.random.default_rng(seed)
    pool = english(rate)
    parts = [synth.click(rate, 0.3), np.zeros(int(0.4 * rate), np.float32)]
    n = sum(len(p) for p in parts)
    while n < seconds * rate:
        x = _norm(pool[int(rng.integers(len(pool)))], talk_dbfs - (0 if len(parts) % 4 == 2 else 5))
        gap = np.zeros(int(rng.uniform(0.3, 1.0) * rate), np.float32)
        parts += [x, gap]
        n += len(x) + len(gap)
    parts.append(synth.click(rate, 0.25))
    sig = np.concatenate(parts)
    noise = synth.line_noise(rng, len(sig), rate, 0, hum_dbfs=idle_dbfs - 3, hiss_dbfs=idle_dbfs)
    return synth.to_int16(sig + noise * 10 ** (step_db / 20))

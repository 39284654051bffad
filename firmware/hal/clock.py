"""Clock interface: wall time (UTC seconds since the epoch) and a monotonic reading."""

from __future__ import annotations

import threading
import time


class Clock:
    """The system clock."""

    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        """Sleep; returns True early if ``stop`` is set."""
        if stop is None:
            time.sleep(seconds)
            return False
        return stop.wait(seconds)


class FakeClock(Clock):
    """A clock tests set and step by hand (e.g. an NTP step on a box without RTC)."""

    def __init__(self, wall: float = 1_700_000_000.0, mono: float = 1000.0) -> None:
        self._wall = wall
        self._mono = mono
        self._lock = threading.Lock()  # guards _wall and _mono
        self.history: list[tuple[str, float]] = []

    def wall(self) -> float:
        with self._lock:
            return self._wall

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        """Time passes: both readings move forward."""
        with self._lock:
            self._wall += seconds
            self._mono += seconds

    def step_wall(self, seconds: float) -> None:
        """The wall clock jumps (NTP sync); the monotonic reading does not."""
        with self._lock:
            self._wall += seconds
            self.history.append(("step", seconds))

    def sleep(self, seconds: float, stop: threading.Event | None = None) -> bool:
        self.advance(seconds)
        self.history.append(("sleep", seconds))
        return bool(stop is not None and stop.is_set())


class SampleClock(Clock):
    """Time of a finite source: a start instant plus the samples delivered so far."""

    def __init__(self, start_wall: float, rate: int) -> None:
        self.start_wall = start_wall
        self.rate = rate
        self.frames = 0

    def advance_frames(self, n: int) -> None:
        self.frames += n

    def wall(self) -> float:
        return self.start_wall + self.frames / self.rate

    def monotonic(self) -> float:
        return self.frames / self.rate

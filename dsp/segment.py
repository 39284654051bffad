"""Splitting one line's audio into calls.

The segmenter is a pure state machine over fixed frames: it is fed contiguous
int16 blocks with their absolute sample index and returns events. It never
holds audio: the caller keeps the samples (the capture ring) and asks the
segmenter which range belongs to a call (``committed_upto``) and which older
samples it may still need for pre-roll (``keep_from``).

This first detector is an adaptive energy detector with hysteresis; the
telephony-tone, DTMF and speech detectors plug in behind the same interface.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .levels import SILENCE_DBFS, frame_levels


@dataclass(frozen=True)
class SegmentParams:
    """Segmentation settings in seconds and dB; see firmware.config.SegmentConfig."""

    rate: int = 8000
    frame_ms: int = 20
    preroll_s: float = 2.0
    silence_s: float = 10.0
    tail_s: float = 0.5
    trigger_db: float = 10.0
    release_db: float = 6.0
    min_level_dbfs: float = -55.0
    start_frames: int = 3
    max_call_s: float = 14400.0
    floor_rise_db_per_s: float = 0.5
    floor_fall: float = 0.25

    @property
    def frame_len(self) -> int:
        return self.rate * self.frame_ms // 1000

    @property
    def preroll(self) -> int:
        return int(round(self.preroll_s * self.rate))

    @property
    def silence(self) -> int:
        return int(round(self.silence_s * self.rate))

    @property
    def tail(self) -> int:
        return int(round(self.tail_s * self.rate))

    @property
    def max_call(self) -> int:
        return int(round(self.max_call_s * self.rate))

    @property
    def history(self) -> int:
        """Most samples behind the newest one that the caller must keep available."""
        return self.preroll + (self.start_frames + 1) * self.frame_len + self.silence


@dataclass(frozen=True)
class CallStart:
    """A call begins at ``sample`` (pre-roll included); activity was first seen at ``onset``."""

    sample: int
    onset: int


@dataclass(frozen=True)
class CallEnd:
    """A call ends before ``sample`` for ``reason``."""

    sample: int
    reason: str
    last_activity: int


Event = CallStart | CallEnd


class EnergySegmenter:
    """Adaptive noise-floor activity detector with pre-roll, hang-over and tail."""

    def __init__(self, params: SegmentParams, start_sample: int = 0) -> None:
        self.p = params
        self._flen = params.frame_len
        self._rise = params.floor_rise_db_per_s * params.frame_ms / 1000.0
        self.pos = start_sample  # next sample expected
        self._carry = np.empty(0, dtype=np.int16)  # < one frame of samples not yet analysed
        self._floor: float | None = None
        self._run = 0  # consecutive triggering frames while idle
        self._run_start = 0
        self._barrier = start_sample  # pre-roll never reaches before this
        self.in_call = False
        self.call_start = 0
        self.onset = 0
        self.last_active_end = 0
        self.level_dbfs = SILENCE_DBFS

    # -- what the caller must keep -------------------------------------------------
    @property
    def analysed_upto(self) -> int:
        """Samples before this index have been classified."""
        return self.pos - len(self._carry)

    @property
    def committed_upto(self) -> int:
        """In a call: samples before this index certainly belong to it."""
        if not self.in_call:
            return self.call_start
        return min(self.analysed_upto, self.last_active_end + self.p.tail)

    @property
    def keep_from(self) -> int:
        """Oldest sample a future event may still refer to."""
        if self.in_call:
            return self.committed_upto
        idle_keep = self.analysed_upto - self._run * self._flen - self.p.preroll
        return max(self._barrier, min(idle_keep, self.analysed_upto))

    @property
    def floor_dbfs(self) -> float:
        return SILENCE_DBFS if self._floor is None else self._floor

    # -- feeding ---------------------------------------------------------------------
    def process(self, x: np.ndarray, start: int) -> list[Event]:
        """Feed the contiguous block ``x`` whose first sample has index ``start``."""
        if start != self.pos:
            raise ValueError(f"non-contiguous block: expected sample {self.pos}, got {start}")
        self.pos = start + len(x)
        if len(self._carry):
            x = np.concatenate((self._carry, x))
        base = self.pos - len(x)
        levels = frame_levels(x, self._flen)
        used = len(levels) * self._flen
        self._carry = x[used:].copy()
        if len(levels):
            self.level_dbfs = float(levels.max())
        events: list[Event] = []
        self._run_frames(levels, base, events)
        return events

    def _run_frames(self, levels: np.ndarray, base: int, events: list[Event]) -> None:
        p = self.p
        flen = self._flen
        floor = self._floor
        if floor is None and len(levels):
            floor = float(levels[0])
        for i, lvl in enumerate(levels.tolist()):
            f0 = base + i * flen
            f1 = f0 + flen
            if self.in_call:
                if lvl >= p.min_level_dbfs and lvl >= floor + p.release_db:
                    self.last_active_end = f1
                elif f1 - self.last_active_end >= p.silence:
                    end = self.last_active_end + p.tail
                    self._end(min(end, f1), "silence", events)
                if self.in_call and f1 - self.call_start >= p.max_call:
                    self._end(f1, "max_length", events)
                    self._start(f1, f1, events)
            elif lvl >= p.min_level_dbfs and lvl >= floor + p.trigger_db:
                if self._run == 0:
                    self._run_start = f0
                self._run += 1
                if self._run >= p.start_frames:
                    onset = self._run_start
                    self._start(max(self._barrier, onset - p.preroll), onset, events)
                    self.last_active_end = f1
            else:
                self._run = 0
            # noise floor: falls quickly, rises slowly, never above the current level
            if lvl < floor:
                floor += (lvl - floor) * p.floor_fall if lvl > floor - 30.0 else (lvl - floor)
            else:
                floor = min(floor + self._rise, lvl)
        self._floor = floor

    def _start(self, sample: int, onset: int, events: list[Event]) -> None:
        self.in_call = True
        self.call_start = sample
        self.onset = onset
        self._run = 0
        events.append(CallStart(sample=sample, onset=onset))

    def _end(self, sample: int, reason: str, events: list[Event]) -> None:
        self.in_call = False
        self._barrier = sample
        self._run = 0
        self.call_start = sample
        events.append(CallEnd(sample=sample, reason=reason, last_activity=self.last_active_end))

    def finish(self, reason: str = "eof") -> list[Event]:
        """End of input (or a discontinuity): close the call in progress at the last sample."""
        events: list[Event] = []
        if self.in_call:
            self._end(min(self.pos, self.last_active_end + self.p.tail), reason, events)
        return events

    def restart(self, at_sample: int) -> None:
        """Continue after a gap in the input (device lost and back): forget partial state."""
        self.pos = at_sample
        self._carry = np.empty(0, dtype=np.int16)
        self._run = 0
        self._barrier = at_sample
        self.call_start = at_sample

"""Preallocated per-line sample rings between the capture thread and the pipeline.

One producer (the capture reader) and one consumer (the segmenter worker).
Thread-shared state and who writes it (CPython's GIL makes each single
attribute/element store atomic; there is no lock on the capture path):

- ``buf`` rows, ``write_pos``, ``lost``, ``anchor_*``, ``gap_*``: written only by the producer.
  The producer stores samples first and advances ``write_pos`` after, so a consumer that
  reads ``write_pos`` first never sees samples that are not there yet.
- ``released``: written only by the consumer: samples below it are no longer needed.
- ``consumed``: written only by the consumer: samples below it have been analysed. Samples
  overwritten before they were analysed are the line's ``lost`` count; samples analysed but
  still held (pre-roll, hang-over) and then overwritten are accounted by the consumer.

A live producer never waits: if it must overwrite samples a line has not released,
it counts them in ``lost`` for that line (the consumer notices the same loss when it
reads). A finite source (WAV replay) sets ``blocking`` and waits for space instead,
so replay never loses audio.
"""

from __future__ import annotations

import threading

import numpy as np

ANCHORS = 256
GAPS = 64


class LineRings:
    """``lines`` rings of ``capacity`` int16 samples each, plus time anchors and gap marks."""

    def __init__(self, lines: int, capacity: int, rate: int, margin: int, blocking: bool = False) -> None:
        self.lines = lines
        self.capacity = capacity
        self.rate = rate
        self.margin = margin  # the producer may be writing this many samples past write_pos
        self.blocking = blocking
        self.buf = np.zeros((lines, capacity), dtype=np.int16)
        self.write_pos = 0
        self.released = np.zeros(lines, dtype=np.int64)
        self.consumed = np.zeros(lines, dtype=np.int64)
        self.lost = np.zeros(lines, dtype=np.int64)
        self._lost_upto = np.zeros(lines, dtype=np.int64)  # producer-private
        self._scratch = np.zeros(lines, dtype=np.int64)  # producer-private
        # time anchors: sample index -> wall clock (UTC seconds) and monotonic seconds
        self.anchor_sample = np.zeros(ANCHORS, dtype=np.int64)
        self.anchor_wall = np.zeros(ANCHORS, dtype=np.float64)
        self.anchor_mono = np.zeros(ANCHORS, dtype=np.float64)
        self.anchor_count = 0
        # discontinuities (device lost and back): sample index where the new audio starts
        self.gap_sample = np.zeros(GAPS, dtype=np.int64)
        self.gap_seconds = np.zeros(GAPS, dtype=np.float64)
        self.gap_count = 0
        self.eof = False  # no more samples will come (set last by the producer)
        self.end_reason = "eof"
        # used only when blocking: the producer waits on it for the consumer to release
        self._space = threading.Condition()
        self._waiting = False

    # -- producer side ----------------------------------------------------------------
    def write(self, block: np.ndarray, chmap: list[int], stop: threading.Event | None = None) -> bool:
        """Copy one interleaved period (frames x channels) into the line rings.

        Returns False only when blocking and ``stop`` was set while waiting.
        """
        n = block.shape[0]
        if n == 0:
            return True
        if self.blocking and not self._wait_for_space(n, stop):
            return False
        cap = self.capacity
        pos = self.write_pos % cap
        first = min(n, cap - pos)
        buf = self.buf
        for line, ch in enumerate(chmap):
            buf[line, pos:pos + first] = block[:first, ch]
            if first < n:
                buf[line, :n - first] = block[first:, ch]
        new_wp = self.write_pos + n
        floor = new_wp + self.margin - cap
        if floor > 0:
            # samples below floor are overwritten; count those not analysed and not yet counted
            lo = np.maximum(self.consumed, self._lost_upto, out=self._scratch)
            over = floor - lo
            np.maximum(over, 0, out=over)
            self.lost += over
            np.maximum(self._lost_upto, floor, out=self._lost_upto)
        self.write_pos = new_wp
        return True

    def _wait_for_space(self, n: int, stop: threading.Event | None) -> bool:
        need = self.write_pos + n + self.margin - self.capacity
        if int(self.released.min()) >= need:
            return True
        with self._space:
            self._waiting = True
            try:
                while int(self.released.min()) < need:
                    if stop is not None and stop.is_set():
                        return False
                    self._space.wait(0.1)
            finally:
                self._waiting = False
        return True

    def anchor(self, wall: float, mono: float) -> None:
        """Record that the newest sample (write_pos) was captured at these clock readings."""
        i = self.anchor_count % ANCHORS
        self.anchor_sample[i] = self.write_pos
        self.anchor_wall[i] = wall
        self.anchor_mono[i] = mono
        self.anchor_count += 1

    def mark_gap(self, seconds: float) -> None:
        """The audio from write_pos on follows a gap of ``seconds`` (device lost)."""
        i = self.gap_count % GAPS
        self.gap_sample[i] = self.write_pos
        self.gap_seconds[i] = seconds
        self.gap_count += 1

    # -- consumer side ----------------------------------------------------------------
    def read(self, line: int, start: int, end: int) -> tuple[np.ndarray, int]:
        """Copy samples [start, end) of ``line``; returns (samples, first index actually read).

        If the oldest part was overwritten, the copy begins later and the returned start
        says where; the caller accounts the difference as lost audio.
        """
        wp = self.write_pos
        end = min(end, wp)
        start = max(start, wp + self.margin - self.capacity, 0)
        if end <= start:
            return np.empty(0, dtype=np.int16), end
        cap = self.capacity
        a = start % cap
        b = end % cap
        row = self.buf[line]
        if a < b:
            out = row[a:b].copy()
        else:
            out = np.concatenate((row[a:], row[:b]))
        # the producer may have overwritten the oldest samples while we copied
        safe = self.write_pos + self.margin - cap
        if safe > start:
            cut = min(safe - start, len(out))
            return out[cut:], start + cut
        return out, start

    def consume(self, line: int, upto: int) -> None:
        """The consumer has copied samples of ``line`` before ``upto`` out for analysis."""
        if upto > self.consumed[line]:
            self.consumed[line] = upto

    def release(self, line: int, upto: int) -> None:
        """The consumer no longer needs samples of ``line`` before ``upto``."""
        self.consume(line, upto)
        if upto > self.released[line]:
            self.released[line] = upto
            if self._waiting:
                with self._space:
                    self._space.notify_all()

    def wall_at(self, sample: int) -> float:
        """UTC wall-clock seconds at which ``sample`` was captured (from the nearest anchor)."""
        count = self.anchor_count
        if count == 0:
            raise LookupError("no time anchor yet")
        best = None
        for k in range(min(count, ANCHORS)):
            i = (count - 1 - k) % ANCHORS
            s = int(self.anchor_sample[i])
            if s <= sample or best is None:
                best = i
            if s <= sample:
                break
        return float(self.anchor_wall[best]) + (sample - int(self.anchor_sample[best])) / self.rate

    def sample_at_mono(self, mono: float) -> int:
        """The sample captured at monotonic time ``mono`` (from the newest anchor at or before it;
        the newest sample when there is no anchor yet)."""
        count = self.anchor_count
        if count == 0:
            return self.write_pos
        best = None
        for k in range(min(count, ANCHORS)):
            i = (count - 1 - k) % ANCHORS
            if self.anchor_mono[i] <= mono or best is None:
                best = i
            if self.anchor_mono[i] <= mono:
                break
        return max(0, int(self.anchor_sample[best]) + int(round((mono - float(self.anchor_mono[best])) * self.rate)))

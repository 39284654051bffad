"""The capture reader: one thread per audio device, from the device into the line rings.

The hot loop only reads a period, copies it into the preallocated rings and, once a
second, stores a time anchor. It takes no lock, does no logging and touches no disk;
rare events (xrun, device lost/back) are counted here and reported through a
SimpleQueue that the StatusMaintainer drains and logs.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time

from ..errors import CaptureOverrun, DeviceError, DeviceLost, EndOfStream
from ..hal.audio import AudioSource
from ..hal.clock import Clock
from .ring import LineRings

log = logging.getLogger(__name__)


class CaptureReader(threading.Thread):
    """Reads ``source`` into ``rings``; survives xruns and devices that vanish and return."""

    def __init__(self, source: AudioSource, rings: LineRings, chmap: list[int], clock: Clock,
                 reopen_max_s: float = 10.0, events: queue.SimpleQueue | None = None) -> None:
        super().__init__(name=f"capture-{source.name}", daemon=True)
        self.source = source
        self.rings = rings
        self.chmap = chmap
        self.clock = clock
        self.reopen_max_s = reopen_max_s
        self.events: queue.SimpleQueue = events if events is not None else queue.SimpleQueue()
        self.stop_event = threading.Event()
        # Counters and state below are written only by this thread and read by others.
        self.state = "starting"  # starting, running, lost, eof, stopped, failed
        self.xruns = 0
        self.losses = 0
        self.reopens = 0
        self.open_failures = 0
        self.gap_seconds = 0.0
        self.last_error = ""
        # worst lateness of a period over the run: when the thread got a block against when the device
        # had it ready (first read + frames / rate; that base restarts at every (re)open and xrun);
        # live sources only
        self.max_delay_s = 0.0
        # reads later than the device's whole buffer (audio.periods x period): on real hardware each
        # would have been an overrun; counted here so a source without a buffer shows them too
        self.late_limit_s = float("inf")
        self.late_reads = 0
        # monotonic time of the last block read (or reopen attempt): the watchdog's sign of life
        self.beat = time.monotonic()

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        backoff = 0.25
        lost_since: float | None = None
        stop = self.stop_event
        self._raise_priority()
        try:
            while not stop.is_set():
                self.beat = time.monotonic()
                try:
                    self.source.open()
                except DeviceError as exc:
                    self.open_failures += 1
                    self.state = "lost" if lost_since is not None or self.open_failures > 1 else "starting"
                    self.last_error = str(exc)
                    if lost_since is None:
                        lost_since = self.clock.monotonic()
                    self.events.put(("open_failed", self.clock.wall(), str(exc)))
                    self.beat = time.monotonic() + backoff  # waiting to reopen is not being stuck
                    if self.clock.sleep(backoff, stop):
                        break
                    backoff = min(backoff * 2.0, self.reopen_max_s)
                    continue
                backoff = 0.25
                if lost_since is not None:
                    gap = max(0.0, self.clock.monotonic() - lost_since)
                    lost_since = None
                    if self.rings.write_pos > 0:
                        self.reopens += 1
                        self.gap_seconds += gap
                        self.rings.mark_gap(gap)
                        self.events.put(("back", self.clock.wall(), gap))
                self.state = "running"
                self.rings.anchor(self.clock.wall(), self.clock.monotonic())
                try:
                    self._loop()
                except DeviceLost as exc:
                    self.losses += 1
                    self.state = "lost"
                    self.last_error = str(exc)
                    lost_since = self.clock.monotonic()
                    self.events.put(("lost", self.clock.wall(), str(exc)))
                    self.source.close()
                    continue
                except EndOfStream:
                    self.state = "eof"
                    break
        except Exception as exc:  # noqa: BLE001 - a dead reader must be visible, not silent
            self.state = "failed"
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("capture reader failed")
        finally:
            self.source.close()
            if self.state != "failed":
                self.state = "eof" if self.state == "eof" else "stopped"
            self.rings.anchor(self.clock.wall(), self.clock.monotonic())
            self.rings.end_reason = {"eof": "eof", "failed": "device_failed"}.get(self.state, "shutdown")
            self.rings.eof = True  # set last: consumers read end_reason after seeing it

    def _raise_priority(self) -> None:
        """SCHED_FIFO for this thread alone when the service asks for it (NOKBOX_CAPTURE_PRIORITY,
        set by nokbox-recorder.service with LimitRTPRIO=): a period must be read within the device's
        buffer however busy the other threads are. Only for live sources: a file read as fast as it
        goes at real-time priority would starve the box."""
        want = os.environ.get("NOKBOX_CAPTURE_PRIORITY", "")
        if not want or not self.source.realtime:
            return
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(int(want)))  # 0: the calling thread
            log.info("%s: capture thread at SCHED_FIFO %s", self.name, want)
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("%s: capture thread stays at normal priority (SCHED_FIFO %s refused: %s)", self.name, want, exc)

    def _loop(self) -> None:
        src = self.source
        rings = self.rings
        chmap = self.chmap
        clock = self.clock
        stop = self.stop_event
        rate = src.rate
        next_anchor = rings.write_pos + rate
        timed = src.realtime
        mono = clock.monotonic
        t0 = None
        got = 0
        while not stop.is_set():
            try:
                block = src.read()
                self.beat = time.monotonic()
            except CaptureOverrun:
                self.xruns += 1
                next_anchor = 0  # re-anchor right after the lost samples
                t0 = None
                continue
            if timed:
                now = mono()
                if t0 is None:
                    t0, got = now, 0
                got += len(block)
                late = now - (t0 + got / rate)
                if late > self.max_delay_s:
                    self.max_delay_s = late
                if late > self.late_limit_s:
                    self.late_reads += 1
                elif late < 0:  # the first read came late: move the base to the device's pace
                    t0 += late
            if not rings.write(block, chmap, stop):
                return
            if rings.write_pos >= next_anchor:
                rings.anchor(clock.wall(), clock.monotonic())
                next_anchor = rings.write_pos + rate

"""The recording pipeline behind the rings: segmentation, then encoding/encryption/disk.

SegmenterWorker (one thread, all lines) reads each line's ring, runs the dsp
segmenter and sends call audio to the WriterWorker through a bounded queue. When the
writer stalls (slow disk) the queue fills, the segmenter waits, and the rings absorb
the lag; only if the lag outgrows a ring are samples lost, and then they are counted
per line and per call (``lost_frames``), logged and shown.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable
from pathlib import Path

from dsp.linestate import HookFilter
from dsp.segment import (CallAnswered, CallEnd, CallOnset, CallStart, CallWithdrawn, LineAlarm, LineSegmenter,
                         SegmentParams)

from ..vault.ahead import AheadJournal
from ..vault.callfile import CallFile
from ..config import LineConfig, StorageConfig
from ..vault.epochs import default_key_class
from ..index import CallIndex
from ..vault.keys import load_recipients
from ..vault.personal import seal_masked, seal_value
from .ring import LineRings

log = logging.getLogger(__name__)


class Worker(threading.Thread):
    """Skeleton of a pipeline stage: a stop event, a timed loop, a join that complains."""

    interval = 0.02

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.stop_event = threading.Event()
        self.error: str = ""
        # monotonic time of the loop's last turn: the recorder feeds systemd's watchdog only while it
        # moves (a stage stuck in a dead disk's write stops the pings)
        self.beat = time.monotonic()

    def run(self) -> None:
        try:
            self.setup()
            while not self.stop_event.is_set():
                self.beat = time.monotonic()
                if self.step():
                    continue
                if self.finished():
                    break
                self.stop_event.wait(self.interval)
            self.drain()
        except Exception as exc:  # noqa: BLE001 - a dead stage must be visible, not silent
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("%s failed", self.name)
        finally:
            self.teardown()

    def setup(self) -> None:
        """Runs first, on the worker's own thread."""

    def step(self) -> bool:
        """Do one unit of work; return True if there may be more right away."""
        return False

    def finished(self) -> bool:
        return False

    def drain(self) -> None:
        """Runs after the loop ends (stop or finished)."""

    def teardown(self) -> None:
        """Runs last, even after an error."""

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self.join(timeout)
        if self.is_alive():
            log.error("%s did not stop within %.0f s", self.name, timeout)


@dataclass
class LineState:
    """The segmenter worker's view of one line (owned by that thread; others only read)."""

    idx: int
    cfg: LineConfig
    seg: LineSegmenter
    pos: int = 0
    call_key: int | None = None
    written: int = 0
    lost_frames: int = 0  # samples overwritten in the ring before they were analysed
    held_lost: int = 0  # analysed samples held for a call (pre-roll, hang-over) then overwritten
    calls_started: int = 0
    paused: bool = False  # the line is disabled (line[].enabled = false): its audio is passed over
    pending: bool = False  # call_key is a provisional onset, not yet confirmed by the analysis
    ahead: int = 0  # next sample of the call's audio to write ahead of the analysis
    provisional: int = 0  # provisional onsets raised, and how many the analysis withdrew
    withdrawn: int = 0
    hook: HookFilter | None = None  # the line-sense input, debounced (None: not wired)
    alarm: str = ""  # the latest disagreement of the sense input and the audio

    @property
    def level_dbfs(self) -> float:
        """The line's level (last 0.1 s fed), computed only when asked (status requests)."""
        return self.seg.level_dbfs


@dataclass
class WriterStats:
    calls_open: int = 0
    calls_finished: int = 0
    write_errors: int = 0
    last_error: str = ""
    withdrawn: int = 0  # provisional onsets the analysis did not confirm (no call was left)
    ahead_open: int = 0  # write-ahead journals open
    open_ids: dict[int, int] = field(default_factory=dict)  # line idx -> call id


class SegmenterWorker(Worker):
    """Rings -> per-line segmenter -> call audio into the writer queue."""

    def __init__(self, rings: LineRings, lines: list[LineConfig], params: SegmentParams,
                 out: queue.Queue, min_block_s: float = 0.1, max_block_s: float = 1.0,
                 ahead_s: float = 0.5) -> None:
        super().__init__("segmenter")
        self.rings = rings
        self.params = params
        self.out = out
        self.min_block = int(min_block_s * params.rate)  # latency of call detection
        self.block = int(max_block_s * params.rate)  # largest slice analysed at once
        self.ahead_block = max(1, int(ahead_s * params.rate))  # write-ahead batches (each one fsynced)
        self.lines = [LineState(i, cfg, LineSegmenter(params)) for i, cfg in enumerate(lines)]
        # raw edges of the line-sense inputs: (line index, off-hook, monotonic time), from gpiozero's thread
        self.sense_edges: queue.SimpleQueue = queue.SimpleQueue()
        for ls in self.lines:
            if getattr(ls.cfg, "sense_pin", None) is not None:
                ls.hook = HookFilter(params.rate, params.sense_offhook_s, params.sense_flash_s)
                ls.seg.sense_wired = True
        self._gaps_seen = 0
        self._next_key = 1
        self._done = False
        self._pending_params: SegmentParams | None = None
        self.waits = 0  # times the writer queue was full
        # called (never blocking) when a call starts: (line index, call key, monotonic start)
        self.on_call_start: Callable[[int, int, float], None] | None = None

    def set_params(self, params: SegmentParams) -> None:
        """New segmentation settings apply from each line's next idle moment."""
        self._pending_params = params

    # -- main loop ----------------------------------------------------------------------
    def step(self) -> bool:
        rings = self.rings
        eof = rings.eof
        wp = rings.write_pos
        if self._gaps_seen < rings.gap_count:
            gap_at = int(rings.gap_sample[self._gaps_seen % len(rings.gap_sample)])
            for ls in self.lines:
                self._advance(ls, gap_at)
                self._finish_line(ls, "device_lost")
                ls.seg.restart(gap_at)
                ls.pos = gap_at
            self._gaps_seen += 1
            return True
        progressed = self._sense(wp)
        for ls in self.lines:
            if wp - ls.pos >= self.min_block or (eof and ls.pos < wp):
                self._advance(ls, wp)
                progressed = True
            self._maybe_apply_params(ls)
        if eof and not progressed and self._gaps_seen >= rings.gap_count and rings.write_pos == wp:
            for ls in self.lines:
                self._finish_line(ls, rings.end_reason)
            self._done = True
        return progressed

    def finished(self) -> bool:
        return self._done

    def drain(self) -> None:
        if not self._done:  # stopped from outside: close what is open so files are complete
            for ls in self.lines:
                self._advance(ls, self.rings.write_pos)
                self._finish_line(ls, "shutdown")
            self._done = True
        # the Recorder sends the writer its 'stop' once the notice results are in too

    def _maybe_apply_params(self, ls: LineState) -> None:
        new = self._pending_params
        if new is not None and ls.call_key is None and ls.seg.p != new:
            # a fresh segmenter takes over the samples the old one had not analysed yet; it learns
            # the noise floor again within seconds
            wired = ls.seg.sense_wired
            ls.seg = ls.seg.handover(new)
            ls.seg.sense_wired = wired
            if ls.hook is not None:
                ls.hook.off_n = int(round(new.sense_offhook_s * new.rate))
                ls.hook.flash_n = int(round(new.sense_flash_s * new.rate))

    # -- the line-sense inputs ------------------------------------------------------------
    def sense_edge(self, line: int, off_hook: bool, mono: float | None = None) -> None:
        """A raw edge of line ``line``'s sense input (any thread; never blocks)."""
        self.sense_edges.put((line, off_hook, time.monotonic() if mono is None else mono))

    def _sense(self, wp: int) -> bool:
        """Debounce the sense inputs up to the newest sample; a decided change goes to the segmenter
        (off-hook opens the call, and its notice, at once)."""
        moved = False
        while True:
            try:
                line, off, mono = self.sense_edges.get_nowait()
            except queue.Empty:
                break
            ls = self.lines[line]
            if ls.hook is None:
                continue
            at = min(self.rings.sample_at_mono(mono), wp)
            self._hook_change(ls, ls.hook.advance(at))
            ls.hook.edge(at, off)
            moved = True
        for ls in self.lines:
            if ls.hook is not None and self._hook_change(ls, ls.hook.advance(wp)):
                moved = True
        return moved

    def _hook_change(self, ls: LineState, change) -> bool:
        if change is None:
            return False
        sample, off, decided = change
        for ev in ls.seg.hook(sample, off, decided):
            self._event(ls, ev)
        return True

    # -- per line ----------------------------------------------------------------------
    def _advance(self, ls: LineState, upto: int) -> None:
        rings = self.rings
        if not getattr(ls.cfg, "enabled", True) and ls.call_key is None and not ls.seg.in_call:
            # a disabled line opens no call: its audio is released unread (a call in progress when
            # it was disabled ends first); enabled again, its segmenter starts afresh from here
            if upto > ls.pos:
                rings.release(ls.idx, upto)
                ls.pos = upto
            ls.paused = True
            return
        if ls.paused:
            ls.seg.restart(ls.pos)
            ls.paused = False
        while ls.pos < upto:
            b = min(upto, ls.pos + self.block)
            x, got = rings.read(ls.idx, ls.pos, b)
            rings.consume(ls.idx, b)
            if got > ls.pos:
                self._lost(ls, got - ls.pos)
                ls.pos = got
                if got >= b:
                    continue
            for ev in ls.seg.process(x, ls.pos):
                self._event(ls, ev)
            ls.pos = b
            if ls.call_key is not None and not ls.pending:
                self._flush(ls, ls.seg.committed_upto)
            self._write_ahead(ls, b)
            if ls.call_key is not None and not ls.pending:
                rings.release(ls.idx, min(ls.written, ls.ahead))
            elif ls.call_key is not None:
                rings.release(ls.idx, min(ls.seg.keep_from, ls.ahead))
            else:
                rings.release(ls.idx, ls.seg.keep_from)

    def _event(self, ls: LineState, ev) -> None:
        if isinstance(ev, CallOnset):
            self._open(ls, ev.sample, provisional=True)
        elif isinstance(ev, CallStart):
            if ls.pending:
                self._confirm(ls, ev.sample)
            else:  # (a call continued after max_length has had its notice; a ringing one waits)
                self._open(ls, ev.sample, notice=ev.raised >= 0 and ev.answered)
        elif isinstance(ev, CallAnswered):
            if ls.call_key is not None and self.on_call_start is not None:
                self.on_call_start(ls.idx, ls.call_key, time.monotonic())
        elif isinstance(ev, CallEnd):
            self._flush(ls, ev.sample)
            self._close(ls, ev.reason, ev)
        elif isinstance(ev, CallWithdrawn):
            self._withdraw(ls)
        elif isinstance(ev, LineAlarm):
            ls.alarm = ev.kind
            log.warning("line %d (%s): the line-sense input and the audio disagree: %s", ls.cfg.channel,
                        ls.cfg.name, ev.kind)
            self._put(("event", "sense_alarm", ls.cfg.channel, ev.kind))

    def _write_ahead(self, ls: LineState, upto: int, force: bool = False) -> None:
        """The call's audio as fed to the segmenter (up to ``upto``) to the writer's ahead journal, in
        batches of ``ahead_block`` (each fsynced there), before the segmenter has analysed it: a power
        cut loses at most ~1 s (the segmenter is fed within 0.1 s of the capture)."""
        if ls.call_key is None:
            return
        upto = min(upto, self.rings.write_pos)
        if upto - ls.ahead < (1 if force else self.ahead_block):
            return
        x, got = self.rings.read(ls.idx, ls.ahead, upto)
        if len(x):
            self._put(("ahead", ls.call_key, got, x))
        ls.ahead = upto

    def _lost(self, ls: LineState, n: int) -> None:
        """Samples of this line were overwritten before the pipeline read them."""
        ls.lost_frames += n
        if ls.call_key is not None and ls.pending:
            self._withdraw(ls)
        elif ls.call_key is not None:
            self._put(("lost", ls.call_key, n))
            self._close(ls, "overrun")
        ls.seg.restart(ls.pos + n)

    def _open(self, ls: LineState, start: int, provisional: bool = False, notice: bool = True) -> None:
        key = self._next_key
        self._next_key += 1
        ls.call_key = key
        ls.written = start
        ls.ahead = start
        ls.pending = provisional
        try:
            wall = self.rings.wall_at(start)
        except LookupError:
            wall = time.time()
        if provisional:
            ls.provisional += 1
            self._put(("provisional", key, ls.idx, start, wall))
        else:
            ls.calls_started += 1
            self._put(("open", key, ls.idx, start, wall))
        if notice and self.on_call_start is not None:
            self.on_call_start(ls.idx, key, time.monotonic())

    def _confirm(self, ls: LineState, start: int) -> None:
        """The analysis confirmed the provisional call: it becomes a call from ``start`` (its notice
        was requested when it was raised)."""
        ls.pending = False
        ls.calls_started += 1
        ls.written = start
        try:
            wall = self.rings.wall_at(start)
        except LookupError:
            wall = time.time()
        self._put(("open", ls.call_key, ls.idx, start, wall))

    def _withdraw(self, ls: LineState) -> None:
        """The provisional onset was not a call: no call, no file (its ahead journal goes)."""
        if ls.call_key is not None and ls.pending:
            self._put(("withdraw", ls.call_key, ls.cfg.channel))
            ls.withdrawn += 1
            ls.call_key = None
            ls.pending = False

    def _flush(self, ls: LineState, upto: int) -> None:
        """The call's audio up to ``upto`` to the writer, in pieces of at most a second (the writer
        queue's items bound the audio it holds: queue_blocks seconds per line at most)."""
        while ls.call_key is not None and upto > ls.written:
            end = min(upto, ls.written + self.block)
            x, got = self.rings.read(ls.idx, ls.written, end)
            if got > ls.written:
                ls.held_lost += got - ls.written
                self._put(("lost", ls.call_key, got - ls.written))
            if len(x):
                self._put(("audio", ls.call_key, x))
            ls.written = end

    def _close(self, ls: LineState, reason: str, ev: CallEnd | None = None) -> None:
        if ls.call_key is not None:
            # dialled number / caller ID are personal data: only the writer sees them, to seal them
            numbers = {"dialed": ev.dialed, "caller_id": ev.caller_id} if ev and (ev.dialed or ev.caller_id) else None
            self._put(("close", ls.call_key, reason, numbers))
            ls.call_key = None

    def _finish_line(self, ls: LineState, reason: str) -> None:
        for ev in ls.seg.finish(reason):
            self._event(ls, ev)
        self._withdraw(ls)
        self._close(ls, reason)
        self.rings.release(ls.idx, ls.pos)

    def _put(self, item: tuple) -> None:
        try:
            self.out.put_nowait(item)
            return
        except queue.Full:
            self.waits += 1
        # The writer is behind (slow disk): wait; the rings absorb the lag meanwhile.
        while True:
            try:
                self.out.put(item, timeout=0.5)
                return
            except queue.Full:
                continue


class WriterWorker(Worker):
    """Encodes, encrypts and writes call audio; keeps the SQLite index."""

    interval = 0.0

    def __init__(self, inq: queue.Queue, data_dir: Path, recipients: dict[str | None, list[bytes]], rate: int,
                 lines: list[LineConfig], storage: StorageConfig, device_recipient: bytes,
                 masker=None, key_class_of: Callable[[int], str | None] = lambda channel: None) -> None:
        super().__init__("writer")
        self.inq = inq
        self.data_dir = Path(data_dir)
        self.recipients = recipients  # key class -> its current epoch's recipients (rotated in place)
        self.key_class_of = key_class_of  # line channel -> key class (reads the running config)
        self.rate = rate
        self.lines = lines
        self.storage = storage
        self.codec = storage.codec
        self.device_recipient = device_recipient
        self.masker = masker  # personal.BoxSealer: masked numbers under the device-bound secret
        self.stats = WriterStats()
        self._open: dict[int, tuple[int, CallFile | None, list]] = {}  # [lost, line index, recipients]
        self._ids: dict[int, int] = {}  # call key -> index id, kept after close for late notice results
        self._ahead: dict[int, AheadJournal | None] = {}  # call key -> its write-ahead journal
        self._held_notice: dict[int, dict] = {}  # notice results of provisional calls, until confirmed
        self.opus = (storage.opus_kbps, storage.opus_complexity)
        self._index: CallIndex | None = None
        self._done = False

    def setup(self) -> None:
        self._index = CallIndex(self.data_dir / "index.sqlite")

    def step(self) -> bool:
        try:
            item = self.inq.get(timeout=0.2)
        except queue.Empty:
            return False
        self._handle(item)
        return not self._done

    def finished(self) -> bool:
        return self._done

    def drain(self) -> None:
        # stopped from outside: take what is still queued until the segmenter's stop marker
        while not self._done:
            try:
                self._handle(self.inq.get(timeout=2.0))
            except queue.Empty:
                break
        for key in list(self._open):
            self._close(key, "shutdown")
        for key in list(self._ahead):  # provisional calls never confirmed
            self._discard_ahead(key)

    def teardown(self) -> None:
        if self._index is not None:
            self._index.close()

    def _file_for(self, wall: float):
        day = time.strftime("%Y/%m/%d", time.gmtime(wall))

        def name(call_id: int) -> str:
            return f"calls/{day}/{call_id:08d}.{self.codec}.age"

        return name

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "stop":
            self._done = True
            return
        key = item[1]
        if kind == "provisional":
            _, _, idx, start, wall = item
            self._ahead[key] = self._new_ahead(idx, start, wall)
            self.stats.ahead_open = len(self._ahead)
        elif kind == "ahead":
            aj = self._ahead.get(key)
            if aj is not None:
                try:
                    aj.append(item[2], item[3])
                except OSError as exc:
                    self._error(self._ids.get(key, 0), exc)
                    self._ahead[key] = None
        elif kind == "withdraw":
            self._discard_ahead(key)
            self._held_notice.pop(key, None)
            self.stats.withdrawn += 1
            self._index.add_event(time.time(), "onset_withdrawn", line=item[2])
        elif kind == "event":
            self._index.add_event(time.time(), item[1], line=item[2], detail=item[3])
        elif kind == "open":
            _, _, idx, start, wall = item
            line = self.lines[idx]
            cls = self.key_class_of(line.channel) or default_key_class()
            if cls not in self.recipients:  # a retention period that came with a config reload
                self.recipients[cls] = load_recipients(self.data_dir, cls)
            recips = self.recipients[cls]
            call_id, rel = self._index.open_call(line.channel, line.name, wall, start, self.rate, self.codec,
                                                 self._file_for(wall), cls)
            cf = None
            try:
                st = self.storage
                cf = CallFile(self.data_dir / rel, recips, self.rate, self.device_recipient,
                              codec=st.codec, opus_kbps=st.opus_kbps, checkpoint_s=st.checkpoint_s,
                              opus_complexity=st.opus_complexity)
            except OSError as exc:
                self._error(call_id, exc)
            self._open[key] = (call_id, cf, [0, idx, list(recips)])
            self._ids[key] = call_id
            if key not in self._ahead:  # confirmed without a provisional onset first
                self._ahead[key] = self._new_ahead(idx, start, wall, cls)
            aj = self._ahead.get(key)
            if aj is not None:
                try:
                    aj.confirm(call_id, rel, start)
                except OSError as exc:
                    self._error(call_id, exc)
                    self._ahead[key] = None
            self.stats.ahead_open = len(self._ahead)
            held = self._held_notice.pop(key, None)
            if held is not None:
                self._index.set_notice(call_id, held)
            while len(self._ids) > 4096:
                self._ids.pop(next(iter(self._ids)))
            self.stats.open_ids[idx] = call_id
            self.stats.calls_open = len(self._open)
        elif kind == "audio":
            call_id, cf, extra = self._open[key]
            if cf is None:
                extra[0] += len(item[2])
                return
            try:
                cf.write(item[2])
            except OSError as exc:
                self._error(call_id, exc)
                extra[0] += len(item[2])
                self._open[key] = (call_id, None, extra)
        elif kind == "notice":
            call_id = self._ids.get(key)
            if call_id is not None:
                self._index.set_notice(call_id, item[2])
            elif key in self._ahead:  # a provisional call's notice: stored once it is confirmed
                self._held_notice[key] = item[2]
        elif kind == "lost":
            self._open[key][2][0] += item[2]
        elif kind == "close":
            self._close(key, item[2], item[3] if len(item) > 3 else None)

    def _close(self, key: int, reason: str, numbers: dict | None = None) -> None:
        try:
            self._close_call(key, reason, numbers)
        finally:
            self._discard_ahead(key)  # after the index update: a cut before it still has the audio

    def _close_call(self, key: int, reason: str, numbers: dict | None) -> None:
        call_id, cf, (lost, idx, recips) = self._open.pop(key)
        if numbers:  # sealed to the call's own epoch (never stored in clear), and masked for lists
            sealed = seal_value(json.dumps(numbers, ensure_ascii=False), recips)
            masked = seal_masked(self.masker, numbers) if self.masker is not None else None
            blind = self.masker.blinds(numbers) if self.masker is not None else None
            self._index.set_sealed_numbers(call_id, sealed, masked, blind)
        self.stats.open_ids.pop(idx, None)
        self.stats.calls_open = len(self._open)
        if cf is None:
            self._index.finish_call(call_id, 0, 0, reason, lost, state="failed")
            return
        try:
            size = cf.close(keep_journal=True, end={"reason": reason, "lost": lost})
        except OSError as exc:
            self._error(call_id, exc)
            self._index.finish_call(call_id, cf.frames, cf.size, reason, lost, state="failed")
            return
        self._index.finish_call(call_id, cf.frames, size, reason, lost)
        try:
            cf.drop_journal()  # only now: a cut before the index update still knows the length
        except OSError as exc:
            self._error(call_id, exc)
        self.stats.calls_finished += 1

    def _new_ahead(self, idx: int, start: int, wall: float, cls: str | None = None) -> AheadJournal | None:
        line = self.lines[idx]
        if cls is None:
            cls = self.key_class_of(line.channel) or default_key_class()
        meta = {"channel": line.channel, "line_name": line.name, "rate": self.rate, "codec": self.codec,
                "opus_kbps": self.opus[0], "opus_complexity": self.opus[1], "start": int(start), "wall": wall,
                "key_class": cls}
        try:
            return AheadJournal(self.data_dir, self.device_recipient, meta)
        except OSError as exc:
            self._error(0, exc)
            return None

    def _discard_ahead(self, key: int) -> None:
        aj = self._ahead.pop(key, None)
        self.stats.ahead_open = len(self._ahead)
        if aj is not None:
            try:
                aj.discard()
            except OSError as exc:
                self._error(self._ids.get(key, 0), exc)

    def _error(self, call_id: int, exc: OSError) -> None:
        self.stats.write_errors += 1
        self.stats.last_error = f"call {call_id}: {exc.strerror or exc}"
        log.error("recording write failed for call %s: %s", call_id, exc.strerror or exc)

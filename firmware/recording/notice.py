"""The recording notice: on every call, switch the line to the box's output and announce the recording.

When the segmenter starts a call (or raises one provisionally, or a line-sense input's debounced
off-hook opens it), ``NoticeService.request`` queues
the line without waiting. One worker thread per audio output takes requests in order:
relay on (gpiozero), settle, the announcement (pyalsaaudio), relay off. What happened — played
or not, when, the delay from the call's start, the wait for a free output, the failure — is
returned for the call's record. A line whose notice fails twice in a row raises an alarm.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from ..config import LineConfig, NokboxConfig
from ..errors import ConfigError, DeviceError, NokboxError
from ..hal.audio_out import AudioSink, make_sink
from ..hal.gpio import gpio_backend, input_device, make_pin_factory, output_device
from ..index import iso_utc

log = logging.getLogger(__name__)

DATA = Path(__file__).resolve().parent.parent / "data"  # firmware/data, on the ground
BUILTIN = DATA / "notice_default.wav"
BEEP = DATA / "notice_beep.wav"
MAX_SECONDS = 15.0
PEAK_DBFS = -3.0
# Pins the simulated (mock) box uses for lines without a configured relay pin.
MOCK_RELAY_PINS = (5, 6, 12, 13, 16, 19, 20, 21, 26, 17, 27, 22, 23, 24, 25, 18, 4, 7, 8, 9, 10, 11, 14, 15)


class AnnouncementError(NokboxError, ValueError):
    """An uploaded announcement is not acceptable; the message says why."""


def load_announcement(path: str | Path, rate: int) -> np.ndarray:
    """Check and prepare an announcement: readable audio, ≤ 15 s, not clipped; mono, resampled,
    normalised to -3 dBFS peak. Returns int16 samples at ``rate``."""
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AnnouncementError(f"not an audio file this box can read ({exc})") from None
    if len(x) == 0:
        raise AnnouncementError("the file holds no audio")
    seconds = len(x) / sr
    if seconds > MAX_SECONDS:
        raise AnnouncementError(f"{seconds:.1f} s long; the notice may be at most {MAX_SECONDS:.0f} s")
    clipped = np.abs(x) >= 0.999
    if clipped.mean() > 0.001 or _runs(clipped.any(axis=1)) >= 3:
        raise AnnouncementError("the recording is clipped (distorted); record it again at a lower level")
    mono = x.mean(axis=1)
    if sr != rate:
        from math import gcd

        from scipy.signal import resample_poly  # imported only when needed: scipy costs ~50 MB of RSS

        g = gcd(sr, rate)
        mono = resample_poly(mono, rate // g, sr // g)
    peak = float(np.max(np.abs(mono)))
    if peak < 10 ** (-50 / 20):
        raise AnnouncementError("the recording is silent")
    mono = mono * (10 ** (PEAK_DBFS / 20) / peak)
    return np.clip(np.round(mono * 32767), -32768, 32767).astype(np.int16)


def _runs(mask: np.ndarray) -> int:
    """Longest run of True."""
    best = run = 0
    for v in mask.tolist():
        run = run + 1 if v else 0
        best = max(best, run)
    return best


@dataclass
class NoticeResult:
    """What happened to one call's notice (stored with the call)."""

    mode: str
    played: bool = False
    started: str | None = None  # UTC, relay closed
    ended: str | None = None  # UTC, relay opened
    delay_ms: float | None = None  # call start -> first notice sample
    relay_ms: float | None = None  # call start -> relay closed
    wait_ms: float | None = None  # waiting for a free output
    failure: str | None = None  # disabled, relay_fault, output_busy, output_failed, no_relay

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Request:
    line: int
    key: int | None
    t0: float  # monotonic time of the call's start (detection or line sense)
    result: NoticeResult | None = None
    done: threading.Event | None = None
    samples: np.ndarray | None = None  # a test call's recorded sample instead of the announcement


@dataclass
class LineNotice:
    """Per-line notice state (written by the output workers under NoticeService._lock)."""

    mode: str
    failures_in_row: int = 0
    alarm: bool = False
    last_failure: str | None = None
    played: int = 0
    playing: bool = False  # the relay is switched onto the line and the output is playing


class NoticeService:
    """Relays, outputs and workers for the notice of every line."""

    def __init__(self, cfg: NokboxConfig, lines: list[LineConfig], data_dir: Path,
                 on_result: Callable[[int, NoticeResult], None], mode_of: Callable[[int], str | None],
                 sinks: list[AudioSink] | None = None, audit=None) -> None:
        n = cfg.notice
        self.cfg = n
        self.enabled = n.enabled
        self.lines = lines
        self.data_dir = Path(data_dir)
        self.on_result = on_result
        self.mode_of = mode_of
        self.audit = audit
        self.backend = gpio_backend(n.gpio)
        self.factory = make_pin_factory(n.gpio)
        used = {p for _, p in cfg._pins()}
        spare = [p for p in MOCK_RELAY_PINS if p not in used]
        self.relays = {}
        self.feedback = {}
        self.sense = {}
        for i, ln in enumerate(lines):
            pin = ln.relay_pin
            if pin is None and self.backend == "mock" and spare:
                pin = spare.pop(0)
            if pin is not None:
                self.relays[i] = output_device(self.factory, pin, f"line[{i}].relay_pin")
            if ln.feedback_pin is not None:
                self.feedback[i] = input_device(self.factory, ln.feedback_pin, f"line[{i}].feedback_pin")
            if ln.sense_pin is not None:
                # raw edges go to the recorder's segmenter, which debounces them (dsp.linestate.HookFilter)
                # and opens the call, with its notice, on a decided off-hook
                dev = input_device(self.factory, ln.sense_pin, f"line[{i}].sense_pin")
                dev.when_activated = lambda _d=None, i=i: self._sense_edge(i, True)
                dev.when_deactivated = lambda _d=None, i=i: self._sense_edge(i, False)
                self.sense[i] = dev
        self.on_sense: Callable[[int, bool], None] | None = None
        self.led = output_device(self.factory, n.status_led_pin, "notice.status_led_pin") \
            if n.status_led_pin is not None else None
        self.button = None
        self.on_shutdown: Callable[[], None] | None = None
        if n.button_pin is not None:
            from gpiozero import Button

            self.button = Button(n.button_pin, pin_factory=self.factory, hold_time=3.0)
            self.button.when_held = lambda _b=None: self._shutdown_pressed()
            self.button.when_released = lambda _b=None: self._button_released()
            self._held = False
        self.sinks = sinks if sinks is not None else (
            [make_sink(dev, n.rate) for dev in n.outputs] or [make_sink(None, n.rate)])
        self._load_announcement()
        self.beep = load_announcement(BEEP, n.rate)
        self._lock = threading.Lock()  # guards state
        self.state = {i: LineNotice(ln.notice) for i, ln in enumerate(lines)}
        self.queue: queue.Queue[_Request | None] = queue.Queue(maxsize=64)
        self._workers = [threading.Thread(target=self._work, args=(s,), name=f"notice-{k}", daemon=True)
                         for k, s in enumerate(self.sinks)]
        for w in self._workers:
            w.start()

    def _load_announcement(self) -> np.ndarray:
        """The uploaded announcement (re-read when a new one is installed), else the built-in one."""
        uploaded = self.data_dir / "notice" / "announcement.wav"
        try:
            mtime = uploaded.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        cached = getattr(self, "_announcement_cache", None)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        samples = None
        if mtime is not None:
            try:
                samples = load_announcement(uploaded, self.cfg.rate)
            except AnnouncementError as exc:
                log.error("uploaded notice unusable (%s); using the built-in one", exc)
        if samples is None:
            samples = load_announcement(BUILTIN, self.cfg.rate)
        self._announcement_cache = (mtime, samples)
        return samples

    # -- requests ---------------------------------------------------------------------------
    def request(self, line: int, key: int | None, t0: float | None = None) -> None:
        """A call started on ``line`` (or was raised provisionally): queue its notice. Never blocks."""
        t0 = time.monotonic() if t0 is None else t0
        self._enqueue(_Request(line, key, t0, done=threading.Event()))

    def _sense_edge(self, line: int, off_hook: bool) -> None:
        if self.on_sense is not None:
            self.on_sense(line, off_hook)

    def sense_state(self) -> dict[int, bool]:
        """Each sense input's level now (True: off-hook)."""
        return {i: bool(dev.is_active) for i, dev in self.sense.items()}

    def _enqueue(self, req: _Request) -> None:
        """Queue without waiting; a full queue is an 'output_busy' failure, never a stall."""
        try:
            self.queue.put_nowait(req)
        except queue.Full:
            self._finish(req, NoticeResult(self._mode(req.line), failure="output_busy", wait_ms=0.0))

    def test(self, line: int) -> NoticeResult:
        """Play the notice on ``line`` now (technician's test); waits for the result."""
        req = _Request(line, None, time.monotonic(), done=threading.Event())
        self.queue.put(req, timeout=self.cfg.max_wait_s)
        req.done.wait(self.cfg.max_wait_s + MAX_SECONDS + 5)
        return req.result or NoticeResult(self._mode(line), failure="output_busy")

    def play_back(self, line: int, samples: np.ndarray) -> NoticeResult:
        """Play ``samples`` (int16 at the output's rate) onto ``line`` through its relay, whatever the
        line's notice mode: a test call's sample heard back on the technician's handset. Waits."""
        req = _Request(line, None, time.monotonic(), done=threading.Event(), samples=samples)
        self.queue.put(req, timeout=self.cfg.max_wait_s)
        req.done.wait(self.cfg.max_wait_s + len(samples) / self.cfg.rate + 5)
        return req.result or NoticeResult(self._mode(line), failure="output_busy")

    def _mode(self, line: int) -> str:
        if not self.enabled:
            return "off"
        override = self.mode_of(self.lines[line].channel)
        return override or self.lines[line].notice

    # -- the output workers ------------------------------------------------------------------
    def _work(self, sink: AudioSink) -> None:
        while True:
            req = self.queue.get()
            if req is None:
                return
            try:
                self._finish(req, self._serve(req, sink))
            except Exception as exc:  # noqa: BLE001 - a notice worker must never die silently
                log.exception("notice worker error")
                self._finish(req, NoticeResult(self._mode(req.line), failure=f"error: {type(exc).__name__}"))

    def _serve(self, req: _Request, sink: AudioSink) -> NoticeResult:
        mode = self._mode(req.line)
        res = NoticeResult(mode)
        now = time.monotonic()
        res.wait_ms = round(1000 * (now - req.t0), 1)
        if mode == "off" and req.samples is None:
            res.failure = "disabled"
            return res
        if now - req.t0 > self.cfg.max_wait_s:
            res.failure = "output_busy"
            return res
        relay = self.relays.get(req.line)
        if relay is None:
            res.failure = "no_relay"
            return res
        if req.samples is not None:
            samples = req.samples
        else:
            samples = self.beep if mode == "beep" else self._load_announcement()
        first: list[float] = []
        try:
            try:
                relay.on()
            except Exception as exc:  # noqa: BLE001 - any driver error is a relay fault
                log.error("line %d: notice relay could not be switched: %s", self.lines[req.line].channel, exc)
                res.failure = "relay_fault"
                return res
            t_on = time.monotonic()
            res.started = iso_utc(time.time())
            with self._lock:
                self.state[req.line].playing = True
            res.relay_ms = round(1000 * (t_on - req.t0), 1)
            if self.cfg.settle_ms:
                time.sleep(self.cfg.settle_ms / 1000)
            fb = self.feedback.get(req.line)
            if fb is not None and not fb.is_active:
                res.failure = "relay_fault"
                return res
            try:
                sink.play(samples, on_first=lambda: first.append(time.monotonic()))
            except DeviceError as exc:
                log.error("line %d: notice output failed: %s", self.lines[req.line].channel, exc)
                res.failure = "output_failed"
                return res
            res.played = True
            res.delay_ms = round(1000 * (first[0] - req.t0), 1) if first else None
            return res
        finally:
            if res.started is not None:
                with self._lock:
                    self.state[req.line].playing = False
                try:
                    relay.off()
                except Exception:  # noqa: BLE001
                    res.failure = res.failure or "relay_fault"
                    res.played = False
                res.ended = iso_utc(time.time())

    def _finish(self, req: _Request, res: NoticeResult) -> None:
        req.result = res
        if req.samples is not None:  # a test call's playback: not the line's notice, no counters
            req.done.set()
            return
        ch = self.lines[req.line].channel
        with self._lock:
            st = self.state[req.line]
            st.mode = res.mode
            if res.played:
                st.failures_in_row = 0
                st.alarm = False
                st.played += 1
            elif res.failure != "disabled":
                st.failures_in_row += 1
                st.last_failure = res.failure
                if st.failures_in_row >= 2 and not st.alarm:
                    st.alarm = True
                    log.error("line %d: the recording notice failed %d times in a row (%s): ALARM",
                              ch, st.failures_in_row, res.failure)
        if req.done is not None:
            req.done.set()
        if req.key is not None:
            self.on_result(req.key, res)

    # -- button and LED -----------------------------------------------------------------------
    def _button_released(self) -> None:
        if getattr(self, "_held", False):
            self._held = False
            return
        line = next((i for i, ln in enumerate(self.lines) if ln.channel == self.cfg.test_line), 0)
        threading.Thread(target=self._test_from_button, args=(line,), daemon=True).start()

    def _test_from_button(self, line: int) -> None:
        res = self.test(line)
        if self.audit is not None:
            self.audit.append("notice.test", actor="button", role="technician",
                              obj=f"line:{self.lines[line].channel}",
                              outcome="ok" if res.played else "failed", reason=res.failure or "")

    def _shutdown_pressed(self) -> None:
        self._held = True
        log.warning("button held: safe shutdown requested")
        if self.audit is not None:
            self.audit.append("system.shutdown", actor="button", role="technician", reason="button held 3 s")
        if self.on_shutdown is not None:
            self.on_shutdown()

    def update_led(self, recording: bool) -> None:
        """Status LED: fast blink on a fault, steady while recording, slow blink when idle."""
        if self.led is None:
            return
        with self._lock:
            fault = any(s.alarm for s in self.state.values())
        pattern = "fault" if fault else ("recording" if recording else "idle")
        if getattr(self, "_led_pattern", None) == pattern:
            return
        self._led_pattern = pattern
        if pattern == "recording":
            self.led.on()
        else:
            on, off = (0.1, 0.1) if fault else (0.1, 1.9)
            self.led.blink(on_time=on, off_time=off)

    # -- status and shutdown -----------------------------------------------------------------
    def status(self) -> dict:
        with self._lock:
            return {i: {"mode": self._mode(i), "alarm": s.alarm, "failures_in_row": s.failures_in_row,
                        "last_failure": s.last_failure, "played": s.played, "playing": s.playing}
                    for i, s in self.state.items()}

    def close(self) -> None:
        for _ in self._workers:
            self.queue.put(None)
        for w in self._workers:
            w.join(MAX_SECONDS + 5)
        for dev in [*self.relays.values(), *self.feedback.values(), *self.sense.values(), self.led, self.button]:
            if dev is not None:
                dev.close()


def check_pins(cfg: NokboxConfig) -> None:
    """Clear errors for a real board: every line with the notice on needs a relay pin."""
    if not cfg.notice.enabled or gpio_backend(cfg.notice.gpio) == "mock":
        return
    for i, ln in enumerate(cfg.lines):
        if ln.notice != "off" and ln.relay_pin is None:
            raise ConfigError(f"line[{i}].relay_pin: required for the recording notice on a real board")


# -- changes a technician makes (CLI and admin page share these) ------------------------------
def set_line_mode(data_dir: Path, channel: int, mode: str, reason: str, audit, who: dict) -> str | None:
    """Override a line's notice mode (on/off/beep) with a reason; audited. Returns the old override."""
    from ..index import CallIndex

    if mode not in ("on", "off", "beep"):
        raise AnnouncementError(f"unknown notice mode {mode!r}")
    if not reason.strip():
        raise AnnouncementError("say why the notice changes (the reason goes to the audit log)")
    idx = CallIndex(Path(data_dir) / "index.sqlite")
    try:
        old = idx.notice_mode(channel)
        idx.set_notice_mode(channel, mode, who["actor"], reason.strip(), time.time())
    finally:
        idx.close()
    audit.append("notice.mode", obj=f"line:{channel}", reason=reason.strip(),
                 detail={"old": old or "config", "new": mode}, **who)
    if mode == "off":
        log.warning("line %d: recording notice switched off by %s", channel, who["actor"])
    return old


def install_announcement(data_dir: Path, src: Path, audit, who: dict, rate: int = 8000) -> float:
    """Check an uploaded announcement and install it for the next calls; audited. Returns seconds."""
    import os

    try:
        x = load_announcement(src, rate)
    except AnnouncementError as exc:
        audit.append("notice.upload", outcome="refused", reason=str(exc), **who)
        raise
    dest = Path(data_dir) / "notice" / "announcement.wav"
    dest.parent.mkdir(exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    sf.write(tmp, x, rate, subtype="PCM_16", format="WAV")
    os.replace(tmp, dest)
    seconds = round(len(x) / rate, 2)
    audit.append("notice.upload", detail={"seconds": seconds}, **who)
    return seconds

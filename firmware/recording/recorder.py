"""The recorder: wires source -> capture reader -> rings -> segmenter -> writer, and reports status.

Threads (see docs/architecture.md):
  capture-*   CaptureReader: device -> rings (never waits, never logs)
  segmenter   SegmenterWorker: rings -> dsp segmenter -> writer queue (bounded)
  writer      WriterWorker: encode + encrypt + disk + SQLite index
  status      StatusMaintainer: logs counters and device events, writes run/status.json
  retention   RetentionMaintainer: disk watch each minute; daily key-epoch rotation and crypto-erase
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import signal
import threading
import time
from pathlib import Path

from dsp.segment import SegmentParams, warm_up

from ..audit import AuditLog, config_changes
from .capture import CaptureReader
from ..config import LineConfig, NokboxConfig, load_config
from ..errors import ConfigError, NokboxError
from ..hal.audio import AlsaSource, AudioSource, SimulatedSource
from ..hal.clock import Clock
from ..index import CallIndex, iso_utc, to_kst
from ..vault.epochs import key_class_for
from ..vault.keys import device_for, load_device_recovery_recipient, load_recipients, require_initialised
from ..vault.personal import BoxSealer
from .pipeline import SegmenterWorker, WriterWorker
from ..vault.retention import RetentionMaintainer, disk_report
from .ring import LineRings

log = logging.getLogger(__name__)

# Settings that need a restart to change (the device and the ring layout).
_RESTART_KEYS = ("audio",)
# The technician's test call: how long a sample may be, and the window of a live meter reading.
TEST_CALL_MAX_S = 15.0
METER_WINDOW_S = 0.1


class LineBusy(NokboxError):
    """The line cannot take a test call now (a call in progress, or a test already running)."""


def segment_params(cfg: NokboxConfig, rate: int) -> SegmentParams:
    """The dsp segmenter's settings from the config (the same for run, replay and analyze)."""
    from dsp.tones import DtmfParams, ToneSpec

    s = cfg.segment
    t = s.tones
    tones = tuple(
        ToneSpec(name, tuple(getattr(t, name).freqs), getattr(t, name).on_s, getattr(t, name).off_s,
                 ends_call=name in ("busy", "reorder"))
        for name in ("dial", "ringback", "busy", "reorder")
    )
    return SegmentParams(
        rate=rate, preroll_s=s.preroll_s, silence_s=s.silence_s, tail_s=s.tail_s,
        trigger_db=s.trigger_db, release_db=s.release_db, min_level_dbfs=s.min_level_dbfs,
        speech_min_dbfs=s.speech_min_dbfs, confirm_s=s.confirm_s, idle_step_db=s.idle_step_db,
        hangup_hold_s=s.hangup_hold_s, chunk_s=s.chunk_s, max_call_s=s.max_call_s, tones=tones,
        tone_min_fraction=t.min_fraction, tone_min_dbfs=t.min_level_dbfs, cadence_tol=t.cadence_tol,
        dtmf=DtmfParams(freq_tol=s.dtmf.freq_tol, normal_twist_db=s.dtmf.normal_twist_db,
                        reverse_twist_db=s.dtmf.reverse_twist_db, min_level_dbfs=s.dtmf.min_level_dbfs),
        cid_fsk=s.callerid.fsk, cid_dtmf=s.callerid.dtmf, onset=s.onset,
        sense_offhook_s=s.sense.offhook_ms / 1000.0, sense_flash_s=s.sense.flash_s, sense_stuck_s=s.sense.stuck_s,
    )


def build_source(cfg: NokboxConfig, clock: Clock | None = None) -> AudioSource:
    """The capture backend the config asks for."""
    a = cfg.audio
    period = a.rate * a.period_ms // 1000
    if cfg.source_kind == "alsa":
        return AlsaSource(a.device, a.rate, a.channels, period, a.periods)
    s = cfg.simulate
    return SimulatedSource(a.rate, a.channels, period, seed=s.seed, clock=clock,
                           first_call_s=s.first_call_s, idle_s=(s.idle_min_s, s.idle_max_s),
                           talk_s=(s.talk_min_s, s.talk_max_s))


class Recorder:
    """One box's recorder over one audio source."""

    def __init__(self, cfg: NokboxConfig, data_dir: Path, source: AudioSource | None = None,
                 clock: Clock | None = None, config_path: Path | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.data_dir = Path(data_dir)
        self.clock = clock or Clock()
        require_initialised(self.data_dir)
        self.source = source or build_source(cfg, self.clock)
        rate = self.source.rate
        self.rate = rate
        lines = [ln for ln in cfg.lines if ln.channel < self.source.channels]
        if cfg.line and len(lines) != len(cfg.line):
            bad = next(ln for ln in cfg.line if ln.channel >= self.source.channels)
            raise ConfigError(f"line channel {bad.channel} ({bad.name}): the source has only "
                              f"{self.source.channels} channels")
        if not cfg.line:
            lines = [LineConfig(channel=c, name=f"회선 {c + 1}") for c in range(self.source.channels)]
        self.lines = lines
        # one recipient list per key class (retention period) in use; rotated in place
        self.recipients: dict[str | None, list[bytes]] = {}
        for ln in lines:
            cls = key_class_for(cfg, ln.channel)
            if cls not in self.recipients:
                self.recipients[cls] = load_recipients(self.data_dir, cls)
        self.params = segment_params(cfg, rate)
        margin = 2 * max(self.source.period_frames, rate // 10)
        capacity = int(cfg.audio.ring_seconds * rate) + self.params.history + 2 * rate + margin
        self.rings = LineRings(len(lines), capacity, rate, margin, blocking=not self.source.realtime)
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.reader = CaptureReader(self.source, self.rings, [ln.channel for ln in lines], self.clock,
                                    cfg.audio.reopen_max_s, self.events)
        self.reader.late_limit_s = cfg.audio.periods * cfg.audio.period_ms / 1000.0
        self.queue: queue.Queue = queue.Queue(maxsize=cfg.storage.queue_blocks)
        self.segmenter = SegmenterWorker(self.rings, lines, self.params, self.queue)
        self.writer = WriterWorker(self.queue, self.data_dir, self.recipients, rate, lines, cfg.storage,
                                   load_device_recovery_recipient(self.data_dir), masker=self._masker(),
                                   key_class_of=lambda channel: key_class_for(self.cfg, channel))
        from ..hal.audio_out import SimulatedSink
        from .notice import NoticeService, check_pins

        check_pins(cfg)
        self.audit = AuditLog(self.data_dir, clock=self.clock, every=cfg.audit.seal_every)
        self.notice = NoticeService(
            cfg, lines, self.data_dir,
            on_result=lambda key, res: self.queue.put(("notice", key, res.as_dict())),
            mode_of=self._notice_mode,
            # a finite source is replayed as fast as it goes: so is its simulated notice output
            sinks=None if self.source.realtime or cfg.notice.outputs else [SimulatedSink(cfg.notice.rate, speed=0)],
            audit=self.audit,
        )
        self.notice.on_shutdown = lambda: os.kill(os.getpid(), signal.SIGTERM)
        self._load_levels()
        self.segmenter.on_call_start = self.notice.request
        self.notice.on_sense = self.segmenter.sense_edge
        self.tests: dict[int, dict] = {}  # channel -> the last test call's phase and result
        self._tests_lock = threading.Lock()
        self.maintainer = StatusMaintainer(self)
        # live recording only: a replay's calls carry past times and must not be expired mid-replay
        self.retention = RetentionMaintainer(self)
        self.config_error = ""
        self.started_at = 0.0
        self._stopped = False

    # -- what the segmenters learned about their lines ------------------------------------
    LEVELS = "run/line-levels.json"

    def _load_levels(self) -> None:
        """Each line's recent call levels (dBFS; no personal data), kept across restarts: an idle
        line's crosstalk is judged against them (dsp.segment, crosstalk_db)."""
        try:
            saved = json.loads((self.data_dir / self.LEVELS).read_text())
        except (OSError, ValueError):
            saved = {}
        for ls in self.segmenter.lines:
            got = saved.get(str(ls.cfg.channel))
            if isinstance(got, list) and all(isinstance(v, (int, float)) for v in got):
                ls.seg.learn_levels(got)
        self._levels_saved = self._levels()

    def _levels(self) -> dict:
        return {str(ls.cfg.channel): [round(v, 2) for v in ls.seg.call_levels] for ls in self.segmenter.lines}

    def save_levels(self) -> None:
        now = self._levels()
        if now != getattr(self, "_levels_saved", None):
            path = self.data_dir / self.LEVELS
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(now))
            os.replace(tmp, path)
            self._levels_saved = now

    def _masker(self):
        """The sealer for masked numbers; without the device secret, lists show no numbers
        (the full numbers are still sealed to the records recipients) and recording goes on."""
        try:
            return BoxSealer(device_for(self.data_dir))
        except (OSError, NokboxError) as exc:
            log.error("device secret unavailable, masked numbers will not be stored: %s", exc)
            return None

    def _notice_mode(self, channel: int) -> str | None:
        idx = CallIndex(self.data_dir / "index.sqlite")
        try:
            return idx.notice_mode(channel)
        finally:
            idx.close()

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        (self.data_dir / "run").mkdir(exist_ok=True)
        from ..vault.recovery import recover_data_dir

        try:
            recover_data_dir(self.data_dir, key_class_of=lambda channel: key_class_for(self.cfg, channel))
        except Exception:  # noqa: BLE001 - recording the lines comes first; the calls wait for `nokbox recover`
            log.exception("recovering interrupted calls failed; recording goes on (run nokbox recover)")
        self.started_at = self.clock.wall()
        self.audit.prune(self.cfg.audit.retention_years)  # and hourly in the status thread
        log.info("recorder starting: %s, %d line(s) at %d Hz", self.source.describe()["backend"],
                 len(self.lines), self.rate)
        # the segmenter's kernels run once before the first chunk arrives (built ahead of time by
        # setup.sh; under numba's JIT this compiles them), so that the segmenter never stalls
        log.info("segmenter ready in %.1f s", warm_up(self.params))
        for i, off in self.notice.sense_state().items():  # a line already off-hook at start
            if off:
                self.segmenter.sense_edge(i, True)
        self.writer.start()
        self.segmenter.start()
        self.maintainer.start()
        if self.source.realtime:
            self.retention.start()
        self.reader.start()

    def stop(self) -> None:
        """Stop capturing, close every call in progress as a complete file, then stop."""
        if self._stopped:
            return
        self._stopped = True
        self.reader.stop()
        self.reader.join(10.0)
        # the segmenter sees eof and finishes open calls; notices in progress complete
        self.segmenter.join(30.0)
        if self.segmenter.is_alive():
            self.segmenter.stop()
        self._finish_writer()
        self.writer.join(60.0)
        if self.writer.is_alive():
            self.writer.stop()
        self.maintainer.stop()
        self.audit.seal("shutdown")
        self.retention.stop()
        log.info("recorder stopped")

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a finite source to be recorded completely. True when done."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in (self.reader, self.segmenter, self.writer):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if t is self.writer:
                self._finish_writer()
            t.join(left)
            if t.is_alive():
                return False
        self.maintainer.stop()
        self._stopped = True
        return True

    def _finish_writer(self) -> None:
        """After the segmenter: let queued notices finish, then tell the writer to stop."""
        if getattr(self, "_writer_told", False):
            return
        self._writer_told = True
        self.notice.close()
        self.queue.put(("stop",))

    # -- configuration ------------------------------------------------------------------
    def reload(self, path: Path | None = None) -> bool:
        """Re-read the config file; a bad file is refused and the running config kept."""
        path = path or self.config_path
        try:
            new, _ = load_config(path)
        except ConfigError as exc:
            self.config_error = str(exc)
            log.error("config reload refused, keeping the running configuration: %s", exc)
            return False
        self.config_error = ""
        changes = config_changes(self.cfg.model_dump(), new.model_dump())
        if changes:
            self.audit.append("config.change", obj=str(path or "built-in defaults"), detail={"changes": changes})
        for key in _RESTART_KEYS:
            if getattr(new, key) != getattr(self.cfg, key):
                log.warning("config section [%s] changed; it takes effect after a restart", key)
        self.cfg = new
        self.params = segment_params(new, self.rate)
        self.segmenter.set_params(self.params)
        names = {ln.channel: ln for ln in new.lines}
        for ls in self.segmenter.lines:
            if ls.cfg.channel in names:
                ls.cfg = names[ls.cfg.channel]
        log.info("config reloaded from %s", path or "built-in defaults")
        return True

    # -- status -------------------------------------------------------------------------
    def status(self) -> dict:
        """A snapshot for the page and `nokbox status`: no personal data."""
        now = self.clock.wall()
        try:
            idx = CallIndex(self.data_dir / "index.sqlite")
            try:
                today = idx.calls_today(now)
            finally:
                idx.close()
        except Exception:  # noqa: BLE001 - status must render even if the index is busy
            today = {}
        r = self.reader
        notice = self.notice.status()
        lines = []
        for ls in self.segmenter.lines:
            lines.append({
                "channel": ls.cfg.channel,
                "name": ls.cfg.name,
                "extension": ls.cfg.extension,
                "state": self.line_state(ls, notice.get(ls.idx)),
                "in_call": ls.call_key is not None,
                "enabled": getattr(ls.cfg, "enabled", True),
                "level_dbfs": self.live_level(ls.idx),
                "floor_dbfs": round(ls.seg.floor_dbfs, 1),
                "call_level_dbfs": None if ls.seg.call_level is None else round(ls.seg.call_level, 1),
                "calls_today": today.get(ls.cfg.channel, 0),
                "overrun_frames": int(self.rings.lost[ls.idx]),
                "overrun_seconds": round(int(self.rings.lost[ls.idx]) / self.rate, 3),
                "lag_seconds": round((self.rings.write_pos - ls.pos) / self.rate, 3),
                "notice": notice.get(ls.idx),
                "notice_config": ls.cfg.notice,
                "provisional": ls.pending,
                "onsets": ls.provisional,
                "withdrawn": ls.withdrawn,
                "sense": None if ls.hook is None else ("off_hook" if ls.hook.state else "on_hook"),
                "sense_alarm": ls.alarm or None,
            })
        try:
            disk = disk_report(self.data_dir, self.cfg, now)
        except Exception:  # noqa: BLE001 - status must render even if the index is busy
            disk = {}
        w = self.writer.stats
        return {
            "time": iso_utc(now),
            "time_local": to_kst(iso_utc(now)),
            "pid": os.getpid(),
            "uptime_s": round(now - self.started_at, 1) if self.started_at else 0.0,
            "device": self.source.describe() | {
                "state": r.state, "xruns": r.xruns, "losses": r.losses, "reopens": r.reopens,
                "gap_seconds": round(r.gap_seconds, 3), "last_error": r.last_error,
                "max_delay_ms": round(r.max_delay_s * 1000.0, 1), "late_reads": r.late_reads,
            },
            "lines": lines,
            "writer": {"calls_open": w.calls_open, "calls_finished": w.calls_finished,
                       "write_errors": w.write_errors, "last_error": w.last_error,
                       "queue": self.queue.qsize(), "queue_max": self.queue.maxsize,
                       "segmenter_waits": self.segmenter.waits},
            "workers": {t.name: {"alive": t.is_alive(), "error": getattr(t, "error", "") or ""}
                        for t in (self.segmenter, self.writer, self.retention)},
            "disk": disk,
            "gpio": self.notice.backend,
            "notice_service": {"enabled": self.notice.enabled, "rate": self.notice.cfg.rate},
            "config_error": self.config_error,
        }

    def live_level(self, idx: int) -> float:
        """dBFS RMS of the last ``METER_WINDOW_S`` captured on line ``idx`` (a copy out of its ring:
        the capture path is not touched); -90 when silent or nothing captured yet."""
        import numpy as np

        wp = self.rings.write_pos
        x, _ = self.rings.read(idx, wp - int(self.rate * METER_WINDOW_S), wp)
        if not len(x):
            return -90.0
        rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) / 32768.0
        return round(max(-90.0, 20.0 * np.log10(rms)) if rms > 0 else -90.0, 1)

    def line_state(self, ls, notice: dict | None) -> str:
        """What a person sees of a line: disabled, fault, notice playing, in call or idle."""
        if not getattr(ls.cfg, "enabled", True):
            return "disabled"
        if (notice or {}).get("alarm") or self.reader.state in ("lost", "failed"):
            return "fault"
        if (notice or {}).get("playing"):
            return "notice_playing"
        return "in_call" if ls.call_key is not None else "idle"

    def levels(self) -> dict:
        """Per-line live level and state, cheap enough for the page's meters at 10 Hz (no disk, no index)."""
        notice = self.notice.status()
        return {"time": self.clock.wall(), "device": self.reader.state, "lines": [
            {"channel": ls.cfg.channel, "level_dbfs": self.live_level(ls.idx),
             "state": self.line_state(ls, notice.get(ls.idx)), "in_call": ls.call_key is not None,
             "test": self.tests.get(ls.cfg.channel)} for ls in self.segmenter.lines]}

    def test_call(self, channel: int, seconds: float = 5.0, actor: str = "-") -> dict:
        """The technician's test call on the line of input ``channel``: record the next ``seconds`` from
        the line's ring, then play it back onto the line through the notice output (the handset hears
        it; the sample never leaves the recorder, is never stored and never reaches the browser).
        Runs in the background; its phase (recording, playing, done, failed) shows in ``levels()``."""
        if not 1.0 <= seconds <= TEST_CALL_MAX_S:
            raise ConfigError(f"a test call is 1 to {TEST_CALL_MAX_S:g} seconds")
        ls = next((x for x in self.segmenter.lines if x.cfg.channel == channel), None)
        if ls is None:
            raise ConfigError(f"no line on channel {channel}")
        with self._tests_lock:
            if (self.tests.get(channel) or {}).get("phase") in ("recording", "playing"):
                raise LineBusy("이 회선에서 시험 통화가 진행 중입니다 · a test call is already running on this line")
            if ls.call_key is not None:
                raise LineBusy("회선이 통화 중입니다. 통화가 끝난 뒤 시험하십시오 · the line is in a call; "
                               "test it when the call has ended")
            state = {"phase": "recording", "seconds": seconds, "failure": None, "started": iso_utc(self.clock.wall())}
            self.tests[channel] = state
        self.audit.append("notice.test_call", actor=actor, role="technician", obj=f"line:{channel}",
                          outcome="ok", reason="started", detail={"seconds": seconds})
        threading.Thread(target=self._run_test_call, args=(ls.idx, channel, seconds, actor, state),
                         name=f"test-call-{channel}", daemon=True).start()
        return dict(state)

    def _run_test_call(self, idx: int, channel: int, seconds: float, actor: str, state: dict) -> None:
        import numpy as np

        try:
            n = int(seconds * self.rate)
            start = self.rings.write_pos
            deadline = time.monotonic() + seconds * 2 + 5
            while self.rings.write_pos < start + n and time.monotonic() < deadline:
                time.sleep(0.05)
            x, first = self.rings.read(idx, start, start + n)
            state["samples"] = [int(first), int(first) + len(x)]  # which ring samples were played back
            if len(x) < n // 2:
                raise NokboxError("the line delivered no audio (is the capture device running?)")
            out_rate = self.notice.cfg.rate
            if out_rate != self.rate:
                from math import gcd

                from scipy.signal import resample_poly

                g = gcd(out_rate, self.rate)
                y = resample_poly(x.astype(np.float32), out_rate // g, self.rate // g)
                x = np.clip(np.round(y), -32768, 32767).astype(np.int16)
            state["phase"] = "playing"
            res = self.notice.play_back(idx, x)
            del x
            state["phase"] = "done" if res.played else "failed"
            state["failure"] = res.failure
        except Exception as exc:  # noqa: BLE001 - a test must end in a phase the page can show
            state["phase"], state["failure"] = "failed", str(exc)
        self.audit.append("notice.test_call", actor=actor, role="technician", obj=f"line:{channel}",
                          outcome="ok" if state["phase"] == "done" else "failed", reason=state["failure"] or "played back")

    def notice_test(self, channel: int) -> dict:
        """Play the notice on the line of input ``channel`` now (the technician's test); the result."""
        for i, ln in enumerate(self.lines):
            if ln.channel == channel:
                return self.notice.test(i).as_dict() | {"channel": channel}
        raise ConfigError(f"no line on channel {channel}")


class StatusMaintainer(threading.Thread):
    """Once a second: log device events and counter changes, record gaps, write run/status.json."""

    def __init__(self, rec: Recorder, interval: float = 1.0) -> None:
        super().__init__(name="status", daemon=True)
        self.rec = rec
        self.interval = interval
        self.stop_event = threading.Event()
        self._seen_lost = [0] * len(rec.lines)
        self._seen_xruns = 0
        self._ticks = 0

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5.0)

    def run(self) -> None:
        idx = CallIndex(self.rec.data_dir / "index.sqlite")
        try:
            while True:
                stopping = self.stop_event.wait(self.interval)
                self.tick(idx)
                if stopping:
                    break
        finally:
            idx.close()

    def tick(self, idx: CallIndex) -> None:
        rec = self.rec
        while True:
            try:
                kind, ts, arg = rec.events.get_nowait()
            except queue.Empty:
                break
            if kind == "lost":
                log.error("audio device lost: %s; retrying with back-off", arg)
                idx.add_event(ts, "lost", detail=str(arg))
            elif kind == "back":
                log.warning("audio device back after %.1f s; the gap is recorded", arg)
                idx.add_event(ts, "back", seconds=float(arg))
            elif kind == "open_failed":
                log.warning("audio device not available: %s", arg)
                idx.add_event(ts, "open_failed", detail=str(arg))
        r = rec.reader
        if r.xruns != self._seen_xruns:
            log.warning("capture overruns (xruns): %d (+%d)", r.xruns, r.xruns - self._seen_xruns)
            idx.add_event(rec.clock.wall(), "xrun", seconds=None, detail=str(r.xruns - self._seen_xruns))
            self._seen_xruns = r.xruns
        for i, ln in enumerate(rec.lines):
            lost = int(rec.rings.lost[i])
            if lost != self._seen_lost[i]:
                delta = lost - self._seen_lost[i]
                log.error("line %d (%s): pipeline fell behind, %.2f s of audio lost (total %.2f s)",
                          ln.channel, ln.name, delta / rec.rate, lost / rec.rate)
                idx.add_event(rec.clock.wall(), "overrun", line=ln.channel, seconds=delta / rec.rate)
                self._seen_lost[i] = lost
        rec.notice.update_led(any(ls.call_key is not None for ls in rec.segmenter.lines))
        write_status(rec.data_dir, rec.status())
        try:
            rec.save_levels()
        except OSError as exc:
            log.warning("line levels not saved: %s", exc)
        self._ticks += 1
        if self._ticks % 3600 == 0:
            rec.audit.prune(rec.cfg.audit.retention_years)


def write_status(data_dir: Path, status: dict) -> None:
    """Atomically replace run/status.json."""
    run = Path(data_dir) / "run"
    tmp = run / "status.json.tmp"
    tmp.write_text(json.dumps(status, ensure_ascii=False, indent=1))
    os.replace(tmp, run / "status.json")

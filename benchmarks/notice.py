"""Notice benchmark: delay from a call's start to relay on and to the first notice sample.

Run:  .venv/bin/python benchmarks/notice.py [--singles 200] [--announcement-s 2]

Uses the real NoticeService (gpiozero MockFactory relays, the simulated output running in
real time) for 16 lines:
- single call starts, one at a time: what one caller experiences (target p99 <= 250 ms);
- a burst of 16 simultaneous call starts, with one shared output and with one output per
  line: the waiting time the notice records when the output is busy.
Also prints the segmenter's own detection latency (audio from first activity to the call's
start event) on the labelled corpus, since that comes before the notice's clock starts, and
off-hook -> notice for the two kinds of line (issue 16):
- sense-wired: the whole recorder on one line played in real time, a gpiozero MockFactory pin
  driven off-hook (after a burst of ringing on it) and the notice relay's pin watched: milliseconds
  from the edge to the relay closing and to the first notice sample;
- audio only: on the labelled corpus (tests/corpus.py, 0.1 s blocks as the recorder feeds them),
  seconds from each call's off-hook click to the block in which the segmenter raised it
  (provisional onset, or confirmation), plus the relay and output times above.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from firmware.config import parse_config  # noqa: E402
from firmware.hal.audio_out import SimulatedSink  # noqa: E402
from firmware.recording.notice import NoticeService  # noqa: E402

LINES = 16


def make_service(data: Path, outputs: int, speed: float):
    cfg = parse_config({"audio": {"channels": LINES}, "notice": {"gpio": "mock", "settle_ms": 50}})
    done: dict[int, object] = {}
    cond = threading.Condition()

    def on_result(key, res):
        with cond:
            done[key] = res
            cond.notify_all()

    svc = NoticeService(cfg, cfg.lines, data, on_result, lambda ch: None,
                        sinks=[SimulatedSink(8000, speed=speed) for _ in range(outputs)])
    return svc, done, cond


def pct(xs, q):
    xs = [x for x in xs if x is not None]
    return float(np.percentile(np.asarray(xs, dtype=float), q)) if xs else float("nan")


def singles(data: Path, n: int) -> dict:
    svc, done, cond = make_service(data, 1, speed=50.0)
    relay, first = [], []
    for k in range(n):
        svc.request(k % LINES, key=k)
        with cond:
            cond.wait_for(lambda: k in done, 30)
        relay.append(done[k].relay_ms)
        first.append(done[k].delay_ms)
    svc.close()
    return {"relay": relay, "first": first}


def burst(data: Path, outputs: int) -> dict:
    svc, done, cond = make_service(data, outputs, speed=1.0)
    t0 = time.monotonic()
    for line in range(LINES):
        svc.request(line, key=line, t0=t0)
    with cond:
        cond.wait_for(lambda: len(done) == LINES, 600)
    svc.close()
    res = [done[k] for k in range(LINES)]
    return {"relay": [r.relay_ms for r in res], "first": [r.delay_ms for r in res],
            "wait": [r.wait_ms for r in res], "played": sum(r.played for r in res)}


def detection_latency() -> list[float]:
    """Seconds from a call's off-hook click to the segmenter's start event, on synthetic calls."""
    from dsp.segment import CallStart
    from firmware.config import NokboxConfig
    from firmware.recording.recorder import segment_params
    from tests.conftest import place_calls

    rate = 8000
    plan = [[(5.0 + 60 * k, 20.0)] for k in range(4)]
    audio, labels = place_calls(rate, 320.0, plan)
    params = segment_params(NokboxConfig(), rate)
    out = []
    seg_cls = __import__("dsp.segment", fromlist=["x"])
    for ln in range(len(plan)):
        seg = getattr(seg_cls, "LineSegmenter", getattr(seg_cls, "EnergySegmenter", None))(params)
        for s in range(0, len(audio), rate // 10):  # the pipeline hands over 0.1 s at a time
            for ev in seg.process(audio[s:s + rate // 10, ln], s):
                if isinstance(ev, CallStart):
                    out.append((s + rate // 10 - labels[ln][0][0]) / rate)
    return out


def sense_wired(n: int = 8) -> dict:
    """Off-hook edge -> relay closed / first notice sample, through the whole recorder (ms)."""
    import tempfile as _tf

    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    from dsp import synth
    from firmware.hal.audio import ArraySource
    from firmware.recording.recorder import Recorder
    from firmware.vault.keys import init_data_dir

    period = 12.0
    rng = np.random.default_rng(5)
    x = synth.line_noise(rng, int((n * period + 4) * 8000), 8000, hiss_dbfs=-60.0)
    for k in range(n):  # talk 0.6 s after each off-hook, for 5 s
        sp = synth.speech_like(rng, 5.0, 8000, -20.0)
        a = int((2.6 + k * period) * 8000)
        x[a:a + len(sp)] += sp
    audio = synth.to_int16(x)[:, None]
    old = Device.pin_factory
    Device.pin_factory = factory = MockFactory()
    relay_ms, first_ms = [], []
    try:
        with _tf.TemporaryDirectory() as d:
            data = Path(d) / "data"
            init_data_dir(data, Path(d) / "id.txt")
            cfg = parse_config({"notice": {"gpio": "mock", "settle_ms": 50},
                                "line": [{"channel": 0, "name": "line", "relay_pin": 17, "sense_pin": 23}]})
            rec = Recorder(cfg, data, source=ArraySource(audio, 8000, 160, realtime=True, pace=1.0))
            sense, relay = factory.pin(23), factory.pin(17)
            sense.drive_high()
            sink = rec.notice.sinks[0]
            rec.start()
            t0 = time.monotonic()
            for k in range(n):
                base = t0 + k * period
                time.sleep(max(0.0, base + 1.0 - time.monotonic()))
                for _ in range(10):  # ringing seen by the detector
                    sense.drive_low()
                    time.sleep(0.02)
                    sense.drive_high()
                    time.sleep(0.03)
                time.sleep(max(0.0, base + 2.0 - time.monotonic()))
                before = len(sink.history)
                sense.drive_low()
                t_edge = time.monotonic()
                t_relay = None
                while time.monotonic() - t_edge < 3.0:
                    if t_relay is None and relay.state:
                        t_relay = time.monotonic()
                    if len(sink.history) > before:
                        break
                    time.sleep(0.001)
                if t_relay is not None:
                    relay_ms.append(1000 * (t_relay - t_edge))
                if len(sink.history) > before:
                    first_ms.append(1000 * (sink.history[before][0] - t_edge))
                time.sleep(max(0.0, base + 9.0 - time.monotonic()))
                sense.drive_high()  # on-hook
            rec.stop()
    finally:
        factory.reset()
        Device.pin_factory = old
    return {"relay": relay_ms, "first": first_ms, "n": n}


def audio_only() -> list[float]:
    """Seconds from each corpus call's off-hook to the 0.1 s block in which it was raised."""
    from firmware.config import NokboxConfig
    from firmware.recording.recorder import segment_params
    from tests.corpus import LineSpec, build_line, segment_line

    params = segment_params(NokboxConfig(), 8000)
    out = []
    for ln, (snr, comp) in enumerate(((20.0, None), (30.0, "mulaw"), (25.0, "alaw"), (15.0, None))):
        x, labels = build_line(LineSpec(seconds=1800.0, snr_db=snr, companding=comp, seed=4242 + ln))
        found = segment_line(x, params, block=800)
        for lab in labels:
            f = [c for c in found if c.start < lab.end and c.end > lab.first_speech]
            if f:
                out.append((f[0].raised - lab.hook) / 8000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--singles", type=int, default=200)
    ap.add_argument("--announcement-s", type=float, default=2.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        data = Path(d)
        (data / "notice").mkdir()
        t = np.arange(int(args.announcement_s * 8000)) / 8000
        sf.write(data / "notice" / "announcement.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 8000)
        one = singles(data, args.singles)
        shared = burst(data, 1)
        each = burst(data, LINES)
    lat = detection_latency()
    sensed = sense_wired()
    audio = np.asarray(audio_only())
    print(f"nokbox notice benchmark: {LINES} lines, settle 50 ms, announcement {args.announcement_s:g} s")
    print(f"single call starts ({args.singles}):")
    print(f"  call start -> relay on        median {pct(one['relay'], 50):7.1f} ms   p99 {pct(one['relay'], 99):7.1f} ms")
    print(f"  call start -> first sample    median {pct(one['first'], 50):7.1f} ms   p99 {pct(one['first'], 99):7.1f} ms"
          "   target p99 <= 250 ms")
    for name, b in (("burst of 16, one shared output", shared), ("burst of 16, one output per line", each)):
        print(f"{name}: {b['played']}/{LINES} played (the rest gave up after notice.max_wait_s = 10 s: "
              f"'output_busy')" if b["played"] < LINES else f"{name}: {b['played']}/{LINES} played")
        print(f"  relay on      median {pct(b['relay'], 50):8.1f} ms   p99 {pct(b['relay'], 99):8.1f} ms")
        print(f"  first sample  median {pct(b['first'], 50):8.1f} ms   p99 {pct(b['first'], 99):8.1f} ms")
        print(f"  waited        median {pct(b['wait'], 50):8.1f} ms   max {max(b['wait']):8.1f} ms")
    print(f"segmenter detection (off-hook click -> call start event, 0.1 s blocks): "
          f"median {pct(lat, 50):.2f} s, max {max(lat):.2f} s over {len(lat)} calls")
    print(f"off-hook -> notice, sense-wired line (whole recorder, real time, {sensed['n']} off-hooks after ringing, "
          f"settle 50 ms):")
    print(f"  edge -> relay on        median {pct(sensed['relay'], 50):7.1f} ms   max {max(sensed['relay'] or [0]):7.1f} ms"
          f"   ({len(sensed['relay'])}/{sensed['n']})")
    print(f"  edge -> first sample    median {pct(sensed['first'], 50):7.1f} ms   max {max(sensed['first'] or [0]):7.1f} ms"
          f"   target <= 300 ms")
    print(f"off-hook -> call raised, audio only ({len(audio)} corpus calls, 4 lines x 30 min, chunk_s 4): median "
          f"{np.median(audio):.2f} s, p95 {np.percentile(audio, 95):.2f} s, max {audio.max():.2f} s; within 1.0 s "
          f"(less the relay and output times above): {int((audio <= 1.0 - pct(one['first'], 50) / 1000).sum())}"
          f"/{len(audio)}   target <= 1.0 s")


if __name__ == "__main__":
    main()

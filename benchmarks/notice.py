"""Notice benchmark: delay from a call's start to relay on and to the first notice sample.

Run:  .venv/bin/python benchmarks/notice.py [--singles 200] [--announcement-s 2]

Uses the real NoticeService (gpiozero MockFactory relays, the simulated output running in
real time) for 16 lines:
- single call starts, one at a time: what one caller experiences (target p99 <= 250 ms);
- a burst of 16 simultaneous call starts, with one shared output and with one output per
  line: the waiting time the notice records when the output is busy.
Also prints the segmenter's own detection latency (audio from first activity to the call's
start event) on the labelled corpus, since that comes before the notice's clock starts.
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


if __name__ == "__main__":
    main()

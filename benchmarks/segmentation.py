"""Call segmentation scored against labels, beside two reference segmenters, on the same audio.

Corpus: ``tests/corpus.py`` lines (real English prompts, espeak-ng Korean, asterisk hold
music, Korean tones, DTMF dialling, FSK/DTMF caller ID, clicks, crackle, crosstalk, hum,
hiss at 10-35 dB SNR, with and without G.711), labelled per call.

Segmenters:
  * nokbox   -- dsp.segment.LineSegmenter with the default (Korean) settings; its compiled kernels
                are loaded once before the timing (``warm_up``, as the recorder does at start)
  * webrtc   -- WebRTC VAD, mode 2, 30 ms frames; a call runs from the first voiced frame
                until 5 s have passed without voice (the common recorder setting)
  * rms      -- RMS threshold VAD (Oreka's method): starts at -40 dBFS, continues over
                -45 dBFS, 4 s hold-on

Metrics per segmenter: call recall and precision, splits, merges, false calls, seconds of
labelled speech outside every call, worst onset clip (ms from the first speech back to the
call start; 0 when the call starts before it), median end lag (call end minus on-hook),
dialled-number and caller-ID accuracy (nokbox only), and CPU seconds per line-hour of the
segmenter alone (WebRTC VAD: the VAD calls alone). Timings are printed, never asserted.

    .venv/bin/python benchmarks/segmentation.py                   # 4 lines x 60 min
    .venv/bin/python benchmarks/segmentation.py --lines 2 --minutes 10
    .venv/bin/python benchmarks/segmentation.py --seed 7 --verbose   # another corpus, misses listed
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one core per segmenter, as in the recorder
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from dsp.segment import SegmentParams  # noqa: E402
from tests.corpus import Found, LineSpec, build_line, misses, score, segment_line  # noqa: E402

RATE = 8000
SNRS = (10.0, 20.0, 35.0, 15.0, 25.0, 30.0)
COMPANDING = (None, "mulaw", "alaw", None)


def webrtc_calls(x: np.ndarray, rate: int) -> tuple[list[Found], float]:
    import webrtcvad

    vad = webrtcvad.Vad(2)
    flen = rate * 30 // 1000
    n = len(x) // flen
    raw = x[:n * flen].tobytes()
    step = flen * 2
    t = time.process_time()
    voiced = np.fromiter((vad.is_speech(raw[i * step:(i + 1) * step], rate) for i in range(n)), bool, n)
    cpu = time.process_time() - t
    return _hang(voiced, flen, 5.0, rate), cpu


def rms_calls(x: np.ndarray, rate: int) -> tuple[list[Found], float]:
    t = time.process_time()
    flen = rate * 20 // 1000
    n = len(x) // flen
    f = x[:n * flen].astype(np.float32).reshape(n, flen)
    with np.errstate(divide="ignore"):
        lv = 10 * np.log10(np.maximum((f * f).mean(axis=1), 1e-3) / 32768.0 ** 2)
    high, low = lv >= -40.0, lv >= -45.0
    out: list[Found] = []
    hold = int(4.0 * rate / flen)
    i = 0
    while True:
        s = np.flatnonzero(high[i:])
        if not len(s):
            break
        a = i + int(s[0])
        j = a
        while True:  # extend while low-threshold activity keeps coming within the hold-on
            nxt = np.flatnonzero(low[j + 1:j + 1 + hold])
            if not len(nxt):
                break
            j = j + 1 + int(nxt[-1])
        out.append(Found(a * flen, min(len(x), (j + 1 + hold) * flen), "silence"))
        i = j + 1 + hold
    return out, time.process_time() - t


def _hang(voiced: np.ndarray, flen: int, hang_s: float, rate: int) -> list[Found]:
    out: list[Found] = []
    idx = np.flatnonzero(voiced)
    if not len(idx):
        return out
    hang = int(hang_s * rate / flen)
    breaks = np.flatnonzero(np.diff(idx) > hang)
    starts = np.concatenate(([idx[0]], idx[breaks + 1]))
    ends = np.concatenate((idx[breaks], [idx[-1]]))
    return [Found(int(s) * flen, int(e + 1 + hang) * flen, "silence") for s, e in zip(starts, ends)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=2024, help="corpus seed (line i uses seed + i)")
    ap.add_argument("--verbose", action="store_true", help="list nokbox's misses per line")
    ap.add_argument("--chunk", type=float, default=None, help="segment.chunk_s (default: the config's)")
    args = ap.parse_args()
    from firmware.config import SegmentConfig

    chunk_s = args.chunk if args.chunk is not None else SegmentConfig().chunk_s
    params = SegmentParams(rate=RATE, chunk_s=chunk_s)
    # the recorder runs (under the JIT: compiles) the segmenter's kernels once, at start: not part of the per-line cost
    from dsp.segment import warm_up
    t = time.process_time()
    warm_up(params)
    warm_cpu = time.process_time() - t
    names = ("nokbox", "webrtc", "rms")
    totals: dict[str, list[dict]] = {k: [] for k in names}
    cpu = {k: 0.0 for k in names}
    t0 = time.monotonic()
    for ln in range(args.lines):
        spec = LineSpec(rate=RATE, seconds=args.minutes * 60.0, snr_db=SNRS[ln % len(SNRS)],
                        companding=COMPANDING[ln % len(COMPANDING)], seed=args.seed + ln)
        x, labels = build_line(spec)
        t = time.process_time()
        ours = segment_line(x, params, block=RATE)
        cpu["nokbox"] += time.process_time() - t
        w, c = webrtc_calls(x, RATE)
        cpu["webrtc"] += c
        r, c = rms_calls(x, RATE)
        cpu["rms"] += c
        for k, found in zip(names, (ours, w, r)):
            sc = score(labels, found, RATE)
            totals[k].append(sc)
        print(f"line {ln}: {spec.snr_db:.0f} dB SNR, {spec.companding or 'linear'}, {len(labels)} calls "
              f"({sum(1 for lab in labels if lab.dialed)} dialled, {sum(1 for lab in labels if lab.caller_id)} "
              f"with caller ID, {sum(1 for lab in labels if lab.hold_s)} on hold, longest pause "
              f"{max((lab.longest_pause_s for lab in labels), default=0):.1f} s)", flush=True)
        if args.verbose:
            for m in misses(labels, ours, RATE):
                print("    " + m, flush=True)
    hours = args.lines * args.minutes / 60.0
    print(f"\nnokbox chunk_s = {params.chunk / RATE:g} s; start latency = samples fed from a call's first sign "
          f"(click or caller ID) until its CallStart came out")
    print(f"segmenter kernels run once at start (warm_up) in {warm_cpu:.2f} s CPU, not counted below")
    print(f"corpus: {args.lines} lines x {args.minutes:.0f} min = {hours:.1f} line-hours at {RATE} Hz "
          f"(generated and scored in {time.monotonic() - t0:.0f} s wall)\n")
    rows = []
    for k in names:
        s = totals[k]
        calls = sum(d["calls"] for d in s)
        found = sum(d["found"] for d in s)
        good = sum(d["precision"] * d["found"] for d in s)
        dial = (sum(d["dialed"][0] for d in s), sum(d["dialed"][1] for d in s))
        cid = (sum(d["caller_id"][0] for d in s), sum(d["caller_id"][1] for d in s))
        lags = [d["median_end_lag_s"] for d in s]
        rows.append((k, {
            "calls (labelled / found)": f"{calls} / {found}",
            "recall": f"{sum(d['hit'] for d in s) / calls:.3f}",
            "precision": f"{good / found if found else 1.0:.3f}",
            "calls found whole": f"{sum(d['whole'] for d in s)}",
            "splits": f"{sum(d['splits'] for d in s)}",
            "merges": f"{sum(d['merges'] for d in s)}",
            "false calls": f"{sum(d['false_calls'] for d in s)}",
            "speech lost (s)": f"{sum(d['speech_lost_s'] for d in s):.1f} of {sum(d['speech_s'] for d in s):.0f}",
            "worst onset clip (ms)": f"{max(d['worst_onset_clip_ms'] for d in s):.0f}",
            "median end lag (s)": f"{float(np.median(lags)):+.2f}",
            "dialled numbers exact": f"{dial[0]}/{dial[1]} ({100.0 * dial[0] / max(dial[1], 1):.1f} %)"
            if k == "nokbox" else "n/a",
            "caller ID exact": f"{cid[0]}/{cid[1]}" if k == "nokbox" else "n/a",
            "start latency median/max (s)": (lambda v: f"{np.median(v):.2f} / {max(v):.2f}")(
                [t for d in s for t in d["latency_s"]]) if k == "nokbox" else "n/a",
            "CPU s per line-hour": f"{cpu[k] / hours:.3f}",
        }))
    keys = list(rows[0][1])
    w0 = max(len(k) for k in keys)
    print(f"{'':<{w0}}  " + "  ".join(f"{k:>18}" for k, _ in rows))
    for key in keys:
        print(f"{key:<{w0}}  " + "  ".join(f"{r[key]:>18}" for _, r in rows))
    print("\ntargets (nokbox): recall >= 0.99, precision >= 0.99, 0 splits, 0 merges, 0 s speech lost, "
          "0 ms onset clip, dialled numbers >= 98 % exact, CPU per line <= WebRTC VAD's")
    return 0


if __name__ == "__main__":
    sys.exit(main())

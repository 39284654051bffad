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

The recorder hands the segmenter 0.1 s blocks, and so does this benchmark (``--block``): the
provisional onset stage looks at every block, and its cost is counted in nokbox's CPU figure.

    .venv/bin/python benchmarks/segmentation.py                   # 4 lines x 60 min
    .venv/bin/python benchmarks/segmentation.py --lines 2 --minutes 10
    .venv/bin/python benchmarks/segmentation.py --seed 7 --verbose   # another corpus, misses listed
    .venv/bin/python benchmarks/segmentation.py --chunks 2,4,8       # numbers and onsets per chunk_s
    .venv/bin/python benchmarks/segmentation.py --distractors --idle-hours 24
        # lines with mains hum, crosstalk and switching clicks between the calls: false calls per
        # idle line-hour and per distractor; then 24 line-hours of idle lines with distractors only:
        # provisional onsets (each would have played the notice) per line-day
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
from tests.corpus import (Found, LineSpec, build_line, build_line_with_distractors, false_by_distractor,  # noqa: E402
                          misses, score, segment_line)

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


CALL_DBFS = (-14.0, -20.0, -16.0, -24.0)  # call levels of the distractor lines (line-level capture)


def learned_levels(spec: LineSpec, params: SegmentParams, block: int) -> list[float]:
    """The call levels a recorder learns on 20 minutes of this line's calls (what it knows of an
    idle line it has been recording)."""
    from dsp.segment import LineSegmenter

    x, _ = build_line(LineSpec(rate=RATE, seconds=1200.0, snr_db=spec.snr_db, seed=spec.seed + 1000,
                               call_dbfs=spec.call_dbfs))
    seg = LineSegmenter(params)
    for i in range(0, len(x), block):
        seg.process(x[i:i + block], i)
    seg.finish("eof")
    return seg.call_levels


def onsets(x: np.ndarray, params: SegmentParams, block: int, levels=None) -> tuple[list[tuple[int, int]], int]:
    """(raised, fed) of every provisional onset, and how many were withdrawn."""
    from dsp.segment import CallOnset, CallWithdrawn, LineSegmenter

    seg = LineSegmenter(params)
    if levels:
        seg.learn_levels(levels)
    out, gone = [], 0
    for i in range(0, len(x), block):
        for ev in seg.process(x[i:i + block], i):
            if isinstance(ev, CallOnset):
                out.append((ev.raised, min(i + block, len(x))))
            gone += isinstance(ev, CallWithdrawn)
    gone += sum(isinstance(ev, CallWithdrawn) for ev in seg.finish("eof"))
    return out, gone


def notice_delays(labels, found: list[Found]) -> list[float]:
    """Seconds from each call's off-hook to when the recorder would switch the notice on."""
    out = []
    for lab in labels:
        f = [c for c in found if c.start < lab.end and c.end > lab.first_speech]
        if f and f[0].raised >= 0:
            out.append((f[0].raised - lab.hook) / RATE)
    return out


def chunk_table(args) -> None:
    """Per chunk_s: recall, precision, numbers by companding, off-hook -> notice (nokbox only)."""
    print(f"\nper chunk_s ({args.lines} lines x {args.minutes:.0f} min, seed {args.seed}, {args.block / RATE:g} s blocks):")
    lines = []
    for ln in range(args.lines):
        spec = LineSpec(rate=RATE, seconds=args.minutes * 60.0, snr_db=SNRS[ln % len(SNRS)],
                        companding=COMPANDING[ln % len(COMPANDING)], seed=args.seed + ln)
        lines.append((spec, *build_line(spec)))
    for chunk_s in args.chunks:
        params = SegmentParams(rate=RATE, chunk_s=chunk_s)
        by: dict[str, list[int]] = {}
        rec = prec_good = prec_n = calls = 0
        delays: list[float] = []
        for spec, x, labels in lines:
            found = segment_line(x, params, block=args.block)
            sc = score(labels, found, RATE)
            calls += sc["calls"]
            rec += sc["hit"]
            prec_good += sc["precision"] * sc["found"]
            prec_n += sc["found"]
            k = spec.companding or "linear"
            d = by.setdefault(k, [0, 0, 0, 0])
            d[0] += sc["dialed"][0]
            d[1] += sc["dialed"][1]
            d[2] += sc["caller_id"][0]
            d[3] += sc["caller_id"][1]
            delays += notice_delays(labels, found)
        nums = "  ".join(f"{k}: dialled {d[0]}/{d[1]}, caller ID {d[2]}/{d[3]}" for k, d in sorted(by.items()))
        dl = np.asarray(delays)
        print(f"  chunk_s {chunk_s:g}: recall {rec / calls:.3f}, precision {prec_good / max(prec_n, 1):.3f}; {nums}")
        print(f"    off-hook -> notice on (audio only): median {np.median(dl):.2f} s, p95 {np.percentile(dl, 95):.2f} s, "
              f"max {dl.max():.2f} s; within 1.0 s: {int((dl <= 1.0).sum())}/{len(dl)}")


def distractor_table(args) -> None:
    params = SegmentParams(rate=RATE, chunk_s=args.chunk if args.chunk is not None else 4.0)
    print(f"\nnoisy idle lines: {args.lines} lines x {args.minutes:.0f} min, calls at {CALL_DBFS} dBFS, "
          f"mains hum / crosstalk 25-40 dB under the calls / switching clicks between them (seed {args.seed + 100})")
    tot: dict[str, int] = {}
    placed: dict[str, int] = {}
    idle_s = 0.0
    scs = []
    for ln in range(args.lines):
        spec = LineSpec(rate=RATE, seconds=args.minutes * 60.0, snr_db=(38.0, 30.0, 34.0, 25.0)[ln % 4],
                        companding=COMPANDING[ln % len(COMPANDING)], seed=args.seed + 100 + ln,
                        call_dbfs=CALL_DBFS[ln % len(CALL_DBFS)], distractors=True, idle_s=(30.0, 240.0))
        x, labels, dis = build_line_with_distractors(spec)
        found = segment_line(x, params, block=args.block)
        scs.append(score(labels, found, RATE))
        for k, v in false_by_distractor(found, labels, dis, RATE).items():
            tot[k] = tot.get(k, 0) + v
        for k, _, _ in dis:
            placed[k] = placed.get(k, 0) + 1
        idle_s += (len(x) - sum(lab.end - lab.start for lab in labels)) / RATE
        if args.verbose:
            for m in misses(labels, found, RATE):
                print("    " + m)
    calls = sum(d["calls"] for d in scs)
    found_n = sum(d["found"] for d in scs)
    good = sum(d["precision"] * d["found"] for d in scs)
    hours = idle_s / 3600.0
    print(f"  calls {calls}, found {found_n}: recall {sum(d['hit'] for d in scs) / calls:.3f}, precision "
          f"{good / max(found_n, 1):.3f}, splits {sum(d['splits'] for d in scs)}, merges {sum(d['merges'] for d in scs)}, "
          f"speech lost {sum(d['speech_lost_s'] for d in scs):.1f} s, worst onset clip "
          f"{max(d['worst_onset_clip_ms'] for d in scs):.0f} ms")
    print(f"  idle time {hours:.1f} line-hours; distractors placed {placed}")
    for k in ("hum", "crosstalk", "clicks", "other"):
        n = tot.get(k, 0)
        print(f"  false calls from {k:9}: {n:3d}  ({n / hours:.2f} per idle line-hour)")
    if args.idle_hours:
        per = 6.0  # hours per idle line
        n_lines = max(1, int(round(args.idle_hours / per)))
        raised = gone = 0
        idle_false: dict[str, int] = {}
        t0 = time.process_time()
        for k in range(n_lines):
            spec = LineSpec(rate=RATE, seconds=per * 3600.0, snr_db=(38.0, 30.0, 34.0, 25.0)[k % 4],
                            seed=args.seed + 500 + k, call_dbfs=CALL_DBFS[k % 4], distractors=True, calls=False)
            levels = learned_levels(spec, params, args.block)
            x, _, dis = build_line_with_distractors(spec)
            ons, g = onsets(x, params, args.block, levels)
            raised += len(ons)
            gone += g
            for kind, v in false_by_distractor(segment_line(x, params, block=args.block, levels=levels), [], dis,
                                               RATE).items():
                idle_false[kind] = idle_false.get(kind, 0) + v
        day = n_lines * per / 24.0
        print(f"  idle lines only ({n_lines} x {per:g} h = {n_lines * per:g} line-hours, distractors only, the lines' "
              f"call levels learned from 20 min of their calls first): {raised} provisional onsets "
              f"({raised / day:.2f} per line-day; each would play the notice), {gone} withdrawn; false calls "
              f"{idle_false or 0}; {time.process_time() - t0:.0f} s CPU")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lines", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=2024, help="corpus seed (line i uses seed + i)")
    ap.add_argument("--verbose", action="store_true", help="list nokbox's misses per line")
    ap.add_argument("--chunk", type=float, default=None, help="segment.chunk_s (default: the config's)")
    ap.add_argument("--chunks", type=lambda v: [float(c) for c in v.split(",")], default=None,
                    help="also: recall, numbers and off-hook -> notice at each of these chunk_s (e.g. 2,4,8)")
    ap.add_argument("--block", type=int, default=RATE // 10, help="samples handed over at a time (the recorder's 0.1 s)")
    ap.add_argument("--distractors", action="store_true", help="also: noisy idle lines (hum, crosstalk, clicks)")
    ap.add_argument("--idle-hours", type=float, default=0.0, help="with --distractors: idle line-hours for onsets")
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
    notice_d: list[float] = []
    for ln in range(args.lines):
        spec = LineSpec(rate=RATE, seconds=args.minutes * 60.0, snr_db=SNRS[ln % len(SNRS)],
                        companding=COMPANDING[ln % len(COMPANDING)], seed=args.seed + ln)
        x, labels = build_line(spec)
        t = time.process_time()
        ours = segment_line(x, params, block=args.block)
        cpu["nokbox"] += time.process_time() - t
        notice_d += notice_delays(labels, ours)
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
            "off-hook -> notice med/p95/max (s)": (lambda v: f"{np.median(v):.2f}/{np.percentile(v, 95):.2f}/"
                                                          f"{max(v):.2f}")(notice_d) if k == "nokbox" else "n/a",
            "CPU s per line-hour": f"{cpu[k] / hours:.3f}",
        }))
    keys = list(rows[0][1])
    w0 = max(len(k) for k in keys)
    print(f"{'':<{w0}}  " + "  ".join(f"{k:>18}" for k, _ in rows))
    for key in keys:
        print(f"{key:<{w0}}  " + "  ".join(f"{r[key]:>18}" for _, r in rows))
    print("\ntargets (nokbox): recall >= 0.99, precision >= 0.99, 0 splits, 0 merges, 0 s speech lost, "
          "0 ms onset clip, dialled numbers >= 98 % exact, caller IDs >= 99 %, off-hook -> notice <= 1.0 s "
          "(audio only), <= 1 provisional onset per idle line-day, CPU per line <= WebRTC VAD's")
    if args.chunks:
        chunk_table(args)
    if args.distractors:
        distractor_table(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

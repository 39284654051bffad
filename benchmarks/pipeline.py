"""Throughput and memory of the recording pipeline over synthetic line audio.

What it measures
  * The whole recorder, run exactly as ``nokbox replay`` runs it (WavSource ->
    capture reader -> line rings -> segmenter -> age-encrypted WAV writer + SQLite
    index), over a multi-channel WAV of synthetic "busy office" line traffic:
    process CPU seconds (all threads) and wall seconds of ``Recorder.start()`` +
    ``Recorder.wait()`` only, peak RSS of the process that ran it, the calls it
    recorded and the samples it lost.
  * As a reference, the same audio through webrtcvad alone (mode 2, 30 ms frames,
    one detector per line), read from the WAV in blocks; its CPU time covers the
    block reads and the VAD calls.

Generating the audio is not measured. Generation and the pipeline each run in a
fresh child interpreter of a parent that imports only the standard library: Linux
carries ``ru_maxrss`` over from the parent across fork/vfork + exec, so a parent
that had held the generated audio would inflate the pipeline's peak RSS.
Timings are printed, never asserted: the exit status is 0 unless the pipeline
could not be run at all.

Run it (from the repository root):

    .venv/bin/python benchmarks/pipeline.py                 # 16 lines x 10 min
    .venv/bin/python benchmarks/pipeline.py --minutes 1 --lines 4   # quick run
    .venv/bin/python benchmarks/pipeline.py --tracemalloc   # and Python's top five allocation sites
    .venv/bin/python benchmarks/pipeline.py --page-load     # a busy page beside a live capture
                                                            # (benchmarks/page_load.py)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RATE = 8000
SEED = 2024
FIRST_CALL_S = 5.0
IDLE_S = (10.0, 60.0)  # busy office: short gaps between calls ...
TALK_S = (20.0, 120.0)  # ... and calls of a few minutes
START_WALL = dt.datetime(2024, 3, 4, 9, 0, tzinfo=dt.timezone(dt.timedelta(hours=9))).timestamp()

TARGET_LINES_PER_CORE = 100
TARGET_RSS_MB = 120.0
TARGET_RSS_LINES = 16

VAD_MODE = 2
VAD_FRAME_MS = 30
VAD_BLOCK_FRAMES = 200  # VAD frames read from the WAV at once (6 s at 30 ms)


# -- helpers --------------------------------------------------------------------------
def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def vm_hwm_mb() -> float:
    """Peak RSS of this process image from /proc (not inherited across exec), in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def smaps_by_mapping() -> dict[str, int]:
    """Resident KiB of this process by what is mapped (/proc/self/smaps): a shared library or
    extension module by its file name, [heap], [stack], and anonymous mappings (numpy buffers,
    Python's arenas, thread stacks) as [anon]."""
    out: dict[str, int] = {}
    name = "[anon]"
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):
                path = head[5].strip() if len(head) > 5 else ""
                name = Path(path).name if path.startswith("/") else (path or "[anon]")
            elif line.startswith("Rss:"):
                out[name] = out.get(name, 0) + int(line.split()[1])
    return out


class MemorySampler:
    """Every ``every`` seconds, the process's RSS (smaps_rollup); at each new high, where it is
    (smaps by mapping): the breakdown at the peak."""

    def __init__(self, every: float = 0.5) -> None:
        import threading

        self.every, self.peak_kib, self.at_peak = every, 0, {}
        self.traced: tuple[int, list] | None = None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, name="mem-sampler", daemon=True)

    def _rss_kib(self) -> int:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    return int(line.split()[1])
        return 0

    def _run(self) -> None:
        import tracemalloc

        while not self._stop.wait(self.every):
            rss = self._rss_kib()
            if rss > self.peak_kib:
                self.peak_kib, self.at_peak = rss, smaps_by_mapping()
                if tracemalloc.is_tracing():  # (--tracemalloc) where Python's own allocations are
                    snap = tracemalloc.take_snapshot().filter_traces(
                        [tracemalloc.Filter(False, tracemalloc.__file__)])
                    self.traced = (sum(st.size for st in snap.statistics("filename")),
                                   [(f"{st.traceback[0].filename.replace(str(ROOT) + '/', '')}:{st.traceback[0].lineno}",
                                     st.size, st.count) for st in snap.statistics("lineno")[:5]])

    def __enter__(self) -> "MemorySampler":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join(5.0)

    def top(self, n: int = 8) -> list[tuple[str, float]]:
        return [(k, v / 1024.0) for k, v in sorted(self.at_peak.items(), key=lambda kv: -kv[1])[:n]]


def per_line_hour(cpu_s: float, line_hours: float) -> float:
    return cpu_s / line_hours if line_hours > 0 else float("nan")


def lines_per_core(cpu_s_per_line_hour: float) -> float:
    return 3600.0 / cpu_s_per_line_hour if cpu_s_per_line_hour > 0 else float("inf")


# -- audio ----------------------------------------------------------------------------
def generate_wav(path: Path, minutes: float, lines: int) -> int:
    """Write ``lines`` channels of synthetic traffic as PCM_16; returns the complete calls in it."""
    import soundfile as sf

    from dsp.synth import render_lines

    audio, labels = render_lines(RATE, minutes * 60.0, lines, seed=SEED, first_call_s=FIRST_CALL_S,
                                 idle_s=IDLE_S, talk_s=TALK_S)
    sf.write(str(path), audio, RATE, subtype="PCM_16")
    return sum(len(line) for line in labels)


# -- the pipeline (child process) -------------------------------------------------------
def run_pipeline(wav: Path, data: Path, identity: Path, codec: str = "opus", trace: bool = False) -> dict:
    """Record ``wav`` into a new data dir the way ``nokbox replay`` does; figures as a dict."""
    from firmware.config import parse_config
    from firmware.recording.recorder import Recorder
    from firmware.hal.audio import WavSource
    from firmware.index import CallIndex
    from firmware.vault.keys import init_data_dir

    init_data_dir(data, identity_out=identity)
    cfg = parse_config({"storage": {"codec": codec}})
    src = WavSource(wav, period_ms=cfg.audio.period_ms * 10, start_wall=START_WALL)
    if trace:
        import tracemalloc

        tracemalloc.start(1)
    rec = Recorder(cfg, data, source=src, clock=src.clock)
    rss_before = peak_rss_mb()

    cpu0, wall0 = time.process_time(), time.perf_counter()
    with MemorySampler() as mem:
        rec.start()
        rec.wait()
    cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0

    idx = CallIndex(data / "index.sqlite")
    try:
        rows = idx.con.execute("SELECT state, COUNT(*) AS n FROM calls GROUP BY state").fetchall()
    finally:
        idx.close()
    errors = [f"{t.name}: {t.error}" for t in (rec.segmenter, rec.writer) if t.error]
    if rec.reader.state == "failed":
        errors.append(f"capture: {rec.reader.last_error}")
    return {
        "codec": codec,
        "lines": len(rec.lines),
        "frames": int(rec.rings.write_pos),
        "rate": src.rate,
        "cpu_s": cpu_s,
        "wall_s": wall_s,
        "calls": {r["state"]: r["n"] for r in rows},
        "lost": int(rec.rings.lost.sum()),
        "ring_mb": rec.rings.buf.nbytes / 2**20,
        "rss_before_run_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
        "vm_hwm_mb": vm_hwm_mb(),
        "sampled_peak_mb": mem.peak_kib / 1024.0,
        "top_mappings_mb": mem.top(),
        "traced": mem.traced,
        "errors": errors,
    }


# -- child processes ----------------------------------------------------------------
def run_child(*args: str) -> dict | None:
    """Run this script with ``args`` in a fresh interpreter; the JSON it prints, or None."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if proc.returncode != 0:
        print(f"child {' '.join(args[:1])} exited with status {proc.returncode}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_main(args: argparse.Namespace) -> int:
    if args.child == "live":
        from page_load import live

        return live(args.wav, args.data, args.conf, args.page_port, args.out)
    if args.child == "setup":
        import datetime as _dt

        from page_load import ROWS, setup

        out = setup(args.data, args.conf, _dt.date(2026, 3, 4), ROWS)
    elif args.child == "generate":
        out = {"calls": generate_wav(args.wav, args.minutes, args.lines)}
    else:
        out = run_pipeline(args.wav, args.data, args.identity, args.codec, args.tracemalloc)
    print(json.dumps(out))
    return 0


# -- the webrtcvad reference ------------------------------------------------------------
def run_webrtcvad(wav: Path) -> dict:
    """webrtcvad over every line of ``wav``, block by block; CPU seconds and frames."""
    import soundfile as sf
    import webrtcvad

    cpu0 = time.process_time()
    with sf.SoundFile(str(wav)) as snd:
        rate, lines = snd.samplerate, snd.channels
        flen = rate * VAD_FRAME_MS // 1000
        fbytes = 2 * flen
        vads = [webrtcvad.Vad(VAD_MODE) for _ in range(lines)]
        speech = 0
        frames = 0
        for block in snd.blocks(blocksize=flen * VAD_BLOCK_FRAMES, dtype="int16", always_2d=True):
            usable = len(block) - len(block) % flen
            for ln, vad in enumerate(vads):
                pcm = block[:usable, ln].tobytes()
                for off in range(0, len(pcm), fbytes):
                    speech += vad.is_speech(pcm[off:off + fbytes], rate)
            frames += usable
    return {"cpu_s": time.process_time() - cpu0, "frames": frames, "lines": lines, "rate": rate,
            "speech_frames": speech}


# -- report -----------------------------------------------------------------------------
def report(pipe: dict, vad: dict, expected_calls: int, wav_mb: float) -> None:
    line_hours = pipe["frames"] / pipe["rate"] * pipe["lines"] / 3600.0
    cpu_lh = per_line_hour(pipe["cpu_s"], line_hours)
    carry = lines_per_core(cpu_lh)
    vad_lh = per_line_hour(vad["cpu_s"], vad["frames"] / vad["rate"] * vad["lines"] / 3600.0)
    calls = pipe["calls"]
    rss_target = f"target <= {TARGET_RSS_MB:.0f} MB for {TARGET_RSS_LINES} lines"
    if pipe["lines"] != TARGET_RSS_LINES:
        rss_target += f" (this run: {pipe['lines']} lines)"

    print(f"nokbox pipeline benchmark: {pipe['lines']} line(s) x {pipe['frames'] / pipe['rate'] / 60:.1f} min "
          f"at {pipe['rate']} Hz ({wav_mb:.1f} MB WAV)")
    print(f"pipeline (as `nokbox replay`, storage codec {pipe.get('codec', '?')}):")
    print(f"  audio processed           {line_hours:10.3f} line-hours")
    print(f"  CPU                       {pipe['cpu_s']:10.2f} s")
    print(f"  wall                      {pipe['wall_s']:10.2f} s")
    print(f"  CPU per audio-hour/line   {cpu_lh:10.2f} s")
    print(f"  lines per core, real time {carry:10.1f}      target >= {TARGET_LINES_PER_CORE}")
    print(f"  peak RSS                  {pipe['peak_rss_mb']:10.1f} MB   {rss_target}")
    print(f"    VmHWM (/proc)           {pipe['vm_hwm_mb']:10.1f} MB   (same peak, per process image)")
    print(f"    RSS before the run      {pipe['rss_before_run_mb']:10.1f} MB   (interpreter, imports, "
          f"recorder with {pipe['ring_mb']:.1f} MB of rings)")
    if pipe.get("top_mappings_mb"):
        print(f"    at the sampled peak ({pipe['sampled_peak_mb']:.1f} MB, every 0.5 s), resident by mapping:")
        for name, mb in pipe["top_mappings_mb"]:
            print(f"      {mb:8.1f} MB  {name}")
    if pipe.get("traced"):
        total, top = pipe["traced"]
        print(f"    at that peak, Python's own allocations (tracemalloc; it slows the run): {total / 2**20:.1f} MB, "
              f"the top five sites:")
        for site, size, count in top:
            print(f"      {size / 2**20:8.1f} MB  {site}  ({count} blocks)")
    print(f"  calls recorded            {calls.get('finished', 0):10d}      "
          f"({expected_calls} calls end within the audio, calls open at its end count too; other states: "
          f"{ {k: v for k, v in calls.items() if k != 'finished'} or 'none'})")
    print(f"  samples lost              {pipe['lost']:10d}")
    if pipe["errors"]:
        print(f"  errors                    {'; '.join(pipe['errors'])}")
    print(f"reference: webrtcvad alone (mode {VAD_MODE}, {VAD_FRAME_MS} ms frames, per line):")
    print(f"  CPU                       {vad['cpu_s']:10.2f} s")
    print(f"  CPU per audio-hour/line   {vad_lh:10.2f} s")
    print(f"  lines per core, real time {lines_per_core(vad_lh):10.1f}")
    vad_frames = vad["frames"] // (vad["rate"] * VAD_FRAME_MS // 1000) * vad["lines"]
    print(f"  speech frames             {vad['speech_frames']:10d} of {vad_frames}")
    print("MB = 2**20 bytes; figures vary between runs and machines; nothing is asserted.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="minutes of audio per line (default 10)")
    p.add_argument("--lines", type=int, default=16, help="number of lines (WAV channels, default 16)")
    p.add_argument("--codec", choices=("opus", "flac", "wav"), default="opus",
                   help="storage codec (default opus, the box's default; wav is the lossless codec)")
    p.add_argument("--page-load", action="store_true",
                   help="a CPU-heavy page (the calls list over 1 M calls) beside a live-paced capture, with the page "
                        "in its own process and in the recorder's (lost samples, worst capture delay, RSS per process)")
    p.add_argument("--load-s", type=float, default=10.0, help="seconds of page load (--page-load; default 10)")
    p.add_argument("--tracemalloc", action="store_true",
                   help="also trace Python's allocations and print the top five sites at the peak (slower)")
    p.add_argument("--child", choices=("generate", "pipeline", "live", "setup"), help=argparse.SUPPRESS)
    p.add_argument("--conf", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--page-port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--wav", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--identity", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if args.child:
        return child_main(args)
    if args.page_load:
        import page_load

        return page_load.main(args, Path(__file__).resolve())
    with tempfile.TemporaryDirectory(prefix="nokbox-bench-") as tmpdir:
        tmp = Path(tmpdir)
        wav = tmp / "lines.wav"
        print(f"generating {args.lines} line(s) x {args.minutes:g} min of synthetic audio ...", flush=True)
        gen = run_child("--child", "generate", "--wav", str(wav), "--minutes", str(args.minutes),
                        "--lines", str(args.lines))
        if gen is None:
            return 1
        print(f"running the pipeline (codec {args.codec}) ...", flush=True)
        pipe = run_child("--child", "pipeline", "--wav", str(wav), "--data", str(tmp / "data"),
                         "--identity", str(tmp / "identity.txt"), "--codec", args.codec,
                         *(["--tracemalloc"] if args.tracemalloc else []))
        if pipe is None:
            return 1
        print("running webrtcvad ...", flush=True)
        vad = run_webrtcvad(wav)
        report(pipe, vad, gen["calls"], wav.stat().st_size / 2**20)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Vault benchmark: bytes and speech quality per codec, write cost, SSD years, crash figures.

Run:  .venv/bin/python benchmarks/vault.py [--minutes 10] [--trials-per-cut 6]

- Bytes per call-hour for each codec, measured by writing real speech (Debian
  asterisk-core-sounds-en-wav, 8 kHz) through the real CallFile (encoder, age, journal, fsync).
- Speech quality: PESQ narrow-band (ITU-T P.862, `pesq` package) of the decoded recording
  against the original, per codec.
- Encode + encrypt + write CPU seconds per line-hour.
- Years of 16 lines x 8 busy hours a day that fit on a 1 TB SSD with the default codec.
- Crash test: power cuts at every write (all issued writes on disk, and with unsynced writes
  lost or torn at random), recovery, and the worst audio lost per interrupted call.
- Recorder crash test (``--pipeline``, or ``--only-pipeline``): the whole recorder in its own
  process, fed a call in real time, killed the moment its capture reaches a given sample (the
  source kills its process: tests/killcut.py), then ``nokbox recover``: the audio lost per active
  call between its recovered end and the cut, at ``segment.chunk_s`` 2, 4 and 8 (the analysis lags
  the capture by up to a chunk; the write-ahead journal, vault/ahead.py, does not).
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from firmware.vault.age import X25519Identity, decrypt_bytes, generate_identity, parse_recipient  # noqa: E402
from firmware.vault.callfile import CallFile, recover_call  # noqa: E402

RATE = 8000
SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")


def speech(seconds: float) -> np.ndarray:
    """Real recorded speech (asterisk prompts) with short gaps, looped to ``seconds``."""
    files = sorted(SOUNDS.glob("*.wav"))
    if not files:
        sys.exit("benchmarks/vault.py needs Debian asterisk-core-sounds-en-wav (scripts/setup.sh --test)")
    parts, total, i = [], 0, 0
    gap = np.zeros(int(0.4 * RATE), np.int16)
    while total < seconds * RATE:
        x, sr = sf.read(files[i % len(files)], dtype="int16")
        i += 1
        if sr != RATE or x.ndim != 1:
            continue
        parts += [x, gap]
        total += len(x) + len(gap)
    return np.concatenate(parts)[: int(seconds * RATE)]


def write_call(path: Path, pcm: np.ndarray, codec: str, kbps: float, keys, complexity: int = 5) -> tuple[float, int]:
    cf = CallFile(path, [keys["rec_pub"]], RATE, keys["dev_pub"], codec=codec, opus_kbps=kbps,
                  opus_complexity=complexity)
    t0 = time.process_time()
    for s in range(0, len(pcm), 1600):
        cf.write(pcm[s:s + 1600])
    size = cf.close()
    return time.process_time() - t0, size


def decode(path: Path, keys) -> np.ndarray:
    plain = decrypt_bytes(path.read_bytes(), [X25519Identity(keys["records"])])
    y, _ = sf.read(io.BytesIO(plain), dtype="int16")
    return y


def codec_figures(minutes: float, keys, tmp: Path) -> dict:
    from pesq import pesq

    pcm = speech(minutes * 60)
    ref = speech(60.0)
    rows = {}
    for codec, kbps, cx in (("opus", 16.0, 5), ("opus", 16.0, 10), ("opus", 16.0, 2), ("opus", 24.0, 5),
                            ("flac", 0.0, 0), ("wav", 0.0, 0)):
        name = f"{codec}{int(kbps) or ''}" + (f"/c{cx}" if codec == "opus" else "")
        cpu, size = write_call(tmp / "long.age", pcm, codec, kbps, keys, cx)
        write_call(tmp / "ref.age", ref, codec, kbps, keys, cx)
        deg = decode(tmp / "ref.age", keys)
        n = min(len(deg), len(ref))
        score = pesq(RATE, ref[:n].astype(np.float32) / 32768, deg[:n].astype(np.float32) / 32768, "nb")
        hours = len(pcm) / RATE / 3600
        rows[name] = {"bytes_per_hour": size / hours, "cpu_per_line_hour": cpu / hours, "pesq_nb": score}
    return rows


def crash_figures(keys, tmp: Path, trials_per_cut: int, codec: str) -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.test_vault_crash import RecordingDisk, rebuild

    rng = np.random.default_rng(3)
    calls = [rng.integers(-8000, 8000, size=n, dtype=np.int16) for n in (RATE * 2, RATE * 6, RATE * 21)]
    disk = RecordingDisk()
    trace_dir = tmp / f"trace-{codec}"
    trace_dir.mkdir()
    for i, pcm in enumerate(calls):
        disk.call = i
        disk.fed = 0
        cf = CallFile(trace_dir / f"{i:08d}.{codec}.age", [keys["rec_pub"]], RATE, keys["dev_pub"], codec=codec,
                      disk=disk)
        for s in range(0, len(pcm), 1600):
            disk.fed = s
            cf.write(pcm[s:s + 1600])
        disk.fed = len(pcm)
        cf.close()
    ops = disk.ops
    ident = [X25519Identity(keys["records"])]
    prng = random.Random(1)
    trials = worst = finished_lost = interrupted = 0
    cut_dir = tmp / f"cut-{codec}"
    cut_dir.mkdir()
    for upto in range(1, len(ops) + 1):
        for t in range(trials_per_cut + 1):
            files = rebuild(ops, upto, prng if t else None)
            for p in cut_dir.iterdir():
                p.unlink()
            for name, data in files.items():
                (cut_dir / Path(name).name).write_bytes(data)
            trials += 1
            last = ops[upto - 1]
            for i, pcm in enumerate(calls):
                final = cut_dir / f"{i:08d}.{codec}.age"
                closed = any(o.kind == "sync_dir" and o.call == i and k < upto and ops[k - 1].kind == "rename"
                             for k, o in enumerate(ops))
                if not any(o.call == i for o in ops[:upto]):
                    continue
                recover_call(final, [keys["rec_pub"]], keys["device"])
                got = 0
                if final.exists():
                    y, _ = sf.read(io.BytesIO(decrypt_bytes(final.read_bytes(), ident)), dtype="int16")
                    got = len(y)
                if closed:
                    finished_lost += got != len(pcm) if codec != "opus" else got < len(pcm) - 960
                else:
                    interrupted += 1
                    fed = last.fed if last.call == i else len(pcm)
                    worst = max(worst, fed - got)
    return {"ops": len(ops), "trials": trials, "interrupted_checks": interrupted,
            "worst_lost_ms": 1000.0 * worst / RATE, "finished_lost": finished_lost}


def pipeline_figures(chunks: list[float], cuts: list[float], codec: str) -> dict[float, list[float]]:
    """Seconds lost per active call at each cut, per chunk_s (a fresh data directory per run)."""
    from firmware.index import CallIndex
    from firmware.vault.keys import init_data_dir
    from firmware.vault.recovery import recover_data_dir
    from tests.killcut import lost_per_call, run_and_cut
    from tests.test_vault_crash import _speaking_call

    audio = _speaking_call(40.0, 2.0, 50.0)
    out: dict[float, list[float]] = {}
    for chunk_s in chunks:
        for cut_s in cuts:
            with tempfile.TemporaryDirectory() as d:
                tmp = Path(d)
                data = tmp / "data"
                init_data_dir(data, tmp / "records-identity.txt")
                run_and_cut(data, audio, int(cut_s * RATE), {"storage": {"codec": codec},
                                                            "segment": {"chunk_s": chunk_s}}, tmp)
                recover_data_dir(data)
                idx = CallIndex(data / "index.sqlite")
                rows = [dict(r) for r in idx.calls()]
                idx.close()
                lost = lost_per_call(rows, int(cut_s * RATE))
                out.setdefault(chunk_s, []).append(max(lost.values()) if lost else float(cut_s - 2.0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="audio per codec for size and cost")
    ap.add_argument("--trials-per-cut", type=int, default=6, help="random lost-write trials per cut point")
    ap.add_argument("--crash-codecs", default="wav,flac,opus", help="codecs the crash test writes")
    ap.add_argument("--pipeline", action="store_true", help="also the recorder crash test (about 4 minutes)")
    ap.add_argument("--only-pipeline", action="store_true", help="only the recorder crash test")
    ap.add_argument("--cuts", default="3.3,5.7,8.1,10.9,14.2,19.6", help="capture positions (s) of the cuts")
    args = ap.parse_args()
    if args.pipeline or args.only_pipeline:
        cuts = [float(c) for c in args.cuts.split(",")]
        figs = pipeline_figures([2.0, 4.0, 8.0], cuts, "wav")
        print(f"recorder crash test: one call from 2 s, recorder killed when its capture reached {cuts} s, "
              f"then recovery (wav, real time)")
        for chunk_s, lost in figs.items():
            print(f"  chunk_s {chunk_s:g}: audio lost per active call: worst {max(lost):.2f} s, median "
                  f"{float(np.median(lost)):.2f} s (target <= 1.0 s)")
        if args.only_pipeline:
            return
    rec_id, rec = generate_identity()
    dev_id, dev = generate_identity()
    keys = {"records": rec_id, "device": dev_id, "rec_pub": parse_recipient(rec), "dev_pub": parse_recipient(dev)}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows = codec_figures(args.minutes, keys, tmp)
        crashes = {c: crash_figures(keys, tmp, args.trials_per_cut, c) for c in args.crash_codecs.split(",")}
    print(f"nokbox vault benchmark ({args.minutes:g} min of real speech per codec, 8 kHz)")
    print(f"{'codec':<8} {'MB/call-hour':>13} {'kbit/s':>8} {'PESQ-NB':>8} {'CPU s/line-hour':>16}")
    for name, r in rows.items():
        print(f"{name:<8} {r['bytes_per_hour'] / 1e6:>13.2f} {r['bytes_per_hour'] * 8 / 3600 / 1000:>8.1f} "
              f"{r['pesq_nb']:>8.2f} {r['cpu_per_line_hour']:>16.2f}")
    per_year = rows["opus16/c5"]["bytes_per_hour"] * 16 * 8 * 365
    print(f"1 TB holds {1e12 / per_year:.1f} years of 16 lines x 8 busy hours/day with the default codec "
          f"(opus 16 kbit/s target, complexity 5; {per_year / 1e9:.0f} GB/year)")
    for codec, crash in crashes.items():
        print(f"crash test, {codec}: {crash['ops']} write operations, {crash['trials']} power-cut trials, "
              f"{crash['interrupted_checks']} interrupted-call checks")
        print(f"  worst audio lost per interrupted call: {crash['worst_lost_ms']:.0f} ms (target <= 1000 ms)")
        print(f"  finished calls lost or damaged: {crash['finished_lost']} (target 0)")


if __name__ == "__main__":
    main()

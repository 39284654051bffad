"""The ``nokbox`` command. Every subcommand takes --data DIR and --config F."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from .config import DEFAULT_DATA_DIR, describe_schema, load_config
from .errors import NokboxError

log = logging.getLogger("nokbox")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_NOT_RUNNING = 3


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=Path(os.environ.get("NOKBOX_DATA", DEFAULT_DATA_DIR)),
                   help="data directory (default /var/lib/nokbox)")
    p.add_argument("--config", type=Path, default=None,
                   help="config file (default /etc/nokbox/nokbox.toml when it exists)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="nokbox", description="nokbox call recorder / 통화 녹음 장치")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("init", help="create the data directory and the records key pair")
    _common(p)
    p.add_argument("--identity-out", type=Path, help="write the age identity (secret) to this file")

    p = sub.add_parser("run", help="record the lines and serve the admin page")
    _common(p)
    p.add_argument("--port", type=int, help="admin page port (default from config, 8080)")
    p.add_argument("--host", help="admin page address (default from config, 127.0.0.1)")
    p.add_argument("--no-web", action="store_true", help="record without the admin page")

    p = sub.add_parser("replay", help="run the recording pipeline over a multi-channel WAV")
    _common(p)
    p.add_argument("file", type=Path, help="WAV file, one channel per line")
    p.add_argument("--start", help="wall-clock time of the first sample (ISO 8601; default now)")

    p = sub.add_parser("analyze", help="segment a WAV file offline: one JSON line per call (with numbers)")
    p.add_argument("file", type=Path, help="WAV file, one channel per line, 8/16/44.1/48 kHz")
    p.add_argument("--config", type=Path, default=None,
                   help="config file (default /etc/nokbox/nokbox.toml when it exists)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    p = sub.add_parser("calls", help="list recorded calls (no personal fields)")
    _common(p)
    p.add_argument("--json", action="store_true", help="one JSON object per call per line")

    p = sub.add_parser("check-config", help="validate the config file")
    _common(p)
    p.add_argument("--describe", action="store_true", help="list every key with default and meaning")

    p = sub.add_parser("status", help="state of the running recorder")
    _common(p)
    p.add_argument("--json", action="store_true", help="print the raw status JSON")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", False))
    handler = {
        "init": cmd_init, "run": cmd_run, "replay": cmd_replay, "calls": cmd_calls, "analyze": cmd_analyze,
        "check-config": cmd_check_config, "status": cmd_status,
    }[args.cmd]
    try:
        return handler(args)
    except NokboxError as exc:
        code = EXIT_CONFIG if isinstance(exc, ValueError) else EXIT_ERROR
        print(f"nokbox {args.cmd}: {exc}", file=sys.stderr)
        return code


# -- commands ---------------------------------------------------------------------------
def cmd_init(args) -> int:
    from .keys import init_data_dir

    identity, recipient = init_data_dir(args.data, args.identity_out)
    print(f"initialised {args.data}")
    print(f"records recipient (public): {recipient}")
    if args.identity_out:
        print(f"records identity (secret) written to {args.identity_out}; keep it off the box")
    else:
        print("records identity (secret), shown once and not stored on the box; keep it in the office safe:")
        print(identity)
    return EXIT_OK


def cmd_check_config(args) -> int:
    if args.describe:
        for key, default, desc in describe_schema():
            print(f"{key} = {default}\n    {desc}")
        return EXIT_OK
    cfg, path = load_config(args.config)
    lines = cfg.lines
    print(f"config OK: {path or 'built-in defaults'}")
    print(f"audio: {cfg.source_kind}" + (f" {cfg.audio.device}" if cfg.audio.device else "")
          + f", {cfg.audio.channels} ch at {cfg.audio.rate} Hz; {len(lines)} line(s)")
    return EXIT_OK


def cmd_run(args) -> int:
    from .daemon import Recorder

    cfg, path = load_config(args.config)
    rec = Recorder(cfg, args.data, config_path=path)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=rec.reload, name="reload").start())
    server = None
    rec.start()
    try:
        if not args.no_web:
            from web import serve

            host = args.host or cfg.web.host
            port = args.port or cfg.web.port
            server = serve(rec, host, port)
            log.info("admin page on http://%s:%d/", host, port)
        _notify_systemd("READY=1")
        while not stop.wait(1.0):
            _notify_systemd("WATCHDOG=1")
            for t in (rec.reader, rec.segmenter, rec.writer):
                if not t.is_alive():
                    log.error("%s stopped unexpectedly; exiting so the service restarts", t.name)
                    stop.set()
    finally:
        _notify_systemd("STOPPING=1")
        if server is not None:
            server.close()
        rec.stop()
    return EXIT_OK if all(not getattr(t, "error", "") for t in (rec.segmenter, rec.writer)) else EXIT_ERROR


def _notify_systemd(msg: str) -> None:
    """sd_notify over the socket systemd gives us; a no-op elsewhere."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    import socket

    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(msg.encode())
    except OSError:
        pass


def cmd_replay(args) -> int:
    from .daemon import Recorder
    from .hal.audio import WavSource
    from .hal.clock import SampleClock
    from .index import CallIndex

    cfg, path = load_config(args.config)
    if args.start:
        start = dt.datetime.fromisoformat(args.start.replace("Z", "+00:00"))
        if start.tzinfo is None:
            raise NokboxError("--start needs a time zone (e.g. +09:00 or Z)")
        start_ts = start.timestamp()
    else:
        start_ts = time.time()
    if not args.file.exists():
        print(f"nokbox replay: {args.file}: no such file", file=sys.stderr)
        return EXIT_ERROR
    # a file cannot overrun: read ten periods at a time and let the rings pace the reads
    src = WavSource(args.file, period_ms=cfg.audio.period_ms * 10, start_wall=start_ts)
    idx = CallIndex(args.data / "index.sqlite") if (args.data / "index.sqlite").exists() else None
    before = idx.con.execute("SELECT COALESCE(MAX(id), 0) FROM calls").fetchone()[0] if idx else 0
    if idx:
        idx.close()
    rec = Recorder(cfg, args.data, source=src, clock=src.clock, config_path=path)
    t0 = time.monotonic()
    rec.start()
    rec.wait()
    elapsed = time.monotonic() - t0
    idx = CallIndex(args.data / "index.sqlite")
    rows = idx.con.execute("SELECT state, COUNT(*) AS n FROM calls WHERE id > ? GROUP BY state", (before,)).fetchall()
    idx.close()
    counts = {r["state"]: r["n"] for r in rows}
    audio_s = rec.rings.write_pos / src.rate
    lost = int(rec.rings.lost.sum())
    print(f"replayed {audio_s:.1f} s x {len(rec.lines)} line(s) in {elapsed:.1f} s: "
          f"{counts.get('finished', 0)} call(s) recorded, {lost} sample(s) lost")
    failed = [t.name for t in (rec.segmenter, rec.writer) if t.error]
    if failed or rec.reader.state == "failed" or counts.get("failed"):
        print(f"nokbox replay: pipeline error in {', '.join(failed) or 'capture/writer'}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


ANALYZE_RATES = (8000, 16000, 44100, 48000)


def cmd_analyze(args) -> int:
    """Offline analysis for a technician: prints numbers, logs nothing about them."""
    import numpy as np
    import soundfile as sf
    from scipy.signal import resample_poly

    from dsp.segment import CallEnd, CallStart, LineSegmenter

    from .daemon import segment_params

    cfg, _ = load_config(args.config)
    path = args.file
    if not path.exists():
        print(f"nokbox analyze: {path}: no such file", file=sys.stderr)
        return EXIT_ERROR
    try:
        info = sf.info(str(path))
    except Exception:  # noqa: BLE001 - libsndfile names no stable exception type for "not audio"
        print(f"nokbox analyze: {path}: not an audio file", file=sys.stderr)
        return EXIT_ERROR
    if info.format not in ("WAV", "WAVEX", "RF64"):
        print(f"nokbox analyze: {path}: unsupported format {info.format} (a WAV file is needed)", file=sys.stderr)
        return EXIT_ERROR
    if info.samplerate not in ANALYZE_RATES:
        print(f"nokbox analyze: {path}: unsupported sample rate {info.samplerate} Hz "
              f"(8000, 16000, 44100 or 48000)", file=sys.stderr)
        return EXIT_ERROR
    try:
        x, rate = sf.read(str(path), dtype="float64", always_2d=True)
    except Exception as exc:  # noqa: BLE001
        print(f"nokbox analyze: {path}: cannot read: {exc}", file=sys.stderr)
        return EXIT_ERROR
    target = 8000 if rate != 16000 else 16000
    if rate != target:
        g = np.gcd(rate, target)
        x = resample_poly(x, target // g, rate // g, axis=0)
    pcm = np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
    params = segment_params(cfg, target)
    found = []
    block = target * 10
    for ch in range(pcm.shape[1]):
        seg = LineSegmenter(params)
        col = np.ascontiguousarray(pcm[:, ch])
        events = []
        for i in range(0, len(col), block):
            events += seg.process(col[i:i + block], i)
        events += seg.finish("eof")
        start = None
        for ev in events:
            if isinstance(ev, CallStart):
                start = ev.sample
            elif isinstance(ev, CallEnd) and start is not None:
                found.append({"channel": ch, "start": round(start / target, 2), "end": round(ev.sample / target, 2),
                              "dialed": ev.dialed, "caller_id": ev.caller_id, "end_reason": ev.reason})
                start = None
    for c in sorted(found, key=lambda c: (c["start"], c["channel"])):
        print(json.dumps(c, ensure_ascii=False))
    return EXIT_OK


def cmd_calls(args) -> int:
    from .index import CallIndex, call_json
    from .keys import MARKER

    if not (args.data / MARKER).exists():
        print(f"nokbox calls: {args.data} is not an initialised data directory", file=sys.stderr)
        return EXIT_ERROR
    idx = CallIndex(args.data / "index.sqlite")
    try:
        rows = idx.calls()
    finally:
        idx.close()
    for row in rows:
        c = call_json(row, args.data)
        if args.json:
            print(json.dumps(c, ensure_ascii=False))
        else:
            print(f"{c['id']:>8}  {c['start_local'][:19]}  {c['line_name']:<12} "
                  f"{(c['duration'] or 0):>8.1f} s  {c['state']:<11} {c['end_reason'] or ''}")
    return EXIT_OK


def cmd_status(args) -> int:
    path = args.data / "run" / "status.json"
    try:
        st = json.loads(path.read_text())
    except FileNotFoundError:
        print(f"nokbox is not running (no status in {args.data})")
        return EXIT_NOT_RUNNING
    age = time.time() - path.stat().st_mtime
    alive = age < 5.0 and _pid_alive(int(st.get("pid", 0)))
    if args.json:
        print(json.dumps(st | {"running": alive, "status_age_s": round(age, 1)}, ensure_ascii=False))
        return EXIT_OK if alive else EXIT_NOT_RUNNING
    dev = st["device"]
    print(f"nokbox: {'running' if alive else 'NOT running (last status %.0f s ago)' % age}")
    print(f"device: {dev['backend']} {dev.get('device', '')} state={dev['state']} xruns={dev['xruns']} "
          f"losses={dev['losses']} reopens={dev['reopens']}")
    for ln in st["lines"]:
        print(f"  ch{ln['channel']:<2} {ln['name']:<12} {ln['state']:<8} {ln['level_dbfs']:>6.1f} dBFS "
              f"calls today={ln['calls_today']} overrun={ln['overrun_seconds']} s")
    disk = st.get("disk") or {}
    if disk:
        print(f"disk: {disk['free_bytes'] / 1e9:.1f} GB free ({disk['free_percent']} %)")
    if st.get("config_error"):
        print(f"config reload refused: {st['config_error']}")
    return EXIT_OK if alive else EXIT_NOT_RUNNING


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


if __name__ == "__main__":
    sys.exit(main())

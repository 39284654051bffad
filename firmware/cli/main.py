"""The ``nokbox`` command. Every subcommand takes --data DIR and --config F."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time
from pathlib import Path

from .people import add_signin_args
from . import processes
from . import release as release_cli
from . import vault as vault_cli
from ..config import DEFAULT_DATA_DIR, describe_schema, load_config
from ..errors import NokboxError

log = logging.getLogger("nokbox")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_NOT_RUNNING = 3
EXIT_BROKEN_PIPE = 128 + 13  # as a shell reports a process ended by SIGPIPE


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
    p.add_argument("--identity-out", type=Path, help="also write the age identities (secret) to this new file, "
                   "outside the data directory (development; use 'keys export-identity' on a real box)")
    vault_cli.init_options(p)

    p = sub.add_parser("run", help="record the lines and serve the admin page (the three processes, supervised)")
    _common(p)
    p.add_argument("--port", type=int, help="admin page port (default from config, 8080)")
    p.add_argument("--host", help="admin page address (default from config, 127.0.0.1)")
    p.add_argument("--no-web", action="store_true", help="record without the admin page")

    p = sub.add_parser("firstboot", help="the appliance's first boot (root, once): the device key and the page's "
                       "HTTPS certificate for nginx; prints the certificate's fingerprint")
    _common(p)
    p.add_argument("--tls-dir", type=Path, default=Path("/etc/nokbox/tls"),
                   help="where nginx's certificate and key go (default /etc/nokbox/tls)")

    p = sub.add_parser("replay", help="run the recording pipeline over a multi-channel WAV")
    _common(p)
    p.add_argument("file", type=Path, help="WAV file, one channel per line")
    p.add_argument("--start", help="wall-clock time of the first sample (ISO 8601; default now)")

    p = sub.add_parser("analyze", help="segment a WAV file offline: one JSON line per call (with numbers)")
    _common(p)  # --data is accepted for uniformity; analyze reads and writes nothing there
    p.add_argument("file", type=Path, help="WAV file, one channel per line, 8/16/44.1/48 kHz")

    p = sub.add_parser("calls", help="list recorded calls (no personal fields)")
    _common(p)
    p.add_argument("--json", action="store_true", help="one JSON object per call per line")

    p = sub.add_parser("check-config", help="validate the config file")
    _common(p)
    p.add_argument("--describe", action="store_true", help="list every key with default and meaning")

    p = sub.add_parser("recover", help="finish calls cut by a power loss (needs no approver secret)")
    _common(p)

    p = sub.add_parser("verify", help="check that every file parses and index and files agree")
    _common(p)

    p = sub.add_parser("decrypt", help="decrypt one recording with the records identity (audited)")
    _common(p)
    p.add_argument("id", type=int, help="call id (from nokbox calls)")
    p.add_argument("--identity", type=Path, required=True, help="age identity file")
    p.add_argument("--out", type=Path, help="write the audio here (default: standard output)")

    p = sub.add_parser("notice", help="the recording notice: per-line mode and the announcement")
    _common(p)
    nsub = p.add_subparsers(dest="notice_cmd", required=True)
    q = nsub.add_parser("set", help="turn a line's notice on, off or to a beep (audited)")
    _common(q)
    q.add_argument("--line", type=int, required=True, help="input channel of the line")
    q.add_argument("--mode", choices=("on", "off", "beep"), required=True)
    q.add_argument("--reason", required=True, help="why (kept in the audit log)")
    add_signin_args(q)
    q = nsub.add_parser("upload", help="check and install a new announcement (WAV, <= 15 s)")
    _common(q)
    q.add_argument("file", type=Path)
    add_signin_args(q)
    q = nsub.add_parser("check", help="check an announcement file without installing it")
    _common(q)
    q.add_argument("file", type=Path)

    p = sub.add_parser("status", help="state of the running recorder")
    _common(p)
    p.add_argument("--json", action="store_true", help="print the raw status JSON")

    from .people import add_parsers

    processes.add_parsers(sub, _common)  # recorder, keeper, web
    add_parsers(sub, _common)  # user …, audit …
    vault_cli.add_parsers(sub, _common)
    release_cli.add_parsers(sub, _common)  # request, ledger
    return ap


# files and folders this command creates are the owner's alone (SQLite's -wal/-shm files take the
# database's mode); the sockets are chmod-ed to their documented 0660 by firmware/ipc.py
UMASK = 0o077


def main(argv: list[str] | None = None) -> int:
    """The console-script entry: owner-only files, and quiet when the reader of a pipe goes away."""
    old = os.umask(UMASK)  # before anything is opened; restored for a caller in the same process (tests)
    try:
        code = _main(argv)
        sys.stdout.flush()  # inside the try: a pipe closed early fails here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _broken_pipe()
    finally:
        os.umask(old)


def _broken_pipe() -> int:
    """The reader closed the pipe (``nokbox calls --json | head -1``): stop without a traceback.

    As the Python documentation's "Note on SIGPIPE" says: point standard output at /dev/null so
    that the flush at exit finds nothing to write, and exit as a process ended by SIGPIPE (141)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # a stdout without a descriptor (in-process callers)
        pass
    return EXIT_BROKEN_PIPE


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", False))
    handler = {
        "init": cmd_init, "run": processes.cmd_run, "recorder": processes.cmd_recorder,
        "keeper": processes.cmd_keeper, "web": processes.cmd_web, "firstboot": processes.cmd_firstboot, "replay": cmd_replay, "calls": cmd_calls, "analyze": cmd_analyze,
        "check-config": cmd_check_config, "status": cmd_status, "recover": cmd_recover,
        "verify": cmd_verify, "decrypt": cmd_decrypt, "notice": cmd_notice,
        "user": _admin("cmd_user"), "audit": _admin("cmd_audit"),
        "keys": vault_cli.run, "retention": vault_cli.run,
        "request": release_cli.cmd_request, "ledger": release_cli.cmd_ledger,
    }[args.cmd]
    try:
        return handler(args)
    except NokboxError as exc:
        code = EXIT_CONFIG if isinstance(exc, ValueError) else EXIT_ERROR
        print(f"nokbox {args.cmd}: {exc}", file=sys.stderr)
        return code


def _admin(name: str):
    from . import people as people_cli

    return getattr(people_cli, name)


# -- commands ---------------------------------------------------------------------------
def cmd_init(args) -> int:
    from ..vault.keys import MARKER, init_records_key

    cfg, _ = load_config(args.config)
    v = cfg.vault
    if v.device_secret != "tpm" and Path("/dev/tpmrm0").exists():
        print("this box has a TPM 2.0 (/dev/tpmrm0): set [vault] device_secret = \"tpm\" before init so that it "
              "counts wrong PINs (no offline PIN search even with the whole box); see docs/threat-model.md",
              file=sys.stderr)
    if (args.data / MARKER).exists():  # before any secret is generated or asked for
        raise NokboxError(f"{args.data} is already initialised; refusing to replace its records key")
    tpm = v.device_secret == "tpm"
    passphrase, pin, how = vault_cli.init_secrets(args, cfg, tpm=tpm)
    recipient = init_records_key(args.data, cfg, passphrase, config_given=args.config is not None,
                                 identity_out=args.identity_out, pin=pin, approver=args.approver)
    if pin:
        vault_cli.audit_short_pin(args.data, cfg, pin, args.approver, tpm=tpm)
    print(f"initialised {args.data}")
    print(f"records recipient (public): {recipient}")
    if how == "shown":
        print("RECOVERY PASSPHRASE, shown once and not stored on the box; write it down for the office safe:")
        print(f"    {passphrase}")
    elif how == "new-file":
        print(f"recovery passphrase generated and written to {args.passphrase_file} (0600); move it to the office safe")
    else:
        print(f"recovery passphrase taken from {args.passphrase_file}")
    print(f"approver PIN set for {args.approver!r}" if pin else
          "no approver PIN set yet: nokbox keys add-pin --approver NAME")
    if args.identity_out:
        print(f"records identity (secret) written to {args.identity_out}; keep it off the box")
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


def cmd_replay(args) -> int:
    from ..recording.recorder import Recorder
    from ..hal.audio import WavSource
    from ..hal.clock import SampleClock
    from ..index import CallIndex

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


ANALYZE_BLOCK_S = 10  # seconds of audio read, resampled and segmented at a time


def cmd_analyze(args) -> int:
    """Offline analysis for a technician: prints numbers, logs nothing about them. The file is read,
    resampled and segmented in blocks of ``ANALYZE_BLOCK_S`` seconds (every line's segmenter in turn),
    so memory does not grow with the file's length."""
    import numpy as np
    import soundfile as sf

    from dsp.segment import CallAnswered, CallEnd, CallStart, LineSegmenter

    from ..recording.recorder import segment_params

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
    rate, channels = info.samplerate, info.channels
    target = 8000 if rate != 16000 else 16000
    params = segment_params(cfg, target)
    segs = [LineSegmenter(params) for _ in range(channels)]
    events: list[list] = [[] for _ in range(channels)]
    block = target * ANALYZE_BLOCK_S
    RECORDER_BLOCK = target // 10  # noqa: N806 - the recorder's segmenter block (0.1 s)
    # a streaming resampler (libsoxr, its delay compensated): a block's edges are filtered as if the
    # file were one piece, which scipy's resample_poly on separate blocks would not do
    stream = None
    if rate != target:
        import soxr

        stream = soxr.ResampleStream(rate, target, channels, dtype="float64", quality="HQ")
    held = np.empty((0, channels), np.float64)
    fed = 0

    def feed(x, final: bool) -> None:
        nonlocal held, fed
        held = np.concatenate([held, x]) if len(held) else x
        while len(held) >= block or (final and len(held)):
            part, held = held[:block], held[block:]
            pcm = np.clip(np.round(part * 32768.0), -32768, 32767).astype(np.int16)
            for ch in range(channels):
                events[ch] += segs[ch].process(np.ascontiguousarray(pcm[:, ch]), fed)
            fed += len(pcm)

    try:
        with sf.SoundFile(str(path)) as f:
            for x in f.blocks(blocksize=rate * ANALYZE_BLOCK_S, dtype="float64", always_2d=True):
                feed(stream.resample_chunk(x, last=False) if stream else x, False)
            feed(stream.resample_chunk(np.empty((0, channels)), last=True) if stream else held[:0], True)
    except Exception as exc:  # noqa: BLE001 - libsndfile: a truncated or damaged file
        print(f"nokbox analyze: {path}: cannot read: {exc}", file=sys.stderr)
        return EXIT_ERROR
    found = []
    for ch in range(channels):
        start = None
        for ev in events[ch] + segs[ch].finish("eof"):
            if isinstance(ev, CallStart):
                start = ev.sample
                # when the recorder would have raised it and switched the notice on: its provisional
                # onset, else the end of the chunk that confirmed it, or for a call confirmed by its
                # caller ID while still ringing, its answer (CallAnswered); the recorder hands the
                # segmenter 0.1 s blocks, so it acts at the end of the block holding that sample
                raised = ev.raised if ev.raised >= 0 else ev.sample
                detected = -(-raised // RECORDER_BLOCK) * RECORDER_BLOCK
            elif isinstance(ev, CallAnswered) and start is not None:
                detected = -(-ev.raised // RECORDER_BLOCK) * RECORDER_BLOCK
            elif isinstance(ev, CallEnd) and start is not None:
                found.append({"channel": ch, "start": round(start / target, 2), "end": round(ev.sample / target, 2),
                              "detected": round(detected / target, 2),
                              "dialed": ev.dialed, "caller_id": ev.caller_id, "end_reason": ev.reason})
                start = None
    for c in sorted(found, key=lambda c: (c["start"], c["channel"])):
        print(json.dumps(c, ensure_ascii=False))
    return EXIT_OK


def cmd_calls(args) -> int:
    from ..index import CallIndex, call_json
    from ..vault.keys import MARKER

    if not (args.data / MARKER).exists():
        print(f"nokbox calls: {args.data} is not an initialised data directory", file=sys.stderr)
        return EXIT_ERROR
    from ..vault.retention import open_holds
    from ..vaultdb import connect_vault

    idx = CallIndex(args.data / "index.sqlite")
    try:
        rows = idx.calls()
    finally:
        idx.close()
    con = connect_vault(args.data)
    try:
        holds = open_holds(con)
    finally:
        con.close()
    for row in rows:
        c = call_json(row, args.data) | {"hold": holds.get(row["id"])}
        if args.json:
            print(json.dumps(c, ensure_ascii=False))
        else:
            print(f"{c['id']:>8}  {c['start_local'][:19]}  {c['line_name']:<12} "
                  f"{(c['duration'] or 0):>8.1f} s  {c['state']:<11} {c['end_reason'] or ''}")
    return EXIT_OK


def _require_data(data: Path) -> None:
    from ..vault.keys import MARKER

    if not (data / MARKER).exists():
        raise DataDirErrorCli(f"{data} is not an initialised data directory")


class DataDirErrorCli(NokboxError):
    """The data directory given on the command line is not a nokbox one."""


def cmd_recover(args) -> int:
    from ..vault.epochs import key_class_for
    from ..vault.recovery import recover_data_dir

    _require_data(args.data)
    cfg, _ = load_config(args.config)
    done = recover_data_dir(args.data, key_class_of=lambda channel: key_class_for(cfg, channel))
    for d in done:
        print(json.dumps(d, ensure_ascii=False))
    print(f"recovered {sum(1 for d in done if d['outcome'] == 'recovered')} call(s); "
          f"{sum(1 for d in done if d['outcome'] == 'failed')} failed")
    return EXIT_ERROR if any(d["outcome"] == "failed" for d in done) else EXIT_OK


def cmd_verify(args) -> int:
    from ..vault.recovery import verify_data_dir

    _require_data(args.data)
    rep = verify_data_dir(args.data)
    for p in rep.problems:
        print(f"PROBLEM: {p}")
    print(f"verify: {rep.files} file(s), {rep.finished} finished call(s), {len(rep.problems)} problem(s)")
    return EXIT_ERROR if rep.problems else EXIT_OK


def cmd_decrypt(args) -> int:
    """One recording in clear, to a new 0600 file outside DATA or to standard output (audited)."""
    import getpass

    from ..vault.age import X25519Identity, decrypt
    from ..audit import AuditLog
    from ..index import CallIndex

    _require_data(args.data)
    inside = _clear_audio_inside(args.out, args.data)
    if inside:  # before the identity is read or anything is opened for writing
        print(f"nokbox decrypt: 평문 음성은 데이터 폴더 안에 쓰지 않습니다 · refusing to write clear audio "
              f"inside the data directory ({inside}); give --out a file outside {args.data}", file=sys.stderr)
        return EXIT_ERROR
    if args.out is not None and (args.out.exists() or args.out.is_symlink()):
        print(f"nokbox decrypt: {args.out}: 이미 있는 파일입니다 · exists; refusing to overwrite it", file=sys.stderr)
        return EXIT_ERROR
    idx = CallIndex(args.data / "index.sqlite")
    try:
        row = idx.con.execute("SELECT file, state FROM calls WHERE id = ?", (args.id,)).fetchone()
    finally:
        idx.close()
    if row is None:
        print(f"nokbox decrypt: no call {args.id}", file=sys.stderr)
        return EXIT_ERROR
    lines = [ln.strip() for ln in args.identity.read_text().splitlines()]
    idents = [X25519Identity(ln) for ln in lines if ln.startswith("AGE-SECRET-KEY-1")]
    audit = AuditLog(args.data)
    who = getpass.getuser()
    try:  # O_EXCL: never an existing file, never through a symlink; 0600 whatever the caller's umask
        out = os.fdopen(os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") if args.out \
            else sys.stdout.buffer
    except OSError as exc:
        print(f"nokbox decrypt: {args.out}: 만들 수 없습니다 · cannot create it: {exc.strerror}", file=sys.stderr)
        return EXIT_ERROR
    try:
        with open(args.data / row["file"], "rb") as f:
            for chunk in decrypt(f, idents):
                out.write(chunk)
    except NokboxError as exc:
        if args.out:
            out.close()
            args.out.unlink(missing_ok=True)  # no half-decrypted audio left behind
        audit.append("recording.decrypt", actor=who, role="cli", obj=f"call:{args.id}", outcome="refused",
                     reason=str(exc))
        raise
    finally:
        if args.out:
            out.close()
    audit.append("recording.decrypt", actor=who, role="cli", obj=f"call:{args.id}", outcome="ok",
                 reason="offline decryption with the records identity")
    return EXIT_OK


def _clear_audio_inside(out: Path | None, data: Path) -> str | None:
    """Where clear audio would land inside DATA (symlinks and '..' resolved), else None.

    Without --out, standard output redirected to a file inside DATA (``> DATA/x``) counts too."""
    if out is not None:
        return str(Path(out).resolve()) if vault_cli._inside(out, data) else None
    try:
        target = os.readlink("/proc/self/fd/1")
        if Path(target).is_file() and vault_cli._inside(Path(target), data):
            return target
    except (OSError, ValueError):  # no /proc, or standard output is not a file (a pipe, a terminal)
        pass
    return None


def cmd_notice(args) -> int:
    from ..people.accounts import AuthError
    from .people import EXIT_REFUSED, signed_in
    from ..recording.notice import install_announcement, load_announcement, set_line_mode

    if args.notice_cmd == "check":
        x = load_announcement(args.file, 8000)
        print(f"announcement OK: {len(x) / 8000:.1f} s")
        return EXIT_OK
    _require_data(args.data)
    key = f"notice {args.notice_cmd}"
    try:
        by, audit = signed_in(args, key)
    except AuthError as exc:
        print(f"nokbox {key}: refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    who = {"actor": by.name, "role": "technician", "source": "cli"}
    if args.notice_cmd == "set":
        set_line_mode(args.data, args.line, args.mode, args.reason, audit, who)
        print(f"line {args.line}: notice {args.mode} (takes effect on the next call)")
        return EXIT_OK
    seconds = install_announcement(args.data, args.file, audit, who)
    print(f"announcement installed ({seconds:.1f} s); it plays from the next call on")
    return EXIT_OK


def cmd_status(args) -> int:
    """The running recorder's state, asked over its socket (the page asks the same way)."""
    from ..ipc import ServiceUnavailable, run_dir, supervisor_view
    from ..recording.service import RecorderClient

    cfg, _ = load_config(args.config)
    try:
        st = RecorderClient(args.data, cfg, actor=_whoami()).status()
        alive = True
    except ServiceUnavailable as exc:
        last = args.data / "run" / "status.json"
        if not last.exists():
            print(f"nokbox is not running ({exc.message})")
            return EXIT_NOT_RUNNING
        st, alive = json.loads(last.read_text()), False
    sup = supervisor_view(run_dir(args.data, cfg))
    if args.json:
        print(json.dumps(st | {"running": alive, "processes": (sup or {}).get("children")}, ensure_ascii=False))
        return EXIT_OK if alive else EXIT_NOT_RUNNING
    if st.get("waiting"):  # first run: the recorder waits for the records key (firmware/cli/processes.py)
        print(f"nokbox: running, NOT recording — {st['message']}")
        return EXIT_OK
    dev = st["device"]
    print(f"nokbox: {'running' if alive else 'NOT running (the last status is shown)'}")
    if sup:
        print("processes: " + ", ".join(f"{n} {c['state']} (pid {c['pid']}, restarts {c['restarts']})"
                                        for n, c in sup["children"].items()))
    print(f"device: {dev['backend']} {dev.get('device', '')} state={dev['state']} xruns={dev['xruns']} "
          f"losses={dev['losses']} reopens={dev['reopens']}")
    for ln in st["lines"]:
        print(f"  ch{ln['channel']:<2} {ln['name']:<12} {ln['state']:<8} {ln['level_dbfs']:>6.1f} dBFS "
              f"calls today={ln['calls_today']} overrun={ln['overrun_seconds']} s")
    disk = st.get("disk") or {}
    if disk:
        days = f", {disk['days_left']} days left at the current volume" if disk.get("days_left") is not None else ""
        print(f"disk: {disk['free_bytes'] / 1e9:.1f} GB free ({disk['free_percent']} %){days}"
              + (f" [{disk['state'].upper()}]" if disk.get("state", "ok") != "ok" else ""))
        if disk.get("alarm"):
            print(f"  {disk['alarm']}")
    if st.get("config_error"):
        print(f"config reload refused: {st['config_error']}")
    return EXIT_OK if alive else EXIT_NOT_RUNNING


def _whoami() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


if __name__ == "__main__":
    sys.exit(main())

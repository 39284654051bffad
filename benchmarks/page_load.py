"""``benchmarks/pipeline.py --page-load``: a CPU-heavy page beside a live-paced 16-line capture.

Two runs over the same live-paced audio (an ``ArraySource`` delivering 16 lines in real time, as
a sound card would; the recorder's whole pipeline behind it):

  * separate: the recorder in its own process (with its socket), ``nokbox keeper`` and
    ``nokbox web`` as the other two processes, the layout ``nokbox run`` starts;
  * one process: the page served from inside the recorder's process (as before the split),
    the keeper still apart.

In each, after a quiet period, four client threads ask the technician's calls list (a day of the
index holding 1,000,000 calls) over and over for ``--load-s`` seconds, keeping the page at full
CPU. Printed per run: samples lost, the capture thread's worst period delay and how many reads
came later than the device's whole buffer (on real ALSA hardware each would be an overrun),
page requests served, each process's peak RSS and their sum, and, for the separate layout, the
added latency of a status request over the socket and the delivery delay of the levels stream.
Nothing is asserted.
"""

from __future__ import annotations

import datetime as dt
import http.cookiejar
import json
import os
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "Hangang-bridge-at-night-777"
ROWS = 1_000_000
FAST_AUTH = {"argon2_memory_kib": 19456, "argon2_time_cost": 2, "argon2_parallelism": 1}


def vm_hwm_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def config_text(lines: int) -> str:
    auth = "\n".join(f"{k} = {v}" for k, v in FAST_AUTH.items())
    # ten years' retention: the index's calls (four years of them) are all still kept, as in an office
    # that keeps recordings for three years; nothing is erased during the run
    return (f"[auth]\n{auth}\n[audio]\nchannels = {lines}\n[storage]\ncodec = \"opus\"\n"
            "[retention]\ndefault_days = 3650\n")


# -- set-up (a child process) -------------------------------------------------------------------
def make_box(data: Path, conf: Path) -> None:
    """A data directory with its records key, an administrator ``admin`` and a technician ``tech``
    (both with ``PASSWORD``). Shared with ``benchmarks/web.py``."""
    sys.path.insert(0, str(ROOT))
    from firmware.config import load_config
    from firmware.people.accounts import Accounts
    from firmware.vault.keys import init_data_dir

    init_data_dir(data)
    cfg, _ = load_config(conf)
    acc = Accounts(data, cfg.auth)
    admin, _ = acc.setup_first("admin", PASSWORD, ["admin"])
    acc.create("tech", PASSWORD, ["technician"], by=admin)


def setup(data: Path, conf: Path, day: dt.date, rows: int) -> dict:
    """A data directory with a technician and ``rows`` synthetic finished calls, 600 of them on ``day``."""
    make_box(data, conf)
    from firmware.index import KST, iso_utc

    con = sqlite3.connect(data / "index.sqlite")
    start = dt.datetime.combine(day, dt.time(9), KST).timestamp()
    t0 = time.perf_counter()

    def gen():
        for i in range(rows):
            # 600 calls on the measured day, the rest spread over the 4 years before it
            ts = start + (i % 600) * 30.0 if i < 600 else start - 86400.0 * (1 + i % 1460) - (i % 997) * 60.0
            yield (i % 16, f"회선 {i % 16 + 1}", iso_utc(ts), iso_utc(ts + 95.0), i * 760000, 760000, 8000, 95.0,
                   f"calls/bench/{i}.opus.age", 190000, "opus", "finished", "silence", 0)

    with con:
        con.executemany("INSERT INTO calls (line, line_name, start_utc, end_utc, start_sample, frames, rate, duration,"
                        " file, size, codec, state, end_reason, lost_frames) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", gen())
    con.close()
    return {"rows": rows, "insert_s": time.perf_counter() - t0}


# -- the live recorder (a child process) ----------------------------------------------------------
def live(wav: Path, data: Path, conf: Path, page_port: int | None, out: Path) -> int:
    """Record ``wav`` paced to real time, serve the recorder socket (and the page when asked) until SIGTERM."""
    sys.path.insert(0, str(ROOT))
    import soundfile as sf

    from firmware.config import load_config
    from firmware.hal.audio import ArraySource
    from firmware.recording.recorder import Recorder
    from firmware.recording.service import RecorderService

    cfg, path = load_config(conf)
    audio, rate = sf.read(str(wav), dtype="int16", always_2d=True)
    src = ArraySource(audio, rate, rate * cfg.audio.period_ms // 1000, realtime=True, pace=1.0, loop=True)
    rec = Recorder(cfg, data, source=src, config_path=path)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    rec.start()
    time.sleep(2.0)
    status_ms = []
    for _ in range(60):  # Recorder.status() in its own process, idle: what the socket adds is the rest
        t0 = time.perf_counter()
        rec.status()
        status_ms.append(1000 * (time.perf_counter() - t0))
    svc = RecorderService(rec).start()
    server = None
    if page_port is not None:
        from web import serve

        from firmware.vault.keeper import KeeperClient

        server = serve(rec, "127.0.0.1", page_port, keeper=KeeperClient(data, cfg))
    while not stop.wait(0.5):
        pass
    r = rec.reader
    figures = {"lost": int(rec.rings.lost.sum()), "xruns": r.xruns, "max_delay_ms": r.max_delay_s * 1000.0,
               "late_reads": r.late_reads, "late_limit_ms": r.late_limit_s * 1000.0,
               "frames": int(rec.rings.write_pos), "lines": len(rec.lines), "rate": rate,
               "vm_hwm_mb": vm_hwm_mb(os.getpid()), "status_inprocess_ms": statistics.median(status_ms),
               "source_mb": audio.nbytes / 2**20}
    if server is not None:
        server.close()
    svc.close()
    rec.stop()
    figures["calls_finished"] = rec.writer.stats.calls_finished
    out.write_text(json.dumps(figures))
    return 0


# -- the parent ---------------------------------------------------------------------------------------
class Browser:
    """Cookies and the CSRF token of the last form: enough to sign in and ask pages."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.csrf = ""

    def get(self, path: str) -> tuple[int, str]:
        with self.opener.open(self.base + path, timeout=60) as r:
            text = r.read().decode("utf-8", "replace")
            m = re.search(r'name="csrf" value="([^"]+)"', text)
            if m:
                self.csrf = m.group(1)
            return r.status, text

    def sign_in(self, name: str, password: str) -> None:
        self.get("/login")
        body = urllib.parse.urlencode({"csrf": self.csrf, "name": name, "password": password}).encode()
        with self.opener.open(urllib.request.Request(self.base + "/login", data=body), timeout=60) as r:
            r.read()


def _wait(cond, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up")
        time.sleep(0.2)


def _socket_up(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(path))
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _latencies(data: Path, conf: Path) -> dict:
    """A status request over the socket against the same call made in-process, and the levels stream."""
    sys.path.insert(0, str(ROOT))
    from firmware.config import load_config
    from firmware.recording.service import RecorderClient

    cfg, _ = load_config(conf)
    client = RecorderClient(data, cfg, actor="bench")
    times = []
    for _ in range(60):
        t0 = time.perf_counter()
        st = client.status()
        times.append(time.perf_counter() - t0)
    ages, gaps, last = [], [], None
    stream = client.levels(hz=10, seconds=3)
    for msg in stream:
        now = time.time()
        ages.append(now - msg["time"])
        if last is not None:
            gaps.append(now - last)
        last = now
    times.sort()
    return {"status_ms_median": 1000 * statistics.median(times), "status_ms_p95": 1000 * times[int(0.95 * len(times))],
            "status_bytes": len(json.dumps(st)), "levels_msgs": len(ages),
            "levels_age_ms_median": 1000 * statistics.median(ages), "levels_age_ms_max": 1000 * max(ages),
            "levels_gap_ms_median": 1000 * statistics.median(gaps)}


def _null_round_trip_ms(data: Path) -> float:
    """A request the recorder's socket refuses at once (unknown verb): the cost of the socket alone."""
    sys.path.insert(0, str(ROOT))
    from firmware.ipc import Client

    c = Client(data / "run" / "recorder.sock", "recorder")
    times = []
    for _ in range(60):
        t0 = time.perf_counter()
        try:
            c.call("no-such-verb", actor="bench", purpose="round trip")
        except Exception:  # noqa: BLE001 - the error reply is the round trip being timed
            pass
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def run_once(mode: str, wav: Path, data: Path, conf: Path, day: dt.date, load_s: float, quiet_s: float,
             script: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    port = _free_port()
    out = data.parent / f"live-{mode}.json"
    common = ["--data", str(data), "--config", str(conf)]
    rec = subprocess.Popen([sys.executable, str(script), "--child", "live", "--wav", str(wav), *common[:2],
                            "--conf", str(conf), "--out", str(out)] + (["--page-port", str(port)] if mode == "one" else []),
                           env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
    procs = {"recorder": rec}
    try:
        _wait(lambda: _socket_up(data / "run" / "recorder.sock"), "recorder")
        procs["keeper"] = subprocess.Popen([sys.executable, "-m", "firmware.cli", "keeper", *common], env=env,
                                           cwd=ROOT, stderr=subprocess.DEVNULL)
        _wait(lambda: _socket_up(data / "run" / "keeper.sock"), "keeper")
        if mode == "separate":
            procs["page"] = subprocess.Popen([sys.executable, "-m", "firmware.cli", "web", *common, "--port", str(port)],
                                             env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        _wait(lambda: Browser(base).get("/login")[0] == 200, "page")
        lat = _latencies(data, conf) if mode == "separate" else {}
        if lat:
            lat["null_round_trip_ms"] = _null_round_trip_ms(data)
        time.sleep(quiet_s)
        served = [0]
        errors = [0]
        until = time.monotonic() + load_s

        def load() -> None:
            b = Browser(base)
            b.sign_in("tech", PASSWORD)
            while time.monotonic() < until:
                try:
                    status, text = b.get(f"/calls?day={day.isoformat()}")
                    served[0] += status == 200 and text.count('<tr data-id="') >= 500
                except OSError:
                    errors[0] += 1

        page_pid = procs["page"].pid if mode == "separate" else rec.pid
        cpu0 = _cpu_s(page_pid)
        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        page_cpu = _cpu_s(page_pid) - cpu0
        time.sleep(quiet_s)
        rss = {name: vm_hwm_mb(p.pid) for name, p in procs.items() if name != "recorder"}
    finally:
        for name in ("page", "keeper", "recorder"):
            p = procs.get(name)
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(120)
                except subprocess.TimeoutExpired:
                    p.kill()
    figures = json.loads(out.read_text())
    rss["recorder"] = figures["vm_hwm_mb"]
    return {"mode": mode, "live": figures, "rss": rss, "served": served[0], "errors": errors[0],
            "page_cpu_s": page_cpu, **lat}


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def report(runs: list[dict], load_s: float) -> None:
    print(f"page load beside a live-paced capture ({runs[0]['live']['lines']} lines, "
          f"{runs[0]['live']['frames'] / runs[0]['live']['rate']:.0f} s of audio each run; "
          f"{load_s:g} s of calls-list requests over a {ROWS:,}-call index, 4 client threads)")
    for r in runs:
        lv = r["live"]
        label = {"separate": "three processes (page apart)", "one": "one process (page inside the recorder)"}[r["mode"]]
        print(f"{label}:")
        print(f"  samples lost                      {lv['lost']:10d}   (xruns {lv['xruns']})")
        print(f"  capture worst period delay        {lv['max_delay_ms']:10.1f} ms")
        print(f"  reads later than the whole buffer {lv['late_reads']:10d}   "
              f"(> {lv['late_limit_ms']:.0f} ms: an overrun on a real ALSA device)")
        print(f"  calls-list pages served           {r['served']:10d}   ({r['served'] / load_s:.1f}/s, "
              f"page CPU {r['page_cpu_s']:.1f} s, errors {r['errors']})")
        print(f"  calls finished by the recorder    {lv['calls_finished']:10d}")
        rss = r["rss"]
        print("  peak RSS                          " + ", ".join(f"{k} {v:.1f} MB" for k, v in rss.items())
              + f"; sum {sum(rss.values()):.1f} MB")
        print(f"    the recorder's includes          {lv['source_mb']:10.1f} MB of audio held by the benchmark's "
              "paced source (a sound card holds none)")
        if "status_ms_median" in r:
            print(f"  status over the socket            {r['status_ms_median']:10.2f} ms median, "
                  f"{r['status_ms_p95']:.2f} ms p95 ({r['status_bytes']} bytes); in the recorder's own process "
                  f"{lv['status_inprocess_ms']:.2f} ms: the socket adds "
                  f"{r['status_ms_median'] - lv['status_inprocess_ms']:.2f} ms (a null round trip "
                  f"{r['null_round_trip_ms']:.2f} ms)")
            print(f"  levels stream (10 Hz)             {r['levels_age_ms_median']:10.2f} ms median delivery delay, "
                  f"{r['levels_age_ms_max']:.2f} ms max; {r['levels_msgs']} messages, "
                  f"{r['levels_gap_ms_median']:.1f} ms apart")
    print("MB = 2**20 bytes; figures vary between runs and machines; nothing is asserted.")


def main(args, script: Path) -> int:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nokbox-pageload-") as tmpdir:
        tmp = Path(tmpdir)
        wav = tmp / "lines.wav"
        minutes = (args.load_s + 4 * 6 + 30) / 60.0
        print(f"generating {args.lines} line(s) x {minutes * 60:.0f} s of synthetic audio ...", flush=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        subprocess.run([sys.executable, str(script), "--child", "generate", "--wav", str(wav), "--minutes",
                        str(minutes), "--lines", str(args.lines)], check=True, env=env, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
        day = dt.date(2026, 3, 4)
        runs = []
        conf = tmp / "nokbox.toml"
        conf.write_text(config_text(args.lines))
        print(f"index of {ROWS:,} calls ...", flush=True)
        subprocess.run([sys.executable, str(script), "--child", "setup", "--data", str(tmp / "data-0"), "--conf",
                        str(conf)], check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        import shutil

        for mode in ("separate", "one"):
            data = tmp / f"data-{mode}"
            shutil.copytree(tmp / "data-0", data)  # the same box twice (the device key file is beside it)
            shutil.copy(tmp / "data-0-device.key", tmp / f"data-{mode}-device.key")
            print(f"[{mode}] live capture with the page under load ...", flush=True)
            runs.append(run_once(mode, wav, data, conf, day, args.load_s, 6.0, script))
        report(runs, args.load_s)
    return 0

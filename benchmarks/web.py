"""``benchmarks/web.py``: how fast the admin page answers over a full index (the page-speed figures of issue 14).

What it measures
  A box is built in a temporary directory: its records key, an administrator and a technician
  (``page_load.make_box``) and an index of ``--rows`` (default 1,000,000) finished calls spread
  over the lines (``--lines``, default 4, the box's default) and the last 90 days (office hours,
  weekends quieter, ids in start order as the recorder writes them), with the notice results a
  box stores: mostly played, some beep-only, notice off (``disabled``), failures (``output_busy``,
  ``relay_fault``, ``output_failed``, ``no_relay``) and calls with no notice stored (NULL). Then
  ``nokbox run`` is started on it (the real three processes: recorder on real ALSA fed by the source
  below, key keeper, page under waitress on 127.0.0.1), and a client signed in as the technician asks, over
  HTTP, ``--requests`` times each (default 200, in turn, after 3 unmeasured warm-up requests each):

    1. ``/calls``                               the first page of the list (100 rows, newest first)
    2. ``/calls?line=2&notice=failed``          a filtered first page
       ``/calls?day=<a weekday mid-range>&line=1``
    3. ``/calls?after=<start_utc>_<id>``        the page a person reaches by clicking "older" 5,000
                                                times: the cursor is the (start_utc, id) of the
                                                500,000th newest row (checked against the "older"
                                                link of the page before it)
    4. ``/api/status``
    5. ``/metrics``                             with the technician's session ("not available" if 404)

  Each time is one whole request (connect, answer, body read) as the client sees it.

  The meter delay is measured from the source: the box captures through real ALSA
  (pyalsaaudio), its device an ALSA ``file`` PCM whose ``infile`` is a FIFO this script writes
  in real time (20 ms chunks on the wall clock): low noise on every line, and on line 1 a 1 kHz
  tone switched on for 1 s every 2 s. The delay of one step is the client's clock when the first
  reading of the levels server-sent events (``/api/levels``) shows line 1 above -40 dBFS, minus
  the moment the first loud chunk was written into the FIFO: capture period, ring, meter window,
  the recorder's 10 Hz readings, its socket, the page process and HTTP, all of it. Measured for
  ``--meter-s`` seconds with nothing else asked, and again all through the page requests (a
  technician with the line map open while others use the list; a stream that ends after its 30 s
  is reopened, as EventSource does). Printed beside it: the delivery delay alone (arrival minus
  the ``time`` the recorder stamped on each reading).

  Printed: median and p95 (nearest rank) of each, next to the targets (p95 <= 100 ms for every
  page, meter delay <= 300 ms, median and p95) with "meets" or "MISSES"; for a list page that
  misses, the EXPLAIN QUERY PLAN of its query (``--explain``: for every list page). Nothing is
  asserted: the exit status is 0 unless the box could not be built or started.

Run it (from the repository root; about 2-3 minutes on a 2-core machine):

    .venv/bin/python benchmarks/web.py
    .venv/bin/python benchmarks/web.py --requests 50 --rows 200000    # a quick run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the project's ``web`` package, never this file, for ``import web``

from page_load import PASSWORD, Browser, _free_port, _wait, config_text, make_box  # noqa: E402

from firmware.index import KST, iso_utc  # noqa: E402
from tests.alsafifo import FifoLine, pcm_conf  # noqa: E402

DAYS = 90
PAGE_ROWS = 100
DEEP_ROW = 500_000  # the cursor of page 5000: what "older" 5000 times reaches
PAGE_TARGET_MS = 100.0
METER_TARGET_MS = 300.0
WARMUP = 3
# (mode, played, failure) of the stored notice and its share of the calls; None: no notice stored
NOTICES = [(("on", 1, None), 0.86), (("beep", 1, None), 0.05), (("off", 0, "disabled"), 0.03),
           (("on", 0, "output_busy"), 0.010), (("on", 0, "relay_fault"), 0.004), (("beep", 0, "output_failed"), 0.003),
           (("on", 0, "no_relay"), 0.003), (None, 0.04)]
END_REASONS = ["busy", "reorder", "silence", "idle"]


# -- the index --------------------------------------------------------------------------------------
def _office_hours(now: float, days: int) -> list[tuple[float, float, float]]:
    """(start, end, weight) of each day's 08:00-19:00 KST over the ``days`` up to ``now`` (today's cut at now)."""
    today = dt.datetime.fromtimestamp(now, KST).date()
    spans = []
    for k in range(days - 1, -1, -1):
        d = today - dt.timedelta(days=k)
        lo = dt.datetime.combine(d, dt.time(8), KST).timestamp()
        hi = min(dt.datetime.combine(d, dt.time(19), KST).timestamp(), now - 120.0)
        if hi > lo:
            spans.append((lo, hi, (hi - lo) * (1.0 if d.weekday() < 5 else 0.25)))
    return spans


def fill(data: Path, rows: int, lines: int, now: float) -> dict:
    """``rows`` finished calls in start order, one executemany in one transaction."""
    rng = random.Random(14)
    spans = _office_hours(now, DAYS)
    total = sum(w for _, _, w in spans)
    counts = [int(rows * w / total) for _, _, w in spans]
    counts[-1] += rows - sum(counts)
    notices = [n for n, _ in NOTICES]
    notice_w = [w for _, w in NOTICES]
    line_w = [1.0 / (1 + ch) for ch in range(lines)]  # the first lines are the busiest

    def gen():
        n = 0
        for (lo, hi, _), count in zip(spans, counts):
            for ts in sorted(lo + rng.random() * (hi - lo) for _ in range(count)):
                ch = rng.choices(range(lines), line_w)[0]
                notice = rng.choices(notices, notice_w)[0] or (None, None, None)
                dur = round(20.0 + rng.expovariate(1 / 120.0), 3)
                yield (ch, f"회선 {ch + 1}", iso_utc(ts), iso_utc(ts + dur), n * 1_000_000, int(dur * 8000), 8000, dur,
                       f"calls/bench/{n}.opus.age", int(dur * 2000), "opus", "finished",
                       END_REASONS[n % len(END_REASONS)], 0, *notice)
                n += 1

    t0 = time.perf_counter()
    con = sqlite3.connect(data / "index.sqlite")
    with con:
        con.executemany("INSERT INTO calls (line, line_name, start_utc, end_utc, start_sample, frames, rate, duration,"
                        " file, size, codec, state, end_reason, lost_frames, notice_mode, notice_played,"
                        " notice_failure) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", gen())
    deep = min(DEEP_ROW, rows - PAGE_ROWS) // PAGE_ROWS * PAGE_ROWS
    nth = "SELECT start_utc, id FROM calls ORDER BY start_utc DESC, id DESC LIMIT 1 OFFSET ?"
    last = con.execute(nth, (deep - 1,)).fetchone()  # the deep-th newest row: the cursor of page deep/100 + 1
    before = con.execute(nth, (deep - PAGE_ROWS - 1,)).fetchone()  # the page after it ends at ``last``
    first, newest = con.execute("SELECT min(start_utc), max(start_utc) FROM calls").fetchone()
    con.close()
    # a weekday in the middle of the range, for the day filter
    day = dt.datetime.fromtimestamp(now, KST).date() - dt.timedelta(days=DAYS // 2)
    while day.weekday() >= 5:
        day -= dt.timedelta(days=1)
    return {"insert_s": time.perf_counter() - t0, "deep": deep, "deep_cursor": f"{last[0]}_{last[1]}",
            "before_cursor": f"{before[0]}_{before[1]}", "first": first, "newest": newest, "day": day,
            "size_mb": (data / "index.sqlite").stat().st_size / 2**20}


# -- the requests -----------------------------------------------------------------------------------
def fetch(b: Browser, path: str) -> tuple[int, str, str]:
    """(status, final URL, body) of a GET; an HTTP error status is returned, not raised."""
    try:
        with b.opener.open(b.base + path, timeout=60) as r:
            return r.status, r.geturl(), r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, b.base + path, exc.read().decode("utf-8", "replace")


def older_link(page: str) -> str | None:
    import re

    m = re.search(r'<a href="([^"]+)" id="older"', page)
    if m is None:
        return None
    query = urllib.parse.urlsplit(m.group(1).replace("&amp;", "&")).query
    return urllib.parse.parse_qs(query).get("after", [None])[0]


STEP_ON_S, STEP_EVERY_S = 1.0, 2.0  # line 1's tone: on for 1 s every 2 s
LOUD_DBFS = -40.0  # a reading above this on line 1 shows the tone (noise is near -60, the tone -17)


class Source(FifoLine):
    """The box's audio input: a FIFO read by ALSA's ``file`` plugin, written in real time
    (tests/alsafifo.py), with the wall-clock moment of each step up of line 1's tone in ``steps``."""

    def __init__(self, tmp: Path, lines: int, rate: int = 8000) -> None:
        import numpy as np

        super().__init__(tmp / "line-in.fifo", lines, rate, noise_rms=30.0, seed=14)  # about -60 dBFS
        self.conf = tmp / "asound.conf"
        self.conf.write_text(pcm_conf("nbbench", self.path))
        t = np.arange(self.CHUNK) / rate
        self.tone = (8000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)  # 1 kHz, about -17 dBFS RMS
        self.steps: list[float] = []
        self._loud = False

    def env(self) -> dict:
        return {"ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{self.conf}"}

    def next_chunk(self, n: int):
        x = super().next_chunk(n).copy()
        on = (n / self.rate) % STEP_EVERY_S < STEP_ON_S
        if on:
            x[:, 0] = self.tone
        if on and not self._loud:
            self.steps.append(time.time())
        self._loud = on
        return x


class Meter:
    """Reads ``/api/levels`` until stopped (reopening a stream that ends): the delivery delay of each
    reading, and the delay from each step of the source's tone to the first reading that shows it."""

    def __init__(self, b: Browser, source: Source | None = None) -> None:
        self.b, self.ages, self.downs, self.opens, self.refused = b, [], 0, 0, 0
        self.source, self.step_ms, self._seen = source, [], 0
        self.started = self.ended = time.time()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="meter", daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                with self.b.opener.open(self.b.base + "/api/levels", timeout=10) as r:
                    self.opens += 1
                    if self.opens == 1:
                        self.started = time.time()  # steps before the stream opened are not this meter's
                    for raw in r:
                        if self.stop.is_set():
                            return
                        now = time.time()
                        line = raw.decode("utf-8", "replace").strip()
                        if line.startswith("event: down"):
                            self.downs += 1
                        elif line.startswith("data: "):
                            msg = json.loads(line[6:])
                            if "time" in msg:
                                self.ages.append(1000.0 * (now - msg["time"]))
                            self._step(now, msg)
            except urllib.error.HTTPError:  # 503: MAX_STREAMS already open; EventSource retries
                self.refused += 1
            except OSError:
                self.downs += 1
            self.stop.wait(1.0)  # the stream's "retry: 1000"

    def _step(self, now: float, msg: dict) -> None:
        """The first loud reading after a step up (and within its second of tone) is that step's delay."""
        if self.source is None:
            return
        lines = msg.get("lines") or []
        if not lines or lines[0].get("level_dbfs", -90.0) <= LOUD_DBFS:
            return
        steps = self.source.steps
        while self._seen < len(steps) and steps[self._seen] < self.started:
            self._seen += 1  # steps before this meter began are not its to measure
        if self._seen < len(steps) and steps[self._seen] <= now < steps[self._seen] + STEP_ON_S:
            self.step_ms.append(1000.0 * (now - steps[self._seen]))
            self._seen += 1
        elif self._seen < len(steps) and now >= steps[self._seen] + STEP_ON_S:
            self._seen += 1  # a step no reading showed while its tone lasted: missed, counted below

    @property
    def missed(self) -> int:
        return sum(1 for t in (self.source.steps if self.source else []) if self.started <= t < self.ended
                   - STEP_ON_S) - len(self.step_ms)

    def __enter__(self) -> "Meter":
        self.started = math.inf  # until the first stream opens
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.ended = time.time()
        self.stop.set()
        self.thread.join(15.0)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[max(0, math.ceil(p * len(s)) - 1)]


def measure(b: Browser, cases: list[tuple[str, str]], n: int) -> dict:
    """Each case's path ``n`` times, in turn, after WARMUP unmeasured requests each."""
    res = {key: {"path": path, "ms": [], "status": None, "rows": None, "bad": 0} for key, path in cases}
    for key, path in cases:
        status, url, text = fetch(b, path)
        r = res[key]
        r["status"], r["rows"] = status, text.count('<tr data-id="')
        r["login"] = urllib.parse.urlsplit(url).path == "/login"
        if status == 200 and not r["login"]:
            for _ in range(WARMUP - 1):
                fetch(b, path)
    live = [(key, path) for key, path in cases if res[key]["status"] == 200 and not res[key]["login"]]
    for _ in range(n):
        for key, path in live:
            t0 = time.perf_counter()
            status, url, text = fetch(b, path)
            res[key]["ms"].append(1000.0 * (time.perf_counter() - t0))
            res[key]["bad"] += status != 200
    return res


def explain(data: Path, info: dict) -> list[str]:
    """EXPLAIN QUERY PLAN of the list query a case runs (and of the "newer" probe on a cursor page)."""
    from firmware.index import ListFilter, list_sql, parse_cursor
    from firmware.release.calllist import day_bounds

    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(info["path"]).query))
    lo, hi = day_bounds(dt.date.fromisoformat(q["day"])) if "day" in q else (None, None)
    flt = ListFilter(lo, hi, int(q["line"]) - 1 if "line" in q else None, q.get("notice"))
    after = parse_cursor(q["after"]) if "after" in q else None
    queries = [list_sql(flt, after=after, limit=PAGE_ROWS + 1)]
    if after is not None:
        where, args = flt.where()
        queries.append((f"SELECT 1 FROM calls WHERE {where} AND (start_utc, id) > (?, ?) LIMIT 1", [*args, *after]))
    con = sqlite3.connect(f"file:{data / 'index.sqlite'}?mode=ro", uri=True)
    out = []
    try:
        for sql, args in queries:
            t0 = time.perf_counter()
            con.execute(sql, args).fetchall()
            ms = 1000.0 * (time.perf_counter() - t0)
            out.append(f"      {sql}   [{ms:.1f} ms here]")
            out += [f"        {row[3]}" for row in con.execute("EXPLAIN QUERY PLAN " + sql, args)]
    finally:
        con.close()
    return out


# -- the parent ---------------------------------------------------------------------------------------
def report(args, box: dict, res: dict, labels: dict, idle: Meter, busy: Meter, data: Path, start_s: float) -> None:
    print()
    print(f"admin page speed: {args.rows:,} calls over {DAYS} days ({box['first'][:10]} .. {box['newest'][:10]} UTC), "
          f"{args.lines} lines, index {box['size_mb']:.0f} MB (built in {box['insert_s']:.1f} s); "
          f"nokbox run up in {start_s:.1f} s;")
    print(f"HTTP on 127.0.0.1, signed in as a technician; {args.requests} requests each, in turn, after {WARMUP} "
          "warm-up requests")
    w = 58
    print(f"  {'':{w}} {'median':>9} {'p95':>9}   target")
    plans = []
    for key, r in res.items():
        label = labels[key]
        if r["status"] != 200 or r["login"]:
            why = "not available (404)" if r["status"] == 404 else (
                "not available (sign-in asked)" if r["login"] else f"not available (HTTP {r['status']})")
            print(f"  {label:{w}} {why}")
            continue
        med, p95 = pct(r["ms"], 0.5), pct(r["ms"], 0.95)
        ok = p95 <= PAGE_TARGET_MS
        extra = f"   ({r['rows']} rows)" if key.startswith("calls") else ""
        extra += f"   {r['bad']} non-200" if r["bad"] else ""
        print(f"  {label:{w}} {med:6.1f} ms {p95:6.1f} ms   p95 <= {PAGE_TARGET_MS:.0f} ms  "
              f"{'meets' if ok else 'MISSES'}{extra}")
        if key.startswith("calls") and (args.explain or not ok):
            plans.append((key, r))
    for name, m in (("idle", idle), ("while the pages load", busy)):
        label = f"meter: source step -> browser, {name} ({len(m.step_ms)} steps)"
        if not m.step_ms:
            print(f"  {label:{w}} no steps seen (streams opened {m.opens}, refused {m.refused}, down {m.downs})")
        else:
            med, p95 = pct(m.step_ms, 0.5), pct(m.step_ms, 0.95)
            ok = p95 <= METER_TARGET_MS
            note = f"   max {max(m.step_ms):.1f} ms" + (f", {m.missed} steps not shown" if m.missed > 0 else "")
            print(f"  {label:{w}} {med:6.1f} ms {p95:6.1f} ms   <= {METER_TARGET_MS:.0f} ms     "
                  f"{'meets' if ok else 'MISSES'}{note}")
        label = f"  of which delivery (stamp -> browser), {name} ({len(m.ages)} readings)"
        if not m.ages:
            print(f"  {label:{w}} no readings (streams opened {m.opens}, refused {m.refused}, down {m.downs})")
            continue
        med, p95 = pct(m.ages, 0.5), pct(m.ages, 0.95)
        note = f"   max {max(m.ages):.1f} ms" + (f", down {m.downs}" if m.downs else "") + (
            f", refused {m.refused}" if m.refused else "")
        print(f"  {label:{w}} {med:6.1f} ms {p95:6.1f} ms{note}")
    for key, r in plans:
        print(f"  EXPLAIN QUERY PLAN, {labels[key]}:")
        for line in explain(data, r):
            print(line)
    print("Figures vary between runs and machines; nothing is asserted.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=200, help="requests per page (default 200)")
    p.add_argument("--rows", type=int, default=1_000_000, help="calls in the index (default 1,000,000)")
    p.add_argument("--lines", type=int, default=4, help="lines of the box (default 4)")
    p.add_argument("--meter-s", type=float, default=10.0, help="seconds of the idle meter stream (default 10)")
    p.add_argument("--explain", action="store_true", help="print the query plan of every list page")
    args = p.parse_args(argv)
    if args.rows < 2 * PAGE_ROWS + 1:
        p.error(f"--rows must be at least {2 * PAGE_ROWS + 1}")

    with tempfile.TemporaryDirectory(prefix="nokbox-web-") as tmpdir:
        tmp = Path(tmpdir)
        data, conf = tmp / "data", tmp / "nokbox.toml"
        source = Source(tmp, args.lines)
        conf.write_text(config_text(args.lines).replace(
            "[audio]\n", '[audio]\nbackend = "alsa"\ndevice = "nbbench"\n', 1))
        print(f"building the box and an index of {args.rows:,} calls ...", flush=True)
        make_box(data, conf)
        box = fill(data, args.rows, args.lines, time.time())
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        log = open(tmp / "run.log", "wb")
        print("starting nokbox run (recorder, keeper, page) ...", flush=True)
        t0 = time.perf_counter()
        source.__enter__()
        run = subprocess.Popen([sys.executable, "-m", "firmware.cli", "run", "--data", str(data), "--config",
                                str(conf), "--port", str(port)],
                               env=dict(os.environ, PYTHONPATH=str(ROOT), **source.env()),
                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            try:
                _wait(lambda: run.poll() is None and Browser(base).get("/login")[0] == 200, "the page", 300.0)
            except RuntimeError:
                log.flush()
                sys.stdout.write((tmp / "run.log").read_text(errors="replace")[-3000:])
                raise
            start_s = time.perf_counter() - t0
            b = Browser(base)
            b.sign_in("tech", PASSWORD)
            status, url, page = fetch(b, "/calls?" + urllib.parse.urlencode({"after": box["before_cursor"]}))
            if urllib.parse.urlsplit(url).path == "/login":
                raise RuntimeError("the technician could not sign in")
            if older_link(page) != box["deep_cursor"]:
                print(f"note: the page before page {box['deep'] // PAGE_ROWS + 1} offers "
                      f"older={older_link(page)!r}, not {box['deep_cursor']!r}")
            day = box["day"].isoformat()
            cases = [("calls", "/calls"), ("calls_failed", "/calls?line=2&notice=failed"),
                     ("calls_day", f"/calls?day={day}&line=1"),
                     ("calls_deep", "/calls?" + urllib.parse.urlencode({"after": box["deep_cursor"]})),
                     ("status", "/api/status"), ("metrics", "/metrics")]
            labels = {"calls": "/calls  (first page)", "calls_failed": "/calls?line=2&notice=failed",
                      "calls_day": f"/calls?day={day}&line=1",
                      "calls_deep": f"/calls?after=<row {box['deep']:,}>  (page {box['deep'] // PAGE_ROWS + 1:,})",
                      "status": "/api/status", "metrics": "/metrics"}
            print(f"meter stream for {args.meter_s:g} s ...", flush=True)
            with Meter(b, source) as idle:
                time.sleep(args.meter_s)
            print(f"{args.requests} requests x {len(cases)} pages ...", flush=True)
            with Meter(b, source) as busy:
                res = measure(b, cases, args.requests)
        finally:
            if run.poll() is None:
                run.send_signal(signal.SIGTERM)
                try:
                    run.wait(150)
                except subprocess.TimeoutExpired:
                    run.kill()
            source.__exit__()
            log.close()
        report(args, box, res, labels, idle, busy, data, start_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())

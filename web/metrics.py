"""The box's figures as Prometheus metrics (``prometheus_client``), for ``/metrics``.

Only counts, states and sizes: no phone number, no audio, no person's name. Lines are labelled by
the number a person reads (1 = input channel 0), not by their names (those are the office's).
"""

from __future__ import annotations

import math
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from firmware import health as box
from firmware.alarms import KINDS
from firmware.index import CallIndex, last_call_per_line, parse_utc

LINE_STATES = ("idle", "in_call", "notice_playing", "fault", "disabled")


class BoxCollector:
    """One scrape: the recorder's status (None when it does not answer), the alarm store, the app's ext."""

    def __init__(self, status: dict | None, watch, x) -> None:
        self.status, self.watch, self.x = status, watch, x

    def collect(self):
        st = self.status
        up = GaugeMetricFamily("nokbox_process_up", "1 when the process runs and answers", labels=["process"])
        up.add_metric(["recorder"], 1.0 if st is not None else 0.0)
        for p in self.watch.facts.get("processes") or []:
            if p["name"] != "recorder":
                up.add_metric([p["name"]], 1.0 if p["state"] == "running" else 0.0)
        yield up
        yield from self._system()
        if st is not None:
            yield from self._recorder(st)
        yield from self._index()
        yield from self._disk()
        yield from self._alarms()

    def _system(self):
        rep = box.system_report()
        if rep["uptime_s"] is not None:
            yield GaugeMetricFamily("nokbox_system_uptime_seconds", "Seconds since the box booted", value=rep["uptime_s"])
        if rep["load"]:
            g = GaugeMetricFamily("nokbox_system_load", "Load average", labels=["period"])
            for k in ("1m", "5m", "15m"):
                g.add_metric([k], rep["load"][k])
            yield g
            yield GaugeMetricFamily("nokbox_system_cpus", "CPUs", value=rep["load"]["cpus"])
        if rep["temperature"]:
            yield GaugeMetricFamily("nokbox_system_temperature_celsius", "SoC/CPU temperature",
                                    value=rep["temperature"]["celsius"])
        if rep["throttling"]:
            yield GaugeMetricFamily("nokbox_system_throttled", "1 while the Pi is throttled or under-volted now",
                                    value=1.0 if rep["throttling"]["now"] else 0.0)
        clock = self.watch.facts.get("clock") or rep["clock"]
        if clock.get("synced") is not None:
            yield GaugeMetricFamily("nokbox_clock_synchronised", "1 when the clock is synchronised",
                                    value=1.0 if clock["synced"] else 0.0)

    def _recorder(self, st: dict):
        yield GaugeMetricFamily("nokbox_recorder_uptime_seconds", "Seconds since the recorder started",
                                value=st.get("uptime_s") or 0.0)
        dev = st.get("device") or {}
        yield GaugeMetricFamily("nokbox_device_up", "1 while the capture device delivers audio",
                                value=1.0 if dev.get("state") == "running" else 0.0)
        for key, what in (("xruns", "Capture overruns reported by the device"),
                          ("losses", "Times the capture device vanished"), ("reopens", "Times it was reopened")):
            yield CounterMetricFamily(f"nokbox_device_{key}", what, value=dev.get(key) or 0)
        yield GaugeMetricFamily("nokbox_device_gap_seconds", "Audio lost while the device was away",
                                value=dev.get("gap_seconds") or 0.0)
        w = st.get("writer") or {}
        yield GaugeMetricFamily("nokbox_writer_queue", "Chunks waiting to be encrypted and written", value=w.get("queue", 0))
        yield CounterMetricFamily("nokbox_writer_errors", "Write errors", value=w.get("write_errors", 0))
        yield GaugeMetricFamily("nokbox_calls_open", "Calls being recorded now", value=w.get("calls_open", 0))
        state = GaugeMetricFamily("nokbox_line_state", "1 for the line's present state", labels=["line", "state"])
        today = GaugeMetricFamily("nokbox_line_calls_today", "Calls today (KST)", labels=["line"])
        over = CounterMetricFamily("nokbox_line_overrun_seconds", "Audio lost to full rings since the recorder "
                                   "started", labels=["line"])
        fails = GaugeMetricFamily("nokbox_line_notice_failures_in_row", "Notice failures in a row", labels=["line"])
        level = GaugeMetricFamily("nokbox_line_level_dbfs", "Level of the last 100 ms (dBFS)", labels=["line"])
        for ln in st.get("lines") or []:
            n = str(ln["channel"] + 1)
            for s in LINE_STATES:
                state.add_metric([n, s], 1.0 if ln.get("state") == s else 0.0)
            today.add_metric([n], ln.get("calls_today", 0))
            over.add_metric([n], ln.get("overrun_seconds") or 0.0)
            fails.add_metric([n], (ln.get("notice") or {}).get("failures_in_row") or 0)
            lv = ln.get("level_dbfs")
            if lv is not None and math.isfinite(lv):
                level.add_metric([n], lv)
        yield from (state, today, over, fails, level)

    def _index(self):
        x = self.x
        last = GaugeMetricFamily("nokbox_line_last_call_timestamp_seconds", "When the line's last call began",
                                 labels=["line"])
        idx = CallIndex(Path(x.data_dir) / "index.sqlite")
        try:
            for ch, t in last_call_per_line(idx.con, [ln.channel for ln in x.cfg.lines]).items():
                last.add_metric([str(ch + 1)], parse_utc(t).timestamp())
            kept = idx.con.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
        finally:
            idx.close()
        yield last
        yield GaugeMetricFamily("nokbox_calls_kept", "Recordings kept (not yet destroyed)", value=kept)

    def _disk(self):
        d = self.watch.facts.get("disk") or {}
        if not d:
            return
        yield GaugeMetricFamily("nokbox_disk_free_bytes", "Free bytes on the data disk", value=d["free_bytes"])
        yield GaugeMetricFamily("nokbox_disk_total_bytes", "Size of the data disk", value=d["total_bytes"])
        yield GaugeMetricFamily("nokbox_disk_state", "0 ok, 1 nearly full, 2 full",
                                value={"ok": 0, "warn": 1, "full": 2}.get(d.get("state"), 0))
        if d.get("bytes_per_day") is not None:
            yield GaugeMetricFamily("nokbox_recordings_bytes_per_day", "Recording volume over the last week",
                                    value=d["bytes_per_day"])

    def _alarms(self):
        store = self.watch.store
        open_ = GaugeMetricFamily("nokbox_alarms_active", "Alarms that hold now", labels=["kind"])
        counts = {k: 0 for k in KINDS}
        for a in store.open():
            counts[a["kind"]] = counts.get(a["kind"], 0) + 1
        for k, n in counts.items():
            open_.add_metric([k], n)
        yield open_
        yield GaugeMetricFamily("nokbox_alarms_unacknowledged", "Alarms nobody acknowledged yet",
                                value=len(store.unacknowledged()))

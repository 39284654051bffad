"""Health and alarms: the box's figures, the disk's forecast, per-line counters and pictures, the
alarms (a banner on every page until acknowledged), and ``/metrics`` for central monitoring.

The alarms are judged by ``firmware.alarms.evaluate`` from facts gathered here: the recorder's
status over its socket (None when it does not answer), the supervised processes, the call index
(calls being recorded, each line's last call), the audit log (the oldest day nobody signed off),
the clock and the disk. ``AlarmWatch`` gathers them at most every ``CHECK_S`` seconds, on a page
view or from its own thread in a served page, and writes raisings and clearings to
``DATA/alarms.sqlite`` and the audit log. Nothing here carries personal data: no number, no audio.

``/metrics`` (Prometheus text, ``prometheus_client``) answers a signed-in person with
``metrics.view`` or a scraper with ``Authorization: Bearer <token>``; only the token's SHA-256 is
kept (``DATA/metrics-token.sha256``, owner-only), the token itself is shown once when made.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import math
import os
import secrets
import shutil
import threading
import time
from pathlib import Path

from flask import Blueprint, Response, abort, current_app, g, redirect, render_template, request, url_for

from firmware import health as box
from firmware.alarms import KINDS, AlarmStore, evaluate
from firmware.index import KST, CallIndex, iso_utc, last_call_per_line, parse_utc
from firmware.ipc import IpcError
from firmware.people.accounts import can
from firmware.people.review import overdue_days
from firmware.vault import forecast
from firmware.vault.retention import disk_report

from .auth import ext, requires, safe_next, source
from .charts import disk_chart, hourly_bars, size_text

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)

CHECK_S = 15.0  # alarms are judged at most this often (a page view or the watch thread)
SLOW_S = {"overdue": 300.0, "clock": 60.0, "charts": 120.0}  # the costlier facts are kept this long
TOKEN_FILE = "metrics-token.sha256"


def _recorder_status():
    try:
        return current_app.config["RECORDER"].status()
    except (IpcError, OSError):
        return None


class AlarmWatch:
    """The alarms of one page process: judged from fresh facts, kept in ``AlarmStore``."""

    def __init__(self, data_dir: Path) -> None:
        self.store = AlarmStore(data_dir)
        self._lock = threading.Lock()
        self._at = -math.inf  # monotonic time of the last judgement
        self._slow: dict[str, tuple[float, object]] = {}
        self.facts: dict = {}

    def _cached(self, name: str, make):
        now = time.monotonic()
        hit = self._slow.get(name)
        if hit is None or now - hit[0] > SLOW_S[name]:
            hit = (now, make())
            self._slow[name] = hit
        return hit[1]

    def gather(self, status=None) -> dict:
        """The facts ``evaluate`` judges, from this app's recorder, index, audit log and disk."""
        from .status import processes

        x = ext()
        now = x.audit.clock.wall()
        today = dt.datetime.fromtimestamp(now, KST).date()
        facts: dict = {"recorder": status if status is not None else _recorder_status(), "processes": processes(),
                       "today": today}
        idx = CallIndex(Path(x.data_dir) / "index.sqlite")
        try:
            con = idx.con
            facts["open_calls"] = {int(ln): parse_utc(t).timestamp() for ln, t in con.execute(
                "SELECT line, MIN(start_utc) FROM calls WHERE state = 'recording' GROUP BY line")}
            facts["last_call"] = {ch: parse_utc(t).timestamp()
                                  for ch, t in last_call_per_line(con, [ln.channel for ln in x.cfg.lines]).items()}
            first = con.execute("SELECT MIN(start_utc) FROM calls").fetchone()[0]
            # a line that never had a call is judged from when the box began recording (its first call),
            # or from the audit log's first entry when it recorded nothing yet
            facts["first_call"] = parse_utc(first).timestamp() if first else None
        finally:
            idx.close()

        def oldest_unreviewed():
            days = overdue_days(x.audit, today)
            return days[-1] if days else None

        facts["overdue"] = self._cached("overdue", oldest_unreviewed)
        facts["clock"] = self._cached("clock", box.clock_sync)
        try:
            facts["disk"] = disk_report(Path(x.data_dir), x.cfg, now)
        except Exception:  # noqa: BLE001 - a disk that cannot be read is judged as unknown
            log.exception("disk report failed")
            facts["disk"] = {}
        return facts

    def check(self, *, force: bool = False, status=None) -> None:
        """Judge the alarms now unless they were judged less than ``CHECK_S`` ago."""
        with self._lock:
            if not force and time.monotonic() - self._at < CHECK_S:
                return
            self._at = time.monotonic()
            x = ext()
            facts = self.gather(status)
            holding, judged = evaluate(facts, x.cfg, x.audit.clock.wall())
            self.store.sync(holding, judged, x.audit.clock.wall(), audit=x.audit)
            self.facts = facts


def watch(app=None) -> AlarmWatch:
    app = app or current_app
    w = app.extensions.get("nokbox_alarms")
    if w is None:
        w = app.extensions["nokbox_alarms"] = AlarmWatch(app.extensions["nokbox"].data_dir)
    return w


def init_app(app) -> None:
    watch(app)
    app.register_blueprint(bp)

    @app.context_processor
    def _banner():
        """The alarms nobody acknowledged, for ``_alarms.html`` on every page of a signed-in person."""
        user = g.get("user")
        if user is None or not can(user, "health.view"):
            return {"active_alarms": []}
        try:
            w = watch()
            w.check()
            return {"active_alarms": w.store.unacknowledged()}
        except Exception:  # noqa: BLE001 - the banner never takes a page down with it
            log.exception("alarm banner failed")
            return {"active_alarms": []}


def start_watch(app, every: float = 30.0) -> threading.Event:
    """A served page's own thread: the alarms are judged (raised, cleared, audited) also while nobody
    looks. Returns the event that stops it."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every):
            try:
                with app.app_context():
                    watch(app).check()
            except Exception:  # noqa: BLE001 - keep watching; the fault is in the log
                log.exception("alarm watch failed")

    threading.Thread(target=run, name="alarm-watch", daemon=True).start()
    return stop


# -- the page -----------------------------------------------------------------------------------
def _line_counters(cfg, status: dict | None, now: float) -> list[dict]:
    x = ext()
    day0 = dt.datetime.combine(dt.datetime.fromtimestamp(now, KST).date(), dt.time(), KST).timestamp()
    idx = CallIndex(Path(x.data_dir) / "index.sqlite")
    try:
        con = idx.con
        failed = dict(con.execute(
            "SELECT line, COUNT(*) FROM calls WHERE start_utc >= ? AND notice_mode IS NOT NULL AND notice_mode != 'off'"
            " AND notice_played = 0 GROUP BY line", (iso_utc(day0),)).fetchall())
        today = dict(con.execute("SELECT line, COUNT(*) FROM calls WHERE start_utc >= ? GROUP BY line",
                                 (iso_utc(day0),)).fetchall())
        last = last_call_per_line(con, [ln.channel for ln in cfg.lines])
    finally:
        idx.close()
    live = {ln["channel"]: ln for ln in (status or {}).get("lines") or []}
    rows = []
    for ln in cfg.lines:
        s = live.get(ln.channel) or {}
        notice = s.get("notice") or {}
        rows.append({"channel": ln.channel, "name": ln.name, "extension": ln.extension, "enabled": ln.enabled,
                     "state": s.get("state"), "calls_today": today.get(ln.channel, 0),
                     "overrun_seconds": s.get("overrun_seconds"), "notice_failed_today": failed.get(ln.channel, 0),
                     "failures_in_row": notice.get("failures_in_row"), "last_call": last.get(ln.channel)})
    return rows


def _charts(cfg, now: float) -> dict:
    """The per-line hourly bars (day, week) and the disk outlook, kept ``SLOW_S['charts']`` seconds."""
    x = ext()

    def make():
        du = shutil.disk_usage(x.data_dir)
        idx = CallIndex(Path(x.data_dir) / "index.sqlite")
        try:
            from firmware.vaultdb import ensure_schema

            ensure_schema(idx.con)  # the destructions table, for a box that destroyed nothing yet
            o = forecast.outlook(idx.con, cfg.retention, [ln.channel for ln in cfg.lines], now, du.free, du.total)
            week = forecast.calls_per_hour(idx.con, now, 7 * 24)
        finally:
            idx.close()
        return {"outlook": o, "week": week, "at": now}

    return watch()._cached("charts", make)


def _uptime_text(s: float | None) -> str:
    if s is None:
        return "알 수 없음 · unknown"
    d, rest = divmod(int(s), 86400)
    h, rest = divmod(rest, 3600)
    return (f"{d}일 {h}시간 {rest // 60}분 · {d} d {h} h {rest // 60} min" if d else
            f"{h}시간 {rest // 60}분 · {h} h {rest // 60} min")


def _full_text(o) -> str:
    if o.bytes_per_day <= 0:
        return "최근 1주일 녹음이 없어 예측할 수 없습니다 · no calls in the last week: nothing to forecast"
    if o.full_in_days is None:
        return (f"보존 기간 안에서 가득 차지 않습니다: 지금의 통화량이면 사용량이 {size_text(o.steady)}에서 멈춥니다 "
                f"(쓸 수 있는 공간 {size_text(o.space)}) · does not fill within retention: at the current volume use levels "
                f"off at {size_text(o.steady)} of {size_text(o.space)}")
    when = dt.datetime.fromtimestamp(o.now + o.full_in_days * 86400, KST).date()
    return (f"지금의 통화량이면 {o.full_in_days:.0f}일 뒤({when}) 가득 찹니다. 보존 기간을 줄이거나 디스크를 늘리십시오 · "
            f"at the current volume the disk is full in {o.full_in_days:.0f} days ({when}); shorten retention or add a "
            f"disk")


@bp.get("/health")
@requires("health.view")
def page():
    x = ext()
    w = watch()
    status = _recorder_status()
    w.check(force=True, status=status)
    now = x.audit.clock.wall()
    cfg = x.cfg
    charts = _charts(cfg, now)
    o = charts["outlook"]
    top = int(now // 3600) * 3600
    week_start = top - (7 * 24 - 1) * 3600
    line_charts = []
    for ln in cfg.lines:
        counts = charts["week"].get(ln.channel, [0] * (7 * 24))
        word = f"{ln.channel + 1}번 · {ln.name}"
        line_charts.append({
            "word": word, "day_total": sum(counts[-24:]), "week_total": sum(counts),
            "day": hourly_bars(counts[-24:], top - 23 * 3600, ident=f"hours-day-{ln.channel + 1}",
                               title=f"{word}: 최근 24시간 시간당 통화 · calls per hour, last 24 h"),
            "week": hourly_bars(counts, week_start, ident=f"hours-week-{ln.channel + 1}",
                                title=f"{word}: 최근 7일 시간당 통화 · calls per hour, last 7 days"),
        })
    rep = box.system_report()
    rep["clock"] = w.facts.get("clock") or rep["clock"]
    return render_template(
        "health.html", status=status, processes=w.facts.get("processes") or [], system=rep,
        uptime=_uptime_text(rep["uptime_s"]), recorder_uptime=_uptime_text(status["uptime_s"]) if status else None,
        disk=w.facts.get("disk") or {}, outlook=o, full_text=_full_text(o), disk_svg=disk_chart(o),
        lines=_line_counters(cfg, status, now), line_charts=line_charts, size_text=size_text,
        alarms=w.store.recent(40), kinds=KINDS, token_made=g.pop("metrics_token", None),
        token_exists=(Path(x.data_dir) / TOKEN_FILE).exists(), charts_at=iso_utc(charts["at"]))


@bp.post("/health/alarms/<int:alarm>/ack")
@requires("alarms.ack")
def ack(alarm: int):
    x = ext()
    w = watch()
    row = w.store.get(alarm)
    if row is None:
        abort(404)
    if row["acked_utc"] is not None:
        return render_template("error.html", code=409, message=f"이미 확인된 경보입니다 ({row['acked_by']}) · already "
                               f"acknowledged by {row['acked_by']}"), 409
    done = w.store.acknowledge(alarm, g.user.name, x.audit.clock.wall())
    if done is None:  # acknowledged by someone else a moment ago
        return render_template("error.html", code=409, message="이미 확인된 경보입니다 · already acknowledged"), 409
    x.audit.append("alarm.ack", actor=g.user.name, role=g.user.acting_role("alarms.ack"), obj=f"alarm:{alarm}",
                   reason=row["text"], source=source(),
                   detail={"kind": row["kind"], "subject": row["subject"], "cleared": row["cleared_utc"] is not None})
    return redirect(safe_next(request.form.get("back", "")) or url_for("health.page"))


# -- /metrics -----------------------------------------------------------------------------------
def _token_path() -> Path:
    return Path(ext().data_dir) / TOKEN_FILE


def _bearer_ok() -> bool | None:
    """True for the right token, False for a wrong one, None when none was given."""
    auth = request.headers.get("Authorization", "")
    if not auth.startswith("Bearer "):
        return None
    try:
        want = _token_path().read_text().strip()
    except OSError:
        return False
    got = hashlib.sha256(auth[7:].strip().encode()).hexdigest()
    return bool(want) and hmac.compare_digest(want, got)


_refused_at: dict[str, float] = {}


def metrics_view():
    """``GET /metrics``: a scraper's token or a signed-in person who may (``metrics.view``)."""
    x = ext()
    ok = _bearer_ok()
    if ok is False:
        # a wrong token is audited once per source and 10 minutes: a misconfigured scraper would
        # otherwise fill the log every 15 seconds
        now = time.monotonic()
        if now - _refused_at.get(source(), -math.inf) > 600:
            _refused_at[source()] = now
            x.audit.append("access.denied", actor="-", role="-", obj="GET /metrics", outcome="refused",
                           reason="wrong metrics token", source=source())
        return Response("wrong token\n", 401, {"WWW-Authenticate": 'Bearer realm="nokbox"'}, mimetype="text/plain")
    if ok is None:
        if g.get("user") is None:
            return Response("sign in or send the metrics token\n", 401, {"WWW-Authenticate": 'Bearer realm="nokbox"'},
                            mimetype="text/plain")
        try:
            x.accounts.authorize(g.user, "metrics.view", obj="GET /metrics", source=source())
        except Exception:  # noqa: BLE001 - AuthError: logged by authorize
            return Response("forbidden\n", 403, mimetype="text/plain")
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    from .metrics import BoxCollector

    reg = CollectorRegistry(auto_describe=False)
    reg.register(BoxCollector(_recorder_status(), watch(), x))
    return Response(generate_latest(reg), 200, mimetype=None, content_type=CONTENT_TYPE_LATEST)


metrics_view._nokbox_perm = "metrics.view"  # for the route table: a person needs it (a token does too)
bp.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])


@bp.post("/health/metrics-token")
@requires("metrics.view")
def new_token():
    """A new scrape token, shown once; the one before stops working."""
    x = ext()
    token = "nokbox-metrics-" + secrets.token_urlsafe(32)
    p = _token_path()
    tmp = p.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(hashlib.sha256(token.encode()).hexdigest() + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
    x.audit.append("metrics.token", actor=g.user.name, role=g.user.acting_role("metrics.view"), obj="metrics",
                   reason="new scrape token (the previous one no longer works)", source=source())
    g.metrics_token = token
    return page()


@bp.post("/health/metrics-token/delete")
@requires("metrics.view")
def delete_token():
    x = ext()
    try:
        _token_path().unlink()
    except FileNotFoundError:
        pass
    x.audit.append("metrics.token", actor=g.user.name, role=g.user.acting_role("metrics.view"), obj="metrics",
                   reason="scrape token withdrawn", source=source())
    return redirect(url_for("health.page"))

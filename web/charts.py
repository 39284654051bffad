"""Server-rendered SVG charts for the health page (no script framework; the page's CSP allows none
inline): calls per hour of a line, and the disk's use with its forecast. Pure functions of their
figures; every text is escaped; colours come from nokbox.css through classes."""

from __future__ import annotations

import datetime as dt
import math

from markupsafe import Markup, escape

from firmware.index import KST

WEEKDAYS = "월화수목금토일"


def nice_top(v: float) -> float:
    """The smallest 1, 2 or 5 x 10^k at or above ``v`` (an axis top a person reads at a glance)."""
    if v <= 0:
        return 1.0
    k = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 5, 10):
        if m * k >= v - 1e-12:
            return float(m * k)
    return float(10 * k)


def size_text(b: float) -> str:
    """Bytes as a person reads them (decimal units, as disks are sold)."""
    for unit, n in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(b) >= n:
            v = b / n
            return f"{v:.1f} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{b:.0f} B"


def _f(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def hourly_bars(counts: list[int], start: float, *, title: str, ident: str, width: int = 720,
                height: int = 130) -> Markup:
    """Bars of calls per hour from ``start`` (UNIX seconds at an hour), one bar an hour. Labels every
    3 hours for a day, at each KST midnight for longer spans."""
    n = len(counts)
    left, right, top, bottom = 34, 8, 8, 22
    w, h = width - left - right, height - top - bottom
    ymax = nice_top(max(counts or [0]))
    bw = w / max(n, 1)
    out = [f'<svg class="chart bars" id="{escape(ident)}" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-labelledby="{escape(ident)}-t" xmlns="http://www.w3.org/2000/svg">',
           f'<title id="{escape(ident)}-t">{escape(title)}</title>']
    for frac in (0.0, 0.5, 1.0):
        y = top + h - frac * h
        out.append(f'<line class="grid" x1="{left}" x2="{left + w}" y1="{_f(y)}" y2="{_f(y)}"/>')
        out.append(f'<text class="axis" x="{left - 4}" y="{_f(y + 4)}" text-anchor="end">{_f(ymax * frac)}</text>')
    for i, c in enumerate(counts):
        at = dt.datetime.fromtimestamp(start + i * 3600, KST)
        if c:
            bh = c / ymax * h
            out.append(f'<rect class="bar" x="{_f(left + i * bw + bw * 0.1)}" y="{_f(top + h - bh)}" '
                       f'width="{_f(max(bw * 0.8, 0.8))}" height="{_f(bh)}"><title>{at:%m-%d %H}시 · '
                       f'{c}건 calls</title></rect>')
        label = None
        if n <= 48 and at.hour % 3 == 0:
            label = f"{at:%H}시"
        elif n > 48 and at.hour == 0:
            label = f"{at:%m-%d} ({WEEKDAYS[at.weekday()]})"
        if label:
            x = left + i * bw
            out.append(f'<line class="tick" x1="{_f(x)}" x2="{_f(x)}" y1="{top + h}" y2="{top + h + 4}"/>')
            out.append(f'<text class="axis" x="{_f(x + 2)}" y="{height - 6}">{escape(label)}</text>')
    out.append(f'<line class="axis" x1="{left}" x2="{left + w}" y1="{top + h}" y2="{top + h}"/></svg>')
    return Markup("".join(out))


def disk_chart(o, *, ident: str = "disk-chart", width: int = 720, height: int = 250,
               show_days: int | None = None) -> Markup:
    """The use of the disk by recordings over ``o.history`` (a solid line), the forecast from now (dashed)
    to the end of the longest retention (or ``show_days``), the space recordings may take (the full line)
    and the retention horizon; the point where the forecast reaches full, if it does."""
    left, right, top, bottom = 62, 12, 18, 26
    w, h = width - left - right, height - top - bottom
    days_ahead = show_days if show_days is not None else max(min(o.horizon_days + 7, 400), 14)
    if o.full_in_days is not None:
        days_ahead = max(days_ahead, min(math.ceil(o.full_in_days) + 7, 400))
    fc = [p for p in o.forecast if p[0] <= o.now + days_ahead * 86400.0]
    t0 = o.history[0][0] if o.history else o.now
    t1 = o.now + days_ahead * 86400.0
    peak = max([b for _, b in o.history] + [b for _, b in fc] + [1])
    # a disk far from full: scaled to the use, or its line would lie flat on the axis; the full line is
    # then named at the top instead of drawn
    off_scale = o.space > 4 * peak
    ymax = nice_top((peak if off_scale else max(peak, o.space)) * 1.05)

    def x(t: float) -> float:
        return left + (t - t0) / max(t1 - t0, 1.0) * w

    def y(b: float) -> float:
        return top + h - min(b, ymax) / ymax * h

    title = (f"녹음 저장 공간: 지금 {size_text(o.stored)}, 쓸 수 있는 공간 {size_text(o.space)} · "
             f"recordings on disk: {size_text(o.stored)} of {size_text(o.space)}")
    out = [f'<svg class="chart disk" id="{escape(ident)}" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-labelledby="{escape(ident)}-t" xmlns="http://www.w3.org/2000/svg">',
           f'<title id="{escape(ident)}-t">{escape(title)}</title>']
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        yy = top + h - frac * h
        out.append(f'<line class="grid" x1="{left}" x2="{left + w}" y1="{_f(yy)}" y2="{_f(yy)}"/>')
        out.append(f'<text class="axis" x="{left - 4}" y="{_f(yy + 4)}" text-anchor="end">'
                   f'{escape(size_text(ymax * frac))}</text>')
    # month ticks (KST) along the bottom
    d = dt.datetime.fromtimestamp(t0, KST).date().replace(day=1)
    while True:
        d = (d + dt.timedelta(days=32)).replace(day=1)
        at = dt.datetime.combine(d, dt.time(), KST).timestamp()
        if at > t1:
            break
        out.append(f'<line class="tick" x1="{_f(x(at))}" x2="{_f(x(at))}" y1="{top + h}" y2="{top + h + 4}"/>')
        if x(at) + 46 <= width:  # a label that would run off the right edge is left out (its tick stays)
            out.append(f'<text class="axis" x="{_f(x(at) + 2)}" y="{height - 8}">{d:%Y-%m}</text>')
    ys = y(o.space)
    if off_scale:
        out.append(f'<text class="limit" id="{escape(ident)}-space" x="{left + 4}" y="{top + 10}">↑ 가득 참 '
                   f'{escape(size_text(o.space))}: 그래프 위쪽 밖 · full at {escape(size_text(o.space))}, far above '
                   f'this scale</text>')
    else:
        out.append(f'<line class="limit" id="{escape(ident)}-space" x1="{left}" x2="{left + w}" y1="{_f(ys)}" '
                   f'y2="{_f(ys)}"/><text class="limit" x="{left + 4}" y="{_f(ys - 4)}">가득 참 · full at '
                   f'{escape(size_text(o.space))}</text>')
    if o.history:
        pts = " ".join(f"{_f(x(t))},{_f(y(b))}" for t, b in o.history)
        out.append(f'<polyline class="used" id="{escape(ident)}-used" points="{pts}"/>')
    if fc:
        pts = " ".join(f"{_f(x(t))},{_f(y(b))}" for t, b in fc)
        out.append(f'<polyline class="forecast" id="{escape(ident)}-forecast" points="{pts}"/>')
    xn = x(o.now)
    out.append(f'<line class="now" x1="{_f(xn)}" x2="{_f(xn)}" y1="{top}" y2="{top + h}"/>'
               f'<text class="axis" x="{_f(xn + 3)}" y="{top + 10}">오늘 · now</text>')
    th = o.now + o.horizon_days * 86400.0
    if th <= t1:
        out.append(f'<line class="horizon" id="{escape(ident)}-horizon" x1="{_f(x(th))}" x2="{_f(x(th))}" '
                   f'y1="{top}" y2="{top + h}"/><text class="axis" x="{_f(x(th) - 3)}" y="{top + 22}" '
                   f'text-anchor="end">보존 {o.horizon_days}일 · retention</text>')
    if o.full_in_days is not None:
        tf = o.now + o.full_in_days * 86400.0
        if tf <= t1:
            out.append(f'<circle class="full" id="{escape(ident)}-full" cx="{_f(x(tf))}" cy="{_f(ys)}" r="5">'
                       f'<title>가득 참 예상 · full on {dt.datetime.fromtimestamp(tf, KST):%Y-%m-%d}</title></circle>')
    out.append(f'<line class="axis" x1="{left}" x2="{left + w}" y1="{top + h}" y2="{top + h}"/></svg>')
    return Markup("".join(out))

"""The box's own health figures: uptime, CPU load, temperature, throttling, clock synchronisation.

Each figure comes from the best source present and says which: a Raspberry Pi's ``vcgencmd``,
then ``/sys/class/thermal``, then ``psutil``; ``timedatectl``, then the kernel's ``adjtimex``.
A figure no source gives is ``None`` (the page says "unknown"); nothing here raises.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

THERMAL = Path("/sys/class/thermal")
# vcgencmd get_throttled bits (Raspberry Pi firmware): now (low bits) and since boot (high bits)
THROTTLE_BITS = {
    0x1: "under_voltage", 0x2: "freq_capped", 0x4: "throttled", 0x8: "soft_temp_limit",
    0x10000: "under_voltage_occurred", 0x20000: "freq_capped_occurred", 0x40000: "throttled_occurred",
    0x80000: "soft_temp_limit_occurred",
}
_TIME_ERROR = 5  # adjtimex: the clock is not synchronised


def _run(cmd: list[str], timeout: float = 2.0) -> str | None:
    """A tool's stdout, or None when it is absent, fails or hangs."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def uptime_s() -> float | None:
    try:
        return float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return time.time() - psutil.boot_time()
    except Exception:  # noqa: BLE001 - a figure, never a fault
        return None


def load() -> dict | None:
    """1, 5 and 15 minute load averages and the CPU count (load per CPU is what matters)."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return None
    return {"1m": round(one, 2), "5m": round(five, 2), "15m": round(fifteen, 2), "cpus": os.cpu_count() or 1}


def temperature() -> dict | None:
    """The SoC/CPU temperature in °C and where it was read, or None."""
    out = _run(["vcgencmd", "measure_temp"])
    m = re.search(r"temp=([0-9.]+)", out or "")
    if m:
        return {"celsius": float(m.group(1)), "source": "vcgencmd"}
    zones = []
    for zone in sorted(THERMAL.glob("thermal_zone*")):
        try:
            zones.append((zone.joinpath("type").read_text().strip(), int(zone.joinpath("temp").read_text()) / 1000.0))
        except (OSError, ValueError):
            continue
    if zones:  # the CPU's zone when named so, else the hottest
        cpu = [z for z in zones if re.search(r"cpu|soc|x86_pkg", z[0], re.I)]
        name, c = max(cpu or zones, key=lambda z: z[1])
        return {"celsius": round(c, 1), "source": f"/sys/class/thermal ({name})"}
    try:
        import psutil

        sensors = psutil.sensors_temperatures() if hasattr(psutil, "sensors_temperatures") else {}
    except Exception:  # noqa: BLE001
        sensors = {}
    readings = [(n, s.current) for n, group in (sensors or {}).items() for s in group if s.current]
    if readings:
        name, c = max(readings, key=lambda r: r[1])
        return {"celsius": round(c, 1), "source": f"psutil ({name})"}
    return None


def throttling() -> dict | None:
    """A Raspberry Pi's throttling flags (``vcgencmd get_throttled``), or None on other boards."""
    out = _run(["vcgencmd", "get_throttled"])
    m = re.search(r"throttled=(0x[0-9a-fA-F]+)", out or "")
    if not m:
        return None
    bits = int(m.group(1), 16)
    return {"raw": bits, "flags": [name for bit, name in THROTTLE_BITS.items() if bits & bit],
            "now": bool(bits & 0xF)}


def _adjtimex_state() -> int | None:
    """The kernel clock state (0 synchronised … 5 TIME_ERROR), read-only (modes = 0)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        buf = ctypes.create_string_buffer(512)  # struct timex is ~208 bytes; modes (first int) = 0: read only
        state = libc.adjtimex(buf)
    except (OSError, AttributeError):
        return None
    return state if state >= 0 else None


def clock_sync() -> dict:
    """``{"synced": True/False/None, "source": ...}``: timedatectl's NTPSynchronized where systemd runs,
    else the kernel's adjtimex state (a hint only: a development box's kernel may not know)."""
    out = _run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"])
    if out in ("yes", "no"):
        return {"synced": out == "yes", "source": "timedatectl"}
    state = _adjtimex_state()
    if state is not None:
        return {"synced": state != _TIME_ERROR, "source": "adjtimex"}
    return {"synced": None, "source": None}


def system_report() -> dict:
    """Every figure above in one dict (for the page and /metrics)."""
    return {"uptime_s": uptime_s(), "load": load(), "temperature": temperature(), "throttling": throttling(),
            "clock": clock_sync()}

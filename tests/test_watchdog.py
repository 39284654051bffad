"""systemd's watchdog hears from the recorder only while it makes progress: ``nokbox recorder`` under
a real sd_notify socket (NOTIFY_SOCKET, as systemd gives it), capturing through real ALSA from a
``file`` PCM whose infile is a FIFO this test writes in real time. While audio flows (an idle line:
low noise) WATCHDOG=1 arrives every second; when the FIFO stops delivering, the capture read hangs
in ALSA and the pings stop (after firmware.cli.processes.STALL_S) with the stuck thread named in the
log; when audio flows again so do the pings."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firmware.cli.processes import STALL_S
from tests.alsafifo import FifoLine, pcm_conf

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.alsa, pytest.mark.slow]


def test_the_watchdog_is_fed_only_while_capture_makes_progress(box, tmp_path):
    data, _ = box
    fifo = FifoLine(tmp_path / "line.fifo")
    conf = tmp_path / "asound.conf"
    conf.write_text(pcm_conf("wdline", fifo.path))
    cfgf = tmp_path / "nokbox.toml"
    cfgf.write_text('[audio]\nbackend = "alsa"\ndevice = "wdline"\nchannels = 1\n')
    sock_path = tmp_path / "notify.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(str(sock_path))
    srv.settimeout(0.5)
    env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="20000000",
               ALSA_CONFIG_PATH=f"/usr/share/alsa/alsa.conf:{conf}")
    log = tmp_path / "recorder.log"
    fifo.thread.start()
    with open(log, "wb") as lf:
        proc = subprocess.Popen([sys.executable, "-m", "firmware.cli", "recorder", "--data", str(data), "--config",
                                 str(cfgf)], cwd=ROOT, env=env, stdout=lf, stderr=subprocess.STDOUT)
    pings: list[tuple[float, str]] = []

    def listen(until: float, stop_on: str = "") -> None:
        while time.monotonic() < until:
            try:
                pings.append((time.monotonic(), srv.recv(4096).decode()))
            except socket.timeout:
                continue
            if stop_on and stop_on in pings[-1][1]:
                return

    try:
        listen(time.monotonic() + 90, stop_on="READY=1")  # start-up
        ready = [t for t, m in pings if "READY=1" in m]
        assert ready, log.read_text()
        t_ready = ready[0]
        listen(time.monotonic() + 4)
        assert sum("WATCHDOG=1" in m for t, m in pings if t > t_ready) >= 3  # an idle line is fed
        fifo.flowing.clear()  # the capture read now blocks inside ALSA
        t_hang = time.monotonic()
        listen(t_hang + STALL_S + 6)
        fed = [t for t, m in pings if "WATCHDOG=1" in m and t > t_hang]
        assert fed and max(fed) - t_hang <= STALL_S + 1.5, fed  # pings stop within the stall limit
        quiet_from = max(fed)
        assert time.monotonic() - quiet_from >= 4  # and stay stopped
        assert "has made no progress" in log.read_text() and "capture" in log.read_text()
        fifo.flowing.set()
        t_back = time.monotonic()
        listen(t_back + 5)
        assert any("WATCHDOG=1" in m for t, m in pings if t > t_back), log.read_text()  # fed again
        assert proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        finally:
            fifo.close()
            srv.close()

"""A private UDisks2 for tests: its own system bus (dbus-daemon), udisksd on it, and udevd (which
udisksd needs to see block devices) when none runs. Sticks are exFAT or FAT32 images attached as
loop devices through UDisks2 itself (``udisksctl loop-setup``), as a stick appears on a box."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={sock}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
  </policy>
</busconfig>
"""

UDISKSD = "/usr/libexec/udisks2/udisksd"


def need_root_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("loop devices and mounts need root (CI runs as root)")
    for tool in ("dbus-daemon", "udisksctl", "mkfs.exfat", "fsck.exfat", "mount.exfat-fuse", "losetup"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: scripts/setup.sh --test installs it")
    if not Path(UDISKSD).exists():
        pytest.fail("udisksd is missing: scripts/setup.sh installs udisks2")


def exfat(path: Path, mb: int = 64, label: str = "NOKBOX") -> Path:
    with open(path, "wb") as f:
        f.truncate(mb * 1024 * 1024)
    subprocess.run(["mkfs.exfat", "-L", label, str(path)], check=True, capture_output=True)
    return path


@contextlib.contextmanager
def mounted_exfat(img: Path):
    """An exFAT image mounted read-only with the stock tools (not the code under test)."""
    mnt = img.with_suffix(".mnt")
    mnt.mkdir(exist_ok=True)
    loop = subprocess.run(["losetup", "-f", "--show", "-r", str(img)], check=True, capture_output=True,
                          text=True).stdout.strip()
    try:
        subprocess.run(["mount.exfat-fuse", "-o", "ro", loop, str(mnt)], check=True, capture_output=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
        mnt.rmdir()


class UDisks:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.sock = tmp / "system_bus"
        self.address = f"unix:path={self.sock}"
        self.env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.address)
        self.procs: list[subprocess.Popen] = []
        self.started_udevd = False

    def start(self) -> "UDisks":
        conf = self.tmp / "bus.conf"
        conf.write_text(BUS_CONF.format(sock=self.sock))
        self.procs.append(subprocess.Popen(["dbus-daemon", "--nofork", f"--config-file={conf}"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if subprocess.run(["pgrep", "-x", "systemd-udevd"], capture_output=True).returncode != 0:
            udevd = shutil.which("systemd-udevd") or "/lib/systemd/systemd-udevd"
            subprocess.run([udevd, "--daemon"], check=True, capture_output=True)
            self.started_udevd = True
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            assert time.monotonic() < deadline, "dbus-daemon did not start"
            time.sleep(0.05)
        self.procs.append(subprocess.Popen([UDISKSD], env=self.env, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))
        while "/org/freedesktop/UDisks2/Manager:" not in subprocess.run(
                ["udisksctl", "dump"], env=self.env, capture_output=True, text=True).stdout:
            assert time.monotonic() < deadline, "udisksd did not start"
            time.sleep(0.1)
        return self

    def insert(self, img: Path, read_only: bool = False) -> str:
        """Attach ``img`` as a loop device through UDisks2; returns its stick id (``loopN``)."""
        args = ["udisksctl", "loop-setup", "--no-user-interaction", "-f", str(img)] + (["-r"] if read_only else [])
        run = subprocess.run(args, env=self.env, capture_output=True, text=True)
        assert run.returncode == 0, f"udisksctl loop-setup failed: {run.stderr.strip()}"
        out = run.stdout
        dev = out.strip().rstrip(".").rsplit(" ", 1)[-1]
        subprocess.run(["udevadm", "settle", "-t", "10"], check=False)
        return Path(dev).name

    def stop(self) -> None:
        rows = subprocess.run(["losetup", "-l", "-n", "-O", "NAME,BACK-FILE"], capture_output=True,
                              text=True).stdout.splitlines()
        for loop in [r.split(None, 1)[0] for r in rows if str(self.tmp) in r]:
            subprocess.run(["umount", "-l", loop], capture_output=True)
            subprocess.run(["losetup", "-d", loop], capture_output=True)
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        if self.started_udevd:
            # udevd exits a moment after it is told to; the next test's fixture must not find it
            # still there, count on it, and then wait for events no one delivers.
            subprocess.run(["udevadm", "control", "--exit"], capture_output=True)
            deadline = time.monotonic() + 10
            while subprocess.run(["pgrep", "-x", "systemd-udevd"], capture_output=True).returncode == 0:
                if time.monotonic() > deadline:
                    subprocess.run(["pkill", "-KILL", "-x", "systemd-udevd"], capture_output=True)
                    break
                time.sleep(0.05)


@pytest.fixture
def udisks(tmp_path):
    need_root_tools()
    u = UDisks(tmp_path).start()
    try:
        yield u
    finally:
        u.stop()

"""A Debian bookworm root filesystem with the nokbox package installed, booted under a real systemd
with ``systemd-nspawn`` (tests/test_boot.py; by hand: ``python -m tests.nspawn ROOT`` builds one).

* ``build_root(root, deb)``: ``mmdebstrap`` (systemd, the package's dependencies, nginx-light) and
  ``dpkg -i`` of the package built by scripts/build-deb.sh, exactly as a box installs it.
* ``Container(root).boot()``: ``systemd-nspawn --register=no --keep-unit -b`` (no machined here); the
  container's systemd is found as the child of nspawn and commands run inside with ``nsenter -a``
  (every namespace: its mounts, its pid 1, its users).

Nothing here mocks the box: the units, users, tmpfiles ACLs, nginx and the three services are the
ones the package installs.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

# what a box runs besides the package's own Depends (which dpkg -i checks): an init, the journal,
# and for the tests' checks ACL tools, curl (the page through nginx), ss and openssl
PACKAGES = ["systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "libasound2", "alsa-utils",
            "libsndfile1", "libopus0", "libogg0", "libtss2-esys-3.0.2-0", "libtss2-tctildr0", "fonts-nanum",
            "nginx-light", "udisks2", "mtools", "dosfstools", "exfatprogs", "curl", "acl", "ca-certificates",
            "procps", "iproute2", "openssl"]


def build_root(root: Path, deb: Path | None = None, *, suite: str = "bookworm", log=None) -> None:
    """mmdebstrap a root filesystem at ``root`` (a new folder) and install ``deb`` in it."""
    root = Path(root)
    out = log if log is not None else subprocess.DEVNULL
    subprocess.run(["mmdebstrap", "--variant=apt", "--include=" + ",".join(PACKAGES), suite, str(root)],
                   check=True, stdout=out, stderr=subprocess.STDOUT, timeout=1200)
    if deb is not None:
        install_deb(root, deb, log=log)


def install_deb(root: Path, deb: Path, *, log=None) -> None:
    """dpkg -i in a chroot (the package's postinst then only enables the units: no systemd runs)."""
    target = Path(root) / "var/tmp" / Path(deb).name
    target.write_bytes(Path(deb).read_bytes())
    try:
        subprocess.run(["chroot", str(root), "dpkg", "-i", f"/var/tmp/{target.name}"], check=True,
                       stdout=log if log is not None else subprocess.DEVNULL, stderr=subprocess.STDOUT,
                       timeout=1200)
    finally:
        target.unlink()


class Container:
    """One boot of ``root`` under systemd-nspawn."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root, self.log = Path(root), Path(log)
        self.proc: subprocess.Popen | None = None
        self.leader = 0

    def boot(self, timeout: float = 180.0) -> "Container":
        lf = open(self.log, "ab")
        self.proc = subprocess.Popen(["systemd-nspawn", "--register=no", "--keep-unit", "-q", "--console=pipe",
                                      "-D", str(self.root), "-b"], stdin=subprocess.DEVNULL, stdout=lf,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        lf.close()
        deadline = time.monotonic() + timeout
        while not self.leader:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the container did not start:\n{self.log.read_text(errors='replace')[-4000:]}")
            self.leader = self._find_leader()
            time.sleep(0.2)
        # wait for the boot to settle (degraded is an answer too: the test then names the failed unit)
        while time.monotonic() < deadline:
            r = self.sh("systemctl is-system-running", check=False, timeout=30)
            state = r.stdout.strip()
            if state in ("running", "degraded"):
                return self
            time.sleep(0.5)
        raise RuntimeError(f"the container's boot did not finish in {timeout:.0f} s: {state}")

    def _find_leader(self) -> int:
        """The container's pid 1 as the host sees it: the child of systemd-nspawn."""
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return 0
        for k in kids:
            try:
                if Path(f"/proc/{k}/comm").read_text().strip() == "systemd":
                    return int(k)
            except OSError:
                continue
        return 0

    def sh(self, command: str, *, check: bool = True, timeout: float = 120.0, user: str | None = None,
           input: str | None = None) -> subprocess.CompletedProcess:
        """Run a shell command inside the container (as root, or as ``user`` with that user's groups)."""
        argv = ["nsenter", "-t", str(self.leader), "-a", "--"]
        if user is not None:
            argv += ["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--"]
        argv += ["/bin/sh", "-c", command]
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
               "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"in the container `{command}` exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r

    def active(self, unit: str) -> str:
        return self.sh(f"systemctl is-active {shlex.quote(unit)}", check=False).stdout.strip()

    def wait_active(self, unit: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.active(unit) == "active":
                return
            time.sleep(0.5)
        raise AssertionError(f"{unit} is {self.active(unit)}:\n{self.journal(unit)[-3000:]}")

    def main_pid(self, unit: str) -> int:
        """The unit's main process as the container sees it (0: none)."""
        return int(self.sh(f"systemctl show -P MainPID {shlex.quote(unit)}").stdout.strip() or 0)

    def journal(self, unit: str | None = None, since: str | None = None) -> str:
        cmd = "journalctl --no-pager -o short-monotonic"
        if unit:
            cmd += f" -u {shlex.quote(unit)}"
        if since:
            cmd += f" --since {shlex.quote(since)}"
        return self.sh(cmd, check=False).stdout

    def poweroff(self, timeout: float = 240.0) -> int:
        """``systemctl poweroff`` inside; returns nspawn's exit status once the container has stopped."""
        self.sh("systemctl poweroff", check=False)
        try:
            return self.proc.wait(timeout)
        finally:
            self.leader = 0

    def kill(self) -> None:
        """Stop the container at once (a test that failed half-way)."""
        if self.proc is not None and self.proc.poll() is None:
            for pid in (self.leader or self._find_leader(), self.proc.pid):  # pid 1 takes its namespace
                try:
                    if pid:
                        os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait(30)
        self.leader = 0


if __name__ == "__main__":
    import sys

    build_root(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None, log=sys.stderr)

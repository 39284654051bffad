"""The appliance under a real systemd: the package that ``make deb`` builds, installed with ``dpkg -i``
in a Debian bookworm root filesystem made by ``mmdebstrap``, booted with ``systemd-nspawn -b``
(tests/nspawn.py). Its one line is an ALSA ``file`` PCM (/etc/asound.conf) whose infile is a FIFO
this test writes in real time from outside the container (tests/alsafifo.py): idle line noise, and
calls of recorded speech when a test plays one.

The tests run in file order on one boot (the module's fixture): the services come up; the page
answers through nginx; the page's user cannot open recordings, keys or the device key; a call is
recorded; the watchdog restarts a recorder whose capture hangs and the interrupted call is
recovered; ``kill -9`` mid-call loses no finished call; a bad config is refused with its key named
while the running recorder keeps the old one; an upgrade keeps data, keys and config;
``poweroff`` closes the call in progress as a complete file; remove keeps the recordings and purge
says what it deletes. ``NOKBOX_BOOT_DEB=path.deb`` skips building the package (a quicker rerun).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from tests.alsafifo import FifoLine, call_audio, pcm_conf
from tests.nspawn import Container, build_root, install_deb

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.boot, pytest.mark.slow, pytest.mark.timeout(900)]

DATA, CONF = "/var/lib/nokbox", "/etc/nokbox/nokbox.toml"
OPTS = f"--data {DATA} --config {CONF}"
PASSPHRASE = "a long recovery passphrase for the boot test"
# the keeper's sandbox as systemd-run properties: `nokbox init` as the keeper's user, as the page's
# first-run wizard has the keeper do it
AS_KEEPER = ("systemd-run --wait --pipe --quiet --uid=nokbox-keeper --gid=nokbox-keeper "
             "-p 'SupplementaryGroups=nokbox nokbox-vault' -p LoadCredential=device.key:/etc/nokbox/device.key "
             "-p UMask=0077 -E NOKBOX_SHARED_DATA=1")
WATCHDOG_S, STALL_S = 20, 8  # systemd/nokbox-recorder.service WatchdogSec, firmware.cli.processes.STALL_S


class Box:
    def __init__(self, c: Container, fifo: FifoLine, root: Path, deb: Path) -> None:
        self.c, self.fifo, self.root, self.deb = c, fifo, root, deb
        self.seed = 0

    def calls(self) -> list[dict]:
        out = self.c.sh(f"nokbox calls --json {OPTS}").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def wait(self, what: str, pred, timeout: float, every: float = 1.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = pred()
            if got:
                return got
            time.sleep(every)
        raise AssertionError(f"{what}: not within {timeout:.0f} s\n{self.c.journal('nokbox-recorder.service')[-4000:]}")

    def start_call(self, seconds: float) -> dict:
        """Play a call and wait until the recorder has opened it (state recording)."""
        before = {c["id"] for c in self.calls()}
        self.seed += 1
        self.fifo.play(call_audio(seconds, seed=self.seed))
        return self.wait("a call in progress", lambda: next(
            (c for c in self.calls() if c["id"] not in before and c["state"] == "recording"), None), 40)

    def recording(self, conf: str = CONF) -> bool:
        """The recorder runs with the records key and its device delivers (``nokbox status``)."""
        r = self.c.sh(f"nokbox status --json --data {DATA} --config {conf}", check=False)
        if r.returncode != 0:  # not answering (starting, or between its first-run wait and recording)
            return False
        st = json.loads(r.stdout)
        return "waiting" not in st and st.get("device", {}).get("state") == "running"

    def call(self, cid: int) -> dict:
        return next(c for c in self.calls() if c["id"] == cid)


def _configure(root: Path) -> None:
    """The box's one line: ALSA's file plugin reading /srv/nbtest/line.fifo."""
    (root / "srv/nbtest").mkdir(parents=True, exist_ok=True)
    os.chmod(root / "srv/nbtest", 0o755)
    (root / "etc/asound.conf").write_text(pcm_conf("nbline", "/srv/nbtest/line.fifo"))
    conf = root / "etc/nokbox/nokbox.toml"
    conf.write_text(conf.read_text() + '\n[audio]\nbackend = "alsa"\ndevice = "nbline"\nchannels = 1\n')


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("booting a container (systemd-nspawn, mmdebstrap, chroot) needs root")
    work = tmp_path_factory.mktemp("boot")
    root = work / "root"
    times = {}
    with open(work / "build.log", "wb") as log:
        def deb() -> Path:
            if os.environ.get("NOKBOX_BOOT_DEB"):
                return Path(os.environ["NOKBOX_BOOT_DEB"])
            t = time.monotonic()
            r = subprocess.run([str(ROOT / "scripts/build-deb.sh"), str(work / "deb")], cwd=ROOT, check=True,
                               stdout=subprocess.PIPE, stderr=log, text=True, timeout=1200)
            times["make deb"] = time.monotonic() - t
            return Path(r.stdout.strip().splitlines()[-1])

        def rootfs() -> None:
            t = time.monotonic()
            build_root(root, log=log)
            times["mmdebstrap"] = time.monotonic() - t

        with concurrent.futures.ThreadPoolExecutor(2) as ex:  # two cores: the package and the root at once
            fdeb, froot = ex.submit(deb), ex.submit(rootfs)
            froot.result()
            package = fdeb.result()
        t = time.monotonic()
        install_deb(root, package, log=log)
        times["dpkg -i"] = time.monotonic() - t
    _configure(root)
    fifo = FifoLine(root / "srv/nbtest/line.fifo")
    fifo.thread.start()
    c = Container(root, work / "console.log")
    try:
        t = time.monotonic()
        c.boot()
        times["boot"] = time.monotonic() - t
        print("boot fixture: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
        yield Box(c, fifo, root, package)
    finally:
        fifo.close()
        c.kill()


def test_the_services_come_up_and_the_page_answers_through_nginx(box):
    c = box.c
    for unit in ("nokbox-firstboot.service", "nokbox-recorder.service", "nokbox-keeper.service",
                 "nokbox-web.service", "nginx.service"):
        c.wait_active(unit, 60)
    failed = c.sh("systemctl --failed --no-legend --plain").stdout.strip()
    assert failed == "", failed
    # first boot made the device key (root's, 0600) and nginx's certificate
    assert c.sh("stat -c '%U %a %s' /etc/nokbox/device.key").stdout.split() == ["root", "600", "32"]
    san = c.sh("openssl x509 -noout -ext subjectAltName -in /etc/nokbox/tls/cert.pem").stdout
    assert "DNS:nokbox.local" in san and "DNS:localhost" in san, san
    assert c.sh("stat -c '%U %a' /etc/nokbox/tls/key.pem").stdout.split() == ["root", "600"]
    # the page, through nginx's HTTPS on the LAN port (waitress itself listens on loopback only)
    page = c.sh("curl -sk -o /dev/null -w '%{http_code} %{redirect_url}' https://localhost/").stdout
    assert page.split()[0] == "302" and page.split()[1].endswith("/setup"), page  # the first-run wizard
    http = c.sh("curl -s -o /dev/null -w '%{http_code} %{redirect_url}' http://localhost/").stdout
    assert http.split()[0] == "301" and http.split()[1].startswith("https://"), http
    listen = c.sh("ss -Hltn").stdout.split()
    assert "127.0.0.1:8080" in listen and "0.0.0.0:8080" not in listen and "*:8080" not in listen, listen
    # from the LAN (this box's own LAN address: nginx sees a client that is not loopback) the
    # first-run wizard is refused until the set-up code from the console is typed
    ip = c.sh("hostname -I").stdout.split()[0]
    assert c.sh(f"curl -sk -o /dev/null -w '%{{http_code}}' https://{ip}/setup").stdout == "403"
    assert c.sh("stat -c '%U %a' /etc/nokbox/setup-code").stdout.split() == ["nokbox-web", "600"]
    code = re.search(r"set-up code: ([A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4})", c.journal("nokbox-firstboot.service"))
    assert code, c.journal("nokbox-firstboot.service")
    form = c.sh(f"curl -sk -c /var/tmp/jar https://{ip}/setup/code").stdout
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    sent = c.sh(f"curl -sk -b /var/tmp/jar -c /var/tmp/jar -o /dev/null -w '%{{http_code}}' --data-urlencode "
                f"csrf={csrf} --data-urlencode code={code.group(1)} https://{ip}/setup/code").stdout
    assert sent == "302", sent
    assert c.sh(f"curl -sk -b /var/tmp/jar -o /dev/null -w '%{{http_code}}' https://{ip}/setup").stdout == "200"
    c.sh("rm -f /var/tmp/jar")
    # not recording yet: no records key (the wizard makes it); the recorder says so
    st = json.loads(c.sh(f"nokbox status --json {OPTS}").stdout)
    assert st.get("waiting") == "records-key" and st.get("recording") is False, st


def test_the_records_key_is_made_as_the_keeper_and_recording_starts(box):
    c = box.c
    c.sh("mkdir -p /var/tmp/kinit && chmod 0755 /var/tmp/kinit")
    c.sh("cat > /var/tmp/kinit/pass.txt && chmod 0644 /var/tmp/kinit/pass.txt", input=PASSPHRASE + "\n")
    out = c.sh(f"{AS_KEEPER} /opt/nokbox/venv/bin/nokbox init {OPTS} --passphrase-file /var/tmp/kinit/pass.txt").stdout
    c.sh("rm -rf /var/tmp/kinit")
    assert "initialised /var/lib/nokbox" in out, out
    marker = json.loads(c.sh(f"cat {DATA}/nokbox.json").stdout)
    assert marker["device"] == {"backend": "file", "path": "/etc/nokbox/device.key"}  # not the credential copy
    c.sh("systemctl restart nokbox-keeper.service")
    box.wait("the recorder recording", box.recording, 30)
    # each service reads what it must of the others' files: the keys' folder for the recorder too
    for user, path in (("nokbox-recorder", f"{DATA}/keys/epochs"), ("nokbox-recorder", f"{DATA}/keys/recipient.txt"),
                       ("nokbox-keeper", f"{DATA}/calls"), ("nokbox-web", f"{DATA}/index.sqlite")):
        c.sh(f"test -r {path}", user=user)


def test_a_call_is_recorded_encrypted_with_the_notice(box):
    first = box.start_call(20)
    done = box.wait("the call finished", lambda: (lambda x: x if x["state"] == "finished" else None)(
        box.call(first["id"])), 90)
    assert done["end_reason"] in ("idle", "silence") and 18 <= done["duration"] <= 40, done
    assert done["notice"]["played"] is True, done
    head = box.c.sh(f"head -c 21 {shlex.quote(done['file'])}").stdout
    assert head == "age-encryption.org/v1"
    verify = box.c.sh(f"nokbox verify {OPTS}", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_the_page_user_cannot_open_recordings_keys_or_the_device_key(box):
    c = box.c
    a_call = box.calls()[0]["file"]
    for cmd in (f"ls {DATA}/keys", f"ls {DATA}/calls", f"cat {a_call}", f"cat {DATA}/keys/recipient.txt",
                "cat /etc/nokbox/device.key", "cat /etc/nokbox/tls/key.pem"):
        r = c.sh(f"{cmd} >/dev/null", user="nokbox-web", check=False)  # a plain process of that user
        assert r.returncode != 0 and "Permission denied" in r.stderr, (cmd, r.stdout, r.stderr)
    assert c.sh(f"cat {a_call} | wc -c", user="nokbox-recorder").stdout.strip() != "0"  # its owner can
    c.sh(f"test -r {DATA}/index.sqlite && test -w {DATA}/index.sqlite", user="nokbox-web")  # what it needs
    # and the page's own sandbox (InaccessiblePaths=): in its mount namespace the folders are empty
    # even to root
    web = c.main_pid("nokbox-web.service")
    assert c.sh(f"ls {DATA}/keys").stdout.split()
    assert c.sh(f"nsenter -t {web} -m -- ls -A {DATA}/keys {DATA}/calls", check=False).stdout.split() in (
        [], [f"{DATA}/calls:", f"{DATA}/keys:"])


def test_the_watchdog_restarts_a_recorder_whose_capture_hangs_and_the_call_is_recovered(box):
    c = box.c
    call = box.start_call(60)
    pid = c.main_pid("nokbox-recorder.service")
    box.fifo.flowing.clear()  # the device stops delivering: the capture read blocks inside ALSA
    t_hang = time.monotonic()
    try:
        box.wait("the recorder restarted", lambda: c.main_pid("nokbox-recorder.service") not in (0, pid), 90, 0.5)
        took = time.monotonic() - t_hang
    finally:
        box.fifo.flowing.set()
    print(f"capture hung -> recorder restarted by the watchdog in {took:.1f} s "
          f"(bound STALL_S {STALL_S} + WatchdogSec {WATCHDOG_S} + RestartSec 2)")
    assert took <= STALL_S + WATCHDOG_S + 2 + 8, took
    journal = c.journal("nokbox-recorder.service")
    assert "Watchdog timeout" in journal, journal[-3000:]
    assert "has made no progress" in journal
    c.wait_active("nokbox-recorder.service", 60)
    got = box.wait("the interrupted call recovered", lambda: (lambda x: x if x["state"] == "finished" else None)(
        box.call(call["id"])), 60)
    assert got["duration"] and got["duration"] > 2, got  # what was recorded before the hang is kept
    box.wait("recording again", box.recording, 30)


def test_kill_9_mid_call_restarts_the_recorder_and_loses_no_finished_call(box):
    c = box.c
    box.wait("the line idle", lambda: all(x["state"] != "recording" for x in box.calls()), 120)
    finished = {x["id"]: x for x in box.calls() if x["state"] == "finished"}
    call = box.start_call(40)
    time.sleep(6)
    pid = c.main_pid("nokbox-recorder.service")
    c.sh(f"kill -9 {pid}")
    box.wait("the recorder restarted", lambda: c.main_pid("nokbox-recorder.service") not in (0, pid), 60, 0.5)
    c.wait_active("nokbox-recorder.service", 60)
    got = box.wait("the killed call recovered", lambda: (lambda x: x if x["state"] == "finished" else None)(
        box.call(call["id"])), 60)
    assert got["duration"] and got["duration"] >= 4, got
    after = {x["id"]: x for x in box.calls()}
    for cid, before in finished.items():  # every finished call is still there, unchanged
        assert after[cid]["state"] == "finished" and after[cid]["size"] == before["size"], (before, after[cid])
    box.wait("the line idle", lambda: all(x["state"] != "recording" for x in box.calls()), 120)
    verify = c.sh(f"nokbox verify {OPTS}", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_bad_config_names_its_key_and_the_running_recorder_keeps_the_old_one(box):
    c = box.c
    good = c.sh(f"cat {CONF}").stdout
    c.sh(f"cp {CONF} /var/tmp/good.toml")  # for `nokbox status`, which refuses the bad file too
    pid = c.main_pid("nokbox-recorder.service")
    try:
        c.sh(f"cat > {CONF}", input=good.replace('channels = 1', 'chanels = 1'))
        mark = c.sh("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
        c.sh("systemctl reload nokbox-recorder.service")
        journal = box.wait("the reload refused", lambda: (lambda j: j if "chanels" in j else None)(
            c.journal("nokbox-recorder.service", since=mark)), 30)
        assert c.active("nokbox-recorder.service") == "active" and c.main_pid("nokbox-recorder.service") == pid
        assert box.recording("/var/tmp/good.toml")  # still on the last good config
        assert "chanels" in c.sh(f"nokbox status {OPTS}", check=False).stderr  # the CLI names the key too
        # a restart with the bad file does not start: ExecStartPre's check names the key
        mark = c.sh("date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
        c.sh("systemctl restart nokbox-recorder.service", check=False)
        journal = box.wait("the start refused", lambda: (lambda j: j if "chanels" in j else None)(
            c.journal("nokbox-recorder.service", since=mark)), 30)
        assert c.active("nokbox-recorder.service") != "active", journal[-2000:]
        assert "chanels" in journal
    finally:
        c.sh(f"cat > {CONF}", input=good)
        c.sh("systemctl reset-failed nokbox-recorder.service; systemctl restart nokbox-recorder.service")
    c.wait_active("nokbox-recorder.service", 60)


def test_an_upgrade_keeps_data_keys_and_config_and_restarts_the_services(box):
    """dpkg -i of the package over itself on the running box (postinst configure with the old
    version): the venv is rebuilt and swapped, the services stop before and start after, and the
    calls, keys, accounts and config are as they were."""
    c = box.c
    box.wait("the line idle", lambda: all(x["state"] != "recording" for x in box.calls()), 120)
    before = {x["id"]: (x["state"], x["size"]) for x in box.calls()}
    conf = c.sh(f"cat {CONF}").stdout
    keys = c.sh(f"sha256sum {DATA}/keys/recipient.txt {DATA}/nokbox.json /etc/nokbox/device.key").stdout
    pids = {u: c.main_pid(u) for u in ("nokbox-recorder.service", "nokbox-keeper.service", "nokbox-web.service")}
    (box.root / "var/tmp/upgrade.deb").write_bytes(box.deb.read_bytes())
    t = time.monotonic()
    r = c.sh("dpkg -i /var/tmp/upgrade.deb && rm /var/tmp/upgrade.deb", timeout=600)
    print(f"upgrade (dpkg -i over the running box): {time.monotonic() - t:.0f} s")
    for u, pid in pids.items():
        c.wait_active(u, 60)
        assert c.main_pid(u) not in (0, pid), u  # restarted on the new program
    assert c.sh(f"cat {CONF}").stdout == conf
    assert c.sh(f"sha256sum {DATA}/keys/recipient.txt {DATA}/nokbox.json /etc/nokbox/device.key").stdout == keys
    after = {x["id"]: (x["state"], x["size"]) for x in box.calls()}
    assert {k: v for k, v in after.items() if k in before} == before
    assert not c.sh("ls -d /opt/nokbox/venv.new /opt/nokbox/venv.old 2>/dev/null", check=False).stdout.strip()
    box.wait("recording again", box.recording, 60)
    assert "nokbox" in r.stdout + r.stderr or r.returncode == 0


def test_poweroff_closes_the_call_in_progress_as_a_complete_file(box):
    call = box.start_call(90)
    time.sleep(8)
    code = box.c.poweroff()
    assert code == 0, box.c.log.read_text(errors="replace")[-3000:]
    # the box is off: read its disk from outside (a chroot with no systemd, as after pulling the SSD)
    r = subprocess.run(["chroot", str(box.root), "/opt/nokbox/venv/bin/nokbox", "calls", "--json", "--data", DATA,
                        "--config", CONF], capture_output=True, text=True, check=True)
    got = next(json.loads(x) for x in r.stdout.splitlines() if json.loads(x)["id"] == call["id"])
    assert got["state"] == "finished" and got["end_reason"] == "shutdown", got
    assert got["duration"] >= 8, got
    v = subprocess.run(["chroot", str(box.root), "/opt/nokbox/venv/bin/nokbox", "verify", "--data", DATA,
                        "--config", CONF], capture_output=True, text=True)
    assert v.returncode == 0, v.stdout + v.stderr


def test_remove_keeps_the_recordings_and_purge_says_what_it_deletes(box):
    """After the poweroff, on the box's disk (a chroot, no systemd): dpkg -r takes the program and
    keeps DATA and /etc/nokbox; dpkg -P says what it deletes, deletes /etc/nokbox (config, device
    key, certificate) and never the recordings."""
    root = box.root
    calls = sorted(p.relative_to(root) for p in (root / "var/lib/nokbox/calls").rglob("*.age"))
    assert calls
    r = subprocess.run(["chroot", str(root), "dpkg", "-r", "nokbox"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "Recordings, keys and the audit trail are kept in /var/lib/nokbox" in r.stderr
    assert not (root / "opt/nokbox/venv").exists() and not (root / "etc/nginx/sites-enabled/nokbox").exists()
    assert (root / "etc/nokbox/device.key").exists() and (root / "var/lib/nokbox/nokbox.json").exists()
    r = subprocess.run(["chroot", str(root), "dpkg", "-P", "nokbox"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "purge deletes /etc/nokbox" in r.stderr and "does NOT delete /var/lib/nokbox" in r.stderr
    assert not (root / "etc/nokbox").exists()
    assert sorted(p.relative_to(root) for p in (root / "var/lib/nokbox/calls").rglob("*.age")) == calls
    assert (root / "var/lib/nokbox/keys/recipient.txt").exists() and (root / "var/lib/nokbox/audit").is_dir()

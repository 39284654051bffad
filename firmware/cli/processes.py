"""The box's three processes and their supervisor: ``nokbox recorder``, ``keeper``, ``web`` and ``run``.

- ``recorder``: capture, segmentation, the notice, writing, recovery, retention; serves
  ``recorder.sock`` (status, levels, reload, notice_test). Holds public recipients only.
- ``keeper``: the only holder of the records identity, after an approver's PIN; serves
  ``keeper.sock`` and nothing else.
- ``web``: the admin page (Flask under waitress); reaches the other two only through their sockets.
- ``run``: starts the three in that order as child processes, restarts one that dies (with
  back-off; logged, and shown on the status page through ``DATA/run/supervisor.json``), forwards
  SIGHUP to the recorder, and on SIGTERM/SIGINT stops the page, then the keeper, then the
  recorder, which closes the calls in progress as complete files.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..config import load_config
from ..errors import NokboxError

log = logging.getLogger("nokbox")

EXIT_OK, EXIT_ERROR, EXIT_CONFIG = 0, 1, 2
CHILDREN = ("recorder", "keeper", "web")
READY_TIMEOUT_S = 180.0     # the recorder's first start may JIT-compile the segmenter (~20 s; slow SD cards more)
BACKOFF_S = (1.0, 30.0)     # first and longest wait before a restart
STABLE_S = 60.0             # a child that ran this long starts its back-off again from the first wait
STOP_TIMEOUT_S = {"web": 10.0, "keeper": 10.0, "recorder": 120.0}


def add_parsers(sub, common) -> None:
    p = sub.add_parser("recorder", help="the recording process: capture, segmentation, notice, writing, retention")
    common(p)
    p = sub.add_parser("keeper", help="the key keeper process: PIN checks, grants, decryption (no network)")
    common(p)
    p = sub.add_parser("web", help="the admin page process (talks to the recorder and the keeper by socket)")
    common(p)
    p.add_argument("--port", type=int, help="admin page port (default from config, 8080)")
    p.add_argument("--host", help="admin page address (default from config, 127.0.0.1)")


def _stop_on_signals(stop: threading.Event, on_hup=None) -> None:
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if on_hup is not None:
        signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=on_hup, name="reload").start())


def _follow_parent() -> None:
    """A supervised child ends with its supervisor, even one killed with SIGKILL (Linux prctl)."""
    parent = os.environ.get("NOKBOX_SUPERVISOR_PID")
    if not parent:
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != int(parent):  # the supervisor died before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def notify_systemd(msg: str) -> None:
    """sd_notify over the socket systemd gives us; a no-op elsewhere."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    import socket

    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(msg.encode())
    except OSError:
        pass


def _serve_until_signalled(close) -> int:
    """Tell systemd we are up, keep its watchdog fed until SIGTERM/SIGINT, then ``close``."""
    stop = threading.Event()
    _stop_on_signals(stop)
    notify_systemd("READY=1")
    try:
        while not stop.wait(1.0):
            notify_systemd("WATCHDOG=1")
    finally:
        notify_systemd("STOPPING=1")
        close()
    return EXIT_OK


# -- the three processes ---------------------------------------------------------------------
def cmd_recorder(args) -> int:
    from ..recording.recorder import Recorder
    from ..recording.service import RecorderService

    _follow_parent()
    cfg, path = load_config(args.config)
    stop = threading.Event()
    _stop_on_signals(stop, on_hup=lambda: None)  # a reload while waiting has nothing to reload
    if not _wait_for_records_key(args.data, cfg, stop):
        return EXIT_OK
    rec = Recorder(cfg, args.data, config_path=path)
    signal.signal(signal.SIGHUP, lambda *_: threading.Thread(target=rec.reload, name="reload").start())
    rec.start()
    svc = None
    try:
        svc = RecorderService(rec).start()
        log.info("recorder serving %s", svc.path)
        notify_systemd("READY=1")
        stalled: set[str] = set()
        while not stop.wait(1.0):
            stuck = _stalled((rec.reader, rec.segmenter, rec.writer))
            if not stuck:
                notify_systemd("WATCHDOG=1")
            for name in stuck - stalled:
                log.error("%s has made no progress for %.0f s: no more watchdog pings, systemd restarts the recorder",
                          name, STALL_S)
            stalled = stuck
            for t in (rec.reader, rec.segmenter, rec.writer):
                if not t.is_alive():
                    log.error("%s stopped unexpectedly; exiting so the recorder is restarted", t.name)
                    stop.set()
    finally:
        notify_systemd("STOPPING=1")
        if svc is not None:
            svc.close()
        rec.stop()
    return EXIT_OK if all(not getattr(t, "error", "") for t in (rec.segmenter, rec.writer)) else EXIT_ERROR


STALL_S = 8.0  # a capture read, segmenter or writer turn that takes longer is stuck (nokbox-recorder.service)


def _stalled(threads) -> set[str]:
    """The threads whose loop has not turned for STALL_S: a capture read that never returns, a writer in
    a dead disk's fsync. An idle line still reads a period every 20-100 ms, and the segmenter and writer
    loops turn at least every 0.2 s with nothing to do, so quiet is not stuck."""
    now = time.monotonic()
    return {t.name for t in threads if t.is_alive() and now - getattr(t, "beat", now) > STALL_S}


def _wait_for_records_key(data: Path, cfg, stop: threading.Event) -> bool:
    """A box without its records key (first run) cannot record: nothing could be encrypted. Until the
    first-run wizard (or ``nokbox init``) creates the key the recorder opens no capture device and
    answers ``status`` with ``waiting: records-key`` (so the supervisor and ``nokbox status`` say why),
    and it says so in the log every minute. True once the key exists, False when stopped first."""
    from ..ipc import Server, allowed_uids, run_dir
    from ..recording.service import SOCKET
    from ..vault.keys import MARKER

    if (Path(data) / MARKER).exists():
        return True
    log.warning("%s has no records key yet: NOT RECORDING until the first-run wizard (or nokbox init) creates "
                "it", data)
    since = time.time()
    srv = Server(run_dir(data, cfg) / SOCKET, {"status": lambda r: {
        "waiting": "records-key", "recording": False, "since": since, "lines": [],
        "message": "기록 키가 아직 없어 녹음하지 않습니다 (첫 설정) · not recording: no records key yet (first-run set-up)"}},
        name="recorder", allow_uids=allowed_uids(cfg.ipc.recorder_allow)).start()
    notify_systemd("READY=1")
    try:
        n = 0
        while not stop.wait(1.0):
            notify_systemd("WATCHDOG=1")
            if (Path(data) / MARKER).exists():
                log.info("records key created: the recorder starts")
                return True
            n += 1
            if n % 60 == 0:
                log.warning("still no records key: not recording (first-run wizard at http://127.0.0.1:%d/)",
                            cfg.web.port)
        return False
    finally:
        srv.close()


def cmd_keeper(args) -> int:
    from ..people.accounts import role_check
    from ..vault.keeper import Keeper, KeeperService

    _follow_parent()
    cfg, _ = load_config(args.config)
    from ..release.requests import KeeperView

    keeper = Keeper(args.data, cfg, authorize=role_check(args.data), config_given=args.config is not None,
                    requests=KeeperView(args.data, cfg, role_check(args.data)))
    if not keeper.initialised:  # first run: only status and the wizard's init verbs answer until then
        log.warning("%s has no records key yet: the keeper waits for the first-run wizard (or nokbox init)", args.data)
    svc = KeeperService(keeper).start()
    log.info("key keeper serving %s", svc.path)
    return _serve_until_signalled(svc.close)  # closing forgets every identity


def cmd_web(args) -> int:
    from web import serve

    from ..recording.service import RecorderClient
    from ..vault.keeper import KeeperClient

    _follow_parent()
    cfg, path = load_config(args.config)
    host = args.host or cfg.web.host
    port = args.port or cfg.web.port
    # the settings page writes the file the box runs on (none yet: the one given, or /etc/nokbox/nokbox.toml)
    from ..config import DEFAULT_CONFIG_PATH

    config_path = Path(path or args.config or DEFAULT_CONFIG_PATH)
    server = serve(RecorderClient(args.data, cfg, actor="page"), host, port, data_dir=args.data, cfg=cfg,
                   keeper=KeeperClient(args.data, cfg), config_path=config_path)
    log.info("the settings page writes %s", config_path)
    if getattr(server, "fingerprint", None):  # HTTPS on the LAN: the certificate a browser should show
        log.info("admin page on https://%s:%s/ (http://%s:%s/ redirects)", host, server.https_port, host, server.port)
        print(f"관리 화면 인증서 지문 · admin page certificate SHA-256 fingerprint: {server.fingerprint}", flush=True)
    else:
        log.info("admin page on http://%s:%s/", host, server.port)
    stop = threading.Event()
    threading.Thread(target=_request_upkeep, args=(args.data, cfg, stop), name="request-upkeep", daemon=True).start()

    def close() -> None:
        stop.set()
        server.close()

    return _serve_until_signalled(close)


def _request_upkeep(data, cfg, stop: "threading.Event", every_s: float = 6 * 3600.0) -> None:
    """The page process owns the requests: at start and every few hours it notes attached calls that
    retention destroyed (the ledger says so) and destroys requests past ``release.keep_years``."""
    from ..audit import AuditLog
    from ..release.requests import Requests
    from ..vault.keeper import KeeperClient

    while True:
        try:
            reqs = Requests(data, cfg, AuditLog(data, every=cfg.audit.seal_every), KeeperClient(data, cfg))
            gone = reqs.mark_destroyed_calls()
            purged = reqs.purge()
            if gone or purged:
                log.info("requests: %d attached call(s) found destroyed, %d old request(s) destroyed", gone, len(purged))
        except Exception:  # noqa: BLE001 - upkeep must not stop the page
            log.exception("request upkeep failed")
        if stop.wait(every_s):
            return


def cmd_firstboot(args) -> int:
    """The appliance's first boot (nokbox-firstboot.service, root): the device secret where the
    config keeps it (a 0600 root file the recorder and keeper receive as a systemd credential, or
    sealed in the TPM) and the HTTPS certificate nginx serves (ECDSA P-256; the host name,
    nokbox.local and the box's addresses). Each is made once; the fingerprint is printed at every
    run, for the console and the journal."""
    from web.setupcode import issue
    from web.tls import ensure_certificate

    from ..config import DEFAULT_CONFIG_PATH
    from ..hal.devicekey import device_secret
    from ..vault.keys import MARKER

    cfg, cpath = load_config(args.config)
    v = cfg.vault
    failed = False
    if v.device_secret != "otp":
        dev = device_secret(v.device_secret, v.device_key_file, tpm_blob=v.tpm_blob, tpm_tcti=v.tpm_tcti)
        if not Path(dev.path).exists() and (Path(args.data) / MARKER).exists():
            # the data was made with a device secret that is gone (a restored SD card, a new box): a
            # new one would silently break crash recovery and the masked numbers; put the old one back
            print(f"오류 · ERROR: 장치 비밀 {dev.path} 이(가) 없는데 {args.data} 에는 기록이 있습니다. 새로 만들지 "
                  f"않습니다: 백업에서 복원하십시오 (docs/install.md 복구) · the device secret {dev.path} is missing "
                  f"but {args.data} holds data made with it: not making a new one; restore it from its backup "
                  f"(docs/install.md, recovery)", flush=True)
            failed = True
        else:
            dev.provision()  # reads the one there, or makes it (0600)
            print(f"장치 비밀 · device secret ({v.device_secret}): {dev.fingerprint()}", flush=True)
    _tpm_dropins(args.data, cfg)
    _, _, fp = ensure_certificate(args.data, "0.0.0.0", directory=args.tls_dir)
    print(f"관리 화면 인증서 지문 · admin page certificate SHA-256 fingerprint: {fp}", flush=True)
    # a box with no keyboard: the first-run wizard answers a LAN browser that types this code
    code = issue(Path(cpath or args.config or DEFAULT_CONFIG_PATH), args.data)
    if code:
        print(f"첫 설정 코드 · set-up code: {code}  (https://nokbox.local/setup/code; 다시 켜면 새 코드 · a new "
              f"one at every start until the set-up is done)", flush=True)
    return EXIT_ERROR if failed else EXIT_OK


TPM_DROPIN = "10-nokbox-tpm.conf"


def _tpm_dropins(data: Path, cfg) -> None:
    """A TPM box passes the sealed blob to the recorder and the keeper as a credential in place of
    the key file (the units name device.key): a drop-in for each, written here when the config or
    the data directory's marker says 'tpm' (and removed when neither does), then a daemon-reload so
    the services, ordered after this unit, start with it."""
    from ..vault.keys import marker_device

    where = marker_device(data)
    blob = where.get("path") if where.get("backend") == "tpm" else (
        cfg.vault.tpm_blob if cfg.vault.device_secret == "tpm" else None)
    base = Path(os.environ.get("NOKBOX_SYSTEMD_DIR", "/etc/systemd/system"))
    changed = False
    for unit in ("nokbox-recorder.service", "nokbox-keeper.service"):
        f = base / f"{unit}.d" / TPM_DROPIN
        want = None if blob is None else (
            "# nokbox firstboot: this box's device secret is sealed in its TPM; the blob (root's, 0600)\n"
            "# reaches the service as a credential instead of the key file\n"
            f"[Service]\nLoadCredential=\nLoadCredential=device.tpm:{blob}\n")
        have = f.read_text() if f.exists() else None
        if want == have:
            continue
        if want is None:
            f.unlink()
        else:
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(want)
            f.chmod(0o644)
        changed = True
    if changed:
        print(f"TPM: {'credential drop-ins written' if blob else 'credential drop-ins removed'} ({base})", flush=True)
        if Path("/run/systemd/system").exists() and "NOKBOX_SYSTEMD_DIR" not in os.environ:
            subprocess.run(["systemctl", "daemon-reload"], check=False)


# -- the supervisor ----------------------------------------------------------------------------
class Child:
    """One supervised process: its command, its state, its restarts."""

    def __init__(self, name: str, argv: list[str], ready) -> None:
        self.name = name
        self.argv = argv
        self.ready = ready
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.backoff = BACKOFF_S[0]
        self.started = 0.0
        self.next_start = 0.0
        self.last_exit: int | None = None
        self.state = "stopped"

    def start(self) -> None:
        env = dict(os.environ, NOKBOX_SUPERVISOR_PID=str(os.getpid()))
        for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):  # systemd hears from the supervisor only
            env.pop(k, None)
        # its own session: a Ctrl-C on the terminal reaches the supervisor only, which then stops
        # the children in order (page, keeper, recorder)
        self.proc = subprocess.Popen(self.argv, env=env, start_new_session=True)
        self.started = time.monotonic()
        self.state = "starting"

    def view(self) -> dict:
        return {"pid": self.proc.pid if self.proc else None, "state": self.state, "restarts": self.restarts,
                "last_exit": self.last_exit, "up_s": round(time.monotonic() - self.started, 1)
                if self.state == "running" else 0.0}


def _socket_ready(data: Path, cfg, name: str):
    from ..ipc import Client, IpcError, run_dir

    client = Client(run_dir(data, cfg) / f"{name}.sock", name, timeout=2.0)

    def ready() -> bool:
        try:
            client.call("status", actor="supervisor", purpose="start-up check")
            return True
        except IpcError:
            return False

    return ready


def _http_ready(host: str, port: int):
    import socket

    def ready() -> bool:
        try:
            with socket.create_connection((host if host not in ("0.0.0.0", "::") else "127.0.0.1", port), 1.0):
                return True
        except OSError:
            return False

    return ready


def write_supervisor_state(run: Path, children: list[Child]) -> None:
    tmp = run / "supervisor.json.tmp"
    tmp.write_text(json.dumps({"pid": os.getpid(), "time": time.time(),
                               "children": {c.name: c.view() for c in children}}, ensure_ascii=False))
    os.replace(tmp, run / "supervisor.json")


def cmd_run(args) -> int:
    from ..ipc import run_dir
    from ..vault.keys import MARKER

    cfg, _ = load_config(args.config)  # a bad config is refused here, before anything starts (exit 2)
    if not (args.data / MARKER).exists():  # first run: the page's wizard creates the records key
        log.warning("%s has no records key yet: open http://127.0.0.1:%s/ on the box for the first-run set-up "
                    "(or run nokbox init)", args.data, args.port or cfg.web.port)
    args.data.mkdir(mode=0o750, parents=True, exist_ok=True)
    run = run_dir(args.data, cfg)
    run.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", "firmware.cli"]
    common = ["--data", str(args.data)] + (["--config", str(args.config)] if args.config else []) + (
        ["-v"] if args.verbose else [])
    host = args.host or cfg.web.host
    port = args.port or cfg.web.port
    children = [Child("recorder", base + ["recorder"] + common, _socket_ready(args.data, cfg, "recorder")),
                Child("keeper", base + ["keeper"] + common, _socket_ready(args.data, cfg, "keeper"))]
    if not args.no_web:
        children.append(Child("web", base + ["web"] + common + ["--host", host, "--port", str(port)],
                              _http_ready(host, port)))
    stop = threading.Event()
    hup = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: hup.set())
    try:
        for c in children:  # in order: each is answering before the next starts
            c.start()
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not c.ready():
                if c.proc.poll() is not None or stop.is_set() or time.monotonic() > deadline:
                    raise NokboxError(f"the {c.name} process did not start"
                                      + (f" (exit status {c.proc.returncode})" if c.proc.poll() is not None else ""))
                time.sleep(0.1)
            c.state = "running"
            log.info("%s started (pid %d)", c.name, c.proc.pid)
        notify_systemd("READY=1")  # the page process has said where it serves
        write_supervisor_state(run, children)
        _supervise(children, stop, hup, run)
    finally:
        notify_systemd("STOPPING=1")
        codes = _stop_all(children)
        write_supervisor_state(run, children)
    return EXIT_OK if codes.get("recorder") == 0 else EXIT_ERROR


def _supervise(children: list[Child], stop: threading.Event, hup: threading.Event, run: Path) -> None:
    by_name = {c.name: c for c in children}
    while not stop.wait(0.5):
        if hup.is_set():
            hup.clear()
            rec = by_name["recorder"].proc
            if rec is not None and rec.poll() is None:
                rec.send_signal(signal.SIGHUP)
        changed = False
        now = time.monotonic()
        for c in children:
            if c.state == "running" and c.proc.poll() is not None:
                c.last_exit = c.proc.returncode
                if now - c.started >= STABLE_S:
                    c.backoff = BACKOFF_S[0]
                c.state = "restarting"
                c.next_start = now + c.backoff
                log.error("%s process exited (status %s); restarting it in %.0f s", c.name, c.last_exit, c.backoff)
                c.backoff = min(c.backoff * 2.0, BACKOFF_S[1])
                changed = True
            elif c.state == "restarting" and now >= c.next_start:
                c.restarts += 1
                c.start()
                log.warning("%s process restarted (restart %d, pid %d)", c.name, c.restarts, c.proc.pid)
                changed = True
            elif c.state == "starting" and c.proc.poll() is None and c.ready():
                c.state = "running"
                log.info("%s is answering again", c.name)
                changed = True
            elif c.state == "starting" and c.proc.poll() is not None:
                c.state = "running"  # handled as an exit on the next pass
        if by_name["recorder"].state == "running":
            notify_systemd("WATCHDOG=1")
        if changed:
            write_supervisor_state(run, children)


def _stop_all(children: list[Child]) -> dict[str, int | None]:
    codes: dict[str, int | None] = {}
    for c in reversed(children):  # the page first, the recorder last
        p = c.proc
        if p is None:
            continue
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(STOP_TIMEOUT_S[c.name])
            except subprocess.TimeoutExpired:
                log.error("%s did not stop within %.0f s; killing it", c.name, STOP_TIMEOUT_S[c.name])
                p.kill()
                p.wait()
        c.state = "stopped"
        c.last_exit = codes[c.name] = p.returncode
    return codes

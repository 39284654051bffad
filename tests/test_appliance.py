"""The appliance's parts that need no booted system: the three units as systemd itself reads them
(``systemd-analyze verify`` with nothing on stderr, ``security --offline`` under each target),
``nokbox firstboot`` (device key, nginx's certificate), the device key as a systemd credential, and
the page behind the local proxy (client address and https from nginx's headers, no proxy for a LAN
address)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from firmware.config import parse_config
from firmware.errors import ConfigError
from firmware.hal.devicekey import FileDeviceSecret, device_secret

ROOT = Path(__file__).resolve().parent.parent
UNITS = sorted((ROOT / "systemd").glob("*.service"))
# systemd-analyze security exposure targets (0-10; --threshold takes tenths)
TARGETS = {"nokbox-recorder.service": 3.0, "nokbox-keeper.service": 2.0, "nokbox-web.service": 2.0}
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (scripts/setup.sh --test)")


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory):
    """A root for ``systemd-analyze --root``: the host's own unit files (real copies: --root resolves
    absolute links inside the root), ours where the package puts them, and an executable at every
    ExecStart path the units name (the package's venv does not exist on a build machine)."""
    r = tmp_path_factory.mktemp("unitroot")
    shutil.copytree("/lib/systemd/system", r / "lib/systemd/system", symlinks=True)
    for u in UNITS:
        shutil.copy(u, r / "lib/systemd/system" / u.name)
    for exe in ("/opt/nokbox/venv/bin/nokbox", "/bin/kill"):
        p = r / exe.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shutil.which(Path(exe).name) or sys.executable, p)
        p.chmod(0o755)
    return r


def test_there_are_the_three_services_and_the_first_boot():
    assert {u.name for u in UNITS} == {"nokbox-recorder.service", "nokbox-keeper.service", "nokbox-web.service",
                                       "nokbox-firstboot.service"}


@needs_analyze
@pytest.mark.parametrize("unit", [u.name for u in UNITS])
def test_systemd_reads_every_unit_without_a_word_on_stderr(unit_root, unit):
    # verify exits 0 on unknown keys or a bad Type=; only an empty stderr means systemd took every line
    r = subprocess.run([ANALYZE, "verify", f"--root={unit_root}", unit], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr


@needs_analyze
def test_verify_would_catch_a_misspelt_key(unit_root):
    bad = unit_root / "lib/systemd/system/nokbox-bad.service"
    bad.write_text((ROOT / "systemd/nokbox-keeper.service").read_text().replace("PrivateNetwork=", "PrivateNetwrok="))
    try:
        r = subprocess.run([ANALYZE, "verify", f"--root={unit_root}", bad.name], capture_output=True, text=True)
    finally:
        bad.unlink()
    assert "PrivateNetwrok" in r.stderr


@needs_analyze
@pytest.mark.parametrize("unit", sorted(TARGETS))
def test_each_service_is_under_its_exposure_target(unit_root, unit):
    limit = TARGETS[unit]
    r = subprocess.run([ANALYZE, "security", "--offline=yes", f"--root={unit_root}", f"--threshold={int(limit * 10)}",
                        "--no-pager", unit], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", r.stdout)
    print(f"\n{unit}: exposure {m.group(1) if m else '?'} (target <= {limit})")
    print("\n".join(line for line in r.stdout.splitlines() if line.startswith("✗")))
    assert m, r.stdout + r.stderr
    assert r.returncode == 0 and float(m.group(1)) <= limit


def _unit(name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (ROOT / "systemd" / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def test_the_page_has_no_way_to_the_recordings_the_keys_or_the_device_key():
    web = _unit("nokbox-web.service")
    groups = " ".join(web["SupplementaryGroups"]).split()
    assert "nokbox-vault" not in groups and web["User"] == ["nokbox-web"]
    assert "LoadCredential" not in web
    hidden = " ".join(web["InaccessiblePaths"])
    for p in ("/var/lib/nokbox/keys", "/var/lib/nokbox/calls", "/etc/nokbox/device.key"):
        assert p in hidden
    tmpfiles = (ROOT / "systemd/tmpfiles.d/nokbox.conf").read_text()
    for d in ("calls", "keys"):  # file permissions too: only group nokbox-vault, no entry for nokbox
        line = next(x for x in tmpfiles.splitlines() if x.startswith(f"a /var/lib/nokbox/{d} "))
        assert "group:nokbox-vault:rwx" in line and "group:nokbox:" not in line
    sysusers = (ROOT / "systemd/sysusers.d/nokbox.conf").read_text()
    assert not re.search(r"^m nokbox-web\s+nokbox-vault", sysusers, re.M)


def test_the_keeper_has_no_network_and_the_recorder_pings_the_watchdog():
    keeper = _unit("nokbox-keeper.service")
    assert keeper["PrivateNetwork"] == ["yes"] and keeper["RestrictAddressFamilies"] == ["AF_UNIX"]
    rec = _unit("nokbox-recorder.service")
    assert rec["Type"] == ["notify"] and rec["Restart"] == ["always"] and rec["WatchdogSec"]
    assert any("check-config" in x for x in rec["ExecStartPre"])
    for name in ("nokbox-recorder.service", "nokbox-keeper.service", "nokbox-web.service"):
        u = _unit(name)
        assert u["UMask"] == ["0077"] and u["ProtectSystem"] == ["strict"] and u["CapabilityBoundingSet"] == [""]
        assert u["User"] != ["root"] and u["NoNewPrivileges"] == ["yes"]


# -- nokbox firstboot ------------------------------------------------------------------------
def test_firstboot_makes_the_device_key_and_nginxs_certificate_once(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    key = tmp_path / "etc/device.key"
    cfgf = tmp_path / "nokbox.toml"
    cfgf.write_text(f'[vault]\ndevice_key_file = "{key}"\n')
    tls = tmp_path / "etc/tls"
    cmd = [sys.executable, "-m", "firmware.cli", "firstboot", "--data", str(tmp_path / "data"), "--config", str(cfgf),
           "--tls-dir", str(tls)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    fp = re.search(r"fingerprint: ([0-9A-F:]{95})", r.stdout).group(1)
    for p in (key, tls / "key.pem", tls / "cert.pem"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert len(key.read_bytes()) == 32
    cert = x509.load_pem_x509_certificate((tls / "cert.pem").read_bytes())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and cert.public_key().curve.name == "secp256r1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "nokbox.local" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    # a Pi without an RTC may boot a day behind: the certificate must already be valid then
    assert cert.not_valid_before_utc <= dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=23)
    # a second boot keeps both and prints the same fingerprint
    secret = key.read_bytes()
    r2 = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r2.returncode == 0 and fp in r2.stdout and key.read_bytes() == secret


def test_firstboot_never_replaces_a_lost_device_key_of_existing_data(tmp_path):
    """An SD card restored without its device key, on data made with it: firstboot says so and makes
    no new key (a new one would silently break crash recovery and the masked numbers)."""
    from .conftest import init_data_dir

    key = tmp_path / "etc/device.key"
    cfgf = tmp_path / "nokbox.toml"
    cfgf.write_text(f'[vault]\ndevice_key_file = "{key}"\n')
    data = tmp_path / "data"
    init_data_dir(data, tmp_path / "ident.txt")
    cmd = [sys.executable, "-m", "firmware.cli", "firstboot", "--data", str(data), "--config", str(cfgf),
           "--tls-dir", str(tmp_path / "etc/tls")]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and "restore it from its backup" in r.stdout, (r.stdout, r.stderr)
    assert not key.exists() and (tmp_path / "etc/tls/cert.pem").exists()  # the page still gets its certificate


def test_the_device_key_comes_from_the_systemd_credential_when_there_is_one(tmp_path, monkeypatch):
    cred = tmp_path / "credentials"
    cred.mkdir()
    (cred / "device.key").write_bytes(b"\x07" * 32)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(cred))
    dev = device_secret("file", tmp_path / "not-readable/device.key")
    assert isinstance(dev, FileDeviceSecret) and dev.read() == b"\x07" * 32
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "empty"))
    assert device_secret("file", tmp_path / "k").path == tmp_path / "k"


def test_a_box_made_under_a_credential_names_the_key_file_not_the_copy(tmp_path, monkeypatch):
    """``nokbox init`` run as the keeper (a credential of its own run, /run/credentials/<unit>/) records
    the key file's own path in nokbox.json; every later service reads its own credential."""
    import json

    from firmware.vault.keys import device_for, init_data_dir

    key = tmp_path / "etc/device.key"
    key.parent.mkdir()
    key.write_bytes(b"\x09" * 32)
    key.chmod(0o600)
    run1, run2 = tmp_path / "cred-init", tmp_path / "cred-recorder"
    for d in (run1, run2):
        d.mkdir()
        (d / "device.key").write_bytes(key.read_bytes())
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(run1))
    data = tmp_path / "data"
    init_data_dir(data, device=device_secret("file", key))
    marker = json.loads((data / "nokbox.json").read_text())["device"]
    assert marker == {"backend": "file", "path": str(key.resolve())}
    (run1 / "device.key").unlink()  # that run is over: its credential is gone
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(run2))
    dev = device_for(data)
    assert dev.path == run2 / "device.key" and dev.read() == b"\x09" * 32
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    assert device_for(data).path == key.resolve()  # root's CLI reads the file itself


def test_init_on_the_appliance_leaves_the_tmpfiles_modes_alone(tmp_path, monkeypatch):
    """On the appliance DATA is root's with default ACLs (tmpfiles.d): ``nokbox init`` as the keeper
    must not chmod it (it cannot) nor DATA/keys (0700 would empty its ACL mask), and the folders it
    makes are group-wide so the ACL's group entry applies (the recorder reads keys/epochs)."""
    from firmware.vault.keys import init_data_dir

    data = tmp_path / "data"
    (data / "keys").mkdir(parents=True)
    data.chmod(0o770)
    (data / "keys").chmod(0o770)
    # DATA/keys as tmpfiles.d makes it: a default ACL for the vault group (here the test's own group)
    acl = f"group:{os.getgid()}:rwx,default:user::rwx,default:group::---,default:group:{os.getgid()}:rwx," \
          "default:mask::rwx,default:other::---"
    subprocess.run(["setfacl", "-m", acl, str(data / "keys")], check=True)
    monkeypatch.setenv("NOKBOX_SHARED_DATA", "1")
    old = os.umask(0o077)  # the units' UMask=0077
    try:
        init_data_dir(data, device=device_secret("file", tmp_path / "device.key"))
    finally:
        os.umask(old)
    assert data.stat().st_mode & 0o777 == 0o770 and (data / "keys").stat().st_mode & 0o777 == 0o770
    facl = subprocess.run(["getfacl", "-ncp", str(data / "keys/epochs")], capture_output=True, text=True).stdout
    assert "mask::rwx" in facl and f"group:{os.getgid()}:rwx" in facl, facl  # the group's entry is effective
    facl = subprocess.run(["getfacl", "-ncp", str(data / "keys")], capture_output=True, text=True).stdout
    assert "mask::rwx" in facl, facl  # DATA/keys' ACL mask untouched
    monkeypatch.delenv("NOKBOX_SHARED_DATA")
    other = tmp_path / "dev"
    init_data_dir(other, device=device_secret("file", tmp_path / "device2.key"))
    assert other.stat().st_mode & 0o777 == 0o700 and (other / "keys/epochs").stat().st_mode & 0o077 == 0


# -- the page behind nginx -------------------------------------------------------------------
def test_behind_the_proxy_the_client_address_and_https_come_from_nginx(box):
    """Through real waitress, as nginx speaks to it: the LAN client's address and https come from
    X-Forwarded-For/-Proto, so the first-run wizard refuses it; without web.behind_proxy the same
    headers are ignored (anyone could send them)."""
    import http.client

    from firmware.recording.recorder import Recorder
    from web import serve

    from .authutil import FAST_AUTH, make_people
    from .conftest import init_data_dir

    data, _ = box
    hdr = {"X-Forwarded-For": "192.168.10.23", "X-Forwarded-Proto": "https"}

    def get(port, path, headers):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", path, headers=headers)
        r = c.getresponse()
        r.read()
        c.close()
        return r

    for behind in (True, False):
        cfg = parse_config({"auth": FAST_AUTH, "audio": {"channels": 1}, "web": {"behind_proxy": behind}})
        fresh = data.parent / f"fresh-{behind}"
        init_data_dir(fresh, data.parent / f"fresh-ident-{behind}.txt")
        srv = serve(Recorder(cfg, fresh), "127.0.0.1", 0, data_dir=fresh, cfg=cfg)
        try:
            lan, own = get(srv.port, "/setup", hdr).status, get(srv.port, "/setup", {}).status
        finally:
            srv.close()
        # behind nginx a LAN client is the LAN; the box itself (no headers) is still the box
        assert (lan, own) == ((403, 200) if behind else (200, 200)), (behind, lan, own)
    cfg = parse_config({"auth": FAST_AUTH, "audio": {"channels": 1}, "web": {"behind_proxy": True}})
    make_people(data, cfg)
    srv = serve(Recorder(cfg, data), "127.0.0.1", 0, data_dir=data, cfg=cfg)
    try:
        r = get(srv.port, "/login", hdr)
    finally:
        srv.close()
    assert r.status == 200
    # the session's CSRF cookie is Secure: the browser spoke https to nginx
    assert any("Secure" in v for k, v in r.getheaders() if k.lower() == "set-cookie")


def test_behind_proxy_only_on_a_loopback_address():
    with pytest.raises(ConfigError, match="web.behind_proxy"):
        parse_config({"web": {"host": "192.168.0.10", "behind_proxy": True}})
    assert parse_config({"web": {"behind_proxy": True}}).web.behind_proxy


# -- the data the three services share -------------------------------------------------------
def test_shared_files_get_group_access_only_under_the_units(tmp_path, monkeypatch):
    from firmware.audit import AuditLog
    from firmware.index import CallIndex

    def modes(data: Path) -> dict[str, int]:
        files = [data / "audit", *sorted((data / "audit").iterdir()), data / "index.sqlite"]
        return {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}

    # one user (nokbox run, tests): owner-only, as before
    AuditLog(tmp_path / "a").append("test.event", actor="t", role="-", obj="-", outcome="ok")
    CallIndex(tmp_path / "a" / "index.sqlite").close()
    alone = modes(tmp_path / "a")
    assert all(v & 0o077 == 0 for k, v in alone.items() if k != "index.sqlite"), alone
    # the appliance (NOKBOX_SHARED_DATA=1): the group may read and write what all three append to,
    # including files this user made earlier as owner-only
    monkeypatch.setenv("NOKBOX_SHARED_DATA", "1")
    for data in (tmp_path / "a", tmp_path / "b"):
        AuditLog(data).append("test.event", actor="t", role="-", obj="-", outcome="ok")
        CallIndex(data / "index.sqlite").close()
        m = modes(data)
        assert m["audit"] == 0o770 and m["index.sqlite"] == 0o660, m
        assert all(v & 0o060 == 0o060 and v & 0o007 == 0 for v in m.values()), m


def test_a_tpm_box_gets_its_blob_as_a_credential_through_firstboots_drop_ins(tmp_path, monkeypatch, unit_root):
    """device_secret = "tpm": firstboot writes a drop-in for the recorder and the keeper that replaces
    the key file's credential by the sealed blob's (systemd-analyze verify reads the result without a
    word), the services then read the blob from their credential directory, and the drop-ins go again
    when the box is no longer a TPM box."""
    from firmware.cli.processes import TPM_DROPIN, _tpm_dropins
    from firmware.hal.devicekey import TpmDeviceSecret

    sysdir = tmp_path / "etc/systemd/system"
    monkeypatch.setenv("NOKBOX_SYSTEMD_DIR", str(sysdir))
    tpm = parse_config({"vault": {"device_secret": "tpm", "tpm_blob": "/etc/nokbox/device.tpm"}})
    _tpm_dropins(tmp_path / "data", tpm)
    for unit in ("nokbox-recorder.service", "nokbox-keeper.service"):
        text = (sysdir / f"{unit}.d" / TPM_DROPIN).read_text()
        assert "LoadCredential=\nLoadCredential=device.tpm:/etc/nokbox/device.tpm\n" in text
        # the unit with its drop-in, as systemd reads it (the module's unit root, drop-in added)
        dropins = unit_root / "etc/systemd/system" / f"{unit}.d"
        shutil.copytree(sysdir / f"{unit}.d", dropins, dirs_exist_ok=True)
        try:
            r = subprocess.run(["systemd-analyze", "verify", f"--root={unit_root}", unit], capture_output=True,
                               text=True)
        finally:
            shutil.rmtree(dropins)
        assert r.stderr.strip() == "", r.stderr
    cred = tmp_path / "cred"
    cred.mkdir()
    (cred / "device.tpm").write_bytes(b"blob")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(cred))
    dev = device_secret("tpm", "", tpm_blob="/etc/nokbox/device.tpm", tpm_tcti="swtpm:host=127.0.0.1,port=1")
    assert isinstance(dev, TpmDeviceSecret) and dev.path == cred / "device.tpm"
    assert dev.origin == Path("/etc/nokbox/device.tpm")  # what nokbox.json records
    _tpm_dropins(tmp_path / "data", parse_config({}))
    assert not list(sysdir.rglob(TPM_DROPIN))

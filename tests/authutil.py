"""Helpers for tests that sign in: accounts with known passwords, and an HTTP client with cookies."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from firmware.people.accounts import ROLES, Accounts
from firmware.audit import AuditLog
from firmware.config import AuthConfig, parse_config

# The OWASP/ASVS floor for Argon2id (19 MiB, 2 passes, 1 lane): real hashing, quick enough for tests.
FAST_AUTH = {"argon2_memory_kib": 19456, "argon2_time_cost": 2, "argon2_parallelism": 1}
PASSWORD = {r: f"Hangang-bridge-at-night-{i}{i}{i}" for i, r in enumerate(ROLES)}


def fast_cfg(extra: dict | None = None):
    return parse_config({"auth": FAST_AUTH, **(extra or {})})


def make_people(data: Path, cfg=None, clock=None) -> Accounts:
    """The first administrator ``admin`` plus one account per role, named after the role."""
    cfg = cfg or fast_cfg()
    acc = Accounts(data, cfg.auth, AuditLog(data, clock=clock, every=cfg.audit.seal_every), clock=clock)
    admin, _ = acc.setup_first("admin", PASSWORD["admin"], ["admin"])
    for r in ROLES:
        if r != "admin":
            acc.create(r, PASSWORD[r], [r], by=admin)
    return acc


def scripted_setup(data: Path, cfg: Path, pw: Path, name: str, role: str, password: str):
    """First run as a scripted install does it: `nokbox user setup` from a password file."""
    from .conftest import run_cli

    pw.write_text(password + "\n")
    r = run_cli("user", "setup", "--data", str(data), "--config", str(cfg), "--name", name, "--role", role,
                "--password-file", str(pw))
    assert r.returncode == 0, r.stderr
    return r


def fast_auth() -> AuthConfig:
    return AuthConfig(**FAST_AUTH)


class Client:
    """A tiny browser: keeps cookies, never follows redirects, finds the CSRF token in forms."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.jar = http.cookiejar.CookieJar()

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a, **kw):
                return None

        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), NoRedirect)
        self.csrf = ""

    def request(self, method: str, path: str, data: dict | None = None, headers: dict | None = None):
        """(status, headers, body text)."""
        body = None
        if method == "POST":
            fields = {"csrf": self.csrf, **(data or {})}
            body = urllib.parse.urlencode(fields, doseq=True).encode()
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})
        try:
            with self.opener.open(req, timeout=30) as r:
                status, hdrs, text = r.status, r.headers, r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            with e:
                status, hdrs, text = e.code, e.headers, e.read().decode("utf-8", "replace")
        m = re.search(r'name="csrf" value="([^"]+)"', text)
        if m:
            self.csrf = m.group(1)
        return status, hdrs, text

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, data: dict | None = None):
        return self.request("POST", path, data)

    def sign_in(self, name: str, password: str) -> int:
        self.get("/login")
        status, hdrs, _ = self.post("/login", {"name": name, "password": password})
        if status == 302:
            self.get(urllib.parse.urlparse(hdrs["Location"]).path or "/")
        return status


APPROVER_PIN = "24681357"


def recorded_vault(tmp_path: Path, cfg, device=None):
    """A box whose approver ``approver`` has a PIN slot (APPROVER_PIN), two calls with dialled numbers
    recorded by the real pipeline (one per line, in line order), and one account per role.
    ``device``: the device secret (default a key file beside the data; a TpmDeviceSecret for the TPM).
    Returns (data, identity file, calls as dicts, {call id: dialled number})."""
    from firmware.hal.audio import ArraySource
    from firmware.index import CallIndex
    from firmware.recording.recorder import Recorder
    from firmware.vault.keys import init_data_dir

    from .conftest import place_calls

    data = tmp_path / "data"
    ident = tmp_path / "records-identity.txt"
    init_data_dir(data, ident, device, passphrase="correct-horse-battery-staple-42", pin=APPROVER_PIN,
                  approver="approver", recovery_log_n=10, pin_log_n=10)
    audio, labels = place_calls(8000, 50.0, [[(3.0, 12.0)], [(6.0, 10.0)]])
    rec = Recorder(cfg, data, source=ArraySource(audio, 8000, 160))
    rec.start()
    assert rec.wait(60)
    make_people(data, cfg)
    idx = CallIndex(data / "index.sqlite")
    calls = sorted((dict(r) for r in idx.calls()), key=lambda c: c["line"])
    idx.close()
    assert len(calls) == 2 and all(c["state"] == "finished" for c in calls)
    return data, ident, calls, {c["id"]: line[0][4] for c, line in zip(calls, labels)}

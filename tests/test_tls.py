"""HTTPS on the LAN: the box's own certificate (made once, owner-only, its fingerprint on the console
and the page), the plain-HTTP port that only redirects, and the __Host- session cookie over it."""

from __future__ import annotations

import hashlib
import http.client
import re
import ssl
import stat

import pytest

from firmware.config import parse_config
from firmware.errors import ConfigError
from firmware.recording.recorder import Recorder
from web import serve

from .authutil import FAST_AUTH, PASSWORD, make_people


@pytest.fixture
def tls_box(box):
    data, _ = box
    cfg = parse_config({"auth": FAST_AUTH, "audio": {"channels": 1}, "web": {"tls": "on"}})
    make_people(data, cfg)
    return Recorder(cfg, data), data


def _ctx(data) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(data / "tls" / "cert.pem"))
    return ctx


def test_https_with_its_own_certificate_and_a_redirect(tls_box):
    rec, data = tls_box
    srv = serve(rec, "127.0.0.1", 0, https_port=0)
    try:
        for name in ("cert.pem", "key.pem"):
            assert stat.S_IMODE((data / "tls" / name).stat().st_mode) == 0o600
        # the certificate the client sees is the one whose fingerprint the box prints
        c = http.client.HTTPSConnection("127.0.0.1", srv.https_port, context=_ctx(data))
        c.request("GET", "/login")
        r = c.getresponse()
        r.read()
        der = c.sock.getpeercert(binary_form=True)
        assert ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest()) == srv.fingerprint
        assert r.status == 200
        # plain HTTP only redirects, keeping the path and query, and sets no cookie
        h = http.client.HTTPConnection("127.0.0.1", srv.port)
        h.request("GET", "/calls?day=2026-12-01", headers={"Host": f"127.0.0.1:{srv.port}"})
        r = h.getresponse()
        r.read()
        assert r.status == 308
        assert r.getheader("Location") == f"https://127.0.0.1:{srv.https_port}/calls?day=2026-12-01"
        assert r.getheader("Set-Cookie") is None
        # signing in over HTTPS gives the __Host- cookie, Secure
        c.request("GET", "/login")
        r = c.getresponse()
        body = r.read().decode()
        pre = re.search(r"nokbox_csrf=([^;]+)", r.getheader("Set-Cookie")).group(1)
        token = re.search(r'name="csrf" value="([^"]+)"', body).group(1)
        form = f"name=technician&password={PASSWORD['technician']}&csrf={token}"
        c.request("POST", "/login", body=form, headers={"Content-Type": "application/x-www-form-urlencoded",
                                                         "Cookie": f"nokbox_csrf={pre}"})
        r = c.getresponse()
        r.read()
        assert r.status == 302
        cookie = r.getheader("Set-Cookie")
        assert cookie.startswith("__Host-nokbox_session=") and "Secure" in cookie and "HttpOnly" in cookie
        sess = cookie.split(";")[0]
        c.request("GET", "/", headers={"Cookie": sess})
        r = c.getresponse()
        page = r.read().decode()
        assert r.status == 200 and srv.fingerprint in page  # the page shows the fingerprint too
        first = srv.fingerprint
        c.close()
        h.close()
    finally:
        srv.close()
    srv = serve(rec, "127.0.0.1", 0, https_port=0)  # a restart keeps the same certificate
    try:
        assert srv.fingerprint == first
    finally:
        srv.close()


def test_the_lan_cannot_be_served_without_tls():
    with pytest.raises(ConfigError, match="web.tls"):
        parse_config({"web": {"host": "192.168.0.10", "tls": "off"}})
    assert parse_config({"web": {"host": "192.168.0.10"}}).web.https
    assert not parse_config({}).web.https

"""HTTPS for the page on the LAN: the box's own certificate and the two listeners.

At first start on the LAN the page makes a self-signed ECDSA P-256 certificate (``cryptography``)
for the box's names and addresses, keeps it in DATA/tls/ (owner-only; the key never leaves the box
and is never in the config or the image) and prints its SHA-256 fingerprint on the console; the
page shows it too, so a technician can compare what the browser shows before trusting it. HTTPS is
served by cheroot (its builtin ``ssl`` adapter: waitress has no TLS); the plain-HTTP port answers
only with a permanent redirect to HTTPS, never with a page or a cookie.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import os
import socket
import threading
from pathlib import Path

log = logging.getLogger(__name__)
VALID_DAYS = 3650  # an appliance's certificate: replaced with the box (or by deleting DATA/tls)


def tls_dir(data_dir) -> Path:
    return Path(data_dir) / "tls"


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate's DER, as browsers show it (AB:CD:…)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(Encoding.DER)
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def current_fingerprint(data_dir) -> str | None:
    p = tls_dir(data_dir) / "cert.pem"
    return fingerprint(p.read_bytes()) if p.exists() else None


def _names(host: str) -> tuple[list[str], list[str]]:
    name = socket.gethostname()
    dns = sorted({name, f"{name.split('.')[0]}.local", "nokbox.local", "localhost"})
    ips = {"127.0.0.1"}
    try:
        ipaddress.ip_address(host)
        if host not in ("0.0.0.0", "::"):
            ips.add(host)
    except ValueError:
        dns.append(host)
    if host in ("0.0.0.0", "::"):
        try:
            import psutil

            for addrs in psutil.net_if_addrs().values():
                for a in addrs:
                    if a.family in (socket.AF_INET, socket.AF_INET6):
                        ips.add(a.address.split("%")[0])
        except Exception:  # noqa: BLE001 - without psutil the names above still serve
            pass
    return dns, sorted(ips)


def ensure_certificate(data_dir, host: str, directory=None) -> tuple[Path, Path, str]:
    """(certificate, key, fingerprint): made once, then reused at every start. In ``directory``
    (default DATA/tls; the appliance's first boot: /etc/nokbox/tls for nginx). The names are the
    host name, ``<host>.local``, ``nokbox.local``, localhost and the box's addresses (every
    interface's when ``host`` is a wildcard); valid from a day back, because a Raspberry Pi has no
    real-time clock and may boot with a clock behind until chrony corrects it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = Path(directory) if directory is not None else tls_dir(data_dir)
    cert_p, key_p = d / "cert.pem", d / "key.pem"
    if cert_p.exists() and key_p.exists():
        return cert_p, key_p, fingerprint(cert_p.read_bytes())
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    dns, ips = _names(host)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"nokbox {socket.gethostname()}"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nokbox")])
    now = dt.datetime.now(dt.timezone.utc)
    san = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    for path, blob in ((key_p, pem_key), (cert_p, cert.public_bytes(serialization.Encoding.PEM))):
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    fp = fingerprint(cert_p.read_bytes())
    log.warning("made the page's HTTPS certificate; its SHA-256 fingerprint is %s", fp)
    return cert_p, key_p, fp


def _redirect_app(https_port: int):
    def app(environ, start_response):
        host = (environ.get("HTTP_HOST") or environ.get("SERVER_NAME") or "localhost")
        if host.startswith("["):
            host = host[: host.index("]") + 1]
        else:
            host = host.split(":")[0]
        path = environ.get("PATH_INFO", "/") or "/"
        qs = environ.get("QUERY_STRING")
        target = f"https://{host}:{https_port}{path}" + (f"?{qs}" if qs else "")
        body = "HTTPS로 이동합니다 · moved to HTTPS\n".encode()
        start_response("308 Permanent Redirect", [("Location", target), ("Content-Type", "text/plain; charset=utf-8"),
                                                   ("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
        return [body]

    return app


class TlsServer:
    """The page over HTTPS (cheroot) plus a plain-HTTP listener that only redirects (waitress)."""

    def __init__(self, app, host: str, port: int, https_port: int, data_dir) -> None:
        from cheroot import wsgi
        from cheroot.ssl.builtin import BuiltinSSLAdapter
        from waitress.server import create_server

        from .auth import largest_body

        self.app = app
        cert, key, self.fingerprint = ensure_certificate(data_dir, host)
        self._https = wsgi.Server((host, https_port), app, numthreads=8, server_name="nokbox")
        self._https.max_request_body_size = largest_body(app)  # as waitress's limit on plain HTTP
        adapter = BuiltinSSLAdapter(str(cert), str(key))
        import ssl

        adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._https.ssl_adapter = adapter
        self._https.prepare()
        self.https_port = self._https.bind_addr[1]
        self._http = create_server(_redirect_app(self.https_port), host=host, port=port, threads=1, ident="nokbox")
        self.port = self._http.effective_port
        self._threads = [threading.Thread(target=self._https.serve, name="web-https", daemon=True),
                         threading.Thread(target=self._http.run, name="web-redirect", daemon=True)]
        for t in self._threads:
            t.start()

    def close(self) -> None:
        if getattr(self, "watch_stop", None) is not None:
            self.watch_stop.set()
        self._https.stop()
        from waitress import wasyncore

        srv = self._http
        srv.trigger.pull_trigger(lambda: wasyncore.close_all(srv._map, ignore_all=True))
        for t in self._threads:
            t.join(5.0)
        srv.task_dispatcher.shutdown()

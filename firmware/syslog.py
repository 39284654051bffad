"""Forward audit checkpoints to a remote syslog server: RFC 5424 messages over TLS (RFC 5425 framing).

A copy of every checkpoint off the box is what makes a later truncation or rewrite visible
even to someone who never saw the printed review. Failures are logged, never raised into the
caller (an append or a review must not fail because the network is down).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import ssl

from .config import AuditConfig

log = logging.getLogger(__name__)

FACILITY_LOG_AUDIT = 13
SEVERITY_NOTICE = 5


def rfc5424(msg: str, *, msgid: str = "checkpoint", hostname: str | None = None, app: str = "nokbox",
            when: dt.datetime | None = None) -> bytes:
    """One RFC 5424 message (PRI, version 1, timestamp, host, app, procid, msgid, no SD, UTF-8 MSG)."""
    pri = FACILITY_LOG_AUDIT * 8 + SEVERITY_NOTICE
    ts = (when or dt.datetime.now(dt.timezone.utc)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    host = (hostname or socket.gethostname() or "-")[:255]
    head = f"<{pri}>1 {ts} {host} {app} {os.getpid()} {msgid} - "
    return head.encode("ascii", "replace") + b"\xef\xbb\xbf" + msg.encode("utf-8")


def frame(message: bytes) -> bytes:
    """RFC 5425 octet counting: ``LEN SP MSG``."""
    return str(len(message)).encode() + b" " + message


class SyslogForwarder:
    """Sends messages to one TLS syslog server; one short connection per batch."""

    def __init__(self, host: str, port: int = 6514, cafile: str | None = None, timeout: float = 5.0) -> None:
        self.host = host
        self.port = port
        self.ctx = ssl.create_default_context(cafile=cafile)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self.timeout = timeout
        self.sent = 0
        self.failed = 0

    @classmethod
    def from_config(cls, cfg: AuditConfig) -> "SyslogForwarder | None":
        if not cfg.syslog_host:
            return None
        return cls(cfg.syslog_host, cfg.syslog_port, cfg.syslog_ca)

    def send(self, messages: list[bytes]) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as raw:
                with self.ctx.wrap_socket(raw, server_hostname=self.host) as tls:
                    tls.sendall(b"".join(frame(m) for m in messages))
            self.sent += len(messages)
            return True
        except (OSError, ssl.SSLError) as exc:
            self.failed += len(messages)
            log.error("syslog forwarding to %s:%d failed: %s", self.host, self.port, exc)
            return False

    def __call__(self, checkpoint) -> None:
        """The AuditLog ``on_seal`` hook: forward one signed checkpoint line."""
        self.send([rfc5424(checkpoint.line())])

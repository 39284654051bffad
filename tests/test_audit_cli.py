"""`nokbox audit verify/export/checkpoint` as the auditor runs them, and checkpoint forwarding to a
remote syslog over TLS (a real TLS listener on 127.0.0.1 started by the test)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import socket
import ssl
import threading

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from firmware.audit import AuditLog, Checkpoint
from firmware.people.review import KST
from firmware.syslog import SyslogForwarder

from .authutil import PASSWORD, scripted_setup
from .conftest import run_cli

FAST_TOML = "[auth]\nargon2_memory_kib = 19456\nargon2_time_cost = 2\nargon2_parallelism = 1\n[audit]\nseal_every = 4\n"


def _setup(box, tmp_path):
    data, _ = box
    cfg = tmp_path / "nokbox.toml"
    cfg.write_text(FAST_TOML)
    pw = tmp_path / "pw"
    r = scripted_setup(data, cfg, pw, "lee", "auditor", PASSWORD["admin"])
    key = re.search(r"^(nokbox-audit-v2-\S+)$", r.stdout, re.M).group(1)
    return data, cfg, pw, key


def test_verify_proves_intact_then_names_the_bad_entry(box, tmp_path):
    data, cfg, pw, key = _setup(box, tmp_path)
    log = AuditLog(data)
    for i in range(9):
        log.append("request.search", actor="kim", role="officer", obj=f"request {i}", detail={"request": i})
    signin = ["--data", str(data), "--config", str(cfg), "--as", "lee", "--as-password-file", str(pw)]
    r = run_cli("audit", "checkpoint", *signin)
    assert r.returncode == 0
    cp = Checkpoint.parse(r.stdout)
    r = run_cli("audit", "verify", "--key", key, "--checkpoint", cp.line(), *signin)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "audit log intact" in r.stdout and "seals verified with the verification key" in r.stdout
    assert "1 checkpoint(s) matched" in r.stdout
    # an insider edits one search to hide it
    lines = log.path.read_text().splitlines()
    i = [n for n, ln in enumerate(lines) if '"request.search"' in ln][4]
    e = json.loads(lines[i])
    e["object"] = "nothing to see"
    lines[i] = json.dumps(e, ensure_ascii=False)
    log.path.write_text("\n".join(lines) + "\n")
    r = run_cli("audit", "verify", "--key", key, *signin)
    assert r.returncode == 5
    assert f"AUDIT LOG NOT INTACT: entry {e['seq']}: content does not match" in r.stdout
    # the failed verification is itself logged … after the broken entry, so the chain shows it
    assert any(x["action"] == "audit.verify" and x["outcome"] == "failed" for x in log.entries())
    # an offline copy (just DATA/audit, no accounts) verifies without sign-in
    copy = tmp_path / "copy"
    (copy / "audit").mkdir(parents=True)
    for p in (data / "audit").iterdir():
        if p.is_file():
            (copy / "audit" / p.name).write_bytes(p.read_bytes())
    r = run_cli("audit", "verify", "--data", str(copy), "--key", key)
    assert r.returncode == 5 and f"entry {e['seq']}:" in r.stdout


def test_export_csv_with_manifest_and_checkpoint(box, tmp_path):
    data, cfg, pw, key = _setup(box, tmp_path)
    log = AuditLog(data)
    log.append("request.search", actor="kim", role="officer", obj="request 1", reason="caller 010-9876-5432")
    today = dt.datetime.now(KST).date().isoformat()
    out = tmp_path / "out"
    r = run_cli("audit", "export", "--from", today, "--to", today, "--out", str(out), "--data", str(data),
                "--config", str(cfg), "--as", "lee", "--as-password-file", str(pw))
    assert r.returncode == 0, r.stderr
    csv_text = (out / f"nokbox-audit-{today}-{today}.csv").read_bytes().decode()
    manifest = (out / f"nokbox-audit-{today}-{today}.manifest.txt").read_text()
    assert csv_text.splitlines()[0].startswith("seq,time_utc,time_local,mono,boot,action,actor,role,object")
    assert "request 1" in csv_text and "9876-5432" not in csv_text and "010-****-5432" in csv_text
    import hashlib

    assert hashlib.sha256(csv_text.encode()).hexdigest() in manifest
    cp_line = next(ln for ln in manifest.splitlines() if ln.startswith("NOKBOX-CHECKPOINT"))
    assert AuditLog(data).verify_report(key=key, checkpoints=[cp_line]).checkpoints_checked == 1
    assert any(e["action"] == "audit.export" and e["actor"] == "lee" for e in log.entries())


def test_verify_tells_a_typo_a_wrong_key_and_a_forged_log_apart(box, tmp_path):
    """`nokbox audit verify --key`: 0 intact, 2 a mistyped key, 6 another log's key, 5 forged."""
    data, cfg, pw, key = _setup(box, tmp_path)
    assert re.fullmatch(r"nokbox-audit-v2(-[02-9ac-hj-np-z]{5}){11}-[02-9ac-hj-np-z]{6}", key), key
    log = AuditLog(data)
    for i in range(6):
        log.append("request.search", actor="kim", role="officer", obj=f"request {i}")
    signin = ["--data", str(data), "--config", str(cfg), "--as", "lee", "--as-password-file", str(pw)]
    r = run_cli("audit", "verify", "--key", key, *signin)
    assert r.returncode == 0 and "audit log intact" in r.stdout, r.stdout + r.stderr
    # a typo: two neighbours swapped in the fourth group, read from a file as the auditor keeps it
    g = key.split("-")
    g[6] = g[6][1] + g[6][0] + g[6][2:] if g[6][0] != g[6][1] else g[6][:4] + ("q" if g[6][4] != "q" else "p")
    typo = tmp_path / "key.txt"
    typo.write_text("-".join(g) + "\n")
    r = run_cli("audit", "verify", "--key-file", str(typo), *signin)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "검증 키 오타" in r.stderr and "mistyped" in r.stderr and "NOT INTACT" not in r.stdout + r.stderr
    # another box's key: well-formed, but not this log's
    other = AuditLog(tmp_path / "other")
    other.append("x")
    r = run_cli("audit", "verify", "--key", other.take_verification_key(), *signin)
    assert r.returncode == 6, r.stdout + r.stderr
    assert "WRONG KEY" in r.stdout and "이 기록의 키가 아닙니다" in r.stdout and "NOT INTACT" not in r.stdout
    # the right key on a forged log (an insider re-hashed the chain after editing a search)
    from .test_audit import _lines, _rechain, _write

    es = _lines(log)
    i = next(n for n, e in enumerate(es) if e["action"] == "request.search")
    es[i]["object"] = "nothing to see"
    _write(log, _rechain(es, i))
    r = run_cli("audit", "verify", "--key", key, *signin)
    assert r.returncode == 5 and "감사 기록 위조·손상 · AUDIT LOG NOT INTACT: entry" in r.stdout
    assert "MAC does not verify" in r.stdout
    # the same three answers offline, on a copy of DATA/audit without sign-in
    copy = tmp_path / "copy"
    (copy / "audit").mkdir(parents=True)
    for p in (data / "audit").iterdir():
        if p.is_file():
            (copy / "audit" / p.name).write_bytes(p.read_bytes())
    assert run_cli("audit", "verify", "--data", str(copy), "--key-file", str(typo)).returncode == 2
    assert run_cli("audit", "verify", "--data", str(copy), "--key", key).returncode == 5
    # each check was logged by what came of it, never with the key's text
    outcomes = [e["outcome"] for e in AuditLog(data).entries() if e["action"] == "audit.verify"]
    assert outcomes[:4] == ["ok", "mistyped", "wrong_key", "failed"]
    text = "".join(p.read_text(errors="replace") for p in data.rglob("*") if p.is_file())
    body = key[len("nokbox-audit-v2-"):]
    assert key not in text and body.replace("-", "") not in text and "-".join(g) not in text


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "syslog.test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_pem = tmp_path / "syslog.pem"
    key_pem = tmp_path / "syslog.key"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return cert_pem, key_pem


class TlsSyslog:
    """A TLS syslog listener on 127.0.0.1 that collects RFC 5425 frames."""

    def __init__(self, cert, key):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(20)
        self.port = self.sock.getsockname()[1]
        self.frames: list[bytes] = []
        self.got = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        try:
            raw, _ = self.sock.accept()
        except OSError:
            return
        with self.ctx.wrap_socket(raw, server_side=True) as conn:
            conn.settimeout(20)
            buf = b""
            while chunk := conn.recv(65536):
                buf += chunk
        while buf:
            length, _, rest = buf.partition(b" ")
            n = int(length)
            self.frames.append(rest[:n])
            buf = rest[n:]
        self.got.set()

    def close(self):
        self.sock.close()
        self.thread.join(5)


def test_seal_checkpoints_go_to_a_tls_syslog(tmp_path):
    cert, key = _self_signed(tmp_path)
    server = TlsSyslog(cert, key)
    try:
        fwd = SyslogForwarder("127.0.0.1", server.port, cafile=str(cert))
        log = AuditLog(tmp_path / "data", every=3, on_seal=fwd)
        for i in range(3):
            log.append("request.search", actor="kim", role="officer", obj=f"r{i}")
        assert server.got.wait(20)
    finally:
        server.close()
    assert fwd.sent == 1 and fwd.failed == 0
    (msg,) = server.frames
    head, _, body = msg.partition(b"\xef\xbb\xbf")
    assert re.match(rb"<109>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \S+ nokbox \d+ checkpoint - $", head), head
    cp = Checkpoint.parse(body.decode())
    assert cp.size == 4 and log.verify_report(checkpoints=[cp]).checkpoints_checked == 1


def test_forwarding_failure_never_breaks_an_append(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    fwd = SyslogForwarder("127.0.0.1", port, timeout=2)
    log = AuditLog(tmp_path, every=1, on_seal=fwd)
    log.append("x")
    assert fwd.failed == 1 and log.verify() == (2, None)

"""Export signatures: OpenSSH SSHSIG made with the box's Ed25519 key (sealed under the device secret),
checked with the stock ``ssh-keygen -Y verify`` and equal to ``ssh-keygen -Y sign``'s bytes."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization

from firmware.errors import VaultError
from firmware.hal.devicekey import FileDeviceSecret
from firmware.vault import signing
from firmware.vault.keys import device_for

from .conftest import run_cli


@pytest.fixture(scope="module")
def ssh_keygen():
    path = shutil.which("ssh-keygen")
    if path is None:
        pytest.fail("ssh-keygen is required (Debian openssh-client)")
    return path


def _verify(ssh_keygen, tmp_path, line, message: bytes, sig: str) -> subprocess.CompletedProcess:
    signers = tmp_path / "allowed_signers"
    signers.write_text(signing.allowed_signers(line) + "\n")
    (tmp_path / "m.sig").write_text(sig)
    return subprocess.run([ssh_keygen, "-Y", "verify", "-f", str(signers), "-I", signing.PRINCIPAL, "-n", "file",
                           "-s", str(tmp_path / "m.sig")], input=message, capture_output=True)


def test_ssh_keygen_verifies_the_box_signature_and_any_change_fails(box, tmp_path, ssh_keygen):
    data, _ = box
    line = signing.public_line(data)  # made by init
    message = "2026-0042  통화 3건\nabc123  call-1.wav\n".encode()
    sig = signing.sign(data, device_for(data), message)
    r = _verify(ssh_keygen, tmp_path, line, message, sig)
    assert r.returncode == 0, r.stderr
    assert signing.verify(line, message, sig)
    for i in (0, len(message) // 2, len(message) - 1):  # one changed byte anywhere in the manifest
        bad = bytearray(message)
        bad[i] ^= 1
        assert _verify(ssh_keygen, tmp_path, line, bytes(bad), sig).returncode != 0
        assert not signing.verify(line, bytes(bad), sig)
    body = sig.splitlines()
    body[3] = body[3][:10] + ("A" if body[3][10] != "A" else "B") + body[3][11:]  # inside the signature bytes
    forged = "\n".join(body) + "\n"
    assert _verify(ssh_keygen, tmp_path, line, message, forged).returncode != 0
    assert not signing.verify(line, message, forged)
    assert not signing.verify(line, message, sig, namespace="email")


def test_the_signature_is_byte_identical_to_ssh_keygen_sign(box, tmp_path, ssh_keygen):
    data, _ = box
    key = signing._private(data, device_for(data))
    pem = tmp_path / "signer"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                      serialization.NoEncryption()))
    pem.chmod(0o600)
    msg = tmp_path / "MANIFEST.sha256"
    msg.write_bytes(b"0" * 64 + b"  RELEASE.txt\n")
    r = subprocess.run([ssh_keygen, "-Y", "sign", "-f", str(pem), "-n", "file", str(msg)], capture_output=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "MANIFEST.sha256.sig").read_text() == signing.sign(data, device_for(data), msg.read_bytes())


def test_the_ssd_alone_cannot_sign(box, tmp_path):
    data, _ = box
    with pytest.raises(VaultError, match="does not open"):
        signing.sign(data, FileDeviceSecret(_other_key(tmp_path)), b"x")


def _other_key(tmp_path):
    p = tmp_path / "other.key"
    FileDeviceSecret(p).provision()
    return p


def test_keys_signer_prints_the_allowed_signers_line_and_fingerprint(box, tmp_path, ssh_keygen):
    data, _ = box
    r = run_cli("keys", "signer", "--data", str(data))
    assert r.returncode == 0, r.stderr
    allowed, fp = r.stdout.splitlines()
    assert allowed.startswith('nokbox-export namespaces="file" ssh-ed25519 AAAA')
    out = subprocess.run([ssh_keygen, "-l", "-f", str(data / "keys" / "signer.pub")], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split()[1] == fp

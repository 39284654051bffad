"""The export package (제공): one password-protected AES-256 ZIP that 7-Zip and Bandizip open.

Inside: the calls as 16-bit WAV with neutral names (``call-01.wav`` …), ``RELEASE.txt`` (the request
and, for each file, its call id, line, start, duration and SHA-256, and the box's audit checkpoint),
any further files the caller adds (the handover receipt), ``MANIFEST.sha256`` in the format
``sha256sum -c`` checks, listing every other file, and ``MANIFEST.sha256.sig``, an OpenSSH SSHSIG
over the manifest by the box's export key (``ssh-keygen -Y verify -n file``; ``vault/signing.py``).

The ZIP password is generated here (100 bits: twenty characters of an alphabet without look-alikes,
shown and typed in groups of four with hyphens), returned once to be handed over, and never stored.
The package is written under a temporary name and renamed when complete: a cut leaves nothing that
looks like a finished package. Why pyzipper: the standard ``zipfile`` cannot encrypt, and pyzipper's
WinZip AES is what 7-Zip and Bandizip read (Windows Explorer and Info-ZIP ``unzip`` do not read AES
ZIPs at all; the receipt says which programs to use).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

PASSWORD_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"  # 32 symbols: no 0/O, no 1/I/L
PASSWORD_GROUPS = 5
PASSWORD_GROUP_LEN = 4      # 20 symbols x 5 bits = 100 bits
MANIFEST = "MANIFEST.sha256"
SIGNATURE = MANIFEST + ".sig"
RELEASE = "RELEASE.txt"


def generate_password() -> str:
    """``7K3M-Q9XD-…``: 100 bits from the system's CSPRNG, typed as shown (hyphens included)."""
    groups = ["".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_GROUP_LEN))
              for _ in range(PASSWORD_GROUPS)]
    return "-".join(groups)


def password_bits() -> float:
    import math

    return PASSWORD_GROUPS * PASSWORD_GROUP_LEN * math.log2(len(PASSWORD_ALPHABET))


@dataclass
class PackedCall:
    """One call going into a package: its metadata and its WAV bytes, chunk by chunk."""

    call_id: int
    line: str
    start_local: str
    duration_s: float
    wav: Iterable[bytes]


@dataclass
class Package:
    path: Path
    password: str
    files: dict[str, str]   # name -> SHA-256 (hex), every file except the manifest and its signature
    manifest: bytes
    signature: str
    size: int


def release_text(request_no: str, details: list[tuple[str, str]], calls: list[dict], checkpoint: str) -> str:
    """RELEASE.txt: the request's fields (label, value), each file's call, and the audit checkpoint."""
    out = [f"녹취정보 제공 · Release of recordings  {request_no}", ""]
    out += [f"{label}: {value}" for label, value in details]
    out += ["", "파일 · Files (name, call id, line, start KST, duration s, SHA-256):"]
    out += [f"{c['name']}\t{c['call_id']}\t{c['line']}\t{c['start_local']}\t{c['duration_s']:.1f}\t{c['sha256']}"
            for c in calls]
    out += ["", f"감사 기록 체크포인트 · audit checkpoint: {checkpoint}", ""]
    return "\n".join(out)


def build(out: Path, request_no: str, details: list[tuple[str, str]], calls: list[PackedCall], checkpoint: str,
          sign: Callable[[bytes], str], extra: "dict[str, bytes] | Callable[[list[dict]], dict[str, bytes]] | None" = None,
          progress: Callable[[int], None] | None = None) -> Package:
    """Write the package to ``out`` (through ``out``.part); ``sign`` is the keeper's SSHSIG over the manifest.
    ``extra`` is further files, or a function of the calls' rows (name, call id, …, SHA-256) that
    makes them once the calls are in (the handover receipt lists the files' hashes)."""
    import pyzipper

    out = Path(out)
    part = out.with_name(out.name + ".part")
    password = generate_password()
    hashes: dict[str, str] = {}
    rows = []
    written = 0
    try:
        with pyzipper.AESZipFile(part, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES) as z:
            z.setpassword(password.encode())
            z.setencryption(pyzipper.WZ_AES, nbits=256)

            def put(name: str, chunks: Iterable[bytes]) -> str:
                nonlocal written
                h = hashlib.sha256()
                with z.open(name, "w") as f:
                    for chunk in chunks:
                        h.update(chunk)
                        f.write(chunk)
                        written += len(chunk)
                        if progress is not None:
                            progress(written)
                hashes[name] = h.hexdigest()
                return hashes[name]

            for i, c in enumerate(calls, 1):
                name = f"call-{i:02d}.wav"
                rows.append({"name": name, "call_id": c.call_id, "line": c.line, "start_local": c.start_local,
                             "duration_s": c.duration_s, "sha256": put(name, c.wav)})
            more = extra(rows) if callable(extra) else (extra or {})
            for name, blob in sorted(more.items()):
                put(name, [blob])
            put(RELEASE, [release_text(request_no, details, rows, checkpoint).encode("utf-8")])
            manifest = "".join(f"{hashes[n]}  {n}\n" for n in sorted(hashes)).encode()
            signature = sign(manifest)
            z.writestr(MANIFEST, manifest)
            z.writestr(SIGNATURE, signature)
        with open(part, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, out)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return Package(out, password, hashes, manifest, signature, out.stat().st_size)


def check(path: Path, password: str, verify: Callable[[bytes, str], bool]) -> list[str]:
    """Read a written package back: every file against the manifest, the manifest against its
    signature. The problems found (empty when the package is whole)."""
    import zlib

    import pyzipper

    problems = []
    try:
        with pyzipper.AESZipFile(path) as z:
            z.setpassword(password.encode())
            names = set(z.namelist())
            manifest = z.read(MANIFEST)
            if not verify(manifest, z.read(SIGNATURE).decode()):
                problems.append("the manifest's signature does not verify")
            listed = {}
            for row in manifest.decode().splitlines():
                digest, _, name = row.partition("  ")
                listed[name] = digest
            for name in sorted(names - {MANIFEST, SIGNATURE}):
                h = hashlib.sha256()
                with z.open(name) as f:
                    for chunk in iter(lambda: f.read(1 << 16), b""):
                        h.update(chunk)
                if listed.get(name) != h.hexdigest():
                    problems.append(f"{name}: does not match the manifest")
            for name in sorted(set(listed) - names):
                problems.append(f"{name}: listed but missing")
    except (OSError, KeyError, RuntimeError, ValueError, pyzipper.BadZipFile, zlib.error) as exc:
        problems.append(f"the package does not read back: {exc}")
    return problems

"""Our age reader against the public C2SP CCTV age test vectors (copied under tests/vectors/).

Applicable: every vector with X25519 identities or passphrases. Not applicable: armored
files (recordings are binary) and post-quantum hybrid identities (not used by the box).
"""

from __future__ import annotations

import hashlib
import io
import zlib
from pathlib import Path

import pytest

from firmware.vault.age import AgeError, ScryptIdentity, X25519Identity, decrypt

VECTORS = Path(__file__).parent / "vectors" / "age-testkit"


def load(path: Path):
    raw = path.read_bytes()
    head, _, body = raw.partition(b"\n\n")
    meta: dict[str, list[str]] = {}
    for line in head.decode().splitlines():
        k, _, v = line.partition(": ")
        meta.setdefault(k, []).append(v)
    if meta.get("compressed") == ["zlib"]:
        body = zlib.decompress(body)
    return meta, body


def applicable():
    out = []
    for p in sorted(VECTORS.iterdir()):
        if p.name == "README.md":
            continue
        meta, _ = load(p)
        if meta.get("armored") == ["yes"]:
            continue
        if any(i.startswith("AGE-SECRET-KEY-PQ-") for i in meta.get("identity", [])):
            continue
        out.append(p.name)
    return out


NAMES = applicable()


def test_vector_set_is_complete():
    assert len(NAMES) >= 90


@pytest.mark.parametrize("name", NAMES)
def test_vector(name):
    meta, body = load(VECTORS / name)
    idents = [X25519Identity(i) for i in meta.get("identity", [])]
    idents += [ScryptIdentity(p) for p in meta.get("passphrase", [])]
    released = hashlib.sha256()
    outcome = "success"
    try:
        for chunk in decrypt(io.BytesIO(body), idents):
            released.update(chunk)
    except AgeError as exc:
        outcome = exc.kind
    assert outcome == meta["expect"][0]
    if "payload" in meta:
        assert released.hexdigest() == meta["payload"][0]

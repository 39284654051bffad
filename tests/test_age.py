"""Our age writer against the stock age tool, around every chunk boundary, both key directions."""

from __future__ import annotations

import io
import os
import shutil
import subprocess

import pytest

from firmware.vault.age import CHUNK, AgeWriter, generate_identity, parse_identity, parse_recipient, recipient_of
from firmware.errors import VaultError

from .conftest import age_decrypt


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 17])
def test_stock_age_decrypts_every_size(tmp_path, age_tool, size):
    ident, rec = generate_identity()
    idf = tmp_path / "id.txt"
    idf.write_text(ident + "\n")
    data = os.urandom(size)
    out = tmp_path / "x.age"
    with open(out, "wb") as f:
        w = AgeWriter(f, [parse_recipient(rec)])
        for i in range(0, size, 5000):
            w.write(data[i:i + 5000])
        w.close()
    assert age_decrypt(age_tool, idf, out) == data


def test_two_recipients_each_decrypt(tmp_path, age_tool):
    keys = [generate_identity() for _ in range(2)]
    out = tmp_path / "x.age"
    with open(out, "wb") as f:
        w = AgeWriter(f, [parse_recipient(r) for _, r in keys])
        w.write(b"hello")
        w.close()
    for i, (ident, _) in enumerate(keys):
        p = tmp_path / f"id{i}"
        p.write_text(ident)
        assert age_decrypt(age_tool, p, out) == b"hello"


def test_keys_interoperate_with_age_keygen(tmp_path, age_tool):
    keygen = shutil.which("age-keygen")
    assert keygen, "age-keygen ships with the age package"
    ident, rec = generate_identity()
    idf = tmp_path / "ours.txt"
    idf.write_text(ident + "\n")
    y = subprocess.run([keygen, "-y", str(idf)], capture_output=True, text=True, check=True)
    assert y.stdout.strip() == rec == recipient_of(ident)
    theirs = tmp_path / "theirs.txt"
    subprocess.run([keygen, "-o", str(theirs)], capture_output=True, check=True)
    their_ident = [ln for ln in theirs.read_text().splitlines() if ln.startswith("AGE-SECRET-KEY-")][0]
    out = tmp_path / "y.age"
    with open(out, "wb") as f:
        w = AgeWriter(f, [parse_recipient(recipient_of(their_ident))])
        w.write(b"x" * 100000)
        w.close()
    assert age_decrypt(age_tool, theirs, out) == b"x" * 100000


def test_patch_only_before_sealing():
    ident, rec = generate_identity()
    w = AgeWriter(io.BytesIO(), [parse_recipient(rec)])
    w.write(b"a" * 10)
    assert w.patch(0, b"b")
    w.write(b"c" * (CHUNK + 10))
    assert w.sealed == CHUNK
    assert not w.patch(0, b"z")
    assert w.patch(CHUNK, b"z")


def test_bad_key_strings_are_refused():
    with pytest.raises(VaultError):
        parse_recipient("age1notakey")
    ident, rec = generate_identity()
    with pytest.raises(VaultError):
        parse_identity(rec)
    with pytest.raises(VaultError):
        parse_recipient(ident)

"""Personal fields: masks keep only what a request needs; sealed values need the records identity."""

from __future__ import annotations

import pytest

from firmware.vault.age import generate_identity, parse_recipient
from firmware.errors import VaultError
from firmware.hal.devicekey import FileDeviceSecret
from firmware.vault.personal import BoxSealer, format_number, mask_number, open_value, seal_value


@pytest.mark.parametrize("number, formatted, masked", [
    ("01012345678", "010-1234-5678", "010-****-5678"),
    ("0212345678", "02-1234-5678", "02-****-5678"),
    ("021234567", "02-123-4567", "02-***-4567"),
    ("0311234567", "031-123-4567", "031-***-4567"),
    ("15881234", "1588-1234", "****-1234"),
    ("1234", "1234", "****"),
    ("123456", "123456", "****56"),
])
def test_format_and_mask(number, formatted, masked):
    assert format_number(number) == formatted
    assert mask_number(number) == masked


def test_mask_refuses_non_numbers():
    with pytest.raises(VaultError):
        mask_number("홍길동")


def test_sealed_value_needs_the_records_identity(age_tool, tmp_path):
    ident, rec = generate_identity()
    other, _ = generate_identity()
    blob = seal_value("01012345678", [parse_recipient(rec)])
    assert b"01012345678" not in blob and b"5678" not in blob
    assert open_value(blob, ident) == "01012345678"
    with pytest.raises(VaultError):
        open_value(blob, other)
    # the stock tool agrees
    import subprocess

    (tmp_path / "id").write_text(ident)
    (tmp_path / "v.age").write_bytes(blob)
    out = subprocess.run([age_tool, "-d", "-i", str(tmp_path / "id"), str(tmp_path / "v.age")], capture_output=True)
    assert out.stdout == b"01012345678"


def test_masked_form_is_bound_to_the_box(tmp_path):
    FileDeviceSecret(tmp_path / "a.key").provision()
    FileDeviceSecret(tmp_path / "b.key").provision()
    box = BoxSealer(FileDeviceSecret(tmp_path / "a.key"))
    blob = box.seal("010-****-5678")
    assert b"5678" not in blob
    assert box.open(blob) == "010-****-5678"
    with pytest.raises(VaultError):
        BoxSealer(FileDeviceSecret(tmp_path / "b.key")).open(blob)

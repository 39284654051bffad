"""Personal fields (dialled number, caller ID): sealed for the records identity, masked for lists.

- The full value is sealed to the records recipient(s) as a small age file: only the
  approver's secret opens it.
- The masked form (010-****-5678) is what lists may show to roles allowed to see that much;
  it is stored encrypted under a key derived from the device-bound secret, so the SSD alone
  shows not even the masked digits.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import re

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .age import AgeWriter, X25519Identity, decrypt_bytes
from ..errors import VaultError
from ..hal.devicekey import DeviceSecret

_DIGITS = re.compile(r"^[0-9*#]{1,32}$")


def _groups(number: str) -> list[str]:
    """Korean grouping of a dialled number (digits only)."""
    n = number
    if n.startswith("02") and len(n) in (9, 10):
        return [n[:2], n[2:-4], n[-4:]]
    if n.startswith("0") and len(n) in (10, 11):
        return [n[:3], n[3:-4], n[-4:]]
    if len(n) == 8 and n[:2] in ("15", "16", "18"):
        return [n[:4], n[4:]]
    return [n]


def format_number(number: str) -> str:
    """010-1234-5678, 02-123-4567, 1588-1234; other strings as they are."""
    return "-".join(_groups(number))


def mask_number(number: str) -> str:
    """Hide what identifies a person but keep what a records officer needs to match a request."""
    if not _DIGITS.match(number):
        raise VaultError("not a dialled number")
    g = _groups(number)
    if len(g) == 3:
        return f"{g[0]}-{'*' * len(g[1])}-{g[2]}"
    if len(g) == 2:
        return f"{'*' * len(g[0])}-{g[1]}"
    if len(number) <= 4:
        return "*" * len(number)
    return "*" * (len(number) - 2) + number[-2:]


def seal_value(value: str, recipients: list[bytes]) -> bytes:
    """The value as an age file to the records recipient(s)."""
    buf = io.BytesIO()
    w = AgeWriter(buf, recipients)
    w.write(value.encode("utf-8"))
    w.close()
    return buf.getvalue()


def open_value(blob: bytes, identity: str) -> str:
    """Open a sealed value with the records identity."""
    return decrypt_bytes(blob, [X25519Identity(identity)]).decode("utf-8")


BLIND_INFO = "nokbox/v1/number-blind"


def normal_number(number: str) -> str:
    """The digits a number is matched on: separators dropped, +82 / 82 written as the leading 0."""
    d = re.sub(r"[^0-9*#]", "", number or "")
    if number.strip().startswith("+82") or (d.startswith("82") and len(d) >= 11):
        d = "0" + d[2:].lstrip("0")
    return d


def blind_number(key: bytes, number: str) -> str:
    """The keyed blind index of a number: HMAC-SHA256 under a device-derived key, 128 bits in hex.
    Equal numbers give equal values; without the box's device secret the value reveals nothing
    (a dictionary of every Korean number is useless without the key)."""
    d = normal_number(number)
    if not d:
        return ""
    return hmac.new(key, d.encode(), hashlib.sha256).hexdigest()[:32]


class BoxSealer:
    """Encrypts short display values under a key bound to this box (not to the SSD)."""

    INFO = "nokbox/v1/masked-fields"

    def __init__(self, device: DeviceSecret) -> None:
        self._aead = ChaCha20Poly1305(device.derive(self.INFO))
        self._blind = device.derive(BLIND_INFO)

    def blind(self, number: str) -> str:
        """``blind_number`` under this box's key."""
        return blind_number(self._blind, number)

    def blinds(self, numbers: dict) -> str:
        """The blind index values of a call's numbers, space-separated (what the index keeps)."""
        vals = {self.blind(numbers[k]) for k in NUMBER_FIELDS if numbers.get(k)}
        return " ".join(sorted(v for v in vals if v))

    def seal(self, text: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, text.encode("utf-8"), b"nokbox masked v1")

    def open(self, blob: bytes) -> str:
        try:
            return self._aead.decrypt(blob[:12], blob[12:], b"nokbox masked v1").decode("utf-8")
        except Exception:
            raise VaultError("masked field does not open with this box's device secret") from None


NUMBER_FIELDS = ("dialed", "caller_id")


def masked_numbers(numbers: dict) -> dict:
    """The masked form of a call's numbers; a value that is not a dialled number is hidden whole."""
    out = {}
    for k in NUMBER_FIELDS:
        v = numbers.get(k)
        if v:
            try:
                out[k] = mask_number(v)
            except VaultError:
                out[k] = "*" * min(len(v), 16)
    return out


def seal_masked(sealer: BoxSealer, numbers: dict) -> bytes:
    """What the index keeps for lists: the masked numbers, sealed under the device-bound secret."""
    return sealer.seal(json.dumps(masked_numbers(numbers), ensure_ascii=False))


def open_masked(sealer: BoxSealer, blob: bytes) -> dict:
    return json.loads(sealer.open(blob))

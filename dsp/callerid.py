"""Caller ID: FSK (Bell 202 and ITU-T V.23, SDMF/MDMF) and DTMF caller ID.

Both directions are here, written from the standards: ``encode_*``/``fsk_signal`` build
the on-line signal (channel seizure, mark, then the message as start-bit/8 data bits
LSB first/stop-bit characters at 1200 baud, continuous phase), ``decode_fsk`` turns
samples back into the message. Message layout (Bellcore GR-30 / ETSI EN 300 659-3):
type (0x04 SDMF, 0x80 MDMF), length, payload, checksum (all bytes sum to 0 mod 256);
MDMF parameters are (type, length, value) with 0x01 date-time, 0x02 number,
0x04 reason the number is absent, 0x07 name, 0x08 reason the name is absent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BAUD = 1200.0
# name -> (mark Hz = binary 1, space Hz = binary 0)
FSK_STANDARDS = {"bell202": (1200.0, 2200.0), "v23": (1300.0, 2100.0)}


@dataclass(frozen=True)
class CallerId:
    """A decoded caller ID message."""

    number: str | None
    name: str | None = None
    when: str | None = None  # MMDDHHMM as sent
    absent: str | None = None  # 'O' unavailable, 'P' private
    standard: str = ""


# -- encoding ------------------------------------------------------------------------------
def _with_checksum(body: bytes) -> bytes:
    return body + bytes([(-sum(body)) & 0xFF])


def encode_sdmf(number: str, when: str = "01010000") -> bytes:
    """Single Data Message Format: date-time (MMDDHHMM) then the number."""
    payload = when.encode("ascii") + number.encode("ascii")
    return _with_checksum(bytes([0x04, len(payload)]) + payload)


def encode_mdmf(number: str | None, when: str = "01010000", name: str | None = None,
                absent: str | None = None) -> bytes:
    """Multiple Data Message Format with date-time, number (or absence reason) and name."""
    params = bytes([0x01, 8]) + when.encode("ascii")
    if number is not None:
        params += bytes([0x02, len(number)]) + number.encode("ascii")
    else:
        params += bytes([0x04, 1]) + (absent or "O").encode("ascii")
    if name is not None:
        raw = name.encode("ascii")
        params += bytes([0x07, len(raw)]) + raw
    return _with_checksum(bytes([0x80, len(params)]) + params)


def fsk_signal(message: bytes, rate: int, standard: str = "bell202", level_dbfs: float = -18.0,
               seizure_bits: int = 300, mark_bits: int = 180) -> np.ndarray:
    """The line signal: seizure (alternating bits), mark, then the framed message, float32."""
    mark, space = FSK_STANDARDS[standard]
    bits: list[int] = [i & 1 for i in range(seizure_bits)] + [1] * mark_bits
    for b in message:
        bits += [0] + [(b >> k) & 1 for k in range(8)] + [1]
    bits += [1, 1]
    n = int(np.ceil(len(bits) * rate / BAUD))
    idx = np.minimum((np.arange(n) * BAUD / rate).astype(np.int64), len(bits) - 1)
    f = np.where(np.asarray(bits)[idx] == 1, mark, space)
    phase = 2.0 * np.pi * np.cumsum(f) / rate
    amp = np.sqrt(2.0) * 10.0 ** (level_dbfs / 20.0)
    return (amp * np.sin(phase)).astype(np.float32)


def dtmf_cid_digits(number: str) -> str:
    """DTMF caller ID as sent before the first ring: 'A', the number, 'C'."""
    return "A" + number + "C"


# -- decoding ------------------------------------------------------------------------------
def _lowpass(rate: int, cutoff: float, taps: int = 31) -> np.ndarray:
    n = np.arange(taps) - (taps - 1) / 2.0
    h = np.sinc(2.0 * cutoff / rate * n) * np.hamming(taps)
    return h / h.sum()


def _demod(x: np.ndarray, rate: int, mark: float, space: float) -> tuple[np.ndarray, np.ndarray]:
    """(+1 at the mark frequency / -1 at space, per sample; instantaneous offset from centre in Hz)."""
    fc = 0.5 * (mark + space)
    n = np.arange(len(x))
    z = x.astype(np.float64) * np.exp(-2j * np.pi * fc * n / rate)
    h = _lowpass(rate, abs(space - mark))
    z = np.convolve(z, h, mode="same")
    d = np.angle(z[1:] * np.conj(z[:-1]))  # instantaneous frequency relative to fc
    d = np.concatenate((d[:1], d))
    sign = 1.0 if mark < space else -1.0
    return np.where(d * sign < 0, 1, -1), d * rate / (2.0 * np.pi)


def _bytes_after_mark(bits_at: np.ndarray, rate: int, min_mark_bits: int = 20) -> tuple[list[int], int]:
    """UART framing: after >= min_mark_bits of steady mark, read start/8 data/stop characters."""
    spb = rate / BAUD
    n = len(bits_at)
    mark = bits_at > 0
    # the first stretch of steady mark (vectorised run search)
    need = int(min_mark_bits * spb)
    if n < need:
        return [], 0
    cs = np.concatenate(([0], np.cumsum(mark)))
    full = np.flatnonzero(cs[need:] - cs[:-need] == need)
    if len(full) == 0:
        return [], 0
    i = int(full[0]) + need
    mark_at = int(full[0])
    out: list[int] = []
    while True:
        # next start bit: first space sample after i
        rest = np.flatnonzero(~mark[i:])
        if len(rest) == 0:
            break
        t0 = i + int(rest[0])
        centres = (t0 + (np.arange(10) + 0.5) * spb).astype(np.int64)
        if centres[-1] >= n:
            break
        b = mark[centres]
        if b[0] or not b[9]:  # bad start or stop bit: the message is over
            break
        out.append(int(sum(int(b[1 + k]) << k for k in range(8))))
        i = int(t0 + 9.5 * spb)
        if len(out) > 300:
            break
    return out, mark_at


def parse_message(data: list[int] | bytes, standard: str = "") -> CallerId | None:
    """A caller ID message from its bytes, or None when the framing or checksum is wrong."""
    data = list(data)
    for start in range(min(len(data), 4)):  # tolerate a stray character before the type byte
        if data[start] not in (0x04, 0x80) or start + 2 > len(data):
            continue
        ln = data[start + 1]
        msg = data[start:start + 2 + ln + 1]
        if len(msg) < ln + 3 or sum(msg) & 0xFF:
            continue
        payload = bytes(msg[2:2 + ln])
        try:
            if msg[0] == 0x04:
                text = payload.decode("ascii")
                num = text[8:]
                return CallerId(number=num if num not in ("O", "P") else None, when=text[:8],
                                absent=num if num in ("O", "P") else None, standard=standard)
            fields: dict[int, bytes] = {}
            j = 0
            while j + 2 <= len(payload):
                t, n = payload[j], payload[j + 1]
                fields[t] = payload[j + 2:j + 2 + n]
                j += 2 + n
            num = fields.get(0x02)
            name = fields.get(0x07)
            return CallerId(number=num.decode("ascii") if num else None,
                            name=name.decode("ascii") if name else None,
                            when=fields[0x01].decode("ascii") if 0x01 in fields else None,
                            absent=fields[0x04].decode("ascii") if 0x04 in fields else None,
                            standard=standard)
        except UnicodeDecodeError:
            continue
    return None


def decode_fsk(x: np.ndarray, rate: int, standards: tuple[str, ...] = ("bell202", "v23")) -> CallerId | None:
    """Find and decode an FSK caller ID message in ``x`` (float or int16 samples).

    Bell 202 and V.23 share their centre frequency (1700 Hz), so one discriminator
    reads both; the measured deviation (500 vs 400 Hz) names the standard.
    """
    x = np.asarray(x, dtype=np.float64)
    done: set[tuple[float, float]] = set()
    for std in standards:
        mark, space = FSK_STANDARDS[std]
        centre = (0.5 * (mark + space), mark < space)
        if centre in done:
            continue
        done.add(centre)
        bits, _ = _demod(x, rate, mark, space)
        data, mark_at = _bytes_after_mark(bits, rate)
        cid = parse_message(data, std)
        if cid is None:
            continue
        # the steady mark before the message names the standard: 1200 Hz (Bell 202) or 1300 Hz (V.23)
        seg = x[mark_at:mark_at + int(20 * rate / BAUD)]
        n = np.arange(len(seg))
        same = [s for s in standards
                if (0.5 * sum(FSK_STANDARDS[s]), FSK_STANDARDS[s][0] < FSK_STANDARDS[s][1]) == centre]
        best = max(same, key=lambda s: abs(np.dot(seg, np.exp(-2j * np.pi * FSK_STANDARDS[s][0] * n / rate))))
        return CallerId(cid.number, cid.name, cid.when, cid.absent, best)
    return None


def parse_dtmf_cid(digits: str) -> str | None:
    """The number of a DTMF caller ID sequence ('A' or 'D' ... 'C' or '#'), else None."""
    if len(digits) >= 3 and digits[0] in "AD" and digits[-1] in "C#":
        body = digits[1:-1]
        if body and all(c.isdigit() for c in body):
            return body
    return None

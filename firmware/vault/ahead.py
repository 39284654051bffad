"""The write-ahead journal: a line's call audio on disk before the segmenter has analysed it.

The segmenter decides where a call ends up to a chunk (``segment.chunk_s``, 2-8 s) after the
audio arrived, and the call file (``callfile.CallFile``) gets only audio the segmenter has given
to the call. So that a power cut loses at most the last second, the recorder also writes each
line's audio *as it arrives* — from the moment a call is raised (provisionally or confirmed)
until it is finished — into an ahead journal, fsynced at least once a second:

- ``DATA/calls/pending/<random>.ahead``: length-prefixed age records to the *device recovery
  recipient* (the same exposure as the call journal, see docs/threat-model.md): ``K`` (JSON: line,
  rate, codec, the first sample and its wall-clock time, key class), ``C`` once the call is
  confirmed (JSON: call id, file, start sample), ``A`` (8-byte big-endian sample index, then
  little-endian int16 samples).

It is deleted when the call is finished (after the index says so) or withdrawn (a provisional
onset the analysis did not confirm: no call, no file). After a power cut, recovery
(``vault.recovery``) appends what it holds beyond the call journal's audio to the recovered call,
or makes a call of it when the cut came before the confirmation.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .age import AgeError, X25519Identity, decrypt_bytes
from .callfile import Disk, _journal_record

PENDING = "calls/pending"


class AheadJournal:
    """One call's (or provisional call's) audio ahead of the analysis; every append is fsynced."""

    def __init__(self, data_dir: Path, device_recipient: bytes, meta: dict, disk: Disk | None = None) -> None:
        self.disk = disk or Disk()
        d = Path(data_dir) / PENDING
        d.mkdir(parents=True, exist_ok=True)
        self.path = d / f"{os.urandom(8).hex()}.ahead"
        self._dev = device_recipient
        self._fd = self.disk.create(self.path)
        self._size = 0
        self.upto = int(meta["start"])  # next sample expected
        self.samples = 0
        self._record(b"K" + json.dumps({"v": 1, **meta}).encode())
        self.disk.sync(self._fd)
        self.disk.sync_dir(d)
        self._closed = False

    def _record(self, payload: bytes) -> None:
        rec = _journal_record(self._dev, payload)
        self.disk.pwrite(self._fd, rec, self._size)
        self._size += len(rec)

    def confirm(self, call_id: int, file: str, start: int) -> None:
        """The call is confirmed: its index id, its file and its first sample (fsynced with the next audio)."""
        self._record(b"C" + json.dumps({"call_id": call_id, "file": file, "start": int(start)}).encode())
        self.disk.sync(self._fd)

    def append(self, first: int, pcm: np.ndarray) -> None:
        """Samples ``first`` .. of the line (contiguous with the last append, or after a gap), fsynced."""
        x = np.ascontiguousarray(pcm, dtype="<i2")
        if not len(x):
            return
        self._record(b"A" + struct.pack(">Q", int(first)) + x.tobytes())
        self.disk.sync(self._fd)
        self.upto = int(first) + len(x)
        self.samples += len(x)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.disk.close(self._fd)

    def discard(self) -> None:
        """The call is finished (and in the index) or withdrawn: the journal goes."""
        self.close()
        self.disk.unlink(self.path)
        self.disk.sync_dir(self.path.parent)


@dataclass
class AheadContents:
    """What an ahead journal holds (after a cut)."""

    path: Path
    meta: dict | None
    confirmed: dict | None = None
    segments: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (first sample, samples)

    def audio_from(self, start: int) -> np.ndarray:
        """The samples from ``start`` on, as far as they run without a gap."""
        out: list[np.ndarray] = []
        pos = start
        for first, x in sorted(self.segments, key=lambda s: s[0]):
            end = first + len(x)
            if end <= pos:
                continue
            if first > pos:
                break  # a gap (samples lost before they were written): what follows is not contiguous
            out.append(x[pos - first:])
            pos = end
        return np.concatenate(out) if out else np.zeros(0, np.int16)


def read_ahead(path: Path, device_identity: str) -> AheadContents:
    """Parse an ahead journal; a torn last record (the cut) is ignored."""
    ident = [X25519Identity(device_identity)]
    raw = Path(path).read_bytes()
    res = AheadContents(Path(path), None)
    pos = 0
    while pos + 4 <= len(raw):
        (n,) = struct.unpack(">I", raw[pos:pos + 4])
        blob = raw[pos + 4:pos + 4 + n]
        if len(blob) < n:
            break
        try:
            payload = decrypt_bytes(bytes(blob), ident)
        except AgeError:
            break
        pos += 4 + n
        kind, body = payload[:1], payload[1:]
        if kind == b"K":
            res.meta = json.loads(body)
        elif kind == b"C":
            res.confirmed = json.loads(body)
        elif kind == b"A" and len(body) >= 8:
            (first,) = struct.unpack(">Q", body[:8])
            res.segments.append((int(first), np.frombuffer(body[8:], dtype="<i2").astype(np.int16)))
    return res


def pending_journals(data_dir: Path) -> list[Path]:
    d = Path(data_dir) / PENDING
    return sorted(d.glob("*.ahead")) if d.exists() else []

"""One call's recording: 16-bit PCM WAV streamed through an age encryptor into a file.

The WAV header is written in its streaming form (RIFF and data sizes 0xFFFFFFFF,
"to the end of the file") so that a header sealed early in a long call is still
valid; libsndfile's final size patch is applied whenever the header's chunk is
not sealed yet (calls shorter than one 64 KiB chunk).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from .age import AgeWriter

_STREAMING_SIZE = b"\xff\xff\xff\xff"


class _PlainSink:
    """The file object libsndfile writes into: appends feed the age stream, back-patches
    land while their bytes are unsealed and are otherwise counted and dropped."""

    def __init__(self, age: AgeWriter) -> None:
        self.age = age
        self.pos = 0
        self.finalizing = False
        self.dropped_patches = 0

    def write(self, data) -> int:
        b = bytes(data)
        n = len(b)
        if self.pos == 0 and not self.finalizing and n >= 44 and b[:4] == b"RIFF" and b[36:40] == b"data":
            b = b[:4] + _STREAMING_SIZE + b[8:40] + _STREAMING_SIZE + b[44:]
        length = self.age.length
        if self.pos > length:
            raise io.UnsupportedOperation("write beyond end of stream")
        overlap = min(n, length - self.pos)
        if overlap and not self.age.patch(self.pos, b[:overlap]):
            self.dropped_patches += 1
        if overlap < n:
            self.age.write(b[overlap:])
        self.pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self.pos = offset
        elif whence == io.SEEK_CUR:
            self.pos += offset
        else:
            self.pos = self.age.length + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        return b""


class CallFile:
    """Writes one call to ``<final>.part``; ``close`` seals, fsyncs and renames it to ``final``."""

    def __init__(self, final: Path, recipients: list[bytes], rate: int) -> None:
        self.final = Path(final)
        self.part = self.final.with_name(self.final.name + ".part")
        self.part.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.part, "xb")
        self._age = AgeWriter(self._f, recipients)
        self._sink = _PlainSink(self._age)
        self._snd = sf.SoundFile(self._sink, "w", samplerate=rate, channels=1, format="WAV",
                                 subtype="PCM_16")
        self.rate = rate
        self.frames = 0
        self._flushed = 0

    def write(self, samples: np.ndarray) -> None:
        """Append int16 mono samples; every sealed chunk is handed to the OS at once."""
        if len(samples):
            self._snd.write(samples)
            self.frames += len(samples)
            if self._age.bytes_out != self._flushed:
                self._f.flush()
                self._flushed = self._age.bytes_out

    @property
    def size(self) -> int:
        return self._age.bytes_out

    def close(self) -> int:
        """Finish the call: final chunk, fsync, atomic rename. Returns the file size."""
        self._sink.finalizing = True
        self._snd.close()
        self._age.close()
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.part, self.final)
        _fsync_dir(self.final.parent)
        return self._age.bytes_out

    def abandon(self) -> None:
        """Stop writing without finishing (shutdown mid-call): the .part stays for recovery."""
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
        finally:
            self._f.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

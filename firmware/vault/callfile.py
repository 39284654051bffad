"""One call's recording, encrypted as it is written, that survives a power cut.

Two files per call while it is recorded (see docs/vault-format.md):

- ``<id>.<codec>.age.part`` — the age v1 file to the records recipient(s). Chunks 1, 2, …
  are sealed and written the moment they fill; chunk 0 (which holds the codec header) is
  kept in memory and written into a reserved hole at the end, so the encoder's final
  header patch (WAV sizes, Ogg/FLAC headers) always lands. At hang-up the file is
  completed, fsynced and renamed to ``<id>.<codec>.age``.
- ``<id>.<codec>.age.journal`` — the crash journal: every plaintext byte (and patch) as
  small age records to the *device recovery recipient*, fsynced at least every
  ``checkpoint_s`` seconds of audio. After a power cut, ``recover_call`` rebuilds the
  plaintext from it and writes a complete file to the records recipient; the journal is
  deleted when a call is finished or recovered. See docs/threat-model.md for what the
  device key exposes (calls in progress only).

All file operations go through ``Disk`` so the crash tests can record and replay them.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .age import (CHUNK, TAG, VERSION_LINE, AgeError, AgeWriter, X25519Identity, _b64, _hkdf, _nonce,
                  _x25519_stanza, decrypt_bytes)
from ..errors import VaultError
from .oggopus import OggOpusWriter

ENC_CHUNK = CHUNK + TAG
CODECS = {"opus": ("OGG", "OPUS", "opus"), "flac": ("FLAC", "PCM_16", "flac"), "wav": ("WAV", "PCM_16", "wav")}
# libsndfile maps 0..1 onto libFLAC levels 0..8; 0.25 is level 2, whose 1152-sample blocks
# (0.14 s at 8 kHz) keep the audio the encoder holds back well inside the 1 s crash budget.
# Levels 3-8 use 4096-sample blocks (0.51 s) for < 1 % smaller files on telephone speech.
FLAC_LEVEL = 0.25
_STREAMING_SIZE = b"\xff\xff\xff\xff"


class Disk:
    """The file operations a call file needs (real backend)."""

    def create(self, path: Path) -> int:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o640)

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view = view[n:]
            offset += n

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def sync(self, fd: int) -> None:
        os.fdatasync(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def rename(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def sync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def plain_audio(data: bytes | None = None):
    """An anonymous in-memory file (memfd: never on a disk, gone when closed) holding ``data``, as a
    file descriptor for libsndfile's ``sf_open_fd``. Not ``io.BytesIO``: soundfile reads a Python
    file object through cffi callbacks, which need write+execute memory, and the keeper and the page
    run with MemoryDenyWriteExecute=yes (systemd/). Yields the descriptor positioned at 0."""
    fd = memfd_with(data)
    try:
        yield fd
    finally:
        os.close(fd)


def memfd_with(data: bytes | None = None) -> int:
    """A new memfd holding ``data``, positioned at 0 (the caller closes it)."""
    fd = os.memfd_create("nokbox-audio", os.MFD_CLOEXEC)
    try:
        view = memoryview(data or b"")
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_all(fd: int) -> bytes:
    """Everything in the memfd ``fd`` (from its start)."""
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


class _Encoder:
    """The file object libsndfile writes the codec stream into."""

    def __init__(self, owner: "CallFile") -> None:
        self.o = owner
        self.pos = 0
        self.finalizing = False

    def write(self, data) -> int:
        b = bytes(data)
        if self.pos == 0 and not self.finalizing and len(b) >= 44 and b[:4] == b"RIFF" and b[36:40] == b"data":
            # streaming WAV sizes ("to the end of the file") until the real ones are known
            b = b[:4] + _STREAMING_SIZE + b[8:40] + _STREAMING_SIZE + b[44:]
        self.o._plain_write(self.pos, b)
        self.pos += len(b)
        return len(b)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self.pos = offset
        elif whence == io.SEEK_CUR:
            self.pos += offset
        else:
            self.pos = self.o.length + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        return b""


def _journal_record(device_recipient: bytes, payload: bytes) -> bytes:
    blob = io.BytesIO()
    w = AgeWriter(blob, [device_recipient])
    w.write(payload)
    w.close()
    data = blob.getvalue()
    return struct.pack(">I", len(data)) + data


class CallFile:
    """Writes one call; ``close`` completes it, ``abandon`` leaves it for recovery."""

    def __init__(self, final: Path, recipients: list[bytes], rate: int, device_recipient: bytes,
                 codec: str = "opus", opus_kbps: float = 16.0, checkpoint_s: float = 0.5,
                 disk: Disk | None = None, opus_complexity: int = 5) -> None:
        if codec not in CODECS:
            raise VaultError(f"unknown codec {codec!r}")
        self.final = Path(final)
        self.part = self.final.with_name(self.final.name + ".part")
        self.journal_path = self.final.with_name(self.final.name + ".journal")
        self.rate = rate
        self.codec = codec
        self.disk = disk or Disk()
        self._dev = device_recipient
        self.frames = 0
        self.dropped_patches = 0
        self._ckpt_every = max(1, int(checkpoint_s * rate))
        self._ckpt_frames = 0
        self.part.parent.mkdir(parents=True, exist_ok=True)
        # main file: header, payload nonce, hole for chunk 0
        file_key = os.urandom(16)
        header = VERSION_LINE + b"".join(_x25519_stanza(file_key, r) for r in recipients) + b"---"
        mac = hmac.new(_hkdf(file_key, b"", b"header"), header, hashlib.sha256).digest()
        nonce = os.urandom(16)
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        head = header + b" " + _b64(mac) + b"\n" + nonce
        self._payload_off = len(head)
        self._first = bytearray()  # chunk 0 plaintext, kept until close
        self._tail = bytearray()  # plaintext after the last sealed chunk (chunks >= 1)
        self._sealed = 0  # chunks >= 1 already written
        self._pending: list[tuple[int, bytes]] = []  # journal data not yet checkpointed
        self._fd = self.disk.create(self.part)
        self._jfd = self.disk.create(self.journal_path)
        self._jsize = 0
        self.disk.pwrite(self._fd, head, 0)
        meta = json.dumps({"v": 1, "codec": codec, "rate": rate, "opus_kbps": opus_kbps,
                           "opus_complexity": opus_complexity}).encode()
        self._journal_append(b"K" + meta)
        self.disk.sync(self._fd)
        self.disk.sync(self._jfd)
        self.disk.sync_dir(self.part.parent)
        self.size = self._payload_off
        major, sub, _ = CODECS[codec]
        self._enc = _Encoder(self)
        if codec == "opus":  # a page ends at every checkpoint (see checkpoint())
            self._snd = OggOpusWriter(self._enc, rate, opus_kbps, opus_complexity)
        else:
            kw = {"compression_level": FLAC_LEVEL} if codec == "flac" else {}
            self._snd = sf.SoundFile(self._enc, "w", samplerate=rate, channels=1, format=major, subtype=sub, **kw)

    # -- plaintext side -------------------------------------------------------------------
    @property
    def length(self) -> int:
        return len(self._first) + self._sealed * CHUNK + len(self._tail)

    def _plain_write(self, pos: int, b: bytes) -> None:
        length = self.length
        if pos > length:
            raise VaultError("codec wrote past the end of its stream")
        overlap = min(len(b), length - pos)
        if overlap:
            self._patch(pos, b[:overlap])
        if overlap < len(b):
            self._append(b[overlap:])

    def _patch(self, pos: int, b: bytes) -> None:
        end = pos + len(b)
        tail_start = CHUNK + self._sealed * CHUNK
        if end <= len(self._first):
            self._first[pos:end] = b
        elif pos >= tail_start:
            self._tail[pos - tail_start:end - tail_start] = b
        else:
            self.dropped_patches += 1  # inside an already sealed chunk: cannot change
            return
        self._pending.append((pos, b))

    def _append(self, b: bytes) -> None:
        self._pending.append((self.length, b))
        room = CHUNK - len(self._first)
        if room > 0:
            self._first += b[:room]
            b = b[room:]
        if b:
            self._tail += b
            while len(self._tail) > CHUNK:  # a full chunk is sealed once more data follows it
                idx = 1 + self._sealed
                ct = self._aead.encrypt(_nonce(idx, False), bytes(self._tail[:CHUNK]), None)
                self.disk.pwrite(self._fd, ct, self._payload_off + idx * ENC_CHUNK)
                del self._tail[:CHUNK]
                self._sealed += 1
                self.size = self._payload_off + (idx + 1) * ENC_CHUNK

    # -- journal ----------------------------------------------------------------------------
    def _journal_append(self, payload: bytes) -> None:
        rec = _journal_record(self._dev, payload)
        self.disk.pwrite(self._jfd, rec, self._jsize)
        self._jsize += len(rec)

    def checkpoint(self) -> None:
        """Make everything written so far survive a power cut (journal record + fdatasync)."""
        if isinstance(self._snd, OggOpusWriter):
            self._snd.flush()  # the journal can only use whole pages
        if self._pending:
            payload = b"D" + b"".join(struct.pack(">QI", off, len(b)) + b for off, b in self._pending)
            self._pending.clear()
            self._journal_append(payload)
        self.disk.sync(self._fd)
        self.disk.sync(self._jfd)
        self._ckpt_frames = self.frames

    # -- public ---------------------------------------------------------------------------
    def write(self, samples: np.ndarray) -> None:
        """Append int16 mono samples; checkpoints every ``checkpoint_s`` of audio."""
        if len(samples):
            self._snd.write(samples)
            self.frames += len(samples)
            if self.frames - self._ckpt_frames >= self._ckpt_every:
                self.checkpoint()

    def close(self, keep_journal: bool = False, end: dict | None = None) -> int:
        """Finish the call: encoder trailer, chunk 0 into its hole, final chunk, fsync, rename.

        The journal's last record states the frame count, so a cut between the rename and the
        index update still leaves the call's length known. With ``keep_journal`` the caller
        deletes the journal (``drop_journal``) once the index says ``finished``; ``end`` (the end
        reason, samples lost) goes into that record for the same purpose.
        """
        self._enc.finalizing = True
        self._snd.close()
        disk = self.disk
        self._journal_append(b"E" + json.dumps({**(end or {}), "frames": self.frames}).encode())
        if self._sealed == 0 and not self._tail:
            ct = self._aead.encrypt(_nonce(0, True), bytes(self._first), None)
            disk.truncate(self._fd, self._payload_off)
            disk.pwrite(self._fd, ct, self._payload_off)
            end = self._payload_off + len(ct)
        else:
            disk.pwrite(self._fd, self._aead.encrypt(_nonce(0, False), bytes(self._first), None),
                        self._payload_off)
            idx = 1 + self._sealed
            ct = self._aead.encrypt(_nonce(idx, True), bytes(self._tail), None)
            off = self._payload_off + idx * ENC_CHUNK
            disk.pwrite(self._fd, ct, off)
            end = off + len(ct)
            disk.truncate(self._fd, end)
        disk.sync(self._jfd)
        disk.sync(self._fd)
        disk.close(self._fd)
        disk.rename(self.part, self.final)
        disk.sync_dir(self.final.parent)
        disk.close(self._jfd)
        self.size = end
        if not keep_journal:
            self.drop_journal()
        return end

    def drop_journal(self) -> None:
        """Delete the finished call's journal (after the index has recorded the call)."""
        self.disk.unlink(self.journal_path)
        self.disk.sync_dir(self.final.parent)

    def abandon(self) -> None:
        """Stop without finishing (the process is going down): keep what the journal holds."""
        try:
            self.checkpoint()
        finally:
            self.disk.close(self._fd)
            self.disk.close(self._jfd)


# -- recovery ---------------------------------------------------------------------------------
@dataclass
class Recovered:
    """What recovery made of an interrupted call."""

    final: Path
    frames: int
    size: int
    plaintext_bytes: int
    journal_records: int
    complete: bool = False  # the call had been finished; only its journal was left
    end: dict = field(default_factory=dict)  # the journal's end record (reason, lost) when complete


def read_journal(path: Path, device_identity: str) -> tuple[dict | None, bytearray, int]:
    """The call's metadata and plaintext rebuilt from its journal; a torn last record is ignored.

    The metadata is None when even the start record did not reach the disk (the cut came
    before the call's first audio was handed to the writer).
    """
    ident = [X25519Identity(device_identity)]
    raw = Path(path).read_bytes()
    pos = 0
    meta: dict | None = None
    plain = bytearray()
    records = 0
    while pos + 4 <= len(raw):
        (n,) = struct.unpack(">I", raw[pos:pos + 4])
        blob = raw[pos + 4:pos + 4 + n]
        if len(blob) < n:
            break  # torn write at the cut
        try:
            payload = decrypt_bytes(bytes(blob), ident)
        except AgeError:
            break
        pos += 4 + n
        records += 1
        if payload[:1] == b"K":
            meta = json.loads(payload[1:])
        elif payload[:1] == b"E" and meta is not None:
            meta["end"] = json.loads(payload[1:])
        elif payload[:1] == b"D" and meta is not None:
            p = 1
            while p < len(payload):
                off, ln = struct.unpack(">QI", payload[p:p + 12])
                data = payload[p + 12:p + 12 + ln]
                p += 12 + ln
                if off > len(plain):
                    raise VaultError(f"{path}: journal skips plaintext bytes {len(plain)}..{off}")
                plain[off:off + ln] = data
    return meta, plain, records


def _decodable(codec: str, plain: bytes, rate: int) -> tuple[bytes, int]:
    """Cut the rebuilt stream to what decodes cleanly; returns (bytes, frames)."""
    if codec == "wav":
        if len(plain) < 44:
            return b"", 0
        frames = (len(plain) - 44) // 2
        data = bytearray(plain[:44 + 2 * frames])
        if data[:4] == b"RIFF" and data[36:40] == b"data":  # the real sizes, now that they are known
            data[4:8] = struct.pack("<I", 36 + 2 * frames)
            data[40:44] = struct.pack("<I", 2 * frames)
        return bytes(data), frames
    if codec == "flac":
        return _flac_prefix(plain, rate)
    # Ogg: keep whole pages only (each page says its own length)
    end = 0
    p = 0
    while p + 27 <= len(plain) and plain[p:p + 4] == b"OggS":
        nseg = plain[p + 26]
        if p + 27 + nseg > len(plain):
            break
        body = sum(plain[p + 27:p + 27 + nseg])
        q = p + 27 + nseg + body
        if q > len(plain):
            break
        p = end = q
    data = bytes(plain[:end])
    if not data:
        return b"", 0
    try:
        with plain_audio(data) as fd, sf.SoundFile(fd, closefd=False) as f:
            frames = sum(len(b) for b in f.blocks(blocksize=rate * 10, dtype="int16"))
    except (sf.LibsndfileError, RuntimeError):
        return b"", 0
    return data, frames


def _flac_prefix(plain: bytes, rate: int) -> tuple[bytes, int]:
    """Every whole FLAC frame of an interrupted stream, re-encoded as a complete file.

    An interrupted stream still carries the header libFLAC wrote at the start (sample count
    unknown), which libsndfile reads only up to the cut and then fails on. Each frame has its
    own CRC, so the samples decoded before the failure are exact; FLAC is lossless, so
    encoding them again gives the same samples with a header that states their number.
    """
    blocks = []
    try:
        with plain_audio(bytes(plain)) as fd, sf.SoundFile(fd, closefd=False) as f:
            while True:
                b = f.read(1152, dtype="int16")
                if not len(b):
                    break
                blocks.append(b)
    except (sf.LibsndfileError, RuntimeError):
        pass  # the torn frame at the cut, or the end of an unknown-length stream
    pcm = np.concatenate(blocks) if blocks else np.zeros(0, np.int16)
    if not len(pcm):
        return b"", 0
    with plain_audio() as fd:
        with sf.SoundFile(fd, "w", samplerate=rate, channels=1, format="FLAC", subtype="PCM_16",
                          compression_level=FLAC_LEVEL, closefd=False) as f:
            f.write(pcm)
        return read_all(fd), len(pcm)


class _Bytes:
    """A sink collecting what an encoder writes."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def write(self, b) -> int:
        self.buf += b
        return len(b)


def encode_pcm(pcm: np.ndarray, rate: int, codec: str, opus_kbps: float = 16.0, opus_complexity: int = 5) -> bytes:
    """A complete codec stream of int16 mono ``pcm`` (recovery's re-encoding), in memory."""
    if codec == "opus":
        sink = _Bytes()
        w = OggOpusWriter(sink, rate, opus_kbps, opus_complexity)
        w.write(pcm)
        w.close()
        return bytes(sink.buf)
    major, sub, _ = CODECS[codec]
    kw = {"compression_level": FLAC_LEVEL} if codec == "flac" else {}
    with plain_audio() as fd:
        with sf.SoundFile(fd, "w", samplerate=rate, channels=1, format=major, subtype=sub, closefd=False, **kw) as f:
            f.write(pcm)
        return read_all(fd)


def decode_pcm(data: bytes) -> np.ndarray:
    """The int16 samples of a complete codec stream (through a memfd, see ``plain_audio``)."""
    if not data:
        return np.zeros(0, np.int16)
    with plain_audio(data) as fd, sf.SoundFile(fd, closefd=False) as f:
        return f.read(dtype="int16")


def recover_call(final: Path, recipients: list[bytes], device_identity: str,
                 disk: Disk | None = None, ahead=None) -> Recovered | None:
    """Finish an interrupted call from its journal; None if there is nothing to recover.

    ``ahead``: the call's write-ahead journal (``ahead.AheadContents``, confirmed with this call's
    start sample): the audio it holds beyond what the call journal had encoded is appended (the
    whole call is then encoded again: exact for WAV and FLAC; an Opus call's audio before the cut
    passes the encoder twice).
    """
    disk = disk or Disk()
    final = Path(final)
    part = final.with_name(final.name + ".part")
    journal = final.with_name(final.name + ".journal")
    if final.exists():
        # the call was finished; only the index update or the journal's deletion was cut short
        if not journal.exists():
            return None
        meta, _, records = read_journal(journal, device_identity)
        disk.unlink(journal)
        disk.sync_dir(final.parent)
        end = (meta or {}).get("end") or {}
        return Recovered(final, int(end.get("frames", 0)), final.stat().st_size, 0, records, complete=True, end=end)
    has_ahead = ahead is not None and ahead.confirmed and ahead.meta
    if not journal.exists() and not has_ahead:
        return None
    meta, plain, records = read_journal(journal, device_identity) if journal.exists() else (None, b"", 0)
    data, frames = _decodable(meta["codec"], plain, meta["rate"]) if meta else (b"", 0)
    if meta is None and has_ahead:  # the cut came before the call journal's first record
        meta = {k: ahead.meta[k] for k in ("codec", "rate", "opus_kbps", "opus_complexity") if k in ahead.meta}
    if meta and has_ahead:
        more = ahead.audio_from(int(ahead.confirmed["start"]) + frames)
        if len(more):
            pcm = np.concatenate((decode_pcm(data)[:frames], more)) if frames else more
            data = encode_pcm(pcm, meta["rate"], meta["codec"], float(meta.get("opus_kbps", 16.0)),
                              int(meta.get("opus_complexity", 5)))
            frames = len(pcm)
    if frames == 0:  # the cut came before any audio reached the disk
        for f in (part, journal):
            if f.exists():
                disk.unlink(f)
        disk.sync_dir(final.parent)
        return None
    tmp = final.with_name(final.name + ".recovering")
    final.parent.mkdir(parents=True, exist_ok=True)
    if tmp.exists():
        disk.unlink(tmp)
    fd = disk.create(tmp)
    buf = io.BytesIO()
    w = AgeWriter(buf, recipients)
    w.write(data)
    w.close()
    blob = buf.getvalue()
    disk.pwrite(fd, blob, 0)
    disk.sync(fd)
    disk.close(fd)
    disk.rename(tmp, final)
    disk.sync_dir(final.parent)
    if part.exists():
        disk.unlink(part)
    if journal.exists():
        disk.unlink(journal)
    disk.sync_dir(final.parent)
    return Recovered(final, frames, len(blob), len(data), records)

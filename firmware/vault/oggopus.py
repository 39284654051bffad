"""An Ogg Opus stream writer on the system's libopus and libogg (through ctypes).

Why not libsndfile, which the box uses for every other codec: its Ogg Opus encoder fixes the
encoder complexity at 10 and the application at "audio" (with the music/speech analysis
that comes with it), which costs ~97 CPU seconds per line-hour at 8 kHz on the development
machine (benchmarks/vault.py). Speech at 16 kbit/s needs neither: libopus in VoIP mode at
complexity 5 scores the same PESQ for about a sixth of the CPU. libopus and libogg are the
libraries libsndfile itself links (Debian libopus0, libogg0), so nothing new is installed.

libopus encodes; libogg frames the pages (CRC, lacing, page flushes). This module writes only
the two header packets RFC 7845 defines (OpusHead, OpusTags) and the granule positions.
Reading uses libsndfile as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import struct
import threading

import numpy as np

from ..errors import VaultError

OPUS_APPLICATION_VOIP = 2048
OPUS_SET_BITRATE = 4002
OPUS_SET_COMPLEXITY = 4010
OPUS_SET_SIGNAL = 4024
OPUS_SIGNAL_VOICE = 3001
OPUS_GET_LOOKAHEAD = 4027
RATES = (8000, 12000, 16000, 24000, 48000)
FRAME_MS = 20
MAX_PACKET = 4000
VENDOR = b"nokbox (libopus)"


class _Page(ctypes.Structure):
    _fields_ = [("header", ctypes.POINTER(ctypes.c_ubyte)), ("header_len", ctypes.c_long),
                ("body", ctypes.POINTER(ctypes.c_ubyte)), ("body_len", ctypes.c_long)]


class _Packet(ctypes.Structure):
    _fields_ = [("packet", ctypes.c_void_p), ("bytes", ctypes.c_long), ("b_o_s", ctypes.c_long),
                ("e_o_s", ctypes.c_long), ("granulepos", ctypes.c_int64), ("packetno", ctypes.c_int64)]


_STREAM_STATE_BYTES = 1024  # sizeof(ogg_stream_state) is 408 on 64-bit Linux; room to spare
_libs: tuple | None = None
_lock = threading.Lock()


def _load() -> tuple:
    global _libs
    with _lock:
        if _libs is None:
            names = {"opus": ctypes.util.find_library("opus") or "libopus.so.0",
                     "ogg": ctypes.util.find_library("ogg") or "libogg.so.0"}
            try:
                opus, ogg = ctypes.CDLL(names["opus"]), ctypes.CDLL(names["ogg"])
            except OSError as exc:
                raise VaultError(f"libopus/libogg not found ({exc}); install libopus0 and libogg0") from None
            opus.opus_encoder_create.restype = ctypes.c_void_p
            opus.opus_encoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.c_int,
                                                 ctypes.POINTER(ctypes.c_int)]
            opus.opus_encode.restype = ctypes.c_int32
            opus.opus_encode.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                         ctypes.c_int32]
            opus.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
            opus.opus_encoder_ctl.restype = ctypes.c_int
            opus.opus_strerror.restype = ctypes.c_char_p
            for fn in ("ogg_stream_pageout", "ogg_stream_flush"):
                getattr(ogg, fn).argtypes = [ctypes.c_void_p, ctypes.POINTER(_Page)]
            ogg.ogg_stream_packetin.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Packet)]
            ogg.ogg_stream_init.argtypes = [ctypes.c_void_p, ctypes.c_int]
            ogg.ogg_stream_clear.argtypes = [ctypes.c_void_p]
            _libs = (opus, ogg)
        return _libs


class OggOpusWriter:
    """Mono int16 in, an Ogg Opus stream out through ``sink.write(bytes)``.

    ``page_ms`` bounds the audio a page holds before it is flushed to the sink; ``flush()``
    ends the page at once (the call writer does so at every checkpoint, because the crash
    journal can only use whole pages).
    """

    def __init__(self, sink, rate: int, kbps: float = 16.0, complexity: int = 5, page_ms: float = 1000.0,
                 serial: int | None = None) -> None:
        if rate not in RATES:
            raise VaultError(f"Opus needs one of {RATES} Hz, not {rate}")
        self._opus, self._ogg = _load()
        self.sink = sink
        self.rate = rate
        self._factor = 48000 // rate
        self._frame = rate * FRAME_MS // 1000
        err = ctypes.c_int(0)
        enc = self._opus.opus_encoder_create(rate, 1, OPUS_APPLICATION_VOIP, ctypes.byref(err))
        if not enc or err.value != 0:
            raise VaultError(f"opus_encoder_create: {self._opus.opus_strerror(err.value).decode()}")
        self._enc = ctypes.c_void_p(enc)
        for req, val in ((OPUS_SET_BITRATE, int(kbps * 1000)), (OPUS_SET_COMPLEXITY, int(complexity)),
                         (OPUS_SET_SIGNAL, OPUS_SIGNAL_VOICE)):
            rc = self._opus.opus_encoder_ctl(self._enc, ctypes.c_int(req), ctypes.c_int32(val))
            if rc != 0:
                raise VaultError(f"opus_encoder_ctl({req}): {self._opus.opus_strerror(rc).decode()}")
        look = ctypes.c_int32(0)
        self._opus.opus_encoder_ctl(self._enc, ctypes.c_int(OPUS_GET_LOOKAHEAD), ctypes.byref(look))
        self.preskip = look.value * self._factor  # in 48 kHz samples, as RFC 7845 counts
        self._os = ctypes.create_string_buffer(_STREAM_STATE_BYTES)
        if serial is None:
            serial = int.from_bytes(np.random.default_rng().bytes(4), "little") & 0x7FFFFFFF
        self._ogg.ogg_stream_init(self._os, serial)
        self._page_granules = int(page_ms * 48)
        self._buf = np.zeros(self._frame, np.int16)  # preallocated frame being assembled
        self._fill = 0
        self._out = ctypes.create_string_buffer(MAX_PACKET)
        self._packetno = 0
        self._granule = 0  # 48 kHz samples of audio handed to packets so far (incl. pre-skip)
        self._last_flush = 0
        self.frames = 0
        self._closed = False
        head = b"OpusHead" + struct.pack("<BBHIhB", 1, 1, self.preskip, rate, 0, 0)
        tags = b"OpusTags" + struct.pack("<I", len(VENDOR)) + VENDOR + struct.pack("<I", 0)
        self._packet(head, 0, bos=True)
        self._pages(flush=True)
        self._packet(tags, 0)
        self._pages(flush=True)

    # -- libogg ---------------------------------------------------------------------------
    def _packet(self, data: bytes, granule: int, *, bos: bool = False, eos: bool = False) -> None:
        buf = ctypes.create_string_buffer(data, len(data))
        pkt = _Packet(ctypes.cast(buf, ctypes.c_void_p), len(data), int(bos), int(eos), granule, self._packetno)
        self._packetno += 1
        if self._ogg.ogg_stream_packetin(self._os, ctypes.byref(pkt)) != 0:
            raise VaultError("ogg_stream_packetin failed")

    def _pages(self, *, flush: bool) -> None:
        page = _Page()
        fn = self._ogg.ogg_stream_flush if flush else self._ogg.ogg_stream_pageout
        while fn(self._os, ctypes.byref(page)):
            self.sink.write(ctypes.string_at(page.header, page.header_len) + ctypes.string_at(page.body, page.body_len))

    # -- libopus --------------------------------------------------------------------------
    def _encode(self, *, eos: bool = False, granule: int | None = None) -> None:
        n = self._opus.opus_encode(self._enc, self._buf.ctypes.data, self._frame, self._out, MAX_PACKET)
        if n < 0:
            raise VaultError(f"opus_encode: {self._opus.opus_strerror(n).decode()}")
        self._granule += self._frame * self._factor
        self._packet(self._out.raw[:n], self._granule if granule is None else granule, eos=eos)
        if eos or self._granule - self._last_flush >= self._page_granules:
            self._pages(flush=True)
            self._last_flush = self._granule
        else:
            self._pages(flush=False)

    def flush(self) -> None:
        """Put every packet encoded so far into a page and hand it to the sink."""
        if self._granule > self._last_flush:
            self._pages(flush=True)
            self._last_flush = self._granule

    def write(self, samples: np.ndarray) -> None:
        x = np.asarray(samples, dtype=np.int16).reshape(-1)
        self.frames += len(x)
        pos = 0
        while pos < len(x):
            take = min(self._frame - self._fill, len(x) - pos)
            self._buf[self._fill:self._fill + take] = x[pos:pos + take]
            self._fill += take
            pos += take
            if self._fill == self._frame:
                self._encode()
                self._fill = 0

    def close(self) -> None:
        """Encode what is left (padded with silence through the encoder's delay), end the stream."""
        if self._closed:
            return
        self._closed = True
        try:
            end = self.frames * self._factor + self.preskip  # granule of the last real sample
            while True:
                self._buf[self._fill:] = 0
                self._fill = 0
                if self._granule + self._frame * self._factor >= end:
                    self._encode(eos=True, granule=end)
                    break
                self._encode()
        finally:
            self._ogg.ogg_stream_clear(self._os)
            self._opus.opus_encoder_destroy(self._enc)

"""Goertzel tone analysis over fixed frames: DTMF (ITU-T Q.24) and call-progress tones.

Everything here works on whole chunks of frames; the per-window detectors are numba
kernels (``half_terms``, ``analyse_windows``). The Goertzel filter's output after N
samples is the DFT term ``X(f) = sum x[n] e^{-j 2 pi f n / fs}`` at an arbitrary
frequency f; ``GoertzelBank`` computes exactly that term for many frequencies and
many consecutive half-frames at once as one matrix product, with every term's phase
referred to the absolute sample index. Because of that reference, the term of a
longer window is the plain sum of its half-frames' terms, and the phase advance
between consecutive half-frames measures a tone's frequency offset (used for the
Q.24 frequency tolerance). ``goertzel`` is the textbook recursion, kept as the
reference the tests compare the bank against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ._jit import helper, kernel

DTMF_LOW = (697.0, 770.0, 852.0, 941.0)
DTMF_HIGH = (1209.0, 1336.0, 1477.0, 1633.0)
DTMF_KEYS = "123A456B789C*0#D"  # index = row * 4 + column
# A 20 ms window measures each tone's level to within about +-0.5 dB: the twist limits get this
# margin so that a digit exactly at the limit (Q.24: accept 8 dB / 4 dB) is never refused.
TWIST_MARGIN_DB = 1.0
_NONE: dict[int, np.ndarray] = {}


def no_codes(n: int) -> np.ndarray:
    """A read-only array of n times -1 ("nothing"), shared: the common result costs no allocation."""
    a = _NONE.get(n)
    if a is None:
        a = np.full(n, -1, dtype=np.int64)
        a.flags.writeable = False
        _NONE[n] = a
    return a


@dataclass(frozen=True)
class ToneSpec:
    """One call-progress tone: its frequencies and cadence (``off_s`` = 0 for continuous)."""

    name: str
    freqs: tuple[float, ...]
    on_s: float = 0.0
    off_s: float = 0.0
    ends_call: bool = False  # hang-up evidence (busy, reorder)

    @property
    def continuous(self) -> bool:
        return self.off_s <= 0.0


# Defaults for Korea: dial 350+440 continuous, ringback 440+480 1 s / 2 s, busy 480+620
# 0.5 s / 0.5 s, congestion (reorder) 480+620 0.3 s / 0.2 s. Every value is configurable.
KOREA_TONES = (
    ToneSpec("dial", (350.0, 440.0)),
    ToneSpec("ringback", (440.0, 480.0), 1.0, 2.0),
    ToneSpec("busy", (480.0, 620.0), 0.5, 0.5, ends_call=True),
    ToneSpec("reorder", (480.0, 620.0), 0.3, 0.2, ends_call=True),
)


def goertzel(x: np.ndarray, freq: float, rate: int) -> complex:
    """Textbook Goertzel recursion: the DFT term of ``x`` at ``freq`` (phase from x[0])."""
    w = 2.0 * np.pi * freq / rate
    coeff = 2.0 * np.cos(w)
    s1 = s2 = 0.0
    for v in np.asarray(x, dtype=np.float64):
        s0 = v + coeff * s1 - s2
        s2, s1 = s1, s0
    # y[N-1] = s1 - e^{-jw} s2; the DFT term is e^{-jw(N-1)} y[N-1]
    n = len(x)
    return complex((s1 - np.exp(-1j * w) * s2) * np.exp(-1j * w * (n - 1)))


class GoertzelBank:
    """DFT terms at fixed frequencies for consecutive blocks of ``block`` samples."""

    def __init__(self, freqs: list[float], rate: int, block: int) -> None:
        self.freqs = np.asarray(freqs, dtype=np.float64)
        self.rate = rate
        self.block = block
        w = 2.0 * np.pi * self.freqs / rate
        n = np.arange(block, dtype=np.float64)[:, None]
        # one real matrix with columns cos, -sin interleaved: a single float32 GEMM whose
        # output rows read directly as complex64 values
        basis = np.empty((block, 2 * len(w)), dtype=np.float32)
        basis[:, 0::2] = np.cos(n * w)
        basis[:, 1::2] = -np.sin(n * w)
        self._basis = basis
        self._k = len(self.freqs)
        self._steps: dict[int, np.ndarray] = {}
        # the same basis frequency-major: rows cos for every frequency, then -sin for every frequency
        self._basis_t = np.ascontiguousarray(np.concatenate((basis[:, 0::2], basis[:, 1::2]), axis=1).T)
        self._steps_t: dict[int, np.ndarray] = {}
        # with whole-Hz frequencies, a block's phase factor depends only on first_sample modulo the rate
        # (the products are exact integers in float64), so it is computed once per residue
        self._int_freqs = bool(np.all(self.freqs == np.round(self.freqs))) and float(np.abs(self.freqs).max(initial=0.0)) * rate < 2.0 ** 40
        self._p0_t: dict[int, np.ndarray] = {}

    def _step_table(self, m: int) -> np.ndarray:
        """Phase of block i relative to block 0: e^{-j w i block}, cached per block count."""
        t = self._steps.get(m)
        if t is None:
            i = np.arange(m, dtype=np.float64)[:, None] * self.block
            t = np.exp(-2j * np.pi * np.mod(i * self.freqs, self.rate) / self.rate).astype(np.complex64)
            self._steps[m] = t
        return t

    def terms(self, blocks: np.ndarray, first_sample: int) -> np.ndarray:
        """(M, block) float32 samples starting at absolute ``first_sample`` -> (M, K) complex64."""
        y = np.ascontiguousarray(blocks, dtype=np.float32) @ self._basis
        c = y.view(np.complex64)
        c *= self._step_table(len(c))
        c *= np.exp(-2j * np.pi * np.mod(float(first_sample) * self.freqs, self.rate) / self.rate).astype(np.complex64)
        return c

    def raw_t(self, blocks: np.ndarray) -> np.ndarray:
        """(M, block) float32 samples -> (2K, M) float32: the cos rows, then the -sin rows, of
        each block's terms with the phase of its own first sample (``half_terms`` refers them to
        the absolute sample index, as ``terms`` does)."""
        return self._basis_t @ np.asarray(blocks, dtype=np.float32).T

    def phase_t(self, m: int, first_sample: int) -> tuple[np.ndarray, np.ndarray]:
        """The factors that refer ``raw_t``'s m blocks to the absolute sample index: (K, m) per
        block, then (K, 1) for the first sample (complex64, cached)."""
        t = self._steps_t.get(m)
        if t is None:
            t = self._steps_t[m] = np.ascontiguousarray(self._step_table(m).T)
        return t, self._p0(first_sample)

    def _p0(self, first_sample: int) -> np.ndarray:
        """(K, 1) complex64 phase factors of a block starting at absolute ``first_sample``."""
        key = first_sample % self.rate if self._int_freqs else None
        p0 = self._p0_t.get(key) if key is not None else None
        if p0 is None:
            # mod(first * f, rate) == mod((first mod rate) * f, rate) exactly for whole-Hz f
            fs = float(key if key is not None else first_sample)
            p0 = np.exp(-2j * np.pi * np.mod(fs * self.freqs, self.rate)
                        / self.rate).astype(np.complex64)[:, None]
            if key is not None:
                self._p0_t[key] = p0
        return p0

@dataclass(frozen=True)
class DtmfParams:
    """Q.24 acceptance: frequency tolerance, twist, levels, timing in 10 ms windows."""

    freq_tol: float = 0.025  # accept up to 1.5 %, reject from 3.5 %: decide halfway
    normal_twist_db: float = 8.0  # low-group (row) tone may be this much louder than the high-group tone
    reverse_twist_db: float = 4.0  # high-group tone may be this much louder than the low-group tone
    min_level_dbfs: float = -42.0  # each tone, RMS
    min_fraction: float = 0.8  # the two tones' share of the window's power (call-progress tones excluded)
    on_windows: int = 3  # 20 ms windows every 10 ms: 3 valid in a row span >= 40 ms of tone
    off_windows: int = 2  # a digit ends after 2 invalid windows (a pause of >= 30-40 ms)
    balance: float = 0.4  # both 10 ms halves of a window must carry the tone


@helper
def _dtmf_window(ch_hist, ch, e, i, row, col, pr, pc, ew, flen, rate, freqs, freq_tol, floor, twist_lo, twist_hi,
                 min_fraction, balance):
    """The key index 0-15 of the 20 ms window ending at frame ``i``, or -1, for a window that
    passed the screen in ``analyse_windows``.

    ``row``/``col``: its strongest row and column tone (``pr``/``pc``: their mean-square
    powers), ``ew``: the window's mean-square power less the call-progress tones'; ``ch``: (K,
    2F) half-frame terms, ``ch_hist`` the 2 before them; ``e``: (F + 1,) frame energies (first =
    the frame before). Q.24: each tone within ``freq_tol`` of its frequency (measured from the
    phase advance between half-frames, ±100 Hz unambiguous), each >= ``floor`` after correcting
    the window's loss for the offset, twist within ``twist_lo``..``twist_hi`` dB, the two holding
    >= ``min_fraction`` of the window's power, and both 10 ms halves carrying the tone
    (``balance``).
    """
    n2 = 2 * flen
    half = flen // 2
    # frequency offsets: the phase advance between the window's 4 consecutive half-frames
    off = np.empty(2, np.float32)
    for t in range(2):
        k = row if t == 0 else col
        acc = np.complex64(0)
        for step in range(1, 4):
            j1 = 2 * i + step  # half-frame index with the 2 history half-frames first
            j0 = j1 - 1
            h1 = ch_hist[k, j1] if j1 < 2 else ch[k, j1 - 2]
            h0 = ch_hist[k, j0] if j0 < 2 else ch[k, j0 - 2]
            acc = h1 * np.conj(h0) if step == 1 else acc + h1 * np.conj(h0)
        off[t] = np.arctan2(acc.imag, acc.real) * np.float32(rate) / np.float32(2.0 * np.pi * half)
        if abs(off[t] / freqs[k]) > freq_tol:
            return -1
    # undo the window's loss for the offset (the magnitude response of an n2-sample DFT term)
    pw = np.empty(2, np.float32)
    for t in range(2):
        x = off[t] * np.float32(n2) / np.float32(rate)
        y = np.float32(np.pi) * (x if x != 0 else np.float32(1.0e-20))
        g = max(abs(np.sin(y) / y), np.float32(0.2))
        pw[t] = (pr if t == 0 else pc) / (g * g)
    # both powers are > 0 here (the screen asked >= 0.3 floor of each)
    twist = np.float32(10.0) * np.log10(pw[1] / pw[0])
    frac = np.float64(pw[0] + pw[1]) / max(ew, 1e-9)
    e0, e1 = e[i], e[i + 1]  # the window's two frames
    if (min(pw[0], pw[1]) >= floor and twist >= twist_lo and twist <= twist_hi and frac >= min_fraction
            and min(e1, e0) >= balance * max(e1, e0)):
        return row * 4 + (col - 4)
    return -1


@helper
def _strongest(p2, i, lo, c):
    """The strongest of the 4 DTMF tones in rows ``lo``..``lo + 3`` of window ``i`` (the first on a
    tie): (its mean-square power, its row)."""
    best = lo
    top = p2[lo, i] * c
    for r in range(lo + 1, lo + 4):
        v = p2[r, i] * c
        if v > top:
            top, best = v, r
    return top, best


@helper
def _window_powers(ch, cf_hist, n2):
    """Window powers from half-frame terms: (p2, p4, the last 3 frames' terms).

    p2[k, i]: |20 ms window term|^2 (frames i-1, i) for rows k < n2; p4[k - 8, i]: |40 ms window
    term|^2 (frames i-3 .. i) for rows k >= 8. ``cf_hist``: the 3 frames before the chunk.
    """
    nk = ch.shape[0]
    nf = ch.shape[1] // 2
    cf = np.empty((nk, nf + 3), np.complex64)
    p2 = np.empty((n2, nf), np.float32)
    p4 = np.empty((nk - 8, nf), np.float32)
    for k in range(nk):
        cf[k, 0] = cf_hist[k, 0]
        cf[k, 1] = cf_hist[k, 1]
        cf[k, 2] = cf_hist[k, 2]
        src = ch[k]
        dst = cf[k, 3:]
        for i in range(nf):
            dst[i] = src[2 * i] + src[2 * i + 1]
    for k in range(n2):
        row = cf[k]
        out = p2[k]
        for i in range(nf):
            a = row[i + 3] + row[i + 2]
            out[i] = a.real * a.real + a.imag * a.imag
    for k in range(8, nk):
        row = cf[k]
        out = p4[k - 8]
        for i in range(nf):
            w = (row[i + 3] + row[i + 2]) + (row[i + 1] + row[i])
            out[i] = w.real * w.real + w.imag * w.imag
    return p2, p4, cf[:, nf:].copy()


@helper
def _tone_window(p4, ms, i, cols, valid, c, min_fraction, lim):
    """The call-progress group filling the 40 ms window ending at frame ``i``, or -1, for a
    window that passed the screen in ``analyse_windows`` (``p4``: |40 ms window term|^2 per
    frequency from the first call-progress tone on; ``ms``: the window's mean-square power)."""
    best = -1
    top = -1.0
    for g in range(cols.shape[0]):
        tot = np.float32(0.0)
        low = np.float32(np.inf)
        for m in range(cols.shape[1]):
            if valid[g, m]:
                v = p4[cols[g, m], i] * c
                tot += v
                low = min(low, v)
        # every component present (a lone 440 Hz is not dial tone), loud enough
        score = np.float64(tot) / ms if (low >= np.float32(0.12) * tot and tot >= lim) else 0.0
        if score > top:
            top, best = score, g
    return best if top >= min_fraction else -1


@helper
def half_terms(y, steps, p0, near):
    """(K, M) complex64 half-frame terms, frequency-major, from ``GoertzelBank.raw_t`` and
    ``phase_t``: ``(cos row + j -sin row) * steps * p0``, and 0 in the half-frames of frames
    whose ``near`` is False (none of their windows can hold a tone: see the spectral gate)."""
    nk = y.shape[0] // 2
    nh = y.shape[1]
    ch = np.empty((nk, nh), np.complex64)
    for k in range(nk):
        pk = p0[k, 0]
        yr = y[k]
        yi = y[nk + k]
        st = steps[k]
        out = ch[k]
        for m in range(nh):
            c = np.complex64(yr[m] + 1j * yi[m])
            c = c * st[m]
            out[m] = c * pk
    for i in range(nh // 2):
        if not near[i]:
            for k in range(nk):
                ch[k, 2 * i] = 0
                ch[k, 2 * i + 1] = 0
    return ch


@kernel
def analyse_windows(y, steps, p0, near, ch_hist, cf_hist, e, n2, t_lo, t_hi, flen, rate, freqs, freq_tol, dtmf_floor, twist_lo,
                    twist_hi, dtmf_fraction, balance, cols, valid, nt, tone_fraction, tone_lim, mark_lo, mark_hi):
    """Every window detector of one chunk in one pass over its half-frame Goertzel terms.

    ``y``, ``steps``, ``p0``: ``GoertzelBank.raw_t`` and ``phase_t`` of the chunk's half-frames;
    the half-frame terms (frequency-major, rows 0-7 the DTMF frequencies, then the call-progress
    frequencies, then the FSK marks) are ``(cos row + j -sin row) * steps * p0``, and 0 in frames
    whose ``near`` is False (none of their windows can hold a tone: see the spectral gate).
    ``ch_hist``/``cf_hist``: the 2 half-frames' / 3 frames' terms before the chunk; ``e``:
    (F + 3,) frame energies, the 3 frames before first. Returns per frame the DTMF key code of
    the 20 ms window ending there (``_dtmf_window``), the call-progress group of the 40 ms window
    (``_tone_window``), whether that window is a steady FSK mark, how many of each were found,
    and the new ``ch_hist`` and ``cf_hist``.
    """
    nh = y.shape[1]
    nf = nh // 2
    ch = half_terms(y, steps, p0, near)
    p2, p4, cf_next = _window_powers(ch, cf_hist, n2)
    codes = np.full(nf, -1, np.int64)
    labels = np.full(nf, -1, np.int64)
    mark = np.zeros(nf, np.bool_)
    n4 = 4 * flen
    c4 = np.float32(2.0 / (n4 * n4))
    n2w = 2 * flen
    c2 = np.float32(2.0 / (n2w * n2w))
    ee = e[2:]
    found = np.zeros(3, np.int64)
    for i in range(nf):
        # DTMF: the window's mean-square power less the call-progress tones' (digits are read over
        # dial tone), its strongest row and column tone (the first on a tie)
        ew = (ee[i + 1] + ee[i]) / n2w
        if t_hi > t_lo:
            s = p2[t_lo, i]
            for r in range(t_lo + 1, t_hi):
                s += p2[r, i]
            ew = ew - np.float64(s * c2)
        pr, row = _strongest(p2, i, 0, c2)
        pc, col = _strongest(p2, i, 4, c2)
        # cheap screen first (a tone 2.5 % off loses at most ~4 dB in a 20 ms window)
        if (np.float64(pr + pc) >= 0.4 * max(ew, 1e-9) * dtmf_fraction
                and np.float64(min(pr, pc)) >= 0.3 * dtmf_floor):
            d = _dtmf_window(ch_hist, ch, ee, i, row, col, pr, pc, ew, flen, rate, freqs, freq_tol, dtmf_floor,
                             twist_lo, twist_hi, dtmf_fraction, balance)
            if d >= 0:
                codes[i] = d
                found[0] += 1
        e4 = ((e[i + 3] + e[i + 2]) + (e[i + 1] + e[i]))  # the 40 ms window's energy
        ms = e4 / n4
        if nt > 0:
            # screen: a group's power is at most the power of all tone frequencies together (the
            # margin keeps the screen from refusing a window the exact test would accept)
            s = p4[0, i]
            for r in range(1, nt):
                s += p4[r, i]
            if np.float64(s * c4) >= (0.999 * tone_fraction) * ms and ms >= tone_lim:
                g = _tone_window(p4, ms, i, cols, valid, c4, tone_fraction, tone_lim)
                if g >= 0:
                    labels[i] = g
                    found[1] += 1
        if mark_hi > mark_lo:
            # FSK caller ID: a steady 1200 or 1300 Hz mark holding >= 70 % of a window >= -40 dBFS
            pm = p4[mark_lo, i]
            for r in range(mark_lo + 1, mark_hi):
                pm = max(pm, p4[r, i])
            pm = pm * c4
            lim = (32768.0 ** 2) * 1e-4
            if np.float64(pm) / max(ms, lim) >= 0.7 and ms >= lim:
                mark[i] = True
                found[2] += 1
    return codes, labels, mark, found, ch[:, nh - 2:].copy(), cf_next


class DtmfSequencer:
    """Turns per-window key codes into digits: on for >= on_windows, pause >= off_windows."""

    def __init__(self, p: DtmfParams) -> None:
        self.p = p
        self.cur = -1
        self.count = 0
        self.gap = 0
        self.emitted = False

    def feed(self, codes: np.ndarray, first_frame: int) -> list[tuple[int, str]]:
        """Digits as (frame index where the tone began, key)."""
        out: list[tuple[int, str]] = []
        if len(codes) == 0:
            return out
        p = self.p
        if codes is _NONE.get(len(codes)) or codes.max() < 0:  # no key anywhere (the common case): one pause
            self.gap += len(codes)
            if self.gap >= p.off_windows:
                self.cur, self.count, self.emitted = -1, 0, False
            return out
        change = np.flatnonzero(np.diff(codes)) + 1
        starts = np.concatenate(([0], change))
        ends = np.concatenate((change, [len(codes)]))
        for s, e in zip(starts.tolist(), ends.tolist()):
            c = int(codes[s])
            n = e - s
            if c < 0:
                self.gap += n
                if self.gap >= p.off_windows:
                    self.cur, self.count, self.emitted = -1, 0, False
                continue
            if c == self.cur and self.gap < p.off_windows:
                self.count += n
            else:
                self.cur, self.count, self.emitted = c, n, False
                self._began = first_frame + s - 1  # the window ending at frame i starts at i-1
            self.gap = 0
            if not self.emitted and self.count >= p.on_windows:
                out.append((self._began, DTMF_KEYS[c]))
                self.emitted = True
        return out


def rows_of(idx) -> slice | np.ndarray | None:
    """A run of consecutive row indices as a slice (a view, not a copy)."""
    idx = np.asarray(idx)
    if len(idx) == 0:
        return None
    if np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx))):
        return slice(int(idx[0]), int(idx[0]) + len(idx))
    return idx


class GroupTable(NamedTuple):
    """Rows of each group's frequencies as a (groups, components) index table (padded), its mask
    (None when every group has the same number of components) and the rows read (0 .. nt-1)."""

    cols: np.ndarray
    valid: np.ndarray | None
    nt: int


def group_table(groups: list[list[int]]) -> GroupTable:
    """The ``GroupTable`` of the given groups of row indices."""
    w = max((len(g) for g in groups), default=0)
    cols = np.asarray([list(g) + [g[0]] * (w - len(g)) for g in groups], dtype=np.int64)
    valid = np.asarray([[i < len(g) for i in range(w)] for g in groups])
    return GroupTable(cols, None if valid.all() else valid, int(cols.max()) + 1 if cols.size else 0)


class CadenceTracker:
    """Follows bursts of each tone group and names them by the configured cadences."""

    def __init__(self, specs: tuple[ToneSpec, ...], group_of: list[int], frame_s: float,
                 tol: float = 0.25, continuous_s: float = 0.5) -> None:
        self.specs = specs
        self.group_of = group_of  # spec index -> group index
        self.fs = frame_s
        self.tol = tol
        self.cont_frames = int(round(continuous_s / frame_s))
        self.run_label = -1
        self.run_start = 0
        self.cont_done = False
        self.last_end: dict[int, int] = {}  # group -> frame after its last burst
        self.matches = [0] * len(specs)
        self.last_frame_of: dict[int, int] = {}  # group -> last frame the group was heard

    def _near(self, frames: int, target_s: float) -> bool:
        t = frames * self.fs
        return abs(t - target_s) <= max(self.tol * target_s, 0.08)

    def feed(self, labels: np.ndarray, first_frame: int) -> list[tuple[int, str]]:
        """Tone events as (frame, spec name) when a tone is recognised."""
        out: list[tuple[int, str]] = []
        if len(labels) == 0 or (self.run_label < 0 and (labels is _NONE.get(len(labels)) or labels.max() < 0)):
            return out  # no tone before or in this block
        change = np.flatnonzero(np.diff(labels)) + 1
        starts = np.concatenate(([0], change))
        ends = np.concatenate((change, [len(labels)]))
        for s, e in zip(starts.tolist(), ends.tolist()):
            lab = int(labels[s])
            fs_, fe = first_frame + s, first_frame + e
            if lab != self.run_label:
                self._close(fs_, out)
                self.run_label = lab
                self.run_start = fs_
                self.cont_done = False
            if lab >= 0:
                self.last_frame_of[lab] = fe - 1
                if not self.cont_done and fe - self.run_start >= self.cont_frames:
                    # the frame that completes continuous_s of tone (never past this block's last frame)
                    for i, sp in enumerate(self.specs):
                        if sp.continuous and self.group_of[i] == lab:
                            out.append((self.run_start + self.cont_frames - 1, sp.name))
                    self.cont_done = True
        return out

    def _close(self, at: int, out: list[tuple[int, str]]) -> None:
        """The current run ends at frame ``at``; a tone burst is judged by its cadence."""
        g = self.run_label
        if g < 0:
            return
        on = at - self.run_start
        prev_end = self.last_end.get(g)
        for i, sp in enumerate(self.specs):
            if sp.continuous or self.group_of[i] != g:
                continue
            if not self._near(on, sp.on_s):
                self.matches[i] = 0
                continue
            gap_ok = prev_end is not None and self._near(self.run_start - prev_end, sp.off_s)
            self.matches[i] = self.matches[i] + 1 if gap_ok and self.matches[i] else 1
            need = 2 if sp.ends_call else 1
            if self.matches[i] == need:
                out.append((at, sp.name))
        self.last_end[g] = at

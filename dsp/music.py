"""Tonal continuity: is there music (or any sound made of steady partials) under the noise?

Hold music can sit at or below a line's off-hook noise for many seconds (quiet passages, the
fade at the end of a track), where no level test can tell it from hiss. Its partials still
stand out in a narrow-band spectrum and last from one short window to the next, which noise
peaks do not. ``TonalDetector`` looks at 50 ms Hann windows (20 Hz bins) between 300 and
3400 Hz (above mains hum and its first harmonics): a bin is a peak when it holds at least
``peak_ratio`` times the mean of its neighbours (±7 bins, the ±1 bins left out); a peak that
is there, within ±1 bin, in three windows in a row (150 ms) is a tonal partial. Bins that are
peaks most of the time over the last ~30 s (hum harmonics, a line's own whistle) are left out,
so a steady tone never reads as music.

For white noise a bin exceeds 8x its local mean with probability e^-8 = 0.03 %; three windows
in a row at the same bin +-1, twice within 0.5 s, almost never happen (measured: no frame in
5 min of white noise); hold music is followed down to about 9 dB under the noise. Works on whole
chunks, no state but the last two windows' peaks and the per-bin peak rate: the FFT is
numpy's (pocketfft in float32: scipy.fft, which the box needs nowhere else, would cost ~30 MB of
the recorder's memory), everything around it (choosing and windowing the windows, power, peaks, peak rate,
runs, the pair rule) is two numba kernels (see ``dsp._jit``). They
keep numpy's dtypes and order of operations (float32 power, box sums and peak test, float64
rate), so the result is the same, bit for bit, as the array code they replace.
"""

from __future__ import annotations

import numpy as np

from ._jit import kernel

WINDOW_FRAMES = 5  # 50 ms windows of 10 ms frames
_LO_HZ, _HI_HZ = 300.0, 3400.0
_SIDE = 7  # neighbours on each side for the local mean
_STEADY_S = 30.0  # time constant of the per-bin peak rate
_PAIR_WINDOWS = 10  # two runs within this many windows (0.5 s)
_STEADY_RATE = 0.5  # bins that are peaks more often than this are a line tone, not music


@kernel
def _windows(x, want, win, seg):
    """The windows worth an FFT: those with a wanted frame, and the two before each (a run is
    three windows) -> their indices; their samples times ``win`` (float32) go to ``seg``'s
    first rows."""
    n = win.shape[0]
    nw = want.shape[0] // WINDOW_FRAMES
    wantw = np.zeros(nw + 2, np.bool_)
    for w in range(nw):
        for f in range(w * WINDOW_FRAMES, (w + 1) * WINDOW_FRAMES):
            if want[f]:
                wantw[w] = True
                break
    nr = 0
    for w in range(nw):
        nr += wantw[w] or wantw[w + 1] or wantw[w + 2]
    rows = np.empty(nr, np.int64)
    r = 0
    for w in range(nw):
        if wantw[w] or wantw[w + 1] or wantw[w + 2]:
            rows[r] = w
            xs = x[w * n:(w + 1) * n]
            out = seg[r]
            for i in range(n):
                out[i] = xs[i] * win[i]
            r += 1
    return rows


@kernel
def _judge(sq, rows, nw, nf, lo, nb, ratio, a, rate, prev):
    """Peaks, runs and the pair rule over one chunk's windows -> (bool per frame, new ``prev``).

    ``sq``: the looked-at windows' rfft as float32 (re, im) pairs, one row per entry of ``rows``
    (increasing window indices; the other windows have no peaks); bins ``lo`` ... are read (the
    ``nb`` judged bins and ``_SIDE + 1`` on each side). ``ratio``: the peak ratio, of the type
    numpy multiplies a float32 array by it in. ``a``: the peak rate's step for ``len(rows)``
    windows; ``rate`` (float64 per judged bin) is updated in place. ``prev``: the peaks of the
    two windows before the chunk (bool, 2 x ``nb``).
    """
    s = _SIDE
    width = nb + 2 * s + 2  # bins read
    m = width - (s - 1) + 1  # sums over s - 1 bins
    nr = rows.shape[0]
    twelve = np.float32(2 * s - 2)
    # peaks: the two windows before, then the chunk's; column j + 1 is bin j, columns 0 and
    # nb + 1 stay 0 (the +-1 bin test needs no bounds check)
    ext = np.zeros((nw + 2, nb + 2), np.uint8)
    for i in range(2):
        for j in range(nb):
            ext[i, j + 1] = prev[i, j]
    count = np.zeros(nb, np.int64)  # looked-at windows with a peak, per bin
    p = np.empty(width, np.float32)
    box = np.empty(m, np.float32)
    pk = np.empty(nb, np.uint8)
    for r in range(nr):
        row = sq[r, 2 * lo:2 * (lo + width)]
        for k in range(width):
            re = row[2 * k]
            im = row[2 * k + 1]
            p[k] = re * re + im * im  # float32, as numpy's sq * sq then re + im
        # box[k]: bins k .. k + s - 2, added left to right in float32
        for k in range(m):
            box[k] = p[k] + p[k + 1]
        for d in range(2, s - 1):
            for k in range(m):
                box[k] += p[k + d]
        # judged bin j is bin j + s + 1 of the row; its neighbours j+1 .. j+6 and j+10 .. j+15
        for j in range(nb):
            around = box[j + 1] + box[j + s + 3]
            pk[j] = (p[j + s + 1] * twelve >= ratio * around) & (around > 0)
            count[j] += pk[j]
        e = ext[rows[r] + 2]
        for j in range(nb):
            e[j + 1] = pk[j]
    # the per-bin peak rate over the windows looked at (a steady line tone is always a peak)
    if nr:
        for j in range(nb):
            rate[j] += a * (count[j] / nr - rate[j])
    new_prev = np.empty((2, nb), np.bool_)
    for i in range(2):
        for j in range(nb):
            new_prev[i, j] = ext[nw + i, j + 1] != 0
    out = np.zeros(nf, np.bool_)
    # a run: a peak at bin j in a window, at j or j +-1 in each of the two windows before, j not
    # a steady line tone (only looked-at windows have peaks)
    tonal = np.zeros(nb + 2, np.uint8)
    for j in range(nb):
        tonal[j + 1] = rate[j] < _STEADY_RATE
    hit = np.zeros(nw, np.bool_)
    anyhit = False
    for r in range(nr):
        w = rows[r]
        e0, e1, e2 = ext[w], ext[w + 1], ext[w + 2]
        run = np.uint8(0)
        for j in range(1, nb + 1):
            near1 = e1[j - 1] | e1[j] | e1[j + 1]
            near0 = e0[j - 1] | e0[j] | e0[j + 1]
            run |= e2[j] & tonal[j] & near1 & near0
        if run:
            hit[w] = True
            anyhit = True
    if not anyhit:
        return out, new_prev
    # music has partials all the time: a run counts when another one lies within 0.5 s of it
    c = np.zeros(nw + 1, np.int64)
    for i in range(nw):
        c[i + 1] = c[i] + hit[i]
    paired = np.zeros(nw + 2, np.bool_)
    for i in range(nw):
        if hit[i]:
            before = c[i + 1] - c[max(i + 1 - _PAIR_WINDOWS, 0)]
            after = c[min(i + _PAIR_WINDOWS, nw)] - c[i]
            paired[i] = before >= 2 or after >= 2
    # the three windows of a run carry the music
    for i in range(nw):
        if paired[i] or paired[i + 1] or paired[i + 2]:
            out[i * WINDOW_FRAMES:(i + 1) * WINDOW_FRAMES] = True
    return out, new_prev


class TonalDetector:
    """Per 10 ms frame: do persistent spectral peaks (music) run through it?"""

    def __init__(self, rate: int, frame_len: int, peak_ratio: float = 8.0) -> None:
        self.n = WINDOW_FRAMES * frame_len
        self.frame_len = frame_len
        self.ratio = peak_ratio
        freqs = np.fft.rfftfreq(self.n, 1.0 / rate)
        lo = int(np.searchsorted(freqs, _LO_HZ))
        hi = int(np.searchsorted(freqs, _HI_HZ))
        self._lo, self._hi = lo - _SIDE - 1, hi + _SIDE + 1  # bins read (band and its neighbours)
        self.nb = hi - lo  # bins judged
        self.win = np.hanning(self.n).astype(np.float32)
        self._alpha_per_window = WINDOW_FRAMES * 0.01 / _STEADY_S
        self._no_spectrum = np.zeros((0, 2 * (self.n // 2 + 1)), np.float32)
        self._seg = np.empty((0, self.n), np.float32)  # scratch for the windowed samples
        self.new_line()

    def reset(self) -> None:
        """Forget the last windows (the detector did not look at the audio in between)."""
        self._prev = np.zeros((2, self.nb), bool)

    def new_line(self) -> None:
        self.reset()
        self._rate = np.zeros(self.nb)

    def frames(self, x: np.ndarray, want: np.ndarray) -> np.ndarray:
        """``x``: float32 samples of whole frames (other dtypes are converted to float32 first);
        ``want``: frames worth looking at. -> bool per frame.

        Windows are looked at only where ``want`` has a frame (and the two before, for the run);
        the others count as no peaks.
        """
        nf = len(want)
        nw = nf // WINDOW_FRAMES
        if len(x) < nw * self.n:
            raise ValueError(f"{len(x)} samples for {nf} frames of {self.frame_len}")
        if len(self._seg) < nw:
            self._seg = np.empty((nw, self.n), np.float32)
        rows = _windows(np.asarray(x, np.float32), want, self.win, self._seg)
        if len(rows):
            if self._lo < 0 or self._hi > self.n // 2 + 1:
                raise ValueError(f"bins {self._lo}..{self._hi} not in the rfft of {self.n} samples")
            sq = np.fft.rfft(self._seg[:len(rows)], axis=1).view(np.float32)  # (re, im) pairs, complex64
            a = 1.0 - (1.0 - self._alpha_per_window) ** len(rows)
        else:
            sq, a = self._no_spectrum, 0.0
        # numpy multiplies a float32 array by a Python number in float32 (NEP 50), by a numpy
        # scalar in the wider of the two types: the kernel multiplies in the same one
        r = self.ratio
        ratio = np.float32(r) if type(r) in (float, int) else np.result_type(r, np.float32).type(r)
        out, self._prev = _judge(sq, rows, nw, nf, self._lo, self.nb, ratio, a, self._rate,
                                 self._prev)
        return out

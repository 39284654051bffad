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
5 min of white noise); hold music is followed down to about 9 dB under the noise. Pure numpy over whole
chunks, no state but the last two windows' peaks and the per-bin peak rate.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

WINDOW_FRAMES = 5  # 50 ms windows of 10 ms frames
_LO_HZ, _HI_HZ = 300.0, 3400.0
_SIDE = 7  # neighbours on each side for the local mean
_STEADY_S = 30.0  # time constant of the per-bin peak rate
_PAIR_WINDOWS = 10  # two runs within this many windows (0.5 s)
_STEADY_RATE = 0.5  # bins that are peaks more often than this are a line tone, not music


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
        self.new_line()

    def reset(self) -> None:
        """Forget the last windows (the detector did not look at the audio in between)."""
        self._prev = np.zeros((2, self.nb), bool)

    def new_line(self) -> None:
        self.reset()
        self._rate = np.zeros(self.nb)

    def frames(self, x: np.ndarray, want: np.ndarray) -> np.ndarray:
        """``x``: float32 samples of whole frames; ``want``: frames worth looking at. -> bool per frame.

        Windows are looked at only where ``want`` has a frame (and the two before, for the run);
        the others count as no peaks.
        """
        nf = len(want)
        nw = nf // WINDOW_FRAMES
        out = np.zeros(nf, bool)
        wantw = want[:nw * WINDOW_FRAMES].reshape(nw, WINDOW_FRAMES).any(axis=1)
        look = wantw.copy()
        look[:-1] |= wantw[1:]
        look[:-2] |= wantw[2:]
        rows = np.flatnonzero(look)
        peaks = None
        if len(rows):
            seg = x[:nw * self.n].reshape(nw, self.n)
            seg = (seg if len(rows) == nw else seg[rows]) * self.win
            sp = scipy.fft.rfft(seg, axis=1, overwrite_x=True)[:, self._lo:self._hi]
            sq = sp.view(np.float32)  # (re, im) pairs
            sq = sq * sq
            p = sq[:, 0::2] + sq[:, 1::2]
            # for the judged bins k = _SIDE+1 ...: the sum of bins k-_SIDE..k-2 and k+2..k+_SIDE
            # (running sums over _SIDE-1 bins, by shifted adds: a cumulative sum is several times slower)
            nb, s = self.nb, _SIDE
            m = p.shape[1] - (s - 1) + 1
            box = p[:, :m] + p[:, 1:1 + m]
            for d in range(2, s - 1):
                box += p[:, d:d + m]
            around = box[:, 1:1 + nb] + box[:, s + 3:s + 3 + nb]
            mid = p[:, _SIDE + 1:_SIDE + 1 + self.nb]
            pk = (mid * (2 * _SIDE - 2) >= self.ratio * around) & (around > 0)
            if len(rows) == nw:
                peaks = pk
            else:
                peaks = np.zeros((nw, self.nb), bool)
                peaks[rows] = pk
            # the per-bin peak rate over the windows looked at (a steady line tone is always a peak)
            a = 1.0 - (1.0 - self._alpha_per_window) ** len(rows)
            self._rate += a * (pk.sum(axis=0) / len(rows) - self._rate)
        if peaks is None:
            peaks = np.zeros((nw, self.nb), bool)
        ext = np.concatenate((self._prev, peaks))
        self._prev = ext[-2:]
        dil = ext.copy()
        dil[:, 1:] |= ext[:, :-1]
        dil[:, :-1] |= ext[:, 1:]
        run = ext[2:] & dil[1:-1] & dil[:-2] & (self._rate < _STEADY_RATE)
        hit = run.any(axis=1)
        if not hit.any():
            return out
        # music has partials all the time: a run counts when another one lies within 0.5 s of it
        c = np.concatenate(([0], np.cumsum(hit)))
        span = _PAIR_WINDOWS
        i = np.arange(nw)
        before = c[i + 1] - c[np.maximum(i + 1 - span, 0)]
        after = c[np.minimum(i + span, nw)] - c[i]
        hit &= (before >= 2) | (after >= 2)
        # the three windows of a run carry the music
        h = hit.copy()
        h[:-1] |= hit[1:]
        h[:-2] |= hit[2:]
        out[:nw * WINDOW_FRAMES] = np.repeat(h, WINDOW_FRAMES)
        return out

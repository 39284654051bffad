"""Line state ahead of the segmenter's chunks: the provisional onset stage and the hook input.

``OnsetStage``: the segmenter (``dsp.segment``) analyses a line in chunks of ``chunk_s`` (4 s by default): its
calls are confirmed up to a chunk after they begin, too late for the recording notice to come
before the first word. ``OnsetStage`` looks at every block as it arrives (the recorder hands
over 0.1 s at a time) and says when a call has probably begun; the segmenter raises that as a
provisional ``CallOnset``, which its chunk analysis later confirms or withdraws.

``HookFilter``: a line-sense input (an off-hook / loop-current detector) debounced in sample
time: off-hook once the input has stayed off-hook for ``offhook_s`` (contact bounce and the
16-25 Hz of ringing seen through a detector never stay that long), on-hook once it has stayed
on-hook longer than ``flash_s`` (a shorter break is a hook flash or a dial pulse: the call goes
on). Pure: no I/O, no threads, no clock but the sample index.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .levels import SILENCE_DBFS

if TYPE_CHECKING:
    from .segment import SegmentParams

FRAME_S = 0.01
MOVING_WIN = 20  # frames: the level movement is the mean |step| over this many (as dsp.segment's)
MOVING_DB = 1.5
# Mains hum repeats itself exactly every 100 ms (5 periods of 50 Hz, 6 of 60 Hz, and so every
# harmonic): a frame that correlates this well with the audio 100 ms before it, at the same level,
# is hum, not speech (whose pitch, level and phonemes change within 100 ms).
MAINS_LAG_S = 0.1
MAINS_R = 0.7
MIN_RUN = 3  # frames
ONSET_EASE_DB = 2.0  # the stage takes frames this much under the analysis's speech trigger
CLICK_DBFS = -30.0  # a hook click's least frame level while the line's call level is not known
CLICK_HOLD_S = 1.5  # speech this soon after a hook click needs half the hot frames
TONE_WIN = 4  # frames: the call-progress tones are judged over 40 ms windows (25 Hz apart), as the analysis does
TONE_EACH = 0.1  # a call-progress tone: each of its frequencies holds this share of the window's power


class OnsetStage:
    """The cheap look at every block, ahead of the chunk's analysis: is the line off-hook?

    Per 10 ms frame (aligned like the chunks): its level, a minimum-statistics noise floor as the
    full analysis computes it (the minimum over the last ``floor_window_s`` in 0.25 s blocks and
    the current block so far), and, over the 40 ms window ending at it, the share of its power at
    the call-progress tones' frequencies (a 40 ms window tells 440 from 480 Hz, and a voice's
    harmonic at 400 Hz from both). It fires at the
    first frame where

    * speech: the last second holds ``speech_confirm_s`` of *hot* frames (``trigger_db`` over the
      floor, at least ``speech_min_dbfs``, not a tone) while the level moves (mean |step| over 20
      frames >= ``MOVING_DB``: speech does; a steady hum or a caller-ID burst does not), or
    * dial tone: 0.3 s of a continuous tone (the exchange's answer to an off-hook); a busy or
      reorder cadence (a hang-up), ringback and hum never fire.

    What it misses (caller ID, DTMF alone, a quiet line) the full analysis still confirms, a
    chunk later. numpy over each block's new frames; its state is a second of flags, a few block
    minima and the last frame's samples.
    """

    DIAL_S = 0.3

    def __init__(self, p: "SegmentParams", origin: int, floor_dbfs: float | None = None) -> None:
        self.p = p
        flen = self.flen = p.frame_len
        self.pos = origin  # sample index of the next frame to look at
        self._carry = np.zeros(0, np.int16)  # samples of a frame not yet complete
        self._lag = int(round(MAINS_LAG_S * p.rate))
        self._prev = np.zeros(self._lag, np.float32)  # the samples before (the tone windows, the mains lags)
        self._hotrun = 0  # level-hot frames in a row up to the last one
        self._lorun, self._lopeak = 0, -np.inf  # the open run of loud frames and its peak (clicks)
        self._last_click = -(1 << 60)  # sample of the latest hook-switch click
        self.speech_min = -np.inf  # the line's own least speech level (the segmenter's _speech_min: crosstalk)
        self._nblk = max(1, int(round(p.floor_window_s / FRAME_S)) // 25)
        self._blockmins = np.full(self._nblk, np.inf)  # minima of the last whole 0.25 s blocks
        self._cur_min = np.inf  # minimum of the current block so far
        self._cur_n = 0  # frames into the current block
        self._win = int(round(1.0 / FRAME_S))
        self._hot = np.zeros(self._win - 1, bool)  # the last second's hot flags (before the block)
        self._lv = np.full(MOVING_WIN, np.nan)  # the last 20 frame levels
        self._need = int(round(p.speech_confirm_s / FRAME_S))
        self._dial_need = int(round(self.DIAL_S / FRAME_S))
        self._dial_run = 0
        # the tones' frequencies: cos/sin columns over a tone window, and which columns are a group
        freqs = sorted({f for t in p.tones for f in t.freqs})
        n = np.arange(TONE_WIN * flen)
        w = 2.0 * np.pi * np.asarray(freqs)[None, :] / p.rate
        self._table = np.concatenate((np.cos(n[:, None] * w), np.sin(n[:, None] * w)), axis=1).astype(np.float32)
        self._nfreq = len(freqs)
        self._groups = []
        self._dial = []
        for t in p.tones:
            cols = [freqs.index(f) for f in t.freqs]
            if cols not in self._groups:
                self._groups.append(cols)
            if t.continuous and not t.ends_call and cols not in self._dial:
                self._dial.append(cols)
        self._tone_db = p.tone_min_dbfs
        self._ng = len(self._groups)
        gmat = np.zeros((len(freqs), len(self._groups) + len(self._dial)))
        for c, cols in enumerate(self._groups + self._dial):
            gmat[cols, c] = 1.0
        self._gmat = gmat
        self._gsize = gmat.sum(axis=0) - 0.5
        self._escale = 1.0 / (flen * 32768.0 * 32768.0)
        self._wscale = 1.0 / (TONE_WIN * flen * 32768.0 * 32768.0)
        self._tone_pow = 10.0 ** (self._tone_db / 10.0)
        self._blockmin = np.inf
        self._any_hot = False
        if floor_dbfs is not None and np.isfinite(floor_dbfs) and floor_dbfs > SILENCE_DBFS:
            self._blockmins[:] = floor_dbfs  # (resumed after a call: the line's floor as it was)
            self._blockmin = float(floor_dbfs)

    def _mains(self, z: np.ndarray, f: np.ndarray, e: np.ndarray, nf: int) -> np.ndarray:
        """Frames that repeat the audio of 100 ms before them, at the same level: hum."""
        g = z[:nf * self.flen].reshape(nf, self.flen)
        eg = np.einsum("ij,ij->i", g, g)
        return ((np.einsum("ij,ij->i", f, g) >= MAINS_R * np.sqrt(e * eg))
                & (np.abs(e - eg) <= 0.6 * np.maximum(e, eg)))  # within 4 dB

    def feed(self, x: np.ndarray) -> tuple[int, int] | None:
        """Look at the samples following the last ones fed; (onset sample, raised sample) of the
        first frame that fires, else None."""
        flen = self.flen
        if len(self._carry):
            x = np.concatenate((self._carry, x))
        nf = len(x) // flen
        self._carry = np.array(x[nf * flen:], np.int16)
        if nf == 0:
            return None
        z = np.concatenate((self._prev, x[:nf * flen].astype(np.float32)))
        self._prev = z[-self._lag:]
        f = z[self._lag:].reshape(nf, flen)
        e = np.einsum("ij,ij->i", f, f)
        lv = np.maximum(10.0 * np.log10(np.maximum(e * self._escale, 1e-30)), SILENCE_DBFS)
        floor = np.empty(nf)
        i = 0
        while i < nf:  # one step per 0.25 s block the frames reach into
            take = min(nf - i, 25 - self._cur_n)
            run = np.minimum.accumulate(lv[i:i + take])
            np.minimum(run, min(self._cur_min, self._blockmin), out=floor[i:i + take])
            self._cur_min = min(self._cur_min, float(run[-1]))
            self._cur_n += take
            i += take
            if self._cur_n == 25:
                self._blockmins = np.roll(self._blockmins, -1)
                self._blockmins[-1] = self._cur_min
                self._blockmin = float(self._blockmins.min())
                self._cur_min, self._cur_n = np.inf, 0
        p = self.p
        level_ok = (lv >= floor + p.trigger_db - ONSET_EASE_DB) & (lv >= p.speech_min_dbfs)
        tone_ok = lv >= self._tone_db - 3.0
        first = self.pos
        self.pos += nf * flen
        if not (level_ok.any() or tone_ok.any() or self._dial_run or self._hotrun or self._lorun or self._any_hot):
            # the common case, an idle line at its noise: nothing can fire (only the levels move on)
            self._lv = np.concatenate((self._lv, lv))[-MOVING_WIN:]
            return None
        # tone shares over the 40 ms windows ending at each frame (each group's power share)
        y = z[self._lag - (TONE_WIN - 1) * flen:]
        win = np.lib.stride_tricks.sliding_window_view(y, TONE_WIN * flen)[::flen][:nf]
        proj = win @ self._table
        k = self._nfreq
        pw = proj[:, :k] ** 2 + proj[:, k:] ** 2
        ew = np.maximum(np.einsum("ij,ij->i", win, win), 1e-9)
        loud_tone = ew * self._wscale >= self._tone_pow
        norm = 2.0 / (TONE_WIN * flen)
        shares = (pw @ self._gmat) * norm >= p.tone_min_fraction * ew[:, None]
        # ... with each of its frequencies present (a voice's one strong harmonic near 440 Hz is no tone)
        each = pw * norm >= TONE_EACH * ew[:, None]
        shares &= (each.astype(np.float64) @ self._gmat) >= self._gsize
        tone = shares[:, :self._ng].any(axis=1) & loud_tone
        dial = shares[:, self._ng:].any(axis=1) & loud_tone if self._gmat.shape[1] > self._ng else np.zeros(nf, bool)
        mains = self._mains(z, f, e, nf)
        lvl_hot = level_ok & ~tone & ~mains
        # hook-switch clicks: a loud run shorter than 30 ms, no more than 15 dB under this line's calls'
        # level (or at -30 dBFS or louder before it is known; the line's own crackle is far quieter)
        known = np.isfinite(self.speech_min)
        click_db = self.speech_min + p.crosstalk_db - 15.0 if known else CLICK_DBFS
        since = np.empty(nf)
        r, peak = self._lorun, self._lopeak
        for j, (h, v) in enumerate(zip(level_ok.tolist(), lv.tolist())):
            if h:
                r, peak = r + 1, max(peak, v)
            else:
                if 0 < r < MIN_RUN and peak >= click_db:
                    self._last_click = first + j * flen
                r, peak = 0, -np.inf
            since[j] = first + j * flen - self._last_click
        self._lorun, self._lopeak = r, peak
        if known:
            # crosstalk: under this line's own calls' level less a margin, and no hook click within 3 s
            lvl_hot &= (lv >= self.speech_min) | (since <= 3 * p.rate)
        # ... in a run of >= 3 (30 ms: a click or a pop is shorter, a syllable far longer)
        hot = np.empty(nf, bool)
        r = self._hotrun
        for j, h in enumerate(lvl_hot.tolist()):
            r = r + 1 if h else 0
            hot[j] = r >= MIN_RUN
        self._hotrun = r
        ext = np.concatenate((self._hot, hot))
        c = np.cumsum(ext)
        w = self._win
        count = c[w - 1:] - np.concatenate(([0], c[:len(c) - w]))  # hot frames in the second ending at each
        lvx = np.concatenate((self._lv, lv))
        steps = np.abs(np.diff(lvx))
        steps = np.where(np.isfinite(steps), steps, 0.0)
        cs = np.concatenate(([0.0], np.cumsum(steps)))
        n = MOVING_WIN
        ends = np.arange(n, n + nf)  # mean |step| over the 20 steps ending at each new frame
        moving = (cs[ends] - cs[ends - n]) / n >= MOVING_DB
        # runs of dial-tone frames, carried across blocks
        runs = np.empty(nf, np.int64)
        r = self._dial_run
        for j, d in enumerate(dial.tolist()):
            r = r + 1 if d else 0
            runs[j] = r
        self._dial_run = r
        self._hot = ext[-(w - 1):]
        self._any_hot = bool(self._hot.any())
        self._lv = lvx[-MOVING_WIN:]
        # right after a hook click, half the speech is enough: the off-hook has been heard
        need = np.where(since <= CLICK_HOLD_S * p.rate, self._need // 2, self._need)
        speech = (count >= need) & moving & hot
        fire = np.flatnonzero(speech | (runs >= self._dial_need))
        if not len(fire):
            return None
        j = int(fire[0])
        if speech[j]:  # the first hot frame of the second that fired (it may lie in an earlier block)
            onset_f = j + int(np.flatnonzero(ext[j:j + w])[0]) - (w - 1)
        else:
            onset_f = j - int(runs[j]) + 1
        return first + onset_f * flen, first + (j + 1) * flen


class HookFilter:
    """Raw edges of a line-sense input in, debounced hook changes out (both in sample indices)."""

    def __init__(self, rate: int, offhook_s: float = 0.06, flash_s: float = 1.0, off_hook: bool = False) -> None:
        self.off_n = int(round(offhook_s * rate))
        self.flash_n = int(round(flash_s * rate))
        self.raw = off_hook  # the input's latest level (True: off-hook)
        self.since = 0  # sample at which it took that level
        self.state = off_hook  # the debounced hook state
        self.edges = 0  # raw changes seen (bounce and ringing included)

    def edge(self, sample: int, off_hook: bool) -> None:
        """The input changed to ``off_hook`` at ``sample`` (edges in order; a repeat is ignored)."""
        if off_hook == self.raw:
            return
        self.edges += 1
        self.raw = off_hook
        self.since = max(sample, self.since)

    def advance(self, upto: int) -> tuple[int, bool, int] | None:
        """Audio has arrived up to ``upto``: (sample the change happened, new state, sample it was
        decided at) when the input has held a new state long enough by then, else None."""
        if self.raw == self.state:
            return None
        need = self.off_n if self.raw else self.flash_n
        if upto - self.since < need:
            return None
        self.state = self.raw
        return self.since, self.state, self.since + need

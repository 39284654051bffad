"""Splitting one line's audio into calls.

``LineSegmenter`` is a pure state machine over fixed 10 ms frames: it is fed
contiguous int16 blocks with their absolute sample index and returns events. It
holds at most one analysis chunk (``chunk_s``) of not yet analysed samples; the
caller keeps everything else (the capture ring) and asks which range belongs to a
call (``committed_upto``) and which older samples a future event may still refer to
(``keep_from``). Input is analysed in whole chunks aligned to the first sample, so the
result never depends on how the caller cuts its blocks.

Per chunk, every detector runs over all its frames at once (see docs/segmentation.md):
frame levels and an adaptive minimum-statistics noise floor; one Goertzel bank (DTMF,
call-progress and FSK-mark frequencies) over 5 ms half-frames; DTMF key codes (ITU-T
Q.24 acceptance) and digits; call-progress tone labels and their cadences; speech (level
over the floor, not a tone, not DTMF); FSK caller-ID marks, decoded when the message has
arrived. The state machine then jumps from one decision to the next instead of stepping
through frames in Python. The per-frame loops are numba kernels (the module-level
``@kernel`` functions: pure, over numpy arrays), built ahead of time by setup.sh (see
``dsp._jit``); ``warm_up`` runs them once before live audio arrives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._jit import kernel
from .callerid import FSK_STANDARDS, decode_fsk, parse_dtmf_cid
from .levels import SILENCE_DBFS, rms_dbfs
from .music import TonalDetector
from .linestate import HookFilter, OnsetStage
from .tones import (DTMF_HIGH, DTMF_LOW, KOREA_TONES, TWIST_MARGIN_DB, CadenceTracker, DtmfParams, DtmfSequencer,
                    GoertzelBank, ToneSpec, analyse_windows, group_table, no_codes)

FRAME_S = 0.01
_NEG = -(1 << 60)
_SUSTAIN_WIN = 20  # frames
_SUSTAIN_MIN = 5
_DIAL_GAP_S = 3.0
_MOVING_DB = 1.5
_LEVEL_BINS = 240  # 0.5 dB bins from SILENCE_DBFS (-120) to 0 dBFS
_GATE_DB = 3.0  # idle frames this close to the noise floor get no spectral analysis


@kernel
def _levels(x16, flen, blockmins, gate_dbfs, gate_floor_db):
    """Frame energies, levels (dBFS) and the noise floor of one chunk of int16 samples.

    The floor at a frame is the minimum over the ``len(blockmins)`` blocks of 25 frames (0.25 s)
    before its block and its own block so far; ``blockmins`` holds the minima of the blocks before
    the chunk (inf where there were none). The spectral gate: frames >= ``gate_dbfs`` (and, when
    ``gate_floor_db`` > 0, >= the floor + ``gate_floor_db``) may hold a tone, digit or mark.
    Returns (samples as float32, energies, levels, floor, the new ``blockmins``, how many frames
    pass the gate, per frame: it or one of the 3 after it passes, so its terms are needed).
    """
    n = x16.shape[0]
    nf = n // flen
    nb = nf // 25
    w = blockmins.shape[0]
    x = np.empty(n, np.float32)
    e = np.empty(nf)
    lv = np.empty(nf)
    floor = np.empty(nf)
    allb = np.empty(w + nb)
    allb[:w] = blockmins
    scale = flen * 32768.0 * 32768.0
    for j in range(n):  # (separate simple loops: the compiler vectorises each)
        x[j] = x16[j]
    for i in range(nf):
        acc = np.int64(0)
        s = x16[i * flen:(i + 1) * flen]
        for j in range(flen):
            v = np.int64(s[j])
            acc += v * v
        e[i] = acc  # exact: at most 2^30 per sample
    for i in range(nf):
        # (a silent frame's energy is 0; any other is >= 1, so the clamp changes nothing else)
        lv[i] = max(10.0 * np.log10(max(e[i], 1e-30) / scale), SILENCE_DBFS)
    for b in range(nb):
        m = lv[b * 25]
        for j in range(1, 25):
            m = min(m, lv[b * 25 + j])
        allb[w + b] = m
    for b in range(nb):
        pm = allb[b]
        for j in range(b + 1, b + w):
            pm = min(pm, allb[j])
        run = np.inf
        for j in range(25):
            run = min(run, lv[b * 25 + j])
            floor[b * 25 + j] = min(run, pm)
    near = np.zeros(nf, np.bool_)
    n_loud = 0
    for i in range(nf):
        if lv[i] >= gate_dbfs and (gate_floor_db <= 0.0 or lv[i] >= floor[i] + gate_floor_db):
            n_loud += 1
            for j in range(max(0, i - 3), i + 1):
                near[j] = True
    return x, e, lv, floor, allb[nb:].copy(), n_loud, near


@kernel
def _masks(lv, floor, tl, codes, excl, fsk_a, fsk_b, end_groups, spc_hist, act_hist, end_hist, floor_hist, lvl_hist,
           dl_hist, trigger_db, speech_min_dbfs, min_level_dbfs, release_db, n_confirm):
    """The per-frame masks of one chunk and its history tapes extended by it.

    ``tl``/``codes``: tone group labels and DTMF key codes per frame (-1 none); ``excl``: frames that
    are never speech (mains hum, clicks; see ``LineSegmenter._not_speech``); frames ``fsk_a``..``fsk_b``
    lie in an FSK caller-ID burst. Each ``*_hist`` is a tape's history
    (the last frames before the chunk); the matching output is that history followed by the
    chunk. Returns (talk, speech tape, idle activity tape, end-tone tape, floor tape, level
    tape, level-step tape, level moving, over min_level, DTMF frame).
    """
    nf = lv.shape[0]
    # DTMF frames: under a valid window, and the 3 on each side (the edges)
    dtmf = np.zeros(nf, np.bool_)
    for i in range(nf):
        if codes[i] >= 0:
            for j in range(max(0, i - 3), min(nf, i + 4)):
                dtmf[j] = True
    hs = spc_hist.shape[0]
    spc = np.empty(hs + nf, np.bool_)
    spc[:hs] = spc_hist
    ha = act_hist.shape[0]
    act = np.empty(ha + nf, np.bool_)
    act[:ha] = act_hist
    endt = np.empty(end_hist.shape[0] + nf, np.bool_)
    endt[:end_hist.shape[0]] = end_hist
    fl = np.empty(floor_hist.shape[0] + nf)
    fl[:floor_hist.shape[0]] = floor_hist
    fl[floor_hist.shape[0]:] = floor
    hl = lvl_hist.shape[0]
    lvl = np.empty(hl + nf)
    lvl[:hl] = lvl_hist
    lvl[hl:] = lv
    lv_min = np.empty(nf, np.bool_)
    for i in range(nf):
        t = tl[i]
        busy = False
        for g in end_groups:
            if t == g:
                busy = True
        # speech: over the floor, loud enough, not a tone, not DTMF, not an FSK burst
        spc[hs + i] = (lv[i] >= floor[i] + trigger_db and lv[i] >= speech_min_dbfs and t < 0 and not dtmf[i]
                       and not (fsk_a <= i < fsk_b) and not excl[i])
        lv_min[i] = lv[i] >= min_level_dbfs
        act[ha + i] = lv[i] >= floor[i] + release_db and lv_min[i] and not busy
        endt[end_hist.shape[0] + i] = busy
    # speech frames in the second ending at each frame (hs + 1 frames)
    talk = np.empty(nf, np.bool_)
    cnt = 0
    for j in range(hs):
        cnt += spc[j]
    for i in range(nf):
        cnt += spc[hs + i]
        if i > 0:
            cnt -= spc[i - 1]
        talk[i] = cnt >= n_confirm
    # level movement: mean |change| of the frame level over the last 20 frames (stationary hiss and
    # hum stay under ~1 dB; speech and music move several dB); a step out of the history's inf
    # fill (the stream's first frame) counts as 0
    hd = dl_hist.shape[0]
    dl = np.empty(hd + nf)
    dl[:hd] = dl_hist
    for i in range(nf):
        d = abs(lvl[hl + i] - lvl[hl + i - 1])
        dl[hd + i] = d if np.isfinite(d) else 0.0
    moving = np.empty(nf, np.bool_)
    c = np.empty(hd + nf)
    acc = 0.0
    for j in range(hd + nf):
        acc += dl[j]
        c[j] = acc
    for i in range(nf):
        m = c[hd + i] - c[i - 1] if i > 0 else c[hd]
        moving[i] = m / (hd + 1) >= _MOVING_DB
    return talk, spc, act, endt, fl, lvl, dl, moving, lv_min, dtmf


@kernel
def _call_activity(lv, floor, tl, dtmf, lv_min, moving, ref, release_db):
    """In a call: frames loud by level, tone or DTMF, and the frames worth a look for music.

    Loud: over the current floor (never under the idle floor ``ref``) + ``release_db``, or over
    the idle floor while the level moves (music on hold whose quiet passages the floor has risen
    to; never steady off-hook hiss), or a tone or DTMF frame. Returns (loud, want, how many want):
    want = not loud but over the idle floor, where only the tonal detector can tell.
    """
    n = lv.shape[0]
    loud = np.empty(n, np.bool_)
    want = np.empty(n, np.bool_)
    nwant = 0
    over = ref + release_db
    for j in range(n):
        over_ref = lv[j] >= over
        a = ((lv[j] >= max(floor[j], ref) + release_db) or (over_ref and moving[j])) and lv_min[j]
        a = a or tl[j] >= 0 or dtmf[j]
        loud[j] = a
        w = (not a) and over_ref and lv_min[j]
        want[j] = w
        nwant += w
    return loud, want, nwant


@kernel
def _sustained(loud, tail, last_act, fa0, n_silence, need):
    """Sustained activity (>= ``need`` loud frames among the last len(``tail``) + 1; a lone click
    is not).

    ``tail``: the loud flags of the frames before; ``last_act``: the last active frame before.
    Returns (last active frame at each frame, the first frame ``n_silence`` frames after the
    last activity or -1, the new tail).
    """
    n = loud.shape[0]
    h = tail.shape[0]
    ext = np.empty(h + n, np.bool_)
    ext[:h] = tail
    ext[h:] = loud
    cnt = 0
    for j in range(h):
        cnt += ext[j]
    last = np.empty(n, np.int64)
    run = last_act
    k_sil = -1
    for j in range(n):
        cnt += ext[h + j]
        if j > 0:
            cnt -= ext[j - 1]
        if cnt >= need:
            run = max(run, fa0 + j)
        last[j] = run
        if k_sil < 0 and fa0 + j - run >= n_silence:
            k_sil = j
    return last, k_sil, ext[n:].copy()


@kernel
def _idle_return(floor, settled_from, call_min, lag_hist, ref, idle_step_db, lvl, idle_margin_db, hold, need):
    """Back at the idle floor after the off-hook noise had risen above it.

    The call's own floor is the running minimum of the floor from chunk frame ``settled_from``
    on (after ``call_min`` so far), judged ``len(lag_hist)`` frames late (before the floor window
    could take in the quiet being tested). ``lvl``: the frame levels, ``hold`` - 1 frames of
    history first. Returns (running minimum, the new lag history, the first frame where the
    lagged call floor was >= ``ref`` + ``idle_step_db`` and >= ``need`` of the last ``hold``
    frames lay within ``idle_margin_db`` of ``ref``, or -1).
    """
    n = floor.shape[0]
    h = lag_hist.shape[0]
    callmin = np.empty(n)
    run = call_min
    ext = np.empty(h + n)
    ext[:h] = lag_hist
    for j in range(n):
        if j >= settled_from:
            run = min(run, floor[j])
        callmin[j] = run
        ext[h + j] = run
    quiet_lim = ref + idle_margin_db
    raised_lim = ref + idle_step_db
    q = -1
    cnt = 0
    for j in range(hold - 1):
        cnt += lvl[j] <= quiet_lim
    for j in range(n):
        cnt += lvl[hold - 1 + j] <= quiet_lim
        if j > 0:
            cnt -= lvl[j - 1] <= quiet_lim
        lag = ext[j]
        if np.isfinite(lag) and lag >= raised_lim and cnt / hold >= need:
            q = j
            break
    return callmin, ext[n:].copy(), q


@dataclass(frozen=True)
class SegmentParams:
    """Segmentation settings in seconds and dB; see firmware.config.SegmentConfig."""

    rate: int = 8000
    preroll_s: float = 2.0
    silence_s: float = 10.0
    tail_s: float = 0.5
    trigger_db: float = 10.0  # speech: this far over the noise floor
    release_db: float = 6.0  # line activity: this far over the floor
    min_level_dbfs: float = -55.0  # quieter frames are never activity
    speech_min_dbfs: float = -50.0  # quieter frames are never speech (crosstalk)
    speech_confirm_s: float = 0.15  # speech frames within one second that confirm a call
    confirm_s: float = 5.0  # how far before its confirmation a call's first sign may lie
    floor_window_s: float = 3.0  # minimum-statistics window of the noise floor
    hangover_s: float = 0.3  # activity is held this long (the quiet end of a word)
    idle_step_db: float = 7.0  # off-hook noise this far above the idle floor makes its return hang-up evidence
    idle_margin_db: float = 4.5  # "back at the idle floor": 90 % of frames within this of its minimum ...
    idle_hold_s: float = 1.0  # ... for this long
    hangup_hold_s: float = 3.0  # a confirmed busy/reorder tone ends the call at most this much later
    max_call_s: float = 14400.0
    chunk_s: float = 4.0  # analysis chunk: detection latency and the CPU cost per call of process()
    tones: tuple[ToneSpec, ...] = KOREA_TONES
    tone_min_fraction: float = 0.6
    tone_min_dbfs: float = -45.0
    cadence_tol: float = 0.25
    dtmf: DtmfParams = field(default_factory=DtmfParams)
    cid_fsk: bool = True
    cid_dtmf: bool = True
    onset: bool = True  # the provisional onset stage (CallOnset ahead of the chunk's analysis)
    onset_withdraw_s: float = 2.0  # analysed this far past a provisional onset without a call: withdrawn
    crosstalk_db: float = 15.0  # an idle line's speech this far under its own calls' level is crosstalk
    sense_offhook_s: float = 0.06  # the sense input off-hook this long is off-hook (bounce, ringing are not)
    sense_flash_s: float = 1.0  # ... on-hook longer than this is a hang-up (shorter: a hook flash)
    sense_check_s: float = 1.0  # after an on-hook, speech this long (past the grace) keeps the call going
    sense_grace_s: float = 0.3  # ... not counting this much right after it (the on-hook click, echo)
    sense_stuck_s: float = 3600.0  # off-hook this long without speech: an alarm; the audio decides

    @property
    def frame_len(self) -> int:
        return int(round(self.rate * FRAME_S))

    def _s(self, seconds: float) -> int:
        return int(round(seconds * self.rate))

    @property
    def preroll(self) -> int:
        return self._s(self.preroll_s)

    @property
    def silence(self) -> int:
        return self._s(self.silence_s)

    @property
    def tail(self) -> int:
        return self._s(self.tail_s)

    @property
    def max_call(self) -> int:
        return self._s(self.max_call_s)

    @property
    def chunk(self) -> int:
        f = self.frame_len * 25  # whole floor blocks of 0.25 s
        return max(1, int(round(self.chunk_s * self.rate / f))) * f

    @property
    def history(self) -> int:
        """Most samples behind the newest one that the caller must keep available."""
        back = max(self._s(self.confirm_s) + self.preroll,
                   self.silence + self._s(self.hangover_s) + self.tail,
                   self._s(self.hangup_hold_s + 2.0) + self.tail)
        return self.chunk + back + 2 * self.frame_len


@dataclass(frozen=True)
class CallOnset:
    """Provisional: a call may have begun (speech-like activity, seen ahead of the chunk's analysis).

    Raised from the block that completed frame ``raised`` (sample index of that frame's end) on;
    the recorder plays the notice and starts journaling from ``sample``. The chunk's analysis later
    confirms it (the next ``CallStart`` carries the same ``raised``) or withdraws it
    (``CallWithdrawn``).
    """

    sample: int  # the oldest sample a confirmed call may start at (what the caller must keep)
    onset: int  # the first speech-like frame
    raised: int


@dataclass(frozen=True)
class CallWithdrawn:
    """The provisional onset raised at ``raised`` was not a call (analysed up to ``sample``)."""

    raised: int
    sample: int


@dataclass(frozen=True)
class CallStart:
    """A call begins at ``sample`` (pre-roll included); its first sign was at ``onset``.

    ``raised``: the sample at which the call was first raised — its provisional onset, when one
    came first, else the end of the chunk that confirmed it (-1: a call continued after max_length).
    """

    sample: int
    onset: int
    evidence: str = ""  # what confirmed it: speech, dial, ringback, dtmf, callerid, offhook
    raised: int = -1
    answered: bool = True  # False: confirmed by its caller ID while still ringing (CallAnswered follows)


@dataclass(frozen=True)
class CallAnswered:
    """A call confirmed by its caller ID (the line still on-hook, between rings) was answered: its
    first words (or the sense input's off-hook) at ``sample``, known at ``raised``. The notice
    plays from here: played during the ringing, nobody would hear it."""

    sample: int
    raised: int


@dataclass(frozen=True)
class CallEnd:
    """A call ends before ``sample`` for ``reason``; ``dialed``/``caller_id`` are personal data."""

    sample: int
    reason: str
    last_activity: int
    dialed: str | None = None
    caller_id: str | None = None


@dataclass(frozen=True)
class LineAlarm:
    """The line-sense input and the audio disagree (never a lost call: the audio decides).

    ``kind``: ``sense_onhook_speech`` (on-hook, but speech goes on: the call continues on the
    audio's evidence), ``sense_offhook_silent`` (off-hook with no speech for ``sense_stuck_s``:
    the audio's end rules take over), ``sense_missed_call`` (a call with speech the input never
    showed off-hook).
    """

    sample: int
    kind: str


Event = CallStart | CallEnd | CallOnset | CallWithdrawn | CallAnswered | LineAlarm


class LineSegmenter:
    """Per-line call segmentation: activity, speech, tones, DTMF and caller ID over 10 ms frames."""

    def __init__(self, params: SegmentParams, start_sample: int = 0) -> None:
        p = self.p = params
        self.flen = p.frame_len
        self.half = self.flen // 2
        fr = lambda s: int(round(s / FRAME_S))  # noqa: E731 - seconds -> frames
        self._fr = fr
        # frame counts used per chunk
        self._n_confirm = fr(p.speech_confirm_s)
        self._n_half = fr(0.5)
        self._n_silence = fr(p.silence_s + p.hangover_s)
        self._n_settle = fr(p.floor_window_s + 0.5)
        self._n_hold = fr(p.idle_hold_s)
        # the Goertzel bank: 8 DTMF, then the call-progress frequencies, then the FSK marks
        tone_freqs = sorted({f for t in p.tones for f in t.freqs})
        self._marks = sorted({m for m, _ in FSK_STANDARDS.values()}) if p.cid_fsk else []
        freqs = list(DTMF_LOW + DTMF_HIGH) + tone_freqs + self._marks
        self.bank = GoertzelBank(freqs, p.rate, self.half)
        col = {f: 8 + i for i, f in enumerate(tone_freqs)}
        groups: list[tuple[float, ...]] = []
        for t in p.tones:
            g = tuple(sorted(t.freqs))
            if g not in groups:
                groups.append(g)
        self._groups = [[col[f] for f in g] for g in groups]
        self._n2 = 8 + len(tone_freqs)  # rows of the 20 ms window powers: DTMF and call-progress
        # the window detectors' constants (rows of the 40 ms window powers count from the first tone)
        g4 = group_table([[c - 8 for c in g] for g in self._groups])
        valid = g4.valid if g4.valid is not None else np.ones(g4.cols.shape, bool)
        d = p.dtmf
        self._win_args = (self._n2, 8, self._n2, self.flen, p.rate, np.asarray(DTMF_LOW + DTMF_HIGH), d.freq_tol,
                          (32768.0 ** 2) * 10.0 ** (d.min_level_dbfs / 10.0), -(d.normal_twist_db + TWIST_MARGIN_DB),
                          d.reverse_twist_db + TWIST_MARGIN_DB, d.min_fraction, d.balance,
                          g4.cols, valid, g4.nt, p.tone_min_fraction, (32768.0 ** 2) * 10.0 ** (p.tone_min_dbfs / 10.0),
                          len(tone_freqs), len(tone_freqs) + len(self._marks))
        self._group_of = [groups.index(tuple(sorted(t.freqs))) for t in p.tones]
        self._end_groups = {self._group_of[i] for i, t in enumerate(p.tones) if t.ends_call}
        self._end_group_arr = np.asarray(sorted(self._end_groups), dtype=np.int64)
        self._spec_by_name = {t.name: (i, t) for i, t in enumerate(p.tones)}
        self._floor_blocks = max(1, fr(p.floor_window_s) // 25)
        self._chunk_n = p.chunk
        # frames quieter than every tone/DTMF/FSK threshold (less 6 dB) need no spectrum
        self._gate_dbfs = min(p.tone_min_dbfs, p.dtmf.min_level_dbfs, -40.0) - 6.0
        self._tonal = TonalDetector(p.rate, self.flen)
        self._withdraw_n = int(round(p.onset_withdraw_s * p.rate))
        self._step_n = p.rate // 10  # the onset stage's step (the recorder's block)
        # the line-sense input (hook()): its state, whether the audio still agrees with it, and when
        self.sense_wired = False
        self._sense_off = False  # off-hook, as the input says
        self._sense_trust = True  # its word ends calls (False after a disagreement, until next off-hook)
        self._offhook_at = 0
        self._hook_end: int | None = None  # on-hook sample waiting for the analysis to pass it
        self._call_saw_offhook = False
        self._last_talk = _NEG  # end sample of the latest speech frame analysed
        self.alarms = 0
        self._prov: tuple[int, int] | None = None  # pending provisional onset: (onset, raised)
        self._stage_stale = False  # the onset stage rested during a call
        self._await_answer = False  # a call confirmed by caller ID alone, not answered yet
        # the level of this line's own calls (mean level of their loud frames, learned call by call):
        # speech far under it on an idle line is a neighbouring pair's crosstalk
        self.call_level: float | None = None  # the median of the last calls' levels (robust to a false one)
        self.call_levels: list[float] = []
        self._lvl_hist = np.zeros(_LEVEL_BINS, np.int64)  # the call's loud frames' levels (0.5 dB bins)
        self.provisional = 0  # provisional onsets raised, and how many were withdrawn
        self.withdrawn = 0
        self._reset_stream(start_sample)
        self._barrier = start_sample
        self.in_call = False
        self.call_start = start_sample
        self.onset = start_sample
        self.last_active_end = start_sample
        self._level = SILENCE_DBFS
        self._level_src: np.ndarray | None = None

    @property
    def level_dbfs(self) -> float:
        """RMS level of the last 0.1 s of the newest block fed (SILENCE_DBFS before any)."""
        if self._level_src is not None:
            self._level = rms_dbfs(self._level_src)
            self._level_src = None
        return self._level

    def _reset_stream(self, at: int) -> None:
        p = self.p
        fr = self._fr
        self.pos = at
        self._origin = at  # chunks are aligned to this sample
        self._onset = OnsetStage(p, at) if p.onset else None
        self._pending: list[np.ndarray] = []
        self._pending_n = 0
        self._frame0 = 0  # absolute frame index of the next chunk's first frame (frames counted from origin)
        k = self.bank._k
        # history for windows that reach back across a chunk boundary (silence before the stream)
        # bank terms are kept frequency-major, (K, frames): reductions over the frequencies are then
        # element-wise operations over whole rows (numpy is several times slower along short last axes)
        self._cf = np.zeros((k, 3), np.complex64)  # the last 3 frames' terms
        self._ch = np.zeros((k, 2), np.complex64)  # the last 2 half-frames' terms
        self._e = np.zeros(3)  # the last 3 frame energies
        # per-frame histories (the last frames before the next chunk) for windows that reach back
        self._blockmins = np.full(self._floor_blocks, np.inf)  # minima of the floor's 0.25 s blocks
        self._spc = np.zeros(fr(1.0) - 1, bool)  # speech frames, for the count over one second
        self._lvl = np.full(fr(p.idle_hold_s) - 1, np.inf)  # frame levels (inf: none yet)
        self._dl = np.zeros(_SUSTAIN_WIN - 1)  # |level steps|, for the level movement
        self._act_idle = np.zeros(fr(p.confirm_s) + 1, bool)  # idle activity, for the onset search
        self._endtone = np.zeros(fr(p.confirm_s) + 1, bool)  # busy/reorder frames, for the onset search
        self._floor_tape = np.full(fr(p.confirm_s) + 1, np.inf)  # the floor, for the call's reference
        self._fsk_win = (_NEG, _NEG)  # samples of the latest FSK decode window (never speech)
        self._seizure = int(0.35 * p.rate)  # the channel seizure (alternating bits) before the mark
        self._floor_now = SILENCE_DBFS
        self._dtmf = DtmfSequencer(p.dtmf)
        self._cad = CadenceTracker(p.tones, self._group_of, FRAME_S, p.cadence_tol)
        self._last_group_frame: dict[int, int] = {}
        self._fsk_pending: tuple[int, int, int] | None = None  # (first sample, end sample, mark frame)
        self._fsk_parts: list[np.ndarray] = []
        self._fsk_have = _NEG
        self._fsk_until = _NEG
        self._recent = np.zeros(0, np.float32)  # the last ~0.1 s of samples, for FSK windows
        self._mains_lag = int(round(0.1 * p.rate))
        self._hist = np.zeros(self._mains_lag, np.float32)  # the last 100 ms of samples (hum test)
        self._hot_run = 0  # loud frames in a row at the end of the last chunk (click test)
        self._last_click = _NEG  # end sample of the latest hook-switch click (crosstalk test)
        self._click_hold = int(round(3.0 * p.rate))
        self._call_state_reset()

    def _call_state_reset(self) -> None:
        self._ref = SILENCE_DBFS
        self._last_act = _NEG  # frame index of the last activity in the call
        self._raised = False
        self._act_tail = np.zeros(_SUSTAIN_WIN - 1, bool)
        self._call_min = np.inf  # lowest noise floor seen in the call (after its first seconds)
        lag = self._fr(self.p.idle_hold_s + self.p.floor_window_s + 0.5)
        self._callmin_lag = np.full(lag, np.inf)  # the call's floor over the last lag frames
        self._hangup: tuple[int, int, str] | None = None  # (confirmed at frame, group, name)
        self._digits: list[tuple[int, str]] = []
        self._cids: list[tuple[int, str]] = []  # caller IDs decoded for this call: (burst sample, number)
        self._call_frame0 = 0
        self._talk0: int | None = None  # first speech frame of the call (the line is off-hook by then)

    # -- what the caller must keep -------------------------------------------------
    @property
    def analysed_upto(self) -> int:
        """Samples before this index have been classified."""
        return self.pos - self._pending_n

    def _sample(self, frame: int) -> int:
        return self._origin + frame * self.flen

    @property
    def committed_upto(self) -> int:
        """In a call: samples before this index certainly belong to it.

        While the sense input says off-hook, everything analysed belongs to the call except the last
        ``sense_flash_s`` fed (an on-hook there is not decided yet) plus the tail."""
        if not self.in_call:
            return self.call_start
        if self._sense_off and self._sense_trust:
            held = self.pos - int(round(self.p.sense_flash_s * self.p.rate)) + self.p.tail
            return max(self.call_start, min(self.analysed_upto, max(held, self.last_active_end + self.p.tail)))
        if self._hook_end is not None:  # on-hook, the analysis has not passed it yet
            return max(self.call_start, min(self.analysed_upto, self._hook_end + self.p.tail))
        return max(self.call_start, min(self.analysed_upto, self.last_active_end + self.p.tail))

    @property
    def keep_from(self) -> int:
        """Oldest sample a future event may still refer to."""
        if self.in_call:
            return self.committed_upto
        back = self.analysed_upto - int(round(self.p.confirm_s * self.p.rate)) - self.p.preroll
        return max(self._barrier, min(back, self.analysed_upto))

    @property
    def floor_dbfs(self) -> float:
        return self._floor_now

    # -- feeding ---------------------------------------------------------------------
    def process(self, x: np.ndarray, start: int) -> list[Event]:
        """Feed the contiguous block ``x`` whose first sample has index ``start``.

        With the onset stage on, the block is taken in steps of 0.1 s aligned to the stream (the
        recorder's own block size) and cut at the chunk boundaries: each step is looked at by the
        onset stage after the chunks it completes were analysed, so events and their samples do not
        depend on how the caller cuts its blocks."""
        if start != self.pos:
            raise ValueError(f"non-contiguous block: expected sample {self.pos}, got {start}")
        if len(x) == 0:
            return []
        x = np.asarray(x, dtype=np.int16)
        self._level_src = np.array(x[-min(len(x), self.p.rate // 10):])  # level_dbfs, computed when asked
        events: list[Event] = []
        chunk = self._chunk_n
        if self._onset is None:
            self.pos = start + len(x)
            self._pending.append(x)
            self._pending_n += len(x)
            self._analyse_pending(events)
            self._hook_check(events)
            return events
        step = self._step_n
        i = 0
        while i < len(x):
            here = start + i
            n = min(len(x) - i, step - (here - self._origin) % step, chunk - self._pending_n)
            piece = x[i:i + n]
            self.pos = here + n
            self._pending.append(piece)
            self._pending_n += n
            self._analyse_pending(events)
            self._hook_check(events)
            self._provisional(piece, events)
            i += n
        return events

    def _analyse_pending(self, events: list[Event]) -> None:
        chunk = self._chunk_n
        if self._pending_n < chunk:
            return
        buf = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        whole = (len(buf) // chunk) * chunk
        rest = buf[whole:]
        self._pending = [rest] if len(rest) else []
        self._pending_n = len(rest)
        first = self.pos - len(buf)
        for i in range(0, whole, chunk):
            self._chunk(buf[i:i + chunk], first + i, events)

    def _answered(self, sample: int, raised: int, events: list[Event]) -> None:
        self._await_answer = False
        events.append(CallAnswered(sample=sample, raised=raised))

    def learn_levels(self, levels: list[float]) -> None:
        """Add calls' levels (dBFS, the mean of their loud frames): this line's call level is the
        median of the last 9 (a recorder restarting hands over what it had learned)."""
        self.call_levels = (self.call_levels + [float(v) for v in levels])[-9:]
        self.call_level = float(np.median(self.call_levels)) if self.call_levels else None
        if self._onset is not None:
            self._onset.speech_min = self._speech_min()

    def _speech_min(self) -> float:
        """The least level of a speech frame that may start a call on this idle line unless a hook
        click came within 3 s before it: speech further under the level of this line's own calls (the
        median of their 95th-percentile frame levels, once 3 calls are known) without an off-hook is
        a neighbouring pair's crosstalk. (A click: a loud run shorter than 30 ms no more than 15 dB
        under the calls' level; the line's own crackle is far quieter.)"""
        if self.call_level is None or len(self.call_levels) < 3:  # not before 3 calls said how loud they are
            return -np.inf
        return self.call_level - self.p.crosstalk_db

    # -- the line-sense input -----------------------------------------------------------
    def hook(self, sample: int, off_hook: bool, decided: int | None = None) -> list[Event]:
        """A debounced hook change of the line's sense input (``linestate.HookFilter``) at ``sample``;
        ``decided``: the sample by which the filter knew it (when the call is raised).

        Off-hook starts a call at once (pre-roll before it), or confirms the provisional one; while
        the input says off-hook, silence, the idle floor and busy tones end no call. On-hook ends the
        call once the analysis has passed it without speech going on (else: an alarm, and the audio
        decides).
        """
        self.sense_wired = True
        events: list[Event] = []
        if off_hook:
            self._sense_off = True
            self._sense_trust = True
            self._offhook_at = sample
            self._hook_end = None
            if self.in_call:
                self._call_saw_offhook = True
                if self._await_answer:
                    self._answered(sample, sample if decided is None else decided, events)
            else:
                self._hook_start(sample, sample if decided is None else decided, events)
        else:
            self._sense_off = False
            if self.in_call:
                self._hook_end = sample
        return events

    def _hook_start(self, sample: int, decided: int, events: list[Event]) -> None:
        start = max(self._barrier, sample - self.p.preroll)
        raised = self._prov[1] if self._prov is not None else decided
        self._prov = None
        cids = self._cids
        self._call_state_reset()
        self._cids = cids
        self._ref = self._floor_now
        f = (max(sample, self.analysed_upto) - self._origin) // self.flen
        self._call_frame0 = f
        self._last_act = f
        self.in_call = True
        self._call_saw_offhook = True
        self.call_start = start
        self.onset = max(sample, start)
        self.last_active_end = max(sample, start)
        events.append(CallStart(sample=start, onset=self.onset, evidence="offhook", raised=raised))

    def _hook_check(self, events: list[Event]) -> None:
        """After the chunks: end the call at a passed on-hook, or raise the disagreements."""
        p = self.p
        e = self._hook_end
        if e is not None and not self.in_call:
            self._hook_end = None
        elif e is not None and self.analysed_upto >= e + int(round(p.sense_check_s * p.rate)):
            self._hook_end = None
            if self._last_talk > e + int(round(p.sense_grace_s * p.rate)):
                self._sense_trust = False
                self.alarms += 1
                events.append(LineAlarm(sample=e, kind="sense_onhook_speech"))
            else:
                self._end(max(self.call_start, min(e + p.tail, self.analysed_upto)), "onhook", events)
        if (self.in_call and self._sense_off and self._sense_trust
                and self.analysed_upto - max(self._last_talk, self._offhook_at) >= int(p.sense_stuck_s * p.rate)):
            self._sense_trust = False
            self.alarms += 1
            events.append(LineAlarm(sample=self.analysed_upto, kind="sense_offhook_silent"))

    def _provisional(self, x: np.ndarray, events: list[Event]) -> None:
        """The onset stage over the new block (after the chunks it completed were analysed): raise a
        provisional call, or withdraw the one the analysis has passed without confirming it."""
        prov = self._prov
        if prov is not None and not self.in_call and self.analysed_upto >= prov[1] + self._withdraw_n:
            events.append(CallWithdrawn(raised=prov[1], sample=self.analysed_upto))
            self._prov = prov = None
            self.withdrawn += 1
        if self._onset is None:
            return
        if self.in_call and not self._await_answer:
            # the stage rests while the analysis has a call open; once it has ended that call, the
            # stage looks again at the audio from there on (the next call may have begun already)
            self._stage_stale = True
            return
        if self._stage_stale:
            self._stage_stale = False
            self._onset = OnsetStage(self.p, self.analysed_upto, floor_dbfs=self._floor_now)
            self._onset.speech_min = self._speech_min()
            hit = self._onset.feed(np.concatenate(self._pending) if self._pending else x[:0])
            hit = None if hit is None else (hit[0], self.pos)  # raised now, when it is known
        else:
            hit = self._onset.feed(x)
        if self.in_call:  # confirmed by its caller ID, still ringing: the first words answer it
            if self._talk0 is not None:  # (the analysis heard them first)
                self._answered(self._sample(self._talk0), self.pos, events)
            elif hit is not None:
                self._answered(hit[0], hit[1], events)
            return
        if prov is not None or hit is None or hit[0] < self._barrier:
            return
        onset, raised = hit
        self._prov = (onset, raised)
        self.provisional += 1
        events.append(CallOnset(sample=min(self.keep_from, max(self._barrier, onset - self.p.preroll)),
                                onset=onset, raised=raised))

    def finish(self, reason: str = "eof") -> list[Event]:
        """End of input (or a discontinuity): analyse what is left, close the call in progress."""
        events: list[Event] = []
        if self._pending_n:
            buf = np.concatenate(self._pending)
            whole = (len(buf) // self.flen) * self.flen
            if whole >= 25 * self.flen:  # a partial chunk of whole floor blocks is analysed as is
                whole = (whole // (25 * self.flen)) * 25 * self.flen
                self._chunk(buf[:whole], self.pos - len(buf), events)
        if self.in_call:
            end = min(self.pos, self.last_active_end + self.p.tail)
            self._end(max(end, self.call_start), reason, events)
        if self._prov is not None:  # never confirmed before the input ended
            events.append(CallWithdrawn(raised=self._prov[1], sample=self.pos))
            self._prov = None
            self.withdrawn += 1
        return events

    def handover(self, params: SegmentParams) -> "LineSegmenter":
        """A segmenter with new settings that continues this idle one without losing a sample."""
        if self.in_call:
            raise ValueError("settings change only between calls")
        seg = LineSegmenter(params, start_sample=self.analysed_upto)
        seg.learn_levels(self.call_levels)
        if self._pending_n:
            seg.process(np.concatenate(self._pending), self.analysed_upto)
        return seg

    def restart(self, at_sample: int) -> None:
        """Continue after a gap in the input (device lost and back): forget partial state."""
        self._reset_stream(at_sample)
        self._barrier = at_sample
        self.in_call = False
        self.call_start = at_sample
        self._prov = None

    # -- one chunk -------------------------------------------------------------------
    def _chunk(self, x16: np.ndarray, first: int, events: list[Event]) -> None:
        p = self.p
        flen, half = self.flen, self.half
        nf = len(x16) // flen
        f0 = self._frame0
        self._frame0 += nf
        # frame energies, levels and the noise floor (minimum over the previous blocks of 0.25 s and
        # the current block so far). Goertzel terms per half-frame, frame and window: only frames
        # loud enough to hold a tone, DTMF or FSK (and the 3 before them, for the windows) are
        # analysed, the rest are 0. Idle and no tone going on: a tone, digit or mark holds >= 60 %
        # of its window's power, so its frames stand >= 4 dB over the noise; frames within 3 dB of
        # the floor hold none
        gate_floor = _GATE_DB if not self.in_call and self._cad.run_label < 0 else 0.0
        x, e, lv, floor, self._blockmins, n_loud, near = _levels(x16, flen, self._blockmins, self._gate_dbfs,
                                                                 gate_floor)
        self._floor_now = float(floor[-1])
        if (not self.in_call and not n_loud and self._cad.run_label < 0 and self._fsk_pending is None
                and not self._cf.any() and not self._spc.any()):
            # idle, nothing to analyse and nothing under way (the common case on an idle line): no
            # detector can fire here, so only the features later chunks look back on are kept
            self._quiet_chunk(x, e, f0, nf, lv, floor)
            return
        # every window detector in one pass: DTMF key codes of the 20 ms windows (frames i-1, i),
        # call-progress group labels and FSK marks of the 40 ms windows (frames i-3 .. i); the 2
        # half-frames and 3 frames before the chunk are kept for windows reaching back
        y = self.bank.raw_t(x.reshape(2 * nf, half))
        steps, p0 = self.bank.phase_t(2 * nf, first)
        e_ext = np.concatenate((self._e, e))  # 3 frames of history first
        self._e = e_ext[-3:]
        codes_all, tl_all, mark, found, self._ch, self._cf = analyse_windows(
            y, steps, p0, near, self._ch, self._cf, e_ext, *self._win_args)
        none = no_codes(nf)
        codes = codes_all if found[0] else none  # (the shared "nothing" lets the sequencers skip their work)
        tl = tl_all if found[1] else none
        digits = self._dtmf.feed(codes, f0)
        tone_events = self._cad.feed(tl, f0)
        # FSK caller ID: a steady mark tone (1200 or 1300 Hz) for 50 ms starts a decode
        cid_events: list[tuple[int, str]] = []
        fsk_frame = None
        if self._marks:
            self._fsk(mark if found[2] else None, x, first, f0, cid_events)
            # the caller-ID burst is not speech (its confirmation is the decoded caller ID)
            ws, we = self._fsk_win
            a = max(0, (ws - self._seizure - first) // flen)
            b = min(nf, -(-(we - first) // flen))
            if b > a:
                fsk_frame = np.zeros(nf, bool)
                fsk_frame[a:b] = True
        if fsk_frame is None:
            a = b = 0
        # speech, idle activity, busy/reorder frames, level movement, and the tapes that keep them
        smin = p.speech_min_dbfs
        talk, act_idle_ext, endtone_ext, floor_ext, lvl_ext, moving, lv_min, dtmf_frame = self._tapes(
            lv, floor, tl_all, codes_all, a, b, p.trigger_db, p.release_db, smin,
            self._not_speech(x, e, lv, floor, smin))
        if self.in_call:  # the call's own level (its loud frames), learned when it ends
            loud = lv[lv >= floor + p.trigger_db]
            self._lvl_hist += np.bincount(np.clip(((loud - SILENCE_DBFS) * 2).astype(np.int64), 0, _LEVEL_BINS - 1),
                                          minlength=_LEVEL_BINS)
        tk = np.flatnonzero(talk)
        if len(tk):
            self._last_talk = self._sample(f0 + int(tk[-1]) + 1)
        F = dict(lv=lv, lv_min=lv_min, floor=floor, tl=tl_all, tone_any=tl is not none, dtmf=dtmf_frame, talk=talk, act_idle_ext=act_idle_ext, moving=moving,
                 lvl_ext=lvl_ext, endtone_ext=endtone_ext, floor_ext=floor_ext, f0=f0, nf=nf, x=x, tonal=None)
        self._run_state(F, digits, tone_events, cid_events, events)
        if F["tonal"] is None:
            self._tonal.reset()  # not looked at: no run of peaks continues across this chunk

    def _not_speech(self, x: np.ndarray, e: np.ndarray, lv: np.ndarray, floor: np.ndarray, smin: float) -> np.ndarray:
        """Frames loud enough for speech that are not: mains hum, flat envelopes and clicks.

        Hum repeats itself exactly every 100 ms (5 periods of 50 Hz, 6 of 60 Hz: every harmonic), so
        a frame that correlates >= 0.7 with the audio 100 ms before it, at the same level (within
        4 dB), is hum (speech changes its pitch, level and sound within 100 ms; a caller-ID burst's
        steady bits repeat too and are not speech either). A click or a switching pop is shorter
        than 30 ms: loud frames in a run of fewer than 3 are not speech (a syllable lasts 100 ms or
        more). Updates the history both need (the last 100 ms of samples, the open run).
        """
        flen = self.flen
        nf = len(lv)
        lag = self._mains_lag
        click_db = max(self.p.speech_min_dbfs, self._speech_min() + self.p.crosstalk_db - 15.0) \
            if np.isfinite(self._speech_min()) else np.inf
        z = np.concatenate((self._hist, x))
        self._hist = z[-lag:]
        g = z[:nf * flen].reshape(nf, flen)
        f = z[lag:lag + nf * flen].reshape(nf, flen)
        eg = np.einsum("ij,ij->i", g, g)
        ef = e.astype(np.float64)
        mains = (np.einsum("ij,ij->i", f, g) >= 0.7 * np.sqrt(ef * eg)) & (np.abs(ef - eg) <= 0.6 * np.maximum(ef, eg))
        # a flat envelope: this frame and the 4 before it within 0.5 dB (a steady tone, a caller-ID
        # burst, hum; 1 % of speech frames, never a word's worth)
        lvx = np.concatenate((self._lvl[-4:], lv))
        win = np.lib.stride_tricks.sliding_window_view(lvx, 5)
        with np.errstate(invalid="ignore"):
            flat = (win.max(axis=1) - win.min(axis=1)) <= 0.5
        hot = (lv >= floor + self.p.trigger_db) & (lv >= smin)
        short = np.zeros(nf, bool)
        i = 0
        run0 = self._hot_run
        while i < nf:
            if not hot[i]:
                run0 = 0
                i += 1
                continue
            j = i
            while j < nf and hot[j]:
                j += 1
            if j < nf and run0 + (j - i) < 3:  # a finished run shorter than 30 ms
                short[i:j] = True
                if lv[i:j].max() >= click_db:  # a hook-switch click: an off-hook may follow
                    self._last_click = self._sample(self._frame0 - nf + j)
            run0 = run0 + (j - i) if j == nf else 0
            i = j
        self._hot_run = run0
        out = mains | short | flat
        if not self.in_call and np.isfinite(self._speech_min()):
            # crosstalk: speech far under this line's own calls, with no hook click before it
            near = self._sample(self._frame0 - nf + np.arange(nf)) - self._last_click <= self._click_hold
            out |= (lv < self._speech_min()) & ~near
        return out

    def _quiet_chunk(self, x, e, f0, nf, lv, floor) -> None:
        """An idle chunk with no frame over the spectral gate: keep what the full path would keep."""
        self._hist = x[-self._mains_lag:]
        self._hot_run = 0
        k = self.bank._k
        self._cf = np.zeros((k, 3), np.complex64)
        self._ch = np.zeros((k, 2), np.complex64)
        self._e = np.concatenate((self._e, e))[-3:]
        none = no_codes(nf)
        self._dtmf.feed(none, f0)  # no digit, no tone can come out of a run of "nothing"
        self._cad.feed(none, f0)
        self._recent = x[-int(0.1 * self.p.rate):]
        # speech needs floor + trigger_db and >= speech_min_dbfs, so it is loud: none here, and no
        # idle activity is taken from a quiet chunk either
        minus = np.full(nf, -1, np.int64)
        self._tapes(lv, floor, minus, minus, 0, 0, np.inf, np.inf)
        self._tonal.reset()

    def _tapes(self, lv, floor, tl, codes, fsk_a, fsk_b, trigger_db, release_db, speech_min=None, excl=None):
        """The chunk's per-frame masks (``_masks``); the history tapes move on by the chunk.

        Returns (talk, idle activity, end-tone, floor and level tapes, level moving, over
        min_level, DTMF frame).
        """
        p = self.p
        nf = len(lv)
        talk, spc, act_idle_ext, endtone_ext, floor_ext, lvl_ext, dl, moving, lv_min, dtmf_frame = _masks(
            lv, floor, tl, codes, np.zeros(nf, np.bool_) if excl is None else excl, fsk_a, fsk_b, self._end_group_arr,
            self._spc, self._act_idle, self._endtone,
            self._floor_tape, self._lvl, self._dl, trigger_db, p.speech_min_dbfs if speech_min is None else speech_min,
            p.min_level_dbfs, release_db,
            self._n_confirm)
        self._spc, self._act_idle, self._endtone = spc[nf:], act_idle_ext[nf:], endtone_ext[nf:]
        self._floor_tape, self._lvl, self._dl = floor_ext[nf:], lvl_ext[nf:], dl[nf:]
        return talk, act_idle_ext, endtone_ext, floor_ext, lvl_ext, moving, lv_min, dtmf_frame

    def _next_evidence(self, F, i, digits, tone_events, cid_events) -> tuple[int, str] | None:
        """The first chunk frame >= i that confirms a call, and what it is."""
        f0 = F["f0"]
        cands: list[tuple[int, str]] = []
        t = np.flatnonzero(F["talk"][i:])
        if len(t):
            cands.append((i + int(t[0]), "speech"))
        for fa, _ in cid_events:
            cands.append((max(fa - f0, 0), "callerid"))
        for fa, _ in digits:
            cands.append((max(fa - f0, 0), "dtmf"))
        starts_call = {t.name for t in self.p.tones if not t.ends_call}
        for fa, name in tone_events:
            if name in starts_call:
                cands.append((max(fa - f0, 0), name))
        cands = [c for c in cands if c[0] >= i]
        return min(cands) if cands else None

    def _fsk(self, mark, x, first, f0, out) -> None:
        """Start an FSK decode at a steady mark tone; decode once 1.4 s of signal is in.

        ``mark``: per frame, the 40 ms window ending there is a steady mark (None: none is).
        """
        p = self.p
        recent = self._recent
        self._recent = x[-int(0.1 * p.rate):]
        ext_first = first - len(recent)
        if self._fsk_pending is None and mark is not None:
            run = np.convolve(mark.astype(np.int32), np.ones(5, np.int32), mode="full")[:len(mark)]
            for h in np.flatnonzero(run >= 5).tolist():
                fa = f0 + h - 4
                s = self._sample(fa) - int(0.06 * p.rate)
                if s >= self._fsk_until:
                    self._fsk_pending = (s, s + int(1.4 * p.rate), fa)
                    self._fsk_win = (s, s + int(1.4 * p.rate))
                    self._fsk_parts = []
                    self._fsk_have = max(s, ext_first)
                    break
        if self._fsk_pending is not None:
            s, end, fa = self._fsk_pending
            hi = min(end, first + len(x))
            if hi > self._fsk_have:
                ext = np.concatenate((recent, x))
                self._fsk_parts.append(ext[self._fsk_have - ext_first:hi - ext_first])
                self._fsk_have = hi
            if first + len(x) >= end:
                cid = decode_fsk(np.concatenate(self._fsk_parts), p.rate)
                self._fsk_until = end
                self._fsk_pending = None
                self._fsk_parts = []
                if cid is not None and (cid.number or cid.absent):
                    out.append((max(fa, f0), cid.number or f"({cid.absent})"))

    # -- the state machine -----------------------------------------------------------
    def _run_state(self, F, digits, tone_events, cid_events, events) -> None:
        nf = F["nf"]
        for fa, num in cid_events:
            self._cids.append((self._sample(fa), num))
        i = 0
        while i < nf:
            if not self.in_call:
                nxt = self._next_evidence(F, i, digits, tone_events, cid_events)
                if nxt is None:
                    return
                j, why = nxt
                self._start_call(F, j, why, events)
                i = j
            i = self._scan_call(F, i, digits, tone_events, events)

    def _start_call(self, F, j, why, events) -> None:
        p = self.p
        nf, f0 = F["nf"], F["f0"]
        ext = F["act_idle_ext"]
        hist = len(ext) - nf
        barrier_f = (self._barrier - self._origin + self.flen - 1) // self.flen
        lo = max(0, hist + j - self._fr(p.confirm_s), hist + barrier_f - f0)
        # never inside (or at the edges of) a busy/reorder tone: that is the previous call's hang-up
        bz = np.flatnonzero(F["endtone_ext"][lo:hist + j + 1])
        if len(bz):
            lo = min(lo + int(bz[-1]) + 6, hist + j)
        win = ext[lo:hist + j + 1]
        act = np.flatnonzero(win)
        onset_f = f0 + (lo + int(act[0]) - hist if len(act) else j)
        onset = max(self._sample(onset_f), self._barrier)
        start = max(self._barrier, onset - p.preroll)
        cids = self._cids
        self._call_state_reset()
        self._cids = cids
        # the idle floor: the lowest floor from the first sign to the confirmation (the floor follows a
        # fall at once but a rise only after its window, so this is the line before the off-hook)
        fl = F["floor_ext"][hist + onset_f - f0:hist + j + 1] if onset_f - f0 >= -hist else F["floor_ext"][:hist + j + 1]
        self._ref = float(fl.min()) if len(fl) else float(F["floor"][j])
        self._call_frame0 = f0 + j  # confirmation: the onset may be a crackle pop before the off-hook
        if why == "speech":
            self._talk0 = f0 + j
        self._last_act = f0 + j
        self.in_call = True
        self._call_saw_offhook = self._sense_off
        self.call_start = start
        self.onset = onset
        self.last_active_end = self._sample(f0 + j + 1)
        raised = self._prov[1] if self._prov is not None else self._sample(f0 + nf)
        # confirmed by its caller ID alone, before anything showed an answer: it is still ringing
        ringing = why == "callerid" and self._prov is None and not self._sense_off
        self._await_answer = ringing
        self._prov = None
        events.append(CallStart(sample=start, onset=onset, evidence=why, raised=raised, answered=not ringing))

    def _scan_call(self, F, i, digits, tone_events, events) -> int:
        """Advance the call from chunk frame ``i``; returns where scanning stopped (nf or after the end)."""
        p = self.p
        nf, f0 = F["nf"], F["f0"]
        lv, floor, tl = F["lv"][i:], F["floor"][i:], F["tl"][i:]
        n = nf - i
        fa0 = f0 + i
        loud, want, nwant = _call_activity(lv, floor, tl, F["dtmf"][i:], F["lv_min"][i:], F["moving"][i:], self._ref,
                                           p.release_db)
        # music under the off-hook noise (quiet passages, a track fading out): persistent spectral
        # peaks, looked for only where the level alone says nothing and the line is over its idle floor
        if F["tonal"] is None and nwant >= self._n_half:
            full = np.zeros(nf, bool)
            full[i:] = want
            F["tonal"] = self._tonal.frames(F["x"], full)
        if F["tonal"] is not None:
            loud |= F["tonal"][i:] & want
        # sustained activity: >= 5 loud frames among the last 20; a lone click or crackle pop is not
        # 1. silence: no activity for silence_s (+ hang-over)
        last, kk, act_tail = _sustained(loud, self._act_tail, self._last_act, fa0, self._n_silence, _SUSTAIN_MIN)
        cands: list[tuple[int, str, int]] = []  # (frame, reason, end sample)
        if kk >= 0:
            cands.append((kk, "silence", self._sample(int(last[kk]) + 1 + self._fr(p.hangover_s))))
        # 2. back at the idle floor after the off-hook noise had risen above it
        # the call's own noise floor: the lowest floor seen since floor_window_s after its first speech
        # (a caller ID or a dial tone may come seconds before the line settles off-hook)
        ws, we = self._fsk_win
        if self._talk0 is not None and ws - self._seizure <= self._sample(self._talk0) < we:
            self._talk0 = None  # that was the caller-ID burst, before the off-hook
        if self._talk0 is None:
            tk = np.flatnonzero(F["talk"][i:])
            tk = tk[tk + fa0 >= (we - self._origin) // self.flen]
            if len(tk):
                self._talk0 = fa0 + int(tk[0])
        settled_from = n if self._talk0 is None else max(0, self._talk0 + self._n_settle - fa0)
        # >= 90 % of the last idle_hold_s within idle_margin_db of the idle floor, judged on the
        # call's floor as it was before the quiet second being tested (and before the floor window
        # could take in that quiet)
        le = F["lvl_ext"]
        callmin, self._callmin_lag, kk = _idle_return(floor, settled_from, self._call_min, self._callmin_lag,
                                                      self._ref, p.idle_step_db, le[len(le) - nf - self._n_hold + 1 + i:],
                                                      p.idle_margin_db, self._n_hold, 0.9)
        if kk >= 0:
            # the last activity before the quiet second (the on-hook click)
            before = last[max(0, kk - self._n_hold)]
            cands.append((kk, "idle", self._sample(int(before) + 1)))
        # 3. busy / reorder: ends at the end of the tone, at most hangup_hold_s after it was recognised
        hang = self._hangup
        if hang is None:
            for fa, name in tone_events:
                if fa >= fa0 and self._spec_by_name[name][1].ends_call:
                    hang = (fa, self._group_of[self._spec_by_name[name][0]], name)
                    break
        if hang is not None:
            hf, g, name = hang
            spec = self._spec_by_name[name][1]
            gap_lim = self._fr(spec.off_s * (1 + p.cadence_tol) + 0.15)
            idx = np.arange(fa0, fa0 + n)
            lastg = np.maximum.accumulate(np.where(tl == g, idx, _NEG)) if F["tone_any"] else np.full(n, _NEG)
            lastg = np.maximum(lastg, self._last_group_frame.get(g, _NEG))
            after = idx >= hf
            k = np.flatnonzero(after & (((idx - lastg) > gap_lim) | (idx - hf >= self._fr(p.hangup_hold_s))))
            if len(k):
                kk = int(k[0])
                cands.append((kk, name, self._sample(int(lastg[kk]) + 1)))
            else:
                self._last_group_frame[g] = int(lastg[-1])
        # 4. longest call
        mk = (self.call_start + p.max_call - self._sample(fa0)) // self.flen
        if mk < n:
            cands.append((max(0, int(mk)), "max_length", self._sample(fa0 + max(0, int(mk)))))
        if self._sense_off and self._sense_trust:  # the input says off-hook: only it ends the call
            cands = [c for c in cands if c[1] == "max_length"]
        # digits and talk inside the call
        for fa, key in digits:
            if max(fa, f0) >= fa0 and (not cands or fa <= fa0 + min(c[0] for c in cands)):
                self._digits.append((fa, key))
        if not cands:
            self._act_tail = act_tail
            self._last_act = int(last[-1])
            self._call_min = float(callmin[-1]) if len(callmin) else self._call_min
            self._hangup = hang
            self.last_active_end = self._sample(self._last_act + 1)
            if F["tone_any"] and tl.max() >= 0:
                for g in range(len(self._groups)):
                    hit = np.flatnonzero(tl == g)
                    if len(hit):
                        self._last_group_frame[g] = fa0 + int(hit[-1])
            return nf
        kk, reason, end = min(cands, key=lambda c: c[0])
        keep = (self._ref, float(callmin[kk]))
        self.last_active_end = self._sample(int(last[kk]) + 1)
        if reason in ("silence", "idle"):
            end = min(end + p.tail, self._sample(fa0 + kk + 1))
        elif reason == "max_length":
            pass
        else:
            end = min(end + p.tail, self._sample(fa0 + kk + 1))
        end = max(end, self.call_start)
        self._end(end, reason, events)
        if reason == "max_length":
            self._ref, self._call_min = keep
            self.in_call = True
            self.call_start = end
            self.onset = end
            self._barrier = end
            self._last_act = fa0 + kk
            events.append(CallStart(sample=end, onset=end, evidence="max_length"))
            return i + kk + 1 if kk + 1 < n else nf
        return i + kk + 1

    def _numbers(self, end: int) -> tuple[str | None, str | None]:
        """Dialled number: the call's first run of digits (digits later than _DIAL_GAP_S after the
        previous one, e.g. menu choices, are not part of it). Caller ID: the latest decoded before
        the call's ``end`` (one decoded after it, in the same chunk, is the next call's)."""
        keys = ""
        prev = None
        for f, k in self._digits:
            if prev is not None and f - prev > self._fr(_DIAL_GAP_S):
                break
            keys += k
            prev = f
        mine = [num for at, num in self._cids if at < end]
        cid = mine[-1] if mine else None
        if self.p.cid_dtmf:
            dcid = parse_dtmf_cid(keys)
            if dcid is not None:
                return None, dcid
        return (keys or None), cid

    def _end(self, sample: int, reason: str, events: list[Event]) -> None:
        if self.sense_wired and not self._call_saw_offhook and self._talk0 is not None:
            self.alarms += 1
            events.append(LineAlarm(sample=sample, kind="sense_missed_call"))
        self._call_saw_offhook = self._sense_off
        n = int(self._lvl_hist.sum())
        if n >= 200:  # 2 s of loud frames: enough to say how loud this line's calls are (their 95th percentile)
            k = int(np.searchsorted(np.cumsum(self._lvl_hist), 0.95 * n))
            self.learn_levels([SILENCE_DBFS + k / 2.0])
        self._lvl_hist[:] = 0
        self._await_answer = False
        dialed, cid = self._numbers(sample)
        self.in_call = False
        self._barrier = sample
        self.call_start = sample
        events.append(CallEnd(sample=sample, reason=reason, last_activity=self.last_active_end,
                              dialed=dialed, caller_id=cid))
        later = [c for c in self._cids if c[0] >= sample]  # the next call's
        self._call_state_reset()
        self._cids = later


# The pipeline's historical name.
EnergySegmenter = LineSegmenter


def warm_up(params: SegmentParams | None = None) -> float:
    """Run every kernel once on a synthetic call before live audio arrives.

    With the kernels built ahead of time (``dsp._jit``) this takes ~0.1 s. Under numba's JIT it
    compiles them, or loads them from its cache (~0.5 s; ~20 s with an empty cache), so that the
    segmenter never stalls on a compile while the rings fill; ``scripts/build_kernels.py`` also
    takes the kernels' argument types from this run. The call: off-hook noise step, dial tone, a
    DTMF digit, talk, quiet off-hook noise, busy tone. Returns the seconds it took.
    """
    import time

    from .synth import dtmf_string, line_noise, speech_like, to_int16, tone

    t0 = time.perf_counter()
    p = params or SegmentParams()
    rate = p.rate
    rng = np.random.default_rng(0)
    parts = [np.zeros(3 * rate, np.float32), tone((350.0, 440.0), rate, rate, -20.0), dtmf_string("0", rate, rng),
             speech_like(rng, 5.0, rate), np.zeros(3 * rate, np.float32), tone((480.0, 620.0), 2 * rate, rate, -20.0)]
    x = np.concatenate(parts)
    x[3 * rate:] += line_noise(rng, len(x) - 3 * rate, rate, hiss_dbfs=-55.0)  # off-hook noise
    x += line_noise(rng, len(x), rate)
    x = to_int16(np.concatenate((x, np.zeros(12 * rate, np.float32))))
    seg = LineSegmenter(p)
    seg.process(x, 0)
    seg.finish("eof")
    seg._tonal.frames(x[:p.chunk].astype(np.float32), np.ones(p.chunk // seg.flen, bool))
    return time.perf_counter() - t0

"""Labelled analog-line test corpus from real recordings and standard signals.

Material (Debian packages, installed by scripts/setup.sh --test):
  * English speech: asterisk-core-sounds-en-wav (8 kHz prompts read by a person)
  * Korean speech: espeak-ng -v ko (synthetic), resampled to the line rate
  * hold music: asterisk-moh-opsound-wav
and the signals of dsp.synth / dsp.callerid: Korean call-progress tones, DTMF dialling,
FSK (Bell 202 / V.23, SDMF / MDMF) and DTMF caller ID, hook clicks, crackle, mains hum,
hiss at a chosen SNR, low-level crosstalk, optional G.711 (mu-law or A-law) companding.

Every call carries a label: first sign (click or caller ID), first and last speech,
on-hook, dialled number, caller ID, how it ended, and every speech span.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from dsp import callerid, synth

SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
MOH = Path("/usr/share/asterisk/moh")
KOREAN = ["안녕하세요 민원실입니다 무엇을 도와드릴까요",
          "주민등록등본을 발급받으려면 어떻게 해야 하나요",
          "담당자에게 연결해 드리겠습니다 잠시만 기다려 주십시오",
          "네 알겠습니다 감사합니다",
          "서류는 다음 주 화요일까지 제출하시면 됩니다",
          "전화번호를 다시 한 번 말씀해 주시겠어요",
          "그 건은 제가 확인해 보고 다시 연락드리겠습니다",
          "오늘 오후 세 시에 방문하셔도 됩니다"]
_NOT_SPEECH = ("beep", "tone", "silence", "dtmf", "ding")


def _norm(x: np.ndarray, level_dbfs: float) -> np.ndarray:
    """Scale so that the active (loud) part has ``level_dbfs`` RMS."""
    f = x[: len(x) // 80 * 80].reshape(-1, 80)
    e = (f * f).mean(axis=1)
    act = e[e > e.max() * 1e-3] if e.max() > 0 else e
    rms = np.sqrt(act.mean()) if len(act) else 1.0
    return (x * (10 ** (level_dbfs / 20) / max(rms, 1e-9))).astype(np.float32)


def _trim(x: np.ndarray) -> np.ndarray:
    """Cut leading and trailing silence (frames 30 dB under the loudest: breath, room tone)."""
    f = x[: len(x) // 80 * 80].reshape(-1, 80)
    e = (f * f).mean(axis=1)
    on = np.flatnonzero(e > e.max() * 1e-3)
    return x[on[0] * 80:(on[-1] + 1) * 80] if len(on) else x[:0]


@functools.lru_cache(maxsize=None)
def english(rate: int = 8000) -> tuple[np.ndarray, ...]:
    """Every spoken prompt longer than 1 s, trimmed, at ``rate``."""
    out = []
    for p in sorted(SOUNDS.rglob("*.wav")):
        # the folder counts too: silence/1.wav ... silence/10.wav are dither, not speech
        if any(w in part for part in p.relative_to(SOUNDS).parts for w in _NOT_SPEECH):
            continue
        x, r = sf.read(str(p), dtype="float32")
        if x.ndim > 1:
            x = x[:, 0]
        if r != rate:
            x = resample_poly(x, rate, r).astype(np.float32)
        x = _trim(x)
        if len(x) > rate:
            out.append(x)
    if not out:
        raise RuntimeError(f"no speech in {SOUNDS}: install asterisk-core-sounds-en-wav")
    return tuple(out)


@functools.lru_cache(maxsize=None)
def korean(rate: int = 8000) -> tuple[np.ndarray, ...]:
    """Korean sentences spoken by espeak-ng, at ``rate``."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed")
    out = []
    with tempfile.TemporaryDirectory() as d:
        for i, text in enumerate(KOREAN):
            w = Path(d) / f"{i}.wav"
            subprocess.run([exe, "-v", "ko", "-s", "150", "-w", str(w), text], check=True, capture_output=True)
            x, r = sf.read(str(w), dtype="float32")
            g = np.gcd(r, rate)
            out.append(_trim(resample_poly(x, rate // g, r // g).astype(np.float32)))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def music(rate: int = 8000) -> tuple[np.ndarray, ...]:
    out = []
    for p in sorted(MOH.glob("*.wav")):
        x, r = sf.read(str(p), dtype="float32")
        if x.ndim > 1:
            x = x.mean(axis=1)
        if r != rate:
            g = np.gcd(r, rate)
            x = resample_poly(x, rate // g, r // g).astype(np.float32)
        out.append(x)
    if not out:
        raise RuntimeError(f"no hold music in {MOH}: install asterisk-moh-opsound-wav")
    return tuple(out)


# -- G.711 (ITU-T G.711 segment coding, vectorised) -------------------------------------------
def mulaw(x: np.ndarray) -> np.ndarray:
    """Encode to G.711 mu-law and decode back (float in [-1, 1))."""
    s = np.clip(np.round(x * 8192.0), -8191, 8191).astype(np.int32)  # 14-bit
    sign = s < 0
    mag = np.abs(s) + 33
    seg = np.clip(np.floor(np.log2(np.maximum(mag, 1))) - 5, 0, 7).astype(np.int32)
    mant = (mag >> (seg + 1)) & 0xF
    dec = ((mant << 1) + 33) << seg
    dec = dec - 33
    return (np.where(sign, -dec, dec) / 8192.0).astype(np.float32)


def alaw(x: np.ndarray) -> np.ndarray:
    """Encode to G.711 A-law and decode back (float in [-1, 1))."""
    s = np.clip(np.round(x * 4096.0), -4095, 4095).astype(np.int32)  # 13-bit
    sign = s < 0
    mag = np.abs(s)
    seg = np.clip(np.floor(np.log2(np.maximum(mag, 1))) - 4, 0, 7).astype(np.int32)
    mant = np.where(seg == 0, mag >> 1, mag >> seg) & 0xF
    dec = np.where(seg == 0, (mant << 1) + 1, ((mant << 1) + 33) << (seg - 1))
    return (np.where(sign, -dec, dec) / 4096.0).astype(np.float32)


# -- one line ----------------------------------------------------------------------------------
@dataclass
class Label:
    """Ground truth of one call, in samples from the start of the line."""

    start: int  # first sign: off-hook click or caller ID
    first_speech: int
    last_speech: int
    end: int  # end of the on-hook click
    dialed: str | None
    caller_id: str | None
    ending: str  # busy, reorder, hangup_idle (off-hook noise stops), hangup (no noise change)
    speech: list[tuple[int, int]] = field(default_factory=list)
    hold_s: float = 0.0
    longest_pause_s: float = 0.0
    step_db: float = 0.0  # off-hook noise step over the idle noise (0: none)
    hold: tuple[int, int] | None = None  # the hold music's span
    hook: int = -1  # the off-hook click (after the caller ID, if any)


@dataclass
class LineSpec:
    rate: int = 8000
    seconds: float = 600.0
    snr_db: float = 20.0
    companding: str | None = None  # None, "mulaw", "alaw"
    seed: int = 1
    talk_s: tuple[float, float] = (20.0, 120.0)
    idle_s: tuple[float, float] = (5.0, 60.0)
    hold_p: float = 0.2
    long_pause_p: float = 0.3
    crosstalk: bool = True
    call_dbfs: float | None = None  # a call's talk level (None: the idle noise + the SNR, idle noise <= -62)
    distractors: bool = False  # mains-hum bursts, crosstalk 25-40 dB below a call, switching clicks
    calls: bool = True  # False: an idle line (distractors only)


def _dtmf_dial(rng, digits: str, rate: int) -> np.ndarray:
    """Keypad dialling: 45-120 ms tones, 45-150 ms pauses, slight twist and level spread."""
    parts = []
    lvl = float(rng.uniform(-14, -8))
    for d in digits:
        parts.append(synth.dtmf_digit(d, float(rng.uniform(0.045, 0.12)), rate, lvl, float(rng.uniform(-3, 3))))
        parts.append(np.zeros(int(rng.uniform(0.045, 0.15) * rate), np.float32))
    return np.concatenate(parts)


class _Builder:
    def __init__(self, spec: LineSpec) -> None:
        self.s = spec
        self.rng = np.random.default_rng(spec.seed)
        self.rate = spec.rate
        self.n = int(spec.seconds * spec.rate)
        self.sig = np.zeros(self.n, np.float32)  # everything but the noise
        self.noise_gain = np.ones(self.n, np.float32)  # off-hook noise steps
        self.idle_noise_db = -min(62.0, 30.0 + spec.snr_db) if spec.call_dbfs is None else spec.call_dbfs - spec.snr_db
        self.labels: list[Label] = []
        self.distractors: list[tuple[str, int, int]] = []  # (kind, first sample, end)

    def put(self, x: np.ndarray, at: int) -> int:
        m = min(len(x), self.n - at)
        if m > 0:
            self.sig[at:at + m] += x[:m]
        return at + len(x)

    def speech_clip(self, level: float) -> np.ndarray:
        pool = english(self.rate) if self.rng.random() < 0.6 else korean(self.rate)
        x = pool[int(self.rng.integers(len(pool)))]
        return _norm(x, level)

    def call(self, at: int, outgoing: bool, step_db: float, ending: str) -> tuple[int, Label] | None:
        r, rng = self.rate, self.rng
        talk_level = self.idle_noise_db + step_db + self.s.snr_db
        t = at
        cid = None
        dialed = None
        start = at
        if not outgoing:
            kind = rng.random()
            if kind < 0.45:
                cid = synth_number(rng)
                std = "bell202" if rng.random() < 0.5 else "v23"
                msg = (callerid.encode_sdmf(cid, "11221530") if rng.random() < 0.5 and std == "bell202"
                       else callerid.encode_mdmf(cid, "11221530", "KIM" if rng.random() < 0.5 else None))
                t = self.put(callerid.fsk_signal(msg, r, std, float(rng.uniform(-22, -14))), t)
                t += int(rng.uniform(1.0, 3.0) * r)
            elif kind < 0.6:
                cid = synth_number(rng)
                t = self.put(_dtmf_dial(rng, callerid.dtmf_cid_digits(cid), r), t)
                t += int(rng.uniform(1.0, 3.0) * r)
        hook = t
        t = self.put(synth.click(r, 0.3), t)
        if outgoing:
            t = self.put(synth.tone(synth.DIAL, int(rng.uniform(0.8, 2.5) * r), r, -16.0), t)
            dialed = synth_number(rng)
            t = self.put(_dtmf_dial(rng, dialed, r), t)
            t += int(rng.uniform(0.3, 1.2) * r)
            t = self.put(synth.cadence(synth.RINGBACK, 1.0, 2.0, 3.0 * int(rng.integers(1, 3)) - 2.0 + 0.01, r,
                                       -20.0), t)
            t += int(rng.uniform(0.2, 1.0) * r)
        else:
            t += int(rng.uniform(0.2, 0.8) * r)
        spans: list[tuple[int, int]] = []
        talk = rng.uniform(*self.s.talk_s) * r
        t0 = t
        hold_s = 0.0
        hold_span = None
        longest = 0.0
        held = False
        while t - t0 < talk:
            near = len(spans) % 2 == 0
            x = self.speech_clip(talk_level - (0.0 if near else rng.uniform(3, 8)))
            spans.append((t, t + len(x)))
            t = self.put(x, t)
            if not held and rng.random() < self.s.hold_p / 3:
                # on hold: music, then the talk goes on
                held = True
                m = music(r)[int(rng.integers(len(music(r))))]
                hold = int(rng.uniform(10, 120) * r)
                off = int(rng.integers(0, max(1, len(m) - hold)))
                seg = _norm(m[off:off + hold], talk_level - 4)
                t += int(0.5 * r)
                hold_span = (t, t + len(seg))
                t = self.put(seg, t)
                hold_s = len(seg) / r
                t += int(0.5 * r)
                x = self.speech_clip(talk_level)  # the official comes back on the line
                spans.append((t, t + len(x)))
                t = self.put(x, t) + int(0.5 * r)
                continue
            if rng.random() < self.s.long_pause_p / 4:
                p = float(rng.uniform(3.0, 10.0))  # a long pause: never a split (<= 10 s)
            else:
                p = float(rng.uniform(0.2, 1.5))
            longest = max(longest, p)
            t += int(p * r)
        t = spans[-1][1] + int(rng.uniform(0.3, 1.0) * r)
        if ending in ("busy", "reorder"):
            on, off = (0.5, 0.5) if ending == "busy" else (0.3, 0.2)
            t = self.put(synth.cadence(synth.BUSY, on, off, float(rng.uniform(3.0, 8.0)), r, -18.0), t)
        end_click = t
        t = self.put(synth.click(r, 0.25), t)
        if t >= self.n - 2 * r:
            return None
        if step_db > 0:
            self.noise_gain[hook:end_click] = 10 ** (step_db / 20)
        lab = Label(start=start, first_speech=spans[0][0], last_speech=spans[-1][1], end=t, dialed=dialed,
                    caller_id=cid, ending=ending, speech=spans, hold_s=hold_s, longest_pause_s=longest,
                    step_db=step_db, hold=hold_span, hook=hook)
        return t, lab

    def build(self) -> tuple[np.ndarray, list[Label]]:
        r, rng = self.rate, self.rng
        t = int(rng.uniform(3, 15) * r)
        while self.s.calls:
            outgoing = bool(rng.random() < 0.5)
            u = rng.random()
            step = float(rng.uniform(8, 14)) if rng.random() < 0.5 else 0.0
            if u < 0.45:
                ending = "busy"
            elif u < 0.6:
                ending = "reorder"
            else:
                ending = "hangup_idle" if step > 0 else "hangup"
            # snapshot so a call that does not fit leaves no trace
            sig, gain = self.sig.copy(), self.noise_gain.copy()
            got = self.call(t, outgoing, step, ending)
            if got is None:
                self.sig, self.noise_gain = sig, gain
                break
            t, lab = got
            self.labels.append(lab)
            # calls separated by a hang-up tone or by the noise falling back may follow at once;
            # otherwise the line stays idle for longer than the silence limit
            lo, hi = self.s.idle_s
            if ending == "hangup":
                lo = max(lo, 13.0)
                hi = max(hi, lo + 1)
            elif rng.random() < 0.25:
                lo, hi = 1.0, 4.0
            t += int(rng.uniform(lo, hi) * r)
        self._background()
        if self.s.distractors:
            self._distractors()
        return self._finish(), self.labels

    def _free(self, a: int, b: int) -> bool:
        """No call (with 3 s either side) overlaps samples a..b."""
        m = 3 * self.rate
        return not any(a < lab.end + m and b > lab.start - m for lab in self.labels)

    def _distractors(self) -> None:
        """What an idle line picks up that is not a call (each placed where no call is):

        * mains hum (50 or 60 Hz with odd and even harmonics) for 3 s to 2 min, 6-25 dB over the idle
          noise, switched on abruptly or faded in over 1-3 s, its level wobbling by up to 3 dB;
        * crosstalk: a neighbouring pair's conversation (speech clips back to back for 10-60 s)
          25-40 dB below this line's own call level, without any off-hook step;
        * switching clicks: bursts of 3-40 clicks at 5-40 a second, of any level up to -6 dBFS.
        """
        r, rng, n = self.rate, self.rng, self.n
        call_level = self.idle_noise_db + self.s.snr_db
        at = int(rng.uniform(5, 60) * r)
        while at < n - 10 * r:
            kind = ("hum", "crosstalk", "clicks")[int(rng.integers(3))]
            if kind == "hum":
                dur = int(rng.uniform(3, 120) * r)
            elif kind == "crosstalk":
                dur = int(rng.uniform(10, 60) * r)
            else:
                dur = int(rng.uniform(0.2, 3.0) * r)
            end = min(at + dur, n - r)
            if self._free(at, end):
                if kind == "hum":
                    self._hum(at, end, call_level)
                elif kind == "crosstalk":
                    t = at
                    lvl = call_level - float(rng.uniform(25, 40))
                    while t < end:
                        x = self.speech_clip(lvl + float(rng.uniform(-3, 3)))
                        self.put(x[:end - t], t)
                        t += len(x) + int(rng.uniform(0.2, 1.5) * r)
                else:
                    k = int(rng.integers(3, 41))
                    times = np.sort(rng.uniform(at, max(at + 1, end), k)).astype(int)
                    for c in times:
                        self.put(synth.click(r, float(10 ** (rng.uniform(-40, -6) / 20))) * rng.choice([-1, 1]), int(c))
                self.distractors.append((kind, at, end))
            at = end + int(rng.uniform(20, 240) * r)

    def _hum(self, a: int, b: int, call_level: float) -> None:
        r, rng = self.rate, self.rng
        f = 50.0 if rng.random() < 0.5 else 60.0
        t = np.arange(b - a) / r
        ph = rng.uniform(0, 2 * np.pi, 5)
        w = (np.sin(2 * np.pi * f * t + ph[0]) + 0.5 * np.sin(2 * np.pi * 3 * f * t + ph[1])
             + 0.3 * np.sin(2 * np.pi * 5 * f * t + ph[2]) + 0.2 * np.sin(2 * np.pi * 2 * f * t + ph[3]))
        w /= np.sqrt(np.mean(w * w))
        lvl = self.idle_noise_db + float(rng.uniform(6, 25))
        env = 10 ** ((lvl + float(rng.uniform(0, 3)) * np.sin(2 * np.pi * float(rng.uniform(0.05, 1.0)) * t + ph[4]))
                     / 20)
        ramp = int(rng.uniform(1, 3) * r) if rng.random() < 0.5 else int(0.01 * r)
        ramp = min(ramp, (b - a) // 2)
        if ramp:
            env[:ramp] *= np.linspace(0, 1, ramp)
            env[-ramp:] *= np.linspace(1, 0, ramp)
        self.put((w * env).astype(np.float32), a)

    def _background(self) -> None:

        r, rng, n = self.rate, self.rng, self.n
        # crackle: sparse pops all the time
        for at in rng.integers(0, n - r, int(self.s.seconds * rng.uniform(0.02, 0.1))):
            self.put(synth.click(r, float(rng.uniform(0.01, 0.05))) * rng.choice([-1, 1]), int(at))
        # low-level crosstalk from another line, now and then
        if self.s.crosstalk:
            at = int(rng.uniform(5, 60) * r)
            while at < n - 5 * r:
                x = self.speech_clip(self.idle_noise_db + self.s.snr_db - 40.0)
                self.put(x, at)
                at += len(x) + int(rng.uniform(20, 120) * r)

    def _finish(self) -> np.ndarray:
        r = self.rate
        noise = synth.line_noise(self.rng, self.n, r, 0, hum_dbfs=self.idle_noise_db - 3, hiss_dbfs=self.idle_noise_db)
        x = self.sig + noise * self.noise_gain
        if self.s.companding == "mulaw":
            x = mulaw(x)
        elif self.s.companding == "alaw":
            x = alaw(x)
        return synth.to_int16(x)


def synth_number(rng) -> str:
    return synth.random_number(rng)


def build_line(spec: LineSpec) -> tuple[np.ndarray, list[Label]]:
    """One line's int16 audio and its call labels."""
    return _Builder(spec).build()


def build_line_with_distractors(spec: LineSpec) -> tuple[np.ndarray, list[Label], list[tuple[str, int, int]]]:
    """As ``build_line``, and the distractors placed (kind, first sample, end)."""
    b = _Builder(spec)
    x, labels = b.build()
    return x, labels, b.distractors


def false_by_distractor(found: list["Found"], labels: list[Label], distractors, rate: int) -> dict[str, int]:
    """False calls (no labelled call overlaps them), by the distractor at their start (or 'other')."""
    out: dict[str, int] = {}
    for f in found:
        if any(_overlap(f.start, f.end, lab.start, lab.end) > 0 for lab in labels):
            continue
        kind = next((k for k, a, b in distractors if a - 2 * rate <= f.start <= b + 2 * rate
                     or _overlap(f.start, f.end, a, b) > 0), "other")
        out[kind] = out.get(kind, 0) + 1
    return out


def build_lines(specs: list[LineSpec]) -> tuple[np.ndarray, list[list[Label]]]:
    """(frames, lines) int16 audio and each line's labels."""
    cols, labels = [], []
    for sp in specs:
        x, lab = build_line(sp)
        cols.append(x)
        labels.append(lab)
    n = min(len(c) for c in cols)
    return np.stack([c[:n] for c in cols], axis=1), labels


# -- scoring -----------------------------------------------------------------------------------
@dataclass
class Found:
    """A detected call (samples)."""

    start: int
    end: int
    reason: str = ""
    dialed: str | None = None
    caller_id: str | None = None
    evidence: str = ""
    emitted_at: int = 0  # samples fed when CallStart came out (detection latency)
    raised: int = -1  # when the call was first raised (provisional onset or confirmation), fed position


def segment_line(x: np.ndarray, params, block: int = 8000, levels: list[float] | None = None) -> list[Found]:
    """Run the product's segmenter over one line and collect its calls (``levels``: the line's
    call levels learned before, as a recorder that has recorded it for a while knows them)."""
    from dsp.segment import CallEnd, CallStart, LineSegmenter

    from dsp.segment import CallAnswered, CallOnset, CallWithdrawn

    seg = LineSegmenter(params)
    if levels:
        seg.learn_levels(levels)
    events = []
    for i in range(0, len(x), block):
        events += [(ev, min(i + block, len(x))) for ev in seg.process(x[i:i + block], i)]
    events += [(ev, len(x)) for ev in seg.finish("eof")]
    out, start, onset_fed = [], None, None
    for ev, fed in events:
        if isinstance(ev, CallOnset):
            onset_fed = fed
        elif isinstance(ev, CallWithdrawn):
            onset_fed = None
        elif isinstance(ev, CallStart):
            start, why, at = ev.sample, ev.evidence, fed
            raised = onset_fed if onset_fed is not None and ev.raised >= 0 else fed
            onset_fed = None
        elif isinstance(ev, CallAnswered) and start is not None:
            raised = fed  # the notice waited for the answer
        elif isinstance(ev, CallEnd) and start is not None:
            out.append(Found(start, ev.sample, ev.reason, ev.dialed, ev.caller_id, why, at, raised))
            start = None
    return out


def _overlap(a0, a1, b0, b1) -> int:
    return max(0, min(a1, b1) - max(a0, b0))


def score(labels: list[Label], found: list[Found], rate: int) -> dict:
    """Call recall/precision, splits, merges, false calls, speech lost, onset clip, end lag, numbers."""
    hit = 0
    splits = merges = 0
    clip_ms: list[float] = []
    latency_s: list[float] = []
    lag_s: list[float] = []
    whole = 0
    lost = 0
    speech_total = 0
    dial_n = dial_ok = cid_n = cid_ok = 0
    used = set()
    for lab in labels:
        ov = [i for i, f in enumerate(found) if _overlap(f.start, f.end, lab.first_speech, lab.last_speech) > 0]
        if ov:
            hit += 1
            used.update(ov)
        if len(ov) > 1:
            splits += len(ov) - 1
        for s0, s1 in lab.speech:
            speech_total += s1 - s0
            covered = sum(_overlap(f.start, f.end, s0, s1) for f in found)
            lost += (s1 - s0) - min(covered, s1 - s0)
        if ov:
            f = found[ov[0]]
            clip_ms.append(max(0.0, (f.start - lab.first_speech) / rate * 1000.0))
            latency_s.append((f.emitted_at - lab.start) / rate)
            lag_s.append((found[ov[-1]].end - lab.end) / rate)
            if len(ov) == 1 and f.start <= lab.start and f.end >= lab.last_speech:
                whole += 1
        if lab.dialed:
            dial_n += 1
            dial_ok += bool(ov) and found[ov[0]].dialed == lab.dialed
        if lab.caller_id:
            cid_n += 1
            cid_ok += bool(ov) and found[ov[0]].caller_id == lab.caller_id
    for f in found:
        ov = [lab for lab in labels if _overlap(f.start, f.end, lab.first_speech, lab.last_speech) > 0]
        if len(ov) > 1:
            merges += len(ov) - 1
    false_calls = sum(1 for i, f in enumerate(found)
                      if not any(_overlap(f.start, f.end, lab.start, lab.end) > 0 for lab in labels))
    good = sum(1 for f in found if any(_overlap(f.start, f.end, lab.start, lab.end) > 0 for lab in labels))
    return {
        "calls": len(labels), "found": len(found), "hit": hit, "whole": whole,
        "recall": hit / len(labels) if labels else 1.0,
        "precision": good / len(found) if found else 1.0,
        "splits": splits, "merges": merges, "false_calls": false_calls,
        "speech_lost_s": lost / rate, "speech_s": speech_total / rate,
        "worst_onset_clip_ms": max(clip_ms) if clip_ms else 0.0,
        "median_end_lag_s": float(np.median(lag_s)) if lag_s else 0.0,
        "dialed": (dial_ok, dial_n), "caller_id": (cid_ok, cid_n),
        "latency_s": latency_s,
    }


def misses(labels: list[Label], found: list[Found], rate: int) -> list[str]:
    """One line per miss (split, merge, false call, speech lost, wrong number), for reading."""
    out: list[str] = []

    def t(v: int) -> str:
        return f"{v / rate:8.2f}"

    def desc(lab: Label) -> str:
        hold = f", hold {lab.hold[0] / rate:.1f}-{lab.hold[1] / rate:.1f} s" if lab.hold else ""
        return (f"call {t(lab.start)}-{t(lab.end)} s (speech {t(lab.first_speech)}-{t(lab.last_speech)}, "
                f"{lab.ending}, step {lab.step_db:.1f} dB{hold})")

    def fdesc(f: Found) -> str:
        return f"[{t(f.start)}-{t(f.end)} {f.evidence}->{f.reason}]"

    for lab in labels:
        ov = [f for f in found if _overlap(f.start, f.end, lab.first_speech, lab.last_speech) > 0]
        if len(ov) > 1:
            out.append(f"SPLIT  {desc(lab)} into " + " ".join(fdesc(f) for f in ov))
        for s0, s1 in lab.speech:
            covered = sum(_overlap(f.start, f.end, s0, s1) for f in found)
            if covered < s1 - s0:
                near = [f for f in found if _overlap(f.start, f.end, lab.start, lab.end + 5 * rate) > 0]
                out.append(f"LOST   {(s1 - s0 - covered) / rate:.2f} s of speech {t(s0)}-{t(s1)} in {desc(lab)}; "
                           "found " + " ".join(fdesc(f) for f in near))
        if ov and lab.dialed and ov[0].dialed != lab.dialed:
            out.append(f"DIALED {lab.dialed!r} read as {ov[0].dialed!r} in {desc(lab)}")
        if ov and lab.caller_id and ov[0].caller_id != lab.caller_id:
            out.append(f"CID    {lab.caller_id!r} read as {ov[0].caller_id!r} in {desc(lab)}")
    for f in found:
        ov = [lab for lab in labels if _overlap(f.start, f.end, lab.first_speech, lab.last_speech) > 0]
        if len(ov) > 1:
            out.append(f"MERGE  {fdesc(f)} holds " + "; ".join(desc(lab) for lab in ov))
        if not any(_overlap(f.start, f.end, lab.start, lab.end) > 0 for lab in labels):
            out.append(f"FALSE  {fdesc(f)}")
    return out

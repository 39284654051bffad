"""Synthetic analog-line audio: line noise, telephony tones, DTMF and speech-like talk.

Used by the simulated line source (the box's "virtual printer"), the tests and
the benchmarks. Everything is float32 in [-1, 1) until ``to_int16``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DTMF_LOW = (697.0, 770.0, 852.0, 941.0)
DTMF_HIGH = (1209.0, 1336.0, 1477.0, 1633.0)
DTMF_KEYS = ("123A", "456B", "789C", "*0#D")

# Korean defaults (KS / KT): dial 350+440 continuous, ringback 440+480 1 s on 2 s off,
# busy 480+620 0.5 s on 0.5 s off.
DIAL = (350.0, 440.0)
RINGBACK = (440.0, 480.0)
BUSY = (480.0, 620.0)

# Rough vowel formants (F1, F2, F3) in Hz.
_VOWELS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410))


def db(level_dbfs: float) -> float:
    """Peak amplitude of a sine whose RMS is ``level_dbfs``."""
    return float(np.sqrt(2.0) * 10.0 ** (level_dbfs / 20.0))


def to_int16(x: np.ndarray) -> np.ndarray:
    """Clip and quantise float audio to int16."""
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


def tone(freqs: tuple[float, ...], n: int, rate: int, level_dbfs: float, phase0: int = 0) -> np.ndarray:
    """Sum of sines, each at ``level_dbfs`` RMS, ``n`` samples."""
    t = (np.arange(n, dtype=np.float64) + phase0) / rate
    out = np.zeros(n, dtype=np.float64)
    for f in freqs:
        out += np.sin(2.0 * np.pi * f * t)
    return (out * db(level_dbfs)).astype(np.float32)


def cadence(freqs: tuple[float, ...], on_s: float, off_s: float, total_s: float, rate: int,
            level_dbfs: float) -> np.ndarray:
    """A tone switched on and off in a cadence (ringback, busy), ``total_s`` long."""
    n = int(total_s * rate)
    x = tone(freqs, n, rate, level_dbfs)
    period = int((on_s + off_s) * rate)
    on = int(on_s * rate)
    if off_s > 0:
        mask = (np.arange(n) % period) < on
        x *= mask
    return x


def dtmf_digit(key: str, on_s: float, rate: int, level_dbfs: float = -10.0,
               twist_db: float = 0.0) -> np.ndarray:
    """One DTMF digit; ``twist_db`` > 0 makes the high tone louder."""
    for r, row in enumerate(DTMF_KEYS):
        c = row.find(key)
        if c >= 0:
            break
    else:
        raise ValueError(f"not a DTMF key: {key!r}")
    n = int(on_s * rate)
    t = np.arange(n) / rate
    lo = np.sin(2 * np.pi * DTMF_LOW[r] * t) * db(level_dbfs - 3.0 - twist_db / 2)
    hi = np.sin(2 * np.pi * DTMF_HIGH[c] * t) * db(level_dbfs - 3.0 + twist_db / 2)
    return (lo + hi).astype(np.float32)


def dtmf_string(digits: str, rate: int, rng: np.random.Generator, level_dbfs: float = -10.0) -> np.ndarray:
    """Digits dialled as a keypad does: 60-110 ms on, 60-120 ms off."""
    parts = []
    for d in digits:
        parts.append(dtmf_digit(d, rng.uniform(0.06, 0.11), rate, level_dbfs))
        parts.append(np.zeros(int(rng.uniform(0.06, 0.12) * rate), dtype=np.float32))
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def click(rate: int, level: float = 0.3) -> np.ndarray:
    """Hook-switch click: a short decaying impulse."""
    n = int(0.012 * rate)
    return (level * np.exp(-np.arange(n) / (0.002 * rate)) * np.cos(np.arange(n) * 0.9)).astype(np.float32)


def _syllable(rng: np.random.Generator, n: int, rate: int, f0: float, level: float) -> np.ndarray:
    """One voiced syllable: harmonics of a gliding F0 shaped by a vowel's formants."""
    t = np.arange(n) / rate
    glide = f0 * (1.0 + rng.uniform(-0.12, 0.12) * t / max(t[-1], 1e-3)) if n > 1 else np.full(n, f0)
    phase = 2 * np.pi * np.cumsum(glide) / rate
    f1, f2, f3 = _VOWELS[rng.integers(len(_VOWELS))]
    out = np.zeros(n, dtype=np.float64)
    k = 1
    while k * f0 < min(3400.0, rate / 2 - 200):
        fk = k * f0
        amp = sum(np.exp(-((fk - fm) / (90.0 + 0.06 * fm)) ** 2) * g for fm, g in ((f1, 1.0), (f2, 0.6), (f3, 0.25)))
        amp += 0.02
        out += amp * np.sin(k * phase)
        k += 1
    env = np.sin(np.pi * np.linspace(0.0, 1.0, n)) ** 0.6
    out *= env
    peak = np.max(np.abs(out)) or 1.0
    return (out / peak * level).astype(np.float32)


def speech_like(rng: np.random.Generator, seconds: float, rate: int, level_dbfs: float = -22.0,
                f0: float | None = None) -> np.ndarray:
    """A talk spurt of syllables, words and short pauses, about ``seconds`` long."""
    f0 = f0 or float(rng.uniform(95.0, 230.0))
    amp = db(level_dbfs) * 1.6
    parts: list[np.ndarray] = []
    total = 0
    target = int(seconds * rate)
    while total < target:
        for _ in range(int(rng.integers(1, 5))):
            n = int(rng.uniform(0.12, 0.30) * rate)
            parts.append(_syllable(rng, n, rate, f0 * rng.uniform(0.9, 1.1), amp * rng.uniform(0.6, 1.0)))
            total += n
            if rng.random() < 0.25:  # unvoiced consonant
                m = int(rng.uniform(0.04, 0.09) * rate)
                parts.append((rng.standard_normal(m) * amp * 0.15).astype(np.float32))
                total += m
        gap = int(rng.uniform(0.08, 0.35) * rate)
        parts.append(np.zeros(gap, dtype=np.float32))
        total += gap
    return np.concatenate(parts)[:target]


def line_noise(rng: np.random.Generator, n: int, rate: int, start: int = 0,
               hum_dbfs: float = -62.0, hiss_dbfs: float = -70.0) -> np.ndarray:
    """Mains hum (60 Hz and harmonics, Korea) and hiss, continuous across calls by ``start``."""
    t = (np.arange(n, dtype=np.float64) + start) / rate
    hum = db(hum_dbfs) * (np.sin(2 * np.pi * 60 * t) + 0.5 * np.sin(2 * np.pi * 180 * t))
    hiss = rng.standard_normal(n) * 10.0 ** (hiss_dbfs / 20.0)
    return (hum + hiss).astype(np.float32)


@dataclass
class CallLabel:
    """Ground truth of one synthetic call, in samples from the start of the line's audio."""

    start: int  # off-hook click
    first_speech: int
    last_speech: int
    end: int  # on-hook click after the busy tone
    dialed: str | None
    direction: str

    def as_dict(self, rate: int) -> dict:
        return {
            "start": self.start / rate, "first_speech": self.first_speech / rate,
            "last_speech": self.last_speech / rate, "end": self.end / rate,
            "dialed": self.dialed, "direction": self.direction,
        }


def random_number(rng: np.random.Generator) -> str:
    """A Korean-looking number: mobile or Seoul landline."""
    if rng.random() < 0.6:
        return "010" + "".join(str(d) for d in rng.integers(0, 10, 8))
    return "02" + "".join(str(d) for d in rng.integers(0, 10, 8))


def make_call(rng: np.random.Generator, rate: int, talk_s: float,
              outgoing: bool | None = None) -> tuple[np.ndarray, CallLabel]:
    """One whole call from off-hook to on-hook, and its label (relative offsets)."""
    if outgoing is None:
        outgoing = bool(rng.random() < 0.5)
    parts: list[np.ndarray] = [click(rate)]
    dialed = None
    if outgoing:
        parts.append(tone(DIAL, int(rng.uniform(0.8, 2.5) * rate), rate, -16.0))
        dialed = random_number(rng)
        parts.append(dtmf_string(dialed, rate, rng))
        parts.append(np.zeros(int(rng.uniform(0.5, 1.5) * rate), np.float32))
        parts.append(cadence(RINGBACK, 1.0, 2.0, 3.0 * int(rng.integers(1, 3)), rate, -20.0))
    else:
        parts.append(np.zeros(int(rng.uniform(0.2, 0.6) * rate), np.float32))
    first = sum(len(p) for p in parts)
    near_f0 = float(rng.uniform(95, 230))
    far_f0 = float(rng.uniform(95, 230))
    talked = 0.0
    near = True
    while talked < talk_s:
        spurt = float(min(rng.uniform(1.5, 7.0), max(talk_s - talked, 1.0)))
        parts.append(speech_like(rng, spurt, rate, -20.0 if near else -27.0, near_f0 if near else far_f0))
        talked += spurt
        pause = float(rng.uniform(0.3, 1.2) if rng.random() < 0.85 else rng.uniform(2.0, 5.0))
        if talked < talk_s:
            parts.append(np.zeros(int(pause * rate), np.float32))
            talked += pause
        near = not near
    last = sum(len(p) for p in parts)
    parts.append(cadence(BUSY, 0.5, 0.5, float(rng.uniform(2.0, 4.0)), rate, -18.0))
    parts.append(click(rate))
    x = np.concatenate(parts)
    return x, CallLabel(0, first, last, len(x), dialed, "out" if outgoing else "in")


@dataclass
class LineTraffic:
    """Streaming traffic of one simulated line: idle gaps and calls, rendered on demand."""

    rate: int
    rng: np.random.Generator
    first_call_s: float = 3.0
    idle_s: tuple[float, float] = (20.0, 90.0)
    talk_s: tuple[float, float] = (15.0, 90.0)
    labels: list[CallLabel] = field(default_factory=list)
    pos: int = 0
    _next_call: int = -1
    _call: np.ndarray | None = None
    _call_pos: int = 0

    def __post_init__(self) -> None:
        self._next_call = int(self.first_call_s * self.rate)

    def render(self, n: int) -> np.ndarray:
        """The next ``n`` samples of the line as float32."""
        out = line_noise(self.rng, n, self.rate, self.pos)
        i = 0
        while i < n:
            if self._call is None:
                if self.pos + i >= self._next_call:
                    talk = float(self.rng.uniform(*self.talk_s))
                    self._call, lab = make_call(self.rng, self.rate, talk)
                    start = self.pos + i
                    self.labels.append(CallLabel(start, start + lab.first_speech, start + lab.last_speech,
                                                 start + lab.end, lab.dialed, lab.direction))
                    self._call_pos = 0
                else:
                    i = min(n, self._next_call - self.pos)
                    continue
            take = min(n - i, len(self._call) - self._call_pos)
            out[i:i + take] += self._call[self._call_pos:self._call_pos + take]
            self._call_pos += take
            i += take
            if self._call_pos >= len(self._call):
                self._call = None
                self._next_call = self.pos + i + int(self.rng.uniform(*self.idle_s) * self.rate)
        self.pos += n
        return out


def render_lines(rate: int, seconds: float, lines: int, seed: int = 1, **traffic) -> tuple[np.ndarray, list[list[CallLabel]]]:
    """Whole multi-line audio (frames x lines, int16) and each line's call labels."""
    n = int(seconds * rate)
    out = np.empty((n, lines), dtype=np.int16)
    labels = []
    for ln in range(lines):
        tr = LineTraffic(rate, np.random.default_rng([seed, ln]), **traffic)
        out[:, ln] = to_int16(tr.render(n))
        labels.append([lab for lab in tr.labels if lab.end <= n])
    return out, labels

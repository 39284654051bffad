"""Frame levels in dBFS."""

from __future__ import annotations

import math

import numpy as np

FULL_SCALE = 32768.0
SILENCE_DBFS = -120.0


def frame_levels(x: np.ndarray, frame_len: int) -> np.ndarray:
    """RMS level in dBFS of each whole frame of int16 samples (a partial tail is ignored)."""
    n = (len(x) // frame_len) * frame_len
    if n == 0:
        return np.empty(0, dtype=np.float64)
    f = x[:n].astype(np.float32).reshape(-1, frame_len)
    ms = np.einsum("ij,ij->i", f, f) / frame_len
    with np.errstate(divide="ignore"):
        db = 10.0 * np.log10(ms / (FULL_SCALE * FULL_SCALE))
    return np.maximum(db, SILENCE_DBFS)


def rms_dbfs(x: np.ndarray) -> float:
    """RMS level in dBFS of a whole block of int16 samples."""
    if len(x) == 0:
        return SILENCE_DBFS
    f = x.astype(np.float32)
    ms = float(np.dot(f, f)) / len(f)
    if ms <= 0.0:
        return SILENCE_DBFS
    return max(10.0 * math.log10(ms / (FULL_SCALE * FULL_SCALE)), SILENCE_DBFS)

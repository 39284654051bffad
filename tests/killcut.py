"""A recorder process killed (SIGKILL) at a known capture position, then recovered: how much of each
call in progress was lost. Shared by tests/test_vault_crash.py and benchmarks/vault.py --pipeline.

The source plays the audio in real time (pace 1: the pipeline's own lags are what is measured) and
kills its own process the moment it has delivered ``cut`` samples, so the capture position at the
"power cut" is exact. A call in progress loses what lies between the end of its recovered audio
and the cut.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import os, signal, sys, json, numpy as np
sys.path.insert(0, sys.argv[1])
from firmware.config import parse_config
from firmware.recording.recorder import Recorder
from firmware.hal.audio import ArraySource

class CutSource(ArraySource):
    def read(self):
        if self.pos >= CUT:
            os.kill(os.getpid(), signal.SIGKILL)  # the power goes: nothing more is written
        return super().read()

audio = np.load(sys.argv[3])
CUT = int(sys.argv[4])
over = json.loads(sys.argv[5])
src = CutSource(audio, 8000, 160, realtime=True, pace=float(over.pop("_pace", 1.0)))
rec = Recorder(parse_config(over), sys.argv[2], source=src)
rec.start()
print("started", flush=True)
rec.wait()
"""


def run_and_cut(data: Path, audio: np.ndarray, cut: int, config: dict, tmp: Path, pace: float = 1.0) -> int:
    """Record ``audio`` (frames x lines) into ``data`` until sample ``cut``; returns the exit status."""
    npy = tmp / "cut-audio.npy"
    np.save(npy, audio)
    script = tmp / "cut-recorder.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(ROOT), str(data), str(npy), str(int(cut)),
                           json.dumps({**config, "_pace": pace})],
                          capture_output=True, text=True, timeout=120 + 2 * len(audio) / 8000 / pace)
    return proc.returncode


def lost_per_call(rows: list[dict], cut: int, rate: int = 8000) -> dict[int, float]:
    """Seconds lost at the cut by each call that was in progress there (recovered, end_reason
    power_loss): from its recovered end to the cut."""
    out = {}
    for r in rows:
        if r["end_reason"] == "power_loss":
            out[r["id"]] = max(0.0, (cut - (r["start_sample"] + r["frames"])) / rate)
    return out

"""dsp's compiled kernels: built ahead of time by setup.sh, numba's JIT as the fallback (dsp/_jit.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dsp import _jit

ROOT = Path(__file__).resolve().parent.parent

# segments 6 minutes of synthetic line traffic and prints its events as JSON
SEGMENT = """
import json, sys
from dsp import _jit, synth
from dsp.segment import CallEnd, CallStart, LineSegmenter, SegmentParams
x, _ = synth.render_lines(8000, 360.0, 1, seed=11)
seg = LineSegmenter(SegmentParams())
ev = seg.process(x[:, 0], 0) + seg.finish("eof")
print(json.dumps({"built": _jit.BUILT is not None, "numba": "numba" in sys.modules,
                  "events": [[type(e).__name__] + [getattr(e, f) for f in sorted(e.__dataclass_fields__)] for e in ev]}))
"""


def _run(env_extra: dict) -> dict:
    env = dict(os.environ, **env_extra)
    r = subprocess.run([sys.executable, "-c", SEGMENT], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_the_recorder_runs_prebuilt_kernels_without_numba_and_they_find_what_the_jit_finds():
    built = _run({})
    assert built["built"], "scripts/setup.sh builds dsp/_kernels; run it"
    assert not built["numba"]  # no JIT, numba or LLVM in the recording process
    jit = _run({"NOKBOX_DSP_JIT": "1"})
    assert not jit["built"] and jit["numba"]
    assert built["events"] == jit["events"]
    kinds = [e[0] for e in built["events"]]
    assert kinds.count("CallStart") >= 3 and kinds.count("CallStart") == kinds.count("CallEnd")


def test_a_build_from_other_sources_is_not_used(monkeypatch):
    if _jit.BUILT is None:
        return  # nothing built here: the JIT is in use already (the test above says so)
    assert _jit._load_built() is not None
    monkeypatch.setattr(_jit, "source_hash", lambda: _jit.BUILT.source_hash() + 1)
    assert _jit._load_built() is None  # an edited kernel source never runs the old machine code
    monkeypatch.undo()
    monkeypatch.setenv("NOKBOX_DSP_JIT", "1")
    assert _jit._load_built() is None


def test_the_source_hash_covers_every_file_with_a_kernel():
    import dsp.segment  # noqa: F401  (defines every kernel)

    for path in (ROOT / "dsp").glob("*.py"):
        text = path.read_text()
        if "@kernel" in text or "@helper" in text:
            assert path.name in _jit.SOURCES, path.name
    assert {m for m, _ in _jit.KERNELS} == {"dsp.segment", "dsp.tones", "dsp.music"}


def test_warm_up_compiles_every_kernel_before_capture():
    # under the JIT, a kernel first called during capture would stall the segmenter for seconds;
    # the build exports each kernel with the one set of argument types warm_up gave it
    code = ("import importlib; from dsp import _jit; from dsp.segment import warm_up; warm_up(); "
            "print([len(getattr(importlib.import_module(m), n).overloads) for m, n in _jit.KERNELS])")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240,
                       env=dict(os.environ, NOKBOX_DSP_JIT="1"))
    assert r.returncode == 0, r.stderr
    counts = json.loads(r.stdout)
    assert len(counts) == 8 and counts == [1] * 8

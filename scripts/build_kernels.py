"""Compile dsp's kernels ahead of time into the extension module dsp/_kernels (see dsp/_jit.py).

    NOKBOX_DSP_JIT=1 .venv/bin/python scripts/build_kernels.py [--force]

Run by scripts/setup.sh; does nothing when the built module matches the sources. The kernels
are first compiled by numba's JIT and run once on a synthetic call (``dsp.segment.warm_up``), so
every kernel is exported with exactly the argument types the segmenter gives it; numba.pycc then
compiles them for this machine's CPU. The module needs neither numba nor LLVM at run time.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def built_hash() -> int | None:
    """The source hash the present dsp/_kernels was built from (None: none, or unloadable)."""
    import subprocess

    code = "import dsp._kernels as k; print(k.source_hash())"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, NOKBOX_DSP_JIT="1"))
    return int(r.stdout) if r.returncode == 0 and r.stdout.strip().isdigit() else None


def main() -> int:
    if os.environ.get("NOKBOX_DSP_JIT") != "1":
        print("build_kernels: run with NOKBOX_DSP_JIT=1 (the kernels must be numba functions here)", file=sys.stderr)
        return 2
    from dsp import _jit

    want = _jit.source_hash()
    if "--force" not in sys.argv and built_hash() == want:
        print("build_kernels: dsp/_kernels is up to date", file=sys.stderr)
        return 0
    t0 = time.monotonic()
    import importlib

    from numba.core.errors import NumbaPendingDeprecationWarning
    from numba.pycc import CC

    from dsp.segment import warm_up

    warm_up()
    cc = CC("_kernels")
    cc.output_dir = str(ROOT / "dsp")
    # built where it runs (setup.sh on the box); an image built elsewhere names the box's CPU, e.g.
    # NOKBOX_KERNEL_CPU=cortex-a72 for a Raspberry Pi 4
    cc.target_cpu = os.environ.get("NOKBOX_KERNEL_CPU", "host")
    cc.verbose = False
    for module, name in _jit.KERNELS:
        d = getattr(importlib.import_module(module), name)
        sigs = list(d.overloads.values())
        if len(sigs) != 1:
            print(f"build_kernels: {module}.{name} was called with {len(sigs)} argument type sets, "
                  "one is needed", file=sys.stderr)
            return 1
        cc.export(name, sigs[0].signature)(d.py_func)
    ns: dict = {}
    exec(f"def source_hash():\n    return {want}\n", ns)
    cc.export("source_hash", "i8()")(ns["source_hash"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumbaPendingDeprecationWarning)  # numba.pycc: no successor yet
        cc.compile()
    if built_hash() != want:
        print("build_kernels: the built module does not load", file=sys.stderr)
        return 1
    print(f"build_kernels: {len(_jit.KERNELS)} kernels built into dsp/_kernels in "
          f"{time.monotonic() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

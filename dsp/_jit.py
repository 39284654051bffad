"""dsp's compiled per-frame loops: built ahead of time on the box, numba's JIT otherwise.

The kernels are ordinary numba functions, marked ``@kernel`` (called from Python) or
``@helper`` (called only from kernels). ``scripts/build_kernels.py``, run by
``scripts/setup.sh``, compiles every kernel ahead of time for this machine's CPU into the
extension module ``dsp/_kernels``: the recorder then runs them with neither numba nor LLVM
in its process (no compile at start, ~140 MB less memory, no writable code cache). That
module records a hash of the sources it was built from; when it is missing, or the sources
have changed since (a developer's tree between two ``setup.sh`` runs), or
``NOKBOX_DSP_JIT=1`` is set (the build itself), the same kernels are compiled by numba's
JIT at their first call instead, and cached on disk (``NUMBA_CACHE_DIR``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

SOURCES = ("_jit.py", "segment.py", "tones.py", "music.py")  # every file holding a kernel or helper
KERNELS: list = []  # (module, name) of every kernel, in definition order (for the build)


def source_hash() -> int:
    """A 60-bit hash of the kernel sources (the built module must match it)."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in SOURCES:
        h.update((here / name).read_bytes())
    return int(h.hexdigest()[:15], 16)


def _load_built():
    if os.environ.get("NOKBOX_DSP_JIT") == "1":
        return None
    try:
        from . import _kernels  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _kernels if _kernels.source_hash() == source_hash() else None


BUILT = _load_built()


def kernel(fn):
    """The ahead-of-time compiled ``fn`` when built, else numba's JIT of it."""
    KERNELS.append((fn.__module__, fn.__name__))
    if BUILT is not None:
        return getattr(BUILT, fn.__name__)
    from numba import njit

    return njit(cache=True)(fn)


class _Lazy:
    """A helper called from Python while the kernels are built: JIT-compiled at its first call."""

    def __init__(self, fn) -> None:
        self.py_func = fn
        self._compiled = None
        self.__doc__ = fn.__doc__

    def __call__(self, *args):
        if self._compiled is None:
            from numba import njit

            self._compiled = njit(cache=True)(self.py_func)
        return self._compiled(*args)


def helper(fn):
    """A function called from kernels (compiled into them); callable from Python too."""
    if BUILT is not None:
        return _Lazy(fn)  # the built kernels hold their own copy; numba only if Python calls it
    from numba import njit

    return njit(cache=True)(fn)

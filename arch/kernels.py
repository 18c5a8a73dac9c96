"""``njit``: numba's compiler for the performance models' kernels, with its cache keyed by
their sources.

numba rebuilds a cached kernel only when its own file changes, not when a constant or a
kernel it uses from another file does (an edited ``arch.uarch.CMD_DEPTH`` or
``occupancy.queue_after`` left the fast path's compiled engines on the old ones while
``sweeps.perf`` took the new). So every kernel is cached under ``build/numba/<hash>``,
the hash of every source a kernel or its constants come from (``arch``, ``compiler``,
``sweeps/perf.py``, ``sweeps/analytic.py``): an edit of any of them compiles afresh
(once: the fast path's alone about 14 s on 2 cores, docs/perf.md; every kernel, the
instruction-level model's and the compiler's too, 49 s in one process,
tests/conftest.py). Module-level constants a kernel reads are frozen when it is compiled;
a value meant to change at run time is passed as an argument.

Tested by tests/sweeps/test_perf_model.py (the compiled copier queue) and the fast
path's tests there, which run every kernel.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numba

ROOT = Path(__file__).resolve().parent.parent


def sources_hash(files) -> str:
    """16 hex digits of a SHA-256 over ``files`` (paths in the checkout, any order): each
    one's path relative to the checkout and its bytes. Also ``sweeps.runner``'s
    ``code_version``, over the sources a sweep's numbers come from."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


numba.config.CACHE_DIR = str(ROOT / "build" / "numba" / sources_hash(
    [*ROOT.glob("arch/*.py"), *ROOT.glob("compiler/*.py"),
     ROOT / "sweeps" / "perf.py", ROOT / "sweeps" / "analytic.py"]))


def njit(fn):
    """``numba.njit(cache=True)`` under the sources-keyed cache (module docstring)."""
    return numba.njit(cache=True)(fn)

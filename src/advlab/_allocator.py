"""Keep freed memory in the process: glibc ``malloc`` tuned for repeated large allocations.

By default glibc's ``malloc`` serves a block above its (dynamic) mmap threshold with a fresh ``mmap`` and
trims the top of the heap once more than the trim threshold is free. A forward/backward pass over a batch
allocates and frees activations of many megabytes, so every pass maps, faults in and unmaps them again: on
the 2-core machine of ``benchmarks/README.md`` an attack ran about 20 % slower (for every library alike) than
with freed memory kept, and its time depended on the order of earlier allocations. Raising both thresholds
keeps the freed blocks for the next pass.

Two ways to get it, equivalent for PyTorch's CPU allocations:

- before the process starts (any program, any library): ``MALLOC_MMAP_THRESHOLD_=4294967296
  MALLOC_TRIM_THRESHOLD_=68719476736 python ...`` (what ``benchmarks/common.py`` sets);
- inside a running process: ``advlab.keep_freed_memory()`` (the ``advlab`` command calls it at start-up;
  ``ADVLAB_DEFAULT_MALLOC=1`` opts out). ``mallopt`` takes a C ``int``, so the values are capped at
  ``2**31 - 1`` bytes: blocks beyond 2 GiB are still mapped on their own, at most 2 GiB of free heap is kept.

The cost: memory a computation freed stays with the process (it is reused by the next allocations, not
returned to the system until exit), so a process's resident size stays at its peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# The environment variables of the benchmarks and the mallopt parameters they correspond to (<malloc.h>).
MALLOC_ENV: dict[str, int] = {"MALLOC_MMAP_THRESHOLD_": 2**32, "MALLOC_TRIM_THRESHOLD_": 2**36}
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_INT_MAX = 2**31 - 1

_applied = False


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has ``gnu_get_libc_version`` and ``mallopt``), else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - absent from musl and other C libraries
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return libc


def keep_freed_memory() -> bool:
    """Makes glibc ``malloc`` keep freed memory in the process instead of returning it to the system.

    Calls ``mallopt(M_MMAP_THRESHOLD, ...)`` and ``mallopt(M_TRIM_THRESHOLD, ...)`` with the values of the
    benchmarks' ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` (4 GiB and 64 GiB, capped at
    ``2**31 - 1``, the largest value ``mallopt`` takes), so large blocks (a batch's activations) are reused
    from the heap on the next pass instead of being mapped and faulted in again. Attacks and training on CPU
    ran about 20 % faster with it on the benchmark machine (see ``benchmarks/README.md``); the price is a
    resident size that stays at its peak. Process-wide and not undone; the library never calls it by itself.

    Returns ``True`` when the setting is in effect (applied now or by an earlier call), ``False`` where it
    does nothing: not Linux with glibc, ``mallopt`` refused, or either ``MALLOC_*`` variable already set in
    the environment (the user's own choice is left alone). Never raises. Call it once, early (before the
    first large allocations); calling it again is harmless.

    Example (the one-liner for library users; first thing in a script or notebook):
        >>> import advlab
        >>> advlab.keep_freed_memory()  # doctest: +SKIP
        True
    """
    global _applied
    if _applied:
        return True
    if any(k in os.environ for k in MALLOC_ENV):
        return False
    try:
        libc = _glibc()
        if libc is None:
            return False
        ok = libc.mallopt(M_MMAP_THRESHOLD, min(MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"], _INT_MAX)) == 1
        ok = libc.mallopt(M_TRIM_THRESHOLD, min(MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"], _INT_MAX)) == 1 and ok
    except Exception:  # a C library that misbehaves must not stop the caller
        return False
    _applied = ok
    return ok

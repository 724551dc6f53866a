"""Host memory for XLA:CPU: freed memory stays in the process instead of going back to the kernel.

XLA:CPU allocates each run of a compiled program's temporaries in one block (hundreds of MB for a
train step) with ``posix_memalign``, on one of its worker threads. glibc serves a block that
large from a fresh ``mmap`` (a worker thread's arena holds at most 64 MB) and unmaps it when the
run ends, so every step faults its whole temporary block back in, a page at a time, in kernel
time. One arena with no ``mmap`` and no trimming keeps those pages mapped between runs
(``benchmarks/host_memory.py`` measures both; figures in ``benchmarks/README.md``). The price:
the process keeps its peak heap resident until it exits.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
KEEP = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
OPT_OUT = "XELM_MALLOC"  # "system" leaves glibc's defaults alone


def glibc_mallopt():
    """glibc's ``mallopt``, or None on another C library."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return None


def keep_freed_memory() -> bool:
    """Apply :data:`KEEP` unless ``XELM_MALLOC=system``; True where glibc took every setting.

    Only threads that have not allocated yet join the one arena, so this must run before JAX
    starts its thread pool: ``import xelm`` calls it first thing."""
    mallopt = glibc_mallopt()
    if mallopt is None or os.environ.get(OPT_OUT, "keep") == "system":
        return False
    return all(mallopt(param, value) == 1 for param, value in KEEP)

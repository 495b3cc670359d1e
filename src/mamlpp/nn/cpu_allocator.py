"""Keep freed CPU tensor memory in the process instead of returning it to the kernel.

A second-order meta-step allocates and frees thousands of temporaries of 1-8 MB. glibc serves
blocks that large with mmap and unmaps them on free, so every new tensor's pages fault in again
(50-100 thousand page faults per Conv4 MAML++ step, about a tenth of its CPU time). Raising
glibc's mmap and trim thresholds makes such blocks come from the heap and be reused. Only where
memory lives changes: every kernel and every number stays the same.
"""

from __future__ import annotations

import ctypes
import platform

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
# Blocks below this come from the heap: 256 MB covers a 20-way step's activations; where glibc
# refuses that much, its documented maximum on 64-bit systems (32 MB).
MMAP_THRESHOLDS = (256 * 2**20, 32 * 2**20)
# Free memory at the top of the heap is returned to the kernel only above this.
TRIM_THRESHOLD = 1 * 2**30

_done = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap/trim thresholds once per process; whether they are in force (False
    where the C library is not glibc, e.g. macOS, musl or Windows)."""
    global _done
    if _done:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mmap_set = any(mallopt(_M_MMAP_THRESHOLD, v) for v in MMAP_THRESHOLDS)
    _done = mmap_set and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done

"""Keeping freed host memory in the process, so that a step's temporaries do not page-fault.

PyTorch allocates CPU tensors with malloc. glibc's malloc hands large blocks back to the system
(munmap, or trimming the top of the heap) as soon as they are freed, and the next step's
tensors of the same size then touch fresh pages: one minor page fault per 4 KiB. A stack's
temporaries are K times a network's: a 3-stack of dni on digits (64-256-256-10, batch 32)
took about 870 page faults a step, the same 3 runs one by one none, and the stack's step was
half as slow again as theirs. Raising malloc's two thresholds keeps those blocks in the heap for
reuse: no page faults, and the stack's step as fast as theirs.

This is process-wide and glibc-only; anywhere else (macOS, musl, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# mallopt's parameter numbers (glibc malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# Blocks up to 32 MiB (glibc's own ceiling for its adaptive threshold) come from the heap, and
# up to 128 MiB freed at the heap's top stay there. Setting either turns glibc's adaptive
# thresholds off, which is why both are set.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 128 << 20


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc malloc's thresholds once per process; True where they were set."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )

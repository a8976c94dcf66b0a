"""Process-wide settings that a training run wants on a CPU, applied once where a command starts.

Two are set, both only for the process that trains (a command, or a Ray worker):

- **Denormal floats flushed to zero.** Tiny weights and signals in the subnormal range make the
  CPU's matrix products many times slower.
- **Freed memory kept in the process** (glibc's malloc only). creditlab's sweeps hold every
  group's s, z and delta until the step's updates are formed, then free them all at once.
  glibc then returns the top of its heap to the system (its trim threshold follows the
  largest block it has seen, a few MB), and the next step faults every page back in: on
  ResNet-20 at batch 128 that was 80,000 page faults and 0.6 of PyTorch's 1 s per four steps
  (`benchmarks/torch_models.py --malloc default`). PyTorch's autograd frees as its backward
  goes and happens to stay below the threshold. Raising the trim threshold, and fixing the
  size above which blocks are mapped apart (otherwise it would drop back to 128 KB), keeps the
  freed pages for the next step, as PyTorch's CUDA allocator keeps its blocks and as its CPU
  tuning guide's advice (jemalloc, tcmalloc) does. The cost: a process keeps up to its
  largest step's memory until it exits.

`CREDITLAB_MALLOC=default`, or any `MALLOC_TRIM_THRESHOLD_` / `MALLOC_MMAP_THRESHOLD_` of the
user's own, leaves malloc as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import torch

# mallopt's parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# The largest value mallopt accepts for the mapping threshold on 64-bit systems
# (DEFAULT_MMAP_THRESHOLD_MAX): larger blocks are mapped apart whatever is asked.
MMAP_THRESHOLD = 32 * 1024 * 1024
# mallopt takes an int: the largest trim threshold it can set, 2 GiB of free heap top.
TRIM_THRESHOLD = 2**31 - 1
USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse; True where it now does.

    Once per process; False (and nothing changed) off glibc, where the user set malloc's
    thresholds themselves, or with CREDITLAB_MALLOC=default."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or os.environ.get("CREDITLAB_MALLOC") == "default":
        return False
    if any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success. The mapping threshold first: setting either one turns
    # glibc's moving thresholds off, and the mapping one would fall back to 128 KB.
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    return _applied


def prepare_for_training() -> None:
    """The settings above, for a process about to train."""
    torch.set_flush_denormal(True)  # denormal floats slow CPU matmuls many times over
    retain_freed_memory()

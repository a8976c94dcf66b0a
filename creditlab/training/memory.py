"""Sizes checked before allocation: a request that would not fit in memory is refused with its
estimate, rather than ending in an out-of-memory kill or a traceback from the allocator."""

from __future__ import annotations

import os

from creditlab.errors import UsageError


def available_bytes() -> int | None:
    """Memory the process can still take: Linux's MemAvailable, else free pages; None when the
    system does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def check_fits(estimate: float, what: str, device: str = "cpu") -> None:
    """Refuse `what` when its estimated size exceeds the memory left (host memory, or the GPU's
    free memory for a CUDA device)."""
    free: int | None
    if str(device).startswith("cuda"):
        import torch

        try:
            free = torch.cuda.mem_get_info(torch.device(device))[0]
        except Exception:  # no CUDA here, or a device that cannot say: the host check stands
            free = available_bytes()
    else:
        free = available_bytes()
    if free is not None and estimate > free:
        raise UsageError(
            f"{what} needs about {human(estimate)}, more than the {human(free)} of memory "
            f"available on {device}; make it smaller"
        )

"""Sizes checked before allocation: a request that would not fit in memory is refused with its
estimate, rather than ending in an out-of-memory kill or a traceback from the allocator."""

from __future__ import annotations

import itertools
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


# Copies of the parameters a run keeps besides the parameters themselves: the update, and up to
# two optimiser moments (Adam). And of each group's output per example: s, z, delta and a spare
# for the kinds that keep more (capsules' predictions, pooling's indices).
PARAMETER_COPIES = 4
ACTIVATION_COPIES = 4


def dense_parameters(sizes: list[int], skip: bool = False) -> int:
    """The weights and biases of a stack of dense groups of these sizes (input first, output
    last); with `skip`, every group reads the input too and the output reads every hidden
    group (engine/models.py skip_network)."""
    if not skip:
        return sum(a * b + b for a, b in itertools.pairwise(sizes))
    inputs, hidden, out = sizes[0], sizes[1:-1], sizes[-1]
    total, below = 0, 0
    for size in hidden:
        total += (inputs + below) * size + size
        below = size
    return total + (inputs + sum(hidden)) * out + out


def check_model(n_parameters: int, itemsize: int, what: str, device: str = "cpu") -> None:
    """Refuse a model whose parameters, with the copies training keeps, would not fit."""
    check_fits(n_parameters * itemsize * PARAMETER_COPIES, what, device)


def check_batch(net, batch: int, device: str = "cpu") -> None:
    """Refuse a batch whose activations, on the built network, would not fit."""
    per_example = sum(group.size for group in net.groups.values())
    itemsize = torch_itemsize(net.dtype)
    check_fits(
        batch * per_example * itemsize * ACTIVATION_COPIES,
        f"a batch of {batch} examples on this network",
        str(device),
    )


# What an evaluation pass may hold at once: a capsule network's evaluation of 8,192 images in
# float64 held 12 GiB.
EVALUATION_BYTES = 512 * 2**20


def evaluation_chunk(net, largest: int = 8192) -> int:
    """How many examples an evaluation pass takes at once, so that their activations (with the
    copies a kind keeps) stay within EVALUATION_BYTES."""
    per_example = sum(group.size for group in net.groups.values())
    per_example *= torch_itemsize(net.dtype) * ACTIVATION_COPIES
    return max(1, min(largest, EVALUATION_BYTES // max(1, per_example)))


def torch_itemsize(dtype) -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()

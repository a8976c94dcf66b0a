"""Devices, normalised once where they enter the library.

torch.device("cuda") names no particular GPU, while every tensor made on it lives on
"cuda:<current index>"; comparing the two says they differ. So a device is turned into its
exact form here, once, and everything downstream compares exact devices.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from creditlab.errors import UsageError

SUPPORTED = ("cpu", "cuda")


def resolve_device(device: torch.device | str | None) -> torch.device:
    """The exact device for `device`: "auto" (a GPU if torch sees one), "cpu" or "cuda[:N]".

    The result is what tensors made on it report as their .device: "cpu" or "cuda:N", never a
    bare "cuda". Anything else (mps, xpu, meta, cpu:3, a GPU index torch does not see) is a
    UsageError naming what is valid.
    """
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise UsageError(
            f"unknown device {device!r} ({err}); valid: auto, cpu, cuda, cuda:N"
        ) from None
    if device.type not in SUPPORTED:
        raise UsageError(f"device {str(device)!r} is not supported; valid: auto, cpu, cuda, cuda:N")
    if device.type == "cpu":
        if device.index not in (None, 0):
            raise UsageError(f"device {str(device)!r}: the CPU has no index; use 'cpu'")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError(f"device {str(device)!r} asked for, but torch sees no CUDA GPU")
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if device.index is None else device.index
    if not 0 <= index < count:
        raise UsageError(
            f"device {str(device)!r}: torch sees {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}"
        )
    return torch.device("cuda", index)


# torch.set_float32_matmul_precision's settings: "highest" is strict float32 (the default);
# "high" lets float32 matrix products use TF32 tensor cores (NVIDIA Ampere and later: 10-bit
# mantissas in the products, float32 sums); "medium" may go down to bfloat16 products.
MATMUL_PRECISIONS = ("highest", "high", "medium")


def check_matmul_precision(name: str) -> str:
    if name not in MATMUL_PRECISIONS:
        raise UsageError(
            f"unknown matmul precision {name!r}; valid: {', '.join(MATMUL_PRECISIONS)}"
        )
    return name


@contextmanager
def matmul_precision(name: str) -> Iterator[None]:
    """Run the block with float32 matrix products at precision `name`, then put back the
    process's setting (it is global to the process: a run must not change it for the next)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(check_matmul_precision(name))
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)

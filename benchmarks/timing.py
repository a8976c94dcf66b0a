"""Shared by the benchmark scripts (run as `python benchmarks/NAME.py`, so this folder is on
sys.path): wait for the device before reading a clock."""

import torch


def sync(device: torch.device) -> None:
    """Wait until the GPU has finished what was queued (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)

"""Shared by the benchmark scripts (run as `python benchmarks/NAME.py`, so this folder is on
sys.path): wait for the device before reading a clock."""

import torch


def sync(device: torch.device) -> None:
    """Wait until the GPU has finished what was queued (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def add_precision_option(parser) -> None:
    """--matmul-precision (and --tf32, its old spelling for "high"), for both sides alike."""
    parser.add_argument(
        "--matmul-precision",
        default="highest",
        choices=("highest", "high", "medium"),
        help="float32 matrix products on both sides: highest (strict float32, the default), "
        "high (TF32 tensor cores on NVIDIA Ampere and later), medium",
    )
    parser.add_argument("--tf32", action="store_true", help="the same as --matmul-precision high")


def apply_precision(args) -> str:
    """Set the asked precision process-wide (so both sides run under it); a label to print."""
    if args.tf32:
        args.matmul_precision = "high"
    torch.set_float32_matmul_precision(args.matmul_precision)
    return f", matmul precision {args.matmul_precision}" + (
        " (TF32 on a GPU)" if args.matmul_precision == "high" else ""
    )

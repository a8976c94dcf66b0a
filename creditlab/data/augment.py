"""Data augmentation for image batches, applied to each training batch as it is drawn.

"shift:K" moves every image by a random whole number of pixels, up to K in each direction
(rows and columns drawn independently, uniform on -K..K), filling with zeros, as Sabour et al.
(2017) trained their CapsNet on MNIST ("shifted by up to 2 pixels in each direction with zero
padding"). Batches stay flat, (N, C*H*W); the shifts come from a generator the caller seeds,
so a run is reproducible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from creditlab.errors import UsageError

AUGMENTS = ("shift:K",)


def parse_augment(spec: str | None) -> int | None:
    """The largest shift K of "shift:K" (None for no augmentation), or a UsageError."""
    if spec is None or spec in ("", "none"):
        return None
    kind, _, value = spec.partition(":")
    if kind == "shift" and value.isdigit() and int(value) >= 1:
        return int(value)
    raise UsageError(
        f"unknown augmentation {spec!r}; valid: {', '.join(AUGMENTS)} with K a positive integer"
    )


def image_shape_of(shape: tuple[int, ...], n_inputs: int) -> tuple[int, int, int]:
    """(C, H, W) from a data set's image shape, (H, W) or (C, H, W)."""
    full = (1, *shape) if len(shape) == 2 else tuple(shape)
    if len(full) != 3 or full[0] * full[1] * full[2] != n_inputs:
        raise UsageError(f"shifting needs images; the data's shape is {shape}")
    return full


def shift(
    x: torch.Tensor, image: tuple[int, int, int], k: int, generator: torch.Generator
) -> torch.Tensor:
    """Every image of the flat batch x shifted by its own random (dy, dx) in [-k, k]^2."""
    n = x.shape[0]
    c, h, w = image
    padded = F.pad(x.reshape(n, c, h, w), (k, k, k, k))
    dy, dx = torch.randint(-k, k + 1, (2, n, 1), generator=generator, device=generator.device)
    rows = torch.arange(h, device=x.device) + k - dy  # (N, H): row r of the result
    cols = torch.arange(w, device=x.device) + k - dx  # (N, W)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows.unsqueeze(2), cols.unsqueeze(1)]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).reshape(n, -1)

"""Data augmentation for image batches, applied to each training batch as it is drawn.

`--augment` takes a comma-separated list of steps, applied in the order written:

- "shift:K" moves every image by a random whole number of pixels, up to K in each direction
  (rows and columns drawn independently, uniform on -K..K), filling with zeros, as Sabour et al.
  (2017) trained their CapsNet on MNIST ("shifted by up to 2 pixels in each direction with zero
  padding").
- "crop:P" pads every image by P pixels of zeros on each side and takes a random crop of the
  image's size from it (top-left corner uniform on 0..2P in each direction), as He et al.
  (2016) trained ResNets on CIFAR-10 ("4 pixels are padded on each side, and a 32x32 crop is
  randomly sampled from the padded image or its horizontal flip": "crop:4,flip"). A crop of
  the zero-padded image is the same transformation as a shift filled with zeros; both names
  say what the papers say. The zeros are zeros of the inputs as the data set gives them: for
  CIFAR, whose channels are normalised, the padding is the training set's mean colour, as
  padding after mean subtraction is (torchvision's RandomCrop before Normalize pads with black).
- "flip" mirrors each image left to right with probability 1/2.

Batches stay flat, (N, C*H*W). All draws come from one generator the caller seeds (per epoch,
training/trainer.py), in a fixed order, so a run is reproducible and a resumed run exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from creditlab.errors import UsageError

AUGMENTS = ("shift:K", "crop:P", "flip")

Steps = tuple[tuple[str, int], ...]


def parse_augment(spec: str | None) -> Steps | None:
    """The steps of "shift:K", "crop:P", "flip" or a comma-separated list of them, as
    (kind, amount) pairs (amount 0 for flip); None for no augmentation; else a UsageError."""
    if spec is None or spec in ("", "none"):
        return None
    steps: list[tuple[str, int]] = []
    for part in spec.split(","):
        kind, colon, value = part.strip().partition(":")
        if kind in ("shift", "crop") and value.isdigit() and int(value) >= 1:
            step = (kind, int(value))
        elif kind == "flip" and not colon:
            step = ("flip", 0)
        else:
            raise UsageError(
                f"unknown augmentation {spec!r}; valid: {', '.join(AUGMENTS)} with K and P "
                "positive integers, or several joined by commas, e.g. crop:4,flip"
            )
        if any(kind == done for done, _ in steps):
            raise UsageError(f"augmentation {spec!r} names {kind} twice")
        steps.append(step)
    return tuple(steps)


def image_shape_of(shape: tuple[int, ...], n_inputs: int) -> tuple[int, int, int]:
    """(C, H, W) from a data set's image shape, (H, W) or (C, H, W)."""
    full = (1, *shape) if len(shape) == 2 else tuple(shape)
    if len(full) != 3 or full[0] * full[1] * full[2] != n_inputs:
        raise UsageError(f"augmentation needs images; the data's shape is {shape}")
    return full


def augment(
    x: torch.Tensor, image: tuple[int, int, int], steps: Steps, generator: torch.Generator
) -> torch.Tensor:
    """The flat batch x with every step applied, in order, each drawing from `generator`."""
    for kind, amount in steps:
        if kind == "shift":
            x = shift(x, image, amount, generator)
        elif kind == "crop":
            x = crop(x, image, amount, generator)
        else:
            x = flip(x, image, generator)
    return x


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


def crop(
    x: torch.Tensor, image: tuple[int, int, int], p: int, generator: torch.Generator
) -> torch.Tensor:
    """Every image of the flat batch x padded by p zeros on each side, then cropped back to
    H x W at its own random corner (top, left) in [0, 2p]^2."""
    n = x.shape[0]
    c, h, w = image
    padded = F.pad(x.reshape(n, c, h, w), (p, p, p, p))  # (N, C, H + 2p, W + 2p)
    top, left = torch.randint(0, 2 * p + 1, (2, n, 1), generator=generator, device=generator.device)
    rows = top + torch.arange(h, device=x.device)  # (N, H): the padded rows kept
    cols = left + torch.arange(w, device=x.device)  # (N, W)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[batch, rows.unsqueeze(2), cols.unsqueeze(1)]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2).reshape(n, -1)


def flip(x: torch.Tensor, image: tuple[int, int, int], generator: torch.Generator) -> torch.Tensor:
    """Every image of the flat batch x mirrored left to right with probability 1/2."""
    n = x.shape[0]
    images = x.reshape(n, *image)
    mirror = torch.rand(n, generator=generator, device=generator.device) < 0.5
    out = torch.where(mirror.view(n, 1, 1, 1), images.flip(3), images)
    return out.reshape(n, -1)

"""Losses: the per-example error E at the output group and its derivative dE/dz_o.

The loss reads the output group's activation z_o. cross_entropy and bce take z_o as logits
(softmax and sigmoid are part of the loss, as in PyTorch's CrossEntropyLoss and
BCEWithLogitsLoss), which keeps both numerically stable; give such an output group the
identity activation. The engine turns dE/dz_o into the output error signal
delta_o = f_o'(s_o) * dE/dz_o.

Targets: integer class labels for cross_entropy, tensors shaped like the output for mse and bce.

For capsule networks (Sabour, Frosst and Hinton 2017):
- margin, on a capsule group (N, n, d) with class labels: with the lengths L_k = |v_k|,
  E = sum over k of T_k max(0, m+ - L_k)^2 + lambda (1 - T_k) max(0, L_k - m-)^2, T_k = 1 for
  the label's capsule, m+ = 0.9, m- = 0.1, lambda = 0.5; the scores are the lengths;
- reconstruction, on a group as large as the input: E = sum of squared differences from the
  input (its target is the input, not the labels).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from creditlab.errors import UnknownNameError, UsageError

Tensor = torch.Tensor


@dataclass(frozen=True)
class Loss:
    name: str
    per_example: Callable[[Tensor, Tensor], Tensor]  # E_n for every example n, shape (N,)
    dz: Callable[[Tensor, Tensor], Tensor]  # dE_n/dz_o, shape (N, size of output)
    classification: bool  # targets are class labels
    target: str = "label"  # "label": the batch's targets; "input": the input itself
    capsules: bool = False  # reads a capsule group (N, n, d)
    scores: Callable[[Tensor], Tensor] = lambda z: z  # class scores, for accuracy

    def mean(self, z: Tensor, y: Tensor) -> Tensor:
        return self.per_example(z, y).mean()


def _check_labels(z: Tensor, y: Tensor, name: str = "cross_entropy") -> None:
    if y.dim() != 1 or y.shape[0] != z.shape[0] or y.dtype.is_floating_point:
        raise UsageError(
            f"{name} needs integer class labels of shape ({z.shape[0]},), "
            f"got {tuple(y.shape)} {y.dtype}"
        )


def _check_like(z: Tensor, y: Tensor, name: str) -> None:
    if y.shape != z.shape:
        raise UsageError(
            f"{name} needs targets shaped like the output {tuple(z.shape)}, got {tuple(y.shape)}"
        )


def _ce(z: Tensor, y: Tensor) -> Tensor:
    _check_labels(z, y)
    return -torch.log_softmax(z, dim=1).gather(1, y.view(-1, 1)).squeeze(1)


def _ce_dz(z: Tensor, y: Tensor) -> Tensor:
    _check_labels(z, y)
    grad = torch.softmax(z, dim=1)
    grad[torch.arange(z.shape[0], device=z.device), y] -= 1  # softmax(z) - onehot(y)
    return grad


def _mse(z: Tensor, y: Tensor) -> Tensor:
    _check_like(z, y, "mse")
    return 0.5 * (z - y).pow(2).sum(dim=1)


def _mse_dz(z: Tensor, y: Tensor) -> Tensor:
    _check_like(z, y, "mse")
    return z - y


def _bce(z: Tensor, y: Tensor) -> Tensor:
    # -[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))] = softplus(z) - y z, stable for any z
    _check_like(z, y, "bce")
    return (F.softplus(z) - y * z).sum(dim=1)


def _bce_dz(z: Tensor, y: Tensor) -> Tensor:
    _check_like(z, y, "bce")
    return torch.sigmoid(z) - y


M_PLUS, M_MINUS, LAMBDA = 0.9, 0.1, 0.5


def _lengths(z: Tensor) -> Tensor:
    if z.dim() != 3:
        raise UsageError(f"the margin loss needs capsules (N, n, d), got shape {tuple(z.shape)}")
    return z.pow(2).sum(dim=2).sqrt()


def _margin(z: Tensor, y: Tensor) -> Tensor:
    length = _lengths(z)
    _check_labels(length, y, "margin")
    present = F.one_hot(y, length.shape[1]).to(z.dtype)
    up = (M_PLUS - length).clamp_min(0).pow(2)
    down = (length - M_MINUS).clamp_min(0).pow(2)
    return (present * up + LAMBDA * (1 - present) * down).sum(dim=1)


def _margin_dz(z: Tensor, y: Tensor) -> Tensor:
    """dE/dv_k = dE/dL_k v_k / L_k; a zero capsule (L_k = 0) gets 0 (the guard keeps it so)."""
    length = _lengths(z)
    _check_labels(length, y, "margin")
    present = F.one_hot(y, length.shape[1]).to(z.dtype)
    d_length = -2 * present * (M_PLUS - length).clamp_min(0)
    d_length += 2 * LAMBDA * (1 - present) * (length - M_MINUS).clamp_min(0)
    unit = z / length.clamp_min(torch.finfo(z.dtype).tiny).unsqueeze(2)
    return d_length.unsqueeze(2) * unit


def _reconstruction(z: Tensor, x: Tensor) -> Tensor:
    _check_like(z, x, "reconstruction")
    return (z - x).pow(2).sum(dim=1)


def _reconstruction_dz(z: Tensor, x: Tensor) -> Tensor:
    _check_like(z, x, "reconstruction")
    return 2 * (z - x)


LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in [
        Loss("cross_entropy", _ce, _ce_dz, classification=True),
        Loss("mse", _mse, _mse_dz, classification=False),
        Loss("bce", _bce, _bce_dz, classification=False),
    ]
}
# The capsule network's losses, apart: they need a capsule group or the input as the target,
# so they do not fit every output group as the losses above do.
CAPSNET_LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in [
        Loss("margin", _margin, _margin_dz, True, capsules=True, scores=_lengths),
        Loss("reconstruction", _reconstruction, _reconstruction_dz, False, target="input"),
    ]
}


def loss(name: str) -> Loss:
    if name in CAPSNET_LOSSES:
        return CAPSNET_LOSSES[name]
    try:
        return LOSSES[name]
    except KeyError:  # the list names the losses for any output (the command line's --loss)
        raise UnknownNameError("loss", name, LOSSES) from None

"""Losses: the per-example error E at the output group and its derivative dE/dz_o.

The loss reads the output group's activation z_o. cross_entropy and bce take z_o as logits
(softmax and sigmoid are part of the loss, as in PyTorch's CrossEntropyLoss and
BCEWithLogitsLoss), which keeps both numerically stable; give such an output group the
identity activation. The engine turns dE/dz_o into the output error signal
delta_o = f_o'(s_o) * dE/dz_o.

Targets: integer class labels for cross_entropy, tensors shaped like the output for mse and bce.
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

    def mean(self, z: Tensor, y: Tensor) -> Tensor:
        return self.per_example(z, y).mean()


def _check_labels(z: Tensor, y: Tensor) -> None:
    if y.dim() != 1 or y.shape[0] != z.shape[0] or y.dtype.is_floating_point:
        raise UsageError(
            f"cross_entropy needs integer class labels of shape ({z.shape[0]},), "
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


LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in [
        Loss("cross_entropy", _ce, _ce_dz, classification=True),
        Loss("mse", _mse, _mse_dz, classification=False),
        Loss("bce", _bce, _bce_dz, classification=False),
    ]
}


def loss(name: str) -> Loss:
    try:
        return LOSSES[name]
    except KeyError:
        raise UnknownNameError("loss", name, LOSSES) from None

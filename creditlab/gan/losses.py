"""The GAN losses, on the discriminator's logits logit, with their derivatives per example.

- nonsaturating (Goodfellow et al. 2014, the generator's -log D trick):
  E_D = mean softplus(-l_real) + mean softplus(l_fake),  E_G = mean softplus(-l_fake);
- hinge (Lim and Ye 2017; Miyato et al. 2018):
  E_D = mean relu(1 - l_real) + mean relu(1 + l_fake),   E_G = -mean l_fake.

Each term gives its per-example value E_n and dE_n/dl_n (the engine's signals are per example;
weight updates divide by the batch size once). Logits have shape (N, 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from creditlab.errors import UnknownNameError

Tensor = torch.Tensor
Term = Callable[[Tensor], tuple[Tensor, Tensor]]  # logits -> (E_n, dE_n/dl_n)


def _softplus_neg(logit: Tensor) -> tuple[Tensor, Tensor]:  # softplus(-logit): -log sigmoid(logit)
    return F.softplus(-logit), torch.sigmoid(logit) - 1


def _softplus(logit: Tensor) -> tuple[Tensor, Tensor]:  # softplus(logit): -log(1 - sigmoid(logit))
    return F.softplus(logit), torch.sigmoid(logit)


def _hinge_real(logit: Tensor) -> tuple[Tensor, Tensor]:  # relu(1 - logit)
    return F.relu(1 - logit), -(logit < 1).to(logit.dtype)


def _hinge_fake(logit: Tensor) -> tuple[Tensor, Tensor]:  # relu(1 + logit)
    return F.relu(1 + logit), (logit > -1).to(logit.dtype)


def _negative(logit: Tensor) -> tuple[Tensor, Tensor]:  # -logit
    return -logit, torch.full_like(logit, -1.0)


@dataclass(frozen=True)
class GanLoss:
    name: str
    d_real: Term  # the discriminator's loss on real images
    d_fake: Term  # the discriminator's loss on generated images
    g_fake: Term  # the generator's loss on generated images


GAN_LOSSES = {
    loss.name: loss
    for loss in (
        GanLoss("nonsaturating", _softplus_neg, _softplus, _softplus_neg),
        GanLoss("hinge", _hinge_real, _hinge_fake, _negative),
    )
}


def gan_loss(name: str) -> GanLoss:
    if name not in GAN_LOSSES:
        raise UnknownNameError("GAN loss", name, GAN_LOSSES)
    return GAN_LOSSES[name]

"""Activation functions, each defined once beside its derivative.

An activation maps a group's net input s to its output z = f(s). The backward sweep needs f'(s);
`df` receives both s and z because several derivatives are cheapest written with the output
(sigmoid' = z(1 - z), tanh' = 1 - z^2) and the forward pass has already paid for z.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from creditlab.errors import UnknownNameError

Tensor = torch.Tensor

LEAKY_SLOPE = 0.01  # PyTorch's default negative slope
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class Activation:
    name: str
    f: Callable[[Tensor], Tensor]  # z = f(s)
    df: Callable[[Tensor, Tensor], Tensor]  # f'(s), given s and z = f(s)
    init: str  # the initialisation that suits it: "glorot" or "he"


def _gelu(s: Tensor) -> Tensor:  # exact GELU: s * Phi(s)
    return 0.5 * s * (1.0 + torch.erf(s * _INV_SQRT_2))


def _gelu_df(s: Tensor, z: Tensor) -> Tensor:  # Phi(s) + s * phi(s)
    cdf = 0.5 * (1.0 + torch.erf(s * _INV_SQRT_2))
    return cdf + s * torch.exp(-0.5 * s * s) * _INV_SQRT_2PI


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation("identity", lambda s: s, lambda s, z: torch.ones_like(s), "glorot"),
        Activation("sigmoid", torch.sigmoid, lambda s, z: z * (1 - z), "glorot"),
        Activation("tanh", torch.tanh, lambda s, z: 1 - z * z, "glorot"),
        # relu'(s) = 1 where s > 0, i.e. where z > 0: sign(z), which is one fast pass (a
        # comparison that makes a bool mask first costs several times more on the CPU).
        Activation("relu", lambda s: s.clamp_min(0), lambda s, z: z.sign(), "he"),
        Activation(
            "leaky_relu",
            lambda s: F.leaky_relu(s, LEAKY_SLOPE),
            lambda s, z: torch.full_like(s, LEAKY_SLOPE).masked_fill_(s > 0, 1.0),
            "he",
        ),
        Activation("softplus", F.softplus, lambda s, z: torch.sigmoid(s), "he"),
        # ELU with alpha = 1: below zero z = exp(s) - 1, so f'(s) = z + 1 there.
        Activation("elu", F.elu, lambda s, z: (z + 1).masked_fill_(s > 0, 1.0), "he"),
        Activation("gelu", _gelu, _gelu_df, "he"),
    ]
}


def activation(name: str) -> Activation:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise UnknownNameError("activation", name, ACTIVATIONS) from None

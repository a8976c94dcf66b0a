"""Activation functions, each defined once beside its derivative.

An activation maps a group's net input s to its output z = f(s). The backward sweep needs f'(s);
`df` receives both s and z because several derivatives are cheapest written with the output
(sigmoid' = z(1 - z), tanh' = 1 - z^2) and the forward pass has already paid for z.

One activation is not elementwise: the capsules' squash, v = s |s| / (1 + |s|^2), acts on each
capsule's vector (the last dimension). It gives the vector-Jacobian product `vjp` instead of an
elementwise f', and lives apart from ACTIVATIONS (capsule groups use it; dense groups cannot).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from creditlab.errors import UnknownNameError, UsageError

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
    # For activations over a vector (the last dimension): dE/ds given s, z = f(s) and dE/dz.
    vjp: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None


def _gelu(s: Tensor) -> Tensor:  # exact GELU: s * Phi(s)
    return 0.5 * s * (1.0 + torch.erf(s * _INV_SQRT_2))


def _gelu_df(s: Tensor, z: Tensor) -> Tensor:  # Phi(s) + s * phi(s)
    cdf = 0.5 * (1.0 + torch.erf(s * _INV_SQRT_2))
    return cdf + s * torch.exp(-0.5 * s * s) * _INV_SQRT_2PI


def leaky_relu(slope: float, name: str) -> Activation:
    """z = s above zero, slope * s below; f'(s) is 1 or the slope (0 <= slope < 1).

    f'(s) = max(sign(s), slope): two fast passes, where filling through a bool mask of s > 0
    took 17 times longer on the CPU (a 128 x 3136 batch, one thread)."""
    return Activation(
        name,
        lambda s: F.leaky_relu(s, slope),
        lambda s, z: s.sign().clamp_(min=slope),
        "he",
    )


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation("identity", lambda s: s, lambda s, z: torch.ones_like(s), "glorot"),
        Activation("sigmoid", torch.sigmoid, lambda s, z: z * (1 - z), "glorot"),
        Activation("tanh", torch.tanh, lambda s, z: 1 - z * z, "glorot"),
        # relu'(s) = 1 where s > 0, i.e. where z > 0: sign(z), which is one fast pass (a
        # comparison that makes a bool mask first costs several times more on the CPU).
        Activation("relu", lambda s: s.clamp_min(0), lambda s, z: z.sign(), "he"),
        leaky_relu(LEAKY_SLOPE, "leaky_relu"),
        Activation("softplus", F.softplus, lambda s, z: torch.sigmoid(s), "he"),
        # ELU with alpha = 1: below zero z = exp(s) - 1, so f'(s) = z + 1 there; above zero
        # z = s > 0 and f'(s) = 1. z clamped at 0, plus 1, is both in one pass.
        Activation("elu", F.elu, lambda s, z: z.clamp_max(0) + 1, "he"),
        Activation("gelu", _gelu, _gelu_df, "he"),
    ]
}


def squash(s: Tensor) -> Tensor:
    """v = (|s|^2 / (1 + |s|^2)) s / |s| = s |s| / (1 + |s|^2) over the last dimension.

    Written without dividing by |s|, so a zero vector gives zero, not NaN.
    """
    norm2 = s.pow(2).sum(dim=-1, keepdim=True)
    return s * (norm2.sqrt() / (1.0 + norm2))


def squash_vjp(s: Tensor, v: Tensor, dv: Tensor) -> Tensor:
    """dE/ds for v = squash(s): the Jacobian is a I + b s s^T with a = |s| / (1 + |s|^2) and
    b = (1 - |s|^2) / (|s| (1 + |s|^2)^2). b s s^T = |s| u u^T (1 - |s|^2) / (1 + |s|^2)^2 with
    u = s / |s|, which tends to 0 with s: the derivative at s = 0 is 0, finite. The division by
    |s| in u is guarded: u is 0 at s = 0, where the term vanishes anyway."""
    norm2 = s.pow(2).sum(dim=-1, keepdim=True)
    norm = norm2.sqrt()
    u = s / norm.clamp_min(torch.finfo(s.dtype).tiny)  # 0 at s = 0
    a = norm / (1.0 + norm2)
    c = norm * (1.0 - norm2) / (1.0 + norm2).pow(2)
    return a * dv + (c * (u * dv).sum(dim=-1, keepdim=True)) * u


SQUASH = Activation("squash", squash, lambda s, z: torch.ones_like(s), "glorot", squash_vjp)
VECTOR_ACTIVATIONS: dict[str, Activation] = {SQUASH.name: SQUASH}


def activation(name: str) -> Activation:
    """The activation by name; "leaky_relu:SLOPE" gives leaky ReLU with another slope than
    PyTorch's 0.01 (DCGAN's discriminator uses 0.2)."""
    if name in VECTOR_ACTIVATIONS:
        return VECTOR_ACTIVATIONS[name]
    if isinstance(name, str) and name.startswith("leaky_relu:"):
        return leaky_relu(leaky_slope(name), name)
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise UnknownNameError("activation", name, [*ACTIVATIONS, "leaky_relu:SLOPE"]) from None


def leaky_slope(name: str) -> float:
    """The slope of "leaky_relu:SLOPE", a number from 0 to 1, or a UsageError."""
    text = name.partition(":")[2]
    try:
        slope = float(text)
    except ValueError:
        slope = math.nan
    if not 0.0 <= slope < 1.0:
        raise UsageError(f"activation {name!r}: the slope must be a number in [0, 1), got {text!r}")
    return slope

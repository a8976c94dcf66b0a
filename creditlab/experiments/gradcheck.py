"""Check the engine's backpropagation against two oracles on random DAG networks.

The oracles are central finite differences of the loss in float64 and torch.autograd run over
an independent reference forward pass written with torch.nn.functional (so a wrong f, f', E or
dE/ds in creditlab cannot hide behind itself). This module is a checking tool: the engine and
the rules never use autograd.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from creditlab.engine.activations import ACTIVATIONS, LEAKY_SLOPE
from creditlab.engine.losses import LOSSES
from creditlab.engine.network import Network, bias_name, weight_name
from creditlab.errors import UsageError
from creditlab.rules import rule

Tensor = torch.Tensor
MAX_SEED = 2**32 - 1000  # seeds are mixed as seed * 1000 + trial into a 64-bit generator seed

REFERENCE_ACTIVATIONS = {
    "identity": lambda s: s,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": F.relu,
    "leaky_relu": lambda s: F.leaky_relu(s, LEAKY_SLOPE),
    "softplus": F.softplus,
    "elu": F.elu,
    "gelu": F.gelu,
}
REFERENCE_LOSSES = {
    "cross_entropy": lambda z, y: F.cross_entropy(z, y),
    "mse": lambda z, y: 0.5 * (z - y).pow(2).sum(dim=1).mean(),
    "bce": lambda z, y: (
        F.binary_cross_entropy_with_logits(z, y, reduction="none").sum(dim=1).mean()
    ),
}


def random_dag(seed: int, loss: str, activations: list[str], n_hidden: int = 4) -> Network:
    """A small random DAG: groups read 1-3 earlier groups; the output reads every group that
    nobody else reads, so each group feeds one or more others."""
    rng = random.Random(seed)
    net = Network(dtype=torch.float64, seed=seed)
    groups = [net.input(rng.randint(2, 5))]
    for k in range(n_hidden):
        ins = rng.sample(groups, rng.randint(1, min(3, len(groups))))
        groups.append(
            net.dense(ins, rng.randint(2, 5), activation=activations[k % len(activations)])
        )
    read = {i for g in groups for i in g.ins}
    ins = [g for g in groups[1:] if g.name not in read]
    extra = [g for g in groups if g not in ins]
    ins += rng.sample(extra, min(len(extra), rng.randint(0, 2)))
    out_act = "identity" if loss != "mse" else rng.choice(activations)
    out = net.dense(ins, rng.randint(2, 4), activation=out_act, name="out")
    net.output(out, loss=loss)
    # Nonzero biases exercise dE/db and keep s off relu's kink at exactly 0 (a group reading
    # only dead relu units would otherwise sit there, where finite differences see slope 1/2).
    for b in net.b.values():
        b.copy_(torch.randn(b.shape, generator=torch.Generator().manual_seed(seed), dtype=b.dtype))
    return net


def random_batch(net: Network, n: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, net.input_size, generator=g, dtype=net.dtype)
    if net.loss_fn.name == "cross_entropy":
        y = torch.randint(0, net.output_size, (n,), generator=g)
    elif net.loss_fn.name == "bce":
        y = torch.rand(n, net.output_size, generator=g, dtype=net.dtype)
    else:
        y = torch.randn(n, net.output_size, generator=g, dtype=net.dtype)
    return x, y


def finite_differences(net: Network, x: Tensor, y: Tensor, eps: float = 1e-6) -> dict[str, Tensor]:
    """dE/dparam by central differences, one element at a time."""
    grads = {}
    for name, p in net.parameters().items():
        grad = torch.zeros_like(p)
        flat, gflat = p.view(-1), grad.view(-1)
        for k in range(flat.numel()):
            old = float(flat[k])
            flat[k] = old + eps
            up = net.loss(x, y)
            flat[k] = old - eps
            down = net.loss(x, y)
            flat[k] = old
            gflat[k] = (up - down) / (2 * eps)
        grads[name] = grad
    return grads


def autograd_gradients(net: Network, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """dE/dparam by torch.autograd over a reference forward pass."""
    params = {k: v.detach().clone().requires_grad_(True) for k, v in net.parameters().items()}
    z = {net.input_name: x}
    for j in net.order[1:]:
        group = net.groups[j]
        s = params[bias_name(j)] + sum(z[i] @ params[weight_name(i, j)] for i in group.ins)
        z[j] = REFERENCE_ACTIVATIONS[group.act.name](s)
    loss = REFERENCE_LOSSES[net.loss_fn.name](z[net.output_name], y)
    grads = torch.autograd.grad(loss, list(params.values()))
    return dict(zip(params, grads, strict=True))


def relative_error(a: Tensor, b: Tensor) -> float:
    """max |a - b| over the parameter's entries, relative to its largest gradient entry.

    Measured per entry, a gradient that is nearly zero would turn the finite differences'
    round-off (about 1e-10 here) into a large ratio; the parameter's scale is the fair yardstick.
    """
    if not a.numel():
        return 0.0
    scale = max(float(a.abs().max()), float(b.abs().max()), 1e-12)
    return float((a - b).abs().max()) / scale


@dataclass
class CheckResult:
    case: str
    errors: dict[str, tuple[float, float]]  # parameter -> (vs finite differences, vs autograd)

    def worst(self) -> tuple[float, float]:
        """The largest errors; NaN if any error is NaN (a NaN must never pass for small)."""
        return worst_of(e[0] for e in self.errors.values()), worst_of(
            e[1] for e in self.errors.values()
        )


def worst_of(errors) -> float:
    errors = list(errors)
    return math.nan if any(math.isnan(e) for e in errors) else max(errors)


def within(error: float, tolerance: float) -> bool:
    """error <= tolerance, and False for NaN (NaN compares false both ways)."""
    return error <= tolerance


def check_tolerance(name: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{name} must be a finite number above 0, got {value}")
    return value


def check_network(net: Network, x: Tensor, y: Tensor, case: str) -> CheckResult:
    ours = rule("bp").updates(net, x, y)
    fd = finite_differences(net, x, y)
    ag = autograd_gradients(net, x, y)
    errors = {k: (relative_error(ours[k], fd[k]), relative_error(ours[k], ag[k])) for k in ours}
    return CheckResult(case, errors)


def run(trials: int = 6, seed: int = 0, batch: int = 5) -> list[CheckResult]:
    """Random DAGs covering every activation (hidden and output) and every loss."""
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise UsageError(f"trials must be a positive integer, got {trials!r}")
    if not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UsageError(f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    names = list(ACTIVATIONS)
    results = []
    for t in range(trials):
        for loss in LOSSES:
            acts = names[t % len(names) :] + names[: t % len(names)]
            net = random_dag(seed * 1000 + t, loss, acts)
            x, y = random_batch(net, batch, seed * 1000 + t)
            results.append(check_network(net, x, y, f"trial {t} loss={loss}"))
    return results

"""Check the engine's backpropagation against two oracles on random networks of every kind.

The oracles are central finite differences of the loss in float64 and torch.autograd run over
an independent reference forward pass written with torch.nn.functional (so a wrong f, f', E or
dE/ds in creditlab cannot hide behind itself). Each kind of connection declares both halves
of its check in its own file (engine/kinds/): its reference forward (Kind.reference) and the
family of random networks it is checked in (Kind.random_graph): random dense DAGs over every
loss and activation, random convolutional graphs (convolutions with random kernels, strides
and padding, max and average pooling, merges), random residual graphs (batch norm, residual
additions, global average pooling, layers without bias), random upsampling graphs
(image-shaped dense groups and transposed convolutions) and random capsule networks
(primary capsules, routed capsules in both routing modes, a mask and a decoder, with a margin
and a weighted reconstruction output). This module is a checking tool: the engine and the
rules never use autograd.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from creditlab.engine.activations import LEAKY_SLOPE, leaky_slope
from creditlab.engine.kinds import KINDS, Kind, RandomGraph
from creditlab.engine.kinds.base import random_biases
from creditlab.engine.kinds.capsules import CAPSULE_GRAPH, reference_squash
from creditlab.engine.kinds.conv import CONV_GRAPH
from creditlab.engine.kinds.conv_transpose import UPSAMPLING_GRAPH
from creditlab.engine.kinds.dense import random_dag as _random_dag
from creditlab.engine.network import Network, bias_name, weight_name
from creditlab.errors import UsageError
from creditlab.rules import GRADIENT_RULE, rule

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


def reference_activation(name: str):
    """The torch.nn.functional form of an activation, for the oracle's forward pass."""
    if name.startswith("leaky_relu:"):
        slope = leaky_slope(name)
        return lambda s: F.leaky_relu(s, slope)
    return REFERENCE_ACTIVATIONS[name]


REFERENCE_LOSSES = {
    "cross_entropy": lambda z, y: F.cross_entropy(z, y),
    "mse": lambda z, y: 0.5 * (z - y).pow(2).sum(dim=1).mean(),
    "bce": lambda z, y: (
        F.binary_cross_entropy_with_logits(z, y, reduction="none").sum(dim=1).mean()
    ),
    "margin": lambda v, y: _reference_margin(v, y),
    "reconstruction": lambda z, x: (z - x).pow(2).sum(dim=1).mean(),
}


def _reference_margin(v: Tensor, y: Tensor) -> Tensor:
    length = v.norm(dim=-1)
    t = F.one_hot(y, length.shape[1]).to(v.dtype)
    loss = t * F.relu(0.9 - length) ** 2 + 0.5 * (1 - t) * F.relu(length - 0.1) ** 2
    return loss.sum(dim=1).mean()


_reference_squash = reference_squash  # (the capsule kind's, engine/kinds/capsules.py)


def random_network(graph: RandomGraph, seed: int, variant: str = "", trial: int = 0) -> Network:
    """One network of a kind's random family (Kind.random_graph), float64, from `seed`."""
    net = Network(dtype=torch.float64, seed=seed)
    graph.build(net, random.Random(seed), variant, trial)
    return net


def random_dag(seed: int, loss: str, activations: list[str], n_hidden: int = 4) -> Network:
    """A small random dense DAG (engine/kinds/dense.py) with this loss and these activations."""
    net = Network(dtype=torch.float64, seed=seed)
    _random_dag(net, random.Random(seed), loss, activations, n_hidden)
    return net


def random_conv_net(seed: int, loss: str = "cross_entropy") -> Network:
    """A random convolutional graph with pooling (engine/kinds/conv.py)."""
    return random_network(CONV_GRAPH, seed, loss)


def random_deconv_net(seed: int, loss: str = "mse") -> Network:
    """A random upsampling graph (engine/kinds/conv_transpose.py)."""
    return random_network(UPSAMPLING_GRAPH, seed, loss)


def random_capsule_net(seed: int, routing_gradient: bool = True) -> Network:
    """A random capsule network (engine/kinds/capsules.py)."""
    return random_network(CAPSULE_GRAPH, seed, "exact" if routing_gradient else "constant-c")


_random_biases = random_biases  # (tests draw their own networks' biases alike)


def random_batch(net: Network, n: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, net.input_size, generator=g, dtype=net.dtype)
    if net.loss_fn.classification:
        y = torch.randint(0, net.n_scores, (n,), generator=g)
    elif net.loss_fn.name == "bce":
        y = torch.rand(n, net.output_size, generator=g, dtype=net.dtype)
    else:
        y = torch.randn(n, net.output_size, generator=g, dtype=net.dtype)
    return x, y


def training_loss(net: Network, x: Tensor, y: Tensor) -> float:
    """The loss of a training pass (batch norm with the batch's statistics), as bp's updates
    see it, leaving the running statistics as they were. Without batch norm (and dropout,
    which random networks here do not use) it is net.loss."""
    if not net.buffers:
        return net.loss(x, y)
    saved = {k: v.clone() for k, v in net.buffers.items()}
    loss = float(net.total_loss(net.forward(x, train=True, labels=y), y))
    for k, v in saved.items():
        net.buffers[k].copy_(v)
    return loss


def finite_differences(net: Network, x: Tensor, y: Tensor, eps: float = 1e-6) -> dict[str, Tensor]:
    """dE/dparam by central differences, one element at a time (of a training pass's loss)."""
    grads = {}
    for name, p in net.parameters().items():
        grad = torch.zeros_like(p)
        flat, gflat = p.view(-1), grad.view(-1)
        for k in range(flat.numel()):
            old = float(flat[k])
            flat[k] = old + eps
            up = training_loss(net, x, y)
            flat[k] = old - eps
            down = training_loss(net, x, y)
            flat[k] = old
            gflat[k] = (up - down) / (2 * eps)
        grads[name] = grad
    return grads


def autograd_gradients(net: Network, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """dE/dparam by torch.autograd over a reference forward pass."""
    params = {k: v.detach().clone().requires_grad_(True) for k, v in net.parameters().items()}
    x = x.reshape(x.shape[0], -1)
    z = reference_forward(net, params, x, y)
    loss = 0
    for o in net.outputs:
        target = x if o.loss.target == "input" else y
        out = z[o.name].view(-1, *net.groups[o.name].shape)
        loss = loss + o.weight * REFERENCE_LOSSES[o.loss.name](out, target)
    grads = torch.autograd.grad(loss, list(params.values()))
    return dict(zip(params, grads, strict=True))


def reference_forward(net: Network, params: dict[str, Tensor], x: Tensor, y=None):
    """z of every group for a flat batch x, by torch.nn.functional (differentiable)."""
    z = {net.input_name: x}
    for j in net.order[1:]:
        group = net.groups[j]
        kind = net.kind(j)
        W = {i: params[weight_name(i, j)] for i in group.ins} if kind.weighted else {}
        b = params.get(bias_name(j))  # None where the group has no bias
        s = kind.reference(net, group, [z[i] for i in group.ins], W, b, y)
        s = s.reshape(x.shape[0], -1)
        if group.act.name == "squash":
            z[j] = _reference_squash(s.view(-1, *group.shape)).reshape(s.shape)
        else:
            z[j] = reference_activation(group.act.name)(s)
    return z


def input_signal_errors(net: Network, x: Tensor, seed: int = 0) -> tuple[float, float]:
    """bp's Rule.input_signal (dE/dx for E = sum over n of <r_n, z_o(x_n)>, a random r) against
    central finite differences and autograd: the relative errors (see relative_error)."""
    r = torch.randn(
        x.shape[0], net.output_size, generator=torch.Generator().manual_seed(seed), dtype=x.dtype
    )
    ours = rule(GRADIENT_RULE).input_signal(net, x, r)
    xa = x.detach().clone().requires_grad_(True)
    z_o = reference_forward(net, net.parameters(), xa)[net.output_name]
    (auto,) = torch.autograd.grad((r * z_o).sum(), xa)
    eps, numeric = 1e-6, torch.zeros_like(x)
    for k in range(x.numel()):
        values = []
        for step in (eps, -eps):
            moved = x.clone()
            moved.view(-1)[k] += step
            values.append(float((r * net.forward(moved).z[net.output_name]).sum()))
        numeric.view(-1)[k] = (values[0] - values[1]) / (2 * eps)
    return relative_error(ours, numeric), relative_error(ours, auto)


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
    # parameter -> (vs finite differences, vs autograd); the first is nan where finite
    # differences do not apply (routing_gradient=False is not the loss's gradient by design).
    errors: dict[str, tuple[float, float]]
    fd_applies: bool = True

    def worst(self) -> tuple[float, float]:
        """The largest errors; NaN if any error is NaN (a NaN must never pass for small).
        Where finite differences do not apply, the first is None."""
        fd = worst_of(e[0] for e in self.errors.values()) if self.fd_applies else None
        return fd, worst_of(e[1] for e in self.errors.values())


def worst_of(errors) -> float:
    errors = list(errors)
    return math.nan if any(math.isnan(e) for e in errors) else max(errors, default=0.0)


def within(error: float | None, tolerance: float) -> bool:
    """error <= tolerance, and False for NaN (NaN compares false both ways); None (a check
    that does not apply) passes."""
    return error is None or error <= tolerance


def check_tolerance(name: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"{name} must be a finite number above 0, got {value}")
    return value


def exact_gradient(net: Network) -> bool:
    """Whether bp on `net` is the loss's exact gradient: not with couplings held constant."""
    return all(net.kind(j).exact_gradient(g) for j, g in net.groups.items() if not g.is_input)


def check_network(net: Network, x: Tensor, y: Tensor, case: str) -> CheckResult:
    ours = rule(GRADIENT_RULE).updates(net, x, y)
    fd = finite_differences(net, x, y) if exact_gradient(net) else None
    ag = autograd_gradients(net, x, y)
    errors = {
        k: (relative_error(ours[k], fd[k]) if fd else math.nan, relative_error(ours[k], ag[k]))
        for k in ours
    }
    return CheckResult(case, errors, fd_applies=fd is not None)


def graph_families() -> list[RandomGraph]:
    """The random families that the registered kinds declare, each once, in the order of
    the kinds' registration."""
    families: list[RandomGraph] = []
    for kind in KINDS.values():
        if kind.random_graph is not None and kind.random_graph not in families:
            families.append(kind.random_graph)
    return families


def declaration_problems(kind: Kind) -> list[str]:
    """What a kind leaves undeclared that gradcheck and the builders need (one line each)."""
    problems = []
    where = "see docs/writing-a-kind.md"
    if kind.options is None:
        problems.append(f"kind {kind.name!r} declares no option schema (Kind.options); {where}")
    if type(kind).reference is Kind.reference:
        problems.append(
            f"kind {kind.name!r} declares no reference forward (Kind.reference); {where}"
        )
    if kind.random_graph is None:
        problems.append(
            f"kind {kind.name!r} declares no random graph for gradcheck (Kind.random_graph); "
            + where
        )
    return problems


def kinds_checked(trials: int = 6, seed: int = 0) -> set[str]:
    """The kinds that appear in the networks run(trials, seed) checks."""
    found = set()
    for graph in graph_families():
        for t in range(trials):
            for variant in graph.variants(t):
                net = random_network(graph, seed * 1000 + t, variant, t)
                found.update(g.kind for g in net.groups.values() if not g.is_input)
    return found


def run(trials: int = 6, seed: int = 0, batch: int = 5) -> list[CheckResult]:
    """`trials` networks of every random family the kinds declare (engine/kinds/): random
    DAGs covering every activation (hidden and output) and every loss; random convolutional
    and upsampling graphs; random capsule networks in both routing modes."""
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise UsageError(f"trials must be a positive integer, got {trials!r}")
    if not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UsageError(f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: threads only fight (and slow 100-fold on a busy CPU)
    try:
        return _run(trials, seed, batch)
    finally:
        torch.set_num_threads(threads)


def _run(trials: int, seed: int, batch: int) -> list[CheckResult]:
    results = []
    for graph in graph_families():
        for t in range(trials):
            for variant in graph.variants(t):
                net = random_network(graph, seed * 1000 + t, variant, t)
                x, y = random_batch(net, batch, seed * 1000 + t)
                if graph.unit_input:
                    x = x.sigmoid()  # an image in [0, 1], as a reconstruction expects
                case = graph.case.format(variant=variant)
                results.append(check_network(net, x, y, f"trial {t} {case}"))
    return results

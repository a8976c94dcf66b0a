"""Check the engine's backpropagation against two oracles on random networks of every kind.

The oracles are central finite differences of the loss in float64 and torch.autograd run over
an independent reference forward pass written with torch.nn.functional (so a wrong f, f', E or
dE/ds in creditlab cannot hide behind itself). The networks are random dense DAGs, random
convolutional graphs (convolutions with random kernels, strides and padding, max and average
pooling, merges), random residual graphs (convolutions and dense groups without bias, 2-D and
1-D batch normalisation with batch statistics, residual additions with identity or projection
shortcuts, global average pooling), random upsampling graphs (image-shaped dense groups and
transposed convolutions with random strides, padding and output padding) and random capsule
networks (primary capsules, routed capsules in both routing modes, a mask and a decoder, with a
margin and a weighted reconstruction output). This module is a checking tool: the engine and
the rules never use autograd.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from creditlab.engine.activations import ACTIVATIONS, LEAKY_SLOPE, leaky_slope
from creditlab.engine.losses import LOSSES
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


def _reference_squash(s: Tensor) -> Tensor:
    norm = s.norm(dim=-1, keepdim=True)
    return norm**2 / (1 + norm**2) * s / norm


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
        if group.kind == "dense":
            s = sum(z[i] @ params[weight_name(i, j)] for i in group.ins)
            s = s + params[bias_name(j)] if bias_name(j) in params else s
        elif group.kind == "add":
            s = sum(z[i] for i in group.ins)
        else:
            s = _reference_kind(net, group, params, z, y).reshape(x.shape[0], -1)
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


def _reference_kind(net: Network, group, params, z, y) -> Tensor:
    """s_j of a convolution, pooling, capsule or mask group, written with autograd's ops."""
    (i,) = group.ins
    j, o = group.name, group.options
    u = z[i].view(-1, *net.groups[i].shape)
    if group.kind in ("conv", "primary_capsules"):
        bias = params.get(bias_name(j))  # None for a convolution without bias
        s = F.conv2d(u, params[weight_name(i, j)], bias, o["stride"], o["padding"])
        if group.kind == "conv":
            return s
        n, _, h, w = s.shape
        return s.view(n, o["types"], o["dim"], h, w).permute(0, 1, 3, 4, 2)
    if group.kind == "conv_transpose":
        return F.conv_transpose2d(
            u,
            params[weight_name(i, j)],
            params[bias_name(j)],
            o["stride"],
            o["padding"],
            o["output_padding"],
        )
    if group.kind == "pool":
        pool = F.max_pool2d if o["mode"] == "max" else F.avg_pool2d
        return pool(u, o["kernel"], o["stride"])
    if group.kind == "batch_norm":  # batch statistics, as in a training pass
        # Written out rather than F.batch_norm, whose kernels the engine itself calls.
        u = u if o["spatial"] else z[i]
        dims, at = ((0, 2, 3), (1, -1, 1, 1)) if o["spatial"] else ((0,), (1, -1))
        gamma = params[weight_name(i, j)].view(at)
        beta = params[bias_name(j)].view(at)
        mean = u.mean(dim=dims, keepdim=True)
        var = (u - mean).pow(2).mean(dim=dims, keepdim=True)
        return (u - mean) / torch.sqrt(var + o["eps"]) * gamma + beta
    if group.kind == "global_pool":
        return F.adaptive_avg_pool2d(u, 1)
    if group.kind == "mask":
        keep = F.one_hot(y, u.shape[1]).to(u.dtype)  # the label's capsule, as while training
        return u * keep.unsqueeze(2)
    # routed capsules
    u_hat = torch.einsum("ijdk,nik->nijd", params[weight_name(i, j)], u)
    b = torch.zeros(u_hat.shape[:3], dtype=u.dtype)
    for t in range(o["routing"]):
        c = torch.softmax(b, dim=2)
        if not o["routing_gradient"]:
            c = c.detach()
        s = (c.unsqueeze(3) * u_hat).sum(dim=1)
        if t + 1 < o["routing"]:
            b = b + (u_hat * _reference_squash(s).unsqueeze(1)).sum(dim=3)
    return s


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
    return all(g.options.get("routing_gradient", True) for g in net.groups.values())


def check_network(net: Network, x: Tensor, y: Tensor, case: str) -> CheckResult:
    ours = rule(GRADIENT_RULE).updates(net, x, y)
    fd = finite_differences(net, x, y) if exact_gradient(net) else None
    ag = autograd_gradients(net, x, y)
    errors = {
        k: (relative_error(ours[k], fd[k]) if fd else math.nan, relative_error(ours[k], ag[k]))
        for k in ours
    }
    return CheckResult(case, errors, fd_applies=fd is not None)


def random_conv_net(seed: int, loss: str = "cross_entropy") -> Network:
    """A small random convolutional graph: an image input, one or two convolutions (random
    kernel, stride and padding), max or average pooling, and a dense output reading the last
    image group and, sometimes, an earlier one as well (a merge)."""
    rng = random.Random(seed)
    net = Network(dtype=torch.float64, seed=seed)
    x = net.input((rng.randint(1, 2), rng.randint(6, 8), rng.randint(6, 8)))
    acts = ["tanh", "sigmoid", "softplus", "elu", "gelu", "identity"]
    images = [x]
    for _ in range(rng.randint(1, 2)):
        padding = rng.randint(0, 1)
        side = min(images[-1].shape[1:]) + 2 * padding
        images.append(
            net.conv(
                images[-1],
                rng.randint(1, 3),
                kernel=rng.randint(1, min(3, side)),
                stride=rng.randint(1, 2),
                padding=padding,
                activation=rng.choice(acts),
            )
        )
        _, h, w = images[-1].shape
        if min(h, w) >= 2 and rng.random() < 0.7:
            kernel = 2
            images.append(net.pool(images[-1], kernel, kind=rng.choice(["max", "avg"])))
    ins = [images[-1], *rng.sample(images[1:-1], min(1, len(images) - 2))]
    out = net.dense(ins, rng.randint(2, 4), activation="identity", name="out")
    net.output(out, loss=loss)
    _random_biases(net, seed)
    return net


def random_residual_net(seed: int, loss: str = "cross_entropy") -> Network:
    """A small random residual graph: an image input, a convolution without bias and 2-D batch
    norm, one or two residual blocks (conv-bn-act-conv-bn, the shortcut the identity or, where
    the stride or channels change, a 1x1 convolution with batch norm), added and activated;
    then global average or max pooling, a dense group without bias, 1-D batch norm and a dense
    output. Random activations, strides, channels, momenta and eps; gamma and beta drawn away
    from 1 and 0 so that both matter."""
    rng = random.Random(seed)
    net = Network(dtype=torch.float64, seed=seed)
    acts = ["relu", "tanh", "elu", "gelu", "softplus", "leaky_relu:0.2", "sigmoid"]
    side = rng.randint(5, 7)
    x = net.input((rng.randint(1, 2), side, side))

    def conv_bn(src, channels, kernel, stride, act):
        c = net.conv(
            src, channels, kernel, stride, padding=kernel // 2, activation="identity", bias=False
        )
        momentum = rng.choice([0.1, 0.3, None])
        return net.batch_norm(c, momentum=momentum, eps=rng.choice([1e-5, 1e-3]), activation=act)

    h = conv_bn(x, rng.randint(2, 3), 3, 1, rng.choice(acts))
    for _ in range(rng.randint(1, 2)):
        stride = rng.choice([1, 1, 2]) if min(h.shape[1:]) >= 4 else 1
        channels = h.shape[0] if rng.random() < 0.5 else rng.randint(2, 4)
        branch = conv_bn(h, channels, 3, stride, rng.choice(acts))
        branch = conv_bn(branch, channels, 3, 1, "identity")
        if stride == 1 and channels == h.shape[0]:
            shortcut = h
        else:
            shortcut = conv_bn(h, channels, 1, stride, "identity")
        h = net.add([branch, shortcut], activation=rng.choice(acts))
    h = net.global_pool(h) if rng.random() < 0.6 else net.pool(h, 2, kind="max")
    d = net.dense(h, rng.randint(3, 5), activation="identity", bias=False)
    d = net.batch_norm(d, momentum=0.1, activation=rng.choice(acts))
    out = net.dense(d, rng.randint(2, 4), activation="identity", name="out")
    net.output(out, loss=loss)
    _random_biases(net, seed)
    g = torch.Generator().manual_seed(seed + 7)
    for (_, j), W in net.W.items():
        if net.groups[j].kind == "batch_norm":
            W.copy_(1.0 + 0.5 * torch.randn(W.shape, generator=g, dtype=W.dtype))
    return net


def random_deconv_net(seed: int, loss: str = "mse") -> Network:
    """A small random upsampling graph, a generator's shape: a vector input, a dense group
    shaped as an image (C, H, W), one or two transposed convolutions (random kernel, stride,
    padding and output_padding), sometimes a convolution, and a dense output."""
    rng = random.Random(seed)
    net = Network(dtype=torch.float64, seed=seed)
    x = net.input(rng.randint(2, 4))
    acts = ["tanh", "sigmoid", "softplus", "elu", "gelu", "leaky_relu:0.2"]
    image = net.dense(x, (rng.randint(1, 2), rng.randint(2, 3), rng.randint(2, 3)), "tanh")
    for _ in range(rng.randint(1, 2)):
        stride, kernel = rng.randint(1, 3), rng.randint(1, 4)
        image = net.conv_transpose(
            image,
            rng.randint(1, 2),
            kernel=kernel,
            stride=stride,
            padding=rng.randint(0, 1) if kernel > 1 else 0,
            output_padding=rng.randint(0, stride - 1),
            activation=rng.choice(acts),
        )
    if rng.random() < 0.5:
        image = net.conv(image, 2, kernel=min(2, *image.shape[1:]), activation=rng.choice(acts))
    out = net.dense(image, rng.randint(2, 4), activation="identity", name="out")
    net.output(out, loss=loss)
    _random_biases(net, seed)
    return net


def random_capsule_net(seed: int, routing_gradient: bool = True) -> Network:
    """A small random capsule network: conv, primary capsules, routed capsules (1-3 routing
    iterations) with a margin output, and a mask read by a decoder with a weighted
    reconstruction output."""
    rng = random.Random(seed)
    net = Network(dtype=torch.float64, seed=seed)
    side = rng.randint(5, 6)
    x = net.input((1, side, side))
    c = net.conv(x, rng.randint(2, 3), kernel=2, activation="tanh")
    pc = net.primary_capsules(
        c, types=rng.randint(1, 2), dim=rng.randint(2, 3), kernel=2, stride=rng.randint(1, 2)
    )
    dc = net.capsules(
        pc,
        n=rng.randint(2, 3),
        dim=rng.randint(2, 4),
        routing=rng.randint(1, 3),
        routing_gradient=routing_gradient,
    )
    net.output(dc, loss="margin")
    m = net.mask(dc)
    r = net.dense(net.dense(m, 4, activation="tanh"), side * side, activation="sigmoid")
    net.output(r, loss="reconstruction", weight=0.5)
    _random_biases(net, seed)
    # Larger transformations than the initial ones, so that capsules reach the margins' range.
    for key, W in net.W.items():
        if net.groups[key[1]].kind == "capsules":
            W.mul_(8.0)
    return net


def _random_biases(net: Network, seed: int) -> None:
    for b in net.b.values():
        b.copy_(
            torch.randn(b.shape, generator=torch.Generator().manual_seed(seed), dtype=b.dtype) * 0.5
        )


def run(trials: int = 6, seed: int = 0, batch: int = 5) -> list[CheckResult]:
    """Random DAGs covering every activation (hidden and output) and every loss; random
    convolutional, residual (batch norm) and upsampling graphs; random capsule networks in both
    routing modes."""
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
    names = list(ACTIVATIONS)
    results = []
    for t in range(trials):
        for loss in LOSSES:
            acts = names[t % len(names) :] + names[: t % len(names)]
            net = random_dag(seed * 1000 + t, loss, acts)
            x, y = random_batch(net, batch, seed * 1000 + t)
            results.append(check_network(net, x, y, f"trial {t} loss={loss}"))
    for t in range(trials):
        net = random_conv_net(seed * 1000 + t, loss=list(LOSSES)[t % len(LOSSES)])
        x, y = random_batch(net, batch, seed * 1000 + t)
        results.append(check_network(net, x, y, f"trial {t} conv"))
    for t in range(trials):
        net = random_residual_net(seed * 1000 + t, loss=list(LOSSES)[t % len(LOSSES)])
        x, y = random_batch(net, batch, seed * 1000 + t)
        results.append(check_network(net, x, y, f"trial {t} residual+batch_norm"))
    for t in range(trials):
        net = random_deconv_net(seed * 1000 + t, loss=list(LOSSES)[t % len(LOSSES)])
        x, y = random_batch(net, batch, seed * 1000 + t)
        results.append(check_network(net, x, y, f"trial {t} conv_transpose"))
    for t in range(trials):
        for exact in (True, False):
            net = random_capsule_net(seed * 1000 + t, routing_gradient=exact)
            x, y = random_batch(net, batch, seed * 1000 + t)
            x = x.sigmoid()  # an image in [0, 1], as the reconstruction expects
            mode = "exact" if exact else "constant-c"
            results.append(check_network(net, x, y, f"trial {t} capsules {mode}"))
    return results

"""Populations of perturbed networks, evaluated in one batched forward pass.

Gradient-free rules (evolution strategies, hill climbing) score many perturbed copies of the
parameters on the same batch. Rather than loop over copies, every parameter gets a leading
population axis: W_ij becomes a stack (P, size_i, size_j), each group's s_j a stack
(P, N, size_j), and one batched matrix product per connection evaluates the whole population.
The population is a stack of networks in the sense of stacked training
(creditlab/speed/vmap_stack.py), on the same machinery: the engine's forward pass under
torch.func.vmap. es keeps its antithetic pass, which shares the work of the members of a pair
and measured faster (benchmarks/es_mnist.py speed).
Memory grows as P times the number of parameters (the stacks) plus P times the activations.
"""

from __future__ import annotations

import torch
from torch.func import vmap

from creditlab.engine.binding import batching_fallback_allowed, bound
from creditlab.engine.network import Network, bias_name, weight_name

Tensor = torch.Tensor


def population_losses(net: Network, x: Tensor, y: Tensor, members: dict[str, Tensor]) -> Tensor:
    """The batch loss of every member; members[name] has shape (P, *param.shape).

    Evaluation mode: no dropout, and batch norm normalises by its running statistics, which
    these passes leave as they are. x (N, d) is shared by every member. The population is a
    stack: each member runs the network's own forward pass, batched over the leading axis by
    torch.func.vmap (every connection's product becomes one batched product), so whatever
    the engine's forward can run (convolutions, pooling, capsules, batch norm, residual
    additions, several outputs), a population can. The loss is the network's total loss, as
    net.loss computes it (capsule masks keep the label's capsule).
    """

    def member_loss(params: dict[str, Tensor]) -> Tensor:
        with bound(net, params):
            return net.total_loss(net.forward(x, labels=y), y)

    with batching_fallback_allowed():
        return vmap(member_loss, randomness="error")(members)


def member_losses(net: Network, out: Tensor, y: Tensor) -> Tensor:
    """Mean batch loss per member from the stacked output activations (P, N, size_o)."""
    population, n = out.shape[0], out.shape[1]
    flat = out.reshape(population * n, out.shape[-1])
    if net.loss_fn.classification:
        targets = y.repeat(population)
    else:
        targets = y.unsqueeze(0).expand(population, *y.shape).reshape(population * n, -1)
    return net.loss_fn.per_example(flat, targets).view(population, n).mean(dim=1)


def antithetic_losses(
    net: Network, x: Tensor, y: Tensor, noise: dict[str, Tensor], sigma: float
) -> Tensor:
    """Losses of the members [theta, theta + sigma eps_1..K, theta - sigma eps_1..K], in one
    batched pass, without building the perturbed weight copies.

    Since z (W + sigma eps) = z W + sigma z eps, each connection computes z W once for the
    unperturbed weights and z eps_k per pair, and adds or subtracts it. For connections from
    the input, whose z is the same for every member, z W is shared by all 2K + 1 members and
    z eps_k by both members of a pair: half the products of the plain batched pass, and none
    of its (2K + 1) copies of the largest weight matrices. The result equals
    population_losses(net, x, y, antithetic_members(params, noise, sigma)) for networks of
    dense groups with biases and one output (antithetic_applies); es uses population_losses
    for the others.
    """
    params = net.parameters()
    pairs = next(iter(noise.values())).shape[0]
    plus, minus = slice(1, pairs + 1), slice(pairs + 1, 2 * pairs + 1)
    z: dict[str, Tensor] = {net.input_name: x}  # (N, d) shared, or (2K + 1, N, d) per member
    for j in net.order[1:]:
        s = None
        for i in net.groups[j].ins:
            w, eps, z_i = params[weight_name(i, j)], noise[weight_name(i, j)], z[i]
            if z_i.dim() == 2:  # the same input for every member
                base, shift = z_i @ w, sigma * torch.matmul(z_i, eps)  # (N, n_j), (K, N, n_j)
                part = torch.cat([base.unsqueeze(0), base + shift, base - shift])
            else:
                part = torch.matmul(z_i, w)  # (2K + 1, N, n_j)
                part[plus] += sigma * torch.bmm(z_i[plus], eps)
                part[minus] -= sigma * torch.bmm(z_i[minus], eps)
            s = part if s is None else s + part
        b, eps_b = params[bias_name(j)], sigma * noise[bias_name(j)].unsqueeze(1)
        s += b
        s[plus] += eps_b
        s[minus] -= eps_b
        z[j] = net.groups[j].act.f(s)
    return member_losses(net, z[net.output_name], y)


def antithetic_applies(net: Network) -> bool:
    """Whether antithetic_losses can run this network: dense groups with biases only (its
    products are written for them) and one output."""
    return len(net.outputs) == 1 and all(
        net.groups[j].kind == "dense" and net.kind(j).has_bias(net.groups[j]) for j in net.order[1:]
    )


def stack_members(params: dict[str, Tensor], offsets: list[dict[str, Tensor] | None]) -> dict:
    """Stacks of params + offset for each member (None: the parameters unperturbed)."""
    return {
        name: torch.stack([p if off is None else p + off[name] for off in offsets])
        for name, p in params.items()
    }


def antithetic_members(
    params: dict[str, Tensor], noise: dict[str, Tensor], sigma: float
) -> dict[str, Tensor]:
    """Members [theta, theta + sigma eps_1..K, theta - sigma eps_1..K] for noise eps (K, ...)."""
    return {
        name: torch.cat([p.unsqueeze(0), p + sigma * noise[name], p - sigma * noise[name]])
        for name, p in params.items()
    }


def population_bytes(members: dict[str, Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in members.values())


class NoiseTable:
    """A block of Gaussian noise drawn once; perturbations are windows into it.

    Drawing fresh normals for every member and parameter each step costs more than evaluating
    the population. As in Salimans et al. (2017), perturbations are instead read from a shared
    table at random offsets: each member's noise is a window of the table, and windows at
    distinct offsets are independent draws for all practical purposes.
    """

    def __init__(self, size: int, seed: int, device, dtype):
        generator = torch.Generator().manual_seed(seed)
        self.table = torch.randn(size, generator=generator, dtype=torch.float32).to(device, dtype)

    def sample(self, count: int, length: int, generator: torch.Generator) -> Tensor:
        """(count, length) noise: windows of the table at random offsets."""
        size = self.table.numel()
        if length > size:
            raise ValueError(f"noise table of {size} values is shorter than {length} parameters")
        offsets = torch.randint(
            0, size - length + 1, (count,), generator=generator, device=generator.device
        )
        # unfold gives every window as a row of a strided view (no copy); index_select then
        # copies just the chosen rows.
        windows = self.table.unfold(0, length, 1)
        return windows.index_select(0, offsets.to(self.table.device))


def split_like(flat: Tensor, params: dict[str, Tensor]) -> dict[str, Tensor]:
    """Views of the rows of `flat` (count, total parameters) shaped like each parameter."""
    views, start = {}, 0
    for name, p in params.items():
        views[name] = flat[:, start : start + p.numel()].view(flat.shape[0], *p.shape)
        start += p.numel()
    return views

"""Populations of perturbed networks, evaluated in one batched forward pass.

Gradient-free rules (evolution strategies, hill climbing) score many perturbed copies of the
parameters on the same batch. Rather than loop over copies, every parameter gets a leading
population axis: W_ij becomes a stack (P, size_i, size_j), each group's s_j a stack
(P, N, size_j), and one batched matrix product per connection evaluates the whole population.
Memory grows as P times the number of parameters (the stacks) plus P times the activations.
"""

from __future__ import annotations

import torch

from creditlab.network import Network, bias_name, weight_name

Tensor = torch.Tensor


def population_losses(net: Network, x: Tensor, y: Tensor, members: dict[str, Tensor]) -> Tensor:
    """The mean batch loss of every member; members[name] has shape (P, *param.shape).

    Evaluation mode: no dropout. x (N, d) is shared by every member.
    """
    z: dict[str, Tensor] = {net.input_name: x}
    population = members[bias_name(net.output_name)].shape[0]
    for j in net.order[1:]:
        group = net.groups[j]
        s = members[bias_name(j)].unsqueeze(1)  # (P, 1, size_j), broadcast over the batch
        for i in group.ins:
            # (N, size_i) @ (P, size_i, size_j) broadcasts the shared input over the
            # population; (P, N, size_i) @ (P, size_i, size_j) is a batched product.
            s = s + torch.matmul(z[i], members[weight_name(i, j)])
        z[j] = group.act.f(s)
    out = z[net.output_name]
    n = x.shape[0]
    flat = out.reshape(population * n, out.shape[-1])
    if net.loss_fn.classification:
        targets = y.repeat(population)
    else:
        targets = y.unsqueeze(0).expand(population, *y.shape).reshape(population * n, -1)
    return net.loss_fn.per_example(flat, targets).view(population, n).mean(dim=1)


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

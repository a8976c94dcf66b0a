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

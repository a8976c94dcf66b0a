"""Evolution strategies (Salimans et al. 2017): a gradient estimate from perturbed copies.

Each step draws K Gaussian directions eps_k for all parameters (windows of a shared noise table,
as Salimans et al. did, since fresh normals cost more than the evaluation) and scores the pairs
theta + sigma eps_k and theta - sigma eps_k on the batch, all 2K members (and theta itself, for
the reported loss) in one batched forward pass. Fitness shaping replaces the losses by their
centred ranks in [-0.5, 0.5], which makes the estimate invariant to the loss's scale and robust
to outliers. The estimate of dE/dtheta is

    g = 1 / (2K sigma) * sum_k (rank(E(theta + sigma eps_k)) - rank(E(theta - sigma eps_k))) eps_k

and it goes to the usual optimisers like any other rule's update. Memory grows with the
population times the number of parameters; metrics report it.

Only forward passes are needed, so es trains any network the engine runs: convolutions,
pooling, capsules, batch norm, residual blocks, several outputs. The members are scored in
evaluation mode, so batch norm normalises by its running statistics, which es leaves as they
are (the network it trains is the one that is evaluated).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from creditlab.errors import UsageError
from creditlab.rules.base import Option, Rule
from creditlab.rules.machinery.population import (
    NoiseTable,
    antithetic_applies,
    antithetic_losses,
    antithetic_members,
    population_bytes,
    population_losses,
    split_like,
)
from creditlab.rules.machinery.randomness import RuleGenerator
from creditlab.rules.machinery.space import SearchSpace, optimiser_space


def centred_ranks(losses: torch.Tensor) -> torch.Tensor:
    """Ranks scaled to [-0.5, 0.5] (lowest loss -0.5); ties broken by position."""
    ranks = torch.empty_like(losses)
    ranks[losses.argsort()] = torch.arange(len(losses), dtype=losses.dtype, device=losses.device)
    return ranks / max(1, len(losses) - 1) - 0.5


class EvolutionStrategies(Rule):
    name = "es"
    summary = "evolution strategies: antithetic Gaussian perturbations, rank-shaped fitness"
    not_compiled = "it draws its population's perturbations from its own generator every step"
    # The estimated gradient is noisy and small: Adam's per-parameter scaling suits it.
    recommended: ClassVar[dict[str, Any]] = {"optimizer": "adam", "lr": 0.01}
    # Forward passes only: it trains any network the engine can run forward.
    any_kind = True
    options = {
        "population": Option(int, 100, "members per step (antithetic pairs, so even)"),
        "sigma": Option(float, 0.02, "standard deviation of the perturbations"),
        "shaping": Option(str, "rank", "fitness shaping", ("rank", "none")),
    }
    # A noisy gradient estimate: larger learning rates than the gradient rules.
    search_space: ClassVar[SearchSpace] = {
        **optimiser_space(adam_lr=(1e-3, 1e-1), sgd_lr=(1e-2, 1.0)),
        "sigma": (0.005, 0.1, "log"),
    }

    def __init__(self, **opts):
        super().__init__(**opts)
        population = self.opts["population"]
        if population < 2 or population % 2:
            raise UsageError(f"es.population must be an even number >= 2, got {population}")
        if self.opts["sigma"] <= 0:
            raise UsageError(f"es.sigma must be positive, got {self.opts['sigma']}")
        self.rng = RuleGenerator(offset=7919)
        self.noise_table: NoiseTable | None = None  # drawn again from the seed on resume

    def updates(self, net, x, y):
        params = net.parameters()
        pairs, sigma = self.opts["population"] // 2, self.opts["sigma"]
        rng = self.rng.get(net)
        n_params = sum(p.numel() for p in params.values())
        if self.noise_table is None:
            size = max(2**24, 4 * n_params)
            self.noise_table = NoiseTable(size, net.seed * 1_000_003 + 17, net.device, net.dtype)
        noise = split_like(self.noise_table.sample(pairs, n_params, rng), params)
        if antithetic_applies(net):  # the shared-product pass, faster for dense networks
            losses = antithetic_losses(net, x, y, noise, sigma)
        else:  # any network the engine runs: the members as explicit copies
            losses = population_losses(net, x, y, antithetic_members(params, noise, sigma))
        self.last_loss = losses[0]
        scores = losses[1:]
        if self.opts["shaping"] == "rank":
            scores = centred_ranks(scores)
        else:  # standardised losses
            scores = (scores - scores.mean()) / (scores.std() + 1e-12)
        weights = (scores[:pairs] - scores[pairs:]) / (2 * pairs * sigma)
        # What the population costs beyond one network: the noise, and each group's stacked
        # activations for the 2K + 1 members.
        activations = (2 * pairs + 1) * x.shape[0] * sum(net.groups[j].size for j in net.order[1:])
        self.metrics = {
            "population_mb": (population_bytes(noise) + activations * x.element_size()) / 2**20
        }
        return {name: torch.tensordot(weights, eps, dims=1) for name, eps in noise.items()}

    def state_dict(self):
        state = self.rng.state()
        return {} if state is None else {"rng": state}

    def load_state_dict(self, state):
        self.rng.load(state.get("rng"))

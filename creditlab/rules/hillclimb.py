"""Hill climbing: the simplest learner that uses no gradient information at all.

Each step proposes a random Gaussian perturbation delta of every parameter and keeps it only if
the loss on the batch falls; the step size grows after an improving proposal and shrinks after
one that does not. With `proposals` > 1, several perturbations are scored in one batched pass and
the best is kept (if it improves). It is the baseline that shows what any gradient information
buys.

The step size adapts per proposal, not per step: it is multiplied by `grow` for every proposal
that beats the current loss and by `shrink` for every one that does not, so it settles where a
fraction ln(1/shrink) / ln(grow / shrink) of the proposals improve, whatever their number. The
defaults aim at 45%: in many dimensions a small random step improves a smooth loss about half
the time, so a step at which nearly half improve is still in the near-linear regime, where
beating the batch loss says something about the loss on other batches. A lower rate (such as
Rechenberg's one-fifth) lets the accepted steps fit the noise of each batch (what was
measured: docs/results/rule-notes.md).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from creditlab.errors import UsageError
from creditlab.rules.base import Option, Rule
from creditlab.rules.machinery.population import population_losses, stack_members
from creditlab.rules.machinery.randomness import RuleGenerator
from creditlab.rules.machinery.space import SearchSpace


class HillClimb(Rule):
    name = "hillclimb"
    summary = "hill climbing: keep a random perturbation only if the batch loss falls"
    not_compiled = "it draws its proposals from its own generator every step"
    applies_own_step = True
    # Forward passes only (rules/machinery/population.py): any network the engine runs.
    any_kind = True
    # It applies its own step (no optimiser, no lr); its options are its settings.
    recommended: ClassVar[dict[str, Any]] = {}
    # The first step, per family: in 2 epochs of 2,000 MNIST images the step size has not
    # adapted far from it. capsnet:small stalled at chance from 0.01 (no proposal improved and
    # the step shrank away); from 1e-3 it reached 0.278 test accuracy, from 3e-4 0.256. LeNet
    # reached 0.238 from 0.01 (seed 1: 0.237), 0.332 from 0.1 (seed 1: 0.298), 0.306 from 0.03,
    # 0.273 from 0.3, 0.195 from 1e-3 (docs/results/defaults.md).
    recommended_for: ClassVar[dict[str, dict[str, Any]]] = {
        "conv": {"options": {"step": 0.1}},
        "capsule": {"options": {"step": 1e-3}},
    }
    options = {
        "step": Option(float, 0.01, "initial standard deviation of a proposal"),
        "grow": Option(float, 1.05, "step size factor per improving proposal"),
        "shrink": Option(float, 0.96, "step size factor per proposal that does not improve"),
        # 8, not 1: on digits (mlp:64, 20 epochs) one proposal a step reached 36% test
        # accuracy and eight 88%, for about twice the time (they are scored in one pass).
        "proposals": Option(int, 8, "perturbations scored per step; the best is kept"),
    }
    # Its own step is applied as is: no optimiser settings to search.
    search_space: ClassVar[SearchSpace] = {
        "step": (1e-3, 0.1, "log"),
        "grow": (1.01, 1.2, "linear"),
        "shrink": (0.9, 0.99, "linear"),
    }

    def __init__(self, **opts):
        super().__init__(**opts)
        if self.opts["step"] <= 0 or self.opts["proposals"] < 1:
            raise UsageError("hillclimb.step must be positive and hillclimb.proposals >= 1")
        if not (self.opts["grow"] >= 1 >= self.opts["shrink"] > 0):
            raise UsageError("hillclimb needs grow >= 1 and 0 < shrink <= 1")
        self.rng = RuleGenerator(offset=104729)
        self.step_size = self.opts["step"]
        self.accepted = 0
        self.proposed = 0

    def updates(self, net, x, y):
        params = net.parameters()
        rng = self.rng.get(net)
        deltas = [
            {
                name: torch.randn(p.shape, generator=rng, device=p.device, dtype=p.dtype)
                * self.step_size
                for name, p in params.items()
            }
            for _ in range(self.opts["proposals"])
        ]
        losses = population_losses(net, x, y, stack_members(params, [None, *deltas]))
        self.last_loss = losses[0]
        best = int(losses[1:].argmin())
        improving = int((losses[1:] < losses[0]).sum())
        factor = self.opts["grow"] ** improving
        factor *= self.opts["shrink"] ** (len(deltas) - improving)
        self.step_size = max(self.step_size * factor, 1e-12)
        self.proposed += 1
        if losses[1 + best] < losses[0]:
            self.accepted += 1
            update = {name: -d for name, d in deltas[best].items()}
        else:
            update = {name: torch.zeros_like(p) for name, p in params.items()}
        self.metrics = {
            "step_size": self.step_size,
            "acceptance": self.accepted / self.proposed,
            "improving": improving / len(deltas),  # what the step size adapts to
        }
        return update

    def state_dict(self):
        state = {"step_size": self.step_size, "accepted": self.accepted, "proposed": self.proposed}
        if self.rng.state() is not None:
            state["rng"] = self.rng.state()
        return state

    def load_state_dict(self, state):
        self.rng.load(state.get("rng"))
        self.step_size = float(state.get("step_size", self.opts["step"]))
        self.accepted = int(state.get("accepted", 0))
        self.proposed = int(state.get("proposed", 0))
        if not math.isfinite(self.step_size):
            raise UsageError("hillclimb state holds a non-finite step size")

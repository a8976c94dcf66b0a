"""Hill climbing: the simplest learner that uses no gradient information at all.

Each step proposes a random Gaussian perturbation delta of every parameter and keeps it only if
the loss on the batch falls; the step size grows after an accepted proposal and shrinks after a
rejected one. With `proposals` > 1, several perturbations are scored in one batched pass and the
best is kept (if it improves). It is the baseline that shows what any gradient information buys.

The update is the accepted step itself (-delta, so that theta - update = theta + delta) or zero.
Its size is the rule's own business, so the training loop applies it as is (plain SGD with rate
1, whatever --optimizer and --lr say): scaled or smoothed by momentum, an accepted step could
raise the loss after all.
"""

from __future__ import annotations

import math

import torch

from creditlab.errors import UsageError
from creditlab.population import population_losses, stack_members
from creditlab.randomness import RuleGenerator
from creditlab.rules.base import Option, Rule


class HillClimb(Rule):
    name = "hillclimb"
    summary = "hill climbing: keep a random perturbation only if the batch loss falls"
    applies_own_step = True
    options = {
        "step": Option(float, 0.01, "initial standard deviation of a proposal"),
        "grow": Option(float, 1.1, "step size factor after an accepted proposal"),
        "shrink": Option(float, 0.97, "step size factor after a rejected proposal"),
        "proposals": Option(int, 1, "perturbations scored per step; the best is kept"),
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
        self.proposed += 1
        if losses[1 + best] < losses[0]:
            self.accepted += 1
            self.step_size *= self.opts["grow"]
            update = {name: -d for name, d in deltas[best].items()}
        else:
            self.step_size = max(self.step_size * self.opts["shrink"], 1e-12)
            update = {name: torch.zeros_like(p) for name, p in params.items()}
        self.metrics = {
            "step_size": self.step_size,
            "acceptance": self.accepted / self.proposed,
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

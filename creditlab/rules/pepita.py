"""PEPITA (Dellaferrera and Kreiman 2022, "Error-driven input modulation: solving the credit
assignment problem without a backward pass"): two forward passes, no backward one.

The first, standard pass gives the output error e = dE/dz_o (softmax minus the one-hot target
for cross-entropy). The second pass runs on the input modulated by that error through a fixed
random matrix F (classes x inputs),

    x_mod = x - e F,

and every layer learns from the difference between its two activities, with the modulated
pass's activity below it as the presynaptic factor:

    hidden j:  delta_j = z_j - z_j^mod,   dE/dW_ij = z_i^mod^T delta_j / N   (z_input^mod = x_mod)
    output o:  delta_o = f_o'(s_o) * e,   dE/dW_io = z_i^mod^T delta_o / N

(biases: the mean of delta_j), which is weight_updates on the modulated pass's trace. The
updates are directions for the optimiser as every rule's are (the paper's plain SGD step is
W -= lr * update). F's entries are f_scale * U(-sqrt(6 / d_in), sqrt(6 / d_in)) with
f_scale 0.05, the paper's setting (d_in the input size); F is drawn once from the network's
seed and kept in state_dict()["F"].

Recommended: SGD with momentum 0.9 at lr 0.01, the paper's optimiser and rate (it used batch
64 and a step decay at epochs 60 and 90 of 100). Dense chains only (each group reads the one
before it), the networks of the paper; others are refused naming the group that breaks the
chain. The weight-mirroring variant of Srinivasan et al. 2024 is not implemented.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from creditlab.engine.backward import local_delta, weight_updates
from creditlab.errors import UsageError
from creditlab.rules.base import Option, Rule
from creditlab.rules.machinery.feedback import random_matrix, seed_for
from creditlab.rules.machinery.space import SearchSpace, optimiser_space

Tensor = torch.Tensor


def check_dense_chain(rule: Rule, net) -> None:
    """Refuse a network that is not a dense chain input -> h1 -> ... -> output, naming the
    group that breaks it (rules whose two passes or energy assume layers in a row)."""
    Rule.check(rule, net)  # dense groups, one output
    previous = net.input_name
    for j in net.order[1:]:
        ins = net.groups[j].ins
        if ins != [previous]:
            raise UsageError(
                f"rule {rule.name!r} trains dense chains (each group reads the one before it); "
                f"group {j!r} reads {', '.join(ins)}"
            )
        previous = j
    if previous != net.output_name:
        raise UsageError(
            f"rule {rule.name!r} trains dense chains ending at the output; the last group is "
            f"{previous!r}, the output {net.output_name!r}"
        )


class Pepita(Rule):
    name = "pepita"
    summary = "PEPITA: a second forward pass on the error-modulated input; no backward pass"
    recommended: ClassVar[dict[str, Any]] = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9}
    options: ClassVar[dict[str, Option]] = {
        "f_scale": Option(
            float, 0.05, "F's entries are f_scale * U(-sqrt(6/d_in), sqrt(6/d_in)) (> 0)"
        ),
    }
    search_space: ClassVar[SearchSpace] = {
        **optimiser_space(sgd_lr=(1e-3, 0.1)),
        "f_scale": (0.01, 0.5, "log"),
    }

    def __init__(self, **opts: Any):
        super().__init__(**opts)
        scale = self.opts["f_scale"]
        if not (math.isfinite(scale) and scale > 0):
            raise UsageError(f"option pepita.f_scale must be a finite number > 0, got {scale!r}")
        self.F: Tensor | None = None

    def check(self, net):
        check_dense_chain(self, net)

    def modulation(self, net) -> Tensor:
        """F, (classes, d_in), drawn on first use from the network's seed."""
        shape = (net.output_size, net.input_size)
        if self.F is None:
            bound = self.opts["f_scale"] * math.sqrt(6.0 / net.input_size)
            # uniform on [-a, a] has standard deviation a / sqrt(3)
            self.F = random_matrix(
                net, shape, bound / math.sqrt(3.0), "uniform", seed_for(net, "pepita", "F")
            )
        elif tuple(self.F.shape) != shape:
            raise UsageError(
                f"pepita's F is {tuple(self.F.shape)} but this network needs {shape} "
                "(classes x inputs): a rule object trains one network"
            )
        return self.F

    def updates(self, net, x, y):
        self.check(net)
        # Both passes drop the same units: the modulated one replays the dropout generator.
        dropout_state = net.rng.get_state()
        trace = net.forward(x, train=True)
        o = net.output_name
        self.last_loss = net.loss_fn.mean(trace.z[o], y)
        e = net.loss_fn.dz(trace.z[o], y)  # the output error, per example
        x_mod = x.reshape(x.shape[0], -1) - e @ self.modulation(net)
        after = net.rng.get_state()
        net.rng.set_state(dropout_state)
        modulated = net.forward(x_mod, train=True)
        net.rng.set_state(after)
        deltas = {j: trace.z[j] - modulated.z[j] for j in net.hidden}
        deltas[o] = local_delta(net, trace, o, e)
        return weight_updates(net, modulated, deltas)

    def state_dict(self):
        return {} if self.F is None else {"F": self.F.clone()}

    def load_state_dict(self, state):
        unknown = set(state) - {"F"}
        if unknown:
            raise UsageError(f"rule 'pepita' got an unknown state: {sorted(unknown)}")
        if "F" in state:
            F = state["F"]
            self.F = F.clone() if self.F is None else self.F.copy_(F)

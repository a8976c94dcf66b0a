"""Difference target propagation (Lee et al. 2015; as assessed by Bartunov et al. 2018).

Every hidden group gets a target activity h^_j instead of an error signal, and moves toward it
by its own local loss E_j = 0.5 ||z_j - h^_j||^2 (creditlab.rules.machinery.local). Targets
travel down a chain
input -> h1 -> ... -> hL -> output through learned inverses g_k
(creditlab.rules.dtp_inverses), with the
difference correction that makes the scheme work with imperfect inverses:

    top="gradient" (DTP, Lee et al.; Bartunov et al.'s DTP):
        h^_L = z_L - beta * dE/dz_L                  dE/dz_L = delta_o W_Lo^T, per example
    top="inverse" (the output moved down its loss gradient, its inverse carries it down: no
    weight transport anywhere; Bartunov et al.'s SDTP uses the label itself as the output target):
        h^_o = z_o - beta * dE/dz_o,   h^_L = z_L + g_o(h^_o) - g_o(z_o)
    below, for each group k reading group i:
        h^_i = z_i + g_k(h^_k) - g_k(z_k)

If g_k were the exact inverse of layer k, then f_k(h^_i) = h^_k: reaching its target, group i
would move group k exactly to k's target. The output group keeps its own loss, so its weights
follow the exact gradient dE/dW; groups below follow their local losses, so the update of W_ik
uses only z_i from the forward pass and k's own target. The first hidden group needs no
inverse (it would map back to the input).

Schedules of inverse and forward learning on each mini-batch:
    alternating: the inverses take their step first, then the targets come from the updated
                 inverses (training alternates between the two phases, batch by batch);
    parallel:    targets and the inverses' step both start from the inverses as they were, so
                 the two could run at the same time.

DTP is defined for chains; a network with merges or skip connections is refused, naming the
group. Logged: inverse_loss (the mean reconstruction loss L_k over the inverses, before their
step) and target_distance (the mean over hidden groups of the mean ||z_j - h^_j||).
feedback_matrices() gives each V_k in W_ik^T's place, for the alignment diagnostics (the ideal
V_k here is an inverse, not a transpose).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from creditlab.engine.activations import ACTIVATIONS
from creditlab.engine.backward import incoming_signal, local_delta, transpose_feedback
from creditlab.engine.network import Network, Trace, weight_name
from creditlab.errors import UsageError
from creditlab.rules.base import Option, Rule
from creditlab.rules.dtp_inverses import (
    INVERSE_OPTIMIZERS,
    InverseMappings,
    chain,
    mapping_names,
)
from creditlab.rules.machinery.local import local_updates
from creditlab.rules.machinery.space import SearchSpace, optimiser_space

Tensor = torch.Tensor


class DifferenceTargetPropagation(Rule):
    name = "dtp"
    summary = "difference target propagation: layer targets carried down by learned inverses"
    recommended: ClassVar[dict[str, Any]] = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9}
    options: ClassVar[dict[str, Option]] = {
        "beta": Option(float, 0.1, "target step size: the top target is z - beta * dE/dz"),
        "top": Option(
            str,
            "gradient",
            "where the first target is set: the last hidden group, by the loss gradient through "
            "W (gradient), or the output, carried down by a learned inverse (inverse)",
            ("gradient", "inverse"),
        ),
        "schedule": Option(
            str,
            "alternating",
            "inverses step before the targets are made (alternating) or beside it (parallel)",
            ("alternating", "parallel"),
        ),
        "sigma": Option(float, 0.1, "std of the noise corrupting the inverses' training input"),
        "inverse_lr": Option(float, 3e-3, "learning rate of the inverses"),
        "inverse_optimizer": Option(str, "adam", "optimiser of the inverses", INVERSE_OPTIMIZERS),
        "inverse_momentum": Option(float, 0.9, "momentum of the sgd inverse optimiser"),
        "inverse_activation": Option(
            str,
            "same",
            "activation a of g_k (same: that of the group g_k maps to)",
            ("same", *ACTIVATIONS),
        ),
    }
    # The schedule is not searched: fix it with --rule-opt dtp.schedule=...
    search_space: ClassVar[SearchSpace] = {
        **optimiser_space(),
        "beta": (0.01, 1.0, "log"),
        "sigma": (0.01, 0.5, "log"),
        "inverse_lr": (1e-4, 1e-2, "log"),
    }

    def __init__(self, **opts):
        super().__init__(**opts)
        o = self.opts
        if not (math.isfinite(o["beta"]) and o["beta"] > 0):
            raise UsageError(f"option dtp.beta must be a finite number > 0, got {o['beta']!r}")
        if not 0 <= o["inverse_momentum"] < 1:
            raise UsageError(
                f"option dtp.inverse_momentum must be in [0, 1), got {o['inverse_momentum']!r}"
            )
        self.inverses = InverseMappings(
            self.name,
            o["inverse_activation"],
            o["inverse_lr"],
            o["inverse_optimizer"],
            o["inverse_momentum"],
            o["sigma"],
        )
        self._net: Network | None = None  # the network the inverses are set up for

    def _bind(self, net: Network) -> None:
        """On first use with `net`: check the chain and make (or check a loaded state of) the
        inverses it needs."""
        if net is self._net and self.inverses.pairs is not None:
            return
        groups = chain(net, self.name)
        # (k, i) for each group k whose inverse carries targets down to the group i below it:
        # every hidden group but the first, and the output when the first target is set there.
        last = len(groups) if self.opts["top"] == "inverse" else len(groups) - 1
        pairs = [(groups[n], groups[n - 1]) for n in range(2, last)]
        self.inverses.setup(net, pairs)
        self._net = net

    def inverse_parameters(self, net: Network) -> dict[str, Tensor]:
        """The live V_k and c_k by name (made on first use)."""
        self._bind(net)
        return self.inverses.theta

    def targets(self, net: Network, trace: Trace, y: Tensor) -> dict[str, Tensor]:
        """h^_j for every hidden group (and the output, with top="inverse"), from the inverses
        as they are now."""
        self._bind(net)
        o, beta, z = net.output_name, self.opts["beta"], trace.z
        dE_dzo = net.loss_fn.dz(z[o], y)
        hidden = net.hidden
        targets: dict[str, Tensor] = {}
        if self.opts["top"] == "inverse":
            targets[o] = z[o] - beta * dE_dzo
            below = [o, *reversed(hidden)]
        elif hidden:
            # dE/dz_L through the output layer's W^T: delta_o = f_o'(s_o) * dE/dz_o
            top = hidden[-1]
            delta_o = {o: local_delta(net, trace, o, dE_dzo)}
            dE_dztop = incoming_signal(net, delta_o, top, transpose_feedback(net))
            targets[top] = z[top] - beta * dE_dztop
            below = list(reversed(hidden))
        else:
            return targets
        g = self.inverses.g
        for k in below[:-1]:
            (i,) = net.groups[k].ins
            targets[i] = z[i] + g(k, i, targets[k]) - g(k, i, z[k])
        return targets

    def check(self, net: Network) -> None:
        super().check(net)
        chain(net, self.name)  # a network with merges or skips is refused before training

    def updates(self, net, x, y):
        self._bind(net)
        trace = net.forward(x, train=True)
        o = net.output_name
        self.last_loss = net.loss_fn.mean(trace.z[o], y)
        if self.opts["schedule"] == "alternating":
            inverse_losses = self.inverses.train(net, trace.z)
            targets = self.targets(net, trace, y)
        else:
            targets = self.targets(net, trace, y)
            inverse_losses = self.inverses.train(net, trace.z)
        # Local signals dE_j/dz_j: z_j - h^_j for hidden groups, the loss's own for the output.
        dz = {j: trace.z[j] - targets[j] for j in net.hidden}
        dz[o] = net.loss_fn.dz(trace.z[o], y)
        self.metrics = {}
        if inverse_losses:
            self.metrics["inverse_loss"] = sum(inverse_losses.values()) / len(inverse_losses)
        if net.hidden:
            distances = [dz[j].norm(dim=1).mean() for j in net.hidden]
            self.metrics["target_distance"] = sum(distances) / len(distances)
        return local_updates(net, trace, dz)

    def feedback_matrices(self, net: Network) -> dict[str, Tensor]:
        if self.inverses.pairs is None:
            return {}
        return {
            weight_name(i, k): self.inverses.theta[mapping_names(k, i)[0]]
            for k, i in self.inverses.pairs
        }

    def state_dict(self):
        return self.inverses.state_dict()

    def load_state_dict(self, state):
        self.inverses.load_state_dict(state)

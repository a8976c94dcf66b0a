"""Equilibrium propagation (Scellier and Bengio 2017, "Equilibrium propagation: bridging the gap
between energy-based models and backpropagation"; the centred variant of Laborieux, Ernoult,
Scellier, Bengio, Grollier and Querlioz 2021, "Scaling equilibrium propagation to deep
ConvNets by drastically reducing its gradient estimator bias").

The network is a layered Hopfield-like system: every non-input group j has a state u_j (per
example), the input is clamped to the data, and the state relaxes to a minimum of the energy

    E(u) = sum over j of 0.5 ||u_j||^2 - sum over connections i -> j of rho(u_i) W_ij rho(u_j)
           - sum over j of b_j rho(u_j)                                  (rho(u_input) = x)

plus beta times the loss C(u_o, y) of the output state (the network's own loss) in the nudged
phases: F = E + beta C. Relaxation is gradient descent on F with step eps (Scellier and
Bengio's discretisation), the states kept in [0, 1]:

    dF/du_j = u_j - rho'(u_j) (rho(u_{j-1}) W_{j-1,j} + b_j + rho(u_{j+1}) W_{j,j+1}^T)
              (+ beta dC/du_o at the output)
    u_j <- clip(u_j - eps dF/du_j, 0, 1)

The first bracketed term is group j's forward net input s_j (the dense kind's forward on the
states below), the second the backward sweep's signal with rho(u_{j+1}) in delta's place
(backward.incoming_signal). rho is the hard sigmoid clip(u, 0, 1), so rho' = 1 on the states;
an output group with the identity activation (a cross-entropy network's logits) stays linear:
rho(u_o) = u_o, unclipped, which makes the free equilibrium's u_o the network's scores.

Learning contrasts two equilibria. dF/dW_ij = -rho(u_i)^T rho(u_j) and dF/db_j = -rho(u_j) are
local, and EqProp's estimate of dC/dtheta is their difference over the difference in beta:

    centred  (default):  (dF/dtheta(u^{+beta}) - dF/dtheta(u^{-beta})) / (2 beta)
    positive (2017):     (dF/dtheta(u^{beta}) - dF/dtheta(u^0)) / beta
    random_sign:         positive with beta's sign drawn per batch (Scellier and Bengio's
                         trick against the one-sided estimate's bias)

The nudged phases start from the free equilibrium u^0. The free phase starts from a
feedforward sweep through rho (start "forward"), or from zero (start "zero").

Evaluation reads the free equilibrium's output state (own_readout): the network's plain
forward pass computes something else, since it ignores the top-down half of the energy.
Logged: free_residual, the mean |u_t - u_{t-1}| at the last free step (how far from an
equilibrium the free phase ended).

Defaults follow Scellier and Bengio 2017 (784-500-10, hard sigmoid, eps 0.5, 20 free and 4
nudged steps, beta 0.5, SGD); see docs/rules/eqprop.md for what they give here. Dense chains
only (input -> h1 -> ... -> output); other networks are refused naming the group.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from creditlab.engine.backward import incoming_signal, transpose_feedback, weight_updates
from creditlab.engine.network import Network, Trace
from creditlab.errors import UsageError
from creditlab.rules.base import Option, Rule
from creditlab.rules.machinery.randomness import RuleGenerator
from creditlab.rules.machinery.space import SearchSpace, optimiser_space
from creditlab.rules.pepita import check_dense_chain

Tensor = torch.Tensor
NUDGES = ("centred", "positive", "random_sign")


class EquilibriumPropagation(Rule):
    name = "eqprop"
    summary = "equilibrium propagation: free and nudged relaxations of an energy, local updates"
    own_readout = True
    recommended: ClassVar[dict[str, Any]] = {"optimizer": "sgd", "lr": 0.02, "momentum": 0.9}
    options: ClassVar[dict[str, Option]] = {
        "beta": Option(float, 0.5, "nudging strength beta (> 0)"),
        "eps": Option(float, 0.5, "relaxation step size eps, in (0, 1]"),
        "free_steps": Option(int, 20, "relaxation steps of the free phase (>= 1)"),
        "nudged_steps": Option(int, 4, "relaxation steps of each nudged phase (>= 1)"),
        "nudge": Option(str, "centred", "the two phases contrasted", NUDGES),
        "start": Option(str, "forward", "the free phase's initial state", ("forward", "zero")),
    }
    search_space: ClassVar[SearchSpace] = {
        **optimiser_space(sgd_lr=(3e-3, 0.3)),
        "beta": (0.1, 1.0, "log"),
        "free_steps": (10, 40, "linear"),
        "nudged_steps": (2, 10, "linear"),
    }

    def __init__(self, **opts: Any):
        super().__init__(**opts)
        o = self.opts
        if not (math.isfinite(o["beta"]) and o["beta"] > 0):
            raise UsageError(f"option eqprop.beta must be a finite number > 0, got {o['beta']!r}")
        if not (math.isfinite(o["eps"]) and 0 < o["eps"] <= 1):
            raise UsageError(f"option eqprop.eps must be a number in (0, 1], got {o['eps']!r}")
        for key in ("free_steps", "nudged_steps"):
            if isinstance(o[key], bool) or o[key] < 1:
                raise UsageError(f"option eqprop.{key} must be an integer >= 1, got {o[key]!r}")
        self.rng = RuleGenerator(offset=6007)  # random_sign's signs

    def check(self, net):
        check_dense_chain(self, net)

    # ---- the dynamics ---------------------------------------------------------------------
    def _linear_output(self, net: Network) -> bool:
        return net.groups[net.output_name].act.name == "identity"

    def _rho(self, net: Network, u: dict[str, Tensor], x: Tensor) -> dict[str, Tensor]:
        """rho of every state, the input's being x (the states are kept where rho(u) = u,
        so rho is the states themselves)."""
        return {net.input_name: x, **u}

    def _clip(self, net: Network, j: str, u: Tensor) -> Tensor:
        if j == net.output_name and self._linear_output(net):
            return u
        return u.clamp_(0.0, 1.0)

    def _bottom_up(self, net: Network, rho: dict[str, Tensor], j: str) -> Tensor:
        """s_j = rho(u_i) W_ij + b_j: group j's forward net input from the states below."""
        group = net.groups[j]
        return net.kind(j).forward(net, group, None, [rho[i] for i in group.ins])

    def relax(
        self,
        net: Network,
        x: Tensor,
        u: dict[str, Tensor],
        steps: int,
        beta: float = 0.0,
        y: Tensor | None = None,
    ) -> tuple[dict[str, Tensor], float]:
        """`steps` steps of gradient descent on F = E + beta C from the states u (copied);
        the final states and the mean |u_t - u_{t-1}| of the last step."""
        eps, o = self.opts["eps"], net.output_name
        readout = self._linear_output(net)
        feedback = transpose_feedback(net)
        u = {j: t.clone() for j, t in u.items()}
        first = net.order[1]
        clamped = self._bottom_up(net, {net.input_name: x}, first)  # x W + b never changes
        change = 0.0
        for step in range(steps):
            rho = self._rho(net, u, x)
            if readout:  # the readout feeds back only the nudge: -beta dC/du_o W^T
                rho.pop(o)
                if beta != 0.0:
                    rho[o] = net.loss_fn.dz(u[o], y).mul_(-beta)
            new = {}
            for j in net.order[1:]:
                if readout and j == o:
                    continue
                drive = clamped.clone() if j == first else self._bottom_up(net, rho, j)
                top = incoming_signal(net, rho, j, feedback)
                if top is not None:
                    drive.add_(top)
                if j == o and beta != 0.0:
                    drive.sub_(net.loss_fn.dz(u[o], y), alpha=beta)
                # u - eps dF/du with rho' = 1: (1 - eps) u + eps (drive)
                new[j] = self._clip(net, j, drive.mul_(eps).add_(u[j], alpha=1.0 - eps))
            if readout:  # always at its equilibrium: a function of the states below
                new[o] = self._bottom_up(net, new, o)
            if step == steps - 1:
                change = float(sum((new[j] - u[j]).abs().mean() for j in new) / len(new))
            u = new
        return u, change

    def start(self, net: Network, x: Tensor) -> dict[str, Tensor]:
        """The free phase's initial states: a feedforward sweep through rho, or zeros."""
        u: dict[str, Tensor] = {}
        if self.opts["start"] == "zero":
            for j in net.order[1:]:
                u[j] = x.new_zeros(x.shape[0], net.groups[j].size)
            return u
        rho = {net.input_name: x}
        for j in net.order[1:]:
            u[j] = rho[j] = self._clip(net, j, self._bottom_up(net, rho, j))
        return u

    def free(self, net: Network, x: Tensor) -> tuple[dict[str, Tensor], float]:
        x = x.reshape(x.shape[0], -1)
        return self.relax(net, x, self.start(net, x), self.opts["free_steps"])

    # ---- learning -------------------------------------------------------------------------
    def updates(self, net, x, y):
        self.check(net)
        o = self.opts
        x = x.reshape(x.shape[0], -1)
        u0, residual = self.free(net, x)
        self.last_loss = net.loss_fn.mean(u0[net.output_name], y)
        self.metrics = {"free_residual": residual}
        beta, steps = o["beta"], o["nudged_steps"]
        if o["nudge"] == "random_sign":
            flip = torch.rand((), generator=self.rng.get(net), device=net.device) < 0.5
            beta = -beta if bool(flip) else beta
        a, _ = self.relax(net, x, u0, steps, beta, y)
        if o["nudge"] == "centred":
            b, _ = self.relax(net, x, u0, steps, -beta, y)
            return self._contrast(net, x, y, [(a, beta), (b, -beta)])
        return self._contrast(net, x, y, [(a, beta), (u0, 0.0)])

    def _contrast(self, net, x, y, phases):
        """(dF/dtheta(a) - dF/dtheta(b)) / (beta_a - beta_b) for phases [(a, beta_a),
        (b, beta_b)]. In the energy, dF/dW_ij = -rho_i^T rho_j (mean over the batch) and
        dF/db_j = -rho_j; a linear readout's dF/dW = beta dC/dW, its local gradient. So each
        phase is weight_updates with rho as the activities and -rho_j (beta dC/du_o for the
        readout) as the deltas, times the phase's coefficient."""
        (_, beta_a), (_, beta_b) = phases
        readout = self._linear_output(net)
        o = net.output_name
        parts = []
        for (states, beta), coef in zip(phases, (1.0, -1.0), strict=True):
            coef /= beta_a - beta_b
            rho = self._rho(net, states, x)
            deltas = {j: rho[j] * -coef for j in states}
            if readout:
                deltas[o] = net.loss_fn.dz(states[o], y).mul_(coef * beta)
            parts.append(weight_updates(net, Trace(s={}, z=rho), deltas))
        return {k: parts[0][k].add_(parts[1][k]) for k in parts[0]}

    def output(self, net, x):
        """The output state at the free equilibrium: the scores eqprop's network gives."""
        return self.free(net, x)[0][net.output_name]

    def state_dict(self):
        state = self.rng.state()
        return {} if state is None else {"rng": state}

    def load_state_dict(self, state):
        unknown = set(state) - {"rng"}
        if unknown:
            raise UsageError(f"rule 'eqprop' got an unknown state: {sorted(unknown)}")
        self.rng.load(state.get("rng"))

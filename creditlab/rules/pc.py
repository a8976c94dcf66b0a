"""Predictive coding (Whittington and Bogacz 2017): value nodes relax, then weights learn locally.

After the feedforward pass, every hidden group's value node v_j relaxes for T inference steps
to lower the summed prediction-error energy F = sum_j 0.5 ||v_j - mu_j||^2 + gamma L, while the
loss pulls on the output's prediction (for mse with gamma = 1: the output clamped to the
target). Then every weight changes by the product of its presynaptic value v_i and its
postsynaptic error f_j'(s_j) * eps_j, nothing else. The energy and its relaxation are in
creditlab/rules/pc_energy.py.

Options: `steps` (T) and `rate` (the inference rate) set the relaxation; `output_scale` (gamma)
how hard the loss pulls, the output's precision relative to the hidden groups' (Whittington and
Bogacz's 1 / sigma_out^2 with unit hidden variances): small gamma keeps the values near the
feedforward state, where the updates approach backpropagation's. The updates are divided by
gamma, so their size is the gradient's whatever gamma is. `fixed_prediction` holds the
predictions at their feedforward values during relaxation (Millidge, Tschantz and Buckley 2020),
which makes the updates converge to backpropagation's exactly (with rate 1, after as many steps
as the longest path to the output). Logged: energy (F after relaxation, mean per example; not
under fixed predictions). A relaxation that raises the energy (inference rate too large for the
current weights) stops training with a message rather than passing on meaningless updates.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from creditlab.engine.backward import weight_updates
from creditlab.errors import TrainingError, UsageError
from creditlab.rules.base import Option, Rule
from creditlab.rules.machinery.space import SearchSpace, optimiser_space
from creditlab.rules.pc_energy import relax, relax_fixed_prediction

Tensor = torch.Tensor


class PredictiveCoding(Rule):
    name = "pc"
    summary = "predictive coding: value nodes relax to lower prediction errors, local updates"
    recommended: ClassVar[dict[str, Any]] = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9}
    options: ClassVar[dict[str, Option]] = {
        "steps": Option(int, 20, "T: inference steps (value-node updates) per batch, >= 1"),
        "rate": Option(float, 0.1, "inference rate: the size of each value-node step, in (0, 1]"),
        "output_scale": Option(
            float,
            1.0,
            "gamma > 0: the output error is -gamma dL/dz_o (1 with mse: output clamped to the "
            "target); the updates are divided by gamma",
        ),
        "fixed_prediction": Option(
            bool, False, "hold predictions at their feedforward values while the values relax"
        ),
    }
    search_space: ClassVar[SearchSpace] = {
        **optimiser_space(),
        "rate": (0.02, 0.5, "log"),
        "output_scale": (0.01, 1.0, "log"),
    }

    def __init__(self, **opts: Any):
        super().__init__(**opts)
        o = self.opts
        if o["steps"] < 1:
            raise UsageError(f"option pc.steps must be an integer >= 1, got {o['steps']!r}")
        # Above 1 a step overshoots the minimum of the error's own term 0.5 ||eps_j||^2.
        if not (math.isfinite(o["rate"]) and 0 < o["rate"] <= 1):
            raise UsageError(f"option pc.rate must be a number in (0, 1], got {o['rate']!r}")
        if not (math.isfinite(o["output_scale"]) and o["output_scale"] > 0):
            raise UsageError(
                f"option pc.output_scale must be a finite number > 0, got {o['output_scale']!r}"
            )

    def updates(self, net, x, y):
        o = self.opts
        trace = net.forward(x, train=True)
        self.last_loss = net.loss_fn.mean(trace.z[net.output_name], y)
        if o["fixed_prediction"]:
            relaxed = relax_fixed_prediction(
                net, trace, y, o["steps"], o["rate"], o["output_scale"]
            )
        else:
            relaxed = relax(net, trace, y, o["steps"], o["rate"], o["output_scale"])
            self._check_descent(relaxed.energy, o["output_scale"] * self.last_loss)
            self.metrics = {"energy": relaxed.energy}
        return weight_updates(net, relaxed.trace, relaxed.deltas)

    def _check_descent(self, final: Tensor, start: Tensor) -> None:
        """Stop when relaxation raised the energy instead of lowering it.

        Gradient descent on F never raises it while the rate is below 2 / (F's largest
        curvature); that curvature grows with the weights, so a rate that was stable at the
        start can stop being so later (on MNIST 784-256-256-10 ReLU, 0.2 was stable at
        initialisation and diverged after two epochs of training). A diverged relaxation gives
        meaningless updates that need not be infinite, so the loss check would not catch it.
        """
        final, start = float(final), float(start)
        if not final <= start * (1 + 1e-3) + 1e-12:  # rounding slack; also catches nan
            raise TrainingError(
                f"pc's relaxation diverged: the energy rose from {start:.4g} to {final:.4g} in "
                f"{self.opts['steps']} steps at inference rate {self.opts['rate']}; "
                "lower pc.rate"
            )

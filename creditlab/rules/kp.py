"""Kolen-Pollack learning (Akrout, Wilson, Humphreys, Lillicrap and Tweed 2019, "Deep learning
without weight transport", NeurIPS; after Kolen and Pollack 1994): feedback that learns to be
W^T.

Errors return along matrices B_jk in W_jk^T's place, as in feedback alignment (fa):
delta_j = f_j'(s_j) * sum over k in outs(j) of delta_k B_jk. But B is not fixed: it takes the
same adjustment as W's transpose, and both decay,
    Delta W_jk = -eta (z_j^T delta_k / N) - eta lambda W_jk
    Delta B_jk = -eta (z_j^T delta_k / N)^T - eta lambda B_jk,
so W_jk - B_jk^T shrinks by the factor (1 - eta lambda) at every step, whatever the gradients:
B converges to W^T and the rule to backpropagation. In Akrout et al.'s circuit each synapse
computes its own change from signals it has locally (z_j and delta_k reach both), so no
weight is transported; here the same product serves both.

Who applies the steps. A rule computes updates and the training loop's optimiser applies them,
so the rule returns dE/dW + lambda W for every weight (the decay lives in the update, so the
optimiser's step is Delta W above). B is the rule's own state: the rule steps it itself, with
an optimiser of its own, SGD at rate `kp.b_lr` with momentum `kp.b_momentum`, on
(dE/dW)^T + lambda B, right after using it for this step's errors. The rule cannot see the
training loop's rate (nor its schedule), so B's rate is an option; its defaults equal the
recommended SGD settings (lr 0.05, momentum 0.9), with which B^T and W receive identical steps
and W - B^T decays exactly as a heavy ball on lambda |W - B^T|^2 / 2. With other settings B
still follows W^T: the angle between them does not depend on B's scale, and the decay pulls
both towards the same accumulated gradient, but set kp.b_lr and kp.b_momentum to the loop's
lr and momentum for Kolen and Pollack's identical steps. Decay applies to every weight matrix
(not to biases), as the training loop's --weight-decay would; connections out of the input
group have no B (no error is sent to the input) and their W decays too.

B starts as fa's does (the same seeded draw, `scale` times the std of W's initialisation), so
for a seed kp and fa start from the same feedback. With B started at W^T and lambda = 0 the
rule takes backpropagation's steps exactly (tests/test_new_feedback_rules.py). B, its momentum
and its step count are saved in state_dict(), so a resumed run continues exactly. Works on
every kind of connection, as fa does: B has W's feedback shape (the kernel for convolutions)
and its update is the kind's own weight gradient in that shape. A stack of kp runs is not
formed (the step trains B; see FeedbackRule.feedback_before_step).

The decay: Akrout et al.'s MNIST run used none (their repository's weight_decay=1 multiplier),
leaving W - B^T at its initial value. Here the default is lambda = 3e-4, with which W - B^T
halves in about 4,600 steps at the recommended rate (an effective 0.5 per step with momentum
0.9). On MNIST 784-256-256-10 ReLU, 2 epochs, batch 32, seed 0 (test accuracy; angle of B to
W^T for W[h1->h2] and W[h2->out] at the end): lambda 1e-4 96.74% (62, 13 degrees), 3e-4 96.21%
(58, 10), 1e-3 95.29% (35, 4); bp 96.35%. A larger decay aligns B faster and costs accuracy by
shrinking W; at 3e-4 the accuracy was within one seed's noise of bp's while B turned toward W^T
(docs/rules/kp.md).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from creditlab.engine.network import Network, weight_name
from creditlab.errors import UsageError
from creditlab.optim import SGD
from creditlab.rules.base import Option
from creditlab.rules.fa import FeedbackAlignment
from creditlab.rules.machinery.feedback import (
    connection_groups,
    distribution_option,
    positive,
    scale_option,
    state_part,
)
from creditlab.rules.machinery.space import SearchSpace, optimiser_space


class KolenPollack(FeedbackAlignment):
    name = "kp"
    summary = "Kolen-Pollack: B takes W^T's update, both decay, so B converges to W^T"
    feedback_before_step = False
    recommended: ClassVar[dict[str, Any]] = {
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "output_init": "zero",  # as fa: the feedback starts unrelated to W
    }
    options: ClassVar[dict[str, Option]] = {
        "scale": scale_option(
            0.5, "std of B's initial draw as a multiple of the std of W's initialisation (> 0)"
        ),
        "distribution": distribution_option(),
        "b_lr": Option(float, 0.05, "B's SGD rate; equal to --lr for identical steps (> 0)"),
        "b_momentum": Option(float, 0.9, "B's SGD momentum; equal to --momentum (0 <= m < 1)"),
        "decay": Option(
            float, 3e-4, "weight decay lambda on every W (in its update) and on B (>= 0)"
        ),
    }
    search_space: ClassVar[SearchSpace] = {
        **optimiser_space(),
        "decay": (1e-5, 1e-2, "log"),
        "scale": (0.1, 2.0, "log"),
    }

    def __init__(self, **opts):
        super().__init__(**opts)
        self.rate = positive(self, "b_lr")
        momentum, self.decay = self.opts["b_momentum"], self.opts["decay"]
        if not (math.isfinite(momentum) and 0 <= momentum < 1):
            raise UsageError(f"option kp.b_momentum must be in [0, 1), got {momentum!r}")
        if not (math.isfinite(self.decay) and self.decay >= 0):
            raise UsageError(f"option kp.decay must be a finite number >= 0, got {self.decay!r}")
        self.opt = SGD(momentum=momentum)
        self.opt_state: dict[str, Any] | None = None  # B's optimiser state, made on first use
        self.loaded_opt: dict[str, Any] | None = None

    def updates(self, net, x, y):
        updates = super().updates(net, x, y)  # fa's sweep along the current B
        return self._learn(net, updates)

    def updates_for_signal(self, net, x, dz_out, trace=None):
        """With an error signal from outside the loss (a GAN), B learns from it as well."""
        return self._learn(net, super().updates_for_signal(net, x, dz_out, trace))

    def _learn(self, net: Network, updates: dict) -> dict:
        """Step B against (dE/dW)^T + lambda B, and add lambda W to every weight's update."""
        B = self.B.get(net)
        if self.opt_state is None:
            self.opt_state = self.opt.init(B)
            if self.loaded_opt is not None:
                check_state(self, self.loaded_opt, B)
                self.opt_state = _owned(self.loaded_opt)
                self.loaded_opt = None
        groups = connection_groups(net)
        B_updates = {}
        for key, Bk in B.items():
            i, j = groups[key]
            grad = net.kind(j).feedback_view(updates[key])  # (dE/dW)^T for dense
            B_updates[key] = grad.add(Bk, alpha=self.decay) if self.decay else grad
        self.opt.update(B, B_updates, self.opt_state, self.rate)
        if self.decay:
            for j in net.order[1:]:
                if net.kind(j).weighted:
                    for i in net.groups[j].ins:
                        key = weight_name(i, j)
                        # In place: the sweep's fresh tensors, and B has taken its step.
                        updates[key].add_(net.W[(i, j)], alpha=self.decay)
        return updates

    def state_dict(self):
        opt = self.opt_state if self.opt_state is not None else self.loaded_opt
        return {"B": self.B.state_dict(), "optimizer": _owned(opt) if opt is not None else {}}

    def load_state_dict(self, state):
        if not state:  # the state before the first step: draw B afresh, no momentum yet
            self.B.load_state_dict({})
            self.opt_state = self.loaded_opt = None
            return
        # Copies: B and its momentum are changed in place at every step, and must not write
        # into the dict they came from (a checkpoint, a probe's saved state).
        self.B.load_state_dict({k: v.clone() for k, v in state_part(self, state, "B").items()})
        opt = state_part(self, state, "optimizer")
        self.opt_state, self.loaded_opt = None, (opt or None)


def _owned(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of an optimiser state: its tensors cloned, its numbers as they are."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out[key] = {k: v.clone() for k, v in value.items()}
        else:
            out[key] = value.clone() if hasattr(value, "clone") else value
    return out


def check_state(rule: KolenPollack, opt: dict[str, Any], B: dict) -> None:
    """Refuse an optimiser state whose buffers do not match the feedback matrices."""
    buffers = opt.get("momentum", {}) if isinstance(opt, dict) else None
    if not isinstance(opt, dict) or "step" not in opt or not isinstance(buffers, dict):
        raise UsageError(f"rule {rule.name!r}: B's optimiser state is malformed")
    if rule.opt.momentum and set(buffers) != set(B):
        raise UsageError(
            f"rule {rule.name!r}: B's momentum buffers ({sorted(buffers)}) do not match the "
            f"feedback matrices ({sorted(B)})"
        )
    for key, buf in buffers.items():
        if key in B and tuple(buf.shape) != tuple(B[key].shape):
            raise UsageError(
                f"rule {rule.name!r}: B's momentum for {key} has shape {tuple(buf.shape)}, "
                f"the network needs {tuple(B[key].shape)}"
            )

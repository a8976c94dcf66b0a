"""Weight mirrors (Akrout, Wilson, Humphreys, Lillicrap and Tweed 2019, "Deep learning without
weight transport", NeurIPS): feedback trained toward W^T by noise, between learning steps.

The rule alternates two phases. In the learning phase it is feedback alignment (fa): errors
return along matrices B_jk in W_jk^T's place, delta_j = f_j'(s_j) * sum over k in outs(j) of
delta_k B_jk, and the forward weights get z_j^T delta_k / N. In the mirror phase no data and no
error are involved: group j's units fire noise xi (M examples, independent N(0, 1) entries),
group k receives y = xi W_jk through the same synapses as in the forward pass, and each
feedback synapse changes by the product of the activities at its two ends,
    B_jk <- (1 - eta) B_jk + eta (y^T xi) / M.
Since E[xi^T xi] / M = I, (y^T xi) / M = W_jk^T (xi^T xi / M)^T is an unbiased, noisy estimate of
W_jk^T, and B is its running average: B follows W^T, lagging about 1/eta steps, with a noise
that shrinks as M and 1/eta grow. In Akrout et al.'s notation (Delta B = eta_B xi y^T -
lambda_WM B, noise of std sigma) this is eta_B = eta / (M sigma^2) and lambda_WM = eta (with
sigma = 1): the decay is set so that B converges to W^T itself, not to a multiple of it, since
B's scale sets the size of the hidden errors. The mirror is linear (y = xi W, no bias, no
activation), as in the paper's analysis; Akrout et al.'s code passed the noise through the
sigmoid, whose slope only rescales the estimate.

Each call of updates() runs `mirror_steps` mirror steps on the current W (the weights the
optimiser left after the previous step) and then the learning phase with the mirrored B, so
the phases interleave one to one by default. B starts as fa's draw (the same seeded matrices,
`scale` times the std of W's initialisation) and is saved in state_dict() with the noise
generator's state, so a resumed run continues exactly. Only connections out of hidden groups
have B (the input receives no error); dense networks with one output (the mirror is the dense
product; convolutions would need their own noise images). A stack of wm runs is not formed
(the step trains B; see FeedbackRule.feedback_before_step).

Settings: Akrout et al. trained MNIST 784-500-10 sigmoid with plain SGD at 0.05 for wm (bp and
fa at 0.2; ../shared/README.md). Here the recommended optimiser is fa's (SGD 0.05, momentum
0.9, output weights starting at zero) but at lr 0.02: at 0.05 wm diverged on digits and MNIST
(784-256-256-10 relu) with B within 25 degrees of W^T (docs/rules/wm.md). eta = 0.1 and M = 64
keep B about 25 degrees from W^T there, at a small cost (two products of M x size_j x size_k
per connection and step).
"""

from __future__ import annotations

import math
import zlib
from typing import Any, ClassVar

import torch

from creditlab.engine.network import Network
from creditlab.errors import UsageError
from creditlab.rules.base import Option, Rule
from creditlab.rules.fa import FeedbackAlignment
from creditlab.rules.machinery.feedback import (
    connection_groups,
    distribution_option,
    scale_option,
    state_part,
)
from creditlab.rules.machinery.randomness import RuleGenerator
from creditlab.rules.machinery.space import SearchSpace, optimiser_space


class WeightMirror(FeedbackAlignment):
    name = "wm"
    summary = "weight mirrors: fa whose B is trained toward W^T by noise between steps"
    feedback_before_step = False
    any_kind = False  # the mirror phase is written for dense connections
    recommended: ClassVar[dict[str, Any]] = {
        "optimizer": "sgd",
        "lr": 0.02,  # 0.05 diverged on digits and MNIST (docs/rules/wm.md)
        "momentum": 0.9,
        "output_init": "zero",  # as fa: the feedback starts unrelated to W
    }
    options: ClassVar[dict[str, Option]] = {
        "scale": scale_option(
            0.5, "std of B's initial draw as a multiple of the std of W's initialisation (> 0)"
        ),
        "distribution": distribution_option(),
        "mirror_lr": Option(
            float, 0.1, "eta: the part of B replaced by each mirror step's estimate (0 < eta <= 1)"
        ),
        "mirror_batch": Option(int, 64, "M: noise examples per mirror step (>= 1)"),
        "mirror_steps": Option(int, 1, "mirror steps before each learning step (>= 0)"),
    }
    search_space: ClassVar[SearchSpace] = {
        **optimiser_space(),
        "mirror_lr": (0.01, 1.0, "log"),
        "mirror_batch": (8, 512, "log"),
        "scale": (0.1, 2.0, "log"),
    }

    def __init__(self, **opts):
        super().__init__(**opts)
        eta, batch, steps = (self.opts[k] for k in ("mirror_lr", "mirror_batch", "mirror_steps"))
        if not (math.isfinite(eta) and 0 < eta <= 1):
            raise UsageError(f"option wm.mirror_lr must be in (0, 1], got {eta!r}")
        if batch < 1:
            raise UsageError(f"option wm.mirror_batch must be at least 1, got {batch!r}")
        if steps < 0:
            raise UsageError(f"option wm.mirror_steps must be 0 or more, got {steps!r}")
        self.rng = RuleGenerator(offset=zlib.crc32(b"wm/mirror"))

    def check(self, net):
        Rule.check(self, net)  # dense groups, one output

    def mirror(self, net: Network) -> None:
        """One mirror step on every feedback matrix: B <- (1 - eta) B + eta (y^T xi) / M,
        y = xi W, with fresh noise xi for each connection."""
        eta, M = self.opts["mirror_lr"], self.opts["mirror_batch"]
        generator = self.rng.get(net)
        groups = connection_groups(net)
        for key, B in self.B.get(net).items():  # in net.order: the draws are reproducible
            i, j = groups[key]
            W = net.W[(i, j)]  # (size_i, size_j)
            xi = torch.randn(M, W.shape[0], generator=generator, dtype=net.dtype, device=net.device)
            y = xi @ W  # what group j receives from noise in group i
            B.mul_(1 - eta).addmm_(y.t(), xi, alpha=eta / M)

    def updates(self, net, x, y):
        for _ in range(self.opts["mirror_steps"]):
            self.mirror(net)
        return super().updates(net, x, y)  # fa's learning phase with the mirrored B

    def updates_for_signal(self, net, x, dz_out, trace=None):
        for _ in range(self.opts["mirror_steps"]):
            self.mirror(net)
        return super().updates_for_signal(net, x, dz_out, trace)

    def state_dict(self):
        rng = self.rng.state()
        return {"B": self.B.state_dict(), "rng": rng.clone() if rng is not None else None}

    def load_state_dict(self, state):
        if not state:  # the state before the first step
            self.B.load_state_dict({})
            self.rng = RuleGenerator(offset=self.rng.offset)
            return
        # A copy: B changes in place at every mirror step and must not write into the dict it
        # came from (a checkpoint, a probe's saved state).
        self.B.load_state_dict({k: v.clone() for k, v in state_part(self, state, "B").items()})
        rng = state_part(self, state, "rng")
        self.rng = RuleGenerator(offset=self.rng.offset)
        self.rng.load(rng)

"""Uniform sign-concordant feedback, uSF (Liao, Leibo and Poggio 2016).

Errors return along B_jk = c sign(W_jk)^T: the signs of the current forward weights, one
magnitude for all. c is set at every step so that ||B_jk||_F = scale ||W_jk||_F (c is the
root mean square of W_jk's nonzero entries), keeping the feedback on W^T's scale; see
creditlab.rules.machinery.feedback.SignConcordant.
"""

from __future__ import annotations

from typing import Any, ClassVar

from creditlab.rules.base import Option
from creditlab.rules.machinery.feedback import FeedbackRule, SignConcordant, positive, scale_option
from creditlab.rules.machinery.signals import input_connections, lookup
from creditlab.rules.machinery.space import SearchSpace, optimiser_space


class UniformSignFeedback(FeedbackRule):
    name = "usf"
    summary = "uniform sign-concordant feedback: errors return along sign(W)^T, W's norm"
    not_compiled = None  # the sweep of bp and fa, with sign-concordant feedback
    recommended: ClassVar[dict[str, Any]] = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9}
    options: ClassVar[dict[str, Option]] = {"scale": scale_option(1.0)}
    search_space: ClassVar[SearchSpace] = {**optimiser_space(), "scale": (0.25, 4.0, "log")}

    def __init__(self, **opts):
        super().__init__(**opts)
        self.signed = SignConcordant(positive(self, "scale"))

    def step_feedback(self, net):
        return self.signed(net, None)

    def input_feedback(self, net):
        return lookup(self.signed(net, None, input_connections(net)))

    def feedback_matrices(self, net):
        return {k: B.clone() for k, B in self.signed(net, None).items()}

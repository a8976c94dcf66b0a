"""Fixed random-magnitude sign-concordant feedback, frSF (Liao, Leibo and Poggio 2016).

Errors return along B_jk = c M_jk o sign(W_jk)^T: magnitudes M_jk drawn once, uniform on
[0, 1) (seeded, saved in checkpoints), with the signs of the current forward weights. c is set
at every step so that ||B_jk||_F = scale ||W_jk||_F; see
creditlab.rules.machinery.feedback.SignConcordant.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from creditlab.engine.network import Network, weight_name
from creditlab.rules.base import Option
from creditlab.rules.machinery.feedback import (
    FeedbackRule,
    FixedMatrices,
    SignConcordant,
    connection_shapes,
    positive,
    scale_option,
    seed_for,
    state_part,
    transposed_shape,
)
from creditlab.rules.machinery.signals import InputMatrices, input_connections, lookup
from creditlab.rules.machinery.space import SearchSpace, optimiser_space


class FixedRandomSignFeedback(FeedbackRule):
    name = "frsf"
    summary = "sign-concordant feedback: sign(W)^T times magnitudes drawn once"
    not_compiled = None  # the sweep of bp and fa, with fixed sign-concordant feedback
    recommended: ClassVar[dict[str, Any]] = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9}
    options: ClassVar[dict[str, Option]] = {"scale": scale_option(1.0)}
    search_space: ClassVar[SearchSpace] = {**optimiser_space(), "scale": (0.25, 4.0, "log")}

    def __init__(self, **opts):
        super().__init__(**opts)
        self.signed = SignConcordant(positive(self, "scale"))
        self.M = FixedMatrices(self.name, connection_shapes, self._draw)
        # Magnitudes for the connections out of the input, for a signal sent to the input.
        self.M_input = InputMatrices(
            lambda net, i, k: self._draw(net, weight_name(i, k), transposed_shape(net, i, k))
        )

    @staticmethod
    def _draw(net: Network, key: str, shape: tuple[int, int]) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed_for(net, "frsf", key))
        return torch.rand(shape, generator=generator, dtype=torch.float64).to(net.device, net.dtype)

    def step_feedback(self, net):
        return self.signed(net, self.M.get(net))

    def input_feedback(self, net):
        return lookup(self.signed(net, self.M_input.get(net), input_connections(net)))

    def feedback_matrices(self, net):
        return {k: B.clone() for k, B in self.step_feedback(net).items()}

    def state_dict(self):
        return {"M": self.M.state_dict()}

    def load_state_dict(self, state):
        self.M.load_state_dict(state_part(self, state, "M") if state else {})

"""Batchwise random-magnitude sign-concordant feedback, brSF (Liao, Leibo and Poggio 2016).

Errors return along B_jk = c M_jk o sign(W_jk)^T, with fresh magnitudes M_jk, uniform on
[0, 1), for every batch and the signs of the current forward weights. c is set at every step so
that ||B_jk||_F = scale ||W_jk||_F; see creditlab.rules.machinery.feedback.SignConcordant. The
magnitudes come
from the rule's own generator on the network's device, seeded by the network's seed; its state
is saved, so a resumed run draws the same magnitudes.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from creditlab.engine.network import Network, weight_name
from creditlab.rules.base import Option
from creditlab.rules.machinery.feedback import (
    FeedbackRule,
    SignConcordant,
    connection_shapes,
    positive,
    scale_option,
    seed_for,
    state_part,
    transposed_shape,
)
from creditlab.rules.machinery.signals import input_connections, lookup
from creditlab.rules.machinery.space import SearchSpace, optimiser_space


class BatchRandomSignFeedback(FeedbackRule):
    name = "brsf"
    summary = "sign-concordant feedback: sign(W)^T times magnitudes redrawn every batch"
    not_compiled = "it draws fresh feedback magnitudes from its own generator every step"
    recommended: ClassVar[dict[str, Any]] = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9}
    options: ClassVar[dict[str, Option]] = {"scale": scale_option(1.0)}
    search_space: ClassVar[SearchSpace] = {**optimiser_space(), "scale": (0.25, 4.0, "log")}

    def __init__(self, **opts):
        super().__init__(**opts)
        self.signed = SignConcordant(positive(self, "scale"))
        self.rng: torch.Generator | None = None
        self.net: Network | None = None  # the network the generator and buffers belong to
        self.M: dict[str, torch.Tensor] = {}  # this batch's magnitudes, drawn in place
        self.drawn = False  # whether M holds a draw yet
        self.loaded_state: torch.Tensor | None = None

    def _bind(self, net: Network) -> None:
        self.rng = torch.Generator(device=net.device).manual_seed(seed_for(net, "brsf", "M"))
        if self.loaded_state is not None:
            self.rng.set_state(self.loaded_state.cpu())
            self.loaded_state = None
        self.M = {
            k: torch.empty(shape, dtype=net.dtype, device=net.device)
            for k, shape in connection_shapes(net).items()
        }
        self.net, self.drawn = net, False

    def _draw(self, rng: torch.Generator) -> dict[str, torch.Tensor]:
        for M in self.M.values():  # in net.order, so the draws are reproducible
            M.uniform_(0.0, 1.0, generator=rng)
        return self.M

    def step_feedback(self, net):
        if net is not self.net:
            self._bind(net)
        self.drawn = True
        return self.signed(net, self._draw(self.rng))

    def input_feedback(self, net):
        """Magnitudes for the connections out of the input, drawn afresh from the rule's
        generator for every signal (after the batch's other magnitudes)."""
        if net is not self.net:
            self._bind(net)
        magnitudes = {
            weight_name(i, k): torch.rand(
                transposed_shape(net, i, k),
                generator=self.rng,
                dtype=net.dtype,
                device=net.device,
            )
            for i, k in input_connections(net)
        }
        return lookup(self.signed(net, magnitudes, input_connections(net)))

    def feedback_matrices(self, net):
        """The last batch's magnitudes with W's current signs; before the first batch, the
        first batch's magnitudes, drawn from a copy of the generator so training is unchanged."""
        if net is not self.net:
            self._bind(net)
        if not self.drawn:
            preview = torch.Generator(device=net.device)
            preview.set_state(self.rng.get_state())
            self._draw(preview)
        return {k: B.clone() for k, B in self.signed(net, self.M).items()}

    def state_dict(self):
        if self.rng is None:
            return {} if self.loaded_state is None else {"rng": self.loaded_state.clone()}
        return {"rng": self.rng.get_state()}

    def load_state_dict(self, state):
        # An empty state is the state before the first batch: the generator starts afresh.
        self.loaded_state = state_part(self, state, "rng") if state else None
        self.rng, self.net = None, None  # bind again on the next use

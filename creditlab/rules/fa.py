"""Feedback alignment (Lillicrap et al. 2016): errors return along fixed random matrices.

The error signal is carried back through a fixed random matrix B_jk in place of W_jk^T:
delta_j = f_j'(s_j) * sum over k in outs(j) of delta_k B_jk. B is drawn once (seeded by the
network's seed, saved in checkpoints) and never trained; the forward weights come to align with
it.

The scale: B_jk's entries have `scale` times the standard deviation of W_jk's own
initialisation (Glorot or He, see Network.init_std), so the errors reaching each
group keep a fixed proportion to backpropagation's at the start and neither vanish nor explode
with depth. The default is half: before B and the forward weights align, the hidden updates
are not descent directions, and large ones inflate the hidden activity on which the output
layer's exact step acts (at scale 1 the default SGD was unstable on MNIST).

The rule recommends output_init "zero" (training/output_init.py; `--output-init random`
restores the drawn start): feedback alignment needs the output layer's weights to come to
agree with B, which random initial weights unrelated to B hinder on conv nets.

The measurements behind both choices are in docs/results/rule-notes.md.
"""

from __future__ import annotations

from typing import Any, ClassVar

from creditlab.engine.network import Network, weight_name
from creditlab.rules.base import Option
from creditlab.rules.machinery.feedback import (
    FeedbackRule,
    FixedMatrices,
    connection_groups,
    connection_shapes,
    distribution_option,
    positive,
    random_matrix,
    scale_option,
    seed_for,
    state_part,
    transposed_shape,
)
from creditlab.rules.machinery.signals import InputMatrices, lookup
from creditlab.rules.machinery.space import SearchSpace, optimiser_space


class FeedbackAlignment(FeedbackRule):
    name = "fa"
    summary = "feedback alignment: errors return along fixed random matrices B in W^T's place"
    not_compiled = None  # checked against eager in tests/test_compile.py
    recommended: ClassVar[dict[str, Any]] = {
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "output_init": "zero",  # see training/output_init.py
    }
    # On LeNet, SGD at 0.05 diverges in the first epoch (MNIST); Adam learns. Found by
    # `creditlab tune` (6 trials, 2 epochs of 2,000 MNIST images; best: fa-000, lr
    # 0.00223, validation accuracy 0.821); the search: docs/results/defaults.md.
    recommended_for: ClassVar[dict[str, dict[str, Any]]] = {
        "conv": {"optimizer": "adam", "lr": 0.002},
    }
    options: ClassVar[dict[str, Option]] = {
        "scale": scale_option(0.5, "std of B as a multiple of the std of W's initialisation (> 0)"),
        "distribution": distribution_option(),
    }
    search_space: ClassVar[SearchSpace] = {
        **optimiser_space(),
        "scale": (0.1, 2.0, "log"),
        "distribution": ["uniform", "normal"],
    }

    def __init__(self, **opts):
        super().__init__(**opts)
        self.scale = positive(self, "scale")
        self.B = FixedMatrices(self.name, connection_shapes, self._draw)
        self.B_input = InputMatrices(self._draw_input)  # only for a signal sent to the input

    def _draw(self, net: Network, key: str, shape: tuple[int, int]):
        _, j = connection_groups(net)[key]  # B_ij stands in for W_ij^T
        std = self.scale * net.init_std(j)
        return random_matrix(net, shape, std, self.opts["distribution"], seed_for(net, "fa", key))

    def _draw_input(self, net: Network, i: str, k: str):
        """B for the connection (input i, k), drawn as every other B (used for a signal only)."""
        std = self.scale * net.init_std(k)
        shape = transposed_shape(net, i, k)  # (size_k, size_i) for dense, else the kernel's
        seed = seed_for(net, "fa", weight_name(i, k))
        return random_matrix(net, shape, std, self.opts["distribution"], seed)

    def step_feedback(self, net):
        return self.B.get(net)

    def input_feedback(self, net):
        return lookup(self.B_input.get(net))

    def feedback_matrices(self, net):
        return {k: B.clone() for k, B in self.B.get(net).items()}

    def state_dict(self):
        return {"B": self.B.state_dict()}

    def load_state_dict(self, state):
        self.B.load_state_dict(state_part(self, state, "B") if state else {})

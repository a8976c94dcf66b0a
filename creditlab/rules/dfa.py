"""Direct feedback alignment (Nokland 2016): every hidden group hears the output error directly.

With e = delta_o = dE/ds_o, every hidden group j (any group but the input and the output, in a
DAG too) gets delta_j = f_j'(s_j) * (e B_j) through one fixed random B_j of shape
(size_o, size_j); the output layer keeps its exact gradient. A group of any shape (an image,
capsules) hears e through its flattened size, and its kind turns delta_j into its parameters'
gradient; groups without parameters (pooling, masks) need no signal. With several outputs, e is
every output's delta side by side (size_o the sum of their sizes), and each output keeps the
exact gradient of its own loss. The matrices are sized before they are drawn, and a network for
which they would not fit in memory is refused. No error travels group to group,
so there is no sequential sweep: all the B_j sit side by side in one (size_o, sum of hidden
sizes) matrix, and one matrix product gives every group's signal at once.

The scale: B_j's entries have `scale` times the standard deviation of the output group's
initial weights (Glorot or He, see Network.init_std), so that with scale 1 e B_j has
the size, at the start, of the signal backpropagation delivers to a group just below the
output. The default is half, as for fa and for the same reason (at scale 1 the default SGD
was unstable on MNIST). The B_j are drawn once, seeded by the network's seed, and kept in
state_dict()["B"] under the group names. They do not stand in W^T's place, so
feedback_matrices() is empty: the diagnostics' angle to W^T does not apply.

As fa, the rule recommends output_init "zero" (training/output_init.py; `--output-init
random` restores the drawn start): the output layer's weights must come to agree with B.

The measurements behind both choices are in docs/results/rule-notes.md.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from creditlab.engine.backward import local_delta, output_deltas, weight_updates
from creditlab.engine.network import Network
from creditlab.rules.base import Option, Rule
from creditlab.rules.machinery.feedback import (
    FixedMatrices,
    check_fits,
    distribution_option,
    positive,
    random_matrix,
    scale_option,
    seed_for,
    state_part,
)
from creditlab.rules.machinery.space import SearchSpace, optimiser_space
from creditlab.rules.machinery.stacking import StackedRule


class DirectFeedbackAlignment(Rule):
    name = "dfa"
    summary = "direct feedback alignment: the output error reaches each hidden group via fixed B_j"
    not_compiled = None  # checked against eager in tests/test_compile.py
    any_kind = True
    recommended: ClassVar[dict[str, Any]] = {
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "output_init": "zero",  # see training/output_init.py
    }
    # On LeNet, SGD at 0.05 diverges in the first epoch (MNIST); Adam learns. Found by
    # `creditlab tune` (6 trials, 2 epochs of 2,000 MNIST images; best: dfa-003, lr
    # 0.00123, validation accuracy 0.801); the search: docs/results/defaults.md.
    recommended_for: ClassVar[dict[str, dict[str, Any]]] = {
        "conv": {"optimizer": "adam", "lr": 0.001},
    }
    options: ClassVar[dict[str, Option]] = {
        "scale": scale_option(
            0.5, "std of B_j as a multiple of the output group's initial weights' std (> 0)"
        ),
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
        self.B = FixedMatrices(self.name, self._shapes, self._draw)
        self._joined: tuple[dict, torch.Tensor | None, list[int]] | None = None
        self._B_input: tuple[Network, torch.Tensor] | None = None

    @staticmethod
    def _targets(net: Network) -> list[str]:
        """The hidden groups that hear the output error: those with parameters."""
        return [j for j in net.hidden if net.kind(j).weighted]

    @staticmethod
    def _shapes(net: Network) -> dict[str, tuple[int, int]]:
        size_o = sum(net.groups[o.name].size for o in net.outputs)
        return {j: (size_o, net.groups[j].size) for j in DirectFeedbackAlignment._targets(net)}

    def check(self, net):
        if self.B.matrices is None and self.B.loaded is None:
            shapes = self._shapes(net)
            entries = sum(a * b for a, b in shapes.values())
            check_fits(self.name, "its fixed matrices B_j", entries, net)

    def _draw(self, net: Network, j: str, shape: tuple[int, int]) -> torch.Tensor:
        std = self.scale * net.init_std(net.output_name)
        return random_matrix(net, shape, std, self.opts["distribution"], seed_for(net, "dfa", j))

    # A stack's template (GivenDirectFeedback below) is handed its members' joined matrices,
    # stacked, in place of its own; None: the rule's own.
    given: tuple[torch.Tensor | None, list[int]] | None = None

    @classmethod
    def stacked_form(cls, rules, nets):
        return GivenDirectFeedback(rules, nets)

    def joined_feedback(self, net: Network) -> tuple[torch.Tensor | None, list[int]]:
        """[B_j for every hidden j] as one matrix, joined once per binding, and the sizes
        (a stack hands its members' joined matrices to the sweep in `given`)."""
        if self.given is not None:
            return self.given
        if net is not self.B.net:
            self.check(net)  # sized before drawn
        matrices = self.B.get(net)
        if self._joined is None or self._joined[0] is not matrices:
            targets = self._targets(net)
            parts = [matrices[j] for j in targets]
            B_all = torch.cat(parts, dim=1) if parts else None  # None: no hidden group
            self._joined = (matrices, B_all, [net.groups[j].size for j in targets])
        return self._joined[1], self._joined[2]

    def updates(self, net, x, y):
        trace = net.forward(x, train=True, labels=y)
        self.last_loss = net.total_loss(trace, y)
        deltas = self._hidden_deltas(net, trace, output_deltas(net, trace, y))
        return weight_updates(net, trace, deltas)

    def signal_deltas(self, net, trace, delta_o):
        return self._hidden_deltas(net, trace, {net.output_name: delta_o})

    def _hidden_deltas(self, net, trace, deltas):
        """Add delta_j = f'(s_j) * (e B_j) for every hidden j with parameters to the output
        deltas e (several outputs' deltas side by side), all groups in one product."""
        B_all, sizes = self.joined_feedback(net)
        if sizes:
            e = (
                torch.cat(list(deltas.values()), dim=1)
                if len(deltas) > 1
                else next(iter(deltas.values()))
            )
            signals = (e @ B_all).split(sizes, dim=1)  # e B_j for every hidden j, one product
            for j, signal in zip(self._targets(net), signals, strict=True):
                deltas[j] = local_delta(net, trace, j, signal)
        return deltas

    def signal_at_input(self, net, trace, deltas):
        """The output error straight to the input through one more fixed B, of shape
        (size_o, size_input), drawn as the B_j are (used for a signal sent to the input)."""
        if self._B_input is None or self._B_input[0] is not net:
            std = self.scale * net.init_std(net.output_name)
            shape = (net.output_size, net.input_size)
            seed = seed_for(net, "dfa", net.input_name)
            B = random_matrix(net, shape, std, self.opts["distribution"], seed)
            self._B_input = (net, B)
        return deltas[net.output_name] @ self._B_input[1]

    def state_dict(self):
        return {"B": self.B.state_dict()}

    def load_state_dict(self, state):
        self.B.load_state_dict(state_part(self, state, "B") if state else {})


class GivenDirectFeedback(StackedRule):
    """dfa stacked: each member's fixed B_j, joined into one matrix as dfa joins them, are
    stacked outside vmap and handed to the template's sweep, as fa's stack hands fa its B.
    They never change during training, so they are stacked again only when a member's
    matrices were replaced (a restored state). Nothing is carried from step to step."""

    def __init__(self, rules, nets):
        super().__init__(rules, nets)
        self._cache: tuple[tuple, torch.Tensor | None, list[int]] | None = None

    def extra(self, nets):
        joined = [r.joined_feedback(n) for r, n in zip(self.rules, nets, strict=True)]
        key = tuple((id(B), B._version) for B, _ in joined if B is not None)
        if self._cache is None or self._cache[0] != key:
            B_all = None if joined[0][0] is None else torch.stack([B for B, _ in joined])
            self._cache = (key, B_all, joined[0][1])
        return self._cache[1]

    def run(self, net, x, y, extra, state):
        self.template.given = (extra, self._cache[2])
        try:
            return self.template.updates(net, x, y), state
        finally:
            self.template.given = None  # batched values must not outlive vmap

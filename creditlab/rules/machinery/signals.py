"""Error signals from outside the loss, for the rules that carry errors down the graph.

A GAN's discriminator passes dE/dx back to the generator, whose output group takes it as its
dE/dz (see Rule.signal_deltas in rules/base.py). For the rules of the backward sweep the
signal travels as their own errors do: delta_j = f_j'(s_j) * sum over k in outs(j) of
delta_k F_jk, with F_jk = W_jk^T for bp and a matrix in its place for fa, usf, brsf and frsf.
At the input, dE/dx = sum over k in outs(input) of delta_k F_input,k.

Training never carries a signal into the input, so these rules keep no feedback for the
connections out of the input group; here they get one, of the same kind: a fixed random B
(fa), the signs of W with unit, redrawn or fixed magnitudes (usf, brsf, frsf). Fixed matrices
are drawn from the network's seed whenever a network is first seen, never saved: a resumed run
draws the same ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from creditlab.engine.backward import Feedback, backward_sweep, input_signal
from creditlab.engine.network import Network, Trace, weight_name

Tensor = torch.Tensor


def input_connections(net: Network) -> list[tuple[str, str]]:
    """The connections (input, k) out of the input group."""
    return [(net.input_name, k) for k in net.outs(net.input_name)]


def lookup(matrices: dict[str, Tensor]) -> Feedback:
    """A Feedback reading matrices named by weight name."""
    return lambda i, j: matrices[weight_name(i, j)]


class SweepSignals:
    """signal_deltas and signal_at_input for rules whose errors travel down the graph.

    Mixed into a Rule that gives `signal_feedback(net)` (for connections out of hidden groups,
    the matrices its training sweep uses) and `input_feedback(net)` (for those out of the
    input group). Both are asked once per signal, so rules that redraw feedback per batch
    (brsf) draw once per signal, as they do once per training batch.
    """

    def signal_feedback(self, net: Network) -> Feedback:
        raise NotImplementedError

    def input_feedback(self, net: Network) -> Feedback:
        raise NotImplementedError

    def signal_deltas(self, net: Network, trace: Trace, delta_o: Tensor) -> dict[str, Tensor]:
        feedback = self.signal_feedback(net)
        return backward_sweep(net, trace, {net.output_name: delta_o}, feedback=feedback)

    def signal_at_input(self, net: Network, trace: Trace, deltas: dict[str, Tensor]) -> Tensor:
        return input_signal(net, deltas, self.input_feedback(net), trace)


class InputMatrices:
    """Fixed matrices for the connections out of the input group, drawn once per network.

    `draw(net, i, k)` gives the tensor for the connection (i, k), shaped like
    net.feedback_view(input, k) ((size_k, size_input) for dense, the kernel for conv); it must
    be a function of the network's seed and sizes alone (so nothing needs saving).
    """

    def __init__(self, draw: Callable[[Network, str, str], Tensor]):
        self.draw = draw
        self.net: Network | None = None
        self.matrices: dict[str, Tensor] = {}

    def get(self, net: Network) -> dict[str, Tensor]:
        if net is not self.net:
            self.matrices = {
                weight_name(i, k): self.draw(net, i, k) for i, k in input_connections(net)
            }
            self.net = net
        return self.matrices

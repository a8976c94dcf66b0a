"""Backpropagation: the exact gradient of the mean batch loss, by the backward sweep."""

from __future__ import annotations

from creditlab.engine.backward import (
    backward_sweep,
    output_delta,
    transpose_feedback,
    weight_updates,
)
from creditlab.rules.base import Rule
from creditlab.rules.machinery.signals import SweepSignals


class Backprop(SweepSignals, Rule):
    name = "bp"
    summary = "backpropagation: errors return along W^T, the exact gradient"

    def updates(self, net, x, y):
        trace = net.forward(x, train=True)
        self.last_loss = net.loss_fn.mean(trace.z[net.output_name], y)
        deltas = backward_sweep(net, trace, {net.output_name: output_delta(net, trace, y)})
        return weight_updates(net, trace, deltas)

    def signal_feedback(self, net):
        return transpose_feedback(net)

    def input_feedback(self, net):
        return transpose_feedback(net)

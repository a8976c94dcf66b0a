"""Backpropagation: the exact gradient of the mean batch loss, by the backward sweep."""

from __future__ import annotations

from typing import Any, ClassVar

from creditlab.engine.backward import backward_sweep, output_delta, weight_updates
from creditlab.rules.base import Rule


class Backprop(Rule):
    name = "bp"
    summary = "backpropagation: errors return along W^T, the exact gradient"
    recommended: ClassVar[dict[str, Any]] = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9}

    def updates(self, net, x, y):
        trace = net.forward(x, train=True)
        self.last_loss = net.loss_fn.mean(trace.z[net.output_name], y)
        deltas = backward_sweep(net, trace, {net.output_name: output_delta(net, trace, y)})
        return weight_updates(net, trace, deltas)

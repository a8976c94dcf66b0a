"""Backpropagation: the exact gradient of the mean batch loss, by the backward sweep."""

from __future__ import annotations

from typing import Any, ClassVar

from creditlab.engine.backward import error_sweep, transpose_feedback, weight_updates
from creditlab.rules.base import Rule
from creditlab.rules.machinery.signals import SweepSignals
from creditlab.rules.machinery.space import SearchSpace, optimiser_space
from creditlab.rules.machinery.stacking import Stateless


class Backprop(SweepSignals, Rule):
    name = "bp"
    summary = "backpropagation: errors return along W^T, the exact gradient"
    any_kind = True
    not_compiled = None  # checked against eager in tests/test_compile.py
    recommended: ClassVar[dict[str, Any]] = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9}
    search_space: ClassVar[SearchSpace] = optimiser_space()

    @classmethod
    def stacked_form(cls, rules, nets):
        return Stateless(rules, nets)  # the step is a function of parameters and batch

    def updates(self, net, x, y):
        trace = net.forward(x, train=True, labels=y)
        self.last_loss = net.total_loss(trace, y)
        return weight_updates(net, trace, error_sweep(net, trace, y))

    def signal_feedback(self, net):
        return transpose_feedback(net)

    def input_feedback(self, net):
        return transpose_feedback(net)

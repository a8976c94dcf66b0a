"""The residual addition: s_j = sum over i in ins(j) of z_i, through identity connections.

Every group it reads has the same number of units (a residual block's branch and its
shortcut); the group keeps their shape. No weights and no bias: each group read receives
delta_j itself, exactly, whatever the rule. With one input it is an identity connection,
which gives an activation or dropout a group of its own (the converter uses it where an
activation cannot join the group before it).
"""

from __future__ import annotations

from typing import ClassVar

from creditlab.engine.kinds.base import Kind
from creditlab.engine.kinds.batch_norm import RESIDUAL_GRAPH
from creditlab.errors import GraphError


class Add(Kind):
    name = "add"
    weighted = False
    biased = False
    many_inputs = True
    exact = True
    options: ClassVar[dict] = {}
    random_graph = RESIDUAL_GRAPH

    def reference(self, net, group, inputs, W, b, labels):
        return sum(inputs)

    def shape(self, net, group):
        shapes = [net.groups[i].shape for i in group.ins]
        sizes = {net.groups[i].size for i in group.ins}
        if len(sizes) != 1:
            listed = ", ".join(f"{i!r} {net.groups[i].shape}" for i in group.ins)
            raise GraphError(
                f"the addition {group.name!r} reads groups of different sizes: {listed}; "
                "a residual addition needs groups of the same shape"
            )
        # Groups of one size but different shapes (an image and its flattened copy) add as
        # vectors.
        return shapes[0] if all(s == shapes[0] for s in shapes) else (sizes.pop(),)

    def fans(self, net, group):
        return 1, 1

    def forward(self, net, group, trace, inputs):
        s = inputs[0].clone() if len(inputs) == 1 else inputs[0] + inputs[1]
        for z in inputs[2:]:
            s.add_(z)
        return s

    def signal(self, net, trace, i, group, delta, F, out=None):
        # A copy: the sweep adds further signals into what it is given.
        return delta.clone() if out is None else out.add_(delta)

"""The capsule mask: keeps one capsule's vector and zeroes the others.

While training (a forward pass given the labels) it keeps the capsule of the label; in
evaluation, the longest capsule (the network's prediction). No parameters; the signal passes
back through the kept capsule only. The choice itself is piecewise constant, so it carries no
gradient.
"""

from __future__ import annotations

import torch

from creditlab.engine.kinds.base import Kind, accumulate, capsules_of
from creditlab.engine.kinds.capsules import CAPSULE_GRAPH


class Mask(Kind):
    name = "mask"
    weighted = False
    biased = False
    options = {}
    random_graph = CAPSULE_GRAPH  # its decoder reads the mask

    def reference(self, net, group, inputs, W, b, labels):
        (i,) = group.ins
        u = inputs[0].view(-1, *net.groups[i].shape)
        keep = torch.nn.functional.one_hot(labels, u.shape[1]).to(u.dtype)  # as while training
        return u * keep.unsqueeze(2)

    def shape(self, net, group):
        (i,) = group.ins
        return capsules_of(net, i, group)

    def fans(self, net, group):
        return 1, 1

    def forward(self, net, group, trace, inputs):
        (i,) = group.ins
        v = inputs[0].reshape(-1, *net.groups[i].shape)
        labels = trace.labels
        if labels is None:
            chosen = v.pow(2).sum(dim=2).argmax(dim=1)  # the longest capsule
        else:
            chosen = labels if labels.dim() == 1 else labels.argmax(dim=1)
        keep = torch.nn.functional.one_hot(chosen, v.shape[1]).to(v.dtype)
        trace.cache[group.name] = keep
        return (v * keep.unsqueeze(2)).reshape(v.shape[0], -1)

    def tangent(self, net, group, trace, inputs, dinputs, dW, db):
        if dinputs[0] is None:  # the choice of capsule is piecewise constant: no tangent
            return None
        keep = trace.cache[group.name]
        n, caps = keep.shape
        return (dinputs[0].reshape(n, caps, -1) * keep.unsqueeze(2)).reshape(n, -1)

    def signal(self, net, trace, i, group, delta, F, out=None):
        keep = trace.cache[group.name]
        n, caps = keep.shape
        back = delta.reshape(n, caps, -1) * keep.unsqueeze(2)
        return accumulate(out, back.reshape(delta.shape))

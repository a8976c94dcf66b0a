"""Global average pooling, as torch.nn.AdaptiveAvgPool2d(1): each channel of an image
(C, H, W) averaged over its positions, giving (C, 1, 1) (stored flat, (N, C), as everything).

No parameters; the signal back spreads each channel's delta evenly over its H * W positions,
exactly, whatever the rule.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F

from creditlab.engine.kinds.base import Kind, accumulate, image_of
from creditlab.engine.kinds.batch_norm import RESIDUAL_GRAPH


class GlobalPool(Kind):
    name = "global_pool"
    weighted = False
    biased = False
    exact = True
    options: ClassVar[dict] = {}
    random_graph = RESIDUAL_GRAPH

    def reference(self, net, group, inputs, W, b, labels):
        (i,) = group.ins
        return F.adaptive_avg_pool2d(inputs[0].view(-1, *net.groups[i].shape), 1)

    def shape(self, net, group):
        (i,) = group.ins
        c, _, _ = image_of(net, i, group)
        return (c, 1, 1)

    def fans(self, net, group):
        return 1, 1

    def forward(self, net, group, trace, inputs):
        (i,) = group.ins
        c = net.groups[i].shape[0]
        return inputs[0].reshape(inputs[0].shape[0], c, -1).mean(dim=2)

    def signal(self, net, trace, i, group, delta, F, out=None):
        _, h, w = net.groups[i].shape
        # Channel c's delta over its h * w positions (flat, channel-major), a fresh tensor.
        back = (delta * (1.0 / (h * w))).repeat_interleave(h * w, dim=1)
        return accumulate(out, back)

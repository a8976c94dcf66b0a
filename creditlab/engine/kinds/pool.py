"""Pooling: max or average over k x k windows of each channel, moved by a stride (default k).

No parameters. Max pooling sends each window's signal to the unit that won it (the indices are
recorded by the forward pass); average pooling spreads it evenly over the window. Both are
exact: a rule has nothing to put in their place.
"""

from __future__ import annotations

import torch.nn.functional as F

from creditlab.engine.kinds.base import Kind, KindOption, accumulate, image_of, out_size
from creditlab.engine.kinds.conv import CONV_GRAPH

POOL_MODES = ("max", "avg")


class Pool(Kind):
    name = "pool"
    weighted = False
    biased = False
    options = {
        "kernel": KindOption(int, 2, minimum=1, help="window height and width"),
        "stride": KindOption(int, lambda o: o["kernel"], minimum=1, help="default: the kernel"),
        "mode": KindOption(str, "max", choices=POOL_MODES, label="pooling"),
    }
    random_graph = CONV_GRAPH  # drawn after most convolutions there, max or average

    def reference(self, net, group, inputs, W, b, labels):
        (i,) = group.ins
        u = inputs[0].view(-1, *net.groups[i].shape)
        o = group.options
        pool = F.max_pool2d if o["mode"] == "max" else F.avg_pool2d
        return pool(u, o["kernel"], o["stride"])

    def shape(self, net, group):
        (i,) = group.ins
        c, h, w = image_of(net, i, group)
        k, stride = group.options["kernel"], group.options["stride"]
        return (
            c,
            out_size(h, k, stride, 0, group.name, "height"),
            out_size(w, k, stride, 0, group.name, "width"),
        )

    def fans(self, net, group):
        return 1, 1

    def forward(self, net, group, trace, inputs):
        (i,) = group.ins
        x = inputs[0].reshape(-1, *net.groups[i].shape)
        k, stride = group.options["kernel"], group.options["stride"]
        if group.options["mode"] == "max":
            s, where = F.max_pool2d(x, k, stride, return_indices=True)
            trace.cache[group.name] = where  # flat index of each window's winner in its channel
        else:
            s = F.avg_pool2d(x, k, stride)
        return s.reshape(x.shape[0], -1)

    def tangent(self, net, group, trace, inputs, dinputs, dW, db):
        # Linear in the input once the windows' winners are fixed: the recorded selection.
        (i,), dx = group.ins, dinputs[0]
        if dx is None:
            return None
        c = net.groups[i].shape[0]
        n = dx.shape[0]
        if group.options["mode"] == "max":
            where = trace.cache[group.name].reshape(n, c, -1)
            return dx.reshape(n, c, -1).gather(2, where).reshape(n, -1)
        k, stride = group.options["kernel"], group.options["stride"]
        return F.avg_pool2d(dx.reshape(-1, *net.groups[i].shape), k, stride).reshape(n, -1)

    def signal(self, net, trace, i, group, delta, F_, out=None):
        c, h, w = net.groups[i].shape
        n = delta.shape[0]
        k, stride = group.options["kernel"], group.options["stride"]
        if group.options["mode"] == "max":
            where = trace.cache[group.name].reshape(n, c, -1)
            back = delta.new_zeros(n, c, h * w)
            back.scatter_add_(2, where, delta.reshape(n, c, -1))  # windows may overlap
        else:
            # The transposed convolution of every channel with a k x k kernel of 1 / k^2.
            d = delta.reshape(n * c, 1, *group.shape[1:])
            ones = delta.new_full((1, 1, k, k), 1.0 / (k * k))
            h_out, w_out = group.shape[1:]
            extra = (h - ((h_out - 1) * stride + k), w - ((w_out - 1) * stride + k))
            back = F.conv_transpose2d(d, ones, stride=stride, output_padding=extra)
        return accumulate(out, back.reshape(n, -1))

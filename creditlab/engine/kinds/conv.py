"""2-D convolution: s_j = W_ij * z_i + b_j, a kernel W_ij of shape (C_out, C_in, k, k) slid over
the image z_i (C_in, H, W) with a stride and zero padding; one bias per output channel.

The signal back to i is the transposed convolution of delta_j with the kernel (or with a rule's
stand-in kernel F): dE/dz_i = W^T * delta_j. The kernel's gradient correlates z_i with delta_j.
Both are computed with torch's convolution kernels called directly (conv_transpose2d, and
aten.convolution_backward for the weight, the kernel that conv2d's backward runs); no autograd
graph is built or walked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from creditlab.engine.kinds.base import (
    WEIGHT_GRADS_FOLLOW,
    Kind,
    KindOption,
    RandomGraph,
    accumulate,
    bilinear_tangent,
    image_of,
    out_size,
    random_biases,
)
from creditlab.engine.losses import LOSSES

Tensor = torch.Tensor


def conv_geometry(net, group) -> tuple[int, int, int, int, int, int]:
    """(C_in, H, W, kernel, stride, padding) of a convolution group, read from its options."""
    (i,) = group.ins
    c, h, w = image_of(net, i, group)
    o = group.options
    return c, h, w, o["kernel"], o["stride"], o["padding"]


def conv_output(net, group, channels: int) -> tuple[int, int, int]:
    _c, h, w, k, stride, pad = conv_geometry(net, group)
    h_out = out_size(h, k, stride, pad, group.name, "height")
    w_out = out_size(w, k, stride, pad, group.name, "width")
    return channels, h_out, w_out


def conv_forward(x: Tensor, W: Tensor, b: Tensor | None, stride: int, padding: int) -> Tensor:
    return F.conv2d(x, W, b, stride=stride, padding=padding)


def conv_signal(delta: Tensor, F_: Tensor, in_shape, stride: int, padding: int) -> Tensor:
    """W^T * delta: the transposed convolution, padded at the far edge to the input's size (a
    stride > 1 can drop the last rows and columns, which then receive no signal)."""
    _, h, w = in_shape
    k = F_.shape[-1]
    h_out, w_out = delta.shape[-2:]
    extra = (
        h - ((h_out - 1) * stride - 2 * padding + k),
        w - ((w_out - 1) * stride - 2 * padding + k),
    )
    return F.conv_transpose2d(delta, F_, stride=stride, padding=padding, output_padding=extra)


def conv_weight_grad(x: Tensor, delta: Tensor, W: Tensor, stride: int, padding: int) -> Tensor:
    """dE/dW = sum over the batch and positions of delta_j x_i-patch: the weight half of the
    convolution's backward kernel, asked for the weight alone."""
    _, grad_w, _ = torch.ops.aten.convolution_backward(
        delta,
        x,
        W,
        None,
        [stride, stride],
        [padding, padding],
        [1, 1],
        False,
        [0, 0],
        1,
        [False, True, False],
    )
    return grad_w


def random_conv_graph(net, rng, loss: str, trial: int = 0) -> None:
    """A small random convolutional graph: an image input, one or two convolutions (random
    kernel, stride and padding), max or average pooling, and a dense output reading the last
    image group and, sometimes, an earlier one as well (a merge)."""
    x = net.input((rng.randint(1, 2), rng.randint(6, 8), rng.randint(6, 8)))
    acts = ["tanh", "sigmoid", "softplus", "elu", "gelu", "identity"]
    images = [x]
    for _ in range(rng.randint(1, 2)):
        padding = rng.randint(0, 1)
        side = min(images[-1].shape[1:]) + 2 * padding
        images.append(
            net.conv(
                images[-1],
                rng.randint(1, 3),
                kernel=rng.randint(1, min(3, side)),
                stride=rng.randint(1, 2),
                padding=padding,
                activation=rng.choice(acts),
            )
        )
        _, h, w = images[-1].shape
        if min(h, w) >= 2 and rng.random() < 0.7:
            kernel = 2
            images.append(net.pool(images[-1], kernel, kind=rng.choice(["max", "avg"])))
    ins = [images[-1], *rng.sample(images[1:-1], min(1, len(images) - 2))]
    out = net.dense(ins, rng.randint(2, 4), activation="identity", name="out")
    net.output(out, loss=loss)
    random_biases(net)


# Trial t's loss is the t-th, in turn; pooling is drawn in most graphs (gradcheck's trials
# draw both modes).
CONV_GRAPH = RandomGraph(
    "conv",
    random_conv_graph,
    lambda trial: [list(LOSSES)[trial % len(LOSSES)]],
)


class Conv(Kind):
    name = "conv"
    options = {
        "channels": KindOption(int, minimum=1, help="output channels (kernels)"),
        "kernel": KindOption(int, 3, minimum=1, help="kernel height and width"),
        "stride": KindOption(int, 1, minimum=1),
        "padding": KindOption(int, 0, minimum=0, help="zeros around the image"),
        "bias": KindOption(bool, True, help="a bias per output channel"),
    }
    random_graph = CONV_GRAPH

    def reference(self, net, group, inputs, W, b, labels):
        (i,) = group.ins
        u = inputs[0].view(-1, *net.groups[i].shape)
        o = group.options
        return F.conv2d(u, W[i], b, o["stride"], o["padding"])

    def shape(self, net, group):
        return conv_output(net, group, group.options["channels"])

    def weight_shape(self, net, i, group):
        c = image_of(net, i, group)[0]
        k = group.options["kernel"]
        return (group.options["channels"], c, k, k)

    def bias_shape(self, group):
        return (group.options["channels"],)

    def fans(self, net, group):
        c, _, _, k, _, _ = conv_geometry(net, group)
        return c * k * k, group.options["channels"] * k * k

    def forward(self, net, group, trace, inputs):
        (i,), j = group.ins, group.name
        x = inputs[0].reshape(-1, *net.groups[i].shape)
        _, _, _, _, stride, pad = conv_geometry(net, group)
        s = conv_forward(x, net.W[(i, j)], net.b.get(j), stride, pad)  # b: None without bias
        return s.reshape(x.shape[0], -1)

    def tangent(self, net, group, trace, inputs, dinputs, dW, db):
        (i,), j = group.ins, group.name
        shape = net.groups[i].shape
        x = inputs[0].reshape(-1, *shape)
        dx = None if dinputs[0] is None else dinputs[0].reshape(-1, *shape)
        _, _, _, _, stride, pad = conv_geometry(net, group)
        ds = bilinear_tangent(
            lambda x_, W_, b_: conv_forward(x_, W_, b_, stride, pad),
            x,
            dx,
            net.W[(i, j)],
            dW[0],
            db,
        )
        return None if ds is None else ds.reshape(x.shape[0], -1)

    def signal(self, net, trace, i, group, delta, F, out=None):
        shape = net.groups[i].shape
        _, _, _, _, stride, pad = conv_geometry(net, group)
        d = delta.reshape(-1, *group.shape)
        if trace is not None and trace.cache.get(WEIGHT_GRADS_FOLLOW):
            # The kernel's gradient will be asked for next (bp, the feedback rules): one call
            # of the convolution's backward kernel gives it with the signal, as autograd's
            # does (separate calls took about 40% longer on the CPU for ResNet-20). The
            # gradient is z_i correlated with delta_j whatever stands in W's place.
            x = trace.sent(i).reshape(-1, *shape)
            back, grad_w, _ = torch.ops.aten.convolution_backward(
                d,
                x,
                F,
                None,
                [stride] * 2,
                [pad] * 2,
                [1, 1],
                False,
                [0, 0],
                1,
                [True, True, False],
            )
            trace.cache[(group.name, "grad_w")] = (delta, grad_w)
        else:
            back = conv_signal(d, F, shape, stride, pad)
        return accumulate(out, back.reshape(d.shape[0], -1))

    def weight_grad(self, net, trace, i, group, delta):
        kept = trace.cache.pop((group.name, "grad_w"), None)
        if kept is not None and kept[0] is delta:
            return kept[1].mul_(1.0 / delta.shape[0])
        _, _, _, _, stride, pad = conv_geometry(net, group)
        x = trace.sent(i).reshape(-1, *net.groups[i].shape)
        d = delta.reshape(-1, *group.shape)
        W = net.W[(i, group.name)]
        return conv_weight_grad(x, d, W, stride, pad).mul_(1.0 / delta.shape[0])

    def bias_grad(self, group, delta):
        per_channel = delta.reshape(delta.shape[0], group.shape[0], -1).sum(dim=(0, 2))
        return per_channel.mul_(1.0 / delta.shape[0])

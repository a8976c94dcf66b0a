"""2-D transposed convolution: s_j = W_ij *^T z_i + b_j, the adjoint of a convolution. Each input
pixel scatters a kernel of W_ij, shape (C_in, C_out, k, k), onto the output, `stride` pixels
apart; `padding` trims the output's border and `output_padding` adds rows and columns at its far
edge, so an image (C_in, H, W) becomes (C_out, (H - 1) stride - 2 padding + k + output_padding,
likewise for W). A generator grows a 7x7 map to 14x14 and 28x28 with it (kernel 4, stride 2,
padding 1).

The signal back to i is the ordinary convolution of delta_j with the kernel (or with a rule's
stand-in kernel F), same stride and padding: dE/dz_i = W * delta_j, which lands exactly on the
input's size. The kernel's gradient is the weight half of the transposed convolution's backward
kernel (aten.convolution_backward with transposed=True), called directly; no autograd graph is
built or walked.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from creditlab.engine.kinds.base import (
    Kind,
    KindOption,
    RandomGraph,
    accumulate,
    bilinear_tangent,
    image_of,
    random_biases,
)
from creditlab.engine.kinds.conv import Conv
from creditlab.engine.losses import LOSSES
from creditlab.errors import GraphError

Tensor = torch.Tensor


def transposed_size(n: int, kernel: int, stride: int, padding: int, extra: int) -> int:
    return (n - 1) * stride - 2 * padding + kernel + extra


def deconv_options(group) -> tuple[int, int, int, int]:
    """(kernel, stride, padding, output_padding) of a transposed convolution group."""
    o = group.options
    return o["kernel"], o["stride"], o["padding"], o["output_padding"]


def random_upsampling_graph(net, rng, loss: str = "mse", trial: int = 0) -> None:
    """A small random upsampling graph, a generator's shape: a vector input, a dense group
    shaped as an image (C, H, W), one or two transposed convolutions (random kernel, stride,
    padding and output_padding), sometimes a convolution, and a dense output."""
    x = net.input(rng.randint(2, 4))
    acts = ["tanh", "sigmoid", "softplus", "elu", "gelu", "leaky_relu:0.2"]
    image = net.dense(x, (rng.randint(1, 2), rng.randint(2, 3), rng.randint(2, 3)), "tanh")
    for _ in range(rng.randint(1, 2)):
        stride, kernel = rng.randint(1, 3), rng.randint(1, 4)
        image = net.conv_transpose(
            image,
            rng.randint(1, 2),
            kernel=kernel,
            stride=stride,
            padding=rng.randint(0, 1) if kernel > 1 else 0,
            output_padding=rng.randint(0, stride - 1),
            activation=rng.choice(acts),
        )
    if rng.random() < 0.5:
        image = net.conv(image, 2, kernel=min(2, *image.shape[1:]), activation=rng.choice(acts))
    out = net.dense(image, rng.randint(2, 4), activation="identity", name="out")
    net.output(out, loss=loss)
    random_biases(net)


UPSAMPLING_GRAPH = RandomGraph(
    "conv_transpose",
    random_upsampling_graph,
    lambda trial: [list(LOSSES)[trial % len(LOSSES)]],
)


class ConvTranspose(Kind):
    name = "conv_transpose"
    options = {
        "channels": KindOption(int, minimum=1, help="output channels"),
        "kernel": KindOption(int, 4, minimum=1),
        "stride": KindOption(int, 2, minimum=1),
        "padding": KindOption(int, 1, minimum=0, help="trimmed from the output's border"),
        "output_padding": KindOption(int, 0, minimum=0, help="rows added at the far edge"),
    }
    random_graph = UPSAMPLING_GRAPH

    def reference(self, net, group, inputs, W, b, labels):
        (i,) = group.ins
        u = inputs[0].view(-1, *net.groups[i].shape)
        o = group.options
        return F.conv_transpose2d(u, W[i], b, o["stride"], o["padding"], o["output_padding"])

    def shape(self, net, group):
        (i,) = group.ins
        _, h, w = image_of(net, i, group)
        k, stride, pad, extra = deconv_options(group)
        if extra >= stride:
            raise GraphError(
                f"output_padding of group {group.name!r} ({extra}) must be smaller than its "
                f"stride ({stride})"
            )
        h_out = transposed_size(h, k, stride, pad, extra)
        w_out = transposed_size(w, k, stride, pad, extra)
        if min(h_out, w_out) < 1:
            raise GraphError(
                f"group {group.name!r} (conv_transpose) would give an image of {h_out}x{w_out} "
                f"from {h}x{w} (kernel {k}, stride {stride}, padding {pad}); lower the padding"
            )
        return group.options["channels"], h_out, w_out

    def weight_shape(self, net, i, group):
        c = image_of(net, i, group)[0]
        k = group.options["kernel"]
        return (c, group.options["channels"], k, k)

    bias_shape = Conv.bias_shape  # one bias per output channel, as for a convolution
    bias_grad = Conv.bias_grad

    def fans(self, net, group):
        # Each output pixel sums about C_in (k / stride)^2 inputs and each input pixel reaches
        # C_out (k / stride)^2 outputs: the stride spreads the kernel's taps, and the fans that
        # keep the activity's variance (He, Glorot) count the taps that overlap one pixel.
        (i,) = group.ins
        c = image_of(net, i, group)[0]
        k, stride, _, _ = deconv_options(group)
        taps = math.ceil(k / stride) ** 2
        return c * taps, group.options["channels"] * taps

    def forward(self, net, group, trace, inputs):
        (i,), j = group.ins, group.name
        x = inputs[0].reshape(-1, *net.groups[i].shape)
        _, stride, pad, extra = deconv_options(group)
        s = F.conv_transpose2d(
            x, net.W[(i, j)], net.b[j], stride=stride, padding=pad, output_padding=extra
        )
        return s.reshape(x.shape[0], -1)

    def tangent(self, net, group, trace, inputs, dinputs, dW, db):
        (i,), j = group.ins, group.name
        shape = net.groups[i].shape
        x = inputs[0].reshape(-1, *shape)
        dx = None if dinputs[0] is None else dinputs[0].reshape(-1, *shape)
        _, stride, pad, extra = deconv_options(group)

        def forward(x_, W_, b_):
            return F.conv_transpose2d(x_, W_, b_, stride=stride, padding=pad, output_padding=extra)

        ds = bilinear_tangent(forward, x, dx, net.W[(i, j)], dW[0], db)
        return None if ds is None else ds.reshape(x.shape[0], -1)

    def signal(self, net, trace, i, group, delta, F_, out=None):
        _, stride, pad, _ = deconv_options(group)
        d = delta.reshape(-1, *group.shape)
        back = F.conv2d(d, F_, stride=stride, padding=pad)
        return accumulate(out, back.reshape(d.shape[0], -1))

    def weight_grad(self, net, trace, i, group, delta):
        _, stride, pad, extra = deconv_options(group)
        x = trace.sent(i).reshape(-1, *net.groups[i].shape)
        d = delta.reshape(-1, *group.shape)
        _, grad_w, _ = torch.ops.aten.convolution_backward(
            d,
            x,
            net.W[(i, group.name)],
            None,
            [stride, stride],
            [pad, pad],
            [1, 1],
            True,
            [extra, extra],
            1,
            [False, True, False],
        )
        return grad_w.mul_(1.0 / delta.shape[0])

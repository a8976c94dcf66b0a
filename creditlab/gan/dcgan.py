"""DCGAN-style convolutional generator and discriminator (Radford, Metz and Chintala 2016), as
the model strings `dcgan` and `dcgan:W` (W, the base width: channels of the narrowest layer).

For images (C, H, W) whose height and width are multiples of 4 (MNIST's 1x28x28; digits' 1x8x8):

- generator: latent -> dense (2W, H/4, W/4) relu -> conv_transpose W@4x4 stride 2 padding 1
  (H/2, W/2) relu -> conv_transpose C@4x4 stride 2 padding 1 (H, W) tanh;
- discriminator: image -> conv W@4x4 stride 2 padding 1 leaky_relu(0.2) -> conv 2W@4x4 stride 2
  padding 1 leaky_relu(0.2) -> dense 1 (the logit).

Unlike DCGAN there is no batch normalisation (the engine has none); the activations are DCGAN's
own and fixed (--activation-g/-d apply to mlp models). Initial weights are the engine's He (relu
and leaky ReLU groups) and Glorot (tanh, identity) draws, not DCGAN's N(0, 0.02).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from creditlab.engine.network import Network
from creditlab.errors import UsageError

DEFAULT_WIDTH = 64  # DCGAN's MNIST examples use 64 (PyTorch's ngf/ndf)
D_SLOPE = "leaky_relu:0.2"
MODEL = re.compile(r"dcgan(:[1-9][0-9]*)?")


def dcgan_width(model: str) -> int | None:
    """W for "dcgan" or "dcgan:W"; None for a string that does not name a DCGAN at all; a
    UsageError for one that tries to ("dcgan:0", "dcgan:x")."""
    if not model.startswith("dcgan"):
        return None
    if not MODEL.fullmatch(model):
        raise UsageError(
            f"bad model {model!r}: write dcgan or dcgan:W with W a positive whole number "
            "(the base width, e.g. dcgan:64)"
        )
    _, _, width = model.partition(":")
    return int(width) if width else DEFAULT_WIDTH


def image_of(shape: Sequence[int], model: str) -> tuple[int, int, int]:
    """(C, H, W) from the dataset's image shape, or a UsageError when it does not fit."""
    full = (1, *shape) if len(shape) == 2 else tuple(shape)
    if len(full) != 3 or full[1] % 4 or full[2] % 4:
        raise UsageError(
            f"model {model!r} needs images whose height and width are multiples of 4 (two "
            f"stride-2 steps); the dataset's images are {'x'.join(map(str, shape))}"
        )
    return full


def generator(
    width: int, latent: int, image: tuple[int, int, int], dtype, device, seed: int
) -> Network:
    c, h, w = image
    net = Network(dtype=dtype, device=device, seed=seed)
    u = net.input(latent)
    g = net.dense(u, (2 * width, h // 4, w // 4), activation="relu", name="project")
    g = net.conv_transpose(g, width, kernel=4, stride=2, padding=1, activation="relu", name="up1")
    out = net.conv_transpose(g, c, kernel=4, stride=2, padding=1, activation="tanh", name="out")
    net.output(out, loss="mse")  # the loss is unused: G learns from D's signal
    return net


def discriminator(width: int, image: tuple[int, int, int], dtype, device, seed: int) -> Network:
    net = Network(dtype=dtype, device=device, seed=seed)
    x = net.input(image)
    d = net.conv(x, width, kernel=4, stride=2, padding=1, activation=D_SLOPE, name="down1")
    d = net.conv(d, 2 * width, kernel=4, stride=2, padding=1, activation=D_SLOPE, name="down2")
    out = net.dense(d, 1, activation="identity", name="out")
    net.output(out, loss="bce")
    return net

"""Presets of the field's standard image classifiers, built with the engine's own API.

- "resnet20": He, Zhang, Ren and Sun (2016), section 4.2, the CIFAR ResNet with n = 3: a 3x3
  convolution of 16 channels, then 3 stages of 3 basic blocks (two 3x3 convolutions each) with
  16, 32 and 64 channels, the first block of stages 2 and 3 halving the height and width by a
  stride of 2; global average pooling and a dense layer to the classes. Every convolution is
  followed by batch normalisation and has no bias. Shortcuts are option B of the paper: the
  identity, and where the shape changes (the two stride-2 blocks) a 1x1 convolution of stride 2
  with batch normalisation (a projection). The paper's CIFAR tables use option A (identity with
  zero-padded channels, no parameters); option B adds 2 x (16 x 32 + 32 x 64) + BN ~ 5k
  parameters to its 0.27M. 0.272M parameters for 10 classes.
- "vgg:small": a VGG-style stack (Simonyan and Zisserman 2015) for small images: 3x3
  convolutions with batch normalisation and ReLU, 32-32-pool-64-64-pool-128-128-pool, and a
  dense layer from the flattened features to the classes.

The groups are named as the matching torch modules in benchmarks/torch_models_zoo.py name
their submodules (conv1, bn1, layer1.0.conv1, ..., linear; features.0, ..., classifier), so
that creditlab.to_torch(net, module) copies a network trained here into the torch module, and
from_torch of that module gives this network's structure.
"""

from __future__ import annotations

import torch

from creditlab.engine.network import Group, Network

# (channels, stride of the first block) per stage, and blocks per stage (n = 3 for ResNet-20)
RESNET20_STAGES = ((16, 1), (32, 2), (64, 2))
RESNET20_BLOCKS = 3
VGG_SMALL = (32, 32, "M", 64, 64, "M", 128, 128, "M")


def _conv_bn(
    net: Network, src, channels: int, kernel: int, stride: int, conv: str, bn: str, activation: str
) -> Group:
    padding = kernel // 2
    c = net.conv(
        src, channels, kernel, stride, padding, "identity", init="he", name=conv, bias=False
    )
    return net.batch_norm(c, activation=activation, name=bn)


def resnet20(
    image: tuple[int, int, int],
    n_outputs: int,
    dtype: torch.dtype | str = torch.float32,
    device: str = "cpu",
    seed: int = 0,
) -> Network:
    """ResNet-20 (He et al. 2016, CIFAR), option-B shortcuts; see the module's docstring."""
    net = Network(dtype=dtype, device=device, seed=seed)
    x = net.input(image)
    h = _conv_bn(net, x, 16, 3, 1, "conv1", "bn1", "relu")
    channels = 16
    for s, (width, first_stride) in enumerate(RESNET20_STAGES, start=1):
        for b in range(RESNET20_BLOCKS):
            stride = first_stride if b == 0 else 1
            p = f"layer{s}.{b}"
            branch = _conv_bn(net, h, width, 3, stride, f"{p}.conv1", f"{p}.bn1", "relu")
            branch = _conv_bn(net, branch, width, 3, 1, f"{p}.conv2", f"{p}.bn2", "identity")
            if stride != 1 or width != channels:
                shortcut = _conv_bn(
                    net, h, width, 1, stride, f"{p}.shortcut.0", f"{p}.shortcut.1", "identity"
                )
            else:
                shortcut = h
            h = net.add([branch, shortcut], activation="relu", name=f"{p}.add")
            channels = width
    pooled = net.global_pool(h, name="avgpool")
    out = net.dense(pooled, n_outputs, activation="identity", name="linear")
    net.output(out, loss="cross_entropy")
    return net


def vgg_small(
    image: tuple[int, int, int],
    n_outputs: int,
    dtype: torch.dtype | str = torch.float32,
    device: str = "cpu",
    seed: int = 0,
) -> Network:
    """A small VGG-style network with batch norm; see the module's docstring."""
    net = Network(dtype=dtype, device=device, seed=seed)
    h = net.input(image)
    k = 0  # the index in the torch module's `features` Sequential
    for item in VGG_SMALL:
        if item == "M":
            h = net.pool(h, 2, kind="max", name=f"features.{k}")
            k += 1
        else:
            h = _conv_bn(net, h, item, 3, 1, f"features.{k}", f"features.{k + 1}", "relu")
            k += 3  # conv, batch norm, ReLU
    out = net.dense(h, n_outputs, activation="identity", name="classifier")
    net.output(out, loss="cross_entropy")
    return net

"""ResNet-20 and the small VGG as plain torch.nn modules, for side-by-side runs with creditlab.

They are the torch twins of creditlab's presets `resnet20` and `vgg:small`
(creditlab/engine/zoo.py): the same layers, with submodules named as the presets name
their groups, so that creditlab.from_torch(module, x) gives the preset's structure and
creditlab.to_torch(preset_network, module) copies a network trained by creditlab into them.
ResNet-20 (He et al. 2016, CIFAR, n = 3) uses option-B shortcuts: the identity, and a 1x1
convolution of stride 2 with batch norm where the shape changes.

Usable as a --model torch:benchmarks/torch_models_zoo.py:resnet20 factory (functions take
the number of classes and the number of input channels).
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:  # option B: a projection where the shape changes
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, classes: int = 10, channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for b in range(3):
                blocks.append(BasicBlock(cin, width, stride if b == 0 else 1))
                cin = width
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, classes)
        for m in self.modules():  # He initialisation, as the paper
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.avgpool(x).flatten(1))


class VGGSmall(nn.Module):
    def __init__(self, classes: int = 10, channels: int = 3, side: int = 32):
        super().__init__()
        layers, cin = [], channels
        for item in (32, 32, "M", 64, 64, "M", 128, 128, "M"):
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                side //= 2
            else:
                layers += [nn.Conv2d(cin, item, 3, padding=1, bias=False), nn.BatchNorm2d(item)]
                layers.append(nn.ReLU(inplace=True))
                cin = item
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin * side * side, classes)

    def forward(self, x):
        return self.classifier(torch_flatten(self.features(x)))


def torch_flatten(x):
    return x.view(x.size(0), -1)


def resnet20(classes: int = 10, channels: int = 3) -> nn.Module:
    return ResNet20(classes, channels)


def vgg_small(classes: int = 10, channels: int = 3, side: int = 32) -> nn.Module:
    return VGGSmall(classes, channels, side)

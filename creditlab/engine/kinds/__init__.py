"""The kinds of connection a group can have, one file each, found by name."""

from __future__ import annotations

from creditlab.engine.kinds.add import Add
from creditlab.engine.kinds.base import Kind
from creditlab.engine.kinds.batch_norm import BatchNorm
from creditlab.engine.kinds.capsules import PrimaryCapsules, RoutedCapsules
from creditlab.engine.kinds.conv import Conv
from creditlab.engine.kinds.conv_transpose import ConvTranspose
from creditlab.engine.kinds.dense import Dense
from creditlab.engine.kinds.global_pool import GlobalPool
from creditlab.engine.kinds.mask import Mask
from creditlab.engine.kinds.pool import Pool

KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Dense(),
        Conv(),
        ConvTranspose(),
        Pool(),
        PrimaryCapsules(),
        RoutedCapsules(),
        Mask(),
        BatchNorm(),
        Add(),
        GlobalPool(),
    )
}

__all__ = ["KINDS", "Kind"]

"""Binding tensors as a network's parameters, so the engine's own code runs on other values.

torch.func.vmap batches a function over a leading dimension of its tensor arguments. To run the
engine's forward pass, backward sweep and rules for a stack of networks (stacked training, a
population of perturbed networks), the stacked tensors are bound in place of a network's
parameters for the duration of one call: no copy, and the network's own tensors come back
afterwards.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any

import torch

from creditlab.engine.network import Network

Tensor = torch.Tensor
Params = dict[str, Tensor]


def parameter_slots(net: Network) -> dict[str, tuple[dict, Any]]:
    """Per parameter name, the dict of the network that holds it and its key there."""
    return net.parameter_slots()


def bind_parameters(net: Network, params: Params) -> Params:
    """Make the network use these tensors as its parameters (no copy); returns the old ones."""
    old = {}
    for name, (holder, key) in parameter_slots(net).items():
        old[name], holder[key] = holder[key], params[name]
    return old


@contextmanager
def bound(net: Network, params: Params):
    old = bind_parameters(net, params)
    try:
        yield net
    finally:
        bind_parameters(net, old)


@contextmanager
def batching_fallback_allowed():
    """Inside vmap, ops without a batching rule (addmm_ into a batched sum) run
    member by member, as separate runs would; PyTorch warns about it every time, which says
    nothing new to a user of this library."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "There is a performance drop", UserWarning)
        yield

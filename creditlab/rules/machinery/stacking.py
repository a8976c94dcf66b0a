"""How a rule's step runs for K members at once: the protocol between a rule and the stack.

speed/vmap_stack.py runs K networks of one architecture as one batched computation under
torch.func.vmap. What differs from rule to rule (what is formed per member outside vmap, what
state is carried through the step, what is handed back to each member) is the rule's business,
so each rule returns its stacked form from `Rule.stacked_form` (rules/base.py), built on the
StackedRule below. The stack itself never names a rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch.utils import _pytree as pytree

from creditlab.engine.network import Network

if TYPE_CHECKING:
    from creditlab.rules.base import Rule

Tensor = torch.Tensor


class StackedRule:
    """A rule's step for all members at once. `extra(nets)` is formed per member outside vmap
    (stacked on dim 0, or None); `state` is carried through the step (dim 0); `run` is the
    per-member code that vmap batches, returning (updates, new state)."""

    def __init__(self, rules: Sequence[Rule], nets: Sequence[Network]):
        # The template runs every member's step inside vmap: an instance of its own, so that
        # no member's rule ever holds the batched values.
        self.rules, self.template = list(rules), type(rules[0])(**rules[0].opts)
        self.state: Any = []

    compilable = True  # whether the vmapped step may run under torch.compile

    def extra(self, nets: Sequence[Network]) -> Any:
        return None

    def run(self, net: Network, x: Tensor, y: Tensor, extra: Any, state: Any):
        return self.template.updates(net, x, y), state

    def carry(self, state: Any) -> None:
        """Take what the step returned in the state's place."""
        self.state = state

    def sync(self) -> None:
        """Hand the carried state back to each member's own rule (before a checkpoint or a
        probe), so each member's rule object is what a separate run's would be."""


class Stateless(StackedRule):
    """Rules whose step is a function of the parameters and the batch alone (bp)."""


def stacked_state(states: Sequence[Any]) -> Any:
    """The members' states (nested dicts of tensors and numbers, one structure) as one: every
    tensor stacked on a new dim 0; plain numbers (an optimiser's step count, the same for
    members that step together) taken from the first."""
    leaves, spec = pytree.tree_flatten(states[0])
    flat = [pytree.tree_flatten(state)[0] for state in states]
    stacked = [
        torch.stack([f[n] for f in flat]) if isinstance(v, Tensor) else v
        for n, v in enumerate(leaves)
    ]
    return pytree.tree_unflatten(stacked, spec)


def member_state(state: Any, k: int) -> Any:
    """Member k's part of a stacked_state: views of its slices, and the plain numbers."""
    return pytree.tree_map(lambda v: v[k] if isinstance(v, Tensor) else v, state)

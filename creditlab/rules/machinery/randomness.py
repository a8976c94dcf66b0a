"""A rule's own random generator: seeded from the network, created on first use, resumable.

Rules draw from their own generator (never the global one), so drawing does not disturb the
network's initialisation or dropout, and a seed gives the same run on every rule. The state can
be saved before the generator exists (a checkpoint loaded before the first step).
"""

from __future__ import annotations

import torch

from creditlab.engine.network import Network


class RuleGenerator:
    def __init__(self, offset: int):
        self.offset = offset  # distinguishes the streams of different rules and uses
        self.generator: torch.Generator | None = None
        self._pending: torch.Tensor | None = None

    def get(self, net: Network) -> torch.Generator:
        if self.generator is None:
            self.generator = torch.Generator(device=net.device)
            self.generator.manual_seed(net.seed * 1_000_003 + self.offset)
            if self._pending is not None:
                self.generator.set_state(self._pending)
                self._pending = None
        return self.generator

    def state(self) -> torch.Tensor | None:
        if self.generator is not None:
            return self.generator.get_state()
        return self._pending

    def load(self, state: torch.Tensor | None) -> None:
        if state is None:
            return
        state = state.cpu()  # generator states are CPU byte tensors, whatever the device
        if self.generator is None:
            self._pending = state
        else:
            self.generator.set_state(state)

"""Layer-local learning: each group's weights follow a loss defined at that group alone.

Rules without a global backward sweep (forward-forward, target propagation, predictive coding)
give every group j its own loss E_j and its derivative dE_j/dz_j. The update of the weights into
j then follows the same local algebra as backpropagation, with nothing crossing groups:
delta_j = f_j'(s_j) * dE_j/dz_j, dE_j/dW_ij = z_i^T delta_j / N, dE_j/db_j = mean of delta_j.
"""

from __future__ import annotations

import torch

from creditlab.engine.backward import local_delta, weight_updates
from creditlab.engine.network import Network, Trace

Tensor = torch.Tensor


def local_updates(
    net: Network, trace: Trace, dz: dict[str, Tensor], partial: bool = False
) -> dict[str, Tensor]:
    """Updates for every parameter from per-group local signals dE_j/dz_j (per example).

    Groups absent from `dz` get zero updates (no entries with `partial`). The inputs z_i are
    what group j actually read (trace.sent), so a forward pass with `emit` is handled.
    """
    deltas = {j: local_delta(net, trace, j, signal) for j, signal in dz.items()}
    return weight_updates(net, trace, deltas, partial)

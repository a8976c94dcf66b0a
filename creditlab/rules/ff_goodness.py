"""Forward-forward's machinery (Hinton 2022): labels written into the input, goodness, its
logistic loss, length normalisation and peer normalisation.

Supervised forward-forward shows every image twice: with its true label written into its first
n_classes input values (positive data) and with a wrong one (negative data). Each hidden group j
has its own goodness G_j = sum over units of z_j^2 and its own loss, low when G_j is high on
positive data and low on negative data. A group passes its activity upward only after length
normalisation, so the group above cannot read the goodness below off the vector's length and
must find new features of its own; no error signal crosses groups.

The losses return dE_j/dz_j per example, scaled for creditlab.engine.backward.weight_updates, which
averages z_i^T delta_j over every row of the forward pass (positive and negative rows both).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from creditlab.engine.network import Network, Trace, bias_name, weight_name
from creditlab.errors import UsageError

Tensor = torch.Tensor
EPS = 1e-8  # keeps a silent group's normalised activity at 0 instead of 0/0


# ---- inputs with labels ------------------------------------------------------------------
def with_labels(x: Tensor, labels: Tensor, n_classes: int, strength: float = 1.0) -> Tensor:
    """x with its first n_classes values overwritten by strength * one-hot(label), as Hinton
    writes the label over the (blank) first pixels of an MNIST image."""
    out = x.clone()
    out[:, :n_classes] = 0
    out[torch.arange(x.shape[0], device=x.device), labels] = strength
    return out


def with_neutral_label(x: Tensor, n_classes: int, strength: float = 1.0) -> Tensor:
    """x with strength / n_classes in every label position: no label preferred (Hinton's
    "neutral label", the input of the linear readout)."""
    out = x.clone()
    out[:, :n_classes] = strength / n_classes
    return out


def with_every_label(x: Tensor, n_classes: int, strength: float = 1.0) -> Tensor:
    """Every image with every label, one batch of n_classes * N rows: row c * N + n holds image
    n with label c, so a result of shape (n_classes * N,) reshapes to (n_classes, N)."""
    labels = torch.arange(n_classes, device=x.device).repeat_interleave(x.shape[0])
    return with_labels(x.repeat(n_classes, 1), labels, n_classes, strength)


def check_input(net: Network, rule: str) -> None:
    """Forward-forward needs room for the label in the input and a hidden group to judge it."""
    if net.input_size < net.output_size:
        raise UsageError(
            f"rule {rule!r} writes the label into the first {net.output_size} input values, "
            f"but input group {net.input_name!r} has only {net.input_size}"
        )
    if not net.hidden:
        raise UsageError(f"rule {rule!r} needs at least one hidden group (it has none)")


# ---- goodness and its losses ---------------------------------------------------------------
def length_normalise(z: Tensor) -> Tensor:
    """z / (rms(z) + eps) per example: the direction of z at length sqrt(size).

    The root mean square (not the plain length) is divided out, as in Hinton's code: the
    readers then get inputs of unit mean square whatever the group's size, which is the scale
    their Glorot or He initial weights expect.
    """
    return z / (z.pow(2).mean(dim=1, keepdim=True).sqrt() + EPS)


def goodness(z: Tensor) -> Tensor:
    """G = sum over units of z^2, per example."""
    return z.pow(2).sum(dim=1)


def threshold_loss(z: Tensor, n_pos: int, theta: float, temperature: float):
    """Hinton's loss: p(positive) = sigmoid((G - theta) / temperature), logistic loss.

    Rows [0, n_pos) of z are positive data, the rest negative. Per row the loss is
    softplus(-(G - theta) / T) on positive rows and softplus((G - theta) / T) on negative ones;
    E is their mean over all rows (log 2 at chance). Returns E and dE/dz per row (times the
    number of rows, since weight_updates divides by it): 2 z dE/dG.
    """
    sign = torch.ones(z.shape[0], dtype=z.dtype, device=z.device)
    sign[n_pos:] = -1
    margin = sign * (goodness(z) - theta) / temperature  # > 0: the row is judged right
    loss = F.softplus(-margin).mean()
    dE_dG = -sign * torch.sigmoid(-margin) / temperature
    return loss, 2 * z * dE_dG.unsqueeze(1)


def symmetric_loss(z: Tensor, n_pos: int, theta: float, temperature: float):
    """The symmetric variant (SymBa, Lee and Song 2023): each positive row against its negative
    twin, E = mean over pairs of softplus(-(G_pos - G_neg) / T); no threshold (theta unused).
    The pair loss's derivatives are doubled because weight_updates averages over 2N rows, not
    over the N pairs."""
    G = goodness(z)
    margin = (G[:n_pos] - G[n_pos:]) / temperature
    loss = F.softplus(-margin).mean()
    dE_dGpos = -torch.sigmoid(-margin) / temperature
    dE_dG = torch.cat([dE_dGpos, -dE_dGpos])
    return loss, 2 * (2 * z * dE_dG.unsqueeze(1))


LOSSES = {"threshold": threshold_loss, "symmetric": symmetric_loss}


# ---- peer normalisation --------------------------------------------------------------------
class PeerNormalisation:
    """Hinton's peer normalisation: each unit's mean activity is regressed toward its group's.

    r_k, unit k's running mean activity on positive data (momentum 0.9, started at the first
    batch's mean), is compared with r_bar, the mean of r over the group. Every positive example
    adds strength * (r_k - r_bar) to dE/ds_k, so busy units quieten and idle ones wake up. As in
    Hinton's code the term is not gated by f'(s_k): it revives units that are off for every
    input, which a gated term never could. The term is the same for every positive example,
    so its share of the update is rank one: dE/db_j gets the term itself and dE/dW_ij the outer
    product of mean(z_i over the positive examples) with it (Hinton's lambdamean scaling).
    """

    def __init__(self, strength: float, momentum: float = 0.9):
        self.strength, self.momentum = strength, momentum
        self.mean: dict[str, Tensor] = {}

    def term(self, j: str, z_pos: Tensor, scale: float = 1.0) -> Tensor:
        """Update r for group j with this batch's positive activities; the term per unit."""
        batch_mean = z_pos.mean(dim=0)
        if j not in self.mean:
            self.mean[j] = batch_mean.clone()
        else:
            self.mean[j].lerp_(batch_mean, 1 - self.momentum)
        r = self.mean[j]
        return (self.strength * scale) * (r - r.mean())

    def add_to(
        self,
        updates: dict[str, Tensor],
        net: Network,
        trace: Trace,
        j: str,
        n_pos: int,
        scale: float = 1.0,
    ) -> None:
        """Add group j's term, times scale, to its updates; rows [0, n_pos) are positive.

        A rule whose goodness loss divides dE/dG by a temperature passes the same 1/temperature
        as scale, so that strength keeps its balance against the goodness term.
        """
        term = self.term(j, trace.z[j][:n_pos], scale)
        updates[bias_name(j)].add_(term)
        for i in net.groups[j].ins:
            z_i = trace.sent(i)[:n_pos].mean(dim=0)
            updates[weight_name(i, j)].addr_(z_i, term)

    def state_dict(self) -> dict[str, Any]:
        return {j: r.clone() for j, r in self.mean.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.mean = {j: r.clone() for j, r in state.items()}

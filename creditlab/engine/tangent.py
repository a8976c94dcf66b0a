"""The forward tangent sweep: the dual of the backward sweep, for forward-mode derivatives.

Given a tangent of the parameters (dW_ij, db_j), of the input (dz_input) and of any group's
activity (u_j, added to dz_j), it carries the derivative of every group's activity along that
tangent up the network, in topological order, in the derivation's notation:

    ds_j = sum over i in ins(j) of (dz_i W_ij + z_i dW_ij) + db_j     (dense; each kind its own)
    dz_j = f_j'(s_j) ds_j (times the dropout gain) + u_j
    dE   = sum over outputs o of dE/dz_o . dz_o                        (per example)

So dE is the directional derivative J v of the loss along the tangent v, computed alongside a
forward pass, where the backward sweep computes the transpose J^T u from the top. For every
tangent v and output signal u, (J v) . u = v . (J^T u): the tests check the two sweeps against
each other that way. The kinds give ds_j (Kind.tangent, beside each forward); f'(s_j) ds_j is
local_delta's product, because every activation's Jacobian is symmetric (diagonal for the
elementwise ones, a I + b s s^T for the capsules' squash), so the same code carries a vector
forward as backward. Like the backward sweep, it takes the derivative through what each group
computed from trace.sent(i), not through a forward pass's `emit`.
"""

from __future__ import annotations

import torch

from creditlab.engine.backward import local_delta, loss_signals
from creditlab.engine.network import Network, Trace, bias_name, weight_name

Tensor = torch.Tensor


def tangent_sweep(
    net: Network,
    trace: Trace,
    params: dict[str, Tensor] | None = None,
    activities: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """dz_j along the tangent for every group the tangent reaches (absent groups: zero).

    `params` holds tangents dW_ij, db_j by parameter name (net.parameters()'s names; missing
    names are zero); `activities` holds tangents u_j per example, (N, size_j), added to dz_j
    (the input group's is dx).
    """
    params = params or {}
    activities = activities or {}
    dz: dict[str, Tensor] = {}
    if net.input_name in activities:
        dz[net.input_name] = activities[net.input_name]
    for j in net.order[1:]:
        group, kind = net.groups[j], net.kind(j)
        ins = group.ins
        dW = [params.get(weight_name(i, j)) for i in ins] if kind.weighted else [None] * len(ins)
        db = params.get(bias_name(j)) if kind.biased else None
        dinputs = [dz.get(i) for i in ins]
        dz_j = None
        if db is not None or any(t is not None for t in (*dW, *dinputs)):
            ds = kind.tangent(net, group, trace, [trace.sent(i) for i in ins], dinputs, dW, db)
            if ds is not None:
                dz_j = local_delta(net, trace, j, ds)  # f'(s_j) ds_j: see the docstring
        if j in activities:
            dz_j = activities[j] if dz_j is None else dz_j + activities[j]
        if dz_j is not None:
            dz[j] = dz_j
    return dz


def directional_derivative(
    net: Network, trace: Trace, dz: dict[str, Tensor], signals: dict[str, Tensor]
) -> Tensor:
    """dE_n = sum over outputs o of dE_n/dz_o . dz_o, per example (N,); `signals` are the
    outputs' dE_n/dz_o (backward.loss_signals, weighted). The mean over the batch is the
    directional derivative of the mean loss."""
    n = trace.z[net.input_name].shape[0]
    total = trace.z[net.input_name].new_zeros(n)
    for o, signal in signals.items():
        if o in dz:
            total += (signal * dz[o]).sum(dim=1)
    return total


def loss_directional_derivative(
    net: Network, trace: Trace, y: Tensor, dz: dict[str, Tensor]
) -> Tensor:
    """dE_n along the tangent that gave dz, per example, for the network's own loss."""
    return directional_derivative(net, trace, dz, loss_signals(net, trace, y))

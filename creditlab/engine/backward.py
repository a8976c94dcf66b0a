"""The backward sweep, shared by backpropagation and the rules that change its feedback path.

In the derivation's notation:
    output group o:   delta_o = f_o'(s_o) * dE/dz_o
    any other group:  delta_j = f_j'(s_j) * sum over k in outs(j) of delta_k W_jk^T
    weight gradients: dE/dW_ij = z_i^T delta_j, dE/db_j = sum of delta_j over the batch,
                      both divided by the batch size (E is the mean loss over the batch).
The products with W^T and z_i^T are the dense kind's; every kind of connection (convolution,
pooling, capsules, mask: see engine/kinds/) says how it carries delta_k back to the group it
reads and what its parameters' gradient is, and the sweep is the same loop over the groups for
all. An output group that also feeds other groups (a capsule network's digit capsules feed the
decoder) sums its loss's dE/dz_o and the signals from its readers. Error signals delta are kept
per example; the division by the batch size happens once, in `weight_updates`. A rule that
carries errors back along other matrices than W (feedback alignment and its sign-symmetric
cousins) passes its own `feedback`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from creditlab.engine.kinds.base import WEIGHT_GRADS_FOLLOW
from creditlab.engine.network import Network, Trace, bias_name, weight_name

Tensor = torch.Tensor
# feedback(i, j) gives the tensor that the connection i -> j uses in W_ij's place on the way
# back, shaped like net.feedback_view(i, j): W_ij^T, (size_j, size_i), for dense connections;
# the kernel or the capsule transformation itself for the others.
Feedback = Callable[[str, str], Tensor]


def transpose_feedback(net: Network) -> Feedback:
    """Backpropagation's feedback: the forward weights themselves (W_ij^T for dense)."""
    return net.feedback_view


def local_delta(net: Network, trace: Trace, j: str, dz: Tensor, fresh: bool = False) -> Tensor:
    """delta_j = f_j'(s_j) * dE/dz_j, counting the dropout gain when the pass used one.

    `fresh` says dz is a new tensor nobody else holds (the sweep's own sum of signals), which
    an identity group may then keep as its delta instead of a copy (a residual network's
    convolutions before batch norm are identity groups: a copy each was 7% of a step)."""
    group = net.groups[j]
    if group.act.name == "identity":
        delta = dz if fresh else dz.clone()
    elif group.act.name == "relu" and j not in trace.undropped:
        # relu'(s) * dz in one pass, the kernel autograd's ReLU backward runs (where z > 0,
        # dz; elsewhere 0), instead of sign(z) and a product.
        delta = torch.ops.aten.threshold_backward(dz, trace.z[j], 0)
    elif group.act.vjp is not None:  # squash: the Jacobian of each capsule's vector
        shape = (-1, *group.shape)
        delta = group.act.vjp(trace.s[j].view(shape), trace.z[j].view(shape), dz.reshape(shape))
        delta = delta.reshape(dz.shape[0], -1)
    else:
        f_of_s = trace.undropped.get(j, trace.z[j])
        delta = group.act.df(trace.s[j], f_of_s).mul_(dz)
    if j in trace.gain:
        delta.mul_(trace.gain[j])
    return delta


def loss_signals(net: Network, trace: Trace, y: Tensor) -> dict[str, Tensor]:
    """dE/dz_o of the total loss at every output group o (its loss's derivative, weighted)."""
    signals = {}
    for o in net.outputs:
        target = net.target(o, trace, y)
        dz = o.loss.dz(net.shaped(o.name, trace.z[o.name]), target)
        dz = dz.reshape(dz.shape[0], -1)
        signals[o.name] = dz if o.weight == 1.0 else dz.mul_(o.weight)
    return signals


def output_deltas(net: Network, trace: Trace, y: Tensor) -> dict[str, Tensor]:
    """delta_o for every output group from its own loss alone (no signal from its readers)."""
    return {o: local_delta(net, trace, o, dz) for o, dz in loss_signals(net, trace, y).items()}


def error_sweep(
    net: Network, trace: Trace, y: Tensor, feedback: Feedback | None = None
) -> dict[str, Tensor]:
    """The deltas of every group from the total loss: backward_sweep seeded at the outputs.

    Its callers (bp, the feedback rules) take every weight gradient next, so the trace says
    so: a convolution then computes its kernel's gradient with its signal (kinds/conv.py)."""
    trace.cache[WEIGHT_GRADS_FOLLOW] = True
    return backward_sweep(net, trace, {}, feedback, sources=loss_signals(net, trace, y))


def backward_sweep(
    net: Network,
    trace: Trace,
    deltas: dict[str, Tensor],
    feedback: Feedback | None = None,
    stop_at: Iterable[str] = (),
    sources: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Carry error signals from the groups in `deltas` down to every group below them.

    Groups are visited in reverse topological order, so every delta_k of k in outs(j) is
    known before delta_j is formed. Groups already in `deltas` (the output, or signals a rule
    injected) are kept as given; groups in `stop_at` receive no signal from above, which is how
    a rule cuts the sweep at a block boundary. `sources` adds dE/dz_j terms of the loss's own
    (see loss_signals) to what arrives from above.
    """
    feedback = feedback or transpose_feedback(net)
    deltas = dict(deltas)
    blocked = set(stop_at)
    sources = sources or {}
    for j in reversed(net.order):
        if j in deltas or j == net.input_name or j in blocked:
            continue
        incoming = incoming_signal(net, deltas, j, feedback, trace)
        fresh = incoming is not None  # the readers' kinds return new tensors
        if j in sources:
            incoming = sources[j] if incoming is None else incoming.add_(sources[j])
        if incoming is not None:
            deltas[j] = local_delta(net, trace, j, incoming, fresh=fresh)
    return deltas


def incoming_signal(
    net: Network,
    deltas: dict[str, Tensor],
    j: str,
    feedback: Feedback,
    trace: Trace | None = None,
) -> Tensor | None:
    """dE/dz_j as the groups above see it: sum over k in outs(j) of delta_k feedback(j, k)
    for dense readers, and each reader kind's own transport for the others (pooling, masks
    and routing need the forward pass's `trace`).

    Groups in outs(j) without a delta contribute nothing; None when none has one.
    """
    incoming = None
    for k in net.outs(j):
        if k not in deltas:
            continue
        kind = net.kind(k)
        F = feedback(j, k) if kind.weighted and not kind.exact else None
        incoming = kind.signal(net, trace, j, net.groups[k], deltas[k], F, out=incoming)
    return incoming


def weight_updates(
    net: Network, trace: Trace, deltas: dict[str, Tensor], partial: bool = False
) -> dict[str, Tensor]:
    """dE/dW_ij = z_i^T delta_j / N and dE/db_j = sum of delta_j / N for each group in deltas
    (each kind's own gradient for convolutions and capsules).

    Returned in the order of net.parameters(); groups with no delta get zero updates, or no
    entries at all when `partial` (for a rule that assembles its updates from several passes).
    """
    updates: dict[str, Tensor] = {}
    for j in net.order[1:]:
        group, kind = net.groups[j], net.kind(j)
        ins = group.ins if kind.weighted else ()
        if j not in deltas:
            if partial:
                continue
            for i in ins:
                updates[weight_name(i, j)] = torch.zeros_like(net.W[(i, j)])
            if kind.has_bias(group):
                updates[bias_name(j)] = torch.zeros_like(net.b[j])
            continue
        delta = deltas[j]
        for i in ins:
            updates[weight_name(i, j)] = kind.weight_grad(net, trace, i, group, delta)
        if kind.has_bias(group):
            updates[bias_name(j)] = kind.bias_grad(group, delta)
    return updates


def input_signal(
    net: Network,
    deltas: dict[str, Tensor],
    feedback: Feedback | None = None,
    trace: Trace | None = None,
) -> Tensor:
    """The error signal at the input group, dE/dx = sum over k in outs(input) of delta_k W_ik^T
    (per example, like delta), or with `feedback` in W^T's place.

    Training never needs it (the input has no weights below it); a GAN does: the
    discriminator's input signal is the generator's output error.
    """
    feedback = feedback or transpose_feedback(net)
    signal = incoming_signal(net, deltas, net.input_name, feedback, trace)
    if signal is None:
        raise ValueError("no group reading the input has an error signal")
    return signal

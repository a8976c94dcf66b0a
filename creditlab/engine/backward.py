"""The backward sweep, shared by backpropagation and the rules that change its feedback path.

In the derivation's notation:
    output group o:   delta_o = f_o'(s_o) * dE/dz_o
    any other group:  delta_j = f_j'(s_j) * sum over k in outs(j) of delta_k W_jk^T
    weight gradients: dE/dW_ij = z_i^T delta_j, dE/db_j = sum of delta_j over the batch,
                      both divided by the batch size (E is the mean loss over the batch).
Error signals delta are kept per example; the division by the batch size happens once, in
`weight_updates`. A rule that carries errors back along other matrices than W^T (feedback
alignment and its sign-symmetric cousins) passes its own `feedback`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from creditlab.engine.network import Network, Trace, bias_name, weight_name

Tensor = torch.Tensor
# feedback(i, j) gives the (size_j, size_i) matrix that carries delta_j back to group i.
Feedback = Callable[[str, str], Tensor]


def transpose_feedback(net: Network) -> Feedback:
    """Backpropagation's feedback: the forward weights themselves, W_ij^T."""
    return lambda i, j: net.W[(i, j)].t()


def local_delta(net: Network, trace: Trace, j: str, dz: Tensor) -> Tensor:
    """delta_j = f_j'(s_j) * dE/dz_j, counting the dropout gain when the pass used one."""
    group = net.groups[j]
    if group.act.name == "identity":
        delta = dz.clone()
    else:
        f_of_s = trace.undropped.get(j, trace.z[j])
        delta = group.act.df(trace.s[j], f_of_s).mul_(dz)
    if j in trace.gain:
        delta.mul_(trace.gain[j])
    return delta


def output_delta(net: Network, trace: Trace, y: Tensor) -> Tensor:
    """delta_o = dE/ds_o for every example of the batch."""
    o = net.output_name
    return local_delta(net, trace, o, net.loss_fn.dz(trace.z[o], y))


def backward_sweep(
    net: Network,
    trace: Trace,
    deltas: dict[str, Tensor],
    feedback: Feedback | None = None,
    stop_at: Iterable[str] = (),
) -> dict[str, Tensor]:
    """Carry error signals from the groups in `deltas` down to every group below them.

    Groups are visited in reverse topological order, so every delta_k of k in outs(j) is
    known before delta_j is formed. Groups already in `deltas` (the output, or signals a rule
    injected) are kept as given; groups in `stop_at` receive no signal from above, which is how
    a rule cuts the sweep at a block boundary.
    """
    feedback = feedback or transpose_feedback(net)
    deltas = dict(deltas)
    blocked = set(stop_at)
    for j in reversed(net.order):
        if j in deltas or j == net.input_name or j in blocked:
            continue
        incoming = incoming_signal(net, deltas, j, feedback)
        if incoming is not None:
            deltas[j] = local_delta(net, trace, j, incoming)
    return deltas


def incoming_signal(
    net: Network, deltas: dict[str, Tensor], j: str, feedback: Feedback
) -> Tensor | None:
    """dE/dz_j as the groups above see it: sum over k in outs(j) of delta_k feedback(j, k).

    Groups in outs(j) without a delta contribute nothing; None when none has one.
    """
    incoming = None
    for k in net.outs(j):
        if k not in deltas:
            continue
        if incoming is None:
            incoming = deltas[k] @ feedback(j, k)
        else:
            incoming.addmm_(deltas[k], feedback(j, k))
    return incoming


def weight_updates(
    net: Network, trace: Trace, deltas: dict[str, Tensor], partial: bool = False
) -> dict[str, Tensor]:
    """dE/dW_ij = z_i^T delta_j / N and dE/db_j = sum of delta_j / N for each group in deltas.

    Returned in the order of net.parameters(); groups with no delta get zero updates, or no
    entries at all when `partial` (for a rule that assembles its updates from several passes).
    """
    updates: dict[str, Tensor] = {}
    for j in net.order[1:]:
        group = net.groups[j]
        if j not in deltas:
            if partial:
                continue
            for i in group.ins:
                updates[weight_name(i, j)] = torch.zeros_like(net.W[(i, j)])
            updates[bias_name(j)] = torch.zeros_like(net.b[j])
            continue
        delta = deltas[j]
        inv_n = 1.0 / delta.shape[0]
        for i in group.ins:
            # z_i^T delta_j / N as one product: addmm's alpha scales inside the matrix product
            # (beta=0 ignores the placeholder), saving a pass over the (size_i, size_j) result.
            updates[weight_name(i, j)] = torch.addmm(
                delta.new_zeros(()), trace.sent(i).t(), delta, beta=0, alpha=inv_n
            )
        updates[bias_name(j)] = delta.sum(dim=0).mul_(inv_n)
    return updates


def input_signal(
    net: Network, deltas: dict[str, Tensor], feedback: Feedback | None = None
) -> Tensor:
    """The error signal at the input group, dE/dx = sum over k in outs(input) of delta_k W_ik^T
    (per example, like delta), or with `feedback` in W^T's place.

    Training never needs it (the input has no weights below it); a GAN does: the
    discriminator's input signal is the generator's output error.
    """
    feedback = feedback or transpose_feedback(net)
    signal = incoming_signal(net, deltas, net.input_name, feedback)
    if signal is None:
        raise ValueError("no group reading the input has an error signal")
    return signal

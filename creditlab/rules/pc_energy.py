"""Predictive coding on the network's DAG: value nodes, prediction errors, their energy, and
the relaxation that minimises it.

Every hidden group j holds a value node v_j (per example), started at its feedforward activity
z_j. The input group is clamped to the data x (v_input = x). Each group predicts its own value
from the values of the groups it reads:

    s_j = sum over i in ins(j) of v_i W_ij + b_j,    mu_j = f_j(s_j)    (times the dropout gain)
    prediction error eps_j = v_j - mu_j                                  (hidden j)

The output group o has no value node: the loss judges its prediction. Its error is the nudge
the loss asks of it, scaled by the output scale gamma,

    eps_o = -gamma dL/dmu_o

(for mse with gamma = 1 this is y - mu_o: the output clamped to the target, as in Whittington
and Bogacz 2017). The energy, per example, averaged over the batch, is

    F = sum over hidden j of 0.5 ||eps_j||^2 + gamma L(mu_o, y),

and relaxation is gradient descent on F in the value nodes, for T steps at the inference rate,
all groups at once (every group reads the errors of the step before):

    dF/dv_j = eps_j - sum over k in outs(j) of (f_k'(s_k) * eps_k) W_jk^T.

The second term is the backward sweep's incoming signal with d_k = f_k'(s_k) * eps_k in place
of delta_k, so it is computed by the same code (backward.incoming_signal).

The weights then follow dF/dW_ij = v_i^T (dF/ds_j) with dF/ds_j = -f_j'(s_j) * eps_j, a local
product of presynaptic value and postsynaptic error. Divided by gamma and by the batch size it
has the gradient's sign and scale: near the feedforward state (small gamma) eps_j approaches
-gamma dL/dz_j, and the update approaches backpropagation's dL/dW_ij (Whittington and Bogacz
2017; Millidge, Tschantz and Buckley 2020, on arbitrary computation graphs).

The fixed-prediction variant (Millidge et al. 2020) holds every prediction mu_j and slope
f_j'(s_j) at its feedforward value while the values relax; the errors then obey a linear
recurrence whose fixed point is exactly -gamma dL/dz_j, and the weights use the feedforward
activities z_i as presynaptic factor, so the updates converge to backpropagation's. With rate 1
the recurrence is the backward sweep run one group deeper per step: after as many steps as the
longest path to the output it is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from creditlab.engine.backward import incoming_signal, local_delta, transpose_feedback
from creditlab.engine.network import Network, Trace

Tensor = torch.Tensor


@dataclass
class Relaxed:
    """The state relaxation ended in, ready for the weight updates.

    `trace` holds s_j, mu_j (as z, with f_j(s_j) in `undropped` where dropout acted) and, as
    what each group's readers received (`emitted`), the presynaptic activities the weights use.
    `deltas[j]` is dF/ds_j / gamma, the postsynaptic factor of every update into group j.
    """

    trace: Trace
    errors: dict[str, Tensor]  # eps_j for the hidden groups and the output
    deltas: dict[str, Tensor]
    energy: Tensor | None  # F at the final state, mean over the batch (0-dim); None under the
    # fixed-prediction assumption, whose relaxation does not descend F
    energies: list[Tensor] = field(default_factory=list)  # F after 0..T steps, when recorded


def predictions(
    net: Network, values: dict[str, Tensor], clamped: dict[str, Tensor], ff: Trace
) -> Trace:
    """mu_j for every non-input group from the value nodes of the groups it reads.

    `clamped[j]` is b_j + x W_input,j (or b_j alone): the part of s_j that the clamped input
    fixes, computed once per batch. The forward pass's dropout masks stay fixed while the values
    relax, so mu_j = f_j(s_j) * gain_j where the pass dropped units of j.
    """
    x = ff.z[net.input_name]
    s: dict[str, Tensor] = {}
    z: dict[str, Tensor] = {net.input_name: x}
    trace = Trace(s, z, gain=ff.gain, emitted={net.input_name: x, **values})
    for j in net.order[1:]:
        if j not in clamped:  # reads the clamped input alone: its prediction never moves
            s[j], z[j] = ff.s[j], ff.z[j]
            if j in ff.undropped:
                trace.undropped[j] = ff.undropped[j]
            continue
        s_j = clamped[j].clone()
        for i in net.groups[j].ins:
            if i == net.input_name:
                continue  # already in clamped[j]
            s_j.addmm_(values[i], net.W[(i, j)])
        s[j] = s_j
        z[j] = net.groups[j].act.f(s_j)
        if j in ff.gain:
            trace.undropped[j] = z[j]
            z[j] = z[j] * ff.gain[j]
    return trace


def clamped_parts(net: Network, ff: Trace) -> dict[str, Tensor]:
    """b_j + x W_input,j (b_j where j does not read x) for every group that reads a value node.

    Groups that read the input alone are left out: their predictions never move.
    """
    x = ff.z[net.input_name]
    parts = {}
    for j in net.order[1:]:
        ins = net.groups[j].ins
        if ins == [net.input_name]:
            continue
        if net.input_name in ins:
            parts[j] = torch.addmm(net.b[j], x, net.W[(net.input_name, j)])
        else:
            parts[j] = net.b[j].expand(x.shape[0], -1)
    return parts


def output_error(net: Network, trace: Trace, y: Tensor, gamma: float) -> Tensor:
    """eps_o = -gamma dL/dmu_o at the output's current prediction."""
    return net.loss_fn.dz(trace.z[net.output_name], y).mul_(-gamma)


def energy(
    net: Network, trace: Trace, errors: dict[str, Tensor], y: Tensor, gamma: float
) -> Tensor:
    """F = sum over hidden j of 0.5 ||eps_j||^2 + gamma L(mu_o, y), mean over the batch."""
    total = net.loss_fn.per_example(trace.z[net.output_name], y) * gamma
    for j in net.hidden:
        total = total + 0.5 * errors[j].pow(2).sum(dim=1)
    return total.mean()


def relax(
    net: Network,
    ff: Trace,
    y: Tensor,
    steps: int,
    rate: float,
    gamma: float,
    record: bool = False,
) -> Relaxed:
    """Gradient descent on F in the hidden value nodes, from the feedforward state `ff`.

    With `record`, the energy after every step is kept (steps + 1 values, the first the
    feedforward one, gamma times the batch loss).
    """
    hidden = net.hidden
    feedback = transpose_feedback(net)
    values = {j: ff.z[j].clone() for j in hidden}  # relaxed in place; ff stays as it was
    clamped = clamped_parts(net, ff)
    trace = predictions(net, values, clamped, ff)
    errors, d = _errors(net, trace, values, y, gamma)
    energies = [energy(net, trace, errors, y, gamma)] if record else []
    for _ in range(steps):
        # every dF/dv_j comes from this step's errors, so updating v_j in place is safe
        for j in hidden:
            grad = errors[j] - incoming_signal(net, d, j, feedback)
            values[j].add_(grad, alpha=-rate)
        trace = predictions(net, values, clamped, ff)
        errors, d = _errors(net, trace, values, y, gamma)
        if record:
            energies.append(energy(net, trace, errors, y, gamma))
    final = energies[-1] if record else energy(net, trace, errors, y, gamma)
    return Relaxed(trace, errors, _deltas(d, gamma), final, energies)


def relax_fixed_prediction(
    net: Network, ff: Trace, y: Tensor, steps: int, rate: float, gamma: float
) -> Relaxed:
    """Relaxation with every prediction and slope held at its feedforward value.

    eps_j = v_j - z_j then follows eps_j <- (1 - rate) eps_j + rate * sum over k in outs(j) of
    (f_k'(s_k) * eps_k) W_jk^T with eps_o fixed; the weights use the feedforward z_i.
    """
    hidden = net.hidden
    feedback = transpose_feedback(net)
    o = net.output_name
    errors = {o: output_error(net, ff, y, gamma)}
    d = {o: local_delta(net, ff, o, errors[o])}
    slopes = {j: local_delta(net, ff, j, torch.ones_like(ff.s[j])) for j in hidden}
    for j in hidden:
        errors[j] = torch.zeros_like(ff.s[j])
        d[j] = torch.zeros_like(ff.s[j])
    for _ in range(steps):
        incoming = {j: incoming_signal(net, d, j, feedback) for j in hidden}
        for j in hidden:
            errors[j].mul_(1.0 - rate).add_(incoming[j], alpha=rate)
            d[j] = slopes[j] * errors[j]
    return Relaxed(ff, errors, _deltas(d, gamma), None)


def _errors(
    net: Network, trace: Trace, values: dict[str, Tensor], y: Tensor, gamma: float
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """eps_j for every hidden group and the output, and d_j = f_j'(s_j) * eps_j (= -dF/ds_j)."""
    errors = {j: values[j] - trace.z[j] for j in net.hidden}
    errors[net.output_name] = output_error(net, trace, y, gamma)
    d = {j: local_delta(net, trace, j, eps) for j, eps in errors.items()}
    return errors, d


def _deltas(d: dict[str, Tensor], gamma: float) -> dict[str, Tensor]:
    """dF/ds_j / gamma = -d_j / gamma: the gradient-sign postsynaptic factor of the updates."""
    return {j: d_j.mul(-1.0 / gamma) for j, d_j in d.items()}

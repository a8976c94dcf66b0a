"""Dense connections: s_j = sum over i in ins(j) of z_i W_ij + b_j, W_ij of shape (size_i, size_j).

A dense group may read several groups (merges, skip connections) of any shape: it reads them
flat. Its signal to group i is delta_j W_ij^T, or delta_j B with a rule's B in W_ij^T's place.
"""

from __future__ import annotations

import torch

from creditlab.engine.activations import ACTIVATIONS
from creditlab.engine.kinds.base import Kind, RandomGraph, random_biases
from creditlab.engine.losses import LOSSES

Tensor = torch.Tensor


def random_dag(net, rng, loss: str, activations: list[str], n_hidden: int = 4) -> None:
    """A small random DAG: groups read 1-3 earlier groups; the output reads every group that
    nobody else reads, so each group feeds one or more others."""
    groups = [net.input(rng.randint(2, 5))]
    for k in range(n_hidden):
        ins = rng.sample(groups, rng.randint(1, min(3, len(groups))))
        groups.append(
            net.dense(ins, rng.randint(2, 5), activation=activations[k % len(activations)])
        )
    read = {i for g in groups for i in g.ins}
    ins = [g for g in groups[1:] if g.name not in read]
    extra = [g for g in groups if g not in ins]
    ins += rng.sample(extra, min(len(extra), rng.randint(0, 2)))
    out_act = "identity" if loss != "mse" else rng.choice(activations)
    out = net.dense(ins, rng.randint(2, 4), activation=out_act, name="out")
    net.output(out, loss=loss)
    random_biases(net, 1.0)


def _dag_of_trial(net, rng, loss: str, trial: int) -> None:
    """Trial t's DAG: every loss, and the activations rotated by t (every one is hidden and,
    under mse, the output's)."""
    names = list(ACTIVATIONS)
    shift = trial % len(names)
    random_dag(net, rng, loss, names[shift:] + names[:shift])


class Dense(Kind):
    name = "dense"
    many_inputs = True
    options = {}  # the size and the groups read are the builder's own arguments
    random_graph = RandomGraph(
        "loss={variant}",
        _dag_of_trial,
        lambda trial: list(LOSSES),
    )

    def reference(self, net, group, inputs, W, b, labels):
        s = sum(z_i @ W[i] for i, z_i in zip(group.ins, inputs, strict=True))
        return s if b is None else s + b

    def shape(self, net, group):
        return group.shape  # (size,), or the image shape it was given: stored flat either way

    def weight_shape(self, net, i, group):
        return (net.groups[i].size, group.size)

    def fans(self, net, group):
        return sum(net.groups[i].size for i in group.ins), group.size

    def forward(self, net, group, trace, inputs):
        j = group.name
        first, *rest = group.ins
        b = net.b.get(j)  # None for a group built without a bias
        if b is None:
            s_j = inputs[0] @ net.W[(first, j)]
        else:
            s_j = torch.addmm(b, inputs[0], net.W[(first, j)])
        for i, z_i in zip(rest, inputs[1:], strict=True):
            s_j.addmm_(z_i, net.W[(i, j)])
        return s_j

    def tangent(self, net, group, trace, inputs, dinputs, dW, db):
        # ds_j = sum over i of (dz_i W_ij + z_i dW_ij) + db_j
        j, ds = group.name, None
        if db is not None:
            ds = db.expand(inputs[0].shape[0], -1).clone()
        for i, z_i, dz_i, dW_ij in zip(group.ins, inputs, dinputs, dW, strict=True):
            for a, b in ((dz_i, net.W[(i, j)]), (z_i, dW_ij)):
                if a is not None and b is not None:
                    ds = a @ b if ds is None else ds.addmm_(a, b)
        return ds

    def feedback_view(self, W):
        return W.t()

    def signal(self, net, trace, i, group, delta, F, out=None):
        if out is None:
            return delta @ F
        return out.addmm_(delta, F)

    def weight_grad(self, net, trace, i, group, delta):
        # z_i^T delta_j / N as one product: addmm's alpha scales inside the matrix product
        # (beta=0 ignores the placeholder), saving a pass over the (size_i, size_j) result.
        return torch.addmm(
            delta.new_zeros(()), trace.sent(i).t(), delta, beta=0, alpha=1.0 / delta.shape[0]
        )

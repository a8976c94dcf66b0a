"""Dense connections: s_j = sum over i in ins(j) of z_i W_ij + b_j, W_ij of shape (size_i, size_j).

A dense group may read several groups (merges, skip connections) of any shape: it reads them
flat. Its signal to group i is delta_j W_ij^T, or delta_j B with a rule's B in W_ij^T's place.
"""

from __future__ import annotations

import torch

from creditlab.engine.kinds.base import Kind

Tensor = torch.Tensor


class Dense(Kind):
    name = "dense"
    many_inputs = True

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

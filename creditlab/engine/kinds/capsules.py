"""Capsules (Sabour, Frosst and Hinton 2017): groups of shape (n, d), n capsules of d numbers
each, whose activation is the squash v = s |s| / (1 + |s|^2) of each capsule's vector.

Primary capsules: a convolution with types * dim output channels, regrouped so that each
position of each type is one capsule of `dim` numbers (channels t*dim .. (t+1)*dim - 1 at one
position form capsule (t, y, x)). Forward, signal and gradient are the convolution's, through
the regrouping (a permutation).

Routed capsules: every child capsule i predicts every parent j, u_hat_j|i = W_ij u_i (W of shape
(n_i, n_j, d_j, d_i), no bias), and r iterations of routing by agreement combine them:
    b_ij = 0
    repeat r times:  c_ij = softmax over the parents j of b_ij
                     s_j = sum over i of c_ij u_hat_j|i,   v_j = squash(s_j)
                     b_ij += u_hat_j|i . v_j               (not after the last iteration)
The group's s is the last s_j, and its activation squashes it. The signal back goes through
u_hat: dE/du_i = sum over j of W_ij^T dE/du_hat_j|i (a rule's stand-in in W's place), and
dE/dW_ij = sum over the batch of dE/du_hat_j|i u_i^T / N.

dE/du_hat is exact through every routing iteration by default: the couplings c depend on u_hat
through the agreements, and the sweep below differentiates the loop backwards (softmax,
squash and dot products). With routing_gradient=False the couplings are treated as constants,
dE/du_hat_j|i = c_ij dE/ds_j, as several published implementations do (they detach c).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from creditlab.engine.activations import squash, squash_vjp
from creditlab.engine.kinds.base import (
    Kind,
    KindOption,
    RandomGraph,
    accumulate,
    bilinear_tangent,
    capsules_of,
    random_biases,
)
from creditlab.engine.kinds.conv import (
    conv_forward,
    conv_geometry,
    conv_output,
    conv_signal,
    conv_weight_grad,
)

Tensor = torch.Tensor


def reference_squash(s: Tensor) -> Tensor:
    """The squash, written plainly for the references: |s|^2 / (1 + |s|^2) s / |s|."""
    norm = s.norm(dim=-1, keepdim=True)
    return norm**2 / (1 + norm**2) * s / norm


def random_capsule_graph(net, rng, mode: str = "exact", trial: int = 0) -> None:
    """A small random capsule network: conv, primary capsules, routed capsules (1-3 routing
    iterations; mode "exact" differentiates through the routing, "constant-c" holds the
    couplings constant) with a margin output, and a mask read by a decoder with a weighted
    reconstruction output."""
    side = rng.randint(5, 6)
    x = net.input((1, side, side))
    c = net.conv(x, rng.randint(2, 3), kernel=2, activation="tanh")
    pc = net.primary_capsules(
        c, types=rng.randint(1, 2), dim=rng.randint(2, 3), kernel=2, stride=rng.randint(1, 2)
    )
    dc = net.capsules(
        pc,
        n=rng.randint(2, 3),
        dim=rng.randint(2, 4),
        routing=rng.randint(1, 3),
        routing_gradient=mode == "exact",
    )
    net.output(dc, loss="margin")
    m = net.mask(dc)
    r = net.dense(net.dense(m, 4, activation="tanh"), side * side, activation="sigmoid")
    net.output(r, loss="reconstruction", weight=0.5)
    random_biases(net)
    # Larger transformations than the initial ones, so that capsules reach the margins' range.
    for key, W in net.W.items():
        if net.groups[key[1]].kind == "capsules":
            W.mul_(8.0)


# Both routing modes in every trial; the input is an image in [0, 1], the reconstruction's
# target.
CAPSULE_GRAPH = RandomGraph(
    "capsules {variant}",
    random_capsule_graph,
    lambda trial: ["exact", "constant-c"],
    unit_input=True,
)


class PrimaryCapsules(Kind):
    name = "primary_capsules"
    options = {
        "types": KindOption(int, minimum=1, help="capsule types (maps of capsules)"),
        "dim": KindOption(int, minimum=1, help="numbers per capsule"),
        "kernel": KindOption(int, 9, minimum=1),
        "stride": KindOption(int, 2, minimum=1),
        "padding": KindOption(int, 0, minimum=0),
    }
    random_graph = CAPSULE_GRAPH

    def reference(self, net, group, inputs, W, b, labels):
        (i,) = group.ins
        u = inputs[0].view(-1, *net.groups[i].shape)
        o = group.options
        s = F.conv2d(u, W[i], b, o["stride"], o["padding"])
        n, _, h, w = s.shape
        return s.view(n, o["types"], o["dim"], h, w).permute(0, 1, 3, 4, 2)

    def _conv_shape(self, net, group) -> tuple[int, int, int]:
        o = group.options
        return conv_output(net, group, o["types"] * o["dim"])

    def shape(self, net, group):
        _channels, h, w = self._conv_shape(net, group)
        return (group.options["types"] * h * w, group.options["dim"])

    def weight_shape(self, net, i, group):
        c, _, _, k, _, _ = conv_geometry(net, group)
        return (group.options["types"] * group.options["dim"], c, k, k)

    def bias_shape(self, group):
        return (group.options["types"] * group.options["dim"],)

    def fans(self, net, group):
        c, _, _, k, _, _ = conv_geometry(net, group)
        return c * k * k, group.options["types"] * group.options["dim"] * k * k

    def _to_capsules(self, group, maps: Tensor) -> Tensor:
        """(N, T*D, H, W) -> (N, T*H*W*D) in capsule order (t, y, x, d)."""
        n, _, h, w = maps.shape
        t, d = group.options["types"], group.options["dim"]
        return maps.reshape(n, t, d, h, w).permute(0, 1, 3, 4, 2).reshape(n, -1)

    def _to_maps(self, net, group, flat: Tensor) -> Tensor:
        """The inverse of _to_capsules."""
        _, h, w = self._conv_shape(net, group)
        t, d = group.options["types"], group.options["dim"]
        n = flat.shape[0]
        return flat.reshape(n, t, h, w, d).permute(0, 1, 4, 2, 3).reshape(n, t * d, h, w)

    def forward(self, net, group, trace, inputs):
        (i,), j = group.ins, group.name
        x = inputs[0].reshape(-1, *net.groups[i].shape)
        _, _, _, _, stride, pad = conv_geometry(net, group)
        return self._to_capsules(group, conv_forward(x, net.W[(i, j)], net.b[j], stride, pad))

    def tangent(self, net, group, trace, inputs, dinputs, dW, db):
        (i,), j = group.ins, group.name
        shape = net.groups[i].shape
        x = inputs[0].reshape(-1, *shape)
        dx = None if dinputs[0] is None else dinputs[0].reshape(-1, *shape)
        _, _, _, _, stride, pad = conv_geometry(net, group)
        ds = bilinear_tangent(
            lambda x_, W_, b_: conv_forward(x_, W_, b_, stride, pad),
            x,
            dx,
            net.W[(i, j)],
            dW[0],
            db,
        )
        return None if ds is None else self._to_capsules(group, ds)

    def signal(self, net, trace, i, group, delta, F, out=None):
        _, _, _, _, stride, pad = conv_geometry(net, group)
        back = conv_signal(self._to_maps(net, group, delta), F, net.groups[i].shape, stride, pad)
        return accumulate(out, back.reshape(delta.shape[0], -1))

    def weight_grad(self, net, trace, i, group, delta):
        _, _, _, _, stride, pad = conv_geometry(net, group)
        x = trace.sent(i).reshape(-1, *net.groups[i].shape)
        d = self._to_maps(net, group, delta)
        W = net.W[(i, group.name)]
        return conv_weight_grad(x, d, W, stride, pad).mul_(1.0 / delta.shape[0])

    def bias_grad(self, group, delta):
        # Channel t*D + d is number d of every capsule of type t: sum over batch and positions.
        t, d = group.options["types"], group.options["dim"]
        per_channel = delta.reshape(delta.shape[0], t, -1, d).sum(dim=(0, 2)).reshape(t * d)
        return per_channel.mul_(1.0 / delta.shape[0])


def softmax_vjp(c: Tensor, dc: Tensor, dim: int) -> Tensor:
    """dE/db for c = softmax(b) over `dim`: c * (dc - sum of c dc)."""
    return c * (dc - (c * dc).sum(dim=dim, keepdim=True))


def weighted_sum(c: Tensor, u_hat: Tensor) -> Tensor:
    """sum over i of c_ij u_hat_j|i: (N, n_j, n_i) and (N, n_j, n_i, d) -> (N, n_j, d), as one
    batched matrix product (no copies)."""
    return (c.unsqueeze(2) @ u_hat).squeeze(2)


def agreement(u_hat: Tensor, v: Tensor) -> Tensor:
    """u_hat_j|i . v_j: (N, n_j, n_i, d) and (N, n_j, d) -> (N, n_j, n_i)."""
    return (u_hat @ v.unsqueeze(3)).squeeze(3)


class RoutedCapsules(Kind):
    name = "capsules"
    biased = False
    options = {
        "n": KindOption(int, minimum=1, help="capsules"),
        "dim": KindOption(int, minimum=1, help="numbers per capsule"),
        "routing": KindOption(int, 3, minimum=1, help="iterations of routing by agreement"),
        "routing_gradient": KindOption(
            bool, True, help="differentiate through the routing (False: couplings constant)"
        ),
    }
    random_graph = CAPSULE_GRAPH

    def exact_gradient(self, group):
        return group.options["routing_gradient"]  # False: the couplings held constant

    def reference(self, net, group, inputs, W, b, labels):
        (i,) = group.ins
        u = inputs[0].view(-1, *net.groups[i].shape)
        o = group.options
        u_hat = torch.einsum("ijdk,nik->nijd", W[i], u)
        b_ij = torch.zeros(u_hat.shape[:3], dtype=u.dtype)
        for t in range(o["routing"]):
            c = torch.softmax(b_ij, dim=2)
            if not o["routing_gradient"]:
                c = c.detach()
            s = (c.unsqueeze(3) * u_hat).sum(dim=1)
            if t + 1 < o["routing"]:
                b_ij = b_ij + (u_hat * reference_squash(s).unsqueeze(1)).sum(dim=3)
        return s

    def shape(self, net, group):
        (i,) = group.ins
        capsules_of(net, i, group)
        return (group.options["n"], group.options["dim"])

    def weight_shape(self, net, i, group):
        n_i, d_i = capsules_of(net, i, group)
        return (n_i, group.options["n"], group.options["dim"], d_i)

    def fans(self, net, group):
        (i,) = group.ins
        n_i, d_i = net.groups[i].shape
        return n_i * d_i, group.options["n"] * group.options["dim"]

    def forward(self, net, group, trace, inputs):
        # Kept parent-major, u_hat (N, n_j, n_i, d_j) and c (N, n_j, n_i), so that the sums
        # over children are batched matrix products without copies.
        (i,), j = group.ins, group.name
        u = inputs[0].reshape(-1, *net.groups[i].shape)  # (N, n_i, d_i)
        u_hat = torch.einsum("ijdk,nik->njid", net.W[(i, j)], u)
        b = u_hat.new_zeros(u_hat.shape[:3])
        couplings, sums, outs = [], [], []
        rounds = group.options["routing"]
        for t in range(rounds):
            c = torch.softmax(b, dim=1)  # over the parents j
            s = weighted_sum(c, u_hat)
            couplings.append(c)
            if t + 1 < rounds:
                v = squash(s)
                b = b + agreement(u_hat, v)
                sums.append(s)
                outs.append(v)
        trace.cache[j] = {"u_hat": u_hat, "c": couplings, "s": sums, "v": outs, "du_hat": None}
        return s.reshape(u.shape[0], -1)

    def tangent(self, net, group, trace, inputs, dinputs, dW, db):
        # The routing loop run forward in tangents (softmax's and squash's Jacobians are
        # symmetric, so their vjp functions serve); with routing_gradient=False the couplings
        # are constants, as on the way back.
        (i,), j = group.ins, group.name
        (du,), (dW_ij,) = dinputs, dW
        if du is None and dW_ij is None:
            return None
        memo = trace.cache[j]
        u_hat, cs, ss, vs = memo["u_hat"], memo["c"], memo["s"], memo["v"]
        u = inputs[0].reshape(-1, *net.groups[i].shape)
        du_hat = torch.zeros_like(u_hat)
        if du is not None:
            du_hat += torch.einsum("ijdk,nik->njid", net.W[(i, j)], du.reshape(u.shape))
        if dW_ij is not None:
            du_hat += torch.einsum("ijdk,nik->njid", dW_ij, u)
        d_b = torch.zeros_like(cs[0])
        for t, c in enumerate(cs):
            ds = weighted_sum(c, du_hat)
            if not group.options["routing_gradient"]:
                continue
            ds += weighted_sum(softmax_vjp(c, d_b, dim=1), u_hat)
            if t + 1 < len(cs):
                d_v = squash_vjp(ss[t], vs[t], ds)
                d_b = d_b + agreement(du_hat, vs[t]) + agreement(u_hat, d_v)
        return ds.reshape(u.shape[0], -1)

    def _du_hat(self, trace, group, delta: Tensor) -> Tensor:
        """dE/du_hat from delta_j = dE/ds_j, once per delta (signal and gradient share it)."""
        memo = trace.cache[group.name]
        if memo["du_hat"] is not None and memo["du_hat"][0] is delta:
            return memo["du_hat"][1]
        u_hat, cs, ss, vs = memo["u_hat"], memo["c"], memo["s"], memo["v"]
        g_s = delta.reshape(-1, *group.shape)  # (N, n_j, d_j)
        g_u = cs[-1].unsqueeze(3) * g_s.unsqueeze(2)
        if group.options["routing_gradient"] and len(cs) > 1:
            # b after iteration t is the sum of the agreements a_0 .. a_t; walk the loop back.
            g_b = softmax_vjp(cs[-1], agreement(u_hat, g_s), dim=1)
            for t in range(len(cs) - 2, -1, -1):
                # a_t = u_hat . v_t, so dE/da_t = dE/db after iteration t = g_b.
                g_u += g_b.unsqueeze(3) * vs[t].unsqueeze(2)
                g_v = weighted_sum(g_b, u_hat)
                g_st = squash_vjp(ss[t], vs[t], g_v)
                g_u += cs[t].unsqueeze(3) * g_st.unsqueeze(2)
                if t > 0:  # the first couplings are uniform: b starts at 0
                    g_b = g_b + softmax_vjp(cs[t], agreement(u_hat, g_st), dim=1)
        memo["du_hat"] = (delta, g_u)
        return g_u

    def signal(self, net, trace, i, group, delta, F, out=None):
        g_u = self._du_hat(trace, group, delta)
        back = torch.einsum("njid,ijdk->nik", g_u, F).reshape(delta.shape[0], -1)
        return accumulate(out, back)

    def weight_grad(self, net, trace, i, group, delta):
        g_u = self._du_hat(trace, group, delta)
        u = trace.sent(i).reshape(-1, *net.groups[i].shape)
        return torch.einsum("njid,nik->ijdk", g_u, u).mul_(1.0 / delta.shape[0])

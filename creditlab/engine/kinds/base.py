"""What a kind of connection is: how group j's net input s_j is formed from the groups it reads,
the error signal it carries back to them, and the gradient of its parameters.

Every activity is stored flat, (N, size) per batch, whatever the group's shape per example (a
vector (n,), an image (C, H, W) or capsules (n, d)); a kind views it in its shape where it
needs to. In the derivation's notation, for a connection i -> j of this kind:
    forward:    s_j = K(z_i; W_ij) + b_j                 (summed over i for dense)
    tangent:    ds_j = K(dz_i; W_ij) + K(z_i; dW_ij) + db_j   (K is linear in z and in W)
    signal:     dE/dz_i += K^T(delta_j; F)               F = W_ij, or a rule's stand-in
    gradient:   dE/dW_ij = sum over the batch of dK/dW(z_i, delta_j) / N
The stand-in F has the shape of `feedback_view(W_ij)`: W_ij^T for dense (the matrix of the
derivation's delta_k W_jk^T), the kernel or transformation itself for the other kinds. A kind
with no parameters (pooling, mask) carries its signal exactly; no rule can change it.
"""

from __future__ import annotations

from typing import Any

import torch

from creditlab.errors import GraphError, UsageError

Tensor = torch.Tensor
# Set in a trace's cache by a sweep whose caller computes every weight gradient next (bp and
# the feedback rules): a kind may then compute its gradient with its signal, in one kernel call.
WEIGHT_GRADS_FOLLOW = "weight_grads_follow"


class Kind:
    name = ""
    weighted = True  # each connection i -> j has a W_ij
    biased = True  # the group has a bias b_j
    many_inputs = False  # may read several groups (dense only)
    # The signal back is always the kind's own, with its own parameters: no rule puts a
    # stand-in in their place (batch norm; the parameter-free kinds carry theirs exactly).
    exact = False

    def has_bias(self, group: Any) -> bool:
        """Whether group j has a bias b_j: the kind's, unless the group was built without."""
        return self.biased and group.options.get("bias", True)

    def initial_weight(self, net: Any, i: str, group: Any, shape: tuple[int, ...]):
        """W_ij's initial value where the kind fixes it (batch norm's gamma = 1); None for a
        random draw (Glorot or He)."""
        return None

    def initial_buffers(self, net: Any, group: Any) -> dict[str, Tensor]:
        """The group's non-trained state by name (batch norm's running statistics)."""
        return {}

    def shape(self, net: Any, group: Any) -> tuple[int, ...]:
        """Group j's shape per example, checking what it reads (GraphError naming j)."""
        raise NotImplementedError

    def weight_shape(self, net: Any, i: str, group: Any) -> tuple[int, ...]:
        raise NotImplementedError

    def bias_shape(self, group: Any) -> tuple[int, ...]:
        return (group.size,)

    def fans(self, net: Any, group: Any) -> tuple[int, int]:
        """(fan_in, fan_out) for Glorot and He initialisation."""
        raise NotImplementedError

    def forward(self, net: Any, group: Any, trace: Any, inputs: list[Tensor]) -> Tensor:
        """s_j, (N, size_j), from the activities the group reads (in the order of group.ins)."""
        raise NotImplementedError

    def tangent(
        self,
        net: Any,
        group: Any,
        trace: Any,
        inputs: list[Tensor],
        dinputs: list[Tensor | None],
        dW: list[Tensor | None],
        db: Tensor | None,
    ) -> Tensor | None:
        """ds_j, the forward pass's derivative along a tangent (dz_i, dW_ij, db_j), for the
        forward tangent sweep (engine/tangent.py); None entries are zero tangents, and None
        comes back when all are. `inputs` are the z_i the forward pass read."""
        raise UsageError(
            f"group {group.name!r} is a {self.name} group, which has no forward tangent (the "
            "tangent sweep, and the forward-gradient rule fg, cannot go through it)"
        )

    def feedback_view(self, W: Tensor) -> Tensor:
        """W_ij as it is used on the way back; a rule's stand-in has this shape."""
        return W

    def signal(
        self,
        net: Any,
        trace: Any,
        i: str,
        group: Any,
        delta: Tensor,
        F: Tensor | None,
        out: Tensor | None = None,
    ) -> Tensor:
        """dE/dz_i carried back from delta_j with F in W's place; added into `out` if given."""
        raise NotImplementedError

    def weight_grad(self, net: Any, trace: Any, i: str, group: Any, delta: Tensor) -> Tensor:
        """dE/dW_ij = (sum over the batch) / N."""
        raise NotImplementedError

    def bias_grad(self, group: Any, delta: Tensor) -> Tensor:
        return delta.sum(dim=0).mul_(1.0 / delta.shape[0])


def accumulate(out: Tensor | None, value: Tensor) -> Tensor:
    return value if out is None else out.add_(value)


def bilinear_tangent(forward, x, dx, W, dW, db) -> Tensor | None:
    """The tangent of s = forward(x, W, b) for a forward linear in x, in W and in b:
    ds = forward(dx, W, db) + forward(x, dW, 0); zero parts (None) are skipped."""
    ds = None
    if dx is not None:
        ds, db = forward(dx, W, db), None
    if dW is not None:
        ds, db = accumulate(ds, forward(x, dW, db)), None
    if db is not None:  # the bias alone: its broadcast over the positions
        ds = forward(torch.zeros_like(x), W, db)
    return ds


def image_of(net: Any, i: str, group: Any) -> tuple[int, int, int]:
    """The (C, H, W) shape of the group that `group` reads, or a GraphError naming both."""
    shape = net.groups[i].shape
    if len(shape) != 3:
        raise GraphError(
            f"group {group.name!r} ({group.kind}) reads {i!r}, which has shape {shape}; "
            "it needs an image (C, H, W): give the input a shape, e.g. net.input((1, 28, 28))"
        )
    return shape


def capsules_of(net: Any, i: str, group: Any) -> tuple[int, int]:
    """The (n, d) shape of the capsule group that `group` reads, or a GraphError."""
    shape = net.groups[i].shape
    if len(shape) != 2 or net.groups[i].act is None or net.groups[i].act.name != "squash":
        raise GraphError(
            f"group {group.name!r} ({group.kind}) reads {i!r}, which has shape {shape} and is "
            "not a capsule group; it needs capsules (n, d) from primary_capsules or capsules"
        )
    return shape


def out_size(n: int, kernel: int, stride: int, padding: int, group: str, axis: str) -> int:
    """Output length along one axis of a convolution or pooling, or a GraphError."""
    if n + 2 * padding < kernel:
        raise GraphError(
            f"the kernel of group {group!r} ({kernel}) is larger than its input's {axis} "
            f"({n}, padding {padding})"
        )
    return (n + 2 * padding - kernel) // stride + 1

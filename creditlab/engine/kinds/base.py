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

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from creditlab.errors import GraphError, UsageError

Tensor = torch.Tensor
# Set in a trace's cache by a sweep whose caller computes every weight gradient next (bp and
# the feedback rules): a kind may then compute its gradient with its signal, in one kernel call.
WEIGHT_GRADS_FOLLOW = "weight_grads_follow"

# Every kind by name, one instance each: a Kind subclass that sets `name` registers itself
# when its module is imported (kinds/__init__.py imports every module of the package).
KINDS: dict[str, Kind] = {}

REQUIRED = object()  # an option's default when the builder must be given a value


@dataclass(frozen=True)
class KindOption:
    """One option of a kind (kernel, stride, ...): its type, default and what it accepts.

    `default` may be REQUIRED, a value, or a function of the options before it (pooling's
    stride defaults to its kernel). Integers must be >= `minimum`; `choices` lists the valid
    values of a string, and `label` names it in messages ("unknown pooling 'median'")."""

    type: type
    default: Any = REQUIRED
    minimum: int | None = None
    choices: tuple[str, ...] | None = None
    label: str = ""
    help: str = ""
    # Further checks of a value: check(key, value, group) raises a UsageError naming both.
    check: Callable[[str, Any, str], None] | None = None


@dataclass(frozen=True)
class RandomGraph:
    """A family of small random float64 networks that gradcheck (checks/gradcheck.py) checks
    the engine's backward sweep on, against autograd over the kinds' references and against
    finite differences. `build(net, rng, variant, trial)` builds one into the empty `net`
    (outputs included), drawing from `rng`; trial t is checked once per variant in
    `variants(t)`. Several kinds may share one family (pooling appears in the convolutions'
    graphs)."""

    case: str  # how gradcheck names a check, "{variant}" filled in ("conv", "capsules exact")
    build: Callable[[Any, random.Random, str, int], None]
    variants: Callable[[int], list[str]] = lambda trial: [""]
    # Whether the input is an image in [0, 1] (a reconstruction's target): gradcheck then
    # passes its random batch through a sigmoid.
    unit_input: bool = False


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

    # The options a group of this kind takes, in the builder's order; None: not declared.
    options: ClassVar[dict[str, KindOption] | None] = None
    # The random networks gradcheck checks this kind in; None: not declared.
    random_graph: ClassVar[RandomGraph | None] = None

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if "name" in vars(cls) and cls.name:  # (a subclass that keeps its parent's name
            KINDS[cls.name] = cls()  # does not replace it)

    def check_options(self, given: dict[str, Any], group: str) -> dict[str, Any]:
        """The group's options, every one checked against the schema and unset ones filled
        with their defaults; GraphError or UsageError naming the group otherwise."""
        schema = self.options or {}
        unknown = sorted(set(given) - set(schema))
        if unknown:
            valid = ", ".join(schema) or "none"
            raise GraphError(
                f"group {group!r} ({self.name}) has no option(s) {', '.join(unknown)}; "
                f"valid: {valid}"
            )
        options: dict[str, Any] = {}
        for key, option in schema.items():
            value = given.get(key, REQUIRED)
            if value is REQUIRED or (value is None and callable(option.default)):
                value = option.default(options) if callable(option.default) else option.default
            if value is REQUIRED:
                raise GraphError(f"group {group!r} ({self.name}) needs option {key!r}")
            options[key] = _checked(key, option, value, group)
        return options

    def exact_gradient(self, group: Any) -> bool:
        """Whether the backward sweep through this group is the loss's exact gradient (False
        where the kind holds something constant on the way back by design; gradcheck then
        checks it against autograd over its reference alone, not finite differences)."""
        return True

    def reference(
        self,
        net: Any,
        group: Any,
        inputs: list[Tensor],
        W: dict[str, Tensor],
        b: Tensor | None,
        labels: Tensor | None,
    ) -> Tensor:
        """s_j written with torch.nn.functional: the independent forward pass that gradcheck
        runs autograd over. `inputs`: the activities z_i of the groups it reads (in the order
        of group.ins), flat (N, size_i); `W`: W_ij by i; `b`: b_j (None without a bias);
        `labels`: the batch's targets (for kinds that read them while training). Any shape
        of N rows. Written apart from `forward`, so that a mistake in one cannot hide behind
        the other."""
        raise NotImplementedError(
            f"kind {self.name!r} declares no reference forward (Kind.reference); "
            "see docs/writing-a-kind.md"
        )

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


def _checked(key: str, option: KindOption, value: Any, group: str) -> Any:
    if option.check is not None:
        option.check(key, value, group)
    if option.type is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{key} must be True or False, got {value!r}")
    elif option.type is int:
        low = option.minimum if option.minimum is not None else -(2**63)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise GraphError(
                f"{key} of group {group!r} must be an integer >= {option.minimum}, got {value!r}"
            )
    elif option.choices is not None and value not in option.choices:
        raise UsageError(
            f"unknown {option.label or key} {value!r}; valid: {', '.join(option.choices)}"
        )
    elif not isinstance(value, option.type):
        raise GraphError(
            f"{key} of group {group!r} must be a {option.type.__name__}, got {value!r}"
        )
    return value


def random_biases(net: Any, scale: float = 0.5) -> None:
    """Nonzero biases for a random graph (gradcheck): they exercise dE/db and keep s off the
    kinks of relu and its kin (where finite differences see half slopes)."""
    for bias in net.b.values():
        drawn = torch.randn(
            bias.shape, generator=torch.Generator().manual_seed(net.seed), dtype=bias.dtype
        )
        bias.copy_(drawn * scale if scale != 1.0 else drawn)


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

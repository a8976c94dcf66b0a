"""Feedback matrices: the machinery shared by feedback alignment and its relatives.

These rules keep backpropagation's forward pass and its output error delta_o = dE/ds_o, and
change only the way errors travel down: a matrix B_jk of W_jk^T's shape (size_k, size_j) carries
delta_k back to group j, so delta_j = f_j'(s_j) * sum over k in outs(j) of delta_k B_jk. For
convolutions and capsules B has the kernel's or the transformation's shape, and the connection's
kind uses it in W's place (engine/kinds/); the rules here need no code of their own for them.

- fa (Lillicrap et al. 2016): B_jk random, drawn once and never trained;
- usf, brsf, frsf (Liao, Leibo and Poggio 2016): B_jk = M_jk o sign(W_jk)^T, sign-concordant
  with the current forward weights, with magnitudes M all ones (usf), redrawn every batch (brsf)
  or drawn once (frsf);
- dfa (Nokland 2016) sends delta_o straight to every hidden group through one B_j per group.

Only connections out of a hidden group carry a signal: the input group receives no delta, so
W[input->j] has no feedback matrix. Random matrices come from CPU generators seeded by the
network's seed and the matrix's name (as the network draws its weights), so a seed gives the
same matrices on any device, in any dtype, whatever order the groups were built in.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable
from typing import ClassVar

import torch

from creditlab.engine.backward import error_sweep, weight_updates
from creditlab.engine.network import Network, weight_name
from creditlab.errors import UsageError
from creditlab.rules.base import Option, Rule
from creditlab.rules.machinery.signals import SweepSignals, lookup
from creditlab.rules.machinery.stacking import StackedRule

Tensor = torch.Tensor
DISTRIBUTIONS = ("uniform", "normal")

SIGN_SCALE_HELP = "||B||_F as a multiple of ||W||_F, at every step (> 0)"


def scale_option(default: float, help: str = SIGN_SCALE_HELP) -> Option:
    return Option(float, default, help)


def distribution_option() -> Option:
    return Option(
        str,
        "uniform",
        "distribution of the random feedback entries (its standard deviation is fixed by "
        "`scale` and the forward initialisation)",
        DISTRIBUTIONS,
    )


def positive(rule: Rule, key: str) -> float:
    """The option `key` of `rule`, checked to be a finite number above zero."""
    value = rule.opts[key]
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"option {rule.name}.{key} must be a finite number > 0, got {value!r}")
    return value


def seed_for(net: Network, salt: str, key: str) -> int:
    """A seed for the matrix `key` of a rule (`salt`), derived from the network's seed."""
    return net.seed * 1_000_003 + zlib.crc32(f"{salt}/{key}".encode())


def random_matrix(
    net: Network, shape: tuple[int, int], std: float, distribution: str, seed: int
) -> Tensor:
    """A matrix of independent entries with mean 0 and standard deviation `std`."""
    generator = torch.Generator().manual_seed(seed)
    if distribution == "uniform":  # uniform on [-a, a] has std a / sqrt(3)
        m = torch.rand(shape, generator=generator, dtype=torch.float64).mul_(2).sub_(1)
        m.mul_(std * math.sqrt(3.0))
    else:
        m = torch.randn(shape, generator=generator, dtype=torch.float64).mul_(std)
    return m.to(net.device, net.dtype)


def feedback_connections(net: Network) -> list[tuple[str, str]]:
    """The connections (i, j) whose feedback carries a signal: i is not the input group, and
    the connection has weights (pooling, masks, additions and batch norm carry their signal
    exactly)."""
    return [
        (i, j)
        for j in net.order
        if net.kind(j).weighted and not net.kind(j).exact
        for i in net.groups[j].ins
        if i != net.input_name
    ]


def transposed_shape(net: Network, i: str, j: str) -> tuple[int, ...]:
    """The shape of the tensor in W_ij's place on the way back: W_ij^T's, (size_j, size_i),
    for dense connections; the kernel's or transformation's own for the other kinds."""
    return tuple(net.feedback_view(i, j).shape)


def check_fits(rule: str, what: str, entries: int, net: Network) -> None:
    """Refuse, before allocating, tensors of `entries` numbers that would not fit in the free
    memory of the network's device (counting the float64 draw they are made from)."""
    need = entries * (8 + torch.finfo(net.dtype).bits // 8)
    if net.device.type == "cuda":
        free = torch.cuda.mem_get_info(net.device)[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > free // 2:
        raise UsageError(
            f"rule {rule!r} would need {need / 2**30:.1f} GiB for {what} ({entries:,} "
            f"numbers); {free / 2**30:.1f} GiB are free on {net.device}. Use a smaller network "
            "or another rule."
        )


class FixedMatrices:
    """Named matrices drawn once for a network, lazily, and kept in the rule's state.

    `shapes(net)` names the matrices and their shapes; `draw(net, key, shape)` draws one. A
    state loaded before the first use (a resumed run) replaces the draw; its names and shapes
    are checked against the network then.
    """

    def __init__(
        self,
        rule: str,
        shapes: Callable[[Network], dict[str, tuple[int, int]]],
        draw: Callable[[Network, str, tuple[int, int]], Tensor],
    ):
        self.rule, self.shapes, self.draw = rule, shapes, draw
        self.matrices: dict[str, Tensor] | None = None
        self.net: Network | None = None  # the network the matrices are bound to
        self.loaded: dict[str, Tensor] | None = None

    def get(self, net: Network) -> dict[str, Tensor]:
        if net is not self.net:
            self._bind(net)
        return self.matrices

    def _bind(self, net: Network) -> None:
        shapes = self.shapes(net)
        given = self.loaded if self.loaded is not None else self.matrices
        if given is None:
            self.matrices = {key: self.draw(net, key, shape) for key, shape in shapes.items()}
        else:
            check_matrices(self.rule, given, shapes)
            self.matrices = {k: given[k].to(net.device, net.dtype) for k in shapes}
        self.net, self.loaded = net, None

    def state_dict(self) -> dict[str, Tensor]:
        given = self.loaded if self.loaded is not None else self.matrices
        return {k: v.clone() for k, v in (given or {}).items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Use these matrices from the next use on; an empty state means none drawn yet."""
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise UsageError(f"rule {self.rule!r}: a state of named matrices was expected")
        self.loaded = dict(state) if state else None
        if not state:
            self.matrices = None  # draw afresh (the same seeded draw) on the next use
        self.net = None  # bind again on the next use


def check_matrices(rule: str, given: dict[str, Tensor], shapes: dict[str, tuple]) -> None:
    missing, unknown = sorted(set(shapes) - set(given)), sorted(set(given) - set(shapes))
    if missing or unknown:
        raise UsageError(
            f"rule {rule!r}: the feedback matrices do not match the network: missing "
            f"{missing}, unknown {unknown}"
        )
    for key, shape in shapes.items():
        if tuple(given[key].shape) != tuple(shape):
            raise UsageError(
                f"rule {rule!r}: feedback matrix {key} has shape {tuple(given[key].shape)}, "
                f"the network needs {tuple(shape)}"
            )


def connection_shapes(net: Network) -> dict[str, tuple[int, int]]:
    """Per weight name W[i->j] with a feedback path, the shape of W_ij^T."""
    return {weight_name(i, j): transposed_shape(net, i, j) for i, j in feedback_connections(net)}


def connection_groups(net: Network) -> dict[str, tuple[str, str]]:
    """Per weight name W[i->j] with a feedback path, the pair (i, j)."""
    return {weight_name(i, j): (i, j) for i, j in feedback_connections(net)}


def state_part(rule: Rule, state: dict, key: str):
    """state[key], or a clear error naming the rule and what its state holds."""
    if not isinstance(state, dict) or key not in state:
        held = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise UsageError(f"rule {rule.name!r}: the state given has no {key!r} (it holds {held})")
    return state[key]


class SignConcordant:
    """B_ij = c M_ij o sign(W_ij)^T, with c set so that ||B_ij||_F = scale ||W_ij||_F.

    Liao et al. found the magnitudes of sign-concordant feedback unimportant given batch
    normalisation or "Batch Manhattan" updates; this engine has neither, so the scale decides
    whether errors vanish or explode on their way down. Matching the Frobenius norm of the
    current W_ij keeps the feedback on W^T's scale at every step, whatever M's distribution
    and however W grows. Entries where W_ij = 0 are 0 (sign 0). The results are written into
    buffers kept between steps, so a step allocates no matrix.
    """

    def __init__(self, scale: float):
        self.scale = scale
        self.out: dict[str, Tensor] = {}

    def __call__(
        self,
        net: Network,
        magnitudes: dict[str, Tensor] | None,
        connections: list[tuple[str, str]] | None = None,
    ) -> dict[str, Tensor]:
        """B for every connection in `connections` (default: those out of hidden groups)."""
        for i, j in connections if connections is not None else feedback_connections(net):
            key, W = weight_name(i, j), net.feedback_view(i, j)
            out = self.out.get(key)
            if out is None or out.shape != W.shape or out.dtype != W.dtype:
                out = self.out[key] = torch.empty_like(W, memory_format=torch.contiguous_format)
            elif out.device != W.device:
                out = self.out[key] = out.to(W.device)
            torch.sign(W, out=out)
            if magnitudes is not None:
                out.mul_(magnitudes[key])
            # c = scale ||W|| / ||M o sign(W)||; the floor keeps an all-zero W at B = 0.
            norm = torch.linalg.vector_norm(out).clamp_min_(torch.finfo(W.dtype).tiny)
            out.mul_(torch.linalg.vector_norm(W).div_(norm).mul_(self.scale))
        return self.out


class FeedbackRule(SweepSignals, Rule):
    """Backpropagation's sweep with a matrix B_jk in W_jk^T's place (fa, usf, brsf, frsf).

    The output layer's own weight gradient stays exact (delta_o comes from the loss); only the
    transport of errors below it changes. Subclasses give the matrices of each step, and the
    ones out of the input group for a signal carried to the input (input_feedback).
    """

    def step_feedback(self, net: Network) -> dict[str, Tensor]:
        """Per weight name W[i->j] (i not the input), the tensor in W's place for this step,
        shaped like net.feedback_view(i, j): (size_j, size_i) for dense connections."""
        raise NotImplementedError

    any_kind = True
    # Whether a step's B is known before the step (a function of the rule's state and W, as
    # fa's, usf's, brsf's and frsf's are), so that a stack may form it outside the batched
    # step (speed/vmap_stack.py). Rules that train B inside their step (kp, wm) say False,
    # and are not stacked: a stack would skip their training of B.
    feedback_before_step: ClassVar[bool] = True

    @classmethod
    def stacked_form(cls, rules, nets):
        trained = sorted({r.name for r in rules if not r.feedback_before_step})
        if trained:  # B is trained inside their step, which a stack would skip
            return f"rule(s) {', '.join(trained)} train their feedback inside the step"
        return GivenFeedback(rules, nets)

    def signal_feedback(self, net):
        return lookup(self.step_feedback(net))

    def updates(self, net, x, y):
        B = self.step_feedback(net)
        trace = net.forward(x, train=True, labels=y)
        self.last_loss = net.total_loss(trace, y)
        deltas = error_sweep(net, trace, y, feedback=lambda i, j: B[weight_name(i, j)])
        return weight_updates(net, trace, deltas)


# fa, usf, brsf and frsf members, in any mix of rules and options, share a stack.
FeedbackRule.stack_family = FeedbackRule


class GivenFeedback(StackedRule):
    """fa, usf, brsf, frsf stacked: backprop's sweep with B_jk in W_jk^T's place. Each member's
    rule forms its B for the step (drawing from its own generator where it draws), and the
    sweep of FeedbackRule runs batched over the stacked B. Rules and options may differ per
    member."""

    def __init__(self, rules, nets):
        super().__init__(rules, nets)
        self.template = _GivenFeedbackRule()
        self._cache: tuple[tuple, dict[str, Tensor]] | None = None

    def extra(self, nets):
        per_member = [r.step_feedback(n) for r, n in zip(self.rules, nets, strict=True)]
        # fa's matrices never change: stack them again only when a member's tensors did.
        key = tuple((id(t), t._version) for B in per_member for t in B.values())
        if self._cache is None or self._cache[0] != key:
            stacked = {k: torch.stack([B[k] for B in per_member]) for k in per_member[0]}
            self._cache = (key, stacked)
        return self._cache[1]

    def run(self, net, x, y, extra, state):
        self.template.B = extra
        try:
            return self.template.updates(net, x, y), state
        finally:
            self.template.B = {}  # batched values must not outlive vmap


class _GivenFeedbackRule(FeedbackRule):
    name = ""  # never registered: the stack's stand-in for every member's feedback rule
    B: dict[str, Tensor] = {}

    def step_feedback(self, net):
        return self.B

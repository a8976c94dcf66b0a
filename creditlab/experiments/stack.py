"""Stacked networks: K networks of one architecture stepped as one batched computation.

Every parameter gets a leading member dimension: W_ij becomes a (K, size_i, size_j) tensor and
each member's own Network keeps working on its slice (a view), so evaluation, checkpoints and
probes read and write the stack without knowing about it. A step runs the rule's ordinary
per-network code once, under torch.func.vmap, with the template network's parameters bound to
the batched tensors: every matrix product becomes a batched one and nothing in the engine or the
rules is written twice. Members may differ in seed (initial weights, data order, random
feedback), learning rate, weight decay and the rest of the optimiser (each member keeps its own
optimiser, applied to its slice), and for the feedback-alignment family in rule and options.

What a stacked step cannot reproduce is a random draw from a member's own generator inside the
step: vmap has one random stream, not K. So the per-step feedback of fa, usf, brsf and frsf is
formed per member outside vmap (brsf draws its magnitudes from each member's generator there,
exactly as a separate run would) and passed in; networks with dropout are not stacked, and vmap
runs with randomness="error", so any other draw fails loudly instead of silently differing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.func import vmap
from torch.utils import _pytree as pytree

from creditlab.engine.binding import batching_fallback_allowed, bind_parameters, bound
from creditlab.engine.network import Network
from creditlab.optim import Optimizer, State
from creditlab.rules import Rule
from creditlab.rules.bp import Backprop
from creditlab.rules.dfa import DirectFeedbackAlignment
from creditlab.rules.dni import DNI
from creditlab.rules.machinery.feedback import FeedbackRule

Tensor = torch.Tensor
Params = dict[str, Tensor]


# ---- how each kind of rule runs inside vmap --------------------------------------------------
class StackedRule:
    """A rule's step for all members at once. `extra(nets)` is formed per member outside vmap
    (stacked on dim 0, or None); `state` is carried through the step (dim 0); `run` is the
    per-member code that vmap batches, returning (updates, new state)."""

    def __init__(self, rules: Sequence[Rule], nets: Sequence[Network]):
        # The template runs every member's step inside vmap: an instance of its own, so that
        # no member's rule ever holds the batched values.
        self.rules, self.template = list(rules), type(rules[0])(**rules[0].opts)
        self.state: list[Tensor] = []

    compilable = True  # whether the vmapped step may run under torch.compile

    def extra(self, nets: Sequence[Network]) -> Any:
        return None

    def run(self, net: Network, x: Tensor, y: Tensor, extra: Any, state: Any):
        return self.template.updates(net, x, y), state

    def carry(self, state: Any) -> None:
        """Take what the step returned in the state's place."""
        self.state = state

    def sync(self) -> None:
        """Hand the carried state back to each member's own rule (before a checkpoint or a
        probe), so each member's rule object is what a separate run's would be."""


class Stateless(StackedRule):
    """Rules whose step is a function of the parameters and the batch alone (bp)."""


class GivenFeedback(StackedRule):
    """fa, usf, brsf, frsf: backprop's sweep with B_jk in W_jk^T's place. Each member's rule
    forms its B for the step (drawing from its own generator where it draws), and the sweep of
    FeedbackRule runs batched over the stacked B. Rules and options may differ per member."""

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


class GivenDirectFeedback(StackedRule):
    """dfa: each member's fixed B_j, joined into one matrix as dfa joins them, are stacked
    outside vmap and handed to the template's sweep, as GivenFeedback hands fa its B. They
    never change during training, so they are stacked again only when a member's matrices
    were replaced (a restored state). Nothing is carried from step to step."""

    def __init__(self, rules, nets):
        super().__init__(rules, nets)
        self.template = _GivenDirectFeedbackRule(**rules[0].opts)
        self._cache: tuple[tuple, Tensor | None, list[int]] | None = None

    def extra(self, nets):
        joined = [r.joined_feedback(n) for r, n in zip(self.rules, nets, strict=True)]
        key = tuple((id(B), B._version) for B, _ in joined if B is not None)
        if self._cache is None or self._cache[0] != key:
            B_all = None if joined[0][0] is None else torch.stack([B for B, _ in joined])
            self._cache = (key, B_all, joined[0][1])
        return self._cache[1]

    def run(self, net, x, y, extra, state):
        self.template.given = (extra, self._cache[2])
        try:
            return self.template.updates(net, x, y), state
        finally:
            self.template.given = None  # batched values must not outlive vmap


class _GivenDirectFeedbackRule(DirectFeedbackAlignment):
    """dfa's sweep with the joined B handed in (stacked) instead of its own."""

    given: tuple[Tensor | None, list[int]] | None = None

    def joined_feedback(self, net):
        return self.given


class TrainedSynthesizers(StackedRule):
    """dni and cdni: the synthesizers' parameters (theta) go into the step stacked (dim 0), and
    their gradients come out of it; the synthesizers' optimiser then steps every member at once
    outside vmap, on the stacked theta and optimiser state, as SharedOptimizer (stacked.py) does
    for the networks: its formulas are elementwise, so the stack's step is every member's.

    Why not carry the state through the step: inside vmap, Adam's lerp_, addcmul_ and addcdiv_
    have no batching rule and ran member by member, and the whole state went through
    state_dict and load_state_dict (copies of every tensor, and pytree) at every step: the
    stack was 1.5 times slower than the same runs one by one (compare_timing.py --per-rule)."""

    def __init__(self, rules, nets):
        super().__init__(rules, nets)
        for r, n in zip(rules, nets, strict=True):
            _prime_dni(r, n)
        # The template finds its boundaries and synthesizers once, from the first member's
        # state; at every step it reads the batched theta instead of one of its own.
        sg = self.template.sg
        sg.load_state_dict(rules[0].state_dict())
        sg.setup(nets[0])
        sg.theta = sg.opt_state = None
        first = rules[0].sg
        self.opt, self.lr = first.opt, first.lr
        self.state = stacked_state([r.sg.theta for r in rules])  # theta, carried into vmap
        self.opt_state = stacked_state([r.sg.opt_state for r in rules])

    def run(self, net, x, y, extra, theta):
        sg = self.template.sg
        sg.theta, sg.deferred = theta, {}
        try:
            return self.template.updates(net, x, y), sg.deferred
        finally:
            sg.theta, sg.deferred = None, None  # batched values must not outlive vmap

    def carry(self, grads):
        if grads:  # none when there is no boundary
            self.opt.update(self.state, grads, self.opt_state, self.lr)

    def sync(self):
        for k, r in enumerate(self.rules):  # load_state_dict copies: members own their state
            state = {"theta": self.state, "optimizer": self.opt_state}
            r.load_state_dict(member_state(state, k))


def stacked_state(states: Sequence[Any]) -> Any:
    """The members' states (nested dicts of tensors and numbers, one structure) as one: every
    tensor stacked on a new dim 0; plain numbers (an optimiser's step count, the same for
    members that step together) taken from the first."""
    leaves, spec = pytree.tree_flatten(states[0])
    flat = [pytree.tree_flatten(state)[0] for state in states]
    stacked = [
        torch.stack([f[n] for f in flat]) if isinstance(v, Tensor) else v
        for n, v in enumerate(leaves)
    ]
    return pytree.tree_unflatten(stacked, spec)


def member_state(state: Any, k: int) -> Any:
    """Member k's part of a stacked_state: views of its slices, and the plain numbers."""
    return pytree.tree_map(lambda v: v[k] if isinstance(v, Tensor) else v, state)


def _prime_dni(rule: DNI, net: Network) -> None:
    if rule.sg.boundaries is None:
        rule.sg.setup(net)


def stacked_rule(rules: Sequence[Rule], nets: Sequence[Network]) -> StackedRule | str:
    """The stacked form of these members' rules, or the reason there is none (one line)."""
    names = sorted({r.name for r in rules})
    if any(g.dropout > 0 for g in nets[0].groups.values()):
        return "dropout draws from each network's own generator inside the step"
    if nets[0].buffers:
        return "batch norm's running statistics are per network, not stacked"
    if all(isinstance(r, FeedbackRule) for r in rules):
        return GivenFeedback(rules, nets)
    if len(names) > 1:
        return f"rules {', '.join(names)} do not share one arithmetic shape"
    if any(r.opts != rules[0].opts for r in rules):
        return f"the members' {names[0]} options differ"
    kind = type(rules[0])
    if kind is Backprop:
        return Stateless(rules, nets)
    if kind is DirectFeedbackAlignment:
        return GivenDirectFeedback(rules, nets)
    if issubclass(kind, DNI) and rules[0].oracle is None:
        return TrainedSynthesizers(rules, nets)
    return f"rule {names[0]} has no stacked form (it draws randomness or steps differently)"


# ---- the stack --------------------------------------------------------------------------------
class Stack:
    """K member networks (same architecture, dtype and device) whose parameters live stacked.

    After construction each member's parameters are views of `params`: updating the stack
    updates every member, and loading a member's parameters writes into the stack.
    """

    def __init__(self, nets: Sequence[Network], rules: Sequence[Rule], compile: bool = False):
        if not nets or len(nets) != len(rules):
            raise ValueError("a stack needs one rule per network, and at least one network")
        spec, first = nets[0].spec(), nets[0]
        for net in nets[1:]:
            if net.spec() != spec or (net.dtype, net.device) != (first.dtype, first.device):
                raise ValueError("stacked networks must share architecture, dtype and device")
        self.nets, self.rules = list(nets), list(rules)
        plan = stacked_rule(self.rules, self.nets)
        if isinstance(plan, str):  # refused before any member's parameters are rebound
            raise StackError(plan)
        self.plan = plan
        names = list(first.parameters())
        self.params: Params = {n: torch.stack([net.parameters()[n] for net in nets]) for n in names}
        for k, net in enumerate(nets):
            bind_parameters(net, {n: p[k] for n, p in self.params.items()})
        # The template runs every member's step under vmap; a network of its own, so no
        # member's tensors are ever swapped out.
        self.template = Network.from_spec(spec, first.dtype, first.device, first.seed)
        # With compile, the vmapped step runs through torch.compile (a CUDA graph on a GPU).
        self.compiled = compile and plan.compilable
        self.cuda_graphs = self.compiled and first.device.type == "cuda"
        mode = "reduce-overhead" if self.cuda_graphs else None
        self._step = (
            torch.compile(self._batched, mode=mode, dynamic=False)
            if self.compiled
            else self._batched
        )
        # The step with a shared optimiser's update inside (see step_and_apply).
        self._applied = (
            torch.compile(self._batched_and_applied, mode=mode, dynamic=False)
            if self.compiled
            else None
        )

    @property
    def size(self) -> int:
        return len(self.nets)

    def _member_step(self, params, x, y, extra, state):
        with bound(self.template, params):
            updates, state = self.plan.run(self.template, x, y, extra, state)
        rule = self.plan.template
        loss, metrics = rule.last_loss, dict(rule.metrics)
        rule.last_loss, rule.metrics = None, {}  # batched values must not outlive vmap
        return updates, loss, metrics, state

    def updates(self, x: Tensor, y: Tensor) -> tuple[Params, Tensor | None, dict[str, Tensor]]:
        """Every member's updates on its own batch: x is (K, N, ...), y (K, N, ...). Returns
        the stacked updates, the batch losses (K,) and the rule's metrics, each (K,)."""
        extra, state = self.plan.extra(self.nets), self.plan.state
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with batching_fallback_allowed():
            updates, loss, metrics, state = self._step(self.params, x, y, extra, state)
        self.plan.carry(state)
        return updates, loss, metrics

    def step_and_apply(
        self, x: Tensor, y: Tensor, opt: Optimizer, opt_state: State, lr: Tensor
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        """updates(x, y) and then opt.update on the stacked parameters, as one compiled unit
        (one CUDA graph on a GPU) for a compiled stack whose members share one optimiser:
        opt_state and lr in their captured form (captured.CapturedOptimizer). Returns the
        batch losses (K,) and the metrics."""
        if not self.compiled:
            raise ValueError("step_and_apply is for a compiled stack; call updates")
        extra, state = self.plan.extra(self.nets), self.plan.state
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with batching_fallback_allowed():
            loss, metrics, state = self._applied(
                self.params, x, y, extra, state, opt, opt_state, lr
            )
        self.plan.carry(state)
        return loss, metrics

    def _batched_and_applied(self, params, x, y, extra, state, opt, opt_state, lr):
        updates, loss, metrics, state = self._batched(params, x, y, extra, state)
        opt.update(params, updates, opt_state, lr)  # elementwise: the stack's is every member's
        return loss, metrics, state

    def _batched(self, params, x, y, extra, state):
        in_dims = (0, 0, 0, None if extra is None else 0, 0)
        batched = vmap(self._member_step, in_dims=in_dims, randomness="error")
        return batched(params, x, y, extra, state)

    def sync(self) -> None:
        self.plan.sync()


class StackError(ValueError):
    """These members cannot be stacked; the message says why in one line."""

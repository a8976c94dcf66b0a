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
exactly as a separate run would) and passed in. How each rule runs in a stack is the rule's
own (Rule.stacked_form, rules/machinery/stacking.py). Networks with dropout are not stacked,
and vmap runs with randomness="error", so any other draw fails loudly instead of silently
differing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.func import vmap

from creditlab.engine.binding import batching_fallback_allowed, bind_parameters, bound
from creditlab.engine.network import Network
from creditlab.optim import Optimizer, State
from creditlab.rules import Rule
from creditlab.rules.machinery.stacking import StackedRule, member_state, stacked_state

__all__ = ["Stack", "StackError", "member_state", "stacked_rule", "stacked_state"]

Tensor = torch.Tensor
Params = dict[str, Tensor]


def stacked_rule(rules: Sequence[Rule], nets: Sequence[Network]) -> StackedRule | str:
    """The stacked form of these members' rules, or the reason there is none (one line). The
    rules say whether they can share a stack (Rule.stack_family) and how they run in it
    (Rule.stacked_form); nothing here knows one rule from another."""
    names = sorted({r.name for r in rules})
    if any(g.dropout > 0 for g in nets[0].groups.values()):
        return "dropout draws from each network's own generator inside the step"
    if nets[0].buffers:
        return "batch norm's running statistics are per network, not stacked"
    first = type(rules[0])
    family = first.stack_family
    if family is not None and all(isinstance(r, family) for r in rules):
        return first.stacked_form(rules, nets)  # a family's members may differ
    if len(names) > 1:
        return f"rules {', '.join(names)} do not share one arithmetic shape"
    if any(r.opts != rules[0].opts for r in rules):
        return f"the members' {names[0]} options differ"
    return first.stacked_form(rules, nets)


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
        opt_state and lr in their captured form (CapturedOptimizer, speed/compiled.py).
        Returns the batch losses (K,) and the metrics."""
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

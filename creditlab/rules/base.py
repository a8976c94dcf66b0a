"""What every learning rule is: a function from (network, batch) to an update per parameter.

A rule computes directions; it never changes the network's parameters (an optimiser applies the
updates). Updates follow the gradient's sign convention: the optimiser steps against them, so
for backpropagation they are exactly dE/dparam. A rule may keep state of its own (fixed
feedback matrices, synthesizers, random generators); it is created lazily on first use and
saved in checkpoints through state_dict / load_state_dict.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from creditlab.engine.backward import local_delta, weight_updates
from creditlab.engine.network import Network, Trace
from creditlab.errors import UsageError

if TYPE_CHECKING:
    from creditlab.rules.machinery.stacking import StackedRule

Tensor = torch.Tensor

# Every rule by name; filled by the package's discovery (rules/__init__.py). It lives here so
# that messages can list the rules that can do something without naming any by hand.
RULES: dict[str, type[Rule]] = {}


def rules_that(can: Callable[[type[Rule]], bool]) -> str:
    """ "bp, fa, ..." : the registered rules for which `can(rule class)` holds, for messages."""
    return ", ".join(name for name, cls in RULES.items() if can(cls)) or "none"


@dataclasses.dataclass(frozen=True)
class Option:
    """A rule option: its type, default and meaning (for --rule-opt NAME.KEY=VALUE)."""

    type: type
    default: Any
    help: str = ""
    choices: tuple | None = None


class Rule:
    """Base class for learning rules. Subclasses set `name`, `options` and `updates`."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # Training settings this rule learns well with (optimizer, lr, momentum, weight_decay,
    # schedule; see creditlab/training/settings.py); they apply wherever the user sets none.
    recommended: ClassVar[dict[str, Any]] = {}
    # The same, per model family ("dense", "skip", "conv", "capsule"; training/settings.py
    # family()), over `recommended`: a rule whose MLP settings fail on convolutions says here
    # what works there (found by `creditlab tune`, docs/results/defaults.md). Its "options"
    # entry, a dict, recommends values of the rule's own options for the family.
    recommended_for: ClassVar[dict[str, dict[str, Any]]] = {}
    options: ClassVar[dict[str, Option]] = {}
    # What a tune searches: name -> (low, high, "log" | "linear") or [choices], over the
    # options and the training settings (see rules/machinery/space.py).
    search_space: ClassVar[dict[str, Any]] = {}
    own_readout: ClassVar[bool] = False  # True when predict() is not the network's output
    # True for rules whose update is a finished step (hill climbing): the training loop then
    # applies it as is, with plain SGD at rate 1, whatever optimiser was asked for.
    applies_own_step: ClassVar[bool] = False
    # True for rules that work on every kind of group (convolutions, capsules, ...) and on
    # networks with several outputs; the others train dense networks with one output only.
    any_kind: ClassVar[bool] = False
    # Whether the step may run under torch.compile (--compile, speed/compiled.py): None once a
    # test has checked that the compiled step gives eager's updates, else why not, as a clause
    # completing "runs eagerly: ..." (the step then runs eagerly and the loop says so).
    not_compiled: ClassVar[str | None] = "has not been checked against eager under torch.compile"
    # Rules whose members may share one vmapped stack although their names or options differ
    # (speed/vmap_stack.py): a base class every member derives from; None: one rule with one
    # set of options per stack.
    stack_family: ClassVar[type | None] = None

    def __init__(self, **opts: Any):
        unknown = set(opts) - set(self.options)
        if unknown:
            valid = ", ".join(sorted(self.options)) or "none"
            raise UsageError(
                f"unknown option(s) {', '.join(sorted(unknown))} for rule {self.name!r}; "
                f"valid options: {valid}"
            )
        self.opts = {
            k: _coerce(self.name, k, o, opts.get(k, o.default)) for k, o in self.options.items()
        }
        self.last_loss: Tensor | None = None  # the batch loss seen by the last updates() call
        self.metrics: dict[str, float] = {}  # extra numbers a rule logs (e.g. synthesizer loss)

    def check(self, net: Network) -> None:
        """Raise UsageError if this rule cannot train `net` (called before training starts)."""
        if self.any_kind:
            return
        for j in net.order[1:]:
            kind = net.groups[j].kind
            if kind != "dense":
                raise UsageError(
                    f"rule {self.name!r} trains dense groups only; group {j!r} is {kind} "
                    f"(rules for every kind: {rules_that(lambda r: r.any_kind)})"
                )
            if not net.kind(j).has_bias(net.groups[j]):
                raise UsageError(
                    f"rule {self.name!r} trains dense groups with biases only; group {j!r} has "
                    "none (built with bias=False)"
                )
        if len(net.outputs) > 1:
            names = ", ".join(o.name for o in net.outputs)
            raise UsageError(
                f"rule {self.name!r} trains networks with one output only; this one has "
                f"{len(net.outputs)} ({names})"
            )

    def updates(self, net: Network, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """The update for every parameter of `net` on the batch (x, y)."""
        raise NotImplementedError

    def output(self, net: Network, x: Tensor) -> Tensor:
        """The output group's activations as this rule runs the network (for the loss)."""
        return net.predict(x)

    def predict(self, net: Network, x: Tensor) -> Tensor:
        """Scores per class for evaluation; rules with their own read-out override this."""
        return self.output(net, x)

    # ---- error signals from outside the loss (GANs) ----------------------------------------
    # A GAN's generator learns from the discriminator: its output group receives as dE/dz the
    # error signal that reaches the discriminator's input. Both halves are the rule's own:
    # `signal_deltas` carries a given output signal down the network the way the rule carries
    # errors (W^T for bp, B for fa, ...) and `signal_at_input` carries it one step further, to
    # the input. Rules that send no error backwards (dtp, pc, ff, es, hillclimb) keep these
    # defaults and refuse. Signals are per example (dE_n/dz), as deltas are.
    def signal_deltas(self, net: Network, trace: Trace, delta_o: Tensor) -> dict[str, Tensor]:
        """Every group's delta when the output group's delta_o comes from outside."""
        raise UsageError(self._no_signal_message())

    def signal_at_input(self, net: Network, trace: Trace, deltas: dict[str, Tensor]) -> Tensor:
        """dE/dx, the signal the input group receives from the deltas above it."""
        raise UsageError(self._no_signal_message())

    @classmethod
    def carries_signals(cls) -> bool:
        """Whether the rule can carry an error signal from outside its loss (so train either
        half of a GAN): it overrides signal_deltas."""
        return cls.signal_deltas is not Rule.signal_deltas

    def check_signal(self, net: Network) -> None:
        """Raise UsageError unless this rule can carry an outside error signal through `net`."""
        if type(self).signal_deltas is Rule.signal_deltas:
            raise UsageError(self._no_signal_message())
        self.check(net)

    def updates_for_signal(
        self, net: Network, x: Tensor, dz_out: Tensor, trace: Trace | None = None
    ) -> dict[str, Tensor]:
        """The updates when the output group's dE/dz (per example, (N, size_o)) comes from
        outside instead of from the loss. `trace`: a training forward pass of x already run."""
        trace = trace if trace is not None else net.forward(x, train=True)
        delta_o = local_delta(net, trace, net.output_name, dz_out)
        return weight_updates(net, trace, self.signal_deltas(net, trace, delta_o))

    def input_signal(
        self, net: Network, x: Tensor, dz_out: Tensor, trace: Trace | None = None
    ) -> Tensor:
        """The signal that reaches the input, dE/dx per example (N, size_input), when the
        output group receives dE/dz_out; exactly the gradient for bp."""
        trace = trace if trace is not None else net.forward(x, train=True)
        delta_o = local_delta(net, trace, net.output_name, dz_out)
        return self.signal_at_input(net, trace, self.signal_deltas(net, trace, delta_o))

    def _no_signal_message(self) -> str:
        return (
            f"rule {self.name!r} sends no error signal backwards, so it cannot pass a signal "
            "through a network from outside its loss (as a GAN needs); rules that can: "
            + rules_that(lambda r: r.carries_signals())
        )

    # ---- what the speed paths need --------------------------------------------------------
    def compile_problem(self, net: Network) -> str | None:
        """Why this rule's step on `net` is not compiled (one clause), or None."""
        if self.not_compiled is None:
            return None
        if self.not_compiled == Rule.not_compiled:  # the default: say which rule
            return f"rule {self.name} {self.not_compiled}"
        return self.not_compiled

    @classmethod
    def stacked_form(cls, rules: Sequence[Rule], nets: Sequence[Network]) -> StackedRule | str:
        """The step of K members (`rules[k]` trains `nets[k]`) as one vmapped computation
        (rules/machinery/stacking.py), or the reason there is none (one line). Called on the
        first member's class once the members were found compatible: one rule with one set of
        options, or rules of one stack_family."""
        return f"rule {cls.name} has no stacked form (it draws randomness or steps differently)"

    def feedback_matrices(self, net: Network) -> dict[str, Tensor]:
        """For rules that carry errors back along other matrices than W^T: per weight name,
        the matrix used in W_ij^T's place (shape (size_j, size_i)). The diagnostics report
        the angle between it and W^T. Empty for rules without such matrices."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Everything the rule keeps between steps (tensors, numbers, generator states as
        uint8 tensors), so that a resumed run continues exactly."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise UsageError(f"rule {self.name!r} keeps no state, but a state was given")

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.opts.items())
        return f"{type(self).__name__}({opts})"


def _coerce(rule: str, key: str, option: Option, value: Any) -> Any:
    """Turn a command-line string (or a Python value) into the option's type, or explain."""
    if value is None or (
        isinstance(value, option.type) and not (isinstance(value, bool) and option.type is not bool)
    ):
        result = value
    elif isinstance(value, str):
        try:
            result = _parse(option.type, value)
        except ValueError:
            raise UsageError(
                f"option {rule}.{key} needs a {option.type.__name__}, got {value!r}"
            ) from None
    elif option.type is float and isinstance(value, int) and not isinstance(value, bool):
        result = float(value)
    else:
        raise UsageError(f"option {rule}.{key} needs a {option.type.__name__}, got {value!r}")
    if option.type is float and not math.isfinite(result):  # es.sigma=inf would train on NaN
        raise UsageError(f"option {rule}.{key} needs a finite number, got {result!r}")
    if option.choices is not None and result not in option.choices:
        raise UsageError(
            f"option {rule}.{key} must be one of {', '.join(map(str, option.choices))}, "
            f"got {result!r}"
        )
    return result


def _parse(kind: type, text: str) -> Any:
    if kind is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(text)
    if kind is tuple:
        return tuple(part for part in text.split(",") if part)
    return kind(text)

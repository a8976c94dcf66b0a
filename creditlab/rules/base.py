"""What every learning rule is: a function from (network, batch) to an update per parameter.

A rule computes directions; it never changes the network's parameters (an optimiser applies the
updates). Updates follow the gradient's sign convention: the optimiser steps against them, so
for backpropagation they are exactly dE/dparam. A rule may keep state of its own (fixed
feedback matrices, synthesizers, random generators); it is created lazily on first use and
saved in checkpoints through state_dict / load_state_dict.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from creditlab.engine.network import Network
from creditlab.errors import UsageError

Tensor = torch.Tensor


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
    # schedule; see creditlab/experiments/settings.py); they apply wherever the user sets none.
    recommended: ClassVar[dict[str, Any]] = {}
    options: ClassVar[dict[str, Option]] = {}
    own_readout: ClassVar[bool] = False  # True when predict() is not the network's output
    # True for rules whose update is a finished step (hill climbing): the training loop then
    # applies it as is, with plain SGD at rate 1, whatever optimiser was asked for.
    applies_own_step: ClassVar[bool] = False

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

    def updates(self, net: Network, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """The update for every parameter of `net` on the batch (x, y)."""
        raise NotImplementedError

    def output(self, net: Network, x: Tensor) -> Tensor:
        """The output group's activations as this rule runs the network (for the loss)."""
        return net.predict(x)

    def predict(self, net: Network, x: Tensor) -> Tensor:
        """Scores per class for evaluation; rules with their own read-out override this."""
        return self.output(net, x)

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

"""Search spaces: what each rule declares worth tuning, and how a trial's settings are drawn.

Every rule declares `search_space` beside its `options`: a dict name -> entry, where an entry is

- a range `(low, high, "log" | "linear")`: a number drawn uniformly on that scale (an integer
  when both ends are integers), or
- a list of choices: one of them, drawn uniformly.

A name is one of the rule's options or one of the training settings in TRAINING_KEYS. A setting
that belongs to one optimiser is written "OPTIMISER:KEY" ("sgd:momentum", "adam:lr"), and is
searched only when the tune uses that optimiser ("adam:" entries serve adamw too), because a
good Adam learning rate is a poor SGD one. `optimiser_space` writes those entries once for all
rules. An option fixed on the command line (--rule-opt) is not searched.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from creditlab.errors import UsageError

# Training settings a space may search (the rest of the configuration is the tune's own).
TRAINING_KEYS = ("lr", "weight_decay", "momentum", "beta1", "beta2", "dropout", "batch_size")
OPTIMISER_FAMILIES = {"sgd": ("sgd",), "adam": ("adam", "adamw")}
SCALES = ("log", "linear")


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    scale: str  # "log" or "linear"
    integer: bool = False

    def sample(self, rng: random.Random) -> float | int:
        if self.scale == "log":
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        if self.integer:
            return min(int(self.high), max(int(self.low), round(value)))
        return float(f"{value:.4g}")  # four significant digits: readable, and plenty

    def __str__(self) -> str:
        kind = " integers" if self.integer else ""
        return f"[{self.low:g}, {self.high:g}] {self.scale}{kind}"


@dataclass(frozen=True)
class Choice:
    values: tuple

    def sample(self, rng: random.Random) -> Any:
        return rng.choice(self.values)

    def __str__(self) -> str:
        return "one of " + ", ".join(map(repr, self.values))


Entry = Range | Choice
SearchSpace = dict[str, Any]  # as a rule declares it: name -> (low, high, scale) or [choices]


def optimiser_space(
    adam_lr: tuple[float, float] = (1e-5, 1e-2),
    sgd_lr: tuple[float, float] = (1e-3, 0.5),
    weight_decay: tuple[float, float] = (1e-7, 1e-3),
) -> dict[str, Any]:
    """The optimiser's settings, for rules whose updates an optimiser applies: learning rate and
    weight decay, Adam's beta1 and beta2, SGD's momentum."""
    return {
        "adam:lr": (*adam_lr, "log"),
        "adam:beta1": (0.8, 0.95, "linear"),
        "adam:beta2": [0.99, 0.999],
        "sgd:lr": (*sgd_lr, "log"),
        "sgd:momentum": (0.5, 0.99, "linear"),
        "weight_decay": (*weight_decay, "log"),
    }


def entry(where: str, value: Any) -> Entry:
    """One declared entry as a Range or Choice; a malformed one is refused naming it."""
    if isinstance(value, list):
        if not value:
            raise UsageError(f"search space entry {where}: an empty list of choices")
        return Choice(tuple(value))
    if isinstance(value, tuple) and len(value) == 3 and value[2] in SCALES:
        low, high, scale = value
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
        if not numbers or not math.isfinite(low) or not math.isfinite(high) or not low < high:
            raise UsageError(f"search space entry {where}: needs finite low < high, got {value!r}")
        if scale == "log" and low <= 0:
            raise UsageError(f"search space entry {where}: a log range needs low > 0")
        return Range(low, high, scale, isinstance(low, int) and isinstance(high, int))
    raise UsageError(
        f"search space entry {where}: needs (low, high, 'log' or 'linear') or a list of "
        f"choices, got {value!r}"
    )


def resolve(rule_cls: type, optimizer: str, fixed: tuple[str, ...] = ()) -> dict[str, Entry]:
    """The space a tune with this optimiser searches for the rule: optimiser prefixes taken off
    (entries for another optimiser dropped), options fixed by the user left out, every name
    checked against the rule's options and TRAINING_KEYS."""
    space: dict[str, Entry] = {}
    for name, value in rule_cls.search_space.items():
        family, colon, key = name.rpartition(":")
        where = f"{rule_cls.name}.{name}"
        if colon and family not in OPTIMISER_FAMILIES:
            raise UsageError(f"search space entry {where}: unknown optimiser {family!r}")
        if colon and optimizer not in OPTIMISER_FAMILIES[family]:
            continue
        if key not in rule_cls.options and key not in TRAINING_KEYS:
            raise UsageError(
                f"search space entry {where}: neither an option of {rule_cls.name} nor a "
                f"training setting ({', '.join(TRAINING_KEYS)})"
            )
        if key in fixed:
            continue
        space[key] = entry(where, value)
    return space


def draw(space: dict[str, Entry], key: str) -> dict[str, Any]:
    """One trial's settings, a function of `key` alone (e.g. "seed:rule:trial"), so a sweep run
    again draws the same trials."""
    rng = random.Random(key)
    return {name: e.sample(rng) for name, e in space.items()}


def describe(rule_cls: type) -> list[str]:
    """The declared space, one "name: range" line per entry (for `creditlab rules`)."""
    return [f"{name}: {entry(name, v)}" for name, v in rule_cls.search_space.items()]

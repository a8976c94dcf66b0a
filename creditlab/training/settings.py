"""The training settings a rule may recommend, and where each of a run's values came from.

The optimiser that suits backprop (SGD with momentum at lr 0.05) makes synthetic gradients
diverge and leaves evolution strategies crawling, so each rule declares the settings it trains
well with (`Rule.recommended`). A setting the user leaves unset (None in a TrainConfig, no flag
on the command line) takes the rule's recommendation, else the project's default below. The
run's config.json records every such value with its source: "user", "rule" or "default".
"""

from __future__ import annotations

import dataclasses
from typing import Any

from creditlab.rules import rule_class
from creditlab.training.config import TrainConfig

# The settings a rule may recommend, with the project's defaults for rules that do not.
DEFAULTS: dict[str, Any] = {
    "optimizer": "sgd",
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 0.0,
    "schedule": "constant",
    "output_init": "random",  # the prediction group's weights as drawn (training/output_init.py)
}


def resolve(config: TrainConfig) -> tuple[TrainConfig, dict[str, str]]:
    """`config` with every unset recommendable setting filled in, and each one's source."""
    recommended = rule_class(config.rule).recommended
    values, sources = {}, {}
    for key, default in DEFAULTS.items():
        given = getattr(config, key)
        if given is not None:
            values[key], sources[key] = given, "user"
        elif key in recommended:
            values[key], sources[key] = recommended[key], "rule"
        else:
            values[key], sources[key] = default, "default"
    return dataclasses.replace(config, **values), sources


def describe(recommended: dict[str, Any]) -> str:
    """ "optimizer adam, lr 0.001" for `creditlab rules`."""
    return ", ".join(f"{key} {value}" for key, value in recommended.items()) or "the defaults"

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

from creditlab.data import input_stats_for
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


FAMILIES = ("dense", "skip", "conv", "capsule")
CAPSULE_KINDS = ("primary_capsules", "capsules", "mask")


def family_of(groups: list[tuple[str, int]]) -> str:
    """The family of a network given each non-input group's (kind, number of inputs): capsule
    when it has capsules, conv when it has convolutions or pooling, skip when a dense group
    reads several groups, else dense."""
    kinds = {kind for kind, _ in groups}
    if kinds & set(CAPSULE_KINDS):
        return "capsule"
    if kinds - {"dense"}:
        return "conv"
    return "skip" if any(n > 1 for _, n in groups) else "dense"


def family(net) -> str:
    """The family of a built Network (engine/network.py), by the kinds of its groups."""
    return family_of([(g.kind, len(g.ins)) for g in net.groups.values() if not g.is_input])


def model_family(model: str) -> str:
    """The family of the network a --model string names, without building it (the data, which
    sets its sizes, may not be loaded yet)."""
    from creditlab.engine.models import CAPSNETS, IMAGE_PRESETS

    if model in CAPSNETS:
        return "capsule"
    if model == "lenet" or model in IMAGE_PRESETS:
        return "conv"
    if model.startswith("skip:"):
        return "skip"
    if model.endswith(".json"):
        import json
        from pathlib import Path

        try:
            spec = json.loads(Path(model).read_text())
            groups = [
                (g.get("kind", "dense"), len(g.get("ins", [])))
                for g in spec["groups"]
                if g.get("ins")
            ]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return "dense"  # an unreadable spec fails, with its message, when it is built
        return family_of(groups)
    return "dense"


def recommended(rule_name: str, family_name: str = "dense") -> dict[str, Any]:
    """The settings a rule recommends for a family of networks."""
    cls = rule_class(rule_name)
    return {**cls.recommended, **cls.recommended_for.get(family_name, {})}


def recommended_options(rule_name: str, family_name: str) -> dict[str, Any]:
    """The values of its own options a rule recommends for a family of networks."""
    return dict(recommended(rule_name, family_name).get("options", {}))


def resolve(
    config: TrainConfig, family_name: str | None = None
) -> tuple[TrainConfig, dict[str, str]]:
    """`config` with every unset recommendable setting filled in, and each one's source. The
    rule's recommendation is the one for the network's family: `family_name`, else the one
    the model's name says (model_family; a torch module's is known once it is built)."""
    recommended_here = recommended(config.rule, family_name or model_family(config.model))
    values, sources = {}, {}
    for key, default in DEFAULTS.items():
        given = getattr(config, key)
        if given is not None:
            values[key], sources[key] = given, "user"
        elif key in recommended_here:
            values[key], sources[key] = recommended_here[key], "rule"
        else:
            values[key], sources[key] = default, "default"
    # A rule may recommend values of its own options for a family too (under "options");
    # those the user gave win. Recorded in the config's rule_opts like the user's.
    values["rule_opts"] = {**recommended_here.get("options", {}), **config.rule_opts}
    # The inputs' statistics follow the data set (MNIST's for MNIST-format sets).
    values["input_stats"] = input_stats_for(config.dataset, config.input_stats)
    return dataclasses.replace(config, **values), sources


def describe(recommended: dict[str, Any]) -> str:
    """ "optimizer adam, lr 0.001" for `creditlab rules` ("option tangents 16" for a rule's
    own options)."""
    words = [f"{key} {value}" for key, value in recommended.items() if key != "options"]
    words += [f"option {key} {value}" for key, value in recommended.get("options", {}).items()]
    return ", ".join(words) or "the defaults"

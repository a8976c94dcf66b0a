"""The registry of learning rules: every rule is a module in this package.

Shared machinery that several rules use lives in the subpackage `machinery`; a helper that
serves one rule sits beside it (e.g. dni_synthesizers.py), a module that defines no rule.

Adding a rule is adding a file here with a Rule subclass that sets `name`; it is found by name
without touching any other file. What the rule can do (compile, stack, train which kinds, carry
a GAN's signal) it declares on its class (rules/base.py), and every other module asks it.

No module outside this package names a rule: the defaults below are the one place where the
rest of creditlab gets a rule's name from.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from creditlab.errors import UnknownNameError
from creditlab.rules.base import RULES, Option, Rule

__all__ = [
    "DEFAULT_COMPARE_RULES",
    "DEFAULT_GAN_PAIRS",
    "DEFAULT_RULE",
    "DEFAULT_TUNE_RULES",
    "GRADIENT_RULE",
    "RULES",
    "Option",
    "Rule",
    "rule",
    "rule_class",
]

# The rule a run trains with when none is named (train, the GAN's two halves).
DEFAULT_RULE = "bp"
# The rule whose updates are the exact gradient of the loss: the reference that diagnostics
# measure other rules' updates against, and that gradcheck checks the engine with.
GRADIENT_RULE = "bp"
# What `creditlab compare` compares when no rules are named.
DEFAULT_COMPARE_RULES = ("bp", "fa", "dfa", "dni")
# What `creditlab tune` searches when no rules are named.
DEFAULT_TUNE_RULES = DEFAULT_COMPARE_RULES  # one default for both
# What `creditlab gan-compare` compares when no pairs are named: generator/discriminator rules.
DEFAULT_GAN_PAIRS = ("bp/bp", "fa/fa", "dfa/dfa", "usf/usf")


def _discover() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name == "base" or module.ispkg:  # machinery/ holds shared parts, not rules
            continue
        loaded = importlib.import_module(f"{__name__}.{module.name}")
        for obj in vars(loaded).values():
            if isinstance(obj, type) and issubclass(obj, Rule) and obj.name:
                RULES[obj.name] = obj


def rule_class(name: str) -> type[Rule]:
    if name not in RULES:
        raise UnknownNameError("rule", name, RULES)
    return RULES[name]


def rule(name: str, **opts: Any) -> Rule:
    """A fresh instance of the rule called `name`, with options (see --rule-opt)."""
    return rule_class(name)(**opts)


_discover()

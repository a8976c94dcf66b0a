"""The registry of learning rules: every module in this package defines one rule.

Shared machinery that several rules use lives in the subpackage `machinery`.

Adding a rule is adding a file here with a Rule subclass that sets `name`; it is found by name
without touching any other file.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from creditlab.errors import UnknownNameError
from creditlab.rules.base import Option, Rule

__all__ = ["RULES", "Option", "Rule", "rule", "rule_class"]

RULES: dict[str, type[Rule]] = {}


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

"""creditlab: backpropagation and the learning rules proposed to replace it, on one engine."""

from creditlab.engine.models import mlp
from creditlab.engine.network import Network, Trace
from creditlab.engine.torch_bridge import from_torch, to_torch
from creditlab.errors import (
    CreditlabError,
    DataError,
    GraphError,
    TrainingError,
    UnknownNameError,
    UsageError,
)
from creditlab.rules import RULES, Rule, rule

__version__ = "0.1.0"

__all__ = [
    "RULES",
    "CreditlabError",
    "DataError",
    "GraphError",
    "Network",
    "Rule",
    "Trace",
    "TrainingError",
    "UnknownNameError",
    "UsageError",
    "from_torch",
    "mlp",
    "rule",
    "to_torch",
]

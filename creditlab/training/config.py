"""TrainConfig: everything that decides a training run, checked as it is made.

It is written to a run's config.json and compared on --resume (trainer.py). Settings a rule may
recommend are None until settings.resolve fills them in.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from creditlab.data.augment import parse_augment
from creditlab.engine.devices import check_matmul_precision
from creditlab.engine.network import resolve_dtype
from creditlab.errors import UnknownNameError, UsageError
from creditlab.optim import OPTIMIZERS, SCHEDULES, parse_milestones
from creditlab.rules import DEFAULT_RULE
from creditlab.training.output_init import check_output_init

# Seeds are mixed as seed * 1_000_003 + small offsets into 64-bit generator seeds: keep them small
# enough that this cannot overflow.
MAX_SEED = 2**32 - 1


@dataclass
class TrainConfig:
    """Everything that decides a run; written to config.json and checked on --resume."""

    dataset: str = "digits"
    data_dir: str | None = None
    val_size: int | None = None
    train_subset: int | None = None  # use only the first n training examples
    model: str = "mlp:256-256"
    activation: str = "relu"
    loss: str = "cross_entropy"
    init: str | None = None
    # The prediction group's weights at the start: "random" (as drawn) or "zero"
    # (training/output_init.py); None: unset, as the optimiser settings below.
    output_init: str | None = None
    dropout: float = 0.0
    augment: str | None = None  # "shift:K", "crop:P", "flip" or a list: data/augment.py
    rule: str = DEFAULT_RULE
    rule_opts: dict[str, Any] = field(default_factory=dict)
    # None: unset, to be filled from the rule's recommendation or the default (settings.py).
    optimizer: str | None = None
    lr: float | None = None
    momentum: float | None = None
    nesterov: bool = False
    weight_decay: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str | None = None
    warmup_epochs: float = 0.0
    step_epochs: int = 10
    milestones: str | None = None  # "step": decay at these epochs, e.g. "100,150,200"
    gamma: float = 0.1
    min_lr: float = 0.0
    epochs: int = 20
    batch_size: int = 32
    patience: int | None = None  # stop after this many epochs without a better val accuracy
    probe_every: int = 50  # steps between alignment probes (0: none)
    probe_size: int = 256  # examples in the fixed probe batch (the first of the training set)
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    # torch.set_float32_matmul_precision during the run: "highest" (strict float32), "high"
    # (TF32 on NVIDIA Ampere and later), "medium"; the process's setting is restored after.
    matmul_precision: str = "highest"

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be a positive integer, got {value!r}")
        for name, low in (("probe_every", 0), ("probe_size", 1)):  # probe_every 0: no probes
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UsageError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.patience is not None and self.patience < 1:
            raise UsageError(f"patience must be a positive integer, got {self.patience}")
        if self.train_subset is not None and (
            isinstance(self.train_subset, bool)
            or not isinstance(self.train_subset, int)
            or self.train_subset < 1
        ):
            raise UsageError(f"train_subset must be a positive integer, got {self.train_subset!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise UsageError(f"seed must be an integer from 0 to {MAX_SEED}, got {self.seed!r}")
        _check_number("lr", self.lr, 0.0)
        _check_number("momentum", self.momentum, 0.0, 1.0, high_open=True)
        _check_number("weight_decay", self.weight_decay, 0.0)
        # The schedule's own settings: a negative or growing decay, a negative floor or a
        # floor above the rate would each make the learning rate do what nobody asked for.
        _check_number("gamma", self.gamma, 0.0, 1.0, low_open=True)
        _check_number("min_lr", self.min_lr, 0.0)
        _check_number("warmup_epochs", self.warmup_epochs, 0.0)
        if isinstance(self.step_epochs, bool) or not isinstance(self.step_epochs, int):
            raise UsageError(f"step_epochs must be a positive integer, got {self.step_epochs!r}")
        if self.step_epochs < 1:
            raise UsageError(f"step_epochs must be a positive integer, got {self.step_epochs}")
        if self.schedule == "cosine" and self.lr is not None and self.min_lr > self.lr:
            raise UsageError(
                f"min_lr ({self.min_lr}) is above lr ({self.lr}): the cosine schedule would "
                "raise the rate; give a min_lr <= lr"
            )
        largest = torch.finfo(resolve_dtype(self.dtype)).max
        for name in ("lr", "min_lr", "weight_decay"):  # 1e39 is a float, but not a float32
            value = getattr(self, name)
            if isinstance(value, int | float) and value > largest:
                raise UsageError(
                    f"{name} {value:g} is beyond {self.dtype}'s range (largest {largest:.3g})"
                )
        check_matmul_precision(self.matmul_precision)
        parse_augment(self.augment)
        parse_milestones(self.milestones)
        # Names refused here, before any data is read or any network is built.
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise UnknownNameError("optimizer", self.optimizer, OPTIMIZERS)
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise UnknownNameError("schedule", self.schedule, SCHEDULES)
        if self.output_init is not None:
            check_output_init(self.output_init)
        self.betas = tuple(self.betas)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _check_number(
    name: str,
    value: float | None,
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Refuse a setting that is not a finite number in [low, high] (ends open as asked);
    None (unset) passes."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{name} must be a number, got {value!r}")
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if not math.isfinite(value) or below or above:
        span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise UsageError(f"{name} must be a finite number in {span}, got {value}")

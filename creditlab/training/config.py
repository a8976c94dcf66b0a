"""TrainConfig: everything that decides a training run, checked as it is made.

It is written to a run's config.json and compared on --resume (trainer.py). Settings a rule may
recommend are None until settings.resolve fills them in.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from creditlab.data.augment import parse_augment
from creditlab.engine.devices import MATMUL_PRECISIONS, check_matmul_precision
from creditlab.engine.network import resolve_dtype
from creditlab.errors import UnknownNameError, UsageError
from creditlab.optim import OPTIMIZERS, SCHEDULES, parse_milestones
from creditlab.rules import DEFAULT_RULE
from creditlab.training.output_init import check_output_init

# Seeds are mixed as seed * 1_000_003 + small offsets into 64-bit generator seeds: keep them small
# enough that this cannot overflow.
MAX_SEED = 2**32 - 1
# Settings a rule may recommend are unset (None) until training/settings.py fills them in.
RECOMMENDED = "the rule's recommendation (see `creditlab rules`), else {}"


def option(
    default: Any,
    help: str,
    *,
    names: Callable[[], Iterable[str]] | None = None,
    default_text: str | None = None,
    choices: Sequence[str] | None = None,
    cli: bool = True,
) -> Any:
    """A config field with its command-line help: `names` lists the valid values (read from a
    registry when the parser is built), `default_text` says what an unset (None) value means,
    `choices` restricts the values, and cli=False keeps the field off the command line."""
    metadata = {"help": help, "names": names, "default_text": default_text}
    metadata.update(choices=choices, cli=cli)
    return field(default=default, metadata=metadata)


def _dataset_names() -> Iterable[str]:
    from creditlab.data import DATASETS

    return DATASETS


def _model_names() -> Iterable[str]:
    from creditlab.engine.models import MODEL_KINDS

    return MODEL_KINDS


def _activation_names() -> Iterable[str]:
    from creditlab.engine.activations import ACTIVATIONS

    return ACTIVATIONS


def _loss_names() -> Iterable[str]:
    from creditlab.engine.losses import LOSSES

    return LOSSES


@dataclass
class TrainConfig:
    """Everything that decides a run; written to config.json and checked on --resume.

    Each field's `option(...)` metadata is its command-line help: `creditlab train`, `compare`
    and `tune` generate their options from these fields (cli/options.py), so a new field is a
    new option, with its default, in one place."""

    dataset: str = option("digits", "the data set", names=_dataset_names)
    data_dir: str | None = option(
        None, "folder holding the dataset's files", default_text="$CREDITLAB_DATA, else a cache"
    )
    val_size: int | None = option(
        None,
        "validation examples carved from the end of the training set",
        default_text="10,000 for MNIST, 5,000 for CIFAR, 180 for digits, 10,000 or a sixth for "
        "idx:PATH",
    )
    train_subset: int | None = option(
        None, "train on the first N training examples only", default_text="all"
    )
    model: str = option(
        "mlp:256-256",
        "the network (torch:PATH.py:FACTORY RUNS THE CODE IN PATH.py and trains the torch.nn "
        "module its function FACTORY returns; it gets (N, C, H, W) batches and must give "
        "(N, classes))",
        names=_model_names,
    )
    activation: str = option("relu", "hidden activation", names=_activation_names)
    loss: str = option("cross_entropy", "the loss on the output", names=_loss_names)
    init: str | None = option(
        None, "initialisation: glorot or he", default_text="by activation: he for relu"
    )
    # The prediction group's weights at the start: "random" (as drawn) or "zero"
    # (training/output_init.py); None: unset, as the optimiser settings below.
    output_init: str | None = option(
        None,
        "the output layer's weights at the start: random (as drawn) or zero",
        default_text=RECOMMENDED.format("random"),
    )
    input_stats: str | None = option(
        None,
        "pixels of MNIST-format sets: mnist (shifted and scaled to MNIST's mean and standard "
        "deviation, which every rule's recommended settings suit) or raw (in [0, 1] as stored)",
        default_text="mnist for idx:PATH, raw for the other data sets",
        choices=("mnist", "raw"),
    )
    dropout: float = option(0.0, "dropout probability on hidden groups")
    augment: str | None = option(
        None,
        "training batches: shift:K (random shifts of up to K pixels), crop:P (random crops of "
        "the image padded by P), flip (random mirror images), or several, e.g. crop:4,flip",
        default_text="none",
    )
    rule: str = option(DEFAULT_RULE, "the learning rule", cli=False)
    rule_opts: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})
    # None: unset, to be filled from the rule's recommendation or the default (settings.py).
    optimizer: str | None = option(
        None, "optimiser: sgd, adam or adamw", default_text=RECOMMENDED.format("sgd")
    )
    lr: float | None = option(None, "learning rate", default_text=RECOMMENDED.format(0.05))
    momentum: float | None = option(None, "SGD's momentum", default_text=RECOMMENDED.format(0.9))
    nesterov: bool = option(False, "Nesterov momentum for SGD")
    weight_decay: float | None = option(None, "weight decay", default_text=RECOMMENDED.format(0))
    betas: tuple[float, float] = option((0.9, 0.999), "Adam's betas", cli=False)
    schedule: str | None = option(
        None,
        "learning-rate schedule: constant, step or cosine",
        default_text=RECOMMENDED.format("constant"),
    )
    warmup_epochs: float = option(0.0, "epochs of linear warm-up of the learning rate")
    step_epochs: int = option(10, "step schedule: epochs between decays")
    milestones: str | None = option(
        None,
        "step schedule: decay at these epochs instead, e.g. 100,150,200 (as MultiStepLR)",
        default_text="every --step-epochs",
    )
    gamma: float = option(0.1, "step schedule: decay factor")
    min_lr: float = option(0.0, "cosine schedule: final rate")
    epochs: int = option(20, "epochs of training")
    batch_size: int = option(32, "examples per mini-batch")
    patience: int | None = option(
        None, "stop after N epochs without a better validation accuracy", default_text="never"
    )
    probe_every: int = option(50, "steps between alignment probes against bp's gradient, 0: none")
    probe_size: int = option(256, "examples in the fixed probe batch")
    seed: int = option(0, "seed of the initial weights, the batches and the rule's randomness")
    device: str = option("auto", "auto (cuda if there is a GPU), cpu, cuda or cuda:N")
    dtype: str = option("float32", "float32 or float64")
    # torch.set_float32_matmul_precision during the run: "highest" (strict float32), "high"
    # (TF32 on NVIDIA Ampere and later), "medium"; the process's setting is restored after.
    matmul_precision: str = option(
        "highest",
        "float32 matrix products: highest (strict float32), high (TF32 tensor cores on NVIDIA "
        "Ampere and later), medium (down to bfloat16)",
        choices=MATMUL_PRECISIONS,
    )

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
        if self.input_stats is not None and self.input_stats not in ("mnist", "raw"):
            raise UnknownNameError("input statistics", self.input_stats, ("mnist", "raw"))
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

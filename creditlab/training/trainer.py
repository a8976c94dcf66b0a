"""The training loop: batches in, updates out, history and checkpoints along the way.

Data flows one way: the dataset gives batches, the network runs forward, the rule turns the
batch into updates, the optimiser applies them. After every epoch the loop evaluates on the
validation split, keeps the parameters of the best validation epoch (the test set is only
reported, for that model, never selected on) and writes a checkpoint atomically. Resuming
restores everything that decides the rest of the run (parameters, optimiser and rule state,
random generators, history), so a resumed run on the CPU ends with exactly the weights of an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from creditlab.data import Dataset, load_for_training, match_input_stats
from creditlab.data.augment import augment, image_shape_of, parse_augment
from creditlab.engine import memory, torch_models
from creditlab.engine.activations import activation as lookup_activation
from creditlab.engine.devices import matmul_precision, resolve_device
from creditlab.engine.losses import loss as lookup_loss
from creditlab.engine.models import build_model
from creditlab.engine.network import Network, resolve_dtype
from creditlab.errors import GraphError, TrainingError, UnknownNameError, UsageError
from creditlab.figures.capsules import write_reconstructions
from creditlab.optim import SCHEDULES, SGD, Optimizer, Schedule, optimizer, parse_milestones
from creditlab.rules import Rule, rule
from creditlab.speed.compiled import CompiledStep, compile_problem
from creditlab.speed.process import retain_freed_memory
from creditlab.training import checkpoint, folders, guards, settings
from creditlab.training.config import TrainConfig  # (callers may import it from here too)
from creditlab.training.diagnostics import probe
from creditlab.training.loop import EpochLoop, batch_slice
from creditlab.training.output_init import apply_output_init, zero_applies

Tensor = torch.Tensor

# Fields that may change between a run and its resumption without changing its course (beyond
# float rounding: the device and the precision of float32 matrix products say how, not what).
FREE_ON_RESUME = ("data_dir", "device", "matmul_precision")
# Fields added after runs were saved without them, with the value those runs had in effect.
ADDED_LATER = {"output_init": "random", "input_stats": "raw"}


def differing_fields(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The fields whose values differ, ignoring those free to change on resume.

    The number of epochs may change (to train on) unless a cosine schedule depends on it.
    """
    free = set(FREE_ON_RESUME)
    if saved.get("schedule") != "cosine" and current.get("schedule") != "cosine":
        free.add("epochs")
    saved = {**{k: v for k, v in ADDED_LATER.items() if k in current}, **saved}
    keys = (set(saved) | set(current)) - free
    if "rule_opts" in keys and saved.get("rule") == current.get("rule"):
        keys.discard("rule_opts")
        hint = _rule_options_hint(current.get("rule"), saved.get("rule_opts"), current["rule_opts"])
        if hint is not None:
            differ = f"checkpoint {saved.get('rule_opts')!r}, now {current['rule_opts']!r}"
            return sorted(
                [*differing_fields_of(saved, current, keys), f"rule_opts ({differ}{hint})"]
            )
    return differing_fields_of(saved, current, keys)


def differing_fields_of(saved: dict[str, Any], current: dict[str, Any], keys) -> list[str]:
    return sorted(
        f"{k} (checkpoint {saved.get(k)!r}, now {current.get(k)!r})"
        for k in keys
        if saved.get(k) != current.get(k)
    )


def _rule_options_hint(name: str | None, saved: Any, current: dict[str, Any]) -> str | None:
    """None when the rule's options in effect (given, or the option's default) are the same;
    else how to give the saved ones. A rule's recommendation for the network's family may
    give options a run saved before it did not have (training/settings.py)."""
    if not isinstance(saved, dict):
        return "" if saved != current else None
    try:  # the values in effect, converted by the rule's options (a command line gives text)
        before, now = rule(name, **saved).opts, rule(name, **current).opts
    except (UsageError, TypeError):  # an unknown rule or option: compare them as given
        before, now = saved, current
    if before == now:
        return None
    flags = [
        f"--rule-opt {name}.{k}={_as_flag(before[k])}"
        for k in sorted(before)
        if before[k] != now.get(k)
    ]
    return f"; to go on with the saved ones, give {' '.join(flags)}" if flags else ""


def _as_flag(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def load_for_resume(
    path: Path | None,
    config: dict[str, Any],
    device: torch.device,
    loader: Callable[..., dict[str, Any]] = checkpoint.load,
) -> dict[str, Any] | None:
    """The checkpoint at `path` if it was made with `config` (up to the fields free to change
    on resume); None when there is none; UsageError naming the differing fields otherwise.
    `loader` reads the file (checkpoint.load_run checks a training run's parts first)."""
    if path is None or not path.exists():
        return None
    state = loader(path, map_location=device)
    differ = differing_fields(state["config"], config)
    if differ:
        raise UsageError(
            f"cannot resume {path}: it was made with another configuration; differing "
            f"fields: {'; '.join(differ)}"
        )
    return state


def make_optimizer(config: TrainConfig) -> Optimizer:
    if config.optimizer == "sgd":
        return SGD(config.momentum, config.nesterov, config.weight_decay)
    if config.optimizer in ("adam", "adamw"):
        return optimizer(config.optimizer, betas=config.betas, weight_decay=config.weight_decay)
    return optimizer(config.optimizer)  # raises, listing the valid names


def epoch_permutation(seed: int, epoch: int, n: int, device: torch.device) -> Tensor:
    """The order of the training examples in an epoch: a function of (seed, epoch) alone, so a
    resumed run and every rule in a comparison see the same batches."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).to(device)


def shift_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """The generator of an epoch's random shifts (--augment): seeded by (seed, epoch) like the
    order, so a resumed run, and a reference trained beside it, shift alike."""
    generator = torch.Generator(device=device)
    return generator.manual_seed(seed * 1_000_003 + epoch + 7_919)


def targets_for(net: Network, labels: Tensor, n_classes: int) -> Tensor:
    """Class labels for cross_entropy; one-hot rows for losses that want output-shaped targets."""
    if net.loss_fn.classification:
        return labels
    return torch.nn.functional.one_hot(labels, n_classes).to(net.dtype)


@torch.no_grad()
def evaluate(
    net: Network, learner: Rule, x: Tensor, y: Tensor, n_classes: int, chunk: int | None = None
) -> tuple[float, float]:
    """Mean loss and accuracy on (x, y), in chunks to bound memory (by default as many
    examples as memory.evaluation_chunk allows, at most 8,192)."""
    chunk = chunk or memory.evaluation_chunk(net)
    total_loss, correct = 0.0, 0
    for a in range(0, x.shape[0], chunk):
        xb, yb = x[a : a + chunk], y[a : a + chunk]
        out = learner.output(net, xb)
        total_loss += float(net.loss_fn.per_example(out, targets_for(net, yb, n_classes)).sum())
        scores = learner.predict(net, xb) if learner.own_readout else net.loss_fn.scores(out)
        correct += int((scores.argmax(dim=1) == yb).sum())
    n = max(1, x.shape[0])
    return total_loss / n, correct / n


class Trainer:
    """Runs one configuration: builds everything from the config, trains, reports."""

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | Path | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
        data: Dataset | None = None,
        compile: bool = False,
    ):
        # Unset settings take the rule's recommendation, else the default; sources say which.
        given = config
        config, self.sources = settings.resolve(config)
        self.config = config
        retain_freed_memory()  # a step's freed memory serves the next (speed/process.py)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress, self.log = progress, log
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype)
        # Every name is looked up before the data loads, so a typo fails at once.
        self.rule = rule(config.rule, **config.rule_opts)
        lookup_activation(config.activation)
        lookup_loss(config.loss)
        self.opt = SGD() if self.rule.applies_own_step else make_optimizer(config)
        if config.schedule not in SCHEDULES:
            raise UnknownNameError("schedule", config.schedule, SCHEDULES)
        if data is None:
            data = load_for_training(config, progress)
        # Data handed in raw (a library user's load_dataset) gets the run's input statistics
        # here; data matched already (compare, tune, stacked runs load it once) is kept.
        data = match_input_stats(data, config.input_stats)
        if config.train_subset:
            data = data.subset(n_train=config.train_subset)
        self.data = data.to(self.device, self.dtype)
        self.net = build_model(
            config.model,
            self.data.input_size,
            self.data.n_classes,
            config.activation,
            config.loss,
            self.dtype,
            self.device,
            config.seed,
            config.dropout,
            config.init,
            self.data.image_shape,
        )
        if self.net.n_scores != self.data.n_classes:
            raise GraphError(
                f"output group {self.net.output_name!r} has {self.net.n_scores} units; "
                f"{config.dataset} has {self.data.n_classes} classes"
            )
        built_family = settings.family(self.net)
        if built_family != settings.model_family(config.model):
            # A model whose name does not tell its family (a torch module): the rule's
            # recommendation for the network built applies, and the rule and optimiser follow.
            config, self.sources = settings.resolve(given, built_family)
            self.config = config
            self.rule = rule(config.rule, **config.rule_opts)
            self.opt = SGD() if self.rule.applies_own_step else make_optimizer(config)
        recommended_zero = config.output_init == "zero" and self.sources["output_init"] == "rule"
        if recommended_zero and zero_applies(self.net):  # a capsule output keeps its weights
            config = self.config = dataclasses.replace(config, output_init="random")
            self.sources["output_init"] = "default"
        apply_output_init(self.net, config.output_init)
        self.rule.check(self.net)
        memory.check_batch(self.net, min(config.batch_size, len(self.data.train_y)), self.device)
        self.params = self.net.parameters()
        self.compiled_step = self._compiled_step(compile)
        self.opt_state = self.opt.init(self.params)
        self.steps_per_epoch = math.ceil(self.data.train_x.shape[0] / config.batch_size)
        self.schedule = Schedule(
            "constant" if self.rule.applies_own_step else config.schedule,
            1.0 if self.rule.applies_own_step else config.lr,
            self.steps_per_epoch,
            self.steps_per_epoch * config.epochs,
            config.step_epochs,
            config.gamma,
            config.min_lr,
            0.0 if self.rule.applies_own_step else config.warmup_epochs,
            parse_milestones(config.milestones),
        )
        n_probe = min(config.probe_size, self.data.train_x.shape[0])
        self.probe_batch = (
            self.data.train_x[:n_probe],
            targets_for(self.net, self.data.train_y[:n_probe], self.data.n_classes),
        )
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": 0, "val_accuracy": -1.0}
        self.best_params = self.net.copy_parameters()
        self.epoch = 0  # epochs finished
        self.loss_reference: float | None = None  # the first batch's loss (guards.py)
        self.chance = guards.chance_rate(self.data.val_y, self.data.n_classes)
        self.warnings: list[str] = []

    def _compiled_step(self, compile: bool) -> CompiledStep | None:
        """With `compile`, the whole step (updates and optimiser) compiled where the rule allows
        it; None: the step runs eagerly."""
        self.compiled = False
        if not compile:
            return None
        problem = compile_problem(self.rule, self.net)
        if problem:
            self.log(f"--compile: {self.rule.name} runs eagerly: {problem}")
            return None
        self.compiled = True
        return CompiledStep(self.rule, self.net, self.opt, log=self.log)

    # ---- checkpoints ----------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / "checkpoint.pt" if self.out_dir else None

    def save_checkpoint(self) -> None:
        checkpoint.save(
            self.checkpoint_path,
            {
                "config": self.config.to_dict(),
                "epoch": self.epoch,
                "params": self.net.copy_parameters(),
                "best_params": self.best_params,
                "best": dict(self.best),
                "optimizer": self.opt_state,
                "rule": self.rule.state_dict(),
                "rng": self.net.rng.get_state(),
                "history": self.history,
                "loss_reference": self.loss_reference,
                "warnings": self.warnings,
            },
        )

    def restore(self) -> bool:
        """Continue from the checkpoint in out_dir; False when there is none yet."""
        state = load_for_resume(
            self.checkpoint_path, self.config.to_dict(), self.device, checkpoint.load_run
        )
        if state is None:
            return False
        if state["epoch"] > self.config.epochs:
            raise UsageError(
                f"{self.out_dir} has trained {state['epoch']} epochs, more than the "
                f"{self.config.epochs} asked for; resuming cannot undo epochs. Pass --epochs "
                f"{state['epoch']} or more, --force to start it over, or choose another --out"
            )
        self.net.load_parameters(state["params"])
        self.best_params = {k: v.to(self.device) for k, v in state["best_params"].items()}
        self.best = state["best"]
        self.opt_state = _to_device(state["optimizer"], self.device)
        self.rule.load_state_dict(_to_device(state["rule"], self.device))
        if self.compiled_step:  # a CUDA graph holds the addresses of the rule's tensors
            self.compiled_step.reset()
        self.net.rng.set_state(state["rng"])
        self.history = state["history"]
        self.epoch = state["epoch"]
        self.loss_reference = state.get("loss_reference")
        self.warnings = list(state.get("warnings", []))
        return True

    # ---- the loop -------------------------------------------------------------------------
    def fit(self, until: int | None = None) -> dict[str, Any]:
        """Train to the end and write the results. With `until` (a tuning scheduler's
        milestone) stop after that epoch if the run goes on past it: the checkpoint is written
        as after every epoch, no results yet, and a later fit() goes on from there."""
        with matmul_precision(self.config.matmul_precision):
            return self._fit(until)

    def _fit(self, until: int | None) -> dict[str, Any]:
        config = self.config
        self.prepare_folder()
        last = config.epochs if until is None else min(until, config.epochs)
        while self.epoch < last and not self._patience_ran_out():
            try:
                record = self.train_epoch(self.epoch + 1)
                self.finish_epoch(record)
            except TrainingError as err:
                self._write_results(status="diverged", message=str(err))
                raise
        if self.epoch < config.epochs and not self._patience_ran_out():
            return {"status": "paused", "epochs": self.epoch, "history": self.history}
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Write the results of a run that trained its budget: finished, or stalled when its
        best validation accuracy stayed near chance (guards.py)."""
        if guards.near_chance(self.best["val_accuracy"], self.chance):
            message = guards.stalled_message(
                self.best["val_accuracy"], self.chance, self.epoch, True, self.rule.applies_own_step
            )
            self._warn(message)
            return self._write_results(status="stalled", message=message)
        return self._write_results(status="finished")

    def prepare_folder(self) -> None:
        if self.out_dir:
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                checkpoint.write_json(self.out_dir / "config.json", self.config_record())
            except OSError as err:  # read-only, a file in the way, no space: say where
                raise UsageError(f"cannot write the run into {self.out_dir}: {err}") from None

    def finish_epoch(self, record: dict[str, Any]) -> None:
        """Book an epoch's record: history, the best model so far, the stall warning after the
        first epoch, the checkpoint. Weights that are no longer finite (a last update that
        overflowed) stop the run before they are booked: every checkpoint holds finite weights,
        so the one kept is good."""
        guards.check_weights(self.net.parameters(), self.epoch + 1, self._kept())
        self.epoch += 1
        self.history.append(record)
        if record["val_accuracy"] > self.best["val_accuracy"]:
            self.best = {
                "epoch": self.epoch,
                "val_accuracy": record["val_accuracy"],
            }
            self.best_params = self.net.copy_parameters()
        if self.epoch == 1 and guards.near_chance(record["val_accuracy"], self.chance):
            own_step = self.rule.applies_own_step
            self._warn(
                guards.stalled_message(record["val_accuracy"], self.chance, 1, False, own_step)
            )
        if self.out_dir:
            self.save_checkpoint()

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        self.log(f"creditlab: warning: {message}")

    def _patience_ran_out(self) -> bool:
        patience = self.config.patience
        return patience is not None and self.epoch - self.best["epoch"] >= patience

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch (training/loop.py runs it with this run's step); the epoch's record."""
        config, data, net = self.config, self.data, self.net
        steps = self.steps_per_epoch
        loop = EpochLoop(f"epoch {epoch}/{config.epochs}", steps, self.device, self.progress)
        order = epoch_permutation(config.seed, epoch, data.train_x.shape[0], self.device)
        xs, ys = data.train_x[order], data.train_y[order]
        augments = parse_augment(config.augment)
        if augments:
            shifts = shift_generator(config.seed, epoch, self.device)
            image = image_shape_of(data.image_shape, data.input_size)
        losses = torch.zeros(steps, device=self.device)
        recorded = 0  # steps whose rule reported a batch loss (gradient-free rules may not)
        metric_sums: dict[str, float] = {}
        probes: list[dict[str, Any]] = []
        lr = self.schedule((epoch - 1) * steps)

        def step(i: int) -> None:
            nonlocal recorded, lr
            rows = batch_slice(i, config.batch_size)
            xb, yb = xs[rows], ys[rows]
            if augments:
                xb = augment(xb, image, augments, shifts)
            targets = targets_for(net, yb, data.n_classes)
            lr = self.schedule((epoch - 1) * steps + i)
            if self.compiled_step:  # the optimiser's step is inside the compiled one
                self.compiled_step(xb, targets, self.opt_state, lr)
            else:
                updates = self.rule.updates(net, xb, targets)
            if self.rule.last_loss is not None:
                losses[i] = self.rule.last_loss
                recorded += 1
                if self.loss_reference is None:  # the first batch, before any update
                    self.loss_reference = float(self.rule.last_loss)
            for key, value in self.rule.metrics.items():
                metric_sums[key] = metric_sums.get(key, 0.0) + float(value)
            if not self.compiled_step:
                self.opt.update(self.params, updates, self.opt_state, lr)

        def probe_at(done: int) -> None:
            probes.append({"step": done, **probe(self.rule, net, *self.probe_batch)})

        def postfix(i: int) -> dict[str, str] | None:
            if i % 20 and i + 1 < steps:
                return None
            return {"loss": f"{float(losses[: i + 1].sum()) / max(1, recorded):.4f}"}

        seconds = loop.run(
            step,
            lambda first, last: self._check_finite(losses, first, last, epoch),
            first_step=(epoch - 1) * steps,
            probe_every=config.probe_every,
            probe=probe_at,
            postfix=postfix,
        )
        val_loss, val_acc = evaluate(net, self.rule, data.val_x, data.val_y, data.n_classes)
        train_loss = float(losses.sum()) / recorded if recorded else math.nan
        loop.close(loss=f"{train_loss:.4f}", val_acc=f"{val_acc:.4f}")
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": lr,
            "seconds": seconds,
        }
        record.update({k: v / steps for k, v in metric_sums.items()})
        if probes:
            record["alignment"] = probes
        return record

    def _check_finite(self, losses: Tensor, first: int, last: int, epoch: int) -> None:
        """Stop on a non-finite or exploding loss (guards.py), saying what is kept on disk."""
        kept = self._kept()
        reference = math.nan if self.loss_reference is None else self.loss_reference
        guards.check_losses(losses, first, last, epoch, reference, kept)

    def _kept(self) -> str:
        # Every checkpoint written holds finite weights (finish_epoch checks them first).
        return (
            f"the last good checkpoint ({self.checkpoint_path}, epoch {self.epoch}) is kept"
            if self.out_dir and self.epoch
            else "no checkpoint was written"
        )

    # ---- results --------------------------------------------------------------------------
    def config_record(self) -> dict[str, Any]:
        record = self.config.to_dict()
        record.update(
            kind=folders.TRAIN_KIND,
            device_used=str(self.device),
            compiled=self.compiled,
            rule_options=dict(self.rule.opts),
            optimizer_used="sgd, lr 1 (the rule applies its own step)"
            if self.rule.applies_own_step
            else self.config.optimizer,
            settings_source=dict(self.sources),
            network=self.net.spec(),
            n_parameters=sum(p.numel() for p in self.params.values()),
        )
        return record

    def _write_results(self, status: str, message: str | None = None) -> dict[str, Any]:
        current = self.net.copy_parameters()
        self.net.load_parameters(self.best_params)
        data = self.data
        test_loss, test_acc = evaluate(
            self.net, self.rule, data.test_x, data.test_y, data.n_classes
        )
        self.net.load_parameters(current)
        results = {
            "status": status,
            "rule": self.config.rule,
            "rule_options": dict(self.rule.opts),
            "dataset": self.config.dataset,
            "model": self.config.model,
            "seed": self.config.seed,
            "epochs": self.epoch,
            "best_epoch": self.best["epoch"],
            "test_accuracy": test_acc,
            "test_error": 1.0 - test_acc,
            "test_loss": test_loss,
            "val_accuracy": self.best["val_accuracy"],
            "seconds_per_epoch": [h["seconds"] for h in self.history],
            "history": self.history,
            "config": self.config_record(),
        }
        if message:
            results["message"] = message
        if self.warnings:
            results["warnings"] = list(self.warnings)
        if self.out_dir:  # results last: a run whose results are written is whole
            checkpoint.save(
                self.out_dir / "best.pt",
                {"params": self.best_params, "network": self.net.spec()},
            )
            self.net.load_parameters(self.best_params)  # capsule networks: recon.png
            write_reconstructions(
                self.net, data.test_x, data.image_shape, self.out_dir / "recon.png"
            )
            if torch_models.is_torch_model(self.config.model):  # the user's module, trained
                module_path = self.out_dir / "module.pt"
                torch_models.write_module(
                    self.config.model, self.net, module_path, self.config.seed
                )
            self.net.load_parameters(current)
            checkpoint.write_json(self.out_dir / "results.json", results)
        return results


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    return value


def train(
    config: TrainConfig,
    out_dir=None,
    resume=False,
    progress=True,
    log=print,
    force=False,
    compile=False,
) -> dict:
    """Build and run one configuration; with resume, continue from out_dir's checkpoint; with
    force, clear out_dir's old run first (only once everything has been checked). With
    compile, each step's forward pass and updates run compiled (speed/compiled.py)."""
    trainer = Trainer(config, out_dir, progress, log, compile=compile)
    if force and out_dir is not None:
        folders.clear_run(Path(out_dir))
    elif resume and not trainer.restore():
        log(f"no checkpoint in {out_dir}; starting a new run")
    return trainer.fit()

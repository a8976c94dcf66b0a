"""Training K runs at once as one stack: trainer.py's runs, stepped together by the stack.

Every member is an ordinary Trainer (its config, run folder, rule, optimiser, history, best
model, checkpoints and results.json exactly as a separate run has them); only the step is
shared: the members' batches are gathered into one (K, N, ...) tensor by index from data already
on the device, the stack computes every member's updates in one batched pass, and each member's
own optimiser applies its slice. A member's results equal its separate run's within float
rounding (tests/test_stack*.py). Seconds per epoch are the stack's epoch time divided by K, the
cost per network, and the record says how many were stacked.

    results = train_stacked([config_a, config_b], ["runs/a", "runs/b"])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils import _pytree as pytree

from creditlab.data import Dataset, load_for_training
from creditlab.engine.devices import matmul_precision
from creditlab.errors import TrainingError
from creditlab.speed.compiled import CapturedOptimizer
from creditlab.speed.vmap_stack import Stack, StackError, member_state, stacked_state
from creditlab.training.diagnostics import probe
from creditlab.training.loop import EpochLoop, batch_slice
from creditlab.training.trainer import (
    TrainConfig,
    Trainer,
    epoch_permutation,
    evaluate,
    targets_for,
)

Tensor = torch.Tensor
# What must be equal for runs to share a stack: the step's shapes and the loop's length.
SHARED = ("dataset", "train_subset", "val_size", "model", "activation", "loss", "init")
SHARED += ("dropout", "batch_size", "epochs", "patience", "probe_every", "probe_size")
SHARED += ("device", "dtype", "matmul_precision")
MEMORY_SHARE = 0.5  # the part of the free memory a stack may plan to use


def stack_problem(configs: Sequence[TrainConfig]) -> str | None:
    """Why these configurations cannot share a stack (one line), or None."""
    if len(configs) < 2:
        return "only one run"
    for name in SHARED:
        values = {repr(getattr(c, name)) for c in configs}
        if len(values) > 1:
            return f"the runs differ in {name}"
    if configs[0].patience is not None:
        return "early stopping (patience) ends members at different epochs"
    return None


def member_bytes(trainer: Trainer) -> int:
    """A generous estimate of what one member adds to a stack: its parameters about eight times
    over (the stacked copy, updates, optimiser state, feedback matrices), and the forward and
    backward activity of a batch."""
    item = torch.empty((), dtype=trainer.dtype).element_size()
    n_params = sum(p.numel() for p in trainer.params.values())
    units = sum(g.size for g in trainer.net.groups.values())
    return item * (8 * n_params + 6 * trainer.config.batch_size * units)


def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30  # unknown: assume a modest machine


def members_that_fit(trainer: Trainer) -> int:
    return max(1, int(MEMORY_SHARE * free_bytes(trainer.device) // member_bytes(trainer)))


class StackedTrainer:
    """Trains Trainers of one architecture together; each keeps its own folder and results."""

    def __init__(
        self,
        trainers: Sequence[Trainer],
        progress: bool = True,
        log: Callable[[str], None] = print,
        compile: bool = False,
    ):
        problem = stack_problem([t.config for t in trainers])
        if problem:
            raise StackError(problem)
        epochs = {t.epoch for t in trainers}
        if len(epochs) > 1:
            raise StackError(f"the runs stand at different epochs ({sorted(epochs)})")
        if len({id(t.data) for t in trainers}) > 1 and not _same_data(trainers):
            raise StackError("the runs train on different data")
        self.trainers = list(trainers)
        self.stack = Stack([t.net for t in trainers], [t.rule for t in trainers], compile)
        if compile and not self.stack.compiled:
            log(
                f"--compile: the stack of {trainers[0].config.rule} runs eagerly: its rule keeps "
                "state between steps"
            )
        for t in trainers:
            t.params = t.net.parameters()  # the views into the stack
        self.shared = SharedOptimizer.for_members(trainers)
        # A compiled stack with one shared optimiser runs the optimiser inside its step.
        self.captured = (
            CapturedOptimizer(self.stack.params, next(iter(self.stack.params.values())))
            if self.shared and self.stack.compiled
            else None
        )
        self.progress, self.log = progress, log
        self.active = list(range(len(trainers)))  # members that have not diverged
        self.diverged: dict[int, dict[str, Any]] = {}  # the others' results

    def fit(self) -> list[dict[str, Any]]:
        with matmul_precision(self.trainers[0].config.matmul_precision):
            return self._fit()

    def _fit(self) -> list[dict[str, Any]]:
        results: dict[int, dict[str, Any]] = {}
        for t in self.trainers:
            t.prepare_folder()
        epoch, epochs = self.trainers[0].epoch, self.trainers[0].config.epochs
        while epoch < epochs and self.active:
            epoch += 1
            for k, record in self.train_epoch(epoch).items():  # the active members' records
                try:
                    self.trainers[k].finish_epoch(record)
                except TrainingError as err:  # weights no longer finite: as its own run would
                    t = self.trainers[k]
                    self.diverged[k] = t._write_results(status="diverged", message=str(err))
                    self.active.remove(k)
                    self.log(f"{t.config.rule} seed {t.config.seed}: diverged: {err}")
        results.update(self.diverged)
        for k in self.active:
            results[k] = self.trainers[k].finish()
        return [results[k] for k in range(len(self.trainers))]

    def train_epoch(self, epoch: int) -> dict[int, dict[str, Any]]:
        """One epoch of every active member (training/loop.py runs it with the stack's step);
        their records by member index."""
        first = self.trainers[0]
        config, data, device = first.config, first.data, first.device
        n, steps = data.train_x.shape[0], first.steps_per_epoch
        k_all = len(self.trainers)
        desc = f"epoch {epoch}/{config.epochs} ({k_all} stacked)"
        loop = EpochLoop(desc, steps, device, self.progress)
        order = torch.stack(
            [epoch_permutation(t.config.seed, epoch, n, device) for t in self.trainers]
        )
        losses = torch.zeros(k_all, steps, device=device)
        metric_sums: dict[str, Tensor] = {}
        probes: dict[int, list] = {k: [] for k in range(k_all)}

        def step(i: int) -> None:
            index = order[:, batch_slice(i, config.batch_size)]
            xb = data.train_x[index]
            yb = targets_for(first.net, data.train_y[index], data.n_classes)
            global_step = (epoch - 1) * steps + i
            if self.captured:  # the shared optimiser's step is inside the compiled step
                state, lr = self.captured.before(self.shared.state, first.schedule(global_step))
                loss, metrics = self.stack.step_and_apply(xb, yb, self.shared.opt, state, lr)
                self.captured.after(self.shared.state)
            else:
                updates, loss, metrics = self.stack.updates(xb, yb)
            losses[:, i] = loss
            for key, value in metrics.items():
                metric_sums[key] = metric_sums.get(key, 0) + value.detach()
            if self.shared and not self.captured:
                self.shared.update(self.stack.params, updates, first.schedule(global_step))
            for k in [] if self.shared else self.active:
                t = self.trainers[k]
                lr = t.schedule(global_step)
                t.opt.update(t.params, {name: u[k] for name, u in updates.items()}, t.opt_state, lr)

        def probe_at(done: int) -> None:
            self.stack.sync()
            for k in self.active:
                t = self.trainers[k]
                probes[k].append({"step": done, **probe(t.rule, t.net, *t.probe_batch)})

        seconds = loop.run(
            step,
            lambda first, last: self._check_finite(losses, first, last, epoch),
            first_step=(epoch - 1) * steps,
            probe_every=config.probe_every,
            probe=probe_at,
        )
        seconds /= k_all  # the cost per network
        loop.close()
        self.stack.sync()  # each member's rule and optimiser hold their state for the checkpoint
        if self.shared:
            self.shared.sync()
        records = {}
        for k in self.active:
            t = self.trainers[k]
            val_loss, val_acc = evaluate(t.net, t.rule, data.val_x, data.val_y, data.n_classes)
            record = {
                "epoch": epoch,
                "train_loss": float(losses[k].sum()) / steps,  # as Trainer.train_epoch sums
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "lr": t.schedule(epoch * steps - 1),
                "seconds": seconds,
                "stacked": k_all,
            }
            record.update({key: float(v[k]) / steps for key, v in metric_sums.items()})
            if probes[k]:
                record["alignment"] = probes[k]
            records[k] = record
        return records

    def _check_finite(self, losses: Tensor, first: int, last: int, epoch: int) -> None:
        """A member whose loss is no longer finite stops as its separate run would: its results
        say diverged and its last good checkpoint is kept; the others go on."""
        for k in list(self.active):
            t = self.trainers[k]
            try:
                t._check_finite(losses[k], first, last, epoch)
            except TrainingError as err:
                self.diverged[k] = t._write_results(status="diverged", message=str(err))
                self.active.remove(k)
                self.log(f"{t.config.rule} seed {t.config.seed}: diverged: {err}")


class SharedOptimizer:
    """One optimiser step over the stacked parameters, for members whose optimisers (kind and
    settings) and learning-rate schedules are the same: the formulas are elementwise, so the
    step of the stack is every member's step, in a K-th of the calls. The members' states are
    stacked; each member's opt_state holds views of it (refreshed by sync)."""

    def __init__(self, trainers: Sequence[Trainer]):
        self.trainers = list(trainers)
        self.opt = trainers[0].opt
        self.state = stacked_state([t.opt_state for t in trainers])
        self.sync()

    @classmethod
    def for_members(cls, trainers: Sequence[Trainer]) -> SharedOptimizer | None:
        first = trainers[0]
        for t in trainers[1:]:
            if type(t.opt) is not type(first.opt) or vars(t.opt) != vars(first.opt):
                return None
            if t.schedule != first.schedule or _numbers(t.opt_state) != _numbers(first.opt_state):
                return None
        return cls(trainers)

    def update(self, params: dict[str, Tensor], updates: dict[str, Tensor], lr: float) -> None:
        self.opt.update(params, updates, self.state, lr)

    def sync(self) -> None:
        """Give each member an opt_state of views into the stacked state, with the current
        plain numbers (the step count)."""
        for k, t in enumerate(self.trainers):
            t.opt_state = member_state(self.state, k)


def _numbers(state: Any) -> list:
    """The plain numbers of an optimiser state (its step count), tensors left out."""
    return [v for v in pytree.tree_flatten(state)[0] if not isinstance(v, Tensor)]


def _same_data(trainers: Sequence[Trainer]) -> bool:
    a = trainers[0].data
    return all(
        t.data.train_x.shape == a.train_x.shape and torch.equal(t.data.train_y, a.train_y)
        for t in trainers[1:]
    )


def train_stacked(
    configs: Sequence[TrainConfig],
    out_dirs: Sequence[str | Path | None] | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    data: Dataset | None = None,
    compile: bool = False,
) -> list[dict[str, Any]]:
    """Train these runs as stacks and return each one's results, in order (as train() would).

    Runs go into stacks of as many members as memory allows; runs that cannot stack with the
    others (a rule without a stacked form, different architectures) train one by one, and a
    line says why.
    """
    out_dirs = list(out_dirs) if out_dirs is not None else [None] * len(configs)
    if data is None:
        first = configs[0]
        data = load_for_training(first, progress)
    trainers = [
        Trainer(c, d, progress=progress, log=log, data=data)
        for c, d in zip(configs, out_dirs, strict=True)
    ]
    if resume:
        for t in trainers:
            t.restore()
    return fit_together(trainers, progress, log, compile)


def fit_together(
    trainers: Sequence[Trainer],
    progress: bool = True,
    log: Callable[[str], None] = print,
    compile: bool = False,
) -> list[dict[str, Any]]:
    """Fit the trainers in stacks that fit in memory, or one by one where they cannot stack."""
    trainers = list(trainers)
    chunk = members_that_fit(trainers[0]) if trainers else 1
    results: list[dict[str, Any]] = []
    for a in range(0, len(trainers), chunk):
        group = trainers[a : a + chunk]
        try:
            stacked = StackedTrainer(group, progress, log, compile)
        except StackError as why:
            log(f"not stacked ({why}); training {len(group)} run(s) one by one")
            results += [fit_alone(t, log) for t in group]
            continue
        if chunk < len(trainers) and a == 0:
            log(f"stacks of {chunk}: more members would not fit in the free memory")
        results += stacked.fit()
    return results


def fit_alone(trainer: Trainer, log: Callable[[str], None] = print) -> dict[str, Any]:
    """trainer.fit(), with a divergence reported in the results (as a stacked member's is)
    rather than raised."""
    try:
        return trainer.fit()
    except TrainingError as err:
        log(f"{trainer.config.rule} seed {trainer.config.seed}: diverged: {err}")
        return trainer._write_results(status="diverged", message=str(err))

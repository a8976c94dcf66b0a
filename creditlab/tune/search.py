"""creditlab tune: the same hyperparameter search for every rule, run on Ray.

Every rule gets the same number of trials and the same epoch budget. Trial i of a rule draws its
settings from the space the rule declares (rules/*.py `search_space`) with a key made of the
seed, the rule and i alone, so the same command draws the same trials. Trials are judged on the
validation split, and the same ASHA scheduler (asha.py: milestones grace * eta^k epochs) stops
the poor ones early, each rule's trials ranked against each other only. The best trial of each
rule (best validation accuracy) is then trained again on --seeds seeds by compare, which reports
them on the test set.

Every trial is an ordinary run folder, out/trials/RULE/RULE-NNN (config.json, checkpoint.pt
after every epoch, results.json when it ends), with trial.json beside them: its settings, status
and the values ASHA judged. The driver (this process) alone writes trial.json, after each job
comes back. Run again, tune skips every trial that is done (finished, stopped by ASHA or
diverged) and continues the rest from their checkpoints. A job whose worker dies is retried by
Ray from the trial's last checkpoint; what a finished trial wrote stays in the folder.

Stacked trials: trials_by_architecture() groups one rule's trials that share a network, which
is what a stacked (batched) computation of several trials at once would need; creditlab has no
stacked networks yet, so every trial trains on its own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from creditlab.compare import runs as compare
from creditlab.data import Dataset, load_for_training
from creditlab.errors import TrainingError, UsageError
from creditlab.progress import bar as progress_bar
from creditlab.rules import rule_class
from creditlab.rules.machinery import space as spaces
from creditlab.training import checkpoint
from creditlab.training.trainer import TrainConfig, Trainer
from creditlab.tune import report as tune_report
from creditlab.tune.asha import ASHA

KIND = "creditlab-tune"
# A trial in one of these is never trained again. "stalled": it ran its whole budget near chance
# (training/guards.py); it stays a candidate like a finished one, and loses on its merits.
DONE = ("finished", "stopped", "diverged", "stalled")
# What a tune keeps in its --out beside the compare report of the retrained best (runs/: a best
# trial that trained the whole budget on the search seed, copied in as that seed's run).
TUNE_FILES = ("trials", "tune.json", "tune.md", "tune.html", "search_curves.png", "runs")


@dataclasses.dataclass
class Trial:
    rule: str
    index: int
    params: dict[str, Any]  # the drawn settings
    config: TrainConfig
    folder: Path
    status: str = "new"  # new, running, paused, stopped, finished, diverged, error
    epochs: int = 0
    curve: list[float] = dataclasses.field(default_factory=list)  # val accuracy per epoch
    rungs: dict[str, float] = dataclasses.field(default_factory=dict)  # milestone -> value
    seconds: float = 0.0  # time its jobs took on the workers, summed
    message: str = ""

    @property
    def name(self) -> str:
        return f"{self.rule}-{self.index:03d}"

    @property
    def best(self) -> float:
        return max(self.curve, default=float("nan"))

    def record(self) -> dict[str, Any]:
        keys = ("rule", "index", "params", "status", "epochs", "curve", "rungs", "seconds")
        data = {k: getattr(self, k) for k in keys}
        data.update(name=self.name, best_val_accuracy=self.best, message=self.message)
        return data

    def save(self) -> None:
        checkpoint.write_json(self.folder / "trial.json", self.record())


# ---- the trials ----------------------------------------------------------------------------
def trial_config(base: TrainConfig, rule_name: str, fixed: dict, params: dict) -> TrainConfig:
    """The configuration of a trial: the tune's, with the drawn settings in their places."""
    options = {**fixed, **{k: v for k, v in params.items() if k in rule_class(rule_name).options}}
    fields: dict[str, Any] = {"rule": rule_name, "rule_opts": options}
    for key in ("lr", "weight_decay", "momentum", "dropout", "batch_size"):
        if key in params:
            fields[key] = params[key]
    if "beta1" in params or "beta2" in params:
        fields["betas"] = (params.get("beta1", base.betas[0]), params.get("beta2", base.betas[1]))
    return dataclasses.replace(base, **fields)


def make_trials(
    base: TrainConfig, rules: Sequence[str], n: int, fixed: dict, out_dir: Path
) -> dict[str, list[Trial]]:
    trials = {}
    for name in rules:
        space = spaces.resolve(rule_class(name), base.optimizer, tuple(fixed.get(name, {})))
        if not space:
            raise UsageError(f"rule {name!r} has nothing left to search (see `creditlab rules`)")
        trials[name] = []
        for i in range(n):
            params = spaces.draw(space, f"{base.seed}:{name}:{i}")
            config = trial_config(base, name, fixed.get(name, {}), params)
            folder = out_dir / "trials" / name / f"{name}-{i:03d}"
            trials[name].append(Trial(name, i, params, config, folder))
    return trials


def trials_by_architecture(trials: Sequence[Trial]) -> dict[str, list[Trial]]:
    """One rule's trials grouped by the network they train (model, activation, loss, init,
    batch size, dtype): the trials a stacked computation could train side by side."""
    groups: dict[str, list[Trial]] = {}
    for trial in trials:
        c = trial.config
        key = f"{c.model}|{c.activation}|{c.loss}|{c.init}|{c.batch_size}|{c.dtype}"
        groups.setdefault(key, []).append(trial)
    return groups


def load_state(trial: Trial, asha: ASHA, force: bool) -> str | None:
    """Read a trial's folder into `trial` (and its judged values into asha). Returns why the
    folder cannot be used (made with other settings), or None."""
    state, differ = compare.run_state(trial.folder, trial.config)
    if state == "differs":
        if not force:
            return f"{trial.folder}: {'; '.join(differ)}"
        shutil.rmtree(trial.folder)
        return None
    saved = compare._read_json(trial.folder / "trial.json")
    if saved and saved.get("params") == json.loads(json.dumps(trial.params)):
        for key in ("status", "epochs", "curve", "rungs", "seconds", "message"):
            setattr(trial, key, saved[key])
    if state == "done" and trial.status not in DONE:  # ended, but trial.json was not written
        results = compare._read_json(trial.folder / "results.json")
        trial.curve = [h["val_accuracy"] for h in results["history"]]
        trial.epochs, trial.status = results["epochs"], results["status"]
    for milestone, value in trial.rungs.items():
        asha.recorded[int(milestone)][trial.index] = value
    return None


# ---- one job, on a worker ------------------------------------------------------------------
def trial_job(config: dict[str, Any], folder: str, until: int, data: Dataset) -> dict[str, Any]:
    """Train a trial from its checkpoint up to epoch `until`; its validation curve. Runs on a
    Ray worker (or here, without Ray)."""
    start = time.perf_counter()
    worker = {"pid": os.getpid(), "host": socket.gethostname(), "until": until}
    checkpoint.write_json(Path(folder) / "worker.json", worker)  # who trains it now
    trainer = Trainer(TrainConfig.from_dict(config), folder, progress=False, data=data)
    trainer.restore()
    try:
        status, message = trainer.fit(until)["status"], ""
    except TrainingError as err:
        status, message = "diverged", str(err)
    curve = [h["val_accuracy"] for h in trainer.history]
    seconds = time.perf_counter() - start
    return {
        "status": status,
        "epochs": trainer.epoch,
        "curve": curve,
        "seconds": seconds,
        "message": message,
        **worker,
    }


# ---- the sweep -----------------------------------------------------------------------------
class Sweep:
    """Runs every rule's trials through a pool under its ASHA, the same for every rule."""

    def __init__(self, trials, ashas, pool, data, log, progress):
        self.trials: dict[str, list[Trial]] = trials
        self.ashas: dict[str, ASHA] = ashas
        self.pool, self.data, self.log = pool, data, log
        self.jobs = 0  # jobs run in this session
        every = [t for ts in trials.values() for t in ts]
        self.bar = progress_bar(
            total=len(every),
            initial=sum(t.status in DONE for t in every),
            desc="trials done",
            unit="trial",
            disable=not progress,
            dynamic_ncols=True,
        )
        # Trials already under way go first, then new ones, taking the rules in turn.
        self.ready = deque(t for t in every if t.status in ("running", "paused", "error"))
        new = [[t for t in ts if t.status == "new"] for ts in trials.values()]
        self.new = deque(t for row in zip_longest(new) for t in row)
        self.last_table = time.monotonic()

    def say(self, text: str) -> None:
        if self.bar.disable:
            self.log(text)
        else:
            self.bar.write(text)

    def run(self) -> None:
        if not (self.ready or self.new):
            self.bar.close()
            return
        shared = self.pool.share(self.data)
        try:
            while True:
                while self.pool.busy() < self.pool.slots and (self.ready or self.new):
                    self.submit(self.ready.popleft() if self.ready else self.new.popleft(), shared)
                if not self.pool.busy():
                    break
                name, result, error = self.pool.wait()
                self.finish(self.find(name), result, error)
                if time.monotonic() - self.last_table > 60:
                    self.say(tune_report.status_table(self.trials))
                    self.last_table = time.monotonic()
        finally:
            self.bar.close()

    def find(self, name: str) -> Trial:
        rule_name, index = name.rsplit("-", 1)
        return self.trials[rule_name][int(index)]

    def submit(self, trial: Trial, shared: Any) -> None:
        until = self.ashas[trial.rule].next_stop(trial.epochs)
        trial.status, trial.message = "running", ""
        trial.save()
        self.pool.submit(
            trial.name, trial_job, trial.config.to_dict(), str(trial.folder), until, shared
        )
        self.jobs += 1

    def finish(self, trial: Trial, result: dict | None, error: BaseException | None) -> None:
        if error is not None:
            trial.status, trial.message = "error", str(error).strip().splitlines()[-1][:300]
            trial.save()
            self.say(
                f"[{trial.rule}] trial {trial.name} failed: {trial.message} (run the same "
                "command again to retry it)"
            )
            return
        trial.epochs, trial.curve = result["epochs"], result["curve"]
        trial.seconds += result["seconds"]
        asha = self.ashas[trial.rule]
        where = f"[{trial.rule}] trial {trial.name} epoch {trial.epochs}/{asha.max_epochs}"
        if result["status"] in ("diverged", "finished", "stalled"):
            trial.status, trial.message = result["status"], result["message"]
            note = trial.status
        else:
            cutoff = asha.cutoff(trial.epochs, without=trial.index)
            goes_on = asha.report(trial.index, trial.epochs, trial.best)
            trial.rungs[str(trial.epochs)] = trial.best
            trial.status = "paused" if goes_on else "stopped"
            vs = "" if cutoff is None else f" (rung cutoff {cutoff:.4f})"
            note = ("goes on" if goes_on else "stopped by ASHA") + vs
            if goes_on:
                self.ready.appendleft(trial)  # a surviving trial trains on before new ones
        trial.save()
        if trial.status in DONE:
            self.bar.update(1)
        best = tune_report.best_trial(self.trials[trial.rule]) or trial
        self.say(
            f"{where}: val acc {trial.best:.4f}, {note}. Best is trial {best.name} with "
            f"val acc {best.best:.4f}."
        )


def zip_longest(rows: list[list[Trial]]) -> list[list[Trial]]:
    """Columns of rows of unequal length: the rules taken in turn."""
    width = max((len(r) for r in rows), default=0)
    return [[r[i] for r in rows if i < len(r)] for i in range(width)]


def reuse_best_run(trial: Trial, out_dir: Path, seeds: Sequence[int], log) -> None:
    """A best trial that trained the whole budget is already the retraining on the search's own
    seed (same settings, weights and batches): its folder is copied in as that run rather than
    trained a second time."""
    target = compare.run_dir(out_dir, trial.rule, trial.config.seed)
    if trial.status != "finished" or trial.config.seed not in seeds or target.exists():
        return
    shutil.copytree(trial.folder, target, ignore=shutil.ignore_patterns("trial.json", "worker.*"))
    log(f"[{trial.rule}] the best trial {trial.name} is the run on seed {trial.config.seed}")


# ---- tune ----------------------------------------------------------------------------------
def tune(
    base: TrainConfig,
    rules: Sequence[str],
    trials: int,
    out_dir: str | Path,
    pool: Any,
    *,
    seeds: Sequence[int] | int = 1,
    rule_opts: dict[str, dict[str, Any]] | None = None,
    grace: int = 1,
    eta: int = 3,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    command: str = "",
) -> dict[str, Any]:
    """Search every rule, retrain each rule's best on the seeds, write the reports; the
    tune's record (also out_dir/tune.json)."""
    out_dir = Path(out_dir)
    rules = compare.rule_list(rules)
    seeds = compare.seed_list(seeds, base.seed)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise UsageError(f"--trials needs a positive number, got {trials!r}")
    strays = sorted(set(rule_opts or {}) - set(rules))
    if strays:
        raise UsageError(f"options given for rule(s) not tuned: {', '.join(strays)}")
    fixed, _ = compare.check_rule_options(rules, rule_opts or {})
    ashas = {name: ASHA(base.epochs, grace, eta) for name in rules}
    all_trials = make_trials(base, rules, trials, fixed, out_dir)
    previous = compare._read_json(out_dir / "tune.json")
    if previous is not None and previous.get("kind") != KIND:
        raise UsageError(f"{out_dir / 'tune.json'} is not a tune's record; choose another --out")
    if previous is not None:  # ASHA's earlier decisions only hold under the same milestones
        was = previous["settings"]
        if (was["grace_epochs"], was["eta"]) != (grace, eta):
            raise UsageError(
                f"{out_dir} was tuned with --grace-epochs {was['grace_epochs']} --eta "
                f"{was['eta']}; give the same, or choose another --out"
            )
    blocked = [
        why
        for name in rules
        for t in all_trials[name]
        if (why := load_state(t, ashas[name], force))
    ]
    if blocked:
        raise UsageError(
            "trial folder(s) made with other settings (pass --force to start them over, or "
            "choose another --out):\n  " + "\n  ".join(blocked)
        )
    data = load_for_training(base, progress)
    for name in rules:  # options that only fail on the network fail before any trial trains
        compare._try_rule_on_network(all_trials[name][0].config, data)
    record = tune_report.new_record(
        KIND, base, rules, trials, seeds, ashas[rules[0]], fixed, pool.description, command
    )
    for name in rules:
        space = spaces.resolve(rule_class(name), base.optimizer, tuple(fixed.get(name, {})))
        record["rules"][name]["space"] = {k: str(e) for k, e in space.items()}
    earlier = (previous or {}).get("settings", {})  # the sessions before this one
    record["settings"]["started"] = earlier.get("started", record["settings"]["started"])
    record["settings"]["sweep_seconds"] = earlier.get("sweep_seconds", 0.0)
    checkpoint.write_json(out_dir / "tune.json", record)
    log(
        f"tuning {', '.join(rules)}: {trials} trials each, up to {base.epochs} epochs, ASHA "
        f"milestones {ashas[rules[0]].milestones or 'none'} (eta {eta}), on {pool.description}"
    )
    shared = max(len(g) for ts in all_trials.values() for g in trials_by_architecture(ts).values())
    log(
        f"up to {shared} trials of a rule share a network; with no stacked networks in this "
        "build, each trial trains on its own"
    )
    done = sum(t.status in DONE for ts in all_trials.values() for t in ts)
    if done:
        log(f"{done} trial(s) done earlier are kept, not trained again")
    sweep = Sweep(all_trials, ashas, pool, data, log, progress)
    started = time.perf_counter()
    sweep.run()
    record["settings"]["sweep_seconds"] += time.perf_counter() - started
    record["settings"]["jobs_run"] = sweep.jobs
    best = tune_report.fill(record, all_trials)
    checkpoint.write_json(out_dir / "tune.json", record)
    failed = [t.name for ts in all_trials.values() for t in ts if t.status not in DONE]
    if failed:
        tune_report.render(record, out_dir)
        raise TrainingError(
            f"trial(s) {', '.join(failed)} did not finish; run the same command again to retry"
        )
    log(tune_report.status_table(all_trials))
    for name in rules:
        reuse_best_run(best[name], out_dir, seeds, log)
    log(f"retraining the best trial of each rule on seed(s) {', '.join(map(str, seeds))}")
    retrained = compare.compare(
        base,
        rules,
        seeds,
        {name: dict(best[name].config.rule_opts) for name in rules},
        out_dir,
        force=force,
        progress=progress and not pool.remote,
        log=log,
        data=data,
        command=command,
        configs={name: best[name].config for name in rules},
        pool=pool if pool.remote else None,
        beside=TUNE_FILES,
    )
    for run in retrained["runs"]:  # the test errors of the retrained best, per rule
        errors = record["rules"][run["rule"]].setdefault("test_errors", {})
        errors[str(run["seed"])] = run["test_error"]
    record["status"] = "finished"
    checkpoint.write_json(out_dir / "tune.json", record)
    tune_report.render(record, out_dir)
    return record

"""Compare learning rules fairly: every rule on every seed, same data, same start, same budget.

A compare trains one run per (rule, seed) from one TrainConfig that differs between runs only in
the rule, its options and the seed. The engine derives the initial forward weights and the
order of the batches from the seed alone, so on a given seed every rule starts from the same
weights and sees the same batches for the same number of epochs. The data set is loaded once.

Each run lives in out_dir/runs/RULE-seedN/ and checkpoints after every epoch, so a compare that
is run again picks up where it stopped: finished runs are kept, the unfinished one resumes from
its checkpoint. A run folder made with other settings is never overwritten silently. The
results of every run, with the compare's settings, go to out_dir/results.json;
creditlab.compare.report
draws the table, the plots and the HTML page from them.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import platform
import re
import shlex
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from creditlab.compare import report
from creditlab.data import Dataset, load_for_training
from creditlab.engine.devices import resolve_device
from creditlab.engine.network import resolve_dtype
from creditlab.errors import TrainingError, UsageError
from creditlab.rules import DEFAULT_COMPARE_RULES, GRADIENT_RULE, RULES, rule, rule_class
from creditlab.speed.stacked_runs import StackedTrainer, members_that_fit
from creditlab.speed.vmap_stack import StackError
from creditlab.training import checkpoint, folders, locks, settings
from creditlab.training.trainer import (
    FREE_ON_RESUME,
    TrainConfig,
    Trainer,
    differing_fields,
    targets_for,
)

DEFAULT_RULES = DEFAULT_COMPARE_RULES  # (rules/__init__.py)
KIND = "creditlab-compare"  # marks a folder's results.json as a compare's


# ---- settings ------------------------------------------------------------------------------
def option_example() -> str:
    """ "fa.scale=0.5": an option of a default rule, for messages (from the registry)."""
    for name in DEFAULT_COMPARE_RULES:
        for key, option in rule_class(name).options.items():
            return f"{name}.{key}={option.default}"
    return "RULE.KEY=VALUE"


def rule_list(text: str | Sequence[str]) -> list[str]:
    """Rule names from "bp,fa,dni" (or a list), checked against the registry; "all" is every
    registered rule, the gradient's rule first (the reference) and the rest by name."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text)
    names = [n for n in names if n]
    if names == ["all"]:
        return sorted(RULES, key=lambda name: (name != GRADIENT_RULE, name))
    if not names:
        example = ",".join(DEFAULT_COMPARE_RULES[:2])
        raise UsageError(f"--rules needs at least one rule name, e.g. --rules {example}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"rule(s) named more than once in --rules: {', '.join(repeated)}")
    for name in names:
        rule_class(name)  # an unknown name raises, listing the valid ones
    return names


def seed_list(text: str | int | Sequence[int], base_seed: int = 0) -> list[int]:
    """--seeds N (N seeds counting up from base_seed) or --seeds 0,3,7 (these seeds)."""
    if isinstance(text, str) and "," in text:
        try:
            seeds = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise UsageError(f"--seeds needs a count or a list like 0,1,2, got {text!r}") from None
    elif isinstance(text, (str, int)):
        try:
            count = int(text)
        except ValueError:
            raise UsageError(f"--seeds needs a count or a list like 0,1,2, got {text!r}") from None
        if count < 1:
            raise UsageError(f"--seeds needs at least one seed, got {text!r}")
        seeds = list(range(base_seed, base_seed + count))
    else:
        seeds = [int(s) for s in text]
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds needs distinct seeds, got {text!r}")
    return seeds


def parse_rule_opts(items: Iterable[str], rules: Sequence[str]) -> dict[str, dict[str, str]]:
    """--rule-opt RULE.KEY=VALUE items, grouped by rule. Several rules run in a compare, so the
    RULE prefix is required, and it must name one of them: an option that no run would use is
    a mistake, not something to ignore."""
    opts: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        owner, dot, name = key.partition(".")
        if not sep or not dot or not owner or not name:
            raise UsageError(
                f"--rule-opt needs RULE.KEY=VALUE (e.g. {option_example()}), got {item!r}"
            )
        if owner not in rules:
            raise UsageError(
                f"--rule-opt {item!r} is for rule {owner!r}, which is not among the rules "
                f"compared ({', '.join(rules)})"
            )
        opts.setdefault(owner, {})[name] = value
    return opts


def check_rule_options(
    rules: Sequence[str], rule_opts: dict[str, dict[str, Any]]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Build every rule once with its options, so that an unknown option or a value of the wrong
    type fails before anything trains. Returns (the options given, converted to their types;
    every option of every rule, defaults included)."""
    given, resolved = {}, {}
    for name in rules:
        learner = rule(name, **rule_opts.get(name, {}))
        given[name] = {k: learner.opts[k] for k in rule_opts.get(name, {})}
        resolved[name] = dict(learner.opts)
    return given, resolved


def run_config(base: TrainConfig, rule_name: str, opts: dict[str, Any], seed: int) -> TrainConfig:
    """One run's config: the compare's, with this run's rule, options and seed."""
    return dataclasses.replace(base, rule=rule_name, rule_opts=dict(opts), seed=seed)


def rule_settings(
    base: TrainConfig, rule_name: str, family_name: str | None = None
) -> dict[str, tuple[Any, str]]:
    """The training settings a rule's runs use, each with its source (user, rule, default),
    for a network of `family_name` (default: the one the model's name says)."""
    config, sources = settings.resolve(dataclasses.replace(base, rule=rule_name), family_name)
    return {key: (getattr(config, key), source) for key, source in sources.items()}


def run_dir(out_dir: Path, rule_name: str, seed: int) -> Path:
    return Path(out_dir) / "runs" / f"{rule_name}-seed{seed}"


def default_out_dir(
    base: TrainConfig, rules: Sequence[str], seeds: Sequence[int], rule_opts: dict
) -> Path:
    """reports/DATASET-HASH, the hash taken over the settings: the same command finds (and
    resumes) its own folder, and a different one never lands in it."""
    settings = {k: v for k, v in base.to_dict().items() if k not in FREE_ON_RESUME}
    settings.update(rule=None, seed=None, rules=list(rules), seeds=list(seeds), opts=rule_opts)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    dataset = re.sub(r"[^A-Za-z0-9_.-]+", "_", base.dataset).strip("_")
    return Path("reports") / f"{dataset}-{digest}"


def equivalent_command(
    base: TrainConfig, rules: Sequence[str], seeds: Sequence[int], rule_opts: dict
) -> str:
    """A `creditlab compare` command line that repeats this compare (options left at their
    defaults are not spelled out)."""
    default = TrainConfig().to_dict()
    args = ["creditlab", "compare", "--rules", ",".join(rules)]
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        args += ["--seeds", str(len(seeds))] + (["--seed", str(seeds[0])] if seeds[0] else [])
    else:
        args += ["--seeds", ",".join(map(str, seeds))]
    skip = {"rule", "rule_opts", "seed", "betas"}  # betas has no flag of its own
    for key, value in base.to_dict().items():
        if key in skip or (value == default[key] and key not in ("dataset", "model", "epochs")):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args += [flag] if value else []
        elif value is not None:
            args += [flag, str(value)]
    for name, opts in rule_opts.items():
        for key, value in opts.items():
            text = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
            args += ["--rule-opt", f"{name}.{key}={text}"]
    return shlex.join(args)


# ---- what is on disk -----------------------------------------------------------------------
def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig fields of a config record, as JSON would give them back (a tuple option
    saved to JSON comes back as a list; compare like with like)."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return json.loads(json.dumps({k: v for k, v in config.items() if k in known}))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot read {path}: {err}") from None


def run_state(folder: Path, config: TrainConfig) -> tuple[str, list[str]]:
    """What to do with a run folder: ("done", []) when it holds this run's final results,
    ("continue", []) when there is nothing or a checkpoint of this run to go on from,
    ("differs", fields) when it was made with another configuration."""
    current = _comparable(settings.resolve(config)[0].to_dict())  # as the run records it
    saved = _read_json(folder / "config.json")
    if saved is not None:
        differ = differing_fields(_comparable(saved), current)
        if differ:
            return "differs", differ
    results = _read_json(folder / "results.json")
    if results and results.get("status") in ("finished", "diverged", "stalled"):
        done_with = _comparable(results.get("config", {}))
        if not differing_fields(done_with, current) and done_with.get("epochs") == config.epochs:
            return "done", []
    return "continue", []


# ---- peak memory ---------------------------------------------------------------------------
def _vm_hwm_bytes() -> int | None:
    """The process's peak resident set size (Linux /proc/self/status VmHWM)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(r"^VmHWM:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(found.group(1)) * 1024 if found else None


class PeakMemory:
    """Peak memory over a run: PyTorch's allocations on CUDA; on the CPU the whole process's
    peak resident set size, reset before the run when Linux lets us (writing 5 to
    /proc/self/clear_refs), else the peak since the process started."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "peak CUDA memory" if device.type == "cuda" else "peak RSS"
        self.note = ""

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.note = ""
        except OSError:
            self.note = "since the process started (could not reset)"

    def stop(self) -> dict[str, Any]:
        if self.device.type == "cuda":
            value = torch.cuda.max_memory_allocated(self.device)
        else:
            value = _vm_hwm_bytes()
        record = {"kind": self.kind, "bytes": value}
        if self.note:
            record["note"] = self.note
        return record


# ---- the compare ---------------------------------------------------------------------------
def compare(
    base: TrainConfig,
    rules: Sequence[str],
    seeds: Sequence[int] | int,
    rule_opts: dict[str, dict[str, Any]] | None,
    out_dir: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    data: Dataset | None = None,
    command: str | None = None,
    configs: dict[str, TrainConfig] | None = None,
    pool: Any = None,
    stack: bool = True,
    beside: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Train every rule on every seed into out_dir, then write results.json and the report.

    rule_opts maps a rule to its option overrides (strings from the command line or values).
    configs gives a rule its own base configuration in place of `base` (a tune's best
    settings). pool (creditlab.tune.ray_backend) runs the runs on Ray workers; without
    one they train here, one after another.
    With `stack`, the seeds of a rule train together as one stack of networks
    (creditlab.speed.stacked_runs); each run keeps its own folder, checkpoints and results.
    Returns the aggregated record written to out_dir/results.json.
    """
    configs = configs or {}
    out_dir = Path(out_dir)
    rules = rule_list(rules)
    seeds = seed_list(seeds, base.seed)
    rule_opts = dict(rule_opts or {})
    strays = sorted(set(rule_opts) - set(rules))
    if strays:
        raise UsageError(
            f"options given for rule(s) not compared: {', '.join(strays)} "
            f"(rules compared: {', '.join(rules)})"
        )
    opts, resolved = check_rule_options(rules, rule_opts)
    folders.check_writable(out_dir)
    previous = _read_json(out_dir / "results.json")
    if previous is not None and previous.get("kind") != KIND:
        raise UsageError(
            f"{out_dir / 'results.json'} is not a compare's results; choose another --out"
        )
    # `beside`: what a caller keeps in the same folder on purpose (a tune's trials and record).
    beside = (*beside, *locks.OURS)  # and the folder's lock and kind (training/locks.py)
    others = [p for p in out_dir.iterdir() if p.name not in beside] if out_dir.is_dir() else []
    if previous is None and others:
        raise UsageError(
            f"--out {out_dir} is not empty and holds no compare; the report would mix its files "
            "with what is there. Choose a new or empty folder"
        )
    runs = [
        (name, seed, run_config(configs.get(name, base), name, opts[name], seed))
        for seed in seeds
        for name in rules
    ]
    # Everything that could stop the compare is checked before the first run trains.
    blocked = []
    for name, seed, config in runs:
        state, differ = run_state(run_dir(out_dir, name, seed), config)
        if state == "differs" and not force:
            blocked.append(f"{run_dir(out_dir, name, seed)}: {'; '.join(differ)}")
        trained = _epochs_trained(run_dir(out_dir, name, seed)) if state == "continue" else 0
        if trained > config.epochs and not force:
            blocked.append(
                f"{run_dir(out_dir, name, seed)}: has trained {trained} epochs, more than the "
                f"{config.epochs} asked for"
            )
    if blocked:
        raise UsageError(
            "run folder(s) made with another configuration or longer (pass --force to start "
            "them over, or choose another --out):\n  " + "\n  ".join(blocked)
        )
    if data is None:
        data = load_for_training(base, progress)
    family_name = None  # the network's, as built (a torch module's is known only then)
    for name in rules:  # options that depend on the network (e.g. block boundaries)
        config = run_config(configs.get(name, base), name, opts[name], seeds[0])
        family_name = _try_rule_on_network(config, data)
    # The options a rule recommends for this family of network, where none was given: each
    # run's config takes them when it is resolved (settings.resolve); the record shows them.
    recommended_opts = {}
    for name in rules:
        extra = settings.recommended_options(name, family_name)
        recommended_opts[name] = {k: v for k, v in extra.items() if k not in opts[name]}
        resolved[name].update(recommended_opts[name])

    device = resolve_device(base.device)
    # On the device once, for every run (a stack's members share it, rather than a copy each).
    data = data.to(device, resolve_dtype(base.dtype))
    record: dict[str, Any] = {
        "kind": KIND,
        "status": "running",
        "settings": {
            "rules": rules,
            "seeds": seeds,
            "rule_opts": opts,
            "rule_options": resolved,
            "rule_recommended_options": recommended_opts,
            "rule_settings": {name: rule_settings(base, name, family_name) for name in rules},
            "config": {
                k: v for k, v in base.to_dict().items() if k not in ("rule", "rule_opts", "seed")
            },
            "command": command or equivalent_command(base, rules, seeds, opts),
            "started": _now(),
            "device": str(device),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "memory": PeakMemory(device).kind,
        },
        "runs": [],
    }
    if configs:  # the settings in which a rule's configuration differs from the shared one
        shared = base.to_dict()
        record["settings"]["rule_configs"] = {
            name: {
                k: v
                for k, v in c.to_dict().items()
                if v != shared[k] and k not in ("rule", "rule_opts")
            }
            for name, c in configs.items()
        }
    try:
        checkpoint.write_json(out_dir / "results.json", record)
    except OSError as err:  # read-only, no space: say where, before any run trains
        raise UsageError(f"cannot write the compare into {out_dir}: {err}") from None
    memory = PeakMemory(device)
    if pool is not None:
        _run_on_pool(pool, runs, out_dir, data, memory, force, log, record)
    else:
        done: dict[int, dict[str, Any]] = {}
        for group in _groups(runs, stack):
            for k, results in _run_group(group, runs, out_dir, data, memory, force, progress, log):
                folder = run_dir(out_dir, runs[k][0], runs[k][1])
                done[k] = {"dir": folder.relative_to(out_dir).as_posix(), **results}
                record["runs"] = [done[i] for i in sorted(done)]  # in the compare's order
                checkpoint.write_json(out_dir / "results.json", record)
    record["status"] = "finished"
    record["settings"]["finished"] = _now()
    checkpoint.write_json(out_dir / "results.json", record)
    record = json.loads(json.dumps(record))  # as on disk (tuples become lists): the report
    report.render(record, out_dir)  # is the same whether drawn now or with --report-only
    return record


def _run(
    config: TrainConfig,
    folder: Path,
    data: Dataset,
    memory: PeakMemory,
    force: bool,
    progress: bool,
    log: Callable[[str], None],
    where: str,
) -> dict[str, Any]:
    """One run: kept if done, resumed if checkpointed, trained otherwise; its results."""
    state, _ = run_state(folder, config)
    if state == "done":
        results = _read_json(folder / "results.json")
        log(f"{where}: {results['status']} earlier, kept")
        return results
    if state == "differs" or (force and _epochs_trained(folder) > config.epochs):
        # only reached with force (compare() refuses otherwise)
        log(f"{where}: starting over (--force; the folder held another configuration)")
        shutil.rmtree(folder)
    trainer = Trainer(config, folder, progress=progress, log=log, data=data)
    if trainer.restore():
        _check_not_beyond(trainer, folder)
        log(f"{where}: resuming from epoch {trainer.epoch}")
    else:
        log(where)
    memory.start()
    try:
        results = trainer.fit()
    except TrainingError as err:  # recorded as diverged; the other runs go on
        log(f"{where}: diverged: {err}")
        results = _read_json(folder / "results.json")
    results["peak_memory"] = memory.stop()
    checkpoint.write_json(folder / "results.json", results)
    return results


def _run_on_pool(
    pool: Any,
    runs: list[tuple[str, int, TrainConfig]],
    out_dir: Path,
    data: Dataset,
    memory: PeakMemory,
    force: bool,
    log: Callable[[str], None],
    record: dict[str, Any],
) -> None:
    """Every run as a job of the pool (Ray workers), their results recorded as they come in and
    kept in the compare's order (seed by seed, rule by rule)."""
    done: dict[int, dict[str, Any]] = {}
    shared = None
    # The counter counts runs as they are done (kept ones first, then as workers finish), so
    # it rises in order whatever order the workers finish in; a worker's own lines name the
    # run without a number.
    for k, (name, seed, config) in enumerate(runs):
        where = f"{name} seed {seed}"
        folder = run_dir(out_dir, name, seed)
        if run_state(folder, config)[0] == "done":  # kept; no need to start a worker for it
            done[k] = {
                "dir": folder.relative_to(out_dir).as_posix(),
                **_read_json(folder / "results.json"),
            }
            log(f"[{len(done)}/{len(runs)}] {where}: {done[k]['status']} earlier, kept")
            continue
        shared = pool.share(data) if shared is None else shared
        pool.submit(k, _run, config, folder, shared, memory, force, False, print, where)
    if pool.busy():
        log(f"{pool.busy()} run(s) sent to {pool.description}")
    record["runs"] = [done[i] for i in sorted(done)]
    while pool.busy():
        k, results, error = pool.wait()
        name, seed, _ = runs[k]
        if error is not None:
            pool.close()
            raise TrainingError(f"{name} seed {seed} failed on its Ray worker: {error}")
        done[k] = {"dir": run_dir(out_dir, name, seed).relative_to(out_dir).as_posix(), **results}
        log(
            f"[{len(done)}/{len(runs)}] {name} seed {seed}: {results['status']}, test error "
            f"{100 * results['test_error']:.2f}%"
        )
        record["runs"] = [done[i] for i in sorted(done)]
        checkpoint.write_json(out_dir / "results.json", record)


def _groups(runs: list, stack: bool) -> list[list[int]]:
    """Indices of the runs to train together: the seeds of each rule when stacking, else one
    run at a time in the compare's order."""
    if not stack:
        return [[k] for k in range(len(runs))]
    by_rule: dict[str, list[int]] = {}
    for k, (name, _, _) in enumerate(runs):
        by_rule.setdefault(name, []).append(k)
    return list(by_rule.values())


def _run_group(group, runs, out_dir, data, memory, force, progress, log):
    """Yield (index, results) for the runs of a group: stacked where they can be, else one by
    one, as without stacking."""
    where = [f"[{k + 1}/{len(runs)}] {name} seed {seed}" for k, (name, seed, _) in enumerate(runs)]
    pending = [
        k for k in group if run_state(run_dir(out_dir, *runs[k][:2]), runs[k][2])[0] != "done"
    ]
    stacked = {}
    if len(pending) > 1:
        stacked = _run_stacked(pending, runs, out_dir, data, memory, force, progress, log, where)
    for k in group:
        if k in stacked:
            yield k, stacked[k]
        else:
            name, seed, config = runs[k]
            folder = run_dir(out_dir, name, seed)
            yield k, _run(config, folder, data, memory, force, progress, log, where[k])


def _run_stacked(pending, runs, out_dir, data, memory, force, progress, log, where):
    """Train the pending runs as one stack; their results by index, or {} (after one line
    saying why) when they cannot stack."""
    trainers = []
    for k in pending:
        name, seed, config = runs[k]
        folder = run_dir(out_dir, name, seed)
        if run_state(folder, config)[0] == "differs":  # only reached with force
            log(f"{where[k]}: starting over (--force; the folder held another configuration)")
            shutil.rmtree(folder)
        trainer = Trainer(config, folder, progress=progress, log=log, data=data)
        if trainer.restore():
            _check_not_beyond(trainer, folder)
            log(f"{where[k]}: resuming from epoch {trainer.epoch}")
        trainers.append(trainer)
    what = f"{runs[pending[0]][0]} seeds {', '.join(str(runs[k][1]) for k in pending)}"
    fits = members_that_fit(trainers[0])
    try:
        if fits < len(trainers):
            raise StackError(f"only {fits} of the {len(trainers)} networks fit in free memory")
        stack = StackedTrainer(trainers, progress, log)
    except StackError as why:
        log(f"{what}: not stacked ({why}); one run at a time")
        return {}
    log(f"{what}: {len(trainers)} runs stacked")
    memory.start()
    fitted = stack.fit()
    peak = {**memory.stop(), "note": f"shared by {len(trainers)} stacked runs"}
    results = {}
    for k, trainer, result in zip(pending, trainers, fitted, strict=True):
        result["peak_memory"] = peak
        checkpoint.write_json(trainer.out_dir / "results.json", result)
        results[k] = result
    return results


def _check_not_beyond(trainer: Trainer, folder: Path) -> None:
    if trainer.epoch > trainer.config.epochs:
        raise UsageError(
            f"{folder} has trained {trainer.epoch} epochs, more than the "
            f"{trainer.config.epochs} asked for; pass --force to start it over, or choose "
            "another --out"
        )


def _epochs_trained(folder: Path) -> int:
    """Epochs a run folder's checkpoint holds (0 without one); a damaged one is refused here,
    before the compare writes anything."""
    path = folder / "checkpoint.pt"
    return checkpoint.load_run(path)["epoch"] if path.exists() else 0


def _try_rule_on_network(config: TrainConfig, data: Dataset) -> str:
    """One update of the rule on a few examples, so that options that only make sense for a
    network (a block boundary that is not a group, say) fail before any run trains. Returns
    the network's family (training/settings.py), which a model's name may not tell."""
    trainer = Trainer(config, None, progress=False, data=data)
    x = trainer.data.train_x[:4]
    y = targets_for(trainer.net, trainer.data.train_y[:4], trainer.data.n_classes)
    trainer.rule.updates(trainer.net, x, y)
    return settings.family(trainer.net)


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def render_folder(out_dir: str | Path) -> list[Path]:
    """Draw the report again from out_dir/results.json (creditlab compare --report-only)."""
    out_dir = Path(out_dir)
    record = _read_json(out_dir / "results.json")
    if record is None or record.get("kind") != KIND:
        raise UsageError(f"{out_dir} holds no compare results (results.json of a compare)")
    return report.render(record, out_dir)

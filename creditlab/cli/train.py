"""`creditlab train`: train one network with one rule."""

from __future__ import annotations

import sys
from pathlib import Path

from creditlab.cli.options import add_training_options, config_from_args, fresh_dir, rule_opts
from creditlab.errors import UsageError
from creditlab.speed.process import prepare_for_training


def register(sub) -> None:
    """`creditlab train`: train one network with one rule."""
    from creditlab.rules import DEFAULT_RULE

    p = sub.add_parser("train", help="train one network with one rule")
    add_training_options(p)
    p.add_argument("--rule", default=DEFAULT_RULE, help="learning rule (see `creditlab rules`)")
    p.add_argument(
        "--rule-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="rule option, e.g. fa.scale=0.5 (repeatable)",
    )
    p.add_argument("--out", default=None, help="run folder (default runs/DATASET-RULE-seedN)")
    p.add_argument(
        "--resume", action="store_true", help="continue from the run folder's checkpoint"
    )
    p.add_argument(
        "--force", action="store_true", help="start over in a run folder that holds a run"
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="compile each step, the optimiser included, with torch.compile (one CUDA graph "
        "on a GPU); the first steps wait for the compiler",
    )
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from creditlab.training import folders, locks
    from creditlab.training.trainer import train

    prepare_for_training()  # denormals flushed, freed memory kept (speed/process.py)
    config = config_from_args(args, args.rule, rule_opts(args.rule_opt, args.rule))
    if args.out is None:
        dataset = config.dataset.replace(":", "_").replace("/", "_")
        out = fresh_dir(Path("runs") / f"{dataset}-{config.rule}-seed{config.seed}")
    else:
        out = folders.out_path(args.out)
    if args.resume and args.force:
        raise UsageError("--resume continues a run and --force starts it over: pass only one")
    try:
        with locks.hold(out, "train"):
            folders.check_train_out(out, args.resume, args.force)
            results = train(
                config,
                out,
                resume=args.resume,
                progress=not args.quiet,
                force=args.force,
                compile=args.compile,
            )
    except KeyboardInterrupt:
        if (out / "checkpoint.pt").exists():
            kept = f"the last checkpoint in {out} is intact: add --resume to go on"
        else:
            kept = f"no epoch had finished, so there is no checkpoint in {out} to resume"
        print(f"creditlab: interrupted; {kept}", file=sys.stderr)
        return 130
    seconds = results["seconds_per_epoch"]
    print(
        f"{config.rule} on {config.dataset}: test accuracy {results['test_accuracy']:.4f} "
        f"(error {100 * results['test_error']:.2f}%), best validation accuracy "
        f"{results['val_accuracy']:.4f} at epoch {results['best_epoch']}, "
        f"{sum(seconds) / max(1, len(seconds)):.2f} s/epoch"
    )
    print(f"results in {out / 'results.json'}")
    if results["status"] != "finished":
        print(f"creditlab: the run {results['status']}: {results['message']}", file=sys.stderr)
        return 1
    return 0

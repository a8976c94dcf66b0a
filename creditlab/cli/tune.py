"""`creditlab tune`: the same hyperparameter search for every rule, on Ray."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from creditlab.cli.options import (
    add_pool_options,
    add_training_options,
    config_from_args,
    open_pool_of,
)
from creditlab.speed.process import prepare_for_training


def register(sub) -> None:
    """`creditlab tune`: the same hyperparameter search for every rule, on Ray, and a report."""
    from creditlab.rules import DEFAULT_TUNE_RULES

    p = sub.add_parser(
        "tune", help="the same hyperparameter search for every rule, on Ray, and a report"
    )
    # The search starts from Adam at 1e-3 and draws lr and the rest from each rule's space.
    add_training_options(p, defaults={"optimizer": "adam", "lr": 1e-3})
    p.add_argument(
        "--rules",
        default=",".join(DEFAULT_TUNE_RULES),
        help="comma-separated rules (default %(default)s)",
    )
    p.add_argument("--trials", type=int, default=20, help="trials per rule (default %(default)s)")
    p.add_argument(
        "--grace-epochs",
        type=int,
        default=1,
        help="ASHA: epochs before a trial can be stopped (default %(default)s)",
    )
    p.add_argument(
        "--eta",
        type=int,
        default=3,
        help="ASHA: reduction factor, about 1 trial in eta goes on at each milestone "
        "(default %(default)s)",
    )
    p.add_argument(
        "--seeds",
        default="3",
        help="seeds the best configuration of each rule is retrained on (default %(default)s)",
    )
    p.add_argument(
        "--rule-opt",
        action="append",
        default=[],
        metavar="RULE.KEY=VALUE",
        help="fix an option of a rule (it is then not searched), e.g. "
        "dtp.schedule=alternating (repeatable)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output folder (default reports/tune); running the same command again resumes",
    )
    p.add_argument(
        "--force", action="store_true", help="start over trials whose folder holds other settings"
    )
    add_pool_options(p, tune=True)
    p.set_defaults(func=cmd_tune)


def cmd_tune(args) -> int:
    from creditlab.compare import runs as compare
    from creditlab.training import folders, locks
    from creditlab.tune import search as tune

    prepare_for_training()  # denormals flushed, freed memory kept (speed/process.py)
    rules = compare.rule_list(args.rules)
    rule_opts = compare.parse_rule_opts(args.rule_opt, rules)
    config = config_from_args(args, rules[0], {})  # each trial sets its rule and settings
    seeds = compare.seed_list(args.seeds, config.seed)
    out = folders.out_path(args.out) if args.out else Path("reports") / "tune"
    try:
        with locks.hold(out, "tune"):
            pool = open_pool_of(args)
            try:
                record = tune.tune(
                    config,
                    rules,
                    args.trials,
                    out,
                    pool,
                    seeds=seeds,
                    rule_opts=rule_opts,
                    grace=args.grace_epochs,
                    eta=args.eta,
                    force=args.force,
                    progress=not args.quiet,
                    command=shlex.join(["creditlab", *sys.argv[1:]]),
                )
            finally:
                pool.close()
    except KeyboardInterrupt:
        print(
            "creditlab: interrupted; finished trials and the checkpoints of the others are "
            f"kept: run the same command again (with --out {out}) to go on",
            file=sys.stderr,
        )
        return 130
    print(
        f"best configurations in {out / 'tune.md'} ({out / 'tune.html'}); the retrained best "
        f"on the test set in {out / 'index.html'}"
    )
    statuses = [t["status"] for e in record["rules"].values() for t in e.get("trials", [])]
    if statuses and all(s in ("stalled", "diverged", "error") for s in statuses):
        print(
            "creditlab: every trial stalled or diverged: the search learned nothing (see "
            f"{out / 'tune.md'}); results kept",
            file=sys.stderr,
        )
        return 1
    return 0

"""`creditlab compare`: several rules on several seeds, fairly, and a report."""

from __future__ import annotations

import sys
from pathlib import Path

from creditlab.cli.options import (
    add_pool_options,
    add_training_options,
    config_from_args,
    open_pool_of,
)
from creditlab.errors import UsageError
from creditlab.speed.process import prepare_for_training


def register(sub) -> None:
    """`creditlab compare`: several rules on several seeds, fairly, and a report."""
    from creditlab.rules import DEFAULT_COMPARE_RULES

    p = sub.add_parser(
        "compare", help="train several rules on several seeds, fairly, and write a report"
    )
    add_training_options(p)
    p.add_argument(
        "--rules",
        default=",".join(DEFAULT_COMPARE_RULES),
        help="comma-separated learning rules, or all (default %(default)s)",
    )
    p.add_argument(
        "--seeds",
        default="3",
        help="how many seeds, counting up from --seed, or a list like 0,3,7 (default %(default)s)",
    )
    p.add_argument(
        "--rule-opt",
        action="append",
        default=[],
        metavar="RULE.KEY=VALUE",
        help="an option of one of the rules, e.g. dni.hidden=256 (repeatable)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="report folder (default reports/DATASET-HASH, a folder per set of settings, so "
        "running the same command again resumes)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="start over runs whose folder holds another configuration",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="draw the report again from --out's results.json, training nothing",
    )
    add_pool_options(p, tune=False)
    p.add_argument(
        "--no-stack",
        dest="stack",
        action="store_false",
        help="train the seeds of a rule one after another, not as one stack of networks",
    )
    p.set_defaults(func=cmd_compare)


def cmd_compare(args) -> int:
    from creditlab.compare import runs as compare
    from creditlab.training import folders, locks

    if args.report_only:
        if args.out is None:
            raise UsageError("--report-only needs --out, the folder of the compare to draw again")
        locks.check_kind(Path(args.out), "compare")
        with locks.hold(args.out, "compare"):
            for path in compare.render_folder(args.out):
                print(f"wrote {path}")
        return 0
    prepare_for_training()  # denormals flushed, freed memory kept (speed/process.py)
    rules = compare.rule_list(args.rules)
    rule_opts = compare.parse_rule_opts(args.rule_opt, rules)
    config = config_from_args(args, rules[0], {})  # each run sets its own rule and options
    seeds = compare.seed_list(args.seeds, config.seed)
    given, _ = compare.check_rule_options(rules, rule_opts)
    if args.out is None:
        out = compare.default_out_dir(config, rules, seeds, given)
    else:
        out = folders.out_path(args.out)
    try:
        with locks.hold(out, "compare"):
            print(f"comparing {', '.join(rules)} on {len(seeds)} seed(s) in {out}")
            pool = open_pool_of(args) if args.address else None
            try:
                record = compare.compare(
                    config,
                    rules,
                    seeds,
                    rule_opts,
                    out,
                    force=args.force,
                    progress=not args.quiet,
                    pool=pool,
                    stack=args.stack,
                )
            finally:
                if pool is not None:
                    pool.close()
    except KeyboardInterrupt:
        print(
            "creditlab: interrupted; finished runs and the last checkpoint are kept: run the "
            f"same command again (with --out {out}) to go on",
            file=sys.stderr,
        )
        return 130
    from creditlab.compare import report

    print(report.markdown_table(report.tables(record)[0]))
    failed = [r for r in record["runs"] if r["status"] != "finished"]
    for status in ("diverged", "stalled"):
        names = [f"{r['rule']} seed {r['seed']}" for r in failed if r["status"] == status]
        if names:
            print(f"{status}: {', '.join(names)}")
    print(f"report in {out / 'index.html'} (table in {out / 'table.md'})")
    if failed and len(failed) == len(record["runs"]):
        print("creditlab: every run failed (diverged or stalled); see above", file=sys.stderr)
        return 1
    return 0

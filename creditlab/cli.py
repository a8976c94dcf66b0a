"""The command line: `creditlab train`, `compare`, `tune`, `gradcheck` and `rules`."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import torch

from creditlab.errors import CreditlabError, UsageError

TOLERANCE_FD = 1e-4  # central differences in float64 with eps 1e-6 (round-off ~1e-10)
TOLERANCE_AUTOGRAD = 1e-9


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own errors: usage line, message, exit 2
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _rule_opts(items: list[str], rule_name: str) -> dict[str, str]:
    """--rule-opt KEY=VALUE or RULE.KEY=VALUE, for the rule being trained."""
    opts = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--rule-opt needs KEY=VALUE or RULE.KEY=VALUE, got {item!r}")
        owner, dot, name = key.rpartition(".")
        if dot and owner != rule_name:
            raise UsageError(
                f"--rule-opt {item!r} is for rule {owner!r}, but the rule is {rule_name!r}"
            )
        opts[name] = value
    return opts


def add_training_options(p: argparse.ArgumentParser) -> None:
    from creditlab.engine.devices import MATMUL_PRECISIONS
    from creditlab.experiments.train import TrainConfig

    d = TrainConfig()
    p.add_argument(
        "--dataset", default=d.dataset, help="mnist, digits or idx:PATH (default %(default)s)"
    )
    p.add_argument("--data-dir", default=None, help="folder holding the dataset's files")
    p.add_argument(
        "--val-size",
        type=int,
        default=None,
        help="validation examples carved from the end of the training set",
    )
    p.add_argument(
        "--train-subset", type=int, default=None, help="train on the first N examples only"
    )
    p.add_argument(
        "--model",
        default=d.model,
        help="mlp:H1-H2, skip:H1-H2 or a JSON spec (default %(default)s)",
    )
    p.add_argument(
        "--activation", default=d.activation, help="hidden activation (default %(default)s)"
    )
    p.add_argument("--loss", default=d.loss, help="cross_entropy, mse or bce (default %(default)s)")
    p.add_argument("--init", default=None, help="glorot or he (default: by activation)")
    p.add_argument(
        "--output-init",
        default=None,
        help="the output layer's weights at the start: random (as drawn) or zero "
        + "(default: the rule's recommendation, see `creditlab rules`, else random)",
    )
    p.add_argument("--dropout", type=float, default=d.dropout, help="dropout on hidden groups")
    p.add_argument(
        "--augment", default=None, help="training batches: shift:K, random shifts of up to K pixels"
    )
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    # Unset (None) unless given: the rule's recommendation applies, else the default
    # (creditlab/experiments/settings.py); `creditlab rules` lists each rule's.
    recommended = "(default: the rule's recommendation, see `creditlab rules`, else {})"
    p.add_argument(
        "--optimizer", default=None, help="sgd, adam or adamw " + recommended.format("sgd")
    )
    p.add_argument("--lr", type=float, default=None, help=recommended.format(0.05))
    p.add_argument("--momentum", type=float, default=None, help=recommended.format(0.9))
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--weight-decay", type=float, default=None, help=recommended.format(0))
    p.add_argument(
        "--schedule",
        default=None,
        help="constant, step or cosine " + recommended.format("constant"),
    )
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    p.add_argument(
        "--step-epochs",
        type=int,
        default=d.step_epochs,
        help="step schedule: epochs between decays",
    )
    p.add_argument("--gamma", type=float, default=d.gamma, help="step schedule: decay factor")
    p.add_argument("--min-lr", type=float, default=d.min_lr, help="cosine schedule: final rate")
    p.add_argument(
        "--patience",
        type=int,
        default=None,
        help="stop after N epochs without a better validation accuracy",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda (default %(default)s)")
    p.add_argument("--dtype", default=d.dtype, help="float32 or float64")
    p.add_argument(
        "--matmul-precision",
        default=d.matmul_precision,
        choices=MATMUL_PRECISIONS,
        help="float32 matrix products: highest (strict float32), high (TF32 tensor cores on "
        "NVIDIA Ampere and later), medium (down to bfloat16) (default %(default)s)",
    )
    p.add_argument(
        "--probe-every",
        type=int,
        default=d.probe_every,
        help="steps between alignment probes against bp's gradient, 0 for none "
        "(default %(default)s)",
    )
    p.add_argument(
        "--probe-size",
        type=int,
        default=d.probe_size,
        help="examples in the fixed probe batch (default %(default)s)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args, rule_name: str, rule_opts: dict):
    from creditlab.experiments.train import TrainConfig

    return TrainConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        val_size=args.val_size,
        train_subset=args.train_subset,
        model=args.model,
        activation=args.activation,
        loss=args.loss,
        init=args.init,
        output_init=args.output_init,
        dropout=args.dropout,
        augment=args.augment,
        rule=rule_name,
        rule_opts=rule_opts,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        nesterov=args.nesterov,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        warmup_epochs=args.warmup_epochs,
        step_epochs=args.step_epochs,
        gamma=args.gamma,
        min_lr=args.min_lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        patience=args.patience,
        probe_every=args.probe_every,
        probe_size=args.probe_size,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        matmul_precision=args.matmul_precision,
    )


def _fresh_dir(base: Path) -> Path:
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def cmd_train(args) -> int:
    from creditlab.experiments import folders
    from creditlab.experiments.train import train

    torch.set_flush_denormal(True)  # denormal floats slow CPU matmuls many times over
    config = config_from_args(args, args.rule, _rule_opts(args.rule_opt, args.rule))
    if args.out is None:
        dataset = config.dataset.replace(":", "_").replace("/", "_")
        out = _fresh_dir(Path("runs") / f"{dataset}-{config.rule}-seed{config.seed}")
    else:
        out = folders.out_path(args.out)
    folders.check_train_out(out, args.resume, args.force)
    try:
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


def cmd_compare(args) -> int:
    from creditlab.experiments import compare, folders

    if args.report_only:
        if args.out is None:
            raise UsageError("--report-only needs --out, the folder of the compare to draw again")
        for path in compare.render_folder(args.out):
            print(f"wrote {path}")
        return 0
    torch.set_flush_denormal(True)  # denormal floats slow CPU matmuls many times over
    rules = compare.rule_list(args.rules)
    rule_opts = compare.parse_rule_opts(args.rule_opt, rules)
    config = config_from_args(args, rules[0], {})  # each run sets its own rule and options
    seeds = compare.seed_list(args.seeds, config.seed)
    given, _ = compare.check_rule_options(rules, rule_opts)
    if args.out is None:
        out = compare.default_out_dir(config, rules, seeds, given)
    else:
        out = folders.out_path(args.out)
    print(f"comparing {', '.join(rules)} on {len(seeds)} seed(s) in {out}")
    pool = _open_pool(args) if args.address else None
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
    except KeyboardInterrupt:
        print(
            "creditlab: interrupted; finished runs and the last checkpoint are kept: run the "
            f"same command again (with --out {out}) to go on",
            file=sys.stderr,
        )
        return 130
    finally:
        if pool is not None:
            pool.close()
    from creditlab.experiments import report

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


def _open_pool(args):
    from creditlab.experiments.sweeps.ray_backend import open_pool

    gpus = args.gpus_per_trial
    if gpus is None:  # a trial on CUDA asks for a whole GPU unless told otherwise
        gpus = 1.0 if args.device.startswith("cuda") else 0.0
    return open_pool(args.address, args.workers, args.cpus_per_trial, gpus)


def cmd_tune(args) -> int:
    from creditlab.experiments import compare
    from creditlab.experiments.sweeps import tune

    torch.set_flush_denormal(True)  # denormal floats slow CPU matmuls many times over
    rules = compare.rule_list(args.rules)
    rule_opts = compare.parse_rule_opts(args.rule_opt, rules)
    config = config_from_args(args, rules[0], {})  # each trial sets its rule and settings
    seeds = compare.seed_list(args.seeds, config.seed)
    out = Path(args.out) if args.out else Path("reports") / "tune"
    pool = _open_pool(args)
    try:
        tune.tune(
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
    except KeyboardInterrupt:
        print(
            "creditlab: interrupted; finished trials and the checkpoints of the others are "
            f"kept: run the same command again (with --out {out}) to go on",
            file=sys.stderr,
        )
        return 130
    finally:
        pool.close()
    print(
        f"best configurations in {out / 'tune.md'} ({out / 'tune.html'}); the retrained best "
        f"on the test set in {out / 'index.html'}"
    )
    return 0


def add_pool_options(p: argparse.ArgumentParser, tune: bool) -> None:
    p.add_argument(
        "--address",
        default=None,
        help="an existing Ray cluster: auto, or ray://HOST:PORT"
        + ("" if tune else " (default: train here, one run after another)"),
    )
    if not tune:
        p.set_defaults(workers=None, cpus_per_trial=1.0, gpus_per_trial=None)
        return
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local Ray: how many workers (default: one per core)",
    )
    p.add_argument(
        "--cpus-per-trial",
        type=float,
        default=1.0,
        help="cores each trial takes (default %(default)s)",
    )
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        default=None,
        help="GPUs each trial takes, e.g. 0.25 (default: 1 with --device cuda, else 0)",
    )


def cmd_gradcheck(args) -> int:
    from creditlab.experiments import gradcheck

    tol_fd = gradcheck.check_tolerance("--tol-fd", args.tol_fd)
    tol_autograd = gradcheck.check_tolerance("--tol-autograd", args.tol_autograd)
    results = gradcheck.run(trials=args.trials, seed=args.seed)
    failed = 0
    print(f"{'case':32s} {'parameter':22s} {'rel. err vs FD':>15s} {'vs autograd':>12s}")
    for result in results:
        for name, (fd, ag) in result.errors.items():
            fd_ok = not result.fd_applies or gradcheck.within(fd, tol_fd)
            bad = not (fd_ok and gradcheck.within(ag, tol_autograd))
            failed += bad
            mark = "  MISMATCH" if bad else ""
            fd_text = f"{fd:.2e}" if result.fd_applies else "n/a"  # see CheckResult
            print(f"{result.case:32s} {name:22s} {fd_text:>15s} {ag:12.2e}{mark}")
    # Routed capsules with routing_gradient=False are checked against autograd only (their
    # couplings are constants by design, so finite differences of the loss do not apply).
    worst_fd = gradcheck.worst_of(r.worst()[0] for r in results if r.fd_applies)
    worst_ag = gradcheck.worst_of(r.worst()[1] for r in results)
    print(
        f"{len(results)} networks: largest relative error {worst_fd:.2e} against finite "
        f"differences (tolerance {args.tol_fd:g}), {worst_ag:.2e} against autograd "
        f"(tolerance {args.tol_autograd:g})"
    )
    if failed:
        print(f"gradcheck FAILED: {failed} parameter(s) mismatch", file=sys.stderr)
        return 1
    print("gradcheck passed")
    return 0


def cmd_capsules(args) -> int:
    from creditlab.experiments.capsules import figure4

    print(f"wrote {figure4(args.run, args.out, args.examples)}")
    return 0


def cmd_rules(args) -> int:
    from creditlab.experiments.settings import describe as describe_settings
    from creditlab.rules import RULES
    from creditlab.rules.machinery.space import describe as describe_space

    for name, cls in sorted(RULES.items()):
        print(f"{name:10s} {cls.summary}")
        print(f"{'':10s}   recommended: {describe_settings(cls.recommended)}")
        for key, opt in cls.options.items():
            print(f"{'':10s}   {name}.{key}={opt.default!r} ({opt.type.__name__}) {opt.help}")
        if cls.search_space:
            print(f"{'':10s}   search space (creditlab tune):")
            for line in describe_space(cls):
                print(f"{'':10s}     {line}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="creditlab", description="Train networks by backpropagation and its challengers."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("train", help="train one network with one rule")
    add_training_options(p)
    p.add_argument("--rule", default="bp", help="learning rule (see `creditlab rules`)")
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

    p = sub.add_parser(
        "compare", help="train several rules on several seeds, fairly, and write a report"
    )
    add_training_options(p)
    p.add_argument(
        "--rules",
        default="bp,fa,dfa,dni",
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

    p = sub.add_parser(
        "tune", help="the same hyperparameter search for every rule, on Ray, and a report"
    )
    add_training_options(p)
    p.set_defaults(optimizer="adam", lr=1e-3)  # as compare; the search draws lr and the rest
    p.add_argument("--rules", default="bp,fa", help="comma-separated rules (default %(default)s)")
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

    p = sub.add_parser("gradcheck", help="check bp against finite differences and autograd")
    p.add_argument("--trials", type=int, default=6, help="random networks per loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol-fd", type=float, default=TOLERANCE_FD)
    p.add_argument("--tol-autograd", type=float, default=TOLERANCE_AUTOGRAD)
    p.set_defaults(func=cmd_gradcheck)

    p = sub.add_parser("capsules", help="draw a capsule network's Figure 4 (perturbed capsules)")
    p.add_argument("--run", required=True, help="folder of a `creditlab train` run")
    p.add_argument("--out", default=None, help="PNG to write (default RUN/figure4.png)")
    p.add_argument("--examples", type=int, default=3, help="test digits to show")
    p.set_defaults(func=cmd_capsules)

    p = sub.add_parser("rules", help="list the learning rules and their options")
    p.set_defaults(func=cmd_rules)

    from creditlab.experiments.gan import cli as gan_cli

    gan_cli.register(sub)  # gan, sample, gan-compare
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CreditlabError as err:
        print(f"creditlab: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("creditlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `creditlab rules | head`: the reader left, which is no error
        # Point stdout at /dev/null so that Python's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())

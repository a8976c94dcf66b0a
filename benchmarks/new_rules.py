"""The rules of issue 23 beside bp, in one process: final test accuracy and epoch-time ratio.

The default network is Akrout et al.'s (2019) MNIST setting: 784-500-10, sigmoid hidden units,
batch 128. Every rule trains its own copy of the network (the same initial weights, the same
batches) through the real training loop (Trainer.train_epoch, progress bar and alignment
probes off) with its recommended settings, as `creditlab train --rule NAME` would. The rules
take turns epoch by epoch, the order rotating every round, so that bp and each rule share the
machine's state (clock, caches, other load). The first round is warm-up for the timings; the
medians of the rest are compared, and their fastest epochs (on a shared machine the least
disturbed). Accuracies are on the test set after the last epoch (not the
best validation epoch). Rules not in this checkout (the issue's six: kp, wm, drtp, fg, pepita,
eqprop) are skipped with a note.

    python benchmarks/new_rules.py                                  # MNIST 784-500-10 sigmoid
    python benchmarks/new_rules.py --epochs 5 --rules kp,wm
    python benchmarks/new_rules.py --model mlp:256-256 --activation relu --batch-size 32

Every `creditlab train` option is accepted and applies to bp and to every rule alike (a
paper's optimiser, schedule or initialisation); an option not given keeps each rule's
recommended value. `--rule-opt RULE.KEY=VALUE` sets a rule's own option. A paper's setting:

    python benchmarks/new_rules.py --rules pepita --model mlp:1024 --activation relu \
        --batch-size 64 --epochs 100 --optimizer sgd --lr 0.01 --momentum 0.9 \
        --schedule step --milestones 60,90
"""

from __future__ import annotations

import argparse
import statistics

import torch

from creditlab.cli.options import add_training_options, config_values
from creditlab.compare.runs import parse_rule_opts
from creditlab.data import load_dataset
from creditlab.rules import RULES
from creditlab.speed.process import prepare_for_training
from creditlab.training.trainer import TrainConfig, Trainer, evaluate

ISSUE_RULES = "kp,wm,drtp,fg,pepita,eqprop"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", default=ISSUE_RULES, help="comma-separated; bp is the base")
    parser.add_argument(
        "--rule-opt", action="append", default=[], help="RULE.KEY=VALUE, a rule's own option"
    )
    # Akrout et al.'s MNIST network and 3 epochs, unless the command line says otherwise.
    add_training_options(
        parser,
        {"dataset": "mnist", "model": "mlp:500", "activation": "sigmoid", "batch_size": 128,
         "epochs": 3},
    )  # fmt: skip
    args = parser.parse_args()
    prepare_for_training()  # as `creditlab train` does; applies to every rule
    wanted = [r for r in args.rules.split(",") if r and r != "bp"]
    missing = [r for r in wanted if r not in RULES]
    if missing:
        print(f"not in this checkout, skipped: {', '.join(missing)}")
    rules = ["bp"] + [r for r in wanted if r in RULES]
    opts = parse_rule_opts(args.rule_opt, rules)
    values = {**config_values(args, TrainConfig), "probe_every": 0}

    data = load_dataset(args.dataset, args.data_dir, args.val_size, progress=False)
    trainers = {
        name: Trainer(
            TrainConfig(**values, rule=name, rule_opts=opts.get(name, {})),
            progress=False,
            data=data,
            log=lambda _: None,
        )
        for name in rules
    }  # fmt: skip
    first = trainers["bp"]
    print(
        f"torch {torch.__version__}, {first.device}, {torch.get_num_threads()} threads, "
        f"{args.dataset} {args.model} {args.activation}, batch {args.batch_size}, "
        f"{args.epochs} epochs, seed {args.seed}"
    )
    for name, t in trainers.items():
        c = t.config
        print(f"  {name}: {c.optimizer} lr {c.lr:g} momentum {c.momentum:g}, options {t.rule.opts}")

    seconds: dict[str, list[float]] = {name: [] for name in rules}
    for epoch in range(1, args.epochs + 1):
        shift = (epoch - 1) % len(rules)  # rotate who goes first
        for name in rules[shift:] + rules[:shift]:
            seconds[name].append(trainers[name].train_epoch(epoch)["seconds"])
        base = seconds["bp"][-1]
        line = ", ".join(f"{n} {s[-1]:.2f} s ({s[-1] / base:.2f}x)" for n, s in seconds.items())
        print(f"epoch {epoch}: {line}" + ("  (warm-up)" if epoch == 1 else ""), flush=True)

    timed = slice(1, None) if args.epochs > 1 else slice(None)
    median = {name: statistics.median(s[timed]) for name, s in seconds.items()}
    # On a shared machine other jobs only ever add time: the fastest epoch is the least
    # disturbed one, so its ratio is printed beside the medians'.
    fastest = {name: min(s[timed]) for name, s in seconds.items()}
    print()
    print(
        "| rule | test accuracy | bp, same run | s/epoch (median) | ratio to bp (median) "
        "| s/epoch (fastest) | ratio to bp (fastest) |"
    )
    print("|---|---|---|---|---|---|---|")
    accuracy = {}
    for name, t in trainers.items():
        d = t.data  # on the run's device, in its dtype
        _, accuracy[name] = evaluate(t.net, t.rule, d.test_x, d.test_y, d.n_classes)
    for name in rules:
        print(
            f"| {name} | {100 * accuracy[name]:.2f}% | {100 * accuracy['bp']:.2f}% | "
            f"{median[name]:.2f} | {median[name] / median['bp']:.2f}x | "
            f"{fastest[name]:.2f} | {fastest[name] / fastest['bp']:.2f}x |"
        )


if __name__ == "__main__":
    main()

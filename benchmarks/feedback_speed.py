"""Seconds per epoch: feedback alignment (fa) and direct feedback alignment (dfa) beside bp.

The foundation's benchmark network: MNIST, 784-1000-1000-10 ReLU, batch 128, SGD with momentum
0.9, learning rate 0.05. Every rule trains its own copy of the network (the same initial
weights, the same batches) through the real training loop (Trainer.train_epoch, progress bar
and alignment probes off). The rules take turns epoch by epoch in one process, the order
rotating every round, so they share the machine's state (clock, caches, other load). The first
round is warm-up; the medians of the rest are compared. Targets: fa's epoch <= 1.05x bp's (the
same sweep along other matrices), dfa's <= 1.0x bp's (one small projection in place of the
sweep's large products).

    python benchmarks/feedback_speed.py                      # CPU, 4 rounds
    python benchmarks/feedback_speed.py --rules bp,fa,dfa,usf,brsf,frsf --rounds 3
    python benchmarks/feedback_speed.py --device cuda        # where a GPU is present
"""

from __future__ import annotations

import argparse
import statistics

import torch

from creditlab.data import load_dataset
from creditlab.training.trainer import TrainConfig, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=4, help="epochs per rule, first is warm-up")
    parser.add_argument("--rules", default="bp,fa,dfa", help="comma-separated; bp is the base")
    parser.add_argument("--hidden", default="1000-1000")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # as `creditlab train` does; applies to every rule
    rules = [r for r in args.rules.split(",") if r]
    if "bp" not in rules:
        rules.insert(0, "bp")

    data = load_dataset("mnist", progress=False)
    trainers = {
        name: Trainer(
            TrainConfig(
                dataset="mnist", model=f"mlp:{args.hidden}", rule=name, lr=0.05, momentum=0.9,
                batch_size=args.batch_size, epochs=args.rounds, device=args.device, probe_every=0,
            ),
            progress=False,
            data=data,
        )
        for name in rules
    }  # fmt: skip
    device = trainers["bp"].device
    print(f"{torch.__version__}, {device}, {torch.get_num_threads()} threads, "
          f"{args.hidden} relu, batch {args.batch_size}, rules {', '.join(rules)}")  # fmt: skip

    seconds: dict[str, list[float]] = {name: [] for name in rules}
    accuracy: dict[str, float] = {}
    for epoch in range(1, args.rounds + 1):
        shift = (epoch - 1) % len(rules)  # rotate who goes first
        for name in rules[shift:] + rules[:shift]:
            record = trainers[name].train_epoch(epoch)
            seconds[name].append(record["seconds"])
            accuracy[name] = record["val_accuracy"]
        base = seconds["bp"][-1]
        line = ", ".join(
            f"{name} {s[-1]:.3f} s ({s[-1] / base:.3f}x)" for name, s in seconds.items()
        )
        print(f"epoch {epoch}: {line}" + ("  (warm-up)" if epoch == 1 else ""), flush=True)

    timed = slice(1, None) if args.rounds > 1 else slice(None)
    median = {name: statistics.median(s[timed]) for name, s in seconds.items()}
    print("median seconds per epoch (after warm-up), ratio to bp, validation accuracy:")
    for name in rules:
        print(f"  {name:5s} {median[name]:.3f} s  {median[name] / median['bp']:.3f}x  "
              f"val {accuracy[name]:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()

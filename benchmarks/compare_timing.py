"""Wall time of `creditlab compare` with no options: stacked seeds against --no-stack, and one
device against another.

Runs the default compare (bp, fa, dfa, dni on digits, 3 seeds, 20 epochs, Adam lr 1e-3) in
process, each time into a fresh folder, alternating the variants round by round so they share
the machine's state; the data set is loaded once, the report is drawn every time (as the
command does). Prints every wall time, the medians and the ratios.

    python benchmarks/compare_timing.py                       # CPU: stacked vs --no-stack
    python benchmarks/compare_timing.py --devices cpu,cuda    # also the GPU against the CPU
    python benchmarks/compare_timing.py --per-rule            # where the training time goes

--per-rule times only the training epochs of each default rule (probes off, no evaluation,
checkpoints or report): its 3 seeds as one stack against the same 3 runs one after another,
alternating epoch by epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time

import torch

from creditlab.compare import runs as compare
from creditlab.data import load_dataset
from creditlab.speed.stacked_runs import StackedTrainer
from creditlab.training.trainer import TrainConfig, Trainer

# What `creditlab compare` with no options trains (cli.py: Adam at 1e-3 for every rule).
DEFAULT = TrainConfig(optimizer="adam", lr=1e-3)


def one_compare(config: TrainConfig, stack: bool, data) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        compare.compare(
            config,
            compare.DEFAULT_RULES,
            3,
            None,
            out,
            progress=False,
            log=lambda line: None,
            data=data,
            stack=stack,
        )
        return time.perf_counter() - start


def per_rule(device: str, epochs: int, data) -> None:
    """Per default rule: seconds per training epoch of its 3 seeds stacked and one by one."""
    for name in compare.DEFAULT_RULES:
        config = dataclasses.replace(DEFAULT, rule=name, device=device, probe_every=0)
        configs = [dataclasses.replace(config, seed=seed) for seed in range(3)]
        alone = [Trainer(c, progress=False, data=data) for c in configs]
        stack = StackedTrainer([Trainer(c, progress=False, data=data) for c in configs], False)
        one_by_one, stacked = [], []
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            for trainer in alone:
                trainer.train_epoch(epoch)
            one_by_one.append(time.perf_counter() - start)
            start = time.perf_counter()
            stack.train_epoch(epoch)
            stacked.append(time.perf_counter() - start)
        a, b = statistics.median(one_by_one[1:]), statistics.median(stacked[1:])
        print(
            f"{name}: 3 seeds one by one {a:.3f} s per epoch, stacked {b:.3f} s: "
            f"stacked / one by one = {b / a:.2f}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="cpu", help="comma-separated, e.g. cpu,cuda")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=DEFAULT.epochs)
    parser.add_argument(
        "--per-rule", action="store_true", help="training epochs only, stacked vs one by one"
    )
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # as the command does
    data = load_dataset(DEFAULT.dataset, progress=False)
    if args.per_rule:
        for device in args.devices.split(","):
            per_rule(device, min(args.epochs, 6), data)
        return
    variants = []
    for device in args.devices.split(","):
        config = dataclasses.replace(DEFAULT, device=device, epochs=args.epochs)
        variants += [(f"{device} stacked", config, True), (f"{device} --no-stack", config, False)]
    print(f"{torch.__version__}, {torch.get_num_threads()} threads; default compare, wall s")
    times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    for r in range(args.rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for name, config, stack in order:
            times[name].append(one_compare(config, stack, data))
            print(f"round {r + 1}: {name} {times[name][-1]:.1f} s", flush=True)
    median = {name: statistics.median(t) for name, t in times.items()}
    print("median wall seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in median.items()))
    for device in args.devices.split(","):
        ratio = median[f"{device} stacked"] / median[f"{device} --no-stack"]
        print(f"{device}: stacked / --no-stack = {ratio:.3f}")
    devices = args.devices.split(",")
    for other in devices[1:]:
        ratio = median[f"{other} stacked"] / median[f"{devices[0]} stacked"]
        print(f"compare on {other} / on {devices[0]} (stacked, the default) = {ratio:.3f}")


if __name__ == "__main__":
    main()

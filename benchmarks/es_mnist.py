"""Gradient-free learning on MNIST 784-100-10: evaluation speed and test error against time.

    python benchmarks/es_mnist.py speed                 # batched population vs member loop
    python benchmarks/es_mnist.py speed --device cuda   # the same on a GPU
    python benchmarks/es_mnist.py curves                # bp, es, hillclimb: error vs wall time

`speed` scores the same population of perturbed networks on the same batch twice: in one
batched forward pass (creditlab.rules.machinery.population) and member by member through the
ordinary forward
pass, and prints evaluations (member x batch) per second for each and the ratio.

`curves` trains each rule for a budget of training time (bp 5 minutes, es 30, hillclimb 10;
`--budget hillclimb=10` reruns one rule and keeps the others' curves),
with a cosine learning-rate schedule stretched over the epochs that fit the budget (judged from
the first epoch), measuring test error at every epoch end against the training time spent so
far (evaluation excluded), and writes
benchmarks/results/es_curves.json and .png. The test error is only reported here, never used
to choose anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch
from timing import sync

import creditlab as cl
from creditlab.data import load_dataset
from creditlab.engine.devices import resolve_device
from creditlab.errors import TrainingError
from creditlab.rules.machinery.population import (
    antithetic_losses,
    antithetic_members,
    population_losses,
    split_like,
)
from creditlab.training.checkpoint import write_json
from creditlab.training.trainer import TrainConfig, Trainer, evaluate

RESULTS = Path(__file__).parent / "results"

# Settings per rule for the curves (chosen on the validation split in short trials).
RULES = {
    "bp": dict(optimizer="sgd", lr=0.1, batch_size=128),
    "es": dict(
        optimizer="adam", lr=0.01, batch_size=128, rule_opts={"population": 200, "sigma": 0.05}
    ),
    "hillclimb": dict(batch_size=512, rule_opts={"step": 0.003, "proposals": 8}),
}


def speed(args) -> None:
    device = resolve_device(args.device)
    data = load_dataset("mnist", progress=False).to(device, torch.float32)
    net = cl.mlp([784, 100, 10], seed=0, device=device)
    x, y = data.train_x[: args.batch], data.train_y[: args.batch]
    params = net.parameters()
    n = sum(p.numel() for p in params.values())
    pairs = args.population // 2
    g = torch.Generator().manual_seed(0)
    noise = split_like(torch.randn(pairs, n, generator=g).to(device), params)
    members = antithetic_members(params, noise, 0.02)  # theta and the 2K perturbed copies

    def antithetic() -> torch.Tensor:  # what the es rule runs
        return antithetic_losses(net, x, y, noise, 0.02)

    def stacked() -> torch.Tensor:  # the engine's forward, vmapped over weight copies
        return population_losses(net, x, y, members)

    def loop() -> torch.Tensor:  # one ordinary forward pass per member
        original = net.copy_parameters()
        losses = []
        for m in range(2 * pairs + 1):
            for k, p in net.parameters().items():
                p.copy_(members[k][m])
            # Kept on the device: no wait for the GPU per member, the loop's best case.
            losses.append(net.loss_fn.mean(net.predict(x), y))
        net.load_parameters(original)
        return torch.stack(losses)

    reference = loop()
    for fn in (antithetic, stacked):  # the same numbers, whichever way they are computed
        torch.testing.assert_close(fn(), reference, rtol=1e-4, atol=1e-5)
    rates: dict[str, list[float]] = {"antithetic": [], "stacked": [], "loop": []}
    for _ in range(args.repeats):
        for name, fn in (("antithetic", antithetic), ("stacked", stacked), ("loop", loop)):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            rates[name].append((2 * pairs + 1) / (time.perf_counter() - start))
    median = {k: statistics.median(v) for k, v in rates.items()}
    print(
        f"784-100-10, population {2 * pairs} (+ theta), batch {args.batch}, {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", {torch.get_num_threads()} threads; member evaluations per second:"
    )
    for name in ("antithetic", "stacked"):
        print(
            f"  batched ({name}): {median[name]:.0f}, {median[name] / median['loop']:.1f}x the loop"
        )
    print(f"  member-by-member loop: {median['loop']:.0f}")


def curves(args) -> None:
    data = load_dataset("mnist", progress=False)
    RESULTS.mkdir(exist_ok=True)
    budgets = {k: float(v) * 60 for k, v in (p.split("=") for p in args.budget.split(","))}
    unknown = sorted(set(budgets) - set(RULES))
    if unknown:
        raise SystemExit(f"no curve settings for {unknown}; known: {', '.join(RULES)}")
    # Rules run one at a time and each is saved when it ends, so a later rule that fails (or a
    # rerun of one rule) keeps the curves already measured.
    saved = RESULTS / "es_curves.json"
    record = json.loads(saved.read_text()) if saved.exists() else {"settings": {}, "runs": {}}
    for rule, budget in budgets.items():
        points, stopped = train_for(rule, budget, data, args.seed)
        record["settings"][rule] = RULES[rule]
        record["runs"][rule] = points
        record.setdefault("stopped", {}).pop(rule, None)
        if stopped:
            record["stopped"][rule] = stopped
        write_json(saved, record)
    plot(record["runs"])


def train_for(rule: str, budget: float, data, seed: int) -> tuple[list[dict], str | None]:
    """Train `rule` for `budget` seconds of training; test error after every epoch."""
    config = TrainConfig(
        dataset="mnist",
        model="mlp:100",
        rule=rule,
        epochs=1000,
        device="cpu",
        probe_every=0,
        seed=seed,
        schedule="cosine",
        **RULES[rule],
    )
    trainer = Trainer(config, progress=False, data=data)
    spent, points, epoch = 0.0, [], 0
    while spent < budget:
        epoch += 1
        try:
            record = trainer.train_epoch(epoch)
        except TrainingError as error:  # keep what was measured; say why it ended
            print(f"{rule}: {error}", flush=True)
            return points, str(error)
        spent += record["seconds"]
        if epoch == 1:  # stretch the cosine schedule over the epochs the budget allows
            fit = max(1, int(budget / record["seconds"]))
            trainer.schedule = dataclasses.replace(
                trainer.schedule, total_steps=fit * trainer.steps_per_epoch
            )
        _, test_acc = evaluate(
            trainer.net, trainer.rule, trainer.data.test_x, trainer.data.test_y, data.n_classes
        )
        points.append(
            {
                "epoch": epoch,
                "seconds": spent,
                "test_error": 1 - test_acc,
                "val_accuracy": record["val_accuracy"],
            }
        )
        print(
            f"{rule} epoch {epoch}: {spent:7.1f} s, test error {100 * (1 - test_acc):.2f}%",
            flush=True,
        )
    return points, None


def plot(runs: dict[str, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for rule, points in runs.items():
        ax.plot(
            [p["seconds"] / 60 for p in points],
            [100 * p["test_error"] for p in points],
            marker="." if len(points) < 100 else None,
            label=rule,
        )
    ax.set_xlabel("training time (minutes, 2 CPU cores)")
    ax.set_ylabel("test error (%)")
    ax.set_yscale("log")
    ax.set_title("MNIST 784-100-10: test error against wall time")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    image = RESULTS / "es_curves.png"
    fig.savefig(image, dpi=120)
    print(f"wrote {image}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--population", type=int, default=100)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.set_defaults(func=speed)
    p = sub.add_parser("curves")
    p.add_argument(
        "--budget",
        default="bp=5,es=30,hillclimb=10",
        help="training minutes per rule (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=curves)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    args.func(args)


if __name__ == "__main__":
    main()

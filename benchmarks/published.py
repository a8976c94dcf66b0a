"""Published MNIST figures for the feedback-alignment family and synthetic gradients.

Each experiment is a list of runs (a rule and its settings) on permutation-invariant MNIST;
every run trains through creditlab's own loop, picks its model on the validation split (the
last 10,000 training images) and reports that model's test error. Runs live in
benchmarks/runs/EXPERIMENT/LABEL and resume if interrupted; the table goes to
benchmarks/results/EXPERIMENT.md (and .json).

    python benchmarks/published.py bartunov      # 5x256 tanh, Adam: bp, fa, dfa, usf, brsf, frsf
    python benchmarks/published.py nokland       # dfa, 2x800 tanh with dropout
    python benchmarks/published.py dni           # bp, dni, cdni on 784-256-256-256-10
    python benchmarks/published.py bartunov --epochs 5 --only bp,fa    # a quick look

Published: Bartunov et al. 2018 (Table 1; best of 500 epochs, tuned per method): bp 1.48%,
fa 1.85%, dfa 2.75%. Nøkland 2016: dfa 1.45% (2x800 tanh, dropout). BioTorch's LeNet
benchmark: sign-symmetric rules within about 0.1 points of bp while fa and dfa trail.
Jaderberg et al. 2016: cDNI close to backprop on MNIST. The settings below are ours (chosen on
validation in short runs), not the papers'.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from creditlab.data import load_dataset
from creditlab.training.trainer import TrainConfig, Trainer

HERE = Path(__file__).parent
TANH_5X256 = dict(model="mlp:256-256-256-256-256", activation="tanh", optimizer="adam")

TANH_2X800_DROPOUT = dict(
    model="mlp:800-800", activation="tanh", dropout=0.2, optimizer="adam", lr=1e-4
)
RELU_3X256 = dict(model="mlp:256-256-256", optimizer="adam", lr=1e-3)

EXPERIMENTS: dict[str, dict[str, dict]] = {
    "bartunov": {
        "bp": dict(rule="bp", lr=1e-3, **TANH_5X256),
        "fa": dict(rule="fa", lr=1e-3, **TANH_5X256),
        "dfa": dict(rule="dfa", lr=1e-3, **TANH_5X256),
        "usf": dict(rule="usf", lr=1e-3, **TANH_5X256),
        "brsf": dict(rule="brsf", lr=1e-3, **TANH_5X256),
        "frsf": dict(rule="frsf", lr=1e-3, **TANH_5X256),
    },
    "nokland": {
        "dfa-dropout": dict(rule="dfa", **TANH_2X800_DROPOUT),
        "bp-dropout": dict(rule="bp", **TANH_2X800_DROPOUT),
    },
    "dni": {
        "bp": dict(rule="bp", **RELU_3X256),
        "dni": dict(rule="dni", **RELU_3X256),
        "cdni": dict(rule="cdni", **RELU_3X256),
    },
}
DEFAULT_EPOCHS = {"bartunov": 60, "nokland": 100, "dni": 30}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--only", default=None, help="comma-separated labels to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--schedule", default="cosine")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tag", default="", help="suffix for the run folders (sweeps)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="LABEL.KEY=VALUE",
        help="override a run's setting, e.g. fa.lr=1e-4",
    )
    args = parser.parse_args()
    torch.set_flush_denormal(True)

    runs = {k: dict(v) for k, v in EXPERIMENTS[args.experiment].items()}
    for item in args.set:  # LABEL.KEY=VALUE; the value is read as JSON where it parses
        key, _, value = item.partition("=")
        label, _, field = key.partition(".")
        try:
            runs[label][field] = json.loads(value)
        except json.JSONDecodeError:
            runs[label][field] = value
    labels = args.only.split(",") if args.only else list(runs)
    epochs = args.epochs or DEFAULT_EPOCHS[args.experiment]
    data = load_dataset("mnist", progress=False)
    rows = []
    for label in labels:
        config = TrainConfig(
            dataset="mnist",
            batch_size=128,
            epochs=epochs,
            seed=args.seed,
            schedule=args.schedule,
            device=args.device,
            probe_every=0,
            **runs[label],
        )
        out = HERE / "runs" / f"{args.experiment}{args.tag}" / f"{label}-seed{args.seed}"
        start = time.perf_counter()
        trainer = Trainer(config, out, progress=False, data=data)
        trainer.restore()
        results = trainer.fit()
        wall = time.perf_counter() - start
        row = {
            "label": label,
            "rule": config.rule,
            "seed": args.seed,
            "epochs": results["epochs"],
            "best_epoch": results["best_epoch"],
            "val_accuracy": results["val_accuracy"],
            "test_error": results["test_error"],
            "train_seconds": sum(results["seconds_per_epoch"]),
            "wall_seconds_this_call": wall,
            "settings": runs[label],
        }
        rows.append(row)
        print(
            f"{label}: test error {100 * row['test_error']:.2f}% (best val epoch "
            f"{row['best_epoch']}/{epochs}, val {100 * row['val_accuracy']:.2f}%), "
            f"{row['train_seconds'] / 60:.1f} min of training",
            flush=True,
        )
    results_dir = HERE / "results"
    results_dir.mkdir(exist_ok=True)
    name = f"{args.experiment}{args.tag}-seed{args.seed}"
    (results_dir / f"{name}.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "| run | rule | test error | best val. epoch | val. accuracy | training time |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['label']} | {r['rule']} | {100 * r['test_error']:.2f}% | {r['best_epoch']}/"
        f"{r['epochs']} | {100 * r['val_accuracy']:.2f}% | "
        f"{r['train_seconds'] / 60:.1f} min |"
        for r in rows
    ]
    (results_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

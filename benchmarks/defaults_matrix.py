"""Every rule's defaults on every model family: the matrix of tests/test_defaults_matrix.py,
measured, as a markdown table (rule x mlp:64 / skip:64-64 on digits, lenet / capsnet:small on
2,000 MNIST images).

Each cell is the command line a user would type, with nothing but the data, the number of
epochs, `--rule RULE` and `--model MODEL`, run in its own process (two at a time by default):

    creditlab train --dataset digits --epochs 10 --rule RULE --model MODEL --quiet --probe-every 0
    creditlab train --dataset mnist --train-subset 2000 --val-size 1000 --epochs 2 ...

A cell shows the test accuracy, "refused: ..." with the start of the refusal (exit 2), or the
status and exit code of a run that did not finish.

    CREDITLAB_DATA=../shared/data OMP_NUM_THREADS=1 python benchmarks/defaults_matrix.py
    python benchmarks/defaults_matrix.py --rules dni,cdni --models lenet,capsnet:small
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from creditlab.rules import RULES

DIGITS = ["--dataset", "digits", "--epochs", "10"]
MNIST = ["--dataset", "mnist", "--train-subset", "2000", "--val-size", "1000", "--epochs", "2"]
DATA = {"mlp:64": DIGITS, "skip:64-64": DIGITS, "lenet": MNIST, "capsnet:small": MNIST}
TITLES = {
    "mlp:64": "mlp:64 (digits)",
    "skip:64-64": "skip:64-64 (digits)",
    "lenet": "lenet (MNIST 2k)",
    "capsnet:small": "capsnet:small (MNIST 2k)",
}


def cell(rule: str, model: str, folder: Path) -> tuple[str, float]:
    """One run, in its own process: (what the table shows, seconds)."""
    out = folder / f"{rule}-{model.replace(':', '_')}"
    args = ["train", *DATA[model], "--rule", rule, "--model", model, "--quiet"]
    args += ["--probe-every", "0", "--out", str(out)]
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "creditlab", *args], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    results = out / "results.json"
    if done.returncode == 2 and not results.exists():
        message = done.stderr.strip().splitlines()[-1].removeprefix("creditlab: error: ")
        reason = message.split(";")[0].split(" (")[0].removeprefix(f"rule {rule!r} ")
        return f"refused: {reason}", seconds
    if not results.exists():
        return f"exit {done.returncode}, no results", seconds
    record = json.loads(results.read_text())
    shown = f"{record['test_accuracy']:.3f}"
    if record["status"] != "finished" or done.returncode != 0:
        shown += f" ({record['status']}, exit {done.returncode})"
    return shown, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", default=",".join(sorted(RULES)))
    parser.add_argument("--models", default=",".join(DATA))
    parser.add_argument("--workers", type=int, default=2, help="runs at once")
    args = parser.parse_args()
    rules, models = args.rules.split(","), args.models.split(",")
    unknown = [m for m in models if m not in DATA]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; valid: {', '.join(DATA)}")
    with (
        tempfile.TemporaryDirectory() as tmp,
        concurrent.futures.ThreadPoolExecutor(args.workers) as pool,
    ):
        jobs = {(r, m): pool.submit(cell, r, m, Path(tmp)) for r in rules for m in models}
        print("| rule | " + " | ".join(TITLES[m] for m in models) + " |")
        print("|---|" + "---:|" * len(models))
        total = 0.0
        for r in rules:
            shown = []
            for m in models:
                text, seconds = jobs[r, m].result()
                shown.append(text)
                total += seconds
            print(f"| {r} | " + " | ".join(shown) + " |", flush=True)
    print(f"\n{len(jobs)} runs, {total / 60:.1f} min of run time in all")


if __name__ == "__main__":
    main()

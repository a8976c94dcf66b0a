"""Every rule with nothing but its name: the runs `creditlab train --rule RULE` makes, in one
process, the data loaded once.

Each run is TrainConfig(rule=RULE, dataset, model, epochs) and nothing else, so the rule's
recommended settings apply. Alignment probes are off; they never change a run (the digits
figures match the command line's to the last digit), they only cost time.

    python benchmarks/recommended.py digits mlp:64 20
    python benchmarks/recommended.py mnist mlp:256-256 3 --rules bp,fa,dni
"""

from __future__ import annotations

import argparse
import time

import torch

from creditlab.data import load_dataset
from creditlab.errors import TrainingError
from creditlab.rules import RULES
from creditlab.training.trainer import TrainConfig, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("model")
    parser.add_argument("epochs", type=int)
    parser.add_argument("--rules", default=",".join(sorted(RULES)))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    data = load_dataset(args.dataset, progress=False)
    print("| rule | settings | test accuracy | status | seconds |")
    print("|---|---|---|---|---|")
    for name in args.rules.split(","):
        config = TrainConfig(
            dataset=args.dataset,
            model=args.model,
            epochs=args.epochs,
            rule=name,
            probe_every=0,
            device=args.device,
        )
        start = time.perf_counter()
        trainer = Trainer(config, progress=False, data=data, log=lambda _: None)
        chosen = trainer.config
        settings = f"{chosen.optimizer} lr {chosen.lr:g}"
        try:
            results = trainer.fit()
            accuracy, status = f"{100 * results['test_accuracy']:.2f}%", results["status"]
        except TrainingError:
            accuracy, status = "-", "diverged"
        seconds = time.perf_counter() - start
        print(f"| {name} | {settings} | {accuracy} | {status} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()

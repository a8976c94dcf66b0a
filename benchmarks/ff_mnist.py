"""Forward-forward on MNIST: test error, and seconds per epoch against backpropagation.

Hinton (2022) reports 1.36% test error for 4 hidden layers of 2000 ReLUs after 60 epochs
(accumulated goodness over all labels, all hidden layers but the first). The defaults below are
that network and length, batch 100 as in Hinton's code, Adam at 1e-3 with a cosine decay (his
code decays the rate to zero over the second half), and ff's own defaults (temperature 0.05,
hard negatives from the readout, no peer normalisation):

    python benchmarks/ff_mnist.py --out runs/ff_mnist   # the full run; resumable with --out
    python benchmarks/ff_mnist.py --hidden 1000-1000-1000 --epochs 5    # a short run
    python benchmarks/ff_mnist.py --rule-opt peer=0.03 --rule-opt negatives=uniform
    python benchmarks/ff_mnist.py --speed 3 --train-subset 20000        # ff vs bp epochs

The model is picked on the validation split (the last 10,000 training images); its test error is
printed for the goodness readout and for the linear readout. --speed N trains ff and bp on the
same network (same initial weights, same batches) for N epochs each, alternating, through
Trainer.train_epoch (training alone, as results.json's seconds_per_epoch), and prints the median
seconds per epoch after the first (warm-up) round.

Measured on the 2-core development CPU (shared with other jobs; defaults unless stated):
- 4x2000, 5 epochs: test error 2.02% (goodness), 2.72% (linear); val 97.69%; 49-55 s of
  training per epoch when the machine was otherwise quiet.
- 3x1000, 5 epochs: 2.13% / 2.40%; 15 epochs: 1.77% / 2.08% (val 98.35%).
- speed, 4x2000, 20,000 training images, batch 100, Adam: ff 20.5 s, bp 14.6 s per epoch
  (ff / bp = 1.41); 2x1000 on 10,000 images: 1.53 s against 0.81 s (1.89).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import creditlab as cl
from creditlab.data import load_dataset
from creditlab.training.trainer import TrainConfig, Trainer


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", default="2000-2000-2000-2000")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--schedule", default="cosine")
    p.add_argument("--rule-opt", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="run folder (checkpoints, results.json)")
    p.add_argument("--speed", type=int, default=0, metavar="N", help="time N ff and bp epochs")
    return p.parse_args()


def config_for(args: argparse.Namespace, rule: str, epochs: int) -> TrainConfig:
    opts = dict(item.split("=", 1) for item in args.rule_opt) if rule == "ff" else {}
    return TrainConfig(
        dataset="mnist", model=f"mlp:{args.hidden}", rule=rule, rule_opts=opts,
        optimizer=args.optimizer, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, schedule=args.schedule, epochs=epochs,
        batch_size=args.batch_size, train_subset=args.train_subset, probe_every=0,
        seed=args.seed, device=args.device,
    )  # fmt: skip


@torch.no_grad()
def test_error(trainer: Trainer, readout: str) -> float:
    """Test error of the best-validation parameters under the given ff readout."""
    current = trainer.net.copy_parameters()
    trainer.net.load_parameters(trainer.best_params)
    learner = cl.rule("ff", **{**trainer.rule.opts, "readout": readout})
    data, wrong = trainer.data, 0
    for a in range(0, data.test_x.shape[0], 2000):
        scores = learner.predict(trainer.net, data.test_x[a : a + 2000])
        wrong += int((scores.argmax(dim=1) != data.test_y[a : a + 2000]).sum())
    trainer.net.load_parameters(current)
    return wrong / data.test_x.shape[0]


def train(args: argparse.Namespace, data) -> None:
    trainer = Trainer(config_for(args, "ff", args.epochs), args.out, progress=True, data=data)
    if args.out:
        trainer.restore()
    start = time.perf_counter()
    results = trainer.fit()
    for h in results["history"]:
        print(f"epoch {h['epoch']:3d}: ff loss {h['train_loss']:.4f}, readout loss "
              f"{h['readout_loss']:.4f}, val accuracy {h['val_accuracy']:.4f}, "
              f"{h['seconds']:.1f} s")  # fmt: skip
    print(f"ff on MNIST, mlp:{args.hidden}, {results['epochs']} epochs "
          f"({time.perf_counter() - start:.0f} s), options {results['rule_options']}")  # fmt: skip
    print(f"best validation epoch {results['best_epoch']}: val accuracy "
          f"{results['val_accuracy']:.4f}")  # fmt: skip
    for readout in ("goodness", "linear"):
        print(f"test error, {readout} readout: {100 * test_error(trainer, readout):.2f}%")


def speed(args: argparse.Namespace, data) -> None:
    ff = Trainer(config_for(args, "ff", args.speed), progress=False, data=data)
    bp = Trainer(config_for(args, "bp", args.speed), progress=False, data=data)
    print(f"{torch.__version__}, {ff.device}, {torch.get_num_threads()} threads, "
          f"mlp:{args.hidden} relu, batch {args.batch_size}, {args.optimizer}")  # fmt: skip
    times: dict[str, list[float]] = {"ff": [], "bp": []}
    for epoch in range(1, args.speed + 1):
        # alternate who goes first, so neither side always runs on a warmer machine
        pair = [("ff", ff), ("bp", bp)] if epoch % 2 else [("bp", bp), ("ff", ff)]
        for name, trainer in pair:
            times[name].append(trainer.train_epoch(epoch)["seconds"])
        print(f"epoch {epoch}: ff {times['ff'][-1]:.2f} s, bp {times['bp'][-1]:.2f} s, "
              f"ratio {times['ff'][-1] / times['bp'][-1]:.2f}"
              + ("  (warm-up)" if epoch == 1 else ""))  # fmt: skip
    timed = slice(1, None) if args.speed > 1 else slice(None)
    mine, ref = statistics.median(times["ff"][timed]), statistics.median(times["bp"][timed])
    print(f"median seconds per epoch: ff {mine:.2f}, bp {ref:.2f}, ff / bp = {mine / ref:.2f}")


def main() -> None:
    args = parse_args()
    torch.set_flush_denormal(True)  # as `creditlab train` does
    data = load_dataset("mnist", progress=False)
    (speed if args.speed else train)(args, data)


if __name__ == "__main__":
    main()

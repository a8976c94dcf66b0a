"""LeNet-5 on MNIST trained by backpropagation and the rules that carry errors back otherwise,
side by side, with a plain PyTorch LeNet (nn.Module + autograd) as the reference.

Every rule trains the same `lenet` model string (conv 6@5x5 padding 2, max pool, conv 16@5x5,
max pool, dense 120-84-10, relu) from the same initial weights, on the same batches, by one
recipe (optimiser, learning rate and schedule, weight decay, batch size, random shifts: the
options below, the same for every rule); the best validation epoch's test error is reported
(the test set is never selected on). The PyTorch reference trains bp's network by the same
recipe in the same process (torch.optim, creditlab's learning rate at every step, the same
shifted batches; its best validation epoch too), epochs alternating with creditlab's bp, for
the seconds-per-epoch ratio. The targets are BioTorch's published LeNet errors (bp 0.91%,
usf/brsf/frsf 1.0%, fa 1.70%, dfa 1.61%, after 100 epochs). A rule that diverges is reported
as such and the others go on.

fa and dfa start with the output layer's weights at zero (`--zero-output`, default "fa dfa";
the library's `--output-init zero`, which fa and dfa recommend): feedback alignment needs the
forward weights above a hidden group to start small, so that they grow into alignment with the
fixed feedback B (Lillicrap et al. 2016). From the default random start, relu LeNet's hidden
groups, driven by e B while W_out is still unrelated to B, grew and died in the first few dozen
steps and fa and dfa barely learnt (see the README).

    python benchmarks/lenet_mnist.py --epochs 20 --optimizer adam --lr 1e-3 --schedule cosine \
        --augment shift:2                                           # the README's recipe
    python benchmarks/lenet_mnist.py --rules bp fa --epochs 2 --train-subset 10000
    bash benchmarks/gpu_lenet.sh                                    # every rule, on a GPU
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch
import torch.nn.functional as F
from batches import epoch_batches
from timing import sync

from creditlab.data import load_dataset
from creditlab.errors import TrainingError
from creditlab.training.trainer import TrainConfig, Trainer, evaluate

TARGETS = {"bp": 0.91, "usf": 1.0, "brsf": 1.0, "frsf": 1.0, "fa": 1.70, "dfa": 1.61}


ACTIVATIONS = {"relu": F.relu, "tanh": torch.tanh}


class TorchLeNet(torch.nn.Module):
    def __init__(self, net, activation: str):
        super().__init__()
        self.f = ACTIVATIONS[activation]
        names = [
            ("input", "conv1"),
            ("pool1", "conv2"),
            ("pool2", "fc1"),
            ("fc1", "fc2"),
            ("fc2", "out"),
        ]
        self.layers = torch.nn.ModuleList(
            [torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.Conv2d(6, 16, 5)]
            + [torch.nn.Linear(*net.W[key].shape) for key in names[2:]]
        )
        with torch.no_grad():
            for layer, (i, j) in zip(self.layers, names, strict=True):
                W = net.W[(i, j)]
                layer.weight.copy_(W if W.dim() == 4 else W.t())
                layer.bias.copy_(net.b[j])

    def forward(self, x):
        c1, c2, f1, f2, out = self.layers
        f = self.f
        h = F.max_pool2d(f(c1(x.view(-1, 1, 28, 28))), 2)
        h = F.max_pool2d(f(c2(h)), 2).flatten(1)
        return out(f(f2(f(f1(h)))))


def torch_optimizer(model, config):
    """torch.optim's counterpart of the run's optimiser (creditlab's follow torch.optim's
    formulas; weight decay on every parameter, biases too, as creditlab applies it)."""
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[config.optimizer]
    return kind(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


def torch_epoch(model, opt, schedule, data, config, epoch, device) -> float:
    """One epoch of the PyTorch LeNet on creditlab's batches, at creditlab's learning rates."""
    sync(device)
    start = time.perf_counter()
    step = (epoch - 1) * schedule.steps_per_epoch
    for xb, yb in epoch_batches(data, config, epoch, device):
        for group in opt.param_groups:
            group["lr"] = schedule(step)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
    sync(device)
    return time.perf_counter() - start


@torch.no_grad()
def torch_accuracy(model, x, y) -> float:
    wrong = sum(
        int((model(x[a : a + 1000]).argmax(1) != y[a : a + 1000]).sum())
        for a in range(0, x.shape[0], 1000)
    )
    return 1 - wrong / max(1, x.shape[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", nargs="+", default=list(TARGETS))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--optimizer", default="adam", choices=["sgd", "adam", "adamw"])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--momentum", type=float, default=0.9, help="sgd only")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--schedule", default="constant", choices=["constant", "step", "cosine"])
    parser.add_argument("--warmup-epochs", type=float, default=0.0)
    parser.add_argument("--step-epochs", type=int, default=10, help="step schedule")
    parser.add_argument("--gamma", type=float, default=0.1, help="step schedule")
    parser.add_argument("--augment", default=None, help="shift:K, random shifts up to K px")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--activation", default="relu", choices=sorted(ACTIVATIONS))
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    parser.add_argument(
        "--zero-output",
        nargs="*",
        default=["fa", "dfa"],
        metavar="RULE",
        help="rules whose output layer starts at zero weights, creditlab's --output-init zero "
        "(default: fa dfa; the option alone: no rule)",
    )
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    data = load_dataset("mnist", progress=False)
    rows = []
    for name in args.rules:
        config = TrainConfig(
            dataset="mnist",
            model="lenet",
            activation=args.activation,
            rule=name,
            output_init="zero" if name in args.zero_output else "random",
            optimizer=args.optimizer,
            lr=args.lr,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            schedule=args.schedule,
            warmup_epochs=args.warmup_epochs,
            step_epochs=args.step_epochs,
            gamma=args.gamma,
            augment=args.augment,
            seed=args.seed,
            batch_size=args.batch_size,
            epochs=args.epochs,
            probe_every=0,
            train_subset=args.train_subset,
            device=args.device,
        )
        trainer = Trainer(config, progress=False, data=data)
        d, device = trainer.data, trainer.device
        reference = name == "bp" and not args.no_torch
        if reference:
            model = TorchLeNet(trainer.net, args.activation).to(device)
            opt = torch_optimizer(model, trainer.config)
            theirs_best = (-1.0, 0, None)  # as ours: the best validation epoch's weights
        ours, theirs = [], []
        best = (-1.0, 0, None)  # validation accuracy, epoch, parameters
        diverged = False
        for epoch in range(1, args.epochs + 1):
            if reference and epoch % 2 == 0:  # alternate who goes first
                theirs.append(torch_epoch(model, opt, trainer.schedule, d, config, epoch, device))
            try:
                record = trainer.train_epoch(epoch)
            except TrainingError as err:  # one rule's divergence ends its run, not the others'
                print(f"{name} epoch {epoch}: diverged: {err}", flush=True)
                diverged = True
                break
            if record["val_accuracy"] > best[0]:
                best = (record["val_accuracy"], epoch, trainer.net.copy_parameters())
            ours.append(record["seconds"])
            if reference and epoch % 2 == 1:
                theirs.append(torch_epoch(model, opt, trainer.schedule, d, config, epoch, device))
            if reference:
                theirs_val = torch_accuracy(model, d.val_x, d.val_y)
                if theirs_val > theirs_best[0]:
                    theirs_best = (theirs_val, epoch, copy.deepcopy(model.state_dict()))
            line = (
                f"{name} epoch {epoch}: {ours[-1]:.1f} s, val accuracy {record['val_accuracy']:.4f}"
            )
            if reference:
                line += (
                    f"; pytorch {theirs[-1]:.1f} s, ratio {ours[-1] / theirs[-1]:.3f}, "
                    f"val accuracy {theirs_val:.4f}"
                )
            print(line, flush=True)
        if diverged:
            rows.append((f"{name} (diverged)", math.nan, best[1], math.nan))
            continue
        trainer.net.load_parameters(best[2])
        _, accuracy = evaluate(trainer.net, trainer.rule, d.test_x, d.test_y, d.n_classes)
        rows.append((name, 100 * (1 - accuracy), best[1], sum(ours) / len(ours)))
        print(f"{name}: test error {100 * (1 - accuracy):.2f}% (best validation epoch {best[1]})")
        if reference:
            last = 1 - torch_accuracy(model, d.test_x, d.test_y)
            model.load_state_dict(theirs_best[2])
            error = 1 - torch_accuracy(model, d.test_x, d.test_y)
            rows.append(("torch", 100 * error, theirs_best[1], sum(theirs) / len(theirs)))
            print(
                f"pytorch reference: test error {100 * error:.2f}% (best validation epoch "
                f"{theirs_best[1]}; after the last epoch {100 * last:.2f}%); creditlab / pytorch "
                f"seconds per epoch = {sum(ours) / sum(theirs):.3f}"
            )
    print(f"\nrecipe: {recipe(args)}")
    print(f"{'rule':6s} {'test error':>10s} {'target':>7s} {'best epoch':>10s} {'s/epoch':>8s}")
    for name, error, best, seconds in rows:
        goal = TARGETS.get(name)
        target = f"{goal:.2f}%" if goal else "-"
        met = " met" if goal and error <= goal else ""  # a diverged run's nan meets nothing
        print(f"{name:6s} {error:9.2f}% {target:>7s} {best:10d} {seconds:8.1f}{met}")


def recipe(args) -> str:
    """The training settings in one line, for the log."""
    parts = [f"{args.optimizer} lr {args.lr:g}"]
    if args.optimizer == "sgd":
        parts.append(f"momentum {args.momentum:g}")
    parts += [f"weight decay {args.weight_decay:g}", f"batch {args.batch_size}"]
    parts.append(f"{args.schedule} schedule, warm-up {args.warmup_epochs:g} epochs")
    parts += [f"augment {args.augment}", f"{args.epochs} epochs", f"seed {args.seed}"]
    parts.append(f"zero output weights for {' '.join(args.zero_output) or 'no rule'}")
    return ", ".join(parts)


if __name__ == "__main__":
    main()

"""Seconds per epoch: creditlab's backpropagation against a plain PyTorch autograd loop.

MNIST, 784-1000-1000-10 ReLU, batch 128, SGD with momentum 0.9, learning rate 0.05. Both sides
start from the same weights and see the same batches in the same order; they train in
alternating epochs in one process, so they share the machine's state (clock, caches, other
load). creditlab is timed through its real training loop (Trainer.train_epoch, progress bar
off); PyTorch through the loop a PyTorch user would write. At the end the two sets of weights
are compared: they follow the same trajectory, up to float rounding.

    python benchmarks/mlp_epoch.py                 # CPU, 4 rounds (the first is warm-up)
    python benchmarks/mlp_epoch.py --device cuda   # where a GPU is present
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from creditlab.data import load_dataset
from creditlab.experiments.train import TrainConfig, Trainer, epoch_permutation


def torch_model(trainer: Trainer) -> torch.nn.Sequential:
    """The same network as plain PyTorch modules, weights copied from creditlab's."""
    net = trainer.net
    layers: list[torch.nn.Module] = []
    for j in net.order[1:]:
        (i,) = net.groups[j].ins
        linear = torch.nn.Linear(net.groups[i].size, net.groups[j].size)
        with torch.no_grad():
            linear.weight.copy_(net.W[(i, j)].t())  # nn.Linear keeps W as (out, in)
            linear.bias.copy_(net.b[j])
        layers += [linear, torch.nn.ReLU()] if j != net.output_name else [linear]
    return torch.nn.Sequential(*layers).to(trainer.device)


def torch_epoch(model, opt, data, config, epoch, device) -> float:
    """One epoch of the textbook PyTorch loop; returns its seconds."""
    loss_fn = torch.nn.CrossEntropyLoss()
    sync(device)
    start = time.perf_counter()
    order = epoch_permutation(config.seed, epoch, data.train_x.shape[0], device)
    xs, ys = data.train_x[order], data.train_y[order]
    for a in range(0, xs.shape[0], config.batch_size):
        xb, yb = xs[a : a + config.batch_size], ys[a : a + config.batch_size]
        opt.zero_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
    sync(device)
    return time.perf_counter() - start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=4, help="epochs per side, first is warm-up")
    parser.add_argument("--hidden", default="1000-1000")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # as `creditlab train` does; applies to both sides

    config = TrainConfig(
        dataset="mnist",
        model=f"mlp:{args.hidden}",
        batch_size=args.batch_size,
        lr=0.05,
        momentum=0.9,
        epochs=args.rounds,
        device=args.device,
    )
    data = load_dataset("mnist", progress=False)
    trainer = Trainer(config, progress=False, data=data)
    model = torch_model(trainer)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    print(
        f"{torch.__version__}, {trainer.device}, {torch.get_num_threads()} threads, "
        f"{args.hidden} relu, batch {config.batch_size}"
    )

    ours, theirs = [], []
    for epoch in range(1, args.rounds + 1):
        # alternate who goes first, so neither side always runs on a warmer machine
        if epoch % 2:
            ours.append(trainer.train_epoch(epoch)["seconds"])
            theirs.append(torch_epoch(model, opt, trainer.data, config, epoch, trainer.device))
        else:
            theirs.append(torch_epoch(model, opt, trainer.data, config, epoch, trainer.device))
            ours.append(trainer.train_epoch(epoch)["seconds"])
        print(
            f"epoch {epoch}: creditlab {ours[-1]:.3f} s, pytorch {theirs[-1]:.3f} s, "
            f"ratio {ours[-1] / theirs[-1]:.3f}" + ("  (warm-up)" if epoch == 1 else "")
        )

    timed = slice(1, None) if args.rounds > 1 else slice(None)
    mine, ref = statistics.median(ours[timed]), statistics.median(theirs[timed])
    print(
        f"median seconds per epoch: creditlab {mine:.3f}, pytorch {ref:.3f}, "
        f"creditlab / pytorch = {mine / ref:.3f}"
    )
    drift = max(
        (trainer.net.W[(layer_in, layer_out)].t() - linear.weight).abs().max().item()
        for (layer_in, layer_out), linear in zip(
            [(g.ins[0], g.name) for g in trainer.net.groups.values() if g.ins],
            [m for m in model if isinstance(m, torch.nn.Linear)],
            strict=True,
        )
    )
    print(f"largest weight difference between the two after training: {drift:.2e}")


if __name__ == "__main__":
    main()

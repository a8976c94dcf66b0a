"""Seconds per network-epoch: K stacked creditlab networks against K plain PyTorch networks
batched with bmm.

MNIST, 784-1000-1000-10 ReLU by default, batch 128, SGD with momentum 0.9, learning rate 0.05,
K = 16 networks on seeds 0..K-1, each with its own initial weights and its own order of the
batches. creditlab trains them through its real stacked loop (StackedTrainer.train_epoch:
the engine's step under torch.func.vmap, one optimiser step for the stack; --compile adds
torch.compile, a CUDA graph on a GPU); PyTorch through the loop a PyTorch user would write for
K networks at once: (K, in, out) weight tensors, torch.baddbmm, autograd and torch.optim.SGD.
Both start from the same weights and see the same batches; they train in alternating epochs in
one process. Printed: seconds per epoch divided by K (the cost of one network's epoch) and the
ratio.

    python benchmarks/stack_epoch.py --device cuda --compile      # the GPU figure
    python benchmarks/stack_epoch.py --k 4 --hidden 256-256       # a CPU-sized run
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
from timing import add_precision_option, apply_precision, sync

from creditlab.data import load_dataset
from creditlab.engine.devices import resolve_device
from creditlab.speed.stacked_runs import StackedTrainer
from creditlab.training.trainer import TrainConfig, Trainer, epoch_permutation


class TorchStack(torch.nn.Module):
    """K MLPs as (K, in, out) parameters, run with batched matrix products."""

    def __init__(self, trainers: list[Trainer]):
        super().__init__()
        net = trainers[0].net
        self.layers = [(net.groups[j].ins[0], j) for j in net.order[1:]]
        self.W = torch.nn.ParameterList(
            torch.nn.Parameter(torch.stack([t.net.W[c].detach().clone() for t in trainers]))
            for c in self.layers
        )
        self.b = torch.nn.ParameterList(
            torch.nn.Parameter(torch.stack([t.net.b[j].detach().clone() for t in trainers]))
            for _, j in self.layers
        )

    def forward(self, x):  # x (K, N, in)
        for n, (W, b) in enumerate(zip(self.W, self.b, strict=True)):
            x = torch.baddbmm(b.unsqueeze(1), x, W)
            if n + 1 < len(self.layers):
                x = torch.relu(x)
        return x


def torch_epoch(model, opt, data, configs, epoch, device) -> float:
    loss_fn = torch.nn.CrossEntropyLoss()
    k, size = len(configs), configs[0].batch_size
    sync(device)
    start = time.perf_counter()
    n = data.train_x.shape[0]
    order = torch.stack([epoch_permutation(c.seed, epoch, n, device) for c in configs])
    for a in range(0, n, size):
        index = order[:, a : a + size]
        xb, yb = data.train_x[index], data.train_y[index]
        opt.zero_grad()
        out = model(xb)
        # The mean over each network's batch, summed over networks: every network's gradient
        # is that of its own mean loss, as in separate runs.
        loss = loss_fn(out.reshape(-1, out.shape[-1]), yb.reshape(-1)) * k
        loss.backward()
        opt.step()
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--k", type=int, default=16, help="networks in the stack")
    parser.add_argument("--rounds", type=int, default=4, help="epochs per side, first is warm-up")
    parser.add_argument("--hidden", default="1000-1000")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--compile", action="store_true", help="compile creditlab's stacked step")
    add_precision_option(parser)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    precision = apply_precision(args)  # process-wide: both sides alike

    base = TrainConfig(
        dataset="mnist",
        model=f"mlp:{args.hidden}",
        batch_size=args.batch_size,
        lr=0.05,
        momentum=0.9,
        epochs=args.rounds,
        device=args.device,
        matmul_precision=args.matmul_precision,
        probe_every=0,
    )
    configs = [dataclasses.replace(base, seed=s) for s in range(args.k)]
    # On the device once: every member's Trainer then uses it as is, without a copy of its own.
    data = load_dataset("mnist", progress=False).to(resolve_device(args.device), torch.float32)
    trainers = [Trainer(c, progress=False, data=data) for c in configs]
    model = TorchStack(trainers)
    opt = torch.optim.SGD(model.parameters(), lr=base.lr, momentum=base.momentum)
    stacked = StackedTrainer(trainers, progress=False, compile=args.compile)
    device = trainers[0].device
    print(
        f"{torch.__version__}, {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", {torch.get_num_threads()} threads, K={args.k} x 784-{args.hidden}-10 relu, "
        f"batch {base.batch_size}"
        + precision
        + (", creditlab compiled" if stacked.stack.compiled else "")
    )
    ours, theirs = [], []
    for epoch in range(1, args.rounds + 1):
        # alternate who goes first, so neither side always runs on a warmer machine
        first_ours = epoch % 2 == 1
        for side in ("ours", "theirs") if first_ours else ("theirs", "ours"):
            if side == "ours":
                # a record's seconds: the stack's training time (evaluation left out) over K
                ours.append(stacked.train_epoch(epoch)[0]["seconds"] * args.k)
            else:
                theirs.append(torch_epoch(model, opt, trainers[0].data, configs, epoch, device))
        print(
            f"epoch {epoch}: per network creditlab {ours[-1] / args.k:.4f} s, "
            f"pytorch bmm {theirs[-1] / args.k:.4f} s, ratio {ours[-1] / theirs[-1]:.3f}"
            + ("  (warm-up)" if epoch == 1 else "")
        )
    timed = slice(1, None) if args.rounds > 1 else slice(None)
    mine, ref = statistics.median(ours[timed]), statistics.median(theirs[timed])
    print(
        f"median seconds per network-epoch: creditlab {mine / args.k:.4f}, "
        f"pytorch bmm {ref / args.k:.4f}, creditlab / pytorch = {mine / ref:.3f}"
    )


if __name__ == "__main__":
    main()

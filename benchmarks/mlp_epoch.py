"""Seconds per epoch: creditlab's backpropagation against a plain PyTorch autograd loop.

MNIST, 784-1000-1000-10 ReLU, batch 128, SGD with momentum 0.9, learning rate 0.05. Both sides
start from the same weights and see the same batches in the same order; they train in
alternating epochs in one process, so they share the machine's state (clock, caches, other
load). creditlab is timed through its real training loop (Trainer.train_epoch, progress bar
off); PyTorch through the loop a PyTorch user would write. At the end the two sets of weights
are compared: they follow the same trajectory, up to float rounding.

    python benchmarks/mlp_epoch.py                 # CPU, 4 rounds (the first is warm-up)
    python benchmarks/mlp_epoch.py --device cuda   # where a GPU is present
    python benchmarks/mlp_epoch.py --compile       # creditlab's compiled step (train --compile)
    python benchmarks/mlp_epoch.py --device cuda --compile   # also PyTorch with a CUDA graph

With --compile, creditlab runs its compiled step (speed/compiled.py: torch.compile, a
CUDA graph on a GPU); the first round, which pays for compiling, is the warm-up. On a GPU the
script also times the same compiled step in torch.compile's own CUDA graphs (the fallback of
the graphs captured by hand) and plain PyTorch with the whole step captured in a CUDA graph
(PyTorch's fastest form of this loop), and prints creditlab's ratio to each.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from timing import add_precision_option, apply_precision, sync
from torch._dynamo.utils import counters

from creditlab.data import load_dataset
from creditlab.speed.compiled import CompiledStep
from creditlab.training.trainer import TrainConfig, Trainer, epoch_permutation


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


class TorchCudaGraph:
    """Plain PyTorch's step captured whole in a CUDA graph (torch.cuda.graphs' recipe): the
    batch is copied into static tensors and the graph replayed. The epoch's last, shorter batch
    runs eagerly."""

    def __init__(self, model, opt, batch: int, n_in: int, device):
        self.model, self.opt, self.loss_fn = model, opt, torch.nn.CrossEntropyLoss()
        self.x = torch.zeros(batch, n_in, device=device)
        self.y = torch.zeros(batch, dtype=torch.long, device=device)
        self.graph = None

    def _step(self):
        self.opt.zero_grad(set_to_none=True)
        self.loss_fn(self.model(self.x), self.y).backward()
        self.opt.step()

    def capture(self, xb, yb):
        """Capture on the first full batch, after warm-up steps on a side stream (these train,
        as real steps: the side is timed from its first epoch like the others)."""
        self.x.copy_(xb)
        self.y.copy_(yb)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.loss_fn(self.model(self.x), self.y).backward()
            self.opt.step()

    def epoch(self, data, config, epoch, device) -> float:
        sync(device)
        start = time.perf_counter()
        order = epoch_permutation(config.seed, epoch, data.train_x.shape[0], device)
        xs, ys = data.train_x[order], data.train_y[order]
        for a in range(0, xs.shape[0], config.batch_size):
            xb, yb = xs[a : a + config.batch_size], ys[a : a + config.batch_size]
            if xb.shape[0] != self.x.shape[0]:  # the short last batch
                self.opt.zero_grad()
                self.loss_fn(self.model(xb), yb).backward()
                self.opt.step()
            elif self.graph is None:
                self.capture(xb, yb)
            else:
                self.x.copy_(xb)
                self.y.copy_(yb)
                self.graph.replay()
        sync(device)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=4, help="epochs per side, first is warm-up")
    parser.add_argument("--hidden", default="1000-1000")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--compile", action="store_true", help="creditlab's compiled step (train --compile)"
    )
    add_precision_option(parser)
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # as `creditlab train` does; applies to both sides
    precision = apply_precision(args)  # process-wide: both sides alike

    config = TrainConfig(
        dataset="mnist",
        model=f"mlp:{args.hidden}",
        batch_size=args.batch_size,
        lr=0.05,
        momentum=0.9,
        epochs=args.rounds,
        device=args.device,
        matmul_precision=args.matmul_precision,
    )
    data = load_dataset("mnist", progress=False)
    trainer = Trainer(config, progress=False, data=data, compile=args.compile)
    model = torch_model(trainer)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    device = trainer.device
    print(
        f"{torch.__version__}, {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", {torch.get_num_threads()} threads, {args.hidden} relu, batch {config.batch_size}"
        + precision
        + (", creditlab compiled" if trainer.compiled else "")
    )
    sides = {
        "creditlab": lambda epoch: trainer.train_epoch(epoch)["seconds"],
        "pytorch": lambda epoch: torch_epoch(model, opt, trainer.data, config, epoch, device),
    }
    if args.compile and device.type == "cuda":
        # The fallback: the same compiled step in torch.compile's own CUDA graphs.
        compiler_graphs = Trainer(config, progress=False, data=data, compile=True)
        compiler_graphs.compiled_step = CompiledStep(
            compiler_graphs.rule, compiler_graphs.net, compiler_graphs.opt, graphs="compiler"
        )
        sides["creditlab, torch.compile's graphs"] = lambda epoch: compiler_graphs.train_epoch(
            epoch
        )["seconds"]
        graph_model = torch_model(Trainer(config, progress=False, data=data))
        graph_opt = torch.optim.SGD(
            graph_model.parameters(), lr=config.lr, momentum=config.momentum
        )
        captured = TorchCudaGraph(graph_model, graph_opt, config.batch_size, 784, device)
        sides["pytorch cuda graph"] = lambda epoch: captured.epoch(
            trainer.data, config, epoch, device
        )
    times: dict[str, list[float]] = {name: [] for name in sides}
    for epoch in range(1, args.rounds + 1):
        # rotate who goes first, so no side always runs on a warmer machine
        names = list(sides)
        names = names[epoch % len(names) :] + names[: epoch % len(names)]
        for name in names:
            times[name].append(sides[name](epoch))
        print(
            f"epoch {epoch}: "
            + ", ".join(f"{name} {times[name][-1]:.3f} s" for name in sides)
            + ("  (warm-up)" if epoch == 1 else "")
        )

    timed = slice(1, None) if args.rounds > 1 else slice(None)
    median = {name: statistics.median(t[timed]) for name, t in times.items()}
    print("median seconds per epoch: " + ", ".join(f"{k} {v:.4f}" for k, v in median.items()))
    for name in list(sides)[1:]:
        print(f"creditlab / {name} = {median['creditlab'] / median[name]:.3f}")
    drift = max(
        (trainer.net.W[(layer_in, layer_out)].t() - linear.weight).abs().max().item()
        for (layer_in, layer_out), linear in zip(
            [(g.ins[0], g.name) for g in trainer.net.groups.values() if g.ins],
            [m for m in model if isinstance(m, torch.nn.Linear)],
            strict=True,
        )
    )
    print(f"largest weight difference between the two after training: {drift:.2e}")
    if trainer.compiled:  # a step that fell out of the CUDA graph or recompiled shows here
        stats, inductor = counters["stats"], counters["inductor"]
        print(
            f"compiled graphs {stats['unique_graphs']}, "
            f"steps that skipped torch.compile's CUDA graphs {inductor['cudagraph_skips']}"
        )
    graphs = trainer.compiled_step.graphs if trainer.compiled else None
    if graphs is not None:  # steps replayed from the graphs captured by hand
        replays = sum(shape.replays for shape in graphs.shapes.values())
        print(f"creditlab steps replayed from its captured CUDA graphs: {replays}")


if __name__ == "__main__":
    main()

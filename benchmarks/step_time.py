"""Milliseconds per training step: creditlab (eager and compiled) against plain PyTorch eager,
interleaved in short blocks so that a machine whose load swings (a shared one) slows every side
alike; mlp_epoch.py alternates whole epochs, which a swing of load between epochs can tip.

MNIST 784-1000-1000-10 ReLU, batch 128, SGD with momentum 0.9, learning rate 0.05, as in
mlp_epoch.py; each side trains its own copy of the same initial weights on the same batches.

    OMP_NUM_THREADS=1 python benchmarks/step_time.py --blocks 15

Three more sides run creditlab's rule updates compiled alone (the step as --compile compiled it
before the optimiser moved inside) followed by an eager optimiser: optim.py's (the previous
--compile), or torch.optim.SGD with foreach=True or fused=True fed through `.grad` (the
alternative to optim.py inside the step). A last side runs only the step's eight matrix
products (three forward, five backward) on tensors of the same shapes: no step of this network
can take less, so its ratio to PyTorch's step is the floor of any ratio above.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from mlp_epoch import torch_model
from timing import add_precision_option, apply_precision, sync

from creditlab.data import load_dataset
from creditlab.training.trainer import TrainConfig, Trainer, epoch_permutation


def optimiser_after(config: TrainConfig, data, kind: str):
    """A step of a fresh creditlab network: its rule's updates compiled alone, then applied
    eagerly by optim.py or by torch.optim.SGD(foreach or fused) through each .grad."""
    trainer = Trainer(config, progress=False, data=data)
    rule, net, params = trainer.rule, trainer.net, trainer.params
    updates = torch.compile(lambda x, y: rule.updates(net, x, y), dynamic=False)
    if kind == "optim.py":
        return lambda x, y: trainer.opt.update(params, updates(x, y), trainer.opt_state, config.lr)
    opt = torch.optim.SGD(params.values(), lr=config.lr, momentum=config.momentum, **{kind: True})

    def step(x, y):
        for p, g in zip(params.values(), updates(x, y).values(), strict=True):
            p.grad = g
        opt.step()

    return step


def products_alone(trainer: Trainer):
    """The matrix products of a step of this MLP and nothing else (plain torch.mm/addmm on
    tensors of the step's shapes): the floor under any implementation's step."""
    weights = [w.clone() for w in trainer.net.W.values()]
    biases = [b.clone() for b in trainer.net.b.values()]
    deltas = [torch.randn(128, w.shape[1], device=w.device) for w in weights]

    def step(x, y):
        sent = [x]
        for w, b in zip(weights[:-1], biases[:-1], strict=True):
            sent.append(torch.addmm(b, sent[-1], w))
        torch.addmm(biases[-1], sent[-1], weights[-1])
        for j in reversed(range(len(weights))):
            sent[j].t() @ deltas[j]  # the weight gradient
            if j:
                deltas[j] @ weights[j].t()  # the signal sent back
        return None

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--blocks", type=int, default=15, help="blocks per side (first: warm-up)")
    parser.add_argument("--steps", type=int, default=30, help="steps in a block")
    parser.add_argument("--hidden", default="1000-1000")
    add_precision_option(parser)
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # as `creditlab train` does; applies to every side
    precision = apply_precision(args)
    config = TrainConfig(
        dataset="mnist",
        model=f"mlp:{args.hidden}",
        batch_size=128,
        lr=0.05,
        momentum=0.9,
        device=args.device,
        probe_every=0,
        matmul_precision=args.matmul_precision,
    )
    data = load_dataset("mnist", progress=False)
    eager = Trainer(config, progress=False, data=data)
    compiled = Trainer(config, progress=False, data=data, compile=True)
    model = torch_model(eager)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    loss_fn = torch.nn.CrossEntropyLoss()
    device = eager.device
    order = epoch_permutation(config.seed, 1, eager.data.train_x.shape[0], device)
    xs, ys = eager.data.train_x[order], eager.data.train_y[order]
    n_batches = xs.shape[0] // config.batch_size

    def batch(step: int):
        a = (step % n_batches) * config.batch_size
        return xs[a : a + config.batch_size], ys[a : a + config.batch_size]

    def creditlab_eager(x, y):
        updates = eager.rule.updates(eager.net, x, y)
        eager.opt.update(eager.params, updates, eager.opt_state, config.lr)

    def creditlab_compiled(x, y):
        compiled.compiled_step(x, y, compiled.opt_state, config.lr)

    def pytorch_eager(x, y):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    sides = {
        "creditlab eager": creditlab_eager,
        "creditlab compiled": creditlab_compiled,
        "pytorch eager": pytorch_eager,
    }
    for kind in ("optim.py", "foreach", "fused"):
        sides[f"compiled updates + {kind}"] = optimiser_after(config, data, kind)
    sides["matrix products alone"] = products_alone(eager)
    print(
        f"{torch.__version__}, {device}, {torch.get_num_threads()} threads, 784-{args.hidden}-10"
        f" relu, batch 128, blocks of {args.steps} steps{precision}"
    )
    times: dict[str, list[float]] = {name: [] for name in sides}
    step_of = dict.fromkeys(sides, 0)
    for block in range(args.blocks):
        names = list(sides)
        names = names[block % len(names) :] + names[: block % len(names)]  # rotate the order
        for name in names:
            sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                sides[name](*batch(step_of[name]))
                step_of[name] += 1
            sync(device)
            times[name].append((time.perf_counter() - start) / args.steps)
    timed = slice(1, None) if args.blocks > 1 else slice(None)
    median = {name: statistics.median(t[timed]) for name, t in times.items()}
    print("median ms per step: " + ", ".join(f"{k} {1e3 * v:.2f}" for k, v in median.items()))
    for name in [n for n in sides if n != "pytorch eager"]:
        ours, theirs = times[name][timed], times["pytorch eager"][timed]
        ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
        print(
            f"{name} / pytorch eager = {median[name] / median['pytorch eager']:.3f} "
            f"(median of the per-block ratios {statistics.median(ratios):.3f})"
        )


if __name__ == "__main__":
    main()

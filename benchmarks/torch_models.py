"""Seconds per epoch: bp on a converted torch model against plain PyTorch training that same
module, on the same batches, in alternating epochs in one process.

The module (ResNet-20 or the small VGG of benchmarks/torch_models_zoo.py, or any factory) is
built once; creditlab.from_torch copies it into a Network, and a deep copy of it trains with
torch.optim.SGD and autograd. creditlab trains with bp and its own SGD (the same momentum,
torch.optim's convention). Both see the same batches of a CIFAR-shaped set (random images
3x32x32 and labels by default: speed does not depend on the values), in training mode
(batch-norm batch statistics). After each round the script writes creditlab's weights into a
scratch copy of the module (creditlab.to_torch) and prints the largest difference from
PyTorch's parameters and buffers: the two follow one trajectory, up to float rounding.

    OMP_NUM_THREADS=1 python benchmarks/torch_models.py                 # ResNet-20, CPU
    python benchmarks/torch_models.py --model vgg_small --n 1024
    python benchmarks/torch_models.py --device cuda --n 10000           # where a GPU is

The first round is a warm-up; the ratio is the median over the other rounds of creditlab's
seconds over PyTorch's (below 1: creditlab is faster).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch_models_zoo as zoo

import creditlab as cl
from creditlab.speed.process import retain_freed_memory


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def creditlab_epoch(net, rule, opt, state, params, xs, ys, batch, lr, device) -> float:
    sync(device)
    start = time.perf_counter()
    for a in range(0, xs.shape[0], batch):
        opt.update(params, rule.updates(net, xs[a : a + batch], ys[a : a + batch]), state, lr)
    sync(device)
    return time.perf_counter() - start


def torch_epoch(module, opt, xs, ys, batch, device) -> float:
    sync(device)
    start = time.perf_counter()
    for a in range(0, xs.shape[0], batch):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(module(xs[a : a + batch]), ys[a : a + batch]).backward()
        opt.step()
    sync(device)
    return time.perf_counter() - start


def largest_difference(net, scratch, module) -> tuple[float, float]:
    """(largest |difference| over parameters and float buffers, the same relative to the
    largest |value|) between creditlab's network and PyTorch's module."""
    cl.to_torch(net, scratch)
    ours, theirs = scratch.state_dict(), module.state_dict()
    diff = scale = 0.0
    for key, value in theirs.items():
        if value.is_floating_point():
            diff = max(diff, float((ours[key] - value).abs().max()))
            scale = max(scale, float(value.abs().max()))
    return diff, diff / scale


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20", choices=["resnet20", "vgg_small"])
    p.add_argument("--n", type=int, default=2048, help="examples per epoch")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=4, help="epochs of each (the first warms up)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--malloc",
        default="retain",
        choices=["retain", "default"],
        help="retain: keep freed memory in the process, as creditlab's commands do "
        "(creditlab/speed/process.py; it applies to both sides); default: glibc's own",
    )
    args = p.parse_args()
    retained = args.malloc == "retain" and retain_freed_memory()

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    module = getattr(zoo, args.model)(10, 3).to(device, dtype)
    g = torch.Generator().manual_seed(args.seed)
    xs = torch.randn(args.n, 3, 32, 32, generator=g, dtype=dtype).to(device)
    ys = torch.randint(0, 10, (args.n,), generator=g).to(device)

    net = cl.from_torch(module, xs[:2])
    scratch = copy.deepcopy(module)
    module.train()
    rule, opt = cl.rule("bp"), cl.optim.SGD(momentum=args.momentum)
    params = net.parameters()
    state = opt.init(params)
    torch_opt = torch.optim.SGD(module.parameters(), lr=args.lr, momentum=args.momentum)

    print(
        f"{args.model}: {sum(p.numel() for p in module.parameters()):,} parameters, "
        f"{args.n} examples of 3x32x32, batch {args.batch}, {args.dtype} on {device}, "
        f"{torch.get_num_threads()} thread(s), "
        f"malloc {'keeps freed memory' if retained else 'as glibc sets it'}"
    )
    ratios = []
    for r in range(args.rounds):
        ours = creditlab_epoch(net, rule, opt, state, params, xs, ys, args.batch, args.lr, device)
        theirs = torch_epoch(module, torch_opt, xs, ys, args.batch, device)
        diff, rel = largest_difference(net, scratch, module)
        tag = " (warm-up)" if r == 0 else ""
        if r > 0:
            ratios.append(ours / theirs)
        print(
            f"round {r + 1}{tag}: creditlab {ours:.2f} s, pytorch {theirs:.2f} s, ratio "
            f"{ours / theirs:.3f}; largest weight difference {diff:.2e} (relative {rel:.1e})",
            flush=True,
        )
    if ratios:
        print(
            f"median ratio (creditlab / pytorch seconds per epoch): {statistics.median(ratios):.3f}"
        )


if __name__ == "__main__":
    main()

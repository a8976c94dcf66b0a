"""CapsNet on MNIST: creditlab's engine against a plain PyTorch CapsNet (nn.Module + autograd).

The same architecture on both sides (Sabour, Frosst and Hinton 2017: conv1 256@9x9, PrimaryCaps
32 x 8-D, DigitCaps 10 x 16-D with 3 routing iterations differentiated exactly, margin loss, a
512-1024-784 decoder weighted 0.0005; `--model capsnet:small`: 64 channels, 8 types), the same
initial weights (copied from creditlab's), the same batches (order and random shifts of up to 2
pixels), Adam at the same rates (`--schedule step` with `--gamma 0.96` decays it by 4% an
epoch, the paper's exponential decay; the reference follows creditlab's rate at every step).
The two train in alternating epochs in one process, so they share the machine's state; the
data sits on the device. Printed: seconds per epoch of each, their ratio, and the test error
after every epoch.

    python benchmarks/capsnet_mnist.py --device cuda --epochs 3             # the GPU check
    python benchmarks/capsnet_mnist.py --device cuda --epochs 3 --val-size 1 --schedule step
    python benchmarks/capsnet_mnist.py --model capsnet:small --train-subset 5000 --epochs 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from batches import epoch_batches
from timing import sync

from creditlab.data import load_dataset
from creditlab.training.trainer import TrainConfig, Trainer, evaluate


def squash(s: torch.Tensor) -> torch.Tensor:
    n2 = s.pow(2).sum(dim=-1, keepdim=True)
    return s * n2.sqrt() / (1 + n2)  # written without dividing by |s|, as creditlab's


class TorchCapsNet(torch.nn.Module):
    """The same CapsNet as plain PyTorch modules, its weights copied from creditlab's."""

    def __init__(self, net):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, net.groups["conv1"].shape[0], 9)
        self.types = net.groups["primary"].options["types"]
        self.primary = torch.nn.Conv2d(self.conv1.out_channels, self.types * 8, 9, stride=2)
        self.W = torch.nn.Parameter(net.W[("primary", "digits")].clone())
        self.dec = torch.nn.ModuleList(
            torch.nn.Linear(*net.W[(i, j)].shape)
            for i, j in (("masked", "dec1"), ("dec1", "dec2"), ("dec2", "recon"))
        )
        with torch.no_grad():
            for layer, (i, j) in (
                (self.conv1, ("input", "conv1")),
                (self.primary, ("conv1", "primary")),
            ):
                layer.weight.copy_(net.W[(i, j)])
                layer.bias.copy_(net.b[j])
            for layer, (i, j) in zip(
                self.dec, (("masked", "dec1"), ("dec1", "dec2"), ("dec2", "recon")), strict=True
            ):
                layer.weight.copy_(net.W[(i, j)].t())
                layer.bias.copy_(net.b[j])

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        n = x.shape[0]
        h = F.relu(self.conv1(x.view(n, 1, 28, 28)))
        p = self.primary(h)  # (N, T*8, 6, 6) -> capsules (t, y, x) of 8 numbers
        u = squash(p.view(n, self.types, 8, -1).permute(0, 1, 3, 2).reshape(n, -1, 8))
        u_hat = torch.einsum("ijdk,nik->njid", self.W, u)  # (N, 10, n_i, 16)
        b = torch.zeros(u_hat.shape[:3], device=x.device, dtype=x.dtype)
        for t in range(3):
            c = torch.softmax(b, dim=1)
            s = (c.unsqueeze(2) @ u_hat).squeeze(2)
            v = squash(s)
            if t < 2:
                b = b + (u_hat @ v.unsqueeze(3)).squeeze(3)
        lengths = v.norm(dim=2)
        chosen = lengths.argmax(dim=1) if labels is None else labels
        masked = v * F.one_hot(chosen, v.shape[1]).to(v.dtype).unsqueeze(2)
        r = F.relu(self.dec[0](masked.reshape(n, -1)))
        r = F.relu(self.dec[1](r))
        return lengths, torch.sigmoid(self.dec[2](r))


def margin_loss(lengths, y):
    t = F.one_hot(y, lengths.shape[1]).to(lengths.dtype)
    per = t * F.relu(0.9 - lengths) ** 2 + 0.5 * (1 - t) * F.relu(lengths - 0.1) ** 2
    return per.sum(dim=1).mean()


def torch_epoch(model, opt, schedule, data, config, epoch, device) -> float:
    sync(device)
    start = time.perf_counter()
    step = (epoch - 1) * schedule.steps_per_epoch
    for xb, yb in epoch_batches(data, config, epoch, device):  # creditlab's batches and shifts
        for group in opt.param_groups:  # creditlab's learning rate at this step
            group["lr"] = schedule(step)
        step += 1
        lengths, recon = model(xb, yb)
        loss = margin_loss(lengths, yb) + 0.0005 * (recon - xb).pow(2).sum(dim=1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return time.perf_counter() - start


@torch.no_grad()
def torch_error(model, x, y, chunk=1000) -> float:
    wrong = 0
    for a in range(0, x.shape[0], chunk):
        lengths, _ = model(x[a : a + chunk])
        wrong += int((lengths.argmax(dim=1) != y[a : a + chunk]).sum())
    return wrong / x.shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="capsnet", choices=["capsnet", "capsnet:small"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--augment", default="shift:2")
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument(
        "--val-size",
        type=int,
        default=None,
        help="training images held out (default 10,000; the paper trained on all 60,000: "
        "--val-size 1 keeps one back)",
    )
    parser.add_argument("--schedule", default="constant", choices=["constant", "step"])
    parser.add_argument(
        "--gamma", type=float, default=0.96, help="step schedule: the rate's factor per step"
    )
    parser.add_argument("--step-epochs", type=int, default=1, help="step schedule: epochs a step")
    parser.add_argument("--no-torch", action="store_true", help="creditlab alone")
    args = parser.parse_args()
    torch.set_flush_denormal(True)

    config = TrainConfig(
        dataset="mnist",
        model=args.model,
        optimizer="adam",
        lr=args.lr,
        batch_size=args.batch_size,
        epochs=args.epochs,
        augment=args.augment,
        probe_every=0,
        train_subset=args.train_subset,
        val_size=args.val_size,
        schedule=args.schedule,
        gamma=args.gamma,
        step_epochs=args.step_epochs,
        device=args.device,
    )
    data = load_dataset("mnist", val_size=args.val_size, progress=False)
    trainer = Trainer(config, progress=False, data=data)
    device, d = trainer.device, trainer.data
    model = None if args.no_torch else TorchCapsNet(trainer.net).to(device)
    opt = None if model is None else torch.optim.Adam(model.parameters(), lr=args.lr)
    print(
        f"torch {torch.__version__}, {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f", {torch.get_num_threads()} threads, {args.model}, batch {args.batch_size}, "
        f"{d.train_x.shape[0]} training examples, augment {args.augment}, Adam lr {args.lr:g}, "
        f"{args.schedule} schedule"
        + (f" (x{args.gamma:g} every {args.step_epochs} epochs)" if args.schedule == "step" else "")
    )
    ours, theirs = [], []
    for epoch in range(1, args.epochs + 1):
        sides = [("creditlab", lambda e=epoch: trainer.train_epoch(e)["seconds"])]
        if model is not None:
            sides.append(
                (
                    "pytorch",
                    lambda e=epoch: torch_epoch(model, opt, trainer.schedule, d, config, e, device),
                )
            )
        if epoch % 2 == 0:
            sides.reverse()  # alternate who goes first
        seconds = {name: run() for name, run in sides}
        ours.append(seconds["creditlab"])
        _, accuracy = evaluate(trainer.net, trainer.rule, d.test_x, d.test_y, d.n_classes, 1000)
        line = f"epoch {epoch}: creditlab {ours[-1]:.1f} s, test error {100 * (1 - accuracy):.2f}%"
        if model is not None:
            theirs.append(seconds["pytorch"])
            error = torch_error(model, d.test_x, d.test_y)
            line += (
                f"; pytorch {theirs[-1]:.1f} s, test error {100 * error:.2f}%; "
                f"creditlab / pytorch = {ours[-1] / theirs[-1]:.3f}"
            )
        print(line, flush=True)
    timed = slice(1, None) if args.epochs > 1 else slice(None)  # the first epoch warms up
    if theirs:
        mine, ref = statistics.median(ours[timed]), statistics.median(theirs[timed])
        print(
            f"median seconds per epoch (after the first): creditlab {mine:.2f}, "
            f"pytorch {ref:.2f}, creditlab / pytorch = {mine / ref:.3f}"
        )
        drift = (trainer.net.W[("primary", "digits")] - model.W).abs().max().item()
        print(f"largest difference between the two DigitCaps weights after training: {drift:.2e}")


if __name__ == "__main__":
    main()

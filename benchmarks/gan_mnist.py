"""A GAN on MNIST: creditlab's bp/bp against a plain PyTorch GAN, side by side.

By default the dense GAN: generator 100-256-512-1024-784 (leaky ReLU, slope 0.01, tanh output),
discriminator 784-512-256-1 (leaky ReLU). With --conv (or --generator/--discriminator dcgan[:W])
the DCGAN of creditlab/gan/dcgan.py: dense to (2W, 7, 7), two transposed
convolutions 4x4 stride 2 up to 28x28; two convolutions 4x4 stride 2 down to (2W, 7, 7) with
leaky ReLU 0.2, then one logit; no batch norm on either side. Non-saturating loss, Adam 2e-4 with
betas (0.5, 0.999), batch 64, one D step per G step. Both start from the same weights (copied
from creditlab's networks into nn.Linear / nn.Conv2d / nn.ConvTranspose2d), see the same real
batches and the same latent noise, and train in alternating epochs in one process, so they
share the machine's state. Both are judged every epoch by the same
classifier (creditlab.gan.scoring) on the same fixed latent batch of 10,000.

The PyTorch side is the loop of PyTorch's DCGAN example: D on the real batch and on the
detached fake batch (two backward passes), then G through D; nn.Module, autograd, torch.optim.
creditlab runs its own loop (GanTrainer.train_epoch): D on real and fake as one batch of 2N.
Seconds are of training alone (judging excluded).

    python benchmarks/gan_mnist.py --epochs 30                  # bp/bp against PyTorch
    python benchmarks/gan_mnist.py --epochs 10 --only-ours --pairs fa/fa,dfa/dfa,usf/usf
    python benchmarks/gan_mnist.py --device cuda --epochs 30
    python benchmarks/gan_mnist.py --device cuda --conv --epochs 10    # the DCGAN race
    python benchmarks/gan_mnist.py --conv --generator dcgan:16 --discriminator dcgan:16 \
        --epochs 3 --train-subset 2000 --threads 1                    # a short CPU check
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from timing import sync

from creditlab.data import load_dataset
from creditlab.engine.devices import resolve_device
from creditlab.gan import pictures, scoring
from creditlab.gan.loop import GanConfig, GanTrainer, to_unit
from creditlab.training.trainer import epoch_permutation


def torch_activation(name: str) -> torch.nn.Module | None:
    """The nn module of a creditlab activation (None for identity)."""
    if name.startswith("leaky_relu"):
        slope = float(name.partition(":")[2] or 0.01)
        return torch.nn.LeakyReLU(slope, inplace=True)
    modules = {"relu": lambda: torch.nn.ReLU(inplace=True), "tanh": torch.nn.Tanh}
    return modules[name]() if name in modules else None


def torch_layer(net, i: str, j: str) -> torch.nn.Module:
    """Group j's connection as an nn layer, creditlab's weights copied in."""
    group, (c_in, *_) = net.groups[j], net.groups[i].shape
    W, o = net.W[(i, j)], group.options
    if group.kind == "dense":
        layer, weight = torch.nn.Linear(net.groups[i].size, group.size), W.t()
    elif group.kind == "conv":  # nn.Conv2d keeps W as creditlab does: (C_out, C_in, k, k)
        layer = torch.nn.Conv2d(c_in, o["channels"], o["kernel"], o["stride"], o["padding"])
        weight = W
    elif group.kind == "conv_transpose":  # both keep (C_in, C_out, k, k)
        layer = torch.nn.ConvTranspose2d(
            c_in, o["channels"], o["kernel"], o["stride"], o["padding"], o["output_padding"]
        )
        weight = W
    else:
        raise ValueError(f"no PyTorch twin for group {j!r} ({group.kind})")
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(net.b[j])
    return layer


def torch_network(net, device) -> torch.nn.Sequential:
    """A creditlab chain (dense, conv, conv_transpose) as nn.Sequential with the same weights
    and activations, taking and giving flat (N, size) batches as creditlab does. Image
    activity stays (N, C, H, W) between convolutions: only a dense layer flattens it."""
    layers: list[torch.nn.Module] = []
    flat = True  # the batch comes in flat
    for j in net.order[1:]:
        (i,) = net.groups[j].ins
        group = net.groups[j]
        if group.kind == "dense" and not flat:
            layers.append(torch.nn.Flatten())
        elif group.kind != "dense" and flat:
            layers.append(torch.nn.Unflatten(1, net.groups[i].shape))
        layers.append(torch_layer(net, i, j))
        flat = group.kind == "dense"
        act = torch_activation(group.act.name)
        if act is not None:
            layers.append(act)
    if not flat:
        layers.append(torch.nn.Flatten())
    return torch.nn.Sequential(*layers).to(device)


class PlainGan:
    """The PyTorch GAN: the same networks and settings, autograd and torch.optim.Adam."""

    def __init__(self, ours: GanTrainer):
        c = ours.config
        self.config, self.device, self.real = c, ours.device, ours.real
        self.G = torch_network(ours.G, ours.device)
        self.D = torch_network(ours.D, ours.device)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=c.lr, betas=c.betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=c.lr, betas=c.betas)
        # the same latent stream as creditlab's loop: same generator, same seed, same draws
        self.noise = torch.Generator(device=ours.device).manual_seed(c.seed * 1_000_003 + 7)

    def epoch(self, epoch: int) -> tuple[float, float, float]:
        c, n = self.config, self.real.shape[0]
        sync(self.device)
        start = time.perf_counter()
        real_all = self.real[epoch_permutation(c.seed, epoch, n, self.device)]
        d_sum = g_sum = 0.0
        steps = 0
        for a in range(0, n, c.batch_size):
            real = real_all[a : a + c.batch_size]
            z = torch.randn(real.shape[0], c.latent, generator=self.noise, device=self.device)
            fake = self.G(z)
            self.opt_d.zero_grad()
            loss_real = F.softplus(-self.D(real)).mean()
            loss_real.backward()
            loss_fake = F.softplus(self.D(fake.detach())).mean()
            loss_fake.backward()
            self.opt_d.step()
            self.opt_g.zero_grad()
            loss_g = F.softplus(-self.D(fake)).mean()
            loss_g.backward()
            self.opt_g.step()
            d_sum += loss_real.detach() + loss_fake.detach()
            g_sum += loss_g.detach()
            steps += 1
        sync(self.device)
        return time.perf_counter() - start, float(d_sum) / steps, float(g_sum) / steps

    @torch.no_grad()
    def generate(self, latent: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.G(latent[a : a + 2048]) for a in range(0, latent.shape[0], 2048)])


def shares_text(shares: list[float]) -> str:
    return " ".join(f"{100 * s:.0f}" for s in shares)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--pairs", default="", help="extra creditlab rule pairs, e.g. fa/fa,dfa/dfa")
    p.add_argument("--only-ours", action="store_true", help="skip bp/bp and PyTorch")
    p.add_argument(
        "--train-subset", type=int, default=None, help="train on the first N images only"
    )
    p.add_argument(
        "--generator", default=GanConfig.generator, help="mlp:H1-H2-..., dcgan or dcgan:W"
    )
    p.add_argument(
        "--discriminator", default=GanConfig.discriminator, help="mlp:H1-H2-..., dcgan or dcgan:W"
    )
    p.add_argument(
        "--conv", action="store_true", help="the DCGAN: --generator/--discriminator dcgan"
    )
    p.add_argument("--out", default="benchmarks/runs/gan_mnist")
    args = p.parse_args()
    if args.conv:  # DCGAN for whichever of the two was left at its dense default
        if args.generator == GanConfig.generator:
            args.generator = "dcgan"
        if args.discriminator == GanConfig.discriminator:
            args.discriminator = "dcgan"
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    device = resolve_device(args.device)
    data = load_dataset("mnist", progress=False)
    judge = scoring.load_judge(data, scoring.data_folder_of("mnist", None), device)
    out = Path(args.out)
    summary: dict = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "generator": args.generator,
        "discriminator": args.discriminator,
        "runs": {},
    }
    if not args.only_ours:
        summary["runs"].update(race(args, data, judge, device, out))
    for pair in filter(None, args.pairs.split(",")):
        g, d = pair.split("/")
        config = gan_config(args, device, rule_g=g, rule_d=d)
        trainer = GanTrainer(config, out / f"creditlab-{g}-{d}", log=print, data=data, judge=judge)
        trainer.restore()
        results = trainer.fit()
        summary["runs"][pair] = {
            k: results[k] for k in ("status", "best_fid", "best_epoch", "warnings")
        }
        summary["runs"][pair]["fid"] = [h["fid"] for h in results["history"]]
        summary["runs"][pair]["final_class_shares"] = results["history"][-1]["class_shares"]
    models = "" if args.generator.startswith("mlp") else f"-{args.generator}"
    path = out / f"summary-{args.device}-{args.epochs}ep{models.replace(':', '')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary in {path}")


def gan_config(args, device, **rules) -> GanConfig:
    return GanConfig(
        generator=args.generator,
        discriminator=args.discriminator,
        epochs=args.epochs,
        seed=args.seed,
        device=str(device),
        train_subset=args.train_subset,
        **rules,
    )


def race(args, data, judge, device, out: Path) -> dict:
    """bp/bp against PyTorch, epochs alternated."""
    config = gan_config(args, device)
    ours = GanTrainer(config, out / "creditlab-bp-bp", log=lambda _: None, data=data, judge=judge)
    plain = PlainGan(ours)
    rows = []
    print(
        "epoch | FID creditlab | FID PyTorch | s creditlab | s PyTorch | ratio | "
        "class shares % (ours / PyTorch)"
    )
    for epoch in range(1, args.epochs + 1):
        if epoch % 2:  # alternate which side goes first
            record = ours.run_epoch()
            seconds_t, d_t, g_t = plain.epoch(epoch)
        else:
            seconds_t, d_t, g_t = plain.epoch(epoch)
            record = ours.run_epoch()
        scores = judge.scores(to_unit(plain.generate(ours.eval_latent)), ours.test_gaussian)
        row = {
            "epoch": epoch,
            "fid_ours": record["fid"],
            "fid_torch": scores["fid"],
            "s_ours": record["seconds"],
            "s_torch": seconds_t,
            "shares_ours": record["class_shares"],
            "shares_torch": scores["class_shares"],
            "confidence_ours": record["confidence"],
            "confidence_torch": scores["confidence"],
            "d_loss_ours": record["d_loss"],
            "d_loss_torch": d_t,
            "g_loss_ours": record["g_loss"],
            "g_loss_torch": g_t,
        }
        rows.append(row)
        print(
            f"{epoch:5d} | {row['fid_ours']:13.2f} | {row['fid_torch']:11.2f} | "
            f"{row['s_ours']:11.1f} | {seconds_t:9.1f} | {row['s_ours'] / seconds_t:5.3f} | "
            f"{shares_text(row['shares_ours'])} / {shares_text(row['shares_torch'])}",
            flush=True,
        )
        grid = pictures.to_uint8(plain.generate(ours.grid_latent), ours.image_shape)
        pictures.write_grid(out / "pytorch" / f"epoch-{epoch:03d}.png", grid)
        # every epoch's row on disk at once, so a run stopped early keeps its figures
        (out / "race-rows.json").write_text(json.dumps(rows, indent=1) + "\n")
    ours._write_results(status="finished")
    timed = rows[1:] or rows  # the first epoch warms up
    ratios = [r["s_ours"] / r["s_torch"] for r in timed]
    last = rows[-1]
    s_ours = statistics.median(r["s_ours"] for r in timed)
    s_torch = statistics.median(r["s_torch"] for r in timed)
    refs = ours.references
    print(
        f"after {args.epochs} epochs: classifier FID creditlab {last['fid_ours']:.2f}, PyTorch "
        f"{last['fid_torch']:.2f} (ratio {last['fid_ours'] / last['fid_torch']:.3f}); best "
        f"{min(r['fid_ours'] for r in rows):.2f} / {min(r['fid_torch'] for r in rows):.2f}; "
        f"smallest class share {min(last['shares_ours']):.3f} / {min(last['shares_torch']):.3f}; "
        f"seconds per epoch (median after the first) {s_ours:.1f} / {s_torch:.1f}, ratio of "
        f"medians {s_ours / s_torch:.3f}, median of per-epoch ratios "
        f"{statistics.median(ratios):.3f}"
    )
    print(
        f"references: train vs test {refs['fid_train_vs_test']:.2f}, "
        f"uniform noise {refs['fid_uniform_noise']:.2f}"
    )
    return {
        "bp/bp vs PyTorch": {"rows": rows, "references": ours.references, "judge": judge.record()}
    }


if __name__ == "__main__":
    main()

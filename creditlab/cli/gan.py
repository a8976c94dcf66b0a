"""The command line of GANs: `creditlab gan`, `creditlab sample` and `creditlab gan-compare`.

cli/main.py registers these subcommands with `register(sub)`; their options and handlers live
here.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch

from creditlab.errors import UsageError
from creditlab.speed.process import prepare_for_training
from creditlab.training import folders, locks


def _opts(items: list[str], flag: str) -> dict[str, str]:
    """--rule-opt-g KEY=VALUE (repeatable) as a dict."""
    opts = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} needs KEY=VALUE, got {item!r}")
        opts[key.rpartition(".")[2]] = value
    return opts


def add_gan_options(p: argparse.ArgumentParser, pairs: bool = False) -> None:
    from creditlab.gan.loop import GanConfig

    d = GanConfig()
    p.add_argument(
        "--dataset", default=d.dataset, help="mnist, digits or idx:PATH (default %(default)s)"
    )
    p.add_argument("--data-dir", default=None, help="folder holding the dataset's files")
    p.add_argument(
        "--train-subset", type=int, default=None, help="train on the first N images only"
    )
    p.add_argument(
        "--generator",
        default=d.generator,
        help="mlp:H1-H2-..., dcgan, dcgan:W (base width) or a JSON spec (default %(default)s)",
    )
    p.add_argument(
        "--discriminator",
        default=d.discriminator,
        help="mlp:H1-H2-..., dcgan, dcgan:W (base width) or a JSON spec (default %(default)s)",
    )
    p.add_argument(
        "--activation-g",
        default=d.activation_g,
        help="generator's hidden activation, mlp models (dcgan: relu) (default %(default)s)",
    )
    p.add_argument(
        "--activation-d",
        default=d.activation_d,
        help="discriminator's hidden activation, mlp models (dcgan: leaky_relu:0.2) "
        "(default %(default)s)",
    )
    p.add_argument("--latent", type=int, default=d.latent, help="latent size (default %(default)s)")
    p.add_argument("--loss", default=d.loss, help="nonsaturating or hinge (default %(default)s)")
    p.add_argument(
        "--k",
        type=int,
        default=d.k,
        help="discriminator steps per generator step (default %(default)s)",
    )
    if not pairs:
        p.add_argument(
            "--rule-g", default=d.rule_g, help="the generator's learning rule (default %(default)s)"
        )
        p.add_argument(
            "--rule-d",
            default=d.rule_d,
            help="the discriminator's learning rule (default %(default)s)",
        )
    p.add_argument(
        "--rule-opt-g",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the generator's rule (repeatable)",
    )
    p.add_argument(
        "--rule-opt-d",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the discriminator's rule (repeatable)",
    )
    p.add_argument(
        "--optimizer",
        default=d.optimizer,
        help="adam, adamw or sgd, for both networks (default %(default)s)",
    )
    p.add_argument(
        "--lr", type=float, default=d.lr, help="learning rate of both (default %(default)s)"
    )
    p.add_argument(
        "--lr-g", type=float, default=None, help="the generator's learning rate (default: --lr)"
    )
    p.add_argument(
        "--lr-d", type=float, default=None, help="the discriminator's learning rate (default: --lr)"
    )
    p.add_argument(
        "--beta1", type=float, default=d.betas[0], help="Adam's beta1 (default %(default)s)"
    )
    p.add_argument(
        "--beta2", type=float, default=d.betas[1], help="Adam's beta2 (default %(default)s)"
    )
    p.add_argument(
        "--momentum", type=float, default=d.momentum, help="sgd's momentum (default %(default)s)"
    )
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="weight decay")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs of training")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per batch")
    p.add_argument(
        "--eval-samples",
        type=int,
        default=d.eval_samples,
        help="generated images judged per epoch (default %(default)s)",
    )
    p.add_argument(
        "--seed", type=int, default=d.seed, help="seed of the weights, batches and latents"
    )
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda (default %(default)s)")
    p.add_argument("--dtype", default=d.dtype, help="float32 or float64")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args, rule_g: str, rule_d: str):
    from creditlab.cli.options import data_dir_arg
    from creditlab.gan.loop import GanConfig

    return GanConfig(
        dataset=args.dataset,
        data_dir=data_dir_arg(args.data_dir),
        train_subset=args.train_subset,
        generator=args.generator,
        discriminator=args.discriminator,
        activation_g=args.activation_g,
        activation_d=args.activation_d,
        latent=args.latent,
        loss=args.loss,
        k=args.k,
        rule_g=rule_g,
        rule_d=rule_d,
        rule_opts_g=_opts(args.rule_opt_g, "--rule-opt-g"),
        rule_opts_d=_opts(args.rule_opt_d, "--rule-opt-d"),
        optimizer=args.optimizer,
        lr=args.lr,
        lr_g=args.lr_g,
        lr_d=args.lr_d,
        betas=(args.beta1, args.beta2),
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        epochs=args.epochs,
        batch_size=args.batch_size,
        eval_samples=args.eval_samples,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
    )


def clear_gan_run(out: Path) -> None:
    """--force: the old run's files go before the new run writes any (moved aside in one
    rename each, then deleted), so the folder never mixes two runs' epochs and pictures."""
    import shutil
    import tempfile

    present = [p for p in out.iterdir() if p.name not in locks.OURS and not p.name.startswith(".")]
    if not present:
        return
    trash = Path(tempfile.mkdtemp(prefix=".old-run-", dir=out))
    for path in present:
        path.rename(trash / path.name)
    shutil.rmtree(trash, ignore_errors=True)


def cmd_gan(args) -> int:
    from creditlab.gan.loop import train_gan

    prepare_for_training()  # denormals flushed, freed memory kept (speed/process.py)
    config = config_from_args(args, args.rule_g, args.rule_d)
    out = folders.out_path(args.out)
    if args.resume and args.force:
        raise UsageError("--resume continues a run and --force starts it over: pass only one")
    with locks.hold(out, "gan"):
        if (out / "checkpoint.pt").exists() and not (args.resume or args.force):
            raise UsageError(
                f"{out} already holds a run; pass --resume to continue it or --force to start over"
            )
        if args.force:
            clear_gan_run(out)
        results = train_gan(config, out, resume=args.resume, progress=not args.quiet)
    best = results["best_fid"]
    refs = results["references"]
    print(
        f"GAN {config.rule_g}/{config.rule_d} on {config.dataset}: {results['status']}, best "
        f"classifier FID {'n/a' if best is None else f'{best:.2f}'} at epoch "
        f"{results['best_epoch']} (train vs test {refs['fid_train_vs_test']:.2f}, uniform "
        f"noise {refs['fid_uniform_noise']:.2f})"
    )
    for warning in results["warnings"]:
        print(f"warning: {warning}")
    print(f"report in {out / 'index.html'}")
    failure = learned_nothing(results)
    if failure:
        print(f"creditlab: the GAN learned nothing: {failure}; results kept", file=sys.stderr)
        return 1
    return 0


# The judge's verdicts that mean no usable generator came out of a run (gan/loop.py warnings).
FAILED_WARNINGS = ("mode collapse", "no digits learned")


def learned_nothing(results: dict) -> str | None:
    """Why a GAN run learned nothing, or None: it diverged, or at its best epoch (the one
    `creditlab sample` draws from) the judge found no digits or a collapse onto few classes."""
    if results["status"] != "finished":
        return f"it {results['status']}" + (
            f" ({results['message']})" if results.get("message") else ""
        )
    history = results.get("history") or []
    if not history:
        return "no epoch was trained"
    epoch = results.get("best_epoch") or len(history)
    record = history[min(epoch, len(history)) - 1]
    bad = [w for w in record.get("warnings", []) if any(f in w for f in FAILED_WARNINGS)]
    return f"at its best epoch ({epoch}) {'; '.join(bad)}" if bad else None


# What a GAN's best.pt holds (gan/loop.py GanTrainer._save_best) that sampling reads.
BEST_KEYS = ("network", "params", "latent", "image_shape", "epoch", "fid")
SAMPLE_EXTENSIONS = (".npz",)  # the only format `sample` writes


def cmd_sample(args) -> int:
    from creditlab.engine import memory
    from creditlab.engine.network import Network
    from creditlab.gan.pictures import to_uint8
    from creditlab.training import checkpoint

    if args.n < 1:
        raise UsageError(f"--n must be a positive integer, got {args.n}")
    run = Path(args.run)
    kind = locks.detect_kind(run)
    if kind is not None and kind != "gan":
        raise UsageError(
            f"--run {run} holds a `creditlab {kind}` folder; `creditlab sample` draws images from "
            "a `creditlab gan` run"
        )
    best = run / "best.pt"
    if not best.exists():
        raise UsageError(f"{args.run} holds no GAN run with a best checkpoint ({best} is missing)")
    out = folders.out_path(args.out)
    if out.suffix.lower() not in SAMPLE_EXTENSIONS:
        raise UsageError(
            f"--out {out}: sample writes a NumPy archive, so the name must end in "
            f"{', '.join(SAMPLE_EXTENSIONS)}"
        )
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; name the .npz file to write")
    state = checkpoint.load(best)
    missing = [key for key in BEST_KEYS if key not in state]
    if missing:
        raise UsageError(
            f"{best} is not a GAN's best checkpoint (it has no {', '.join(missing)}); "
            "`creditlab sample` draws images from a `creditlab gan` run"
        )
    pixels = 1
    for size in state["image_shape"]:
        pixels *= int(size)
    # The uint8 images, a copy in the compressed archive at worst, and a float32 chunk.
    memory.check_fits(2 * args.n * pixels + 4096 * pixels * 8, f"sample --n {args.n}")
    with locks.hold(out.parent, "sample", foreign_ok=True):
        if out.exists() and not args.force:
            raise UsageError(f"{out} exists; pass --force to overwrite it")
        net = Network.from_spec(state["network"], dtype=torch.float32, device="cpu")
        net.load_parameters({k: v.float() for k, v in state["params"].items()})
        generator = torch.Generator().manual_seed(args.seed)
        chunks = []
        with torch.no_grad():
            for a in range(0, args.n, 4096):
                u = torch.randn(min(4096, args.n - a), state["latent"], generator=generator)
                chunks.append(to_uint8(net.predict(u), state["image_shape"]))
        images = torch.cat(chunks).numpy()
        buffer = io.BytesIO()
        np.savez_compressed(buffer, images=images)
        checkpoint.atomic_write(out, lambda f: f.write(buffer.getvalue()))
    print(
        f"wrote {images.shape[0]} images {images.shape[1:]} uint8 to {out} (key 'images'), from "
        f"epoch {state['epoch']} (classifier FID {state['fid']:.2f})"
    )
    return 0


def cmd_gan_compare(args) -> int:
    from creditlab.gan import compare as gan_compare

    prepare_for_training()  # denormals flushed, freed memory kept (speed/process.py)
    pairs = gan_compare.pair_list(args.rules)
    config = config_from_args(args, *pairs[0])
    seeds = gan_compare.seed_list(args.seeds, config.seed)
    out = folders.out_path(args.out)
    print(f"comparing {', '.join('/'.join(p) for p in pairs)} on {len(seeds)} seed(s) in {out}")
    try:
        with locks.hold(out, "gan-compare"):
            record = gan_compare.compare(config, pairs, seeds, out, progress=not args.quiet)
    except KeyboardInterrupt:
        print(
            f"creditlab: interrupted; run the same command again to go on ({out})", file=sys.stderr
        )
        return 130
    print(gan_compare.markdown_table(record))
    print(f"report in {out / 'index.html'}")
    failures = [learned_nothing(run) for run in record["runs"]]
    if all(failures):
        print(
            "creditlab: every run diverged or learned nothing (see the warnings above); results "
            "kept",
            file=sys.stderr,
        )
        return 1
    return 0


def register(sub) -> None:
    """Add the gan, sample and gan-compare subcommands to cli.py's subparsers."""
    from creditlab.rules import DEFAULT_GAN_PAIRS

    p = sub.add_parser("gan", help="train a GAN: generator and discriminator, each by its rule")
    add_gan_options(p)
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument(
        "--resume", action="store_true", help="continue from the run folder's checkpoint"
    )
    p.add_argument(
        "--force", action="store_true", help="start over in a run folder that holds a run"
    )
    p.set_defaults(func=cmd_gan)

    p = sub.add_parser("sample", help="draw images from a GAN run's best checkpoint into a .npz")
    p.add_argument("--run", required=True, help="the GAN's run folder")
    p.add_argument("--n", type=int, default=10_000, help="how many images (default %(default)s)")
    p.add_argument("--out", required=True, help="the .npz file to write (array 'images', uint8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent draws")
    p.add_argument(
        "--force", action="store_true", help="overwrite --out if it is an earlier sample (.npz)"
    )
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser(
        "gan-compare", help="GANs trained by several rule pairs over seeds, with a report"
    )
    add_gan_options(p, pairs=True)
    p.add_argument(
        "--rules",
        default=",".join(DEFAULT_GAN_PAIRS),
        help="generator/discriminator rule pairs (default %(default)s)",
    )
    p.add_argument(
        "--seeds",
        default="2",
        help="how many seeds from --seed, or a list like 0,3 (default %(default)s)",
    )
    p.add_argument("--out", required=True, help="report folder (running again resumes)")
    p.set_defaults(func=cmd_gan_compare)

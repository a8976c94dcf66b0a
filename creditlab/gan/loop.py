"""GANs on the engine: a generator and a discriminator, each an ordinary creditlab network
trained by its own rule, optimiser and learning rate, in one loop.

The generator G maps latent noise u ~ N(0, I) to an image in [-1, 1] (its output group is
tanh); the discriminator D maps an image to one logit l. One iteration is k discriminator steps
and one generator step (Goodfellow et al. 2014, Algorithm 1):

- D step: a real batch and a generated batch, run through D as one batch of 2N; the signal at
  D's output is dE_D/dl per example (gan_losses.py), doubled because E_D is the sum of the two
  halves' means while the updates divide by 2N; D's rule turns it into D's updates
  (Rule.updates_for_signal).
- G step: the last D step's generated batch (G has not changed since; its forward record is
  reused, as PyTorch's DCGAN example reuses its fake batch) is run through the updated D; D's
  rule carries dE_G/dl down to D's input (Rule.input_signal: exactly dE_G/dx for bp, through
  B for fa, ...), and G's output group receives that as its dE/dz: G's rule gives G's updates.

No autograd anywhere: the signals are the rules' own (see rules/base.py). Generators and
discriminators are built from model strings (`mlp:H1-H2-...`, `dcgan`, `dcgan:W` for the
convolutional ones of dcgan.py, or a JSON network spec). Each epoch the samples are judged by
a classifier of the dataset (scoring.py) and the run folder is rendered (pictures.py); the
best checkpoint is the lowest classifier FID.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from creditlab.data import Dataset, load_dataset
from creditlab.engine.devices import resolve_device
from creditlab.engine.models import _hidden_sizes, build_model, mlp
from creditlab.engine.network import Network, resolve_dtype
from creditlab.errors import TrainingError, UsageError
from creditlab.gan import dcgan, pictures, scoring
from creditlab.gan.losses import gan_loss
from creditlab.optim import SGD, Optimizer, optimizer
from creditlab.rules import DEFAULT_RULE, rule
from creditlab.training import checkpoint, guards
from creditlab.training.loop import CHECK_EVERY, EpochLoop, batch_slice
from creditlab.training.trainer import (
    TrainConfig,
    _to_device,
    epoch_permutation,
    load_for_resume,
)

Tensor = torch.Tensor
GRID_SEED = 20_140_610  # the fixed latent batches (grid and evaluation) are the same in every run
GRID_SIZE = 64
COLLAPSE_SHARE = 0.5  # one class above this share of the samples: mode collapse
D_LOSS_FLOOR = 0.01  # D's mean loss below this for an epoch: D wins, G learns nothing


@dataclass
class GanConfig:
    """Everything that decides a GAN run; written to config.json and checked on --resume."""

    dataset: str = "digits"  # as train, compare and tune
    data_dir: str | None = None
    train_subset: int | None = None
    generator: str = "mlp:256-512-1024"
    discriminator: str = "mlp:512-256"
    activation_g: str = "leaky_relu"
    activation_d: str = "leaky_relu"
    latent: int = 100
    loss: str = "nonsaturating"
    k: int = 1  # discriminator steps per generator step
    rule_g: str = DEFAULT_RULE
    rule_d: str = DEFAULT_RULE
    rule_opts_g: dict[str, Any] = field(default_factory=dict)
    rule_opts_d: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "adam"
    lr: float = 2e-4
    lr_g: float | None = None  # None: lr
    lr_d: float | None = None
    betas: tuple[float, float] = (0.5, 0.999)
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 30
    batch_size: int = 64
    eval_samples: int = 10_000
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"

    def __post_init__(self):
        for name in ("epochs", "batch_size", "latent", "k", "eval_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be a positive integer, got {value!r}")
        if self.train_subset is not None and (
            isinstance(self.train_subset, bool) or self.train_subset < 1
        ):
            raise UsageError(f"train_subset must be a positive integer, got {self.train_subset!r}")
        if self.eval_samples < 2:
            raise UsageError(f"eval_samples must be at least 2, got {self.eval_samples}")
        for name in ("lr", "lr_g", "lr_d"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise UsageError(f"{name} must be a finite number >= 0, got {value}")
        gan_loss(self.loss)
        resolve_dtype(self.dtype)
        self.betas = tuple(self.betas)

    # The same plain record as a training run's (every field; betas as a list), and back.
    to_dict = TrainConfig.to_dict
    from_dict = classmethod(TrainConfig.from_dict.__func__)


# ---- the two networks -----------------------------------------------------------------------
def build_generator(
    config: GanConfig, n_pixels: int, dtype, device, image_shape: tuple[int, ...] = ()
) -> Network:
    """latent -> ... -> n_pixels, tanh output (the images live in [-1, 1]); the dcgan models
    take their geometry from `image_shape` ((H, W) or (C, H, W))."""
    width = dcgan.dcgan_width(config.generator)
    if width is not None:
        image = dcgan.image_of(image_shape, config.generator)
        return dcgan.generator(width, config.latent, image, dtype, device, config.seed)
    kind, sep, rest = config.generator.partition(":")
    if kind == "mlp" and sep:
        sizes = [config.latent, *_hidden_sizes(rest, config.generator), n_pixels]
        return mlp(sizes, config.activation_g, "mse", "tanh", dtype, device, config.seed)
    if config.generator.endswith(".json"):
        net = build_model(
            config.generator,
            config.latent,
            n_pixels,
            config.activation_g,
            "mse",
            dtype,
            device,
            config.seed,
        )
        if net.groups[net.output_name].act.name != "tanh":
            raise UsageError(f"the generator {config.generator} must end in a tanh group")
        return net
    raise UsageError(
        f"unknown generator {config.generator!r}; write mlp:H1-H2-..., dcgan, dcgan:W or a "
        "JSON network spec"
    )


def build_discriminator(
    config: GanConfig, n_pixels: int, dtype, device, image_shape: tuple[int, ...] = ()
) -> Network:
    """n_pixels -> ... -> one logit (identity output)."""
    width = dcgan.dcgan_width(config.discriminator)
    if width is not None:
        image = dcgan.image_of(image_shape, config.discriminator)
        return dcgan.discriminator(width, image, dtype, device, config.seed + 10_007)
    if config.discriminator.startswith("mlp:") or config.discriminator.endswith(".json"):
        return build_model(
            config.discriminator,
            n_pixels,
            1,
            config.activation_d,
            "bce",
            dtype,
            device,
            config.seed + 10_007,
        )
    raise UsageError(
        f"unknown discriminator {config.discriminator!r}; write mlp:H1-H2-..., dcgan, dcgan:W "
        "or a JSON network spec"
    )


def make_optimizer(config: GanConfig) -> Optimizer:
    if config.optimizer == "sgd":
        return SGD(config.momentum, weight_decay=config.weight_decay)
    if config.optimizer in ("adam", "adamw"):
        return optimizer(config.optimizer, betas=config.betas, weight_decay=config.weight_decay)
    return optimizer(config.optimizer)  # raises, listing the valid names


def to_signed(x01: Tensor) -> Tensor:
    return x01 * 2 - 1


def to_unit(x_signed: Tensor) -> Tensor:
    return (x_signed + 1) / 2


def fixed_latent(n: int, latent: int, offset: int = 0) -> Tensor:
    """The same latent batch in every run (CPU generator), for grids and evaluation."""
    g = torch.Generator().manual_seed(GRID_SEED + offset)
    return torch.randn(n, latent, generator=g)


class GanTrainer:
    """Runs one GAN configuration: builds both networks, trains, judges, renders."""

    def __init__(
        self,
        config: GanConfig,
        out_dir: str | Path | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
        data: Dataset | None = None,
        judge: scoring.Judge | None = None,
    ):
        self.config = config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress, self.log = progress, log
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype)
        self.loss = gan_loss(config.loss)
        self.rule_g = rule(config.rule_g, **config.rule_opts_g)
        self.rule_d = rule(config.rule_d, **config.rule_opts_d)
        self.opt_g, self.opt_d = make_optimizer(config), make_optimizer(config)
        if data is None:
            data = load_dataset(config.dataset, config.data_dir, None, progress)
        self.image_shape = tuple(data.image_shape)
        n_pixels = data.input_size
        self.G = build_generator(config, n_pixels, self.dtype, self.device, self.image_shape)
        self.D = build_discriminator(config, n_pixels, self.dtype, self.device, self.image_shape)
        self.rule_g.check_signal(self.G)
        self.rule_d.check_signal(self.D)
        # Every example of the training set (train and validation splits: a GAN picks no
        # model on held-out images) scaled to [-1, 1]; the test set is the FID's reference.
        train = torch.cat([data.train_x, data.val_x])
        if config.train_subset:
            train = train[: config.train_subset]
        self.real = to_signed(train).to(self.device, self.dtype)
        self.judge = judge or scoring.load_judge(
            data,
            scoring.data_folder_of(config.dataset, config.data_dir),
            self.device,
            progress,
            log,
        )
        self.test_gaussian = self.judge.gaussian(data.test_x)
        self.references = scoring.references(self.judge, data, self.test_gaussian)
        self.grid_latent = fixed_latent(GRID_SIZE, config.latent).to(self.device, self.dtype)
        self.eval_latent = fixed_latent(config.eval_samples, config.latent, offset=1).to(
            self.device, self.dtype
        )
        self.noise = torch.Generator(device=self.device).manual_seed(config.seed * 1_000_003 + 7)
        self.opt_state_g = self.opt_g.init(self.G.parameters())
        self.opt_state_d = self.opt_d.init(self.D.parameters())
        self.steps_per_epoch = math.ceil(self.real.shape[0] / config.batch_size)
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"epoch": 0, "fid": math.inf}
        self.best_params = self.G.copy_parameters()
        self.epoch = 0
        self.grids: list[Tensor] = []  # uint8 (64, H, W) per epoch, for the strip

    # ---- checkpoints ----------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / "checkpoint.pt" if self.out_dir else None

    def save_checkpoint(self) -> None:
        checkpoint.save(
            self.checkpoint_path,
            {
                "config": self.config.to_dict(),
                "epoch": self.epoch,
                "G": self.G.copy_parameters(),
                "D": self.D.copy_parameters(),
                "best_params": self.best_params,
                "best": dict(self.best),
                "opt_g": self.opt_state_g,
                "opt_d": self.opt_state_d,
                "rule_g": self.rule_g.state_dict(),
                "rule_d": self.rule_d.state_dict(),
                "noise": self.noise.get_state(),
                "rng_g": self.G.rng.get_state(),
                "rng_d": self.D.rng.get_state(),
                "history": self.history,
                "grids": self.grids,
            },
        )

    def restore(self) -> bool:
        """Continue from the checkpoint in out_dir; False when there is none yet."""
        state = load_for_resume(self.checkpoint_path, self.config.to_dict(), self.device)
        if state is None:
            return False
        self.G.load_parameters(state["G"])
        self.D.load_parameters(state["D"])
        self.best_params = state["best_params"]
        self.best = state["best"]
        self.opt_state_g = _to_device(state["opt_g"], self.device)
        self.opt_state_d = _to_device(state["opt_d"], self.device)
        self.rule_g.load_state_dict(_to_device(state["rule_g"], self.device))
        self.rule_d.load_state_dict(_to_device(state["rule_d"], self.device))
        self.noise.set_state(state["noise"])
        self.G.rng.set_state(state["rng_g"])
        self.D.rng.set_state(state["rng_d"])
        self.history = state["history"]
        self.grids = [g.cpu() for g in state["grids"]]
        self.epoch = state["epoch"]
        return True

    # ---- the loop -------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        while self.epoch < self.config.epochs:
            try:
                self.run_epoch()
            except TrainingError as err:
                self.log(str(err))
                return self._write_results(status="diverged", message=str(err))
        return self._write_results(status="finished")

    def run_epoch(self) -> dict[str, Any]:
        """Train one epoch, judge it, keep the best, checkpoint; the epoch's record."""
        if self.out_dir and self.epoch == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            checkpoint.write_json(self.out_dir / "config.json", self.config_record())
        record = self.train_epoch(self.epoch + 1)
        kept = (  # every checkpoint holds finite weights (checked here), so the kept one is good
            f"the last good checkpoint ({self.checkpoint_path}, epoch {self.epoch}) is kept"
            if self.out_dir and self.epoch
            else "no checkpoint was written"
        )
        guards.check_weights(self.G.parameters(), self.epoch + 1, kept)
        guards.check_weights(self.D.parameters(), self.epoch + 1, kept)
        self.epoch += 1
        record.update(self.evaluate())
        record["warnings"] = self.warnings(record)
        for warning in record["warnings"]:
            self.log(f"epoch {self.epoch}: {warning}")
        self.history.append(record)
        if record["fid"] < self.best["fid"]:
            self.best = {"epoch": self.epoch, "fid": record["fid"]}
            self.best_params = self.G.copy_parameters()
            if self.out_dir:
                self._save_best()
        self.log(
            f"epoch {self.epoch}: D loss {record['d_loss']:.4f}, G loss "
            f"{record['g_loss']:.4f}, classifier FID {record['fid']:.2f}, confidence "
            f"{record['confidence']:.3f}, smallest class share "
            f"{min(record['class_shares']):.3f}, {record['seconds']:.1f} s"
        )
        if self.out_dir:
            self.save_checkpoint()
            self._write_results(status="running")
        return record

    def _draw_latent(self, n: int) -> Tensor:
        return torch.randn(
            n, self.config.latent, generator=self.noise, device=self.device, dtype=self.dtype
        )

    def d_step(self, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One discriminator step on a real and a generated batch; (loss, D(real), D(fake))."""
        n = real.shape[0]
        x = torch.cat([real, fake])
        trace = self.D.forward(x, train=True)
        logits = trace.z[self.D.output_name]
        e_real, d_real = self.loss.d_real(logits[:n])
        e_fake, d_fake = self.loss.d_fake(logits[n:])
        # E_D = mean over real + mean over fake; the updates divide by the 2n rows once.
        signal = torch.cat([d_real, d_fake]).mul_(2.0)
        updates = self.rule_d.updates_for_signal(self.D, x, signal, trace)
        self.opt_d.update(self.D.parameters(), updates, self.opt_state_d, self.lr("d"))
        probs = torch.sigmoid(logits.detach())
        return e_real.mean() + e_fake.mean(), probs[:n].mean(), probs[n:].mean()

    def g_step(self, latent: Tensor, g_trace) -> Tensor:
        """One generator step through the current D; returns E_G."""
        fake = g_trace.z[self.G.output_name]
        d_trace = self.D.forward(fake, train=True)
        e_g, d_logit = self.loss.g_fake(d_trace.z[self.D.output_name])
        signal = self.rule_d.input_signal(self.D, fake, d_logit, d_trace)  # dE_G/dx per image
        updates = self.rule_g.updates_for_signal(self.G, latent, signal, g_trace)
        self.opt_g.update(self.G.parameters(), updates, self.opt_state_g, self.lr("g"))
        return e_g.mean()

    def lr(self, which: str) -> float:
        value = getattr(self.config, f"lr_{which}")
        return self.config.lr if value is None else value

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch (training/loop.py runs it with the GAN's step): a discriminator step per
        batch, a generator step every k."""
        config, n = self.config, self.real.shape[0]
        steps = self.steps_per_epoch
        loop = EpochLoop(f"epoch {epoch}/{config.epochs}", steps, self.device, self.progress)
        real_all = self.real[epoch_permutation(config.seed, epoch, n, self.device)]
        d_losses = torch.zeros(steps, device=self.device)
        g_losses = torch.full((math.ceil(steps / config.k),), math.nan, device=self.device)
        d_real = torch.zeros(steps, device=self.device)
        d_fake = torch.zeros(steps, device=self.device)
        g_steps = 0

        def step(i: int) -> None:
            nonlocal g_steps
            real = real_all[batch_slice(i, config.batch_size)]
            latent = self._draw_latent(real.shape[0])
            g_trace = self.G.forward(latent, train=True)
            fake = g_trace.z[self.G.output_name]
            d_losses[i], d_real[i], d_fake[i] = self.d_step(real, fake)
            if (i + 1) % config.k == 0 or i + 1 == steps:
                g_losses[g_steps] = self.g_step(latent, g_trace)
                g_steps += 1

        def check(first: int, last: int) -> None:
            self._check_finite(d_losses[first:last], g_losses[:g_steps], epoch, last - 1)

        def postfix(i: int) -> dict[str, str] | None:
            if (i + 1) % CHECK_EVERY and i + 1 < steps:
                return None  # shown when the losses were checked
            return {
                "d": f"{float(d_losses[: i + 1].mean()):.3f}",
                "g": f"{float(g_losses[:g_steps].mean()):.3f}",
            }

        seconds = loop.run(step, check, postfix=postfix)
        loop.close()
        return {
            "epoch": epoch,
            "d_loss": float(d_losses.mean()),
            "g_loss": float(g_losses[:g_steps].mean()),
            "d_loss_max": float(d_losses.max()),
            "d_real": float(d_real.mean()),
            "d_fake": float(d_fake.mean()),
            "seconds": seconds,
        }

    def _check_finite(self, d_losses: Tensor, g_losses: Tensor, epoch: int, step: int) -> None:
        if bool(torch.isfinite(d_losses).all()) and bool(torch.isfinite(g_losses).all()):
            return
        kept = (
            f"the last good checkpoint ({self.checkpoint_path}, epoch {self.epoch}) is kept"
            if self.out_dir and self.epoch
            else "no checkpoint was written"
        )
        raise TrainingError(
            f"training diverged: a GAN loss became non-finite in epoch {epoch} by step "
            f"{step + 1}; {kept}. Try a smaller learning rate."
        )

    @torch.no_grad()
    def generate(self, latent: Tensor, chunk: int = 2048) -> Tensor:
        """G's images for a latent batch, in [-1, 1], flat (N, pixels) whatever G's shape."""
        return torch.cat(
            [
                self.G.forward(latent[a : a + chunk]).z[self.G.output_name]
                for a in range(0, latent.shape[0], chunk)
            ]
        )

    def evaluate(self) -> dict[str, Any]:
        """The judge's scores for the fixed evaluation batch, and this epoch's grid."""
        scores = self.judge.scores(to_unit(self.generate(self.eval_latent)), self.test_gaussian)
        grid = pictures.to_uint8(self.generate(self.grid_latent), self.image_shape)
        self.grids.append(grid)
        if self.out_dir:
            pictures.write_grid(self.out_dir / "epochs" / f"epoch-{self.epoch:03d}.png", grid)
        return scores

    def warnings(self, record: dict[str, Any]) -> list[str]:
        """Mode collapse and a winning discriminator, said out loud."""
        found = []
        shares = record["class_shares"]
        top = max(range(len(shares)), key=shares.__getitem__)
        if shares[top] > COLLAPSE_SHARE:
            found.append(f"mode collapse: class {top} has {100 * shares[top]:.1f}% of the samples")
        if record["d_loss"] < D_LOSS_FLOOR:
            found.append(
                f"the discriminator wins: its loss averaged {record['d_loss']:.2e} over the epoch"
            )
        if record["fid"] > self.references["fid_uniform_noise"]:
            found.append("the classifier FID is above uniform noise's: no digits learned")
        return found

    # ---- results --------------------------------------------------------------------------
    def config_record(self) -> dict[str, Any]:
        record = self.config.to_dict()
        record.update(
            device_used=str(self.device),
            rule_options_g=dict(self.rule_g.opts),
            rule_options_d=dict(self.rule_d.opts),
            generator_network=self.G.spec(),
            discriminator_network=self.D.spec(),
            image_shape=list(self.image_shape),
        )
        return record

    def _save_best(self) -> None:
        checkpoint.save(
            self.out_dir / "best.pt",
            {
                "params": self.best_params,
                "network": self.G.spec(),
                "latent": self.config.latent,
                "image_shape": list(self.image_shape),
                "epoch": self.best["epoch"],
                "fid": self.best["fid"],
                "config": self.config.to_dict(),
            },
        )

    def _write_results(self, status: str, message: str | None = None) -> dict[str, Any]:
        warnings = [f"epoch {h['epoch']}: {w}" for h in self.history for w in h["warnings"]]
        if status == "diverged":
            warnings.append(f"diverged: {message}")
        results = {
            "status": status,
            "rule_g": self.config.rule_g,
            "rule_d": self.config.rule_d,
            "loss": self.config.loss,
            "dataset": self.config.dataset,
            "seed": self.config.seed,
            "epochs": self.epoch,
            "best_epoch": self.best["epoch"],
            "best_fid": self.best["fid"] if self.best["epoch"] else None,
            "references": self.references,
            "judge": self.judge.record(),
            "warnings": warnings,
            "seconds_per_epoch": [h["seconds"] for h in self.history],
            "history": self.history,
            "config": self.config_record(),
        }
        if message:
            results["message"] = message
        if self.out_dir:
            checkpoint.write_json(self.out_dir / "results.json", results)
            pictures.render_run(results, self.grids, self.out_dir)
        return results


def train_gan(
    config: GanConfig, out_dir=None, resume=False, progress=True, log=print, **kw
) -> dict[str, Any]:
    """Build and run one GAN configuration; with resume, continue from out_dir's checkpoint."""
    trainer = GanTrainer(config, out_dir, progress, log, **kw)
    if resume and not trainer.restore():
        log(f"no checkpoint in {out_dir}; starting a new run")
    return trainer.fit()

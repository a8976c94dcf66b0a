"""Judging generated images with a classifier of the dataset, trained once by the engine.

The judge is an mlp (JUDGE below) trained by bp on the dataset's training split. From it:
- the classifier FID: the Frechet distance between its penultimate-layer features (the last
  hidden group's z) for generated images and for the test set;
- the mean top-class confidence (the largest softmax probability, averaged over the samples);
- each class's share of the samples (mode coverage).
References beside them: the distance of training images to the test set (the floor: what a
perfect generator would score) and of uniform noise (the ceiling).

The distance depends on the classifier, so it is only comparable between runs judged by the same
one: results.json names it and its SHA-256. It is cached once trained, in
$XDG_CACHE_HOME/creditlab/judges (~/.cache by default, where downloaded datasets are cached too),
or beside the data when the cache cannot be written; a judge beside the data is used first.
The checksum is checked on every load, and a file that fails it is trained again, never trusted.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from creditlab.data import Dataset
from creditlab.engine.network import Network
from creditlab.errors import CreditlabError, MachineError, UsageError
from creditlab.gan.fid import Gaussian, frechet_distance
from creditlab.rules import DEFAULT_RULE
from creditlab.training import checkpoint

Tensor = torch.Tensor
# The classifier's training settings (the default rule, the engine's own loop); part of the
# cache key.
JUDGE = {
    "model": "mlp:256-256",
    "activation": "relu",
    "optimizer": "adam",
    "lr": 1e-3,
    "epochs": 5,
    "batch_size": 128,
    "seed": 0,
}
REFERENCE_SAMPLES = 10_000  # training images and noise images for the floor and the ceiling


def data_fingerprint(data: Dataset) -> str:
    """A short hash of the labels and sizes: tells one dataset's judge from another's."""
    h = hashlib.sha256()
    for t in (data.train_y, data.val_y, data.test_y):
        h.update(t.cpu().numpy().tobytes())
    h.update(repr((data.name.split(":")[0], data.input_size, data.n_classes)).encode())
    return h.hexdigest()[:16]


def cache_dirs(data_folder: Path | None) -> tuple[list[Path], list[Path]]:
    """Where judges are looked for, and where one is saved, in order of preference.

    Looked for beside the data first (a judge shipped with a dataset), then in the cache
    ($XDG_CACHE_HOME/creditlab/judges, beside the downloaded datasets); saved to the cache
    first, so that a shared data folder is never written to unless the cache cannot be.
    """
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cache = base / "creditlab" / "judges"
    beside = [data_folder / "judges"] if data_folder is not None else []
    return [*beside, cache], [cache, *beside]


def data_folder_of(dataset: str, data_dir: str | None) -> Path | None:
    """The folder the dataset's files come from, when known (for the cache beside them)."""
    if dataset.startswith("idx:"):
        return Path(dataset.removeprefix("idx:")).expanduser()
    if dataset == "mnist":
        if data_dir:
            return Path(data_dir)
        if os.environ.get("CREDITLAB_DATA"):
            return Path(os.environ["CREDITLAB_DATA"]) / "mnist"
    return None


@dataclass
class Judge:
    net: Network
    description: str
    path: Path | None  # None when no folder was writable (trained for this run only)
    sha256: str
    test_accuracy: float

    def record(self) -> dict[str, Any]:
        return {
            "classifier": self.description,
            "file": str(self.path) if self.path else None,
            "sha256": self.sha256,
            "test_accuracy": self.test_accuracy,
        }

    @torch.no_grad()
    def read(self, images01: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
        """Penultimate features (float64) and class probabilities for images in [0, 1]."""
        net = self.net
        penultimate = net.groups[net.output_name].ins[0]
        feats, probs = [], []
        for a in range(0, images01.shape[0], chunk):
            x = images01[a : a + chunk].to(net.device, net.dtype)
            trace = net.forward(x)
            feats.append(trace.z[penultimate].to(torch.float64))
            probs.append(torch.softmax(trace.z[net.output_name], dim=1))
        return torch.cat(feats), torch.cat(probs)

    def gaussian(self, images01: Tensor) -> Gaussian:
        return Gaussian.fit(self.read(images01)[0])

    def scores(self, images01: Tensor, reference: Gaussian) -> dict[str, Any]:
        """Classifier FID against `reference`, mean top-class confidence, class shares."""
        feats, probs = self.read(images01)
        top, label = probs.max(dim=1)
        counts = torch.bincount(label, minlength=probs.shape[1]).to(torch.float64)
        return {
            "fid": frechet_distance(Gaussian.fit(feats), reference),
            "confidence": float(top.mean()),
            "class_shares": (counts / counts.sum()).tolist(),
        }


def references(judge: Judge, data: Dataset, test: Gaussian, seed: int = 0) -> dict[str, float]:
    """The floor (training images against the test set) and the ceiling (uniform noise)."""
    train = torch.cat([data.train_x, data.val_x])[:REFERENCE_SAMPLES]
    generator = torch.Generator().manual_seed(seed + 4242)
    noise = torch.rand(REFERENCE_SAMPLES, data.input_size, generator=generator)
    return {
        "fid_train_vs_test": frechet_distance(judge.gaussian(train), test),
        "fid_uniform_noise": frechet_distance(judge.gaussian(noise), test),
    }


def load_judge(
    data: Dataset,
    data_folder: Path | None,
    device: torch.device,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Judge:
    """The dataset's judge: from the cache if a verified copy is there, else trained now."""
    key = hashlib.sha256(repr(sorted(JUDGE.items())).encode()).hexdigest()[:8]
    file_name = f"judge-{data.name.split(':')[0]}-{data_fingerprint(data)}-{key}.pt"
    look_in, save_to = cache_dirs(data_folder)
    for folder in look_in:
        judge = _load_verified(folder / file_name, device, log)
        if judge is not None:
            return judge
    log(f"training the judging classifier ({_describe(data)}); cached afterwards")
    state = _train(data, device, progress)
    payload = io.BytesIO()
    torch.save({"format": checkpoint.FORMAT, **state}, payload)
    blob = payload.getvalue()
    digest = hashlib.sha256(blob).hexdigest()
    saved = None
    for folder in save_to:
        try:
            checkpoint.atomic_write(folder / file_name, lambda f: f.write(blob))
            checkpoint.atomic_write(
                folder / (file_name + ".sha256"), lambda f: f.write(f"{digest}\n".encode())
            )
        except (OSError, MachineError):
            continue  # a read-only or full folder: try the next place
        saved = folder / file_name
        break
    if saved is None:
        log("no writable folder for the judge's cache; it is used for this run only")
    return _judge_from(state, saved, digest, device)


def _describe(data: Dataset) -> str:
    layers = "-".join(JUDGE["model"].removeprefix("mlp:").split("-"))
    return (
        f"mlp {data.input_size}-{layers}-{data.n_classes} {JUDGE['activation']}, {DEFAULT_RULE}, "
        f"{JUDGE['optimizer']} {JUDGE['lr']:g}, {JUDGE['epochs']} epochs, batch "
        f"{JUDGE['batch_size']}, seed {JUDGE['seed']}, on {data.name}"
    )


def _train(data: Dataset, device: torch.device, progress: bool) -> dict[str, Any]:
    from creditlab.training.trainer import TrainConfig, Trainer

    config = TrainConfig(dataset=data.name, probe_every=0, device=str(device), **JUDGE)
    trainer = Trainer(config, out_dir=None, progress=progress, log=lambda _: None, data=data)
    results = trainer.fit()
    trainer.net.load_parameters(trainer.best_params)  # picked on the validation split
    return {
        "description": _describe(data),
        "network": trainer.net.spec(),
        "params": {k: v.cpu() for k, v in trainer.net.copy_parameters().items()},
        "test_accuracy": results["test_accuracy"],
    }


JUDGE_KEYS = ("network", "params", "description", "test_accuracy")


def _load_verified(path: Path, device: torch.device, log: Callable[[str], None]) -> Judge | None:
    sidecar = path.with_name(path.name + ".sha256")
    if not path.exists() or not sidecar.exists():
        return None
    blob = path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if sidecar.read_text().strip() != digest:
        log(f"the cached judge {path} fails its checksum; training it again")
        return None
    try:
        state = checkpoint.load(io.BytesIO(blob), name=path)  # read once, checked, named
        missing = [k for k in JUDGE_KEYS if k not in state]
        if missing:
            raise UsageError(f"{path} is not a judge: it has no {', '.join(missing)}")
    except CreditlabError as err:
        log(f"the cached judge cannot be used ({err}); training it again")
        return None
    return _judge_from(state, path, digest, device)


def _judge_from(state: dict, path: Path | None, digest: str, device: torch.device) -> Judge:
    net = Network.from_spec(state["network"], dtype=torch.float32, device=device)
    net.load_parameters({k: v.to(device) for k, v in state["params"].items()})
    return Judge(net, state["description"], path, digest, float(state["test_accuracy"]))

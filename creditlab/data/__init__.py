"""Data sets as ready-to-use tensors: MNIST, scikit-learn's digits, IDX folders, CIFAR-10/100.

Every data set comes as a Dataset with train, validation and test splits. The validation split
is always carved from the END of the training data, so the test set is never touched while
choosing settings.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from creditlab.data import cifar, digits, idx, mnist
from creditlab.errors import UnknownNameError, UsageError

DATASETS = ("mnist", "digits", "idx:PATH", "cifar10", "cifar100", "cifar100:coarse")

MNIST_VAL_SIZE = 10_000

# MNIST's training pixels scaled to [0, 1] (all 60,000 images): their mean and standard
# deviation, the statistics every rule's recommended settings were found on.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
# How an MNIST-format set's pixels reach the network: "mnist" shifted and scaled to MNIST's
# mean and standard deviation, "raw" in [0, 1] as stored.
INPUT_STATS = ("mnist", "raw")


@dataclass(repr=False)
class Dataset:
    """Train / validation / test splits; x is float32 (N, D) in [0, 1] (CIFAR: normalised per
    channel), y is int64 labels."""

    name: str  # "mnist", "digits", "idx:/path"
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    n_classes: int
    image_shape: tuple[int, ...]  # e.g. (28, 28), (8, 8) or (3, 32, 32) for CIFAR
    # How the inputs were normalised, else None: per channel {"mean": ..., "std": ...}
    # (CIFAR), or {"matched": "mnist", "scale": a, "shift": b} for x -> a x + b (IDX sets).
    normalisation: dict | None = None

    @property
    def input_size(self) -> int:
        return self.train_x.shape[1]

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Dataset:
        """A copy with inputs moved/cast to `device` and `dtype`; labels stay int64."""

        def move_x(x: torch.Tensor) -> torch.Tensor:
            return x.to(device=device, dtype=dtype)

        def move_y(y: torch.Tensor) -> torch.Tensor:
            return y.to(device=device, dtype=torch.int64)

        return dataclasses.replace(
            self,
            train_x=move_x(self.train_x),
            train_y=move_y(self.train_y),
            val_x=move_x(self.val_x),
            val_y=move_y(self.val_y),
            test_x=move_x(self.test_x),
            test_y=move_y(self.test_y),
        )

    def subset(
        self,
        n_train: int | None = None,
        n_val: int | None = None,
        n_test: int | None = None,
    ) -> Dataset:
        """The first n examples of each split (None keeps a split whole), for quick runs."""
        for label, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
            if n is not None and n < 0:
                raise UsageError(f"{label} must be >= 0, got {n}")
        return dataclasses.replace(
            self,
            train_x=self.train_x[:n_train],
            train_y=self.train_y[:n_train],
            val_x=self.val_x[:n_val],
            val_y=self.val_y[:n_val],
            test_x=self.test_x[:n_test],
            test_y=self.test_y[:n_test],
        )

    def __repr__(self) -> str:  # the default would print every tensor
        return (
            f"Dataset({self.name!r}, train={len(self.train_y)}, val={len(self.val_y)}, "
            f"test={len(self.test_y)}, input_size={self.input_size}, n_classes={self.n_classes})"
        )


def load_dataset(
    spec: str,
    data_dir: str | os.PathLike[str] | None = None,
    val_size: int | None = None,
    progress: bool = True,
) -> Dataset:
    """Load a data set by name: "mnist", "digits" or "idx:PATH".

    - "mnist": the real MNIST, found in `data_dir`, `$CREDITLAB_DATA/mnist` or the cache, or
      downloaded (with a progress bar if `progress`) and checked by SHA-256; see
      creditlab.data.mnist. 50,000 train / 10,000 val / 10,000 test by default.
    - "digits": scikit-learn's 8x8 digits with a fixed split, 1,257 / 180 / 360 by default.
    - "cifar10", "cifar100" (fine labels), "cifar100:coarse": the official binary tarballs,
      found, verified and cached as creditlab.data.cifar says; per-channel normalisation by
      the training split's statistics; 45,000 / 5,000 / 10,000 by default.
    - "idx:PATH": a folder with the four MNIST file names (raw or .gz), e.g. Fashion-MNIST,
      KMNIST or EMNIST. Validation defaults to 10,000 examples if there are more than 20,000
      training examples, else a sixth of them. `data_dir` is not used.

    `val_size` overrides how many of the last training examples become the validation split.
    """
    spec = spec.strip()
    if spec.lower() == "mnist":
        files = mnist.load_mnist_files(data_dir, progress)
        return _from_idx("mnist", files, val_size, MNIST_VAL_SIZE)
    if spec.lower() == "digits":
        train_x, train_y, test_x, test_y = digits.load_digits_arrays()
        val = digits.VAL_SIZE if val_size is None else val_size
        return _split("digits", train_x, train_y, test_x, test_y, val, 10, (8, 8))
    if cifar.parse_spec(spec) is not None:
        train_x, train_y, test_x, test_y, n_classes = cifar.load_cifar_arrays(
            spec, data_dir, progress
        )
        val = cifar.VAL_SIZE if val_size is None else val_size
        data = _split(
            spec.lower(),
            train_x,
            train_y,
            test_x,
            test_y,
            val,
            n_classes,
            cifar.IMAGE_SHAPE,
            val_size is None,
        )
        return cifar.normalise(data)
    if spec.startswith("idx:"):
        folder = spec.removeprefix("idx:")
        if not folder:
            raise UsageError('"idx:" needs a folder, as in "idx:data/fashion-mnist"')
        files = idx.load_idx_folder(Path(folder).expanduser())
        n_train = len(files[idx.TRAIN_LABELS][1])
        return _from_idx(spec, files, val_size, 10_000 if n_train > 20_000 else n_train // 6)
    raise UnknownNameError("dataset", spec, DATASETS)


# Labels are class indices 0..n-1 and the output layer gets one unit per class: a label far
# beyond this would build an absurd layer (label 2**31 - 1: two billion units).
MAX_CLASSES = 100_000


def input_stats_for(dataset: str, how: str | None) -> str:
    """The input statistics a run uses: `how` if given, else "mnist" for IDX sets (any
    MNIST-format data: Fashion-MNIST, KMNIST, inverted or noisy variants) and "raw" for the
    others (MNIST has MNIST's statistics already; digits and CIFAR have their own)."""
    if how is not None:
        if how not in INPUT_STATS:
            raise UnknownNameError("input statistics", how, INPUT_STATS)
        return how
    return "mnist" if dataset.strip().startswith("idx:") else "raw"


def match_input_stats(data: Dataset, how: str) -> Dataset:
    """`data` with its pixels mapped by x -> a x + b to MNIST's mean and standard deviation
    (how="mnist"), computed over the training split; unchanged for "raw", for data normalised
    already, and for constant images.

    Why: a rule's recommended learning rate suits inputs like MNIST's, mostly dark (mean
    0.13). On a set with a bright background (mean 0.9, as inverted digits or some scans)
    every input is near 1, the first layer's gradient grows with the sum of the squared
    inputs (seven times MNIST's), and bp, fa, dfa and the rest diverged or stalled at chance
    with their defaults (tests/test_defaults_matrix.py's Fashion-format cells)."""
    if how == "raw" or data.normalisation is not None:
        return data
    if how not in INPUT_STATS:
        raise UnknownNameError("input statistics", how, INPUT_STATS)
    mean, std = float(data.train_x.mean()), float(data.train_x.std())
    if not std > 0:
        return data
    scale = MNIST_STD / std
    shift = MNIST_MEAN - mean * scale

    def matched(x: torch.Tensor) -> torch.Tensor:
        return x * scale + shift

    return dataclasses.replace(
        data,
        train_x=matched(data.train_x),
        val_x=matched(data.val_x),
        test_x=matched(data.test_x),
        normalisation={"matched": how, "scale": scale, "shift": shift},
    )


def load_for_training(config, progress: bool = True) -> Dataset:
    """The data set a training configuration names, its inputs as the run will see them."""
    data = load_dataset(config.dataset, config.data_dir, config.val_size, progress)
    return match_input_stats(data, input_stats_for(config.dataset, config.input_stats))


def _n_classes(files: idx.IdxFiles) -> int:
    """The number of classes (largest label + 1), refusing absurd labels and warning when the
    labels leave most classes empty (often a stray label in a hand-made file)."""
    for name in (idx.TRAIN_IMAGES, idx.TEST_IMAGES):
        path, images = files[name]
        if not len(images):
            raise UsageError(f"{path} holds 0 images: there is nothing to train or test on")
    labels = {name: files[name][1] for name in (idx.TRAIN_LABELS, idx.TEST_LABELS)}
    name, top = max(((n, int(y.max())) for n, y in labels.items()), key=lambda item: item[1])
    if top + 1 > MAX_CLASSES:
        raise UsageError(
            f"{files[name][0]} holds the label {top}, which would need an output layer of "
            f"{top + 1} units (the limit is {MAX_CLASSES} classes); labels must be class "
            "indices 0, 1, 2, ..."
        )
    used = len(set(np.unique(labels[idx.TRAIN_LABELS])) | set(np.unique(labels[idx.TEST_LABELS])))
    if top + 1 > 2 * used and top + 1 - used > 10:
        print(
            f"creditlab: warning: the labels take {used} distinct values but reach {top} "
            f"({files[name][0]}): the output layer gets {top + 1} units, {top + 1 - used} of "
            "them for classes that never occur",
            file=sys.stderr,
        )
    return top + 1


def _from_idx(name: str, files: idx.IdxFiles, val_size: int | None, default_val: int) -> Dataset:
    n_classes = _n_classes(files)
    train_images, train_y = files[idx.TRAIN_IMAGES][1], files[idx.TRAIN_LABELS][1]
    test_images, test_y = files[idx.TEST_IMAGES][1], files[idx.TEST_LABELS][1]
    return _split(
        name,
        idx.images_to_float(train_images),
        train_y.astype(np.int64),
        idx.images_to_float(test_images),
        test_y.astype(np.int64),
        default_val if val_size is None else val_size,
        n_classes,
        tuple(int(d) for d in train_images.shape[1:]),
        default=val_size is None,
    )


def _split(
    name: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    val_size: int,
    n_classes: int,
    image_shape: tuple[int, ...],
    default: bool = False,
) -> Dataset:
    """Hold out the last `val_size` training examples for validation and make tensors;
    `default` says the size was not given (so the message can say the default is the problem)."""
    n = len(train_x)
    if isinstance(val_size, bool) or not isinstance(val_size, int | np.integer):
        raise UsageError(f"val_size must be an integer, got {val_size!r}")
    if n < 2:
        raise UsageError(
            f"{name} has {n} training example(s): at least 2 are needed, one to train on and "
            "one to validate on"
        )
    if not 0 < val_size < n and default:
        raise UsageError(
            f"{name} has only {n} training examples, too few for the default validation "
            f"split ({val_size} examples); pass --val-size N with N from 1 to {n - 1}"
        )
    if not 0 < val_size < n:
        raise UsageError(
            f"val_size must be between 1 and {n - 1} for {name} ({n} training examples), "
            f"got {val_size}"
        )
    cut = n - val_size

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a))

    return Dataset(
        name=name,
        train_x=tensor(train_x[:cut]),
        train_y=tensor(train_y[:cut]),
        val_x=tensor(train_x[cut:]),
        val_y=tensor(train_y[cut:]),
        test_x=tensor(test_x),
        test_y=tensor(test_y),
        n_classes=n_classes,
        image_shape=image_shape,
    )


__all__ = ["DATASETS", "Dataset", "load_dataset"]

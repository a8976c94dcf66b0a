"""Write an MNIST-format set made from MNIST: pixel-permuted, optionally inverted.

No other MNIST-format set (Fashion-MNIST, KMNIST) is on the machine and the network is closed,
so the "another MNIST-format set" runs use these. Every image's pixels are shuffled by one fixed
permutation (the permuted-MNIST task of Goodfellow et al. 2013: an MLP starts from weights that
see it as a different set, but the task is as hard for it as MNIST; a convolution would notice).
With --invert every image is also inverted (255 - pixel: the background is white and most
inputs sit at 1 instead of 0), a harsh change of input statistics: with their recommended
settings bp and eqprop stall on it (see docs/rules/eqprop.md). Labels are unchanged.

    python benchmarks/mnist_variant.py /tmp/permuted-mnist
    python benchmarks/mnist_variant.py /tmp/inverted-permuted-mnist --invert
    creditlab train --rule eqprop --dataset idx:/tmp/permuted-mnist --epochs 2
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np

from creditlab.data.idx import FILE_NAMES, TEST_IMAGES, TRAIN_IMAGES, find_idx_file, read_idx
from creditlab.data.mnist import search_dirs


def write_idx(path: Path, array: np.ndarray) -> None:
    """An unsigned-byte IDX file: 0, 0, type 0x08, number of dimensions, the sizes, the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0, help="seed of the pixel permutation")
    parser.add_argument("--invert", action="store_true", help="also invert: 255 - pixel")
    args = parser.parse_args()
    source = next(d for d in search_dirs(None) if find_idx_file(d, TRAIN_IMAGES))
    args.out.mkdir(parents=True, exist_ok=True)
    permutation = np.random.default_rng(args.seed).permutation(28 * 28)
    for name in FILE_NAMES:
        array = read_idx(find_idx_file(source, name))
        if name in (TRAIN_IMAGES, TEST_IMAGES):
            flat = array.reshape(array.shape[0], -1)
            flat = 255 - flat if args.invert else flat
            array = flat[:, permutation].reshape(array.shape)
        write_idx(args.out / name, array)
    print(f"wrote {args.out} from {source}")


if __name__ == "__main__":
    main()

"""Write "noisy MNIST", an MNIST-format set made from MNIST, for runs on a second IDX data set.

In the manner of n-MNIST (Basu et al. 2015, reduced contrast with white Gaussian noise): every
image's contrast is halved and Gaussian noise of standard deviation 0.15 (of the full scale) is
added, rounded and clipped to bytes, from a fixed seed; labels are MNIST's. The four files go
into OUT with MNIST's names, gzipped, so that `--dataset idx:OUT` reads them.

    python benchmarks/noisy_mnist.py runs/noisy-mnist
    creditlab train --dataset idx:runs/noisy-mnist --rule kp --epochs 2
"""

from __future__ import annotations

import argparse
import gzip
import struct
from pathlib import Path

import numpy as np

from creditlab.data import idx, mnist


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--contrast", type=float, default=0.5)
    parser.add_argument("--noise", type=float, default=0.15, help="std, as a part of 255")
    args = parser.parse_args()
    files = mnist.load_mnist_files(None, progress=False)  # name -> (path, array), checked
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in idx.FILE_NAMES:  # images before labels, in a fixed order: reproducible noise
        data = files[name][1]
        if data.ndim == 3:
            noisy = args.contrast * data.astype(np.float64)
            noisy += rng.normal(0.0, args.noise * 255, data.shape)
            data = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
        header = struct.pack(">BBBB", 0, 0, 0x08, data.ndim)
        header += struct.pack(">" + "I" * data.ndim, *data.shape)
        with gzip.open(args.out / f"{name}.gz", "wb") as f:
            f.write(header + np.ascontiguousarray(data).tobytes())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Reading the IDX format used by MNIST and its look-alikes (Fashion-MNIST, KMNIST, EMNIST).

An IDX file is: two zero bytes, a type code byte, a byte giving the number of dimensions, each
dimension as a big-endian uint32, then the items themselves, big-endian, in C order. Files may
be gzipped. Every check here raises DataError naming the file, because a half-downloaded or
corrupt file is the usual cause and the user needs to know which one to replace.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from creditlab.errors import DataError

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
FILE_NAMES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

# Type code -> numpy dtype. Multi-byte types are big-endian in the file.
DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# A file name mapped to where it was read from and what it holds, so later checks can name it.
IdxFiles = dict[str, tuple[Path, np.ndarray]]


def find_idx_file(folder: Path, name: str) -> Path | None:
    """The file `name` in `folder`, raw or gzipped (raw first: it loads faster), or None."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx_bytes(path: Path) -> bytes:
    """The decoded contents of `path`, gunzipped when the name ends in .gz."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (
        OSError,
        EOFError,
        zlib.error,
    ) as e:  # BadGzipFile is an OSError; EOF = cut short
        raise DataError(f"{path}: corrupt or truncated gzip file ({e}); replace it") from e


def parse_idx(data: bytes, path: Path) -> np.ndarray:
    """Parse decoded IDX bytes into an array in native byte order; `path` is for messages."""
    if len(data) < 4 or data[:2] != b"\0\0":
        raise DataError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    type_code, ndim = data[2], data[3]
    if type_code not in DTYPES:
        raise DataError(f"{path}: unknown IDX type code 0x{type_code:02X}")
    if ndim == 0:
        raise DataError(f"{path}: IDX file with zero dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} of {header} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = DTYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        kind = "truncated" if actual < expected else "over-long"
        raise DataError(
            f"{path}: {kind} IDX file: shape {shape} needs {expected} data bytes, "
            f"found {actual}; replace the file"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    # Convert to native order once here so nothing downstream has to care.
    return array.astype(dtype.newbyteorder("=")) if dtype.itemsize > 1 else array


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (raw or .gz) into a numpy array."""
    return parse_idx(read_idx_bytes(path), path)


def check_idx_files(files: IdxFiles) -> None:
    """Check that the four arrays fit together: counts, label shape and type, image shapes."""
    for images_name, labels_name in (
        (TRAIN_IMAGES, TRAIN_LABELS),
        (TEST_IMAGES, TEST_LABELS),
    ):
        images_path, images = files[images_name]
        labels_path, labels = files[labels_name]
        if images.ndim < 2:
            raise DataError(f"{images_path}: expected images (2 or more dims), got {images.shape}")
        if labels.ndim != 1:
            raise DataError(f"{labels_path}: expected a 1-d array of labels, got {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{labels_path}: labels must be integers, got {labels.dtype}")
        if len(labels) and labels.min() < 0:
            raise DataError(f"{labels_path}: negative label {labels.min()}")
        if len(images) != len(labels):
            raise DataError(
                f"{images_path} holds {len(images)} images but {labels_path} holds "
                f"{len(labels)} labels"
            )
        if images.dtype != np.uint8 and not (
            np.issubdtype(images.dtype, np.floating) and images.min() >= 0 and images.max() <= 1
        ):
            # Only bytes (scaled by 1/255) and floats already in [0, 1] have an obvious scale.
            raise DataError(f"{images_path}: images must be unsigned bytes or floats in [0, 1]")
    train_path, train = files[TRAIN_IMAGES]
    test_path, test = files[TEST_IMAGES]
    if train.shape[1:] != test.shape[1:]:
        raise DataError(
            f"image shapes differ: {train.shape[1:]} in {train_path}, "
            f"{test.shape[1:]} in {test_path}"
        )


def load_idx_folder(folder: Path) -> IdxFiles:
    """Read and check the four IDX files of a folder laid out like MNIST."""
    if not folder.is_dir():
        raise DataError(f"IDX folder {folder} does not exist (expected {', '.join(FILE_NAMES)})")
    files: IdxFiles = {}
    for name in FILE_NAMES:
        path = find_idx_file(folder, name)
        if path is None:
            raise DataError(f"missing IDX file {folder / name} (or {name}.gz)")
        files[name] = (path, read_idx(path))
    check_idx_files(files)
    return files


def images_to_float(images: np.ndarray) -> np.ndarray:
    """Images as float32 in [0, 1], flattened to (N, D)."""
    flat = images.reshape(len(images), -1).astype(np.float32)
    if images.dtype == np.uint8:
        flat /= 255  # in place: MNIST's training images are 188 MB as float32
    return flat

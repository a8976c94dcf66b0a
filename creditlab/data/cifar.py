"""CIFAR-10 and CIFAR-100 from the official binary tarballs (Krizhevsky 2009).

The binary version, not the pickled Python one: its records are plain bytes, so loading it never
unpickles anything. A CIFAR-10 record is 1 label byte and 3072 pixel bytes (1024 red, 1024
green, 1024 blue, each a 32x32 image row by row), i.e. the image in (C, H, W) order; a CIFAR-100
record is a coarse label byte (20 superclasses), a fine label byte (100 classes) and the same
3072 pixel bytes.

Where the data is looked for, in order: `data_dir` (if given), `$CREDITLAB_DATA` (if set), then
the cache `$XDG_CACHE_HOME/creditlab/NAME` (default `~/.cache/creditlab/NAME`). In each, the
unpacked folder (`cifar-10-batches-bin/`, `cifar-100-binary/`, or the folder itself holding the
.bin files) is used as is; else the official tarball (`cifar-10-binary.tar.gz`,
`cifar-100-binary.tar.gz`) is checked by its MD5 and only then unpacked, into the cache. Found
nowhere, the tarball is downloaded into the cache from `$CREDITLAB_CIFAR_MIRRORS` (comma-separated
base URLs; empty: never download), checked and moved into place atomically.

Every file is checked against a published MD5 before its bytes are used: the tarballs against
the MD5s on the CIFAR page (https://www.cs.toronto.edu/~kriz/cifar.html), the unpacked .bin
files against per-file MD5s published by projects that verify them (see FILE_MD5). A result on
"cifar10" therefore always means the official data. `$CREDITLAB_CIFAR_CHECKSUMS` may name a JSON
file {file name: MD5} that replaces the official table: the tests use it for the small files they
write in the official format, and anyone may use it for CIFAR-format files of their own; a
warning says so every time it is used.

Unpacking never calls tarfile's extract: the expected members are looked up by their exact
names, must be regular files, and are copied by this code to paths it chooses, so a tarball
cannot write anywhere else (no path traversal, no links).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

import numpy as np
import torch

from creditlab.errors import DataError, UsageError
from creditlab.progress import bar as progress_bar

PIXELS = 3 * 32 * 32
IMAGE_SHAPE = (3, 32, 32)
# As BioTorch (and He et al. 2016) hold out: the last 5,000 of the 50,000 training images.
VAL_SIZE = 5_000


@dataclass(frozen=True)
class Source:
    """One of the official CIFAR binary data sets: its tarball, folder and files."""

    tarball: str
    tarball_md5: str  # as published on the CIFAR page
    folder: str  # what the tarball unpacks to
    train: tuple[str, ...]
    test: str
    label_bytes: int  # 1 (CIFAR-10) or 2 (CIFAR-100: coarse, fine)
    classes: tuple[int, ...]  # per label byte: how many classes it names

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train, self.test)

    @property
    def record_size(self) -> int:
        return self.label_bytes + PIXELS


SOURCES = {
    "cifar10": Source(
        tarball="cifar-10-binary.tar.gz",
        tarball_md5="c32a1d4ab5d03f1284b67883e8d87530",
        folder="cifar-10-batches-bin",
        train=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        test="test_batch.bin",
        label_bytes=1,
        classes=(10,),
    ),
    "cifar100": Source(
        tarball="cifar-100-binary.tar.gz",
        tarball_md5="03b5dce01913d631647c71ecec9e9cb8",
        folder="cifar-100-binary",
        train=("train.bin",),
        test="test.bin",
        label_bytes=2,
        classes=(20, 100),
    ),
}

# MD5s of the unpacked files. CIFAR-10's are given alike by several independent projects that
# check them after unpacking (CMake fetch scripts and rai-project's Go dldataset); CIFAR-100's
# by rai-project's dldataset (cifar100.go), whose CIFAR-10 values agree with the others. Should
# one ever be wrong, the tarball still loads: it is verified by the publisher's own MD5, and
# unpacking it checks these too, saying which disagrees (see _unpack).
FILE_MD5 = {
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
    "train.bin": "6172c7755cfe09b2fe270c85cebc1b15",
    "test.bin": "4499cfba6c016c1be1438163640a0898",
}

DEFAULT_MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
MIRRORS_ENV = "CREDITLAB_CIFAR_MIRRORS"
CHECKSUMS_ENV = "CREDITLAB_CIFAR_CHECKSUMS"
DATA_ENV = "CREDITLAB_DATA"
TIMEOUT_S = 60
LABELS = ("fine", "coarse")


def parse_spec(spec: str) -> tuple[str, str] | None:
    """("cifar10" | "cifar100", "fine" | "coarse") for a CIFAR data set name, None for others.

    "cifar100" uses the 100 fine labels; "cifar100:coarse" the 20 superclasses."""
    name, colon, labels = spec.strip().lower().partition(":")
    if name not in SOURCES:
        return None
    if not colon:
        return name, "fine"
    if name == "cifar100" and labels in LABELS:
        return name, labels
    valid = "cifar100:fine, cifar100:coarse" if name == "cifar100" else "no suffix"
    raise UsageError(f"unknown CIFAR labels in {spec!r}; valid: {valid}")


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def checksums(source: Source) -> tuple[dict[str, str], bool]:
    """The MD5 expected of the tarball and of each file, and whether they are the official
    ones ($CREDITLAB_CIFAR_CHECKSUMS replaces them)."""
    official = {source.tarball: source.tarball_md5, **{f: FILE_MD5[f] for f in source.files}}
    path = os.environ.get(CHECKSUMS_ENV)
    if not path:
        return official, True
    try:
        table = json.loads(Path(path).expanduser().read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"${CHECKSUMS_ENV}={path} is not a readable JSON file: {err}") from None
    if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
        raise UsageError(f"${CHECKSUMS_ENV}={path} must hold a JSON object of file name: MD5")
    missing = [name for name in official if name not in table]
    if missing:
        raise UsageError(f"${CHECKSUMS_ENV}={path} gives no MD5 for {', '.join(missing)}")
    print(
        f"creditlab: warning: CIFAR files are checked against the MD5s in {path} "
        f"(${CHECKSUMS_ENV}), not the official ones",
        file=sys.stderr,
    )
    return {name: table[name].lower() for name in official}, False


def cache_dir(name: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "creditlab" / name


def search_dirs(name: str, data_dir: str | os.PathLike[str] | None) -> list[Path]:
    """The folders searched, in order; the cache is always last."""
    dirs = []
    if data_dir is not None:
        dirs.append(Path(data_dir).expanduser())
    if os.environ.get(DATA_ENV):
        dirs.append(Path(os.environ[DATA_ENV]).expanduser())
    dirs.append(cache_dir(name))
    return dirs


def _complete_folder(source: Source, base: Path) -> Path | None:
    """The folder under `base` that holds the data's files (base/<folder> or base itself);
    a folder holding only some of them is an error naming the rest."""
    for folder in (base / source.folder, base):
        present = [f for f in source.files if (folder / f).is_file()]
        if len(present) == len(source.files):
            return folder
        if present:
            missing = [f for f in source.files if f not in present]
            raise DataError(f"{folder} holds {', '.join(present)} but not {', '.join(missing)}")
    return None


def find_files(
    name: str, data_dir: str | os.PathLike[str] | None, progress: bool = True
) -> dict[str, Path]:
    """The path of each of the data set's .bin files, checked by MD5; tarballs are verified
    and unpacked, and a download is tried when the data is found nowhere."""
    source = SOURCES[name]
    expected, official = checksums(source)
    dirs = search_dirs(name, data_dir)
    for base in dirs:
        folder = _complete_folder(source, base)
        if folder is not None:
            return _verified_folder(source, folder, expected, official)
        tarball = base / source.tarball
        if tarball.is_file():
            _check_md5(tarball, expected[source.tarball], official)
            return _unpack(source, tarball, name, expected, official)
    tarball = _download(source, name, dirs, expected[source.tarball], progress)
    return _unpack(source, tarball, name, expected, official)


def _check_md5(path: Path, want: str, official: bool) -> None:
    got = md5_of(path)
    if got != want:
        whose = "the official MD5" if official else f"the MD5 in ${CHECKSUMS_ENV}"
        raise DataError(
            f"{path}: MD5 {got} does not match {whose} {want} (truncated, corrupt or not the "
            "official CIFAR file); replace it with the official file"
        )


def _verified_folder(
    source: Source, folder: Path, expected: dict[str, str], official: bool
) -> dict[str, Path]:
    paths = {f: folder / f for f in source.files}
    for f, path in paths.items():
        _check_md5(path, expected[f], official)
    return paths


def _unpack(
    source: Source, tarball: Path, name: str, expected: dict[str, str], official: bool
) -> dict[str, Path]:
    """Copy a verified tarball's data files into the cache, checking each one's MD5 as it is
    written; returns their paths.

    Only members named exactly <folder>/<file> are read, they must be regular files, and their
    bytes are written to paths this code makes: nothing the tarball names can escape the cache.
    The files go to a temporary folder first, renamed into place once all are written, so a
    reader sees no folder or a complete one. An existing complete folder is used, once checked.
    """
    cache = cache_dir(name)
    dest = cache / source.folder
    if _complete_folder(source, dest) == dest:
        return _verified_folder(source, dest, expected, official)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(
            f"cannot create the cache folder {cache} to unpack {tarball}: {err}"
        ) from None
    tmp = Path(tempfile.mkdtemp(prefix=f".{source.folder}.", dir=cache))
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for f in source.files:
                member_name = f"{source.folder}/{f}"
                try:
                    member = tar.getmember(member_name)
                except KeyError:
                    raise DataError(f"{tarball} holds no {member_name}") from None
                if not member.isfile():
                    raise DataError(f"{tarball}: {member_name} is not a regular file")
                digest = hashlib.md5(usedforsecurity=False)
                with tar.extractfile(member) as src, open(tmp / f, "wb") as out:
                    while chunk := src.read(1 << 22):
                        out.write(chunk)
                        digest.update(chunk)
                if digest.hexdigest() != expected[f]:
                    # The tarball matched its MD5, so the table of file MD5s is what is wrong.
                    whose = "creditlab's table" if official else f"${CHECKSUMS_ENV}"
                    raise DataError(
                        f"{tarball} matches its MD5, but its {member_name} has MD5 "
                        f"{digest.hexdigest()}, not the {expected[f]} of {whose}"
                        + (": please report this to creditlab" if official else "")
                    )
        tmp.chmod(0o755)  # mkdtemp makes it 0700; a cache should be readable
        try:
            os.replace(tmp, dest)
        except OSError:  # another process unpacked it meanwhile: use theirs
            if _complete_folder(source, dest) != dest:
                raise
            return _verified_folder(source, dest, expected, official)
        return {f: dest / f for f in source.files}
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"cannot unpack {tarball}: {err}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def mirrors() -> list[str]:
    value = os.environ.get(MIRRORS_ENV)
    if value is None:
        return list(DEFAULT_MIRRORS)
    return [url.strip() for url in value.split(",") if url.strip()]


def _download(source: Source, name: str, dirs: list[Path], md5: str, progress: bool) -> Path:
    """Fetch the tarball into the cache from the first mirror that serves a verified copy.

    The bytes go to a temporary file in the cache folder itself and are renamed into place
    only once their MD5 matches, so the cache never holds a partial or wrong tarball."""
    cache = cache_dir(name)
    dest = cache / source.tarball
    urls, errors = mirrors(), []
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        errors.append(f"cannot create the cache folder {cache}: {err.strerror or err}")
        urls = []
    for base in urls:
        url = base.rstrip("/") + "/" + source.tarball
        fd, tmp_name = tempfile.mkstemp(prefix=f".{source.tarball}.", suffix=".part", dir=cache)
        tmp = Path(tmp_name)
        try:
            digest = hashlib.md5(usedforsecurity=False)
            with (
                os.fdopen(fd, "wb") as out,
                urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp,
            ):
                total = resp.headers.get("Content-Length")
                with progress_bar(
                    total=int(total) if total else None,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=source.tarball,
                    disable=not progress,
                ) as bar:
                    while chunk := resp.read(1 << 20):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
                os.fchmod(out.fileno(), 0o644)
            if digest.hexdigest() != md5:
                raise DataError(f"bad download: MD5 {digest.hexdigest()}, expected {md5}")
            os.replace(tmp, dest)
            return dest
        except (OSError, ValueError, HTTPException, DataError) as err:
            errors.append(f"{url}: {err}")
        finally:
            tmp.unlink(missing_ok=True)
    lines = [
        f"{name} was not found and could not be downloaded.",
        f"Put {source.tarball} (or the folder {source.folder}/ it unpacks to) in one of:",
        *(f"  {d}" for d in dirs),
        f"(or pass --data-dir FOLDER, or set ${DATA_ENV}). It is at:",
        *(f"  {u.rstrip('/')}/{source.tarball}" for u in (urls or DEFAULT_MIRRORS)),
    ]
    if errors:
        lines += ["Download errors:", *(f"  {e}" for e in errors)]
    else:
        lines.append(f"(No download was tried: ${MIRRORS_ENV} is set but empty.)")
    raise DataError("\n".join(lines))


def read_records(source: Source, path: Path, labels: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3072) uint8 in (C, H, W) order, labels (N,) int64) from one .bin file."""
    data = np.fromfile(path, dtype=np.uint8)
    size = source.record_size
    if data.size == 0 or data.size % size:
        raise DataError(
            f"{path} holds {data.size} bytes, not a whole number of {size}-byte records "
            "(truncated or corrupt)"
        )
    records = data.reshape(-1, size)
    column = 1 if source.label_bytes == 2 and labels == "fine" else 0
    y = records[:, column].astype(np.int64)
    for byte, limit in enumerate(source.classes):
        top = int(records[:, byte].max())
        if top >= limit:
            raise DataError(f"{path} holds the label {top} (there are {limit} classes): corrupt")
    return records[:, source.label_bytes :], y


def load_cifar_arrays(
    spec: str, data_dir: str | os.PathLike[str] | None = None, progress: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """(train images, train labels, test images, test labels, number of classes), images as
    uint8 (N, 3072) in (C, H, W) order."""
    parsed = parse_spec(spec)
    if parsed is None:
        raise UsageError(f"{spec!r} is not a CIFAR data set")
    name, labels = parsed
    source = SOURCES[name]
    paths = find_files(name, data_dir, progress)
    train = [read_records(source, paths[f], labels) for f in source.train]
    test_x, test_y = read_records(source, paths[source.test], labels)
    n_classes = source.classes[1 if source.label_bytes == 2 and labels == "fine" else 0]
    return (
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        test_x,
        test_y,
        n_classes,
    )


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation (population) of flat (N, 3072) uint8 images,
    on the [0, 1] scale. Exact: from each channel's histogram of the 256 byte values, so no
    float copy of the images is made."""
    values = np.arange(256, dtype=np.float64)
    means, stds = [], []
    for channel in x.reshape(x.shape[0], 3, -1).transpose(1, 0, 2):
        counts = np.bincount(channel.ravel(), minlength=256).astype(np.float64)
        n = counts.sum()
        mean = (counts * values).sum() / n
        var = (counts * (values - mean) ** 2).sum() / n
        means.append(float(mean) / 255)
        # A channel that never varies (only in hand-made data) is shifted but not scaled.
        stds.append(float(np.sqrt(var)) / 255 if var > 0 else 1.0)
    return tuple(means), tuple(stds)


def normalise(data):
    """The data set (uint8 images) with pixels scaled to [0, 1] and then, per channel, shifted
    and scaled by the mean and standard deviation of the TRAINING split (what is left after the
    validation split is carved off), so that validation and test images do not inform the
    scaling. The statistics are kept in data.normalisation for whoever reuses the model."""
    mean, std = channel_stats(data.train_x.numpy())
    shift = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1)
    scale = torch.tensor(std, dtype=torch.float32).view(1, 3, 1)

    def normalised(x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.shape[0], 3, -1).to(torch.float32).div_(255)
        return x.sub_(shift).div_(scale).reshape(x.shape[0], -1)

    return dataclasses.replace(
        data,
        train_x=normalised(data.train_x),
        val_x=normalised(data.val_x),
        test_x=normalised(data.test_x),
        normalisation={"mean": mean, "std": std},
    )

"""Tests for creditlab.data. None of them touch the network or the user's real cache."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from creditlab.data import DATASETS, Dataset, load_dataset
from creditlab.data.idx import FILE_NAMES, read_idx
from creditlab.data.mnist import cache_dir
from creditlab.errors import DataError, UnknownNameError, UsageError


def _shared_data() -> Path:
    value = os.environ.get("CREDITLAB_DATA")
    if not value:
        return Path(__file__).resolve().parents[1].parent / "shared" / "data"
    path = Path(value)
    # CI gives a path relative to the repository root.
    return path if path.is_absolute() else Path(__file__).resolve().parents[1] / path


SHARED_MNIST = _shared_data() / "mnist"
needs_mnist = pytest.mark.skipif(
    not all((SHARED_MNIST / f"{name}.gz").is_file() for name in FILE_NAMES),
    reason=f"real MNIST not found in {SHARED_MNIST}",
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No test may download or write to the real cache, whatever the environment says."""
    monkeypatch.setenv("CREDITLAB_MNIST_MIRRORS", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def write_idx(path: Path, array: np.ndarray, code: int = 0x08) -> Path:
    """Write `array` as an IDX file; gzipped when the name ends in .gz."""
    dtype = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=dtype).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def make_idx_folder(folder: Path, n_train: int = 30, n_test: int = 12) -> dict[str, np.ndarray]:
    """A small MNIST-like folder of 4x5 images, mixing raw and gzipped files."""
    rng = np.random.RandomState(1)
    arrays = {
        "train-images-idx3-ubyte": rng.randint(0, 256, (n_train, 4, 5)).astype(np.uint8),
        "train-labels-idx1-ubyte": rng.randint(0, 3, n_train).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.randint(0, 256, (n_test, 4, 5)).astype(np.uint8),
        "t10k-labels-idx1-ubyte": np.full(n_test, 4, dtype=np.uint8),  # max label 4 -> 5 classes
    }
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, array) in enumerate(arrays.items()):
        write_idx(folder / (name + (".gz" if i % 2 else "")), array)
    return arrays


# --- MNIST -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CREDITLAB_DATA", str(SHARED_MNIST.parent))
        mp.setenv("CREDITLAB_MNIST_MIRRORS", "")
        mp.setenv("XDG_CACHE_HOME", "/nonexistent/creditlab-test-cache")
        return load_dataset("mnist", progress=False)


@needs_mnist
def test_mnist_shapes_and_values(mnist):
    assert mnist.name == "mnist"
    assert mnist.train_x.shape == (50_000, 784)
    assert mnist.val_x.shape == (10_000, 784)
    assert mnist.test_x.shape == (10_000, 784)
    assert mnist.input_size == 784 and mnist.image_shape == (28, 28) and mnist.n_classes == 10
    for x in (mnist.train_x, mnist.val_x, mnist.test_x):
        assert x.dtype == torch.float32
        assert x.min() >= 0 and x.max() <= 1
    for y in (mnist.train_y, mnist.val_y, mnist.test_y):
        assert y.dtype == torch.int64
        assert set(y.unique().tolist()) == set(range(10))
    assert mnist.train_y[0] == 5 and mnist.test_y[0] == 7
    assert mnist.train_x.max() == 1.0  # scaled by 255, not by the max or 256


@needs_mnist
def test_mnist_corrupt_local_file_is_named_and_left_alone(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in FILE_NAMES:
        (folder / f"{name}.gz").symlink_to(SHARED_MNIST / f"{name}.gz")
    # Right size, wrong contents: only the checksum can catch it.
    bad = folder / "train-labels-idx1-ubyte"
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    write_idx(bad, np.zeros(60_000, dtype=np.uint8))
    before = bad.read_bytes()
    with pytest.raises(DataError, match="SHA-256") as info:
        load_dataset("mnist", data_dir=folder, progress=False)
    assert str(bad) in str(info.value)
    assert bad.read_bytes() == before


def test_mnist_truncated_local_file(tmp_path):
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\0\0\x08\x03" + struct.pack(">3I", 60_000, 28, 28) + b"\0" * 100)
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=tmp_path, progress=False)
    assert str(bad) in str(info.value)


@pytest.fixture
def mirror(tmp_path) -> Path:
    """A folder served as a mirror through a file:// URL, holding the real .gz files."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    for name in FILE_NAMES:
        (folder / f"{name}.gz").symlink_to(SHARED_MNIST / f"{name}.gz")
    return folder


@needs_mnist
def test_mnist_download_into_cache(mnist, mirror, tmp_path, monkeypatch):
    monkeypatch.delenv("CREDITLAB_DATA", raising=False)
    dead = (tmp_path / "no-such-mirror").as_uri()  # the first mirror fails, the second works
    monkeypatch.setenv("CREDITLAB_MNIST_MIRRORS", f"{dead}/, {mirror.as_uri()}/")
    data = load_dataset("mnist", data_dir=tmp_path / "empty", progress=False)
    cache = cache_dir()
    assert cache == tmp_path / "xdg-cache" / "creditlab" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in FILE_NAMES)
    for name in FILE_NAMES:
        assert (cache / f"{name}.gz").read_bytes() == (SHARED_MNIST / f"{name}.gz").read_bytes()
    assert torch.equal(data.train_y, mnist.train_y) and torch.equal(data.test_x, mnist.test_x)


def test_mnist_corrupt_mirror_leaves_cache_clean(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDITLAB_DATA", raising=False)
    mirror = tmp_path / "bad-mirror"
    mirror.mkdir()
    (mirror / "train-images-idx3-ubyte.gz").write_bytes(b"this is not gzip")
    monkeypatch.setenv("CREDITLAB_MNIST_MIRRORS", mirror.as_uri())
    cache = cache_dir()
    cache.mkdir(parents=True)
    good = cache / "train-labels-idx1-ubyte.gz"
    good.write_bytes(b"pretend this is the good file")
    with pytest.raises(DataError, match="not a valid gzip"):
        load_dataset("mnist", progress=False)
    assert [p.name for p in cache.iterdir()] == [good.name]
    assert good.read_bytes() == b"pretend this is the good file"
    # A download of the right size but the wrong contents is rejected just the same.
    (mirror / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\0" * 47_040_016))
    with pytest.raises(DataError, match="SHA-256"):
        load_dataset("mnist", progress=False)
    assert [p.name for p in cache.iterdir()] == [good.name]


def test_mnist_offline_says_where_to_put_files(tmp_path, monkeypatch):
    monkeypatch.setenv("CREDITLAB_DATA", str(tmp_path / "data"))
    dead = (tmp_path / "unreachable").as_uri() + "/"
    monkeypatch.setenv("CREDITLAB_MNIST_MIRRORS", dead)
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=tmp_path / "mine", progress=False)
    message = str(info.value)
    for expected in (
        "train-images-idx3-ubyte",
        str(tmp_path / "mine"),
        str(tmp_path / "data" / "mnist"),
        str(cache_dir()),
        dead,
    ):
        assert expected in message
    assert not any(cache_dir().iterdir())  # no temporary files left behind


# --- digits ----------------------------------------------------------------------------------


def test_digits_split_is_fixed():
    torch.manual_seed(123)
    np.random.seed(123)
    a = load_dataset("digits")
    torch.manual_seed(7)
    np.random.seed(7)
    b = load_dataset("digits")
    assert (len(a.train_y), len(a.val_y), len(a.test_y)) == (1257, 180, 360)
    assert a.input_size == 64 and a.image_shape == (8, 8) and a.n_classes == 10
    assert a.train_x.dtype == torch.float32 and a.train_y.dtype == torch.int64
    assert a.train_x.min() >= 0 and a.train_x.max() == 1
    for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    # A different val_size moves the boundary but not the test set or the shuffle.
    c = load_dataset("digits", val_size=100)
    assert (len(c.train_y), len(c.val_y)) == (1337, 100)
    assert torch.equal(c.train_x[:1257], a.train_x) and torch.equal(c.test_x, a.test_x)
    assert torch.equal(c.val_x[-100:], a.val_x[-100:])


def test_subset_and_to():
    data = load_dataset("digits")
    small = data.subset(n_train=10, n_val=5)
    assert (len(small.train_y), len(small.val_y), len(small.test_y)) == (10, 5, 360)
    assert torch.equal(small.train_x, data.train_x[:10])
    moved = small.to("cpu", torch.float64)
    assert moved.train_x.dtype == torch.float64 and moved.test_x.dtype == torch.float64
    assert moved.train_y.dtype == torch.int64
    assert data.train_x.dtype == torch.float32  # the original is unchanged
    assert "digits" in repr(small) and "train=10" in repr(small)


# --- idx:PATH --------------------------------------------------------------------------------


def test_idx_folder(tmp_path):
    arrays = make_idx_folder(tmp_path / "fake")
    data = load_dataset(f"idx:{tmp_path / 'fake'}")
    assert data.name == f"idx:{tmp_path / 'fake'}"
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (25, 5, 12)  # 30 // 6 = 5
    assert data.image_shape == (4, 5) and data.input_size == 20 and data.n_classes == 5
    images = arrays["train-images-idx3-ubyte"].reshape(30, 20) / 255
    labels = arrays["train-labels-idx1-ubyte"]
    np.testing.assert_allclose(data.train_x.numpy(), images[:25], rtol=1e-6)
    np.testing.assert_allclose(data.val_x.numpy(), images[25:], rtol=1e-6)  # from the end
    assert data.val_y.tolist() == labels[25:].tolist()
    assert data.val_y.dtype == torch.int64
    assert load_dataset(f"idx:{tmp_path / 'fake'}", val_size=10).train_x.shape == (20, 20)


def test_idx_default_val_size_for_large_sets(tmp_path):
    make_idx_folder(tmp_path / "big", n_train=20_001, n_test=3)
    data = load_dataset(f"idx:{tmp_path / 'big'}")
    assert (len(data.train_y), len(data.val_y)) == (10_001, 10_000)


def test_idx_missing_folder_or_file(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        load_dataset(f"idx:{tmp_path / 'nowhere'}")
    make_idx_folder(tmp_path / "fake")
    (tmp_path / "fake" / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_dataset(f"idx:{tmp_path / 'fake'}")


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("change", [-1, +1], ids=["truncated", "over-long"])
def test_idx_wrong_length_names_file(tmp_path, suffix, change):
    make_idx_folder(tmp_path / "fake")
    name = "train-images-idx3-ubyte"
    for old in (tmp_path / "fake").glob(name + "*"):
        old.unlink()
    good = write_idx(tmp_path / name, np.zeros((30, 4, 5), np.uint8)).read_bytes()
    bad = good[:change] if change < 0 else good + b"\0"
    path = tmp_path / "fake" / (name + suffix)
    path.write_bytes(gzip.compress(bad) if suffix else bad)
    with pytest.raises(DataError, match=r"needs 600 data bytes, found (599|601)") as info:
        load_dataset(f"idx:{tmp_path / 'fake'}")
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "contents", [b"not gzip at all", gzip.compress(b"\0" * 1000)[:-12]], ids=["garbage", "cut"]
)
def test_idx_corrupt_gzip_names_file(tmp_path, contents):
    make_idx_folder(tmp_path / "fake")
    path = tmp_path / "fake" / "train-labels-idx1-ubyte.gz"
    path.write_bytes(contents)
    with pytest.raises(DataError, match="gzip") as info:
        load_dataset(f"idx:{tmp_path / 'fake'}")
    assert str(path) in str(info.value)


def test_idx_count_mismatch_names_both_files(tmp_path):
    make_idx_folder(tmp_path / "fake")
    labels = write_idx(tmp_path / "fake" / "t10k-labels-idx1-ubyte", np.zeros(11, np.uint8))
    with pytest.raises(DataError) as info:
        load_dataset(f"idx:{tmp_path / 'fake'}")
    assert str(labels) in str(info.value)
    assert str(tmp_path / "fake" / "t10k-images-idx3-ubyte") in str(info.value)


def test_idx_bad_magic(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 1) + b"\0")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(path)


@pytest.mark.parametrize("code", [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E])
def test_idx_types_round_trip(tmp_path, code):
    array = np.arange(12).reshape(3, 4) - (0 if code == 0x08 else 3)  # negatives if signed
    out = read_idx(write_idx(tmp_path / "a.gz", array, code))
    assert out.shape == (3, 4) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


# --- names and options -----------------------------------------------------------------------


def test_unknown_dataset_lists_names():
    with pytest.raises(UnknownNameError) as info:
        load_dataset("cifar")
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2
    for name in DATASETS:
        assert name in str(info.value)
    with pytest.raises(UsageError):
        load_dataset("idx:")


@pytest.mark.parametrize("val_size", [0, -5, 1437, 5000])
def test_bad_val_size(val_size):
    with pytest.raises(UsageError, match="val_size"):
        load_dataset("digits", val_size=val_size)


def test_mnist_format_sets_are_brought_to_mnists_statistics_and_raw_keeps_them():
    """An IDX set with a bright background (inverted digits) reaches the network with MNIST's
    pixel mean and standard deviation by default (the statistics every rule's settings suit);
    "raw" keeps [0, 1]; MNIST itself and digits are left alone."""
    import torch

    from creditlab.data import (
        MNIST_MEAN,
        MNIST_STD,
        Dataset,
        input_stats_for,
        match_input_stats,
    )

    g = torch.Generator().manual_seed(0)
    bright = 1 - 0.3 * torch.rand(300, 16, generator=g)  # mean about 0.85
    y = torch.zeros(300, dtype=torch.int64)
    data = Dataset("idx:/x", bright[:200], y[:200], bright[200:250], y[200:250],
                   bright[250:], y[250:], 10, (4, 4))  # fmt: skip
    assert input_stats_for("idx:/x", None) == "mnist"
    assert input_stats_for("mnist", None) == input_stats_for("digits", None) == "raw"
    matched = match_input_stats(data, "mnist")
    assert abs(float(matched.train_x.mean()) - MNIST_MEAN) < 1e-5
    assert abs(float(matched.train_x.std()) - MNIST_STD) < 1e-5
    a, b = matched.normalisation["scale"], matched.normalisation["shift"]
    torch.testing.assert_close(matched.test_x, data.test_x * a + b)  # the same map everywhere
    assert match_input_stats(matched, "mnist") is matched  # never twice
    assert match_input_stats(data, "raw") is data

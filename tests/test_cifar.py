"""CIFAR-10/100 from the official binary format, and the crop and flip augmentations.

The tests write small files in the real binary format (and tarballs of them) and never touch
the network. Their files are not the official ones, so the tests that load them name their
MD5s in a $CREDITLAB_CIFAR_CHECKSUMS table, as anyone with CIFAR-format files of their own
would; the official MD5s are tested by refusing those same files without the table.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from creditlab import cli
from creditlab.data import cifar, load_dataset
from creditlab.data.augment import augment, crop, flip, parse_augment, shift
from creditlab.errors import DataError, UsageError
from creditlab.training.trainer import TrainConfig
from tests.conftest import straight_and_resumed

PER_BATCH = 40  # records per CIFAR-10 data batch in the fake set (the official: 10,000)


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """A private cache, no $CREDITLAB_DATA, and no download ever."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(cifar.MIRRORS_ENV, "")
    monkeypatch.delenv("CREDITLAB_DATA", raising=False)
    monkeypatch.delenv(cifar.CHECKSUMS_ENV, raising=False)


def fake_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 3072) uint8 images a small net can tell apart: noise, plus a bright band whose
    channel and rows depend on the label."""
    images = rng.integers(0, 128, (len(labels), 3, 32, 32), dtype=np.uint8)
    for n, label in enumerate(labels):
        k = int(label) % 10
        images[n, k % 3, 3 * k : 3 * k + 3, :] = 255
    return images.reshape(len(labels), -1)


def write_records(path: Path, label_columns: list[np.ndarray], images: np.ndarray) -> None:
    """Records as the official files hold them: the label byte(s), then 3072 pixel bytes."""
    path.write_bytes(np.column_stack([*label_columns, images]).astype(np.uint8).tobytes())


def write_cifar10(root: Path, seed: int = 0) -> dict:
    """cifar-10-batches-bin/ under root: five data batches and a test batch."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    raw = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, PER_BATCH, dtype=np.uint8)
        images = fake_images(labels, rng)
        write_records(folder / name, [labels], images)
        raw[name] = (labels, images)
    (folder / "batches.meta.txt").write_text("airplane\n")  # present in the official folder too
    return raw


def write_cifar100(root: Path, n_train: int = 60, n_test: int = 20) -> dict:
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-binary"
    folder.mkdir(parents=True)
    raw = {}
    for name, n in (("train.bin", n_train), ("test.bin", n_test)):
        fine = rng.integers(0, 100, n, dtype=np.uint8)
        coarse = (fine // 5).astype(np.uint8)
        images = fake_images(fine, rng)
        write_records(folder / name, [coarse, fine], images)
        raw[name] = (coarse, fine, images)
    return raw


def tarball_of(root: Path, source: cifar.Source, extra=()) -> Path:
    """The folder root/<source.folder> packed as the official tarball (plus `extra` members:
    (TarInfo, bytes or None))."""
    path = root / source.tarball
    with tarfile.open(path, "w:gz") as tar:
        tar.add(root / source.folder, arcname=source.folder)
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def checksum_table(tmp_path: Path, monkeypatch, source: cifar.Source, folder: Path, tarball=None):
    """$CREDITLAB_CIFAR_CHECKSUMS naming the test files' own MD5s."""
    table = {name: md5(folder / name) for name in source.files}
    table[source.tarball] = md5(tarball) if tarball is not None else "0" * 32
    path = tmp_path / "md5s.json"
    path.write_text(json.dumps(table))
    monkeypatch.setenv(cifar.CHECKSUMS_ENV, str(path))
    return table


@pytest.fixture
def cifar10_dir(tmp_path, monkeypatch):
    """A fake CIFAR-10 folder under tmp_path/data, with its MD5s in the checksum table."""
    root = tmp_path / "data"
    raw = write_cifar10(root)
    source = cifar.SOURCES["cifar10"]
    checksum_table(tmp_path, monkeypatch, source, root / source.folder)
    return root, raw


# ---- loading ---------------------------------------------------------------------------------


def test_cifar10_folder_loads_in_order_with_images_channels_first(cifar10_dir):
    root, raw = cifar10_dir
    data = load_dataset("cifar10", root, val_size=PER_BATCH, progress=False)
    assert data.image_shape == (3, 32, 32) and data.input_size == 3072 and data.n_classes == 10
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (160, 40, 40)
    train_labels = np.concatenate([raw[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    assert torch.equal(data.train_y, torch.from_numpy(train_labels[:160]).long())
    # The validation split is the END of the training data: the fifth batch here.
    assert torch.equal(data.val_y, torch.from_numpy(raw["data_batch_5.bin"][0]).long())
    assert torch.equal(data.test_y, torch.from_numpy(raw["test_batch.bin"][0]).long())
    # Undoing the normalisation gives back the file's bytes, channel by channel.
    mean = torch.tensor(data.normalisation["mean"]).view(1, 3, 1)
    std = torch.tensor(data.normalisation["std"]).view(1, 3, 1)
    pixels = (data.test_x.view(-1, 3, 1024).double() * std + mean) * 255
    expected = torch.from_numpy(raw["test_batch.bin"][1]).view(-1, 3, 1024).double()
    torch.testing.assert_close(pixels, expected, atol=1e-3, rtol=0)


def test_normalisation_uses_the_training_split_only(cifar10_dir):
    root, raw = cifar10_dir
    data = load_dataset("cifar10", root, val_size=PER_BATCH, progress=False)
    per_channel = data.train_x.view(-1, 3, 1024).transpose(0, 1).reshape(3, -1).double()
    torch.testing.assert_close(
        per_channel.mean(1), torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        per_channel.std(1, unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0
    )
    # The statistics are those of the 160 training images, not of all 200 nor of the test set.
    train_bytes = np.concatenate([raw[f"data_batch_{i}.bin"][1] for i in range(1, 5)])
    channels = train_bytes.reshape(-1, 3, 1024).transpose(1, 0, 2).reshape(3, -1) / 255
    assert data.normalisation["mean"] == pytest.approx(channels.mean(1), abs=1e-12)
    assert data.normalisation["std"] == pytest.approx(channels.std(1), abs=1e-12)
    all_bytes = np.concatenate([raw[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    assert data.normalisation["mean"][0] != pytest.approx(
        all_bytes.reshape(-1, 3, 1024)[:, 0].mean() / 255, abs=1e-6
    )


def test_cifar100_fine_labels_by_default_and_coarse_on_request(tmp_path, monkeypatch):
    root = tmp_path / "data"
    raw = write_cifar100(root)
    source = cifar.SOURCES["cifar100"]
    checksum_table(tmp_path, monkeypatch, source, root / source.folder)
    fine = load_dataset("cifar100", root, val_size=10, progress=False)
    coarse = load_dataset("cifar100:coarse", root, val_size=10, progress=False)
    assert (fine.n_classes, coarse.n_classes) == (100, 20)
    assert torch.equal(fine.test_y, torch.from_numpy(raw["test.bin"][1]).long())
    assert torch.equal(coarse.test_y, torch.from_numpy(raw["test.bin"][0]).long())
    assert torch.equal(fine.train_x, coarse.train_x)
    assert torch.equal(fine.val_y, torch.from_numpy(raw["train.bin"][1][-10:]).long())
    with pytest.raises(UsageError, match="cifar100:fine, cifar100:coarse"):
        load_dataset("cifar100:middle", root)
    with pytest.raises(UsageError, match="unknown CIFAR labels in 'cifar10:coarse'"):
        load_dataset("cifar10:coarse", root)


def test_default_validation_split_is_5000_and_too_few_images_say_so(cifar10_dir):
    root, _ = cifar10_dir
    assert cifar.VAL_SIZE == 5_000
    with pytest.raises(UsageError, match=r"too few for the default validation split \(5000"):
        load_dataset("cifar10", root, progress=False)


@pytest.mark.parametrize("where", ["parent", "folder itself"])
def test_data_dir_may_hold_the_folder_or_be_it(cifar10_dir, where):
    root, _ = cifar10_dir
    data_dir = root if where == "parent" else root / "cifar-10-batches-bin"
    assert len(load_dataset("cifar10", data_dir, val_size=40, progress=False).test_y) == 40


def test_creditlab_data_is_searched_too(cifar10_dir, monkeypatch):
    root, _ = cifar10_dir
    monkeypatch.setenv("CREDITLAB_DATA", str(root))
    assert len(load_dataset("cifar10", None, val_size=40, progress=False).test_y) == 40


# ---- checksums --------------------------------------------------------------------------------


def test_the_official_checksums_refuse_files_that_are_not_official(tmp_path):
    root = tmp_path / "data"
    write_cifar10(root)
    with pytest.raises(
        DataError,
        match=r"data_batch_1\.bin: MD5 [0-9a-f]{32} does not match the official MD5 5dd7e06a",
    ):
        load_dataset("cifar10", root, val_size=40)
    tarball = tarball_of(root, cifar.SOURCES["cifar10"])
    (root / "cifar-10-batches-bin").rename(root / "elsewhere")
    with pytest.raises(
        DataError,
        match=rf"{re.escape(str(tarball))}: MD5 .* official MD5 c32a1d4ab5d03f1284b67883e8d87530",
    ):
        load_dataset("cifar10", root, val_size=40)
    assert not (tmp_path / "cache" / "creditlab" / "cifar10" / "cifar-10-batches-bin").exists()


def test_a_changed_file_is_refused_naming_it(cifar10_dir):
    root, _ = cifar10_dir
    path = root / "cifar-10-batches-bin" / "data_batch_3.bin"
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"data_batch_3\.bin: MD5 .* \$CREDITLAB_CIFAR_CHECKSUMS"):
        load_dataset("cifar10", root, val_size=40)


def test_truncated_files_and_bad_labels_are_refused_naming_the_file(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_cifar10(root)
    source = cifar.SOURCES["cifar10"]
    folder = root / source.folder
    truncated = folder / "test_batch.bin"
    truncated.write_bytes(truncated.read_bytes()[:-5])
    checksum_table(tmp_path, monkeypatch, source, folder)  # the MD5s match: only the format fails
    with pytest.raises(
        DataError,
        match=r"test_batch\.bin holds 122915 bytes, not a whole number of 3073-byte records",
    ):
        load_dataset("cifar10", root, val_size=40)
    truncated.write_bytes(b"")
    checksum_table(tmp_path, monkeypatch, source, folder)
    with pytest.raises(DataError, match="holds 0 bytes"):
        load_dataset("cifar10", root, val_size=40)
    labels = np.full(PER_BATCH, 10, dtype=np.uint8)
    write_records(truncated, [labels], fake_images(labels % 10, np.random.default_rng(0)))
    checksum_table(tmp_path, monkeypatch, source, folder)
    with pytest.raises(
        DataError, match=r"test_batch\.bin holds the label 10 \(there are 10 classes\)"
    ):
        load_dataset("cifar10", root, val_size=40)


def test_a_folder_missing_files_names_them(cifar10_dir):
    root, _ = cifar10_dir
    (root / "cifar-10-batches-bin" / "data_batch_4.bin").unlink()
    with pytest.raises(DataError, match=r"but not data_batch_4\.bin"):
        load_dataset("cifar10", root, val_size=40)


def test_a_checksum_table_must_name_every_file(cifar10_dir, tmp_path, monkeypatch):
    root, _ = cifar10_dir
    path = tmp_path / "partial.json"
    path.write_text(json.dumps({"data_batch_1.bin": "0" * 32}))
    monkeypatch.setenv(cifar.CHECKSUMS_ENV, str(path))
    with pytest.raises(UsageError, match=r"gives no MD5 for .*data_batch_2\.bin"):
        load_dataset("cifar10", root, val_size=40)


# ---- tarballs ---------------------------------------------------------------------------------


def test_a_verified_tarball_is_unpacked_into_the_cache_once(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_cifar10(root)
    source = cifar.SOURCES["cifar10"]
    tarball = tarball_of(root, source)
    checksum_table(tmp_path, monkeypatch, source, root / source.folder, tarball)
    (root / source.folder).rename(tmp_path / "kept")  # only the tarball is in data_dir now
    data = load_dataset("cifar10", root, val_size=40, progress=False)
    cached = tmp_path / "cache" / "creditlab" / "cifar10" / source.folder
    assert sorted(p.name for p in cached.iterdir()) == sorted(source.files)
    assert not any(p.name.startswith(".") for p in cached.parent.iterdir())  # no debris
    tarball.unlink()
    again = load_dataset("cifar10", root, val_size=40, progress=False)  # from the cache
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.test_y, data.test_y)


def test_a_tarball_with_the_wrong_checksum_is_not_unpacked(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_cifar10(root)
    source = cifar.SOURCES["cifar10"]
    tarball = tarball_of(root, source)
    table = checksum_table(tmp_path, monkeypatch, source, root / source.folder, tarball)
    (root / source.folder).rename(tmp_path / "kept")
    with open(tarball, "ab") as f:
        f.write(b"\0")  # one more byte: a different file
    with pytest.raises(
        DataError,
        match=rf"{re.escape(str(tarball))}: MD5 .* not match the MD5 in .* {table[source.tarball]}",
    ):
        load_dataset("cifar10", root, val_size=40)
    assert not (tmp_path / "cache" / "creditlab" / "cifar10" / source.folder).exists()


def test_unpacking_writes_only_the_expected_regular_files(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_cifar10(root)
    source = cifar.SOURCES["cifar10"]
    escape = tarfile.TarInfo("../../escaped.bin")
    escape.size = 3
    tarball = tarball_of(root, source, [(escape, b"bad")])
    checksum_table(tmp_path, monkeypatch, source, root / source.folder, tarball)
    (root / source.folder).rename(tmp_path / "kept")
    assert len(load_dataset("cifar10", root, val_size=40, progress=False).test_y) == 40
    assert not list(tmp_path.rglob("escaped.bin"))

    # A link in place of a data file is refused, not followed.
    link_root = tmp_path / "links"
    write_cifar10(link_root)
    (link_root / source.folder / "test_batch.bin").unlink()
    link = tarfile.TarInfo(f"{source.folder}/test_batch.bin")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    tarball = tarball_of(link_root, source, [(link, None)])
    table = json.loads((tmp_path / "md5s.json").read_text())
    table[source.tarball] = md5(tarball)
    (tmp_path / "md5s.json").write_text(json.dumps(table))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache2"))
    (link_root / source.folder).rename(tmp_path / "kept2")
    with pytest.raises(DataError, match=r"test_batch\.bin is not a regular file"):
        load_dataset("cifar10", link_root, val_size=40)


def test_found_nowhere_says_where_to_put_it_without_downloading(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("cifar100", tmp_path / "empty")
    message = str(err.value)
    assert "Put cifar-100-binary.tar.gz (or the folder cifar-100-binary/" in message
    assert str(tmp_path / "empty") in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz" in message
    assert "No download was tried" in message


# ---- augmentation -----------------------------------------------------------------------------


def test_parse_augment():
    assert parse_augment("crop:4,flip") == (("crop", 4), ("flip", 0))
    assert parse_augment("shift:2") == (("shift", 2),)
    assert parse_augment(None) is None and parse_augment("none") is None
    for bad in ("crop", "crop:0", "flip:1", "rotate:3", "crop:4,,flip"):
        with pytest.raises(UsageError, match="unknown augmentation"):
            parse_augment(bad)
    with pytest.raises(UsageError, match="names flip twice"):
        parse_augment("flip,crop:2,flip")


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_crop_keeps_a_window_of_the_padded_image_and_every_corner_occurs():
    image, p = (3, 6, 5), 2
    x = torch.rand(400, 3 * 6 * 5) + 1  # no pixel is 0, so padding is told apart
    out = crop(x, image, p, generator(0)).view(-1, *image)
    padded = torch.nn.functional.pad(x.view(-1, *image), (p, p, p, p))
    corners = set()
    for n in range(len(x)):
        matches = [
            (top, left)
            for top in range(2 * p + 1)
            for left in range(2 * p + 1)
            if torch.equal(out[n], padded[n, :, top : top + 6, left : left + 5])
        ]
        assert len(matches) == 1, n
        corners |= set(matches)
    assert len(corners) == (2 * p + 1) ** 2  # all 25 corners are drawn


def test_flip_mirrors_about_half_the_images():
    image = (3, 4, 7)
    x = torch.rand(200, 84)
    out = flip(x, image, generator(1)).view(-1, *image)
    inputs = x.view(-1, *image)
    mirrored = [bool(torch.equal(o, i.flip(2))) for o, i in zip(out, inputs, strict=True)]
    kept = [bool(torch.equal(o, i)) for o, i in zip(out, inputs, strict=True)]
    assert all(m != k for m, k in zip(mirrored, kept, strict=True))  # one or the other
    assert 70 < sum(mirrored) < 130


def test_augmentation_is_a_function_of_the_seed():
    image, x = (3, 8, 8), torch.rand(16, 192)
    steps = parse_augment("crop:4,flip")
    a = augment(x, image, steps, generator(5))
    assert torch.equal(a, augment(x, image, steps, generator(5)))
    assert not torch.equal(a, augment(x, image, steps, generator(6)))
    # The steps run in the order written, drawing one after the other from the one generator.
    g = generator(3)
    expected = flip(shift(x, image, 2, g), image, g)
    torch.testing.assert_close(
        augment(x, image, parse_augment("shift:2,flip"), generator(3)), expected, rtol=0, atol=0
    )


def test_resumed_run_with_crop_and_flip_is_exact(tmp_path, digits, monkeypatch):
    def config():
        return TrainConfig(
            model="mlp:16", epochs=3, augment="crop:2,flip", device="cpu", probe_every=0
        )

    straight, _, resumed, _ = straight_and_resumed(config, tmp_path, digits, monkeypatch)
    for name, p in straight.net.parameters().items():
        assert torch.equal(p, resumed.net.parameters()[name]), name


# ---- end to end -------------------------------------------------------------------------------


def test_train_on_a_tiny_cifar10_from_the_command_line(cifar10_dir, tmp_path, capsys):
    root, _ = cifar10_dir
    run = tmp_path / "run"
    args = ["train", "--dataset", "cifar10", "--data-dir", str(root), "--val-size", "40"]
    args += ["--model", "mlp:32", "--epochs", "8", "--augment", "crop:4,flip", "--seed", "0"]
    args += ["--optimizer", "adam", "--lr", "0.003", "--out", str(run), "--quiet"]
    assert cli.main(args) == 0
    results = json.loads((run / "results.json").read_text())
    # Chance is 10%; the classes differ by a bright band, which crops move by up to 4 rows.
    assert results["test_accuracy"] >= 0.5, results["test_accuracy"]


def test_a_download_is_verified_before_it_is_moved_into_the_cache(tmp_path, monkeypatch):
    """A mirror as a file:// URL (no network): the tarball is fetched into the cache only if its
    MD5 matches, and a bad one leaves nothing behind."""
    mirror = tmp_path / "mirror"
    write_cifar10(mirror)
    source = cifar.SOURCES["cifar10"]
    tarball = tarball_of(mirror, source)
    table = checksum_table(tmp_path, monkeypatch, source, mirror / source.folder, tarball)
    cache = tmp_path / "cache" / "creditlab" / "cifar10"

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / source.tarball).write_bytes(tarball.read_bytes()[:-1])  # one byte short
    monkeypatch.setenv(cifar.MIRRORS_ENV, bad.as_uri())
    with pytest.raises(
        DataError, match=rf"bad download: MD5 [0-9a-f]+, expected {table[source.tarball]}"
    ):
        load_dataset("cifar10", tmp_path / "nothing", val_size=40, progress=False)
    assert not cache.exists() or not any(cache.iterdir())  # no tarball, no partial file

    monkeypatch.setenv(cifar.MIRRORS_ENV, f"{bad.as_uri()},{mirror.as_uri()}")  # the next mirror
    data = load_dataset("cifar10", tmp_path / "nothing", val_size=40, progress=False)
    assert len(data.test_y) == PER_BATCH
    assert sorted(p.name for p in cache.iterdir()) == [source.folder, source.tarball]
    assert md5(cache / source.tarball) == table[source.tarball]

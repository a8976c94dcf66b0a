"""A folder knows what wrote it: every command refuses another command's finished folder, with
and without --force, before doing any work, and leaves it byte-identical."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from creditlab import cli
from creditlab.training import locks
from tests.conftest import SMALL_GAN_ARGS

TRAIN = ["--dataset", "digits", "--epochs", "1", "--quiet", "--probe-every", "0"]
GAN = list(SMALL_GAN_ARGS)
KINDS = ("train", "compare", "tune", "gan", "gan-compare", "sample")


def command(kind: str, out: Path, gan_run: Path) -> list[str]:
    """A command of `kind` that writes to `out` (sample: a file in it)."""
    return {
        "train": ["train", *TRAIN, "--out", str(out)],
        "compare": ["compare", *TRAIN, "--rules", "bp", "--seeds", "1", "--out", str(out)],
        "tune": [
            "tune",
            *TRAIN,
            "--rules",
            "bp",
            "--trials",
            "1",
            "--seeds",
            "1",
            "--out",
            str(out),
        ],
        "gan": ["gan", *GAN, "--out", str(out)],
        "gan-compare": ["gan-compare", *GAN, "--rules", "bp/bp", "--seeds", "1", "--out", str(out)],
        "sample": ["sample", "--run", str(gan_run), "--n", "3", "--out", str(out / "s.npz")],
    }[kind]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """One finished folder of every kind, each made by its own command."""
    base = tmp_path_factory.mktemp("kinds")
    made = {kind: base / kind for kind in KINDS}
    for kind in ("train", "compare", "gan", "gan-compare"):
        code = cli.main(command(kind, made[kind], made["gan"]))
        assert code in (0, 1), kind  # 1: the toy GANs learn no digits in an epoch
    # A tune's folder without starting Ray: the same search, run here one trial after another.
    from creditlab.training.trainer import TrainConfig
    from creditlab.tune import search
    from creditlab.tune.ray_backend import SequentialPool

    config = TrainConfig(dataset="digits", epochs=1, optimizer="adam", lr=1e-3, probe_every=0)
    with locks.hold(made["tune"], "tune"):
        search.tune(
            config, ["bp"], 1, made["tune"], SequentialPool("test"), seeds=1, progress=False
        )
    assert cli.main(command("sample", made["sample"], made["gan"])) == 0
    return made


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_every_folder_records_its_kind(folders):
    for kind, folder in folders.items():
        assert locks.detect_kind(folder) == kind
        if kind != "tune":  # the tune above ran through the library, inside hold()
            record = json.loads((folder / locks.KIND_NAME).read_text())
            assert record["kind"] == kind and record["command"].startswith("creditlab ")
        assert not (folder / locks.LOCK_NAME).exists()


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_every_other_command_refuses_the_folder(folders, capsys, kind, force):
    folder = folders[kind]
    before = snapshot(folder)
    for other in KINDS:
        if other == kind or (force and other == "gan-compare"):  # gan-compare has no --force
            continue
        args = command(other, folder, folders["gan"]) + (["--force"] if force else [])
        capsys.readouterr()
        assert cli.main(args) == 2, (other, kind)
        err = capsys.readouterr().err.strip()
        assert err.startswith("creditlab: error:") and len(err.splitlines()) == 1, err
        assert str(folder) in err and kind in err, err
        assert snapshot(folder) == before, (other, kind)


def test_a_folder_inside_another_commands_folder_is_refused(folders, capsys):
    inner = folders["compare"] / "runs" / "bp-seed0"
    before = snapshot(folders["compare"])
    assert cli.main(["train", *TRAIN, "--force", "--out", str(inner)]) == 2
    assert "lies inside" in capsys.readouterr().err
    assert cli.main(command("train", folders["gan"] / "sub", folders["gan"])) == 2
    assert snapshot(folders["compare"]) == before
    assert not (folders["gan"] / "sub").exists()


def test_sample_writes_only_its_own_file(folders, capsys, tmp_path):
    gan = folders["gan"]
    before = snapshot(gan)
    for out, message in (
        (gan / "results.json", "must end in .npz"),
        (gan / "samples.npz", "is a `creditlab gan` folder"),  # the run's folder is its own
        (tmp_path / "x.png", "must end in .npz"),
        (tmp_path, "must end in .npz"),
    ):
        for extra in ([], ["--force"]):
            args = ["sample", "--run", str(gan), "--n", "2", "--out", str(out), *extra]
            assert cli.main(args) == 2, out
            assert message in capsys.readouterr().err
    assert snapshot(gan) == before
    # a .npz it wrote may be overwritten with --force, and only then
    mine = folders["sample"] / "s.npz"
    args = ["sample", "--run", str(gan), "--n", "4", "--out", str(mine)]
    assert cli.main(args) == 2 and "--force" in capsys.readouterr().err
    assert cli.main([*args, "--force"]) == 0
    assert np.load(mine)["images"].shape[0] == 4


def test_same_kind_with_force_starts_over(folders, tmp_path):
    out = tmp_path / "t"
    assert cli.main(command("train", out, folders["gan"])) == 0
    assert cli.main([*command("train", out, folders["gan"]), "--force", "--seed", "3"]) == 0
    assert json.loads((out / "results.json").read_text())["config"]["seed"] == 3

"""Every traceback the probe of issue 20 found, reproduced: each now ends in one line naming the
file or value at fault, exit 2 for the input's fault and 1 for the machine's (a full disk), and
nothing written before the fault is lost."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from creditlab import cli
from creditlab.training import checkpoint
from tests.conftest import SMALL_GAN_ARGS

TRAIN = ["train", "--dataset", "digits", "--epochs", "1", "--quiet", "--probe-every", "0"]
GAN = list(SMALL_GAN_ARGS)


def one_line(capsys, *parts: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("creditlab: error:"), err
    for part in parts:
        assert part in err, err
    return err


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("gan") / "run"
    assert cli.main(["gan", *GAN, "--out", str(run)]) in (0, 1)  # 1: no digits in one epoch
    return run


@pytest.fixture(scope="module")
def train_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("train") / "run"
    assert cli.main([*TRAIN, "--out", str(run)]) == 0
    return run


def test_a_learning_rate_beyond_float32(tmp_path, capsys):
    assert cli.main([*TRAIN, "--lr", "1e39", "--out", str(tmp_path / "r")]) == 2
    one_line(capsys, "lr 1e+39 is beyond float32's range")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "model", ["mlp:99999999999", "skip:99999999-99999999", "mlp:9999999-9999999"]
)
def test_a_model_too_big_for_memory_is_refused_with_its_size(tmp_path, capsys, model):
    assert cli.main([*TRAIN, "--model", model, "--out", str(tmp_path / "r")]) == 2
    one_line(capsys, f"model {model!r} needs about", "more than the", "of memory available")
    assert not (tmp_path / "r").exists()


def test_a_batch_too_big_for_memory_is_refused_with_its_size(monkeypatch, tmp_path, capsys):
    from creditlab.engine import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 1 << 20)  # a 1 MiB machine
    args = [*TRAIN, "--model", "mlp:64", "--batch-size", "1000", "--out", str(tmp_path / "r")]
    assert cli.main(args) == 2  # its parameters fit in 1 MiB, a batch of 1000 does not
    one_line(capsys, "a batch of 1000 examples on this network needs about", "1.0 MiB")


def test_mlp_alone_is_the_linear_model_as_mlp_colon(tmp_path):
    for model in ("mlp", "mlp:"):
        assert cli.main([*TRAIN, "--model", model, "--out", str(tmp_path / model)]) == 0
    spec = [
        json.loads((tmp_path / m / "config.json").read_text())["network"] for m in ("mlp", "mlp:")
    ]
    assert spec[0] == spec[1] and len(spec[0]["groups"]) == 2  # input and output only


def test_sample_on_a_train_run(train_run, tmp_path, capsys):
    assert cli.main(["sample", "--run", str(train_run), "--out", str(tmp_path / "s.npz")]) == 2
    one_line(capsys, f"--run {train_run} holds a `creditlab train` folder")


def test_a_best_pt_without_its_network(gan_run, tmp_path, capsys):
    fake = tmp_path / "fake"
    fake.mkdir()
    state = checkpoint.load(gan_run / "best.pt")
    del state["network"]
    checkpoint.save(fake / "best.pt", {k: v for k, v in state.items() if k != "format"})
    assert cli.main(["sample", "--run", str(fake), "--out", str(tmp_path / "s.npz")]) == 2
    one_line(capsys, f"{fake / 'best.pt'} is not a GAN's best checkpoint (it has no network)")
    (fake / "config.json").write_text('{"kind": "creditlab-train", "dataset": "digits"}')
    assert cli.main(["capsules", "--run", str(fake)]) == 2
    one_line(capsys, f"{fake / 'best.pt'} is not a training run's best checkpoint (has no network")


@pytest.mark.parametrize("command", ["gan", "gan-compare"])
def test_gan_out_naming_an_existing_file(tmp_path, capsys, command):
    target = tmp_path / "file"
    target.write_text("mine")
    extra = ["--rules", "bp/bp", "--seeds", "1"] if command == "gan-compare" else []
    assert cli.main([command, *GAN, *extra, "--out", str(target)]) == 2
    one_line(capsys, f"--out {target} is a file, not a folder")
    assert target.read_text() == "mine"


def test_read_only_out_for_gan_sample_and_gan_compare(gan_run, tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != ro and real_access(p, mode))
    for args in (
        ["gan", *GAN, "--out", str(ro)],
        ["gan-compare", *GAN, "--rules", "bp/bp", "--seeds", "1", "--out", str(ro)],
        ["sample", "--run", str(gan_run), "--n", "2", "--out", str(ro / "s.npz")],
    ):
        assert cli.main(args) == 2, args
        one_line(capsys, f"{ro} is not writable")
    assert list(ro.iterdir()) == []


def test_sample_n_too_big_for_memory(gan_run, tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert (
        cli.main(["sample", "--run", str(gan_run), "--n", "100000000000", "--out", str(out)]) == 2
    )
    one_line(capsys, "sample --n 100000000000 needs about", "of memory available")
    assert not out.exists()


def full_disk(monkeypatch, after: int = 0):
    """fsync fails with ENOSPC from the (after+1)-th call on, as on a full disk."""
    calls = {"n": 0}
    real = os.fsync

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_full_disk_during_training_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    out = tmp_path / "r"
    assert cli.main([*TRAIN, "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    full_disk(monkeypatch)
    assert cli.main([*TRAIN[:3], "--epochs", "3", *TRAIN[5:], "--resume", "--out", str(out)]) == 1
    err = one_line(capsys, "cannot write", str(out), "No space left on device")
    assert "intact" in err
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before  # every file as it was: nothing half-written, nothing lost
    assert checkpoint.load_run(out / "checkpoint.pt")["epoch"] == 1
    assert cli.main([*TRAIN[:3], "--epochs", "2", *TRAIN[5:], "--resume", "--out", str(out)]) == 0


@pytest.mark.parametrize("command", ["gan", "sample", "compare"])
def test_a_full_disk_is_exit_1_naming_the_path(gan_run, tmp_path, capsys, monkeypatch, command):
    out = tmp_path / "o"
    args = {
        "gan": ["gan", *GAN, "--out", str(out)],
        "sample": ["sample", "--run", str(gan_run), "--n", "2", "--out", str(out / "s.npz")],
        "compare": [
            "compare",
            *TRAIN[1:],
            "--rules",
            "bp",
            "--seeds",
            "1",
            "--out",
            str(out),
        ],
    }[command]
    if command == "gan":
        assert cli.main(["gan", *GAN, "--out", str(tmp_path / "warm")]) in (0, 1)  # the judge
    capsys.readouterr()
    full_disk(monkeypatch)
    assert cli.main(args) == 1
    one_line(capsys, "cannot write", str(out), "No space left on device")


def test_a_checkpoint_never_holds_non_finite_weights(tmp_path):
    from creditlab.errors import TrainingError
    from creditlab.training.trainer import TrainConfig, Trainer

    config = TrainConfig(dataset="digits", epochs=3, probe_every=0)
    trainer = Trainer(config, tmp_path / "r", progress=False, log=lambda _: None)
    trainer.fit(until=1)
    good = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    name = next(iter(trainer.net.parameters()))

    real_epoch = trainer.train_epoch

    def overflowing_epoch(epoch):  # the epoch's last update overflows, its losses were finite
        record = real_epoch(epoch)
        trainer.net.parameters()[name].fill_(float("inf"))
        return record

    trainer.train_epoch = overflowing_epoch
    with pytest.raises(TrainingError, match="became non-finite in epoch 2") as err:
        trainer.fit()
    assert "the last good checkpoint" in str(err.value) and "epoch 1" in str(err.value)
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == good
    state = checkpoint.load_run(tmp_path / "r" / "checkpoint.pt")
    assert all(bool(torch.isfinite(p).all()) for p in state["params"].values())
    assert json.loads((tmp_path / "r" / "results.json").read_text())["status"] == "diverged"


def test_a_data_dir_that_does_not_exist(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert cli.main([*TRAIN, "--data-dir", str(missing), "--out", str(tmp_path / "r")]) == 2
    one_line(capsys, f"--data-dir {missing} does not exist")
    assert not (tmp_path / "r").exists()
    assert cli.main([*TRAIN, "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")]) == 0
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["data_dir"] == str(tmp_path.resolve())


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_es_sigma_must_be_finite(tmp_path, capsys, value):
    args = [*TRAIN, "--rule", "es", "--rule-opt", f"sigma={value}", "--out", str(tmp_path / "r")]
    assert cli.main(args) == 2
    one_line(capsys, "option es.sigma needs a finite number")


def test_the_judge_cache_error_names_the_file(tmp_path, monkeypatch):
    import hashlib

    from creditlab.data import load_dataset
    from creditlab.gan import scoring

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    data = load_dataset("digits", progress=False)
    said = []
    scoring.load_judge(data, None, torch.device("cpu"), False, said.append)
    (bad,) = tmp_path.rglob("judge-*.pt")
    blob = b"not a checkpoint"
    bad.write_bytes(blob)
    bad.with_name(bad.name + ".sha256").write_text(hashlib.sha256(blob).hexdigest() + "\n")
    said.clear()
    scoring.load_judge(data, None, torch.device("cpu"), False, said.append)
    assert any(str(bad) in line and "BytesIO" not in line for line in said), said

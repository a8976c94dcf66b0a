"""The command line: the default run, clear errors with exit code 2, run folders kept safe."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from creditlab import cli


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "creditlab", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
    )


def test_train_with_no_options_learns_digits(tmp_path):
    done = run_cli("train", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "runs" / "digits-bp-seed0" / "results.json").read_text())
    assert results["test_accuracy"] >= 0.95
    assert (tmp_path / "runs" / "digits-bp-seed0" / "checkpoint.pt").exists()
    assert "epoch 20/20" in done.stderr  # the progress bar
    # a second default run goes to a fresh folder instead of overwriting the first
    assert run_cli("train", "--epochs", "1", "--quiet", cwd=tmp_path).returncode == 0
    assert (tmp_path / "runs" / "digits-bp-seed0-2" / "results.json").exists()


@pytest.mark.parametrize(
    ("flag", "value", "listed"),
    [
        ("--rule", "telepathy", "valid rules: bp"),
        ("--activation", "swish", "valid activations: elu, gelu"),
        ("--loss", "hinge", "valid losses: bce, cross_entropy, mse"),
        ("--optimizer", "rmsprop", "valid optimizers: adam, adamw, sgd"),
        ("--dataset", "svhn", "valid datasets: cifar10, cifar100, cifar100:coarse, digits, idx"),
        ("--schedule", "cyclic", "valid schedules: constant, cosine, step"),
        ("--model", "cnn:5", "valid models"),
        ("--device", "tpu", "unknown device"),
        ("--dtype", "int8", "valid dtypes"),
    ],
)
def test_unknown_names_exit_2_listing_the_valid_ones(capsys, tmp_path, flag, value, listed):
    code = cli.main(["train", flag, value, "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert listed in err and err.startswith("creditlab: error:")


@pytest.mark.parametrize(
    "args",
    [
        ["--epochs", "0"],
        ["--batch-size", "0"],
        ["--rule-opt", "nonsense"],
        ["--rule-opt", "scale=2"],  # bp has no options
        ["--rule-opt", "fa.scale=2"],  # an option for another rule
        ["--dropout", "1.5"],
    ],
)
def test_bad_values_exit_2(capsys, tmp_path, args):
    assert cli.main(["train", *args, "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "creditlab: error:" in capsys.readouterr().err


def test_argparse_errors_exit_2():
    done = run_cli("train", "--epochs", "many")
    assert done.returncode == 2 and "invalid int value" in done.stderr
    assert run_cli("fly").returncode == 2


def test_existing_run_folder_is_not_overwritten(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli.main(["train", "--epochs", "1", "--out", out, "--quiet"]) == 0
    before = (Path(out) / "checkpoint.pt").read_bytes()
    assert cli.main(["train", "--epochs", "1", "--out", out, "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (Path(out) / "checkpoint.pt").read_bytes() == before
    assert cli.main(["train", "--epochs", "1", "--out", out, "--quiet", "--resume"]) == 0
    assert (
        cli.main(["train", "--epochs", "1", "--lr", "0.2", "--out", out, "--resume", "--quiet"])
        == 2
    )
    assert "differing fields: lr" in capsys.readouterr().err


def test_divergence_exits_1_naming_epoch_and_step(tmp_path, capsys):
    code = cli.main(["train", "--lr", "1e5", "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "epoch 1, step" in err


def test_mnist_from_shared_data_trains_a_little(tmp_path, capsys):
    code = cli.main(
        [
            "train",
            "--dataset",
            "mnist",
            "--model",
            "mlp:64",
            "--epochs",
            "2",
            "--train-subset",
            "5000",
            "--batch-size",
            "32",
            "--lr",
            "0.1",
            "--quiet",
            "--out",
            str(tmp_path / "m"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "m" / "results.json").read_text())
    assert results["test_accuracy"] > 0.85


def test_rules_command_lists_bp(capsys):
    assert cli.main(["rules"]) == 0
    assert "bp" in capsys.readouterr().out


def test_a_reader_that_leaves_early_is_no_error():
    """`creditlab rules | head -1`: the reader closes the pipe after one line; creditlab
    stops quietly (no BrokenPipe traceback) with exit code 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "creditlab", "rules"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert proc.stdout.readline()  # the first line, as head -1 reads it
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait() == 0 and "Traceback" not in stderr, stderr

"""Nothing silent, nothing lost: runs that learn nothing say so, a user's files are never
overwritten or mixed with a run's, and bad input gets a message and exit code 2, never a
traceback."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from creditlab import cli
from creditlab.rules.bp import Backprop
from creditlab.training import checkpoint
from creditlab.training.trainer import Trainer
from tests.test_data import make_idx_folder, write_idx

TINY = [
    "--train-subset",
    "1000",
    "--batch-size",
    "25",
    "--model",
    "mlp:16",
    "--probe-every",
    "0",
    "--quiet",
]


def strict_json(path: Path):
    """json.loads that refuses NaN and Infinity, as strict JSON readers do."""

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def train(tmp_path, *args, out="r"):
    return cli.main(["train", *TINY, *args, "--out", str(tmp_path / out)])


# ---- runs that learn nothing say so -----------------------------------------------------------
def test_a_finite_but_exploding_loss_stops_the_run_as_diverged(tmp_path, capsys):
    assert train(tmp_path, "--epochs", "3", "--lr", "1e6", "--model", "mlp:32") == 1
    err = capsys.readouterr().err
    assert "diverged" in err and "smaller learning rate" in err and "epoch 1, step" in err
    results = strict_json(tmp_path / "r" / "results.json")
    assert results["status"] == "diverged"


def test_an_explosion_that_stays_finite_is_named(tmp_path, digits, monkeypatch):
    original = Backprop.updates

    def growing(self, net, x, y):  # the loss reported climbs past 100x its start, finitely
        updates = original(self, net, x, y)
        self.last_loss = self.last_loss * 1e3 if self.calls > 30 else self.last_loss
        self.calls += 1
        return updates

    monkeypatch.setattr(Backprop, "calls", 0, raising=False)
    monkeypatch.setattr(Backprop, "updates", growing)
    from creditlab.errors import TrainingError
    from creditlab.training.trainer import TrainConfig

    config = TrainConfig(epochs=2, model="mlp:16", probe_every=0)
    with pytest.raises(TrainingError, match=r"exploded to .* times its starting value"):
        Trainer(config, tmp_path, progress=False, data=digits, log=lambda _: None).fit()
    assert strict_json(tmp_path / "results.json")["status"] == "diverged"


def test_a_run_stuck_at_chance_is_stalled_and_says_what_to_try(tmp_path, capsys):
    assert train(tmp_path, "--epochs", "2", "--lr", "0") == 1
    captured = capsys.readouterr()
    assert (
        "warning: validation accuracy" in captured.out and "after the first epoch" in captured.out
    )
    assert "the run stalled" in captured.err and "after 2 epoch" in captured.err
    results = strict_json(tmp_path / "r" / "results.json")
    assert results["status"] == "stalled" and "near chance" in results["message"]
    assert len(results["warnings"]) == 2


def test_a_stalled_rule_without_a_learning_rate_is_told_to_try_its_options(tmp_path, capsys):
    """hillclimb applies its own steps: "try a smaller learning rate" would send its user to a
    setting it ignores. A first step of 1e-12 keeps it at chance."""
    args = ["--epochs", "1", "--rule", "hillclimb", "--rule-opt", "hillclimb.step=1e-12"]
    assert train(tmp_path, *args) == 1
    message = strict_json(tmp_path / "r" / "results.json")["message"]
    assert "no learning rate" in message and "--rule-opt" in message, message
    assert (
        "smaller learning rate" not in message
        and "smaller learning rate" not in capsys.readouterr().err
    )


def test_compare_marks_failed_runs_and_fails_when_all_did(tmp_path, capsys):
    args = ["compare", *TINY, "--epochs", "1", "--rules", "bp,fa", "--seeds", "1"]
    assert cli.main([*args, "--lr", "0", "--out", str(tmp_path / "c")]) == 1
    captured = capsys.readouterr()
    assert "stalled: bp seed 0, fa seed 0" in captured.out
    assert "every run failed" in captured.err
    assert "| bp | 1 (1 stalled) |" in (tmp_path / "c" / "table.md").read_text()
    assert cli.main([*args, "--out", str(tmp_path / "d")]) == 0  # learning runs: exit 0


def test_results_json_is_strict_json(tmp_path):
    checkpoint.write_json(tmp_path / "x.json", {"a": math.nan, "b": [math.inf, 1.5]})
    assert strict_json(tmp_path / "x.json") == {"a": None, "b": [None, 1.5]}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--schedule", "step", "--gamma", "-1"], "gamma must be a finite number in (0, 1]"),
        (["--schedule", "step", "--gamma", "50"], "gamma must be"),
        (["--schedule", "step", "--gamma", "0"], "gamma must be"),
        (["--schedule", "cosine", "--min-lr", "-0.5"], "min_lr must be"),
        (["--schedule", "cosine", "--lr", "0.01", "--min-lr", "0.1"], "above lr"),
        (["--warmup-epochs", "-1"], "warmup_epochs must be"),
        (["--warmup-epochs", "nan"], "warmup_epochs must be"),
        (["--step-epochs", "0"], "step_epochs must be"),
        (["--lr", "inf"], "lr must be"),
        (["--momentum", "1"], "momentum must be"),
        (["--weight-decay", "-1"], "weight_decay must be"),
    ],
)
def test_schedule_and_optimizer_settings_are_validated(tmp_path, capsys, args, message):
    assert train(tmp_path, *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


# ---- never overwrite or corrupt ---------------------------------------------------------------
def test_train_refuses_a_compare_folder_and_foreign_folders(tmp_path, capsys):
    compare_dir = tmp_path / "c"
    args = ["compare", *TINY, "--epochs", "1", "--rules", "bp", "--seeds", "1"]
    assert cli.main([*args, "--out", str(compare_dir)]) == 0
    before = (compare_dir / "results.json").read_bytes()
    assert cli.main(["train", *TINY, "--epochs", "1", "--out", str(compare_dir)]) == 2
    assert cli.main(["train", *TINY, "--epochs", "1", "--out", str(compare_dir), "--force"]) == 2
    assert (compare_dir / "results.json").read_bytes() == before
    for name in ("results.json", "config.json", "notes.txt"):
        foreign = tmp_path / f"foreign-{name}"
        foreign.mkdir()
        (foreign / name).write_text('{"mine": 1}')
        assert cli.main(["train", *TINY, "--epochs", "1", "--out", str(foreign)]) == 2
        assert (foreign / name).read_text() == '{"mine": 1}'
        assert sorted(p.name for p in foreign.iterdir()) == [name]
    assert "holds no creditlab train run" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["empty", "file", "under a file", "read-only"])
def test_bad_out_folders_are_refused(tmp_path, capsys, monkeypatch, kind):
    (tmp_path / "f").write_text("mine")
    out = {"empty": "", "file": tmp_path / "f", "under a file": tmp_path / "f" / "run"}.get(
        kind, tmp_path / "ro"
    )
    if kind == "read-only":
        (tmp_path / "ro").mkdir()
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != out and real_access(p, mode))
    monkeypatch.chdir(tmp_path)
    for command in (["train"], ["compare", "--rules", "bp", "--seeds", "1"]):
        assert cli.main([*command, *TINY, "--epochs", "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("creditlab: error:") and "--out" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["f", "ro"][: 1 + (kind == "read-only")]
    )
    assert (tmp_path / "f").read_text() == "mine"


def test_an_unwritable_out_folder_is_a_clear_error(tmp_path, capsys):
    # /proc refuses new folders even to root, as a read-only file system would
    assert cli.main(["train", *TINY, "--epochs", "1", "--out", "/proc/creditlab-test"]) == 2
    assert "cannot write the run into /proc/creditlab-test" in capsys.readouterr().err


def test_compare_checks_everything_before_writing(tmp_path, capsys):
    out = tmp_path / "c"
    args = ["compare", *TINY, "--rules", "bp", "--seeds", "1", "--out", str(out)]
    assert cli.main([*args, "--epochs", "2"]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert cli.main([*args, "--epochs", "1"]) == 2
    assert "has trained 2 epochs, more than the 1 asked for" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_force_clears_the_old_run_before_the_new_one_writes(tmp_path):
    out = tmp_path / "r"
    assert train(tmp_path, "--epochs", "2") == 0
    (out / "notes.txt").write_text("mine")  # a user's file in the run folder stays
    assert train(tmp_path, "--epochs", "2", "--lr", "1e6", "--force") == 1  # diverges at once
    assert not (out / "checkpoint.pt").exists(), "no checkpoint of the old run"
    config = json.loads((out / "config.json").read_text())
    results = strict_json(out / "results.json")
    assert config["lr"] == results["config"]["lr"] == 1e6 and results["status"] == "diverged"
    assert (out / "notes.txt").read_text() == "mine"
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".creditlab.json"]
    # the folder is one consistent run again: it can be started over, or resumed afresh
    assert train(tmp_path, "--epochs", "1", "--force") == 0
    assert train(tmp_path, "--epochs", "2", "--resume") == 0


def test_resume_with_fewer_epochs_than_trained_is_refused(tmp_path, capsys):
    out = tmp_path / "r"
    assert train(tmp_path, "--epochs", "3") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert train(tmp_path, "--epochs", "2", "--resume") == 2
    assert "has trained 3 epochs, more than the 2 asked for" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resume_and_force_together_are_refused(tmp_path, capsys):
    assert train(tmp_path, "--epochs", "1", "--resume", "--force") == 2
    assert "pass only one" in capsys.readouterr().err


@pytest.mark.parametrize("tol", ["nan", "inf", "0", "-1"])
def test_gradcheck_refuses_bad_tolerances(capsys, tol):
    assert cli.main(["gradcheck", "--trials", "1", "--tol-fd", tol]) == 2
    assert cli.main(["gradcheck", "--trials", "1", "--tol-autograd", tol]) == 2
    assert "must be a finite number above 0" in capsys.readouterr().err


@pytest.mark.parametrize("trials", ["0", "-1"])
def test_gradcheck_refuses_no_trials(capsys, trials):
    assert cli.main(["gradcheck", "--trials", trials]) == 2
    assert "trials must be a positive integer" in capsys.readouterr().err


def test_gradcheck_fails_on_a_nan_gradient(capsys, monkeypatch):
    original = Backprop.updates

    def poisoned(self, net, x, y):
        updates = original(self, net, x, y)
        return {k: torch.full_like(v, math.nan) for k, v in updates.items()}

    monkeypatch.setattr(Backprop, "updates", poisoned)
    assert cli.main(["gradcheck", "--trials", "1"]) == 1
    captured = capsys.readouterr()
    assert "gradcheck FAILED" in captured.err and "gradcheck passed" not in captured.out
    assert "largest relative error nan" in captured.out


# ---- tracebacks that became messages ----------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "mps"], "not supported"),
        (["--device", "xpu"], "not supported"),
        (["--device", "meta"], "not supported"),
        (["--device", "cpu:3"], "the CPU has no index"),
        (["--probe-size", "0"], "probe_size must be an integer >= 1"),
        (["--seed", str(2**64)], "seed must be an integer from 0 to"),
        (["--seed", str(2**70)], "seed must be"),
        (["--seed", "-1"], "seed must be"),
        (["--train-subset", "0"], "train_subset must be a positive integer"),
        (["--model", "mlp: 32"], "bad hidden sizes"),
        (["--model", "mlp:+32"], "bad hidden sizes"),
        (["--model", "mlp:3_2"], "bad hidden sizes"),
        (["--model", "mlp:032"], "bad hidden sizes"),
    ],
)
def test_bad_values_exit_2_with_a_message(tmp_path, capsys, args, message):
    assert train(tmp_path, "--epochs", "1", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("creditlab: error:") and message in err
    assert not (tmp_path / "r").exists()


def test_seeds_beyond_the_range_are_refused_by_compare(tmp_path, capsys):
    args = ["compare", *TINY, "--rules", "bp", "--seeds", f"0,{2**64}", "--out", str(tmp_path)]
    assert cli.main(args) == 2
    assert "seed must be" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("contents", "message"),
    [
        ('{"groups": ["x", "h"], "output": "h"}', "a group must be an object"),
        (
            '{"groups": [{"name": 1, "size": 64}, {"name": 2, "size": 10, "ins": [1]}],'
            ' "output": 2}',
            "'output' must be the name of a group",
        ),
        (
            '{"groups": [{"name": 1, "size": 64}, {"name": "o", "size": 10, "ins": [1]}],'
            ' "output": "o"}',
            "'name' must be str",
        ),
        ('{"groups": [{"name": "x", "size": "big"}], "output": "x"}', "'size' must be"),
        ('{"groups": [{"name": "x"}], "output": "x"}', "missing field 'size'"),
        (b'{"groups": [], "output": "\xff\xfe"}', "is not UTF-8"),
        (None, "is a folder"),
    ],
)
def test_bad_json_specs_exit_2(tmp_path, capsys, contents, message):
    spec = tmp_path / "x.json"
    if contents is None:
        spec.mkdir()
    elif isinstance(contents, bytes):
        spec.write_bytes(contents)
    else:
        spec.write_text(contents)
    assert train(tmp_path, "--epochs", "1", "--model", str(spec)) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("split", ["train", "t10k"])
def test_idx_folders_with_no_images_exit_2(tmp_path, capsys, split):
    make_idx_folder(tmp_path / "d")
    for name in (f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"):
        for path in (tmp_path / "d").glob(name + "*"):
            empty = np.zeros((0, 4, 5) if "images" in name else (0,), dtype=np.uint8)
            write_idx(path, empty)
    assert (
        cli.main(["train", "--dataset", f"idx:{tmp_path / 'd'}", "--out", str(tmp_path / "r")]) == 2
    )
    assert "holds 0 images" in capsys.readouterr().err


def test_an_absurd_idx_label_is_refused_and_an_outlier_warned_about(tmp_path, capsys):
    arrays = make_idx_folder(tmp_path / "d", n_train=60)
    labels = arrays["train-labels-idx1-ubyte"].astype(np.int32)
    path = next((tmp_path / "d").glob("train-labels-idx1-ubyte*"))
    labels[5] = 2**31 - 1
    write_idx(path, labels, code=0x0C)
    args = ["train", "--dataset", f"idx:{tmp_path / 'd'}", "--epochs", "1", "--quiet"]
    assert cli.main([*args, "--out", str(tmp_path / "r")]) == 2
    assert "would need an output layer of 2147483648 units" in capsys.readouterr().err
    labels[5] = 40  # 0-4 and 40: 41 output units, 36 of them for classes that never occur
    write_idx(path, labels, code=0x0C)
    assert cli.main([*args, "--val-size", "10", "--out", str(tmp_path / "s")]) in (0, 1)
    assert "warning: the labels take 5 distinct values but reach 40" in capsys.readouterr().err


def test_the_val_size_message_on_a_tiny_dataset_blames_the_default(tmp_path, capsys):
    make_idx_folder(tmp_path / "d", n_train=5)
    assert (
        cli.main(["train", "--dataset", f"idx:{tmp_path / 'd'}", "--out", str(tmp_path / "r")]) == 2
    )
    err = capsys.readouterr().err
    assert "too few for the default validation split" in err and "--val-size" in err


@pytest.mark.parametrize(
    "payload",
    [
        {"format": checkpoint.FORMAT, "epoch": 1},  # a dict without the expected keys
        {"format": checkpoint.FORMAT, "config": [], "epoch": "1"},
    ],
)
def test_a_checkpoint_without_the_expected_keys_is_refused(tmp_path, capsys, payload):
    assert train(tmp_path, "--epochs", "1") == 0
    torch.save(payload, tmp_path / "r" / "checkpoint.pt")
    assert train(tmp_path, "--epochs", "2", "--resume") == 2
    assert "is not a creditlab run checkpoint" in capsys.readouterr().err


def test_a_random_bytes_checkpoint_is_not_a_checkpoint(tmp_path, capsys):
    assert train(tmp_path, "--epochs", "1") == 0
    (tmp_path / "r" / "checkpoint.pt").write_bytes(random.Random(0).randbytes(4096))
    assert train(tmp_path, "--epochs", "2", "--resume") == 2
    err = capsys.readouterr().err
    assert "is not a creditlab checkpoint" in err
    assert "weights_only" not in err


def test_ctrl_c_before_the_first_checkpoint_does_not_claim_one(tmp_path, capsys, monkeypatch):
    original = Trainer.train_epoch

    def interrupt_at(stop: int):
        def train_epoch(self, epoch):
            if epoch == stop:
                raise KeyboardInterrupt
            return original(self, epoch)

        return train_epoch

    monkeypatch.setattr(Trainer, "train_epoch", interrupt_at(1))
    assert train(tmp_path, "--epochs", "3") == 130
    err = capsys.readouterr().err
    assert "intact" not in err and "no checkpoint" in err
    monkeypatch.setattr(Trainer, "train_epoch", interrupt_at(2))
    assert train(tmp_path, "--epochs", "3", out="s") == 130
    assert "the last checkpoint in" in capsys.readouterr().err

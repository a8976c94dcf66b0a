"""--matmul-precision: checked where it enters, set for the run only (the process's setting is
put back after, also when the run fails), recorded in config.json, free to change on resume,
and shared by a compare's stacked runs."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from creditlab import cli
from creditlab.compare import runs as compare
from creditlab.errors import TrainingError, UsageError
from creditlab.training.trainer import TrainConfig, Trainer

TINY = TrainConfig(
    dataset="digits", train_subset=60, batch_size=30, epochs=1, model="mlp:8", probe_every=0
)


@pytest.fixture
def precision_calls(monkeypatch):
    """Every setting the code asks torch for, in order (then passed on to torch)."""
    calls: list[str] = []
    real = torch.set_float32_matmul_precision

    def spy(name):
        calls.append(name)
        real(name)

    monkeypatch.setattr(torch, "set_float32_matmul_precision", spy)
    return calls


def test_an_unknown_precision_is_refused():
    with pytest.raises(UsageError, match="unknown matmul precision 'low'; valid: highest, high"):
        TrainConfig(matmul_precision="low")


def test_the_command_line_refuses_an_unknown_precision(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--matmul-precision", "tf32"])
    assert exit_.value.code == 2 and "invalid choice: 'tf32'" in capsys.readouterr().err


def test_the_run_sets_the_precision_and_puts_the_old_one_back(precision_calls, tmp_path, digits):
    before = torch.get_float32_matmul_precision()
    config = dataclasses.replace(TINY, matmul_precision="high")
    Trainer(config, tmp_path / "r", progress=False, data=digits).fit()
    assert precision_calls == ["high", before]
    assert torch.get_float32_matmul_precision() == before
    recorded = json.loads((tmp_path / "r" / "config.json").read_text())
    assert recorded["matmul_precision"] == "high"
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["config"]["matmul_precision"] == "high"


def test_a_failed_run_puts_the_precision_back(monkeypatch, digits):
    trainer = Trainer(
        dataclasses.replace(TINY, matmul_precision="medium"), progress=False, data=digits
    )
    seen = []

    def fail(epoch):
        seen.append(torch.get_float32_matmul_precision())
        raise TrainingError("the loss is nan")

    monkeypatch.setattr(trainer, "train_epoch", fail)
    before = torch.get_float32_matmul_precision()
    with pytest.raises(TrainingError):
        trainer.fit()
    assert seen == ["medium"] and torch.get_float32_matmul_precision() == before


def test_resume_may_change_the_precision(tmp_path, digits):
    config = dataclasses.replace(TINY, epochs=2)
    Trainer(config, tmp_path / "r", progress=False, data=digits).fit(until=1)
    later = Trainer(
        dataclasses.replace(config, matmul_precision="high"), tmp_path / "r", data=digits
    )
    assert later.restore() and later.epoch == 1


def test_compare_stacks_and_records_the_precision(precision_calls, tmp_path, digits):
    """The stacked seeds run under the asked precision; the folder's default name (its hash of
    the settings) does not depend on it, like the device's."""
    config = dataclasses.replace(TINY, matmul_precision="high", optimizer="sgd", lr=0.1)
    lines: list[str] = []
    record = compare.compare(
        config, ["bp"], [0, 1], {}, tmp_path / "c", progress=False, log=lines.append, data=digits
    )
    assert any("2 runs stacked" in line for line in lines)
    assert precision_calls and set(precision_calls[::2]) == {"high"}
    for run in record["runs"]:
        saved = json.loads(
            (tmp_path / "c" / "runs" / f"bp-seed{run['seed']}" / "config.json").read_text()
        )
        assert saved["matmul_precision"] == "high"
    highest = dataclasses.replace(config, matmul_precision="highest")
    assert compare.default_out_dir(config, ["bp"], [0, 1], {}) == compare.default_out_dir(
        highest, ["bp"], [0, 1], {}
    )

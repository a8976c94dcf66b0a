"""`creditlab compare` on the convolutional and capsule presets, stacked (the default): it
finishes, and every run equals the same run trained alone (--no-stack)."""

from __future__ import annotations

import json

import pytest

from creditlab import cli

SUBSET = [
    "--dataset",
    "mnist",
    "--train-subset",
    "200",
    "--val-size",
    "100",
    "--epochs",
    "1",
    "--batch-size",
    "50",
    "--dtype",
    "float64",  # so that stacked and separate sums differ only in rounding far below the test
    "--probe-every",
    "0",
    "--quiet",
]


def _compare(tmp_path, model: str, name: str, *extra: str) -> dict[str, dict]:
    out = tmp_path / name
    args = ["compare", *SUBSET, "--model", model, "--rules", "bp,fa", "--seeds", "2"]
    assert cli.main([*args, "--out", str(out), *extra]) == 0
    record = json.loads((out / "results.json").read_text())
    return {run["dir"]: run for run in record["runs"]}


@pytest.mark.parametrize("model", ["lenet", "capsnet:small"])
def test_compare_on_a_preset_stacks_and_equals_one_by_one(tmp_path, capsys, model):
    stacked = _compare(tmp_path, model, "stacked")
    assert "2 runs stacked" in capsys.readouterr().out
    alone = _compare(tmp_path, model, "alone", "--no-stack")
    assert list(stacked) == list(alone) and len(alone) == 4
    for key, run in alone.items():
        # (on 200 images and one epoch a run may stall: the same in both, which is the point)
        assert stacked[key]["status"] == run["status"], key
        assert len(run["history"]) == 1, key
        for a, b in zip(stacked[key]["history"], run["history"], strict=True):
            for field in ("train_loss", "val_loss", "val_accuracy"):
                assert a[field] == pytest.approx(b[field], rel=1e-9, abs=1e-12), (key, field)
        assert stacked[key]["test_accuracy"] == pytest.approx(run["test_accuracy"], abs=1e-12)

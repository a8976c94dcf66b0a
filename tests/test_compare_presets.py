"""`creditlab compare` on the convolutional and capsule presets, stacked (the default): it
finishes, and every run equals the same run trained alone (--no-stack)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from creditlab import cli
from tests.test_data import SHARED_MNIST

# The first images of MNIST, as an MNIST-format folder of its own: 300 training and 200 test
# images, so that evaluating the capsule network on the test set stays cheap.
N_TRAIN, N_TEST = 300, 200


def mnist_head(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        for part, header, item in (("images-idx3", 16, 784), ("labels-idx1", 8, 1)):
            name = f"{split}-{part}-ubyte"
            data = gzip.decompress((SHARED_MNIST / f"{name}.gz").read_bytes())
            count = n.to_bytes(4, "big")  # the header's count, then the first n items
            (folder / name).write_bytes(
                data[:4] + count + data[8:header] + data[header:][: n * item]
            )
    return folder


@pytest.fixture
def subset(tmp_path) -> list[str]:
    return ["--dataset", f"idx:{mnist_head(tmp_path / 'mnist-head')}", *SUBSET]


SUBSET = [
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


def _compare(tmp_path, subset, model: str, name: str, *extra: str) -> dict[str, dict]:
    out = tmp_path / name
    args = ["compare", *subset, "--model", model, "--rules", "bp,fa", "--seeds", "2"]
    # 0, or 1 where every run stalled (one epoch on 200 images): the same in both modes is
    # what the test checks
    assert cli.main([*args, "--out", str(out), *extra]) in (0, 1)
    record = json.loads((out / "results.json").read_text())
    return {run["dir"]: run for run in record["runs"]}


@pytest.mark.parametrize("model", ["lenet", "capsnet:small"])
def test_compare_on_a_preset_stacks_and_equals_one_by_one(tmp_path, capsys, subset, model):
    stacked = _compare(tmp_path, subset, model, "stacked")
    assert "2 runs stacked" in capsys.readouterr().out
    alone = _compare(tmp_path, subset, model, "alone", "--no-stack")
    assert list(stacked) == list(alone) and len(alone) == 4
    for key, run in alone.items():
        # (on 200 images and one epoch a run may stall: the same in both, which is the point)
        assert stacked[key]["status"] == run["status"], key
        assert len(run["history"]) == 1, key
        for a, b in zip(stacked[key]["history"], run["history"], strict=True):
            for field in ("train_loss", "val_loss", "val_accuracy"):
                assert a[field] == pytest.approx(b[field], rel=1e-9, abs=1e-12), (key, field)
        assert stacked[key]["test_accuracy"] == pytest.approx(run["test_accuracy"], abs=1e-12)


def test_compare_gives_a_rule_the_options_it_recommends_for_the_family(tmp_path, subset):
    """fg recommends 16 tangents on convolutional networks: a compare's runs take them (each
    run's config), and the report says where they came from; an option given wins."""
    out = tmp_path / "fg"
    args = ["compare", *subset, "--model", "lenet", "--rules", "fg,hillclimb", "--seeds", "1"]
    assert cli.main([*args, "--out", str(out), "--rule-opt", "hillclimb.step=0.02"]) in (0, 1)
    settings = json.loads((out / "results.json").read_text())["settings"]
    assert settings["rule_options"]["fg"]["tangents"] == 16
    assert settings["rule_recommended_options"] == {"fg": {"tangents": 16}, "hillclimb": {}}
    assert settings["rule_options"]["hillclimb"]["step"] == 0.02
    config = json.loads((out / "runs" / "fg-seed0" / "config.json").read_text())
    assert config["rule_opts"] == {"tangents": 16}
    assert config["rule_options"]["tangents"] == 16  # what the rule was built with
    table = (out / "table.md").read_text()
    assert "| fg | tangents | 16 | rule's recommendation |" in table, table

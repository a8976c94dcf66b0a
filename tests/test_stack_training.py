"""Stacked training: each member's history, best model and checkpoints equal its separate run's,
compare stacks the seeds of a rule (and says when it cannot), and a stacked compare resumes."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from creditlab import cli
from creditlab.speed.stacked_runs import StackedTrainer, train_stacked
from creditlab.training.trainer import TrainConfig, train

# Small, but enough that every run learns well past chance (a run that ends near chance is
# "stalled", training/guards.py).
TINY = TrainConfig(
    dataset="digits",
    train_subset=600,
    batch_size=50,
    epochs=2,
    model="mlp:16-16",
    probe_every=3,
    probe_size=64,
    dtype="float64",
    optimizer="sgd",
    lr=0.1,
    momentum=0.9,
)
COMPARE = ["--dataset", "digits", "--train-subset", "200", "--batch-size", "50", "--epochs", "2"]
COMPARE += ["--model", "mlp:16-16", "--probe-every", "3", "--probe-size", "64", "--quiet"]
COMPARE += ["--dtype", "float64"]


def _same_history(a, b):
    assert len(a) == len(b)
    for ha, hb in zip(a, b, strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy", "lr"):
            assert ha[key] == pytest.approx(hb[key], rel=1e-9, abs=1e-12), key
        for pa, pb in zip(ha.get("alignment", []), hb.get("alignment", []), strict=True):
            assert pa["step"] == pb["step"]
            for name, cos in pb["cos"].items():
                assert pa["cos"][name] == pytest.approx(cos, rel=1e-7, abs=1e-9), name


def _same_weights(path_a, path_b):
    a = torch.load(path_a, weights_only=True)["params"]
    b = torch.load(path_b, weights_only=True)["params"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-9, atol=1e-12), name


@pytest.mark.parametrize(
    "members",
    [
        [("bp", 0, 0.1, {}), ("bp", 1, 0.05, {}), ("bp", 2, 0.2, {})],
        [("fa", 0, 0.1, {}), ("usf", 1, 0.05, {}), ("fa", 2, 0.1, {"scale": 1.0})],
        [("dfa", 0, 0.1, {}), ("dfa", 1, 0.05, {})],
        [("dni", 0, 0.1, {}), ("dni", 1, 0.05, {})],
    ],
    ids=["bp-seeds-and-lrs", "fa-usf-mixed", "dfa-seeds", "dni-seeds"],
)
def test_stacked_members_equal_their_separate_runs(members, digits, tmp_path):
    configs = [
        dataclasses.replace(TINY, rule=r, seed=s, lr=lr, rule_opts=o, weight_decay=1e-3 * s)
        for r, s, lr, o in members
    ]
    dirs = [tmp_path / f"stacked{k}" for k in range(len(configs))]
    stacked = train_stacked(configs, dirs, progress=False, data=digits)
    for k, config in enumerate(configs):
        alone = train(config, tmp_path / f"alone{k}", progress=False)
        assert (
            stacked[k]["status"] == alone["status"]
            and stacked[k]["best_epoch"] == alone["best_epoch"]
        )
        assert stacked[k]["test_accuracy"] == alone["test_accuracy"]
        assert all(h["stacked"] == len(configs) for h in stacked[k]["history"])
        _same_history(stacked[k]["history"], alone["history"])
        _same_weights(dirs[k] / "checkpoint.pt", tmp_path / f"alone{k}" / "checkpoint.pt")
        _same_weights(dirs[k] / "best.pt", tmp_path / f"alone{k}" / "best.pt")
        on_disk = json.loads((dirs[k] / "results.json").read_text())
        assert on_disk["rule"] == config.rule and on_disk["seed"] == config.seed


def test_runs_that_cannot_stack_train_one_by_one_and_say_why(digits, tmp_path):
    configs = [dataclasses.replace(TINY, rule="es", seed=s, epochs=1) for s in (0, 1)]
    lines = []
    results = train_stacked(configs, None, progress=False, log=lines.append, data=digits)
    # Trained to the end one by one (one epoch of es on 200 examples may end near chance)
    assert [r["status"] in ("finished", "stalled") for r in results] == [True, True]
    assert not any("stacked" in h for r in results for h in r["history"])
    lines = [line for line in lines if "stack" in line]  # leave out the guards' warnings
    assert len(lines) == 1 and "not stacked (rule es has no stacked form" in lines[0]


def test_a_diverging_member_stops_alone(digits, tmp_path):
    # The first member diverges: the others must still stop at the configured epoch.
    configs = [dataclasses.replace(TINY, seed=s, lr=lr) for s, lr in ((1, 1e6), (0, 0.1))]
    lines = []
    results = train_stacked(
        configs, [tmp_path / "a", tmp_path / "b"], progress=False, log=lines.append, data=digits
    )
    assert [r["status"] for r in results] == ["diverged", "finished"]
    assert "bp seed 1: diverged" in lines[0] and "epoch 1, step" in results[0]["message"]
    assert results[1]["epochs"] == 2 and len(results[1]["history"]) == 2


def _compare(tmp_path, name, *extra):
    out = tmp_path / name
    args = ["compare", *COMPARE, "--rules", "bp,fa,dfa,dni,es", "--seeds", "2", "--out", str(out)]
    assert cli.main([*args, *extra]) == 0
    record = json.loads((out / "results.json").read_text())
    return out, {run["dir"]: run for run in record["runs"]}, record


def test_compare_stacks_by_default_and_matches_no_stack(tmp_path, capsys):
    out, stacked, record = _compare(tmp_path, "stacked")
    printed = capsys.readouterr().out
    for rule in ("bp", "fa", "dfa", "dni"):
        assert f"{rule} seeds 0, 1: 2 runs stacked" in printed
    assert "es seeds 0, 1: not stacked (rule es has no stacked form" in printed
    _, alone, _ = _compare(tmp_path, "alone", "--no-stack")
    assert "stacked" not in capsys.readouterr().out
    assert list(stacked) == list(alone)  # the compare's order: seed by seed, rule by rule
    assert [r["dir"] for r in record["runs"]][:2] == ["runs/bp-seed0", "runs/fa-seed0"]
    for key, run in alone.items():
        _same_history(stacked[key]["history"], run["history"])
        assert stacked[key]["test_accuracy"] == run["test_accuracy"]
        if not key.startswith("runs/es"):
            assert "shared by 2 stacked runs" in stacked[key]["peak_memory"]["note"]
    assert (out / "index.html").exists() and (out / "table.md").exists()


@pytest.mark.parametrize("interrupted", ["fa", "dfa"])
def test_an_interrupted_stacked_compare_resumes(interrupted, tmp_path, monkeypatch, capsys):
    original = StackedTrainer.train_epoch

    def crash(self, epoch):
        if self.trainers[0].config.rule == interrupted and epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(StackedTrainer, "train_epoch", crash)
    args = ["compare", *COMPARE, "--rules", f"bp,{interrupted}", "--seeds", "2"]
    assert cli.main([*args, "--out", str(tmp_path / "broken")]) == 130
    monkeypatch.setattr(StackedTrainer, "train_epoch", original)
    assert cli.main([*args, "--out", str(tmp_path / "broken")]) == 0
    printed = capsys.readouterr().out
    assert (
        f"{interrupted} seed 0: resuming from epoch 1" in printed
        and "bp seeds" not in printed.split("resuming")[-1]
    )
    assert cli.main([*args, "--out", str(tmp_path / "straight")]) == 0
    for run in ("bp-seed0", "bp-seed1", f"{interrupted}-seed0", f"{interrupted}-seed1"):
        a = json.loads((tmp_path / "broken" / "runs" / run / "results.json").read_text())
        b = json.loads((tmp_path / "straight" / "runs" / run / "results.json").read_text())
        _same_history(a["history"], b["history"])
        _same_weights(
            tmp_path / "broken" / "runs" / run / "checkpoint.pt",
            tmp_path / "straight" / "runs" / run / "checkpoint.pt",
        )

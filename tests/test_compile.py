"""--compile: the compiled step gives eager's updates (bp and fa, a few steps on the CPU), rules
that cannot be compiled fall back with one line, and the command line takes the flag."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch._dynamo.utils import counters

from creditlab import cli
from creditlab.experiments.captured import CompiledStep
from creditlab.experiments.train import TrainConfig, Trainer

TINY = TrainConfig(
    dataset="digits",
    train_subset=90,
    batch_size=40,  # 3 steps an epoch, the last one shorter: two compiled shapes
    epochs=2,
    model="mlp:12",
    probe_every=0,
    dtype="float64",
    optimizer="sgd",
    lr=0.1,
    momentum=0.9,
)


@pytest.mark.parametrize("rule", ["bp", "fa", "dfa"])
def test_compiled_steps_equal_eager_steps(rule, digits):
    config = dataclasses.replace(TINY, rule=rule)
    eager = Trainer(config, progress=False, data=digits)
    lines = []
    compiled = Trainer(config, progress=False, data=digits, compile=True, log=lines.append)
    assert compiled.compiled and isinstance(compiled.rule_step, CompiledStep) and not lines
    graphs = counters["stats"]["unique_graphs"]
    for epoch in (1, 2):
        a, b = eager.train_epoch(epoch), compiled.train_epoch(epoch)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-10)
        assert b["val_accuracy"] == a["val_accuracy"]
    assert counters["stats"]["unique_graphs"] > graphs  # the step really was compiled
    start = Trainer(config, progress=False, data=digits).net.parameters()
    for name, p in eager.net.parameters().items():
        assert not torch.equal(p, start[name])  # training moved it
        assert torch.allclose(compiled.net.parameters()[name], p, rtol=1e-9, atol=1e-12), name


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"rule": "brsf"}, "brsf runs eagerly: it draws fresh feedback magnitudes"),
        ({"rule": "dni"}, "dni runs eagerly: its synthesizers' optimiser counts steps"),
        ({"dropout": 0.2}, "bp runs eagerly: dropout draws from the network's generator"),
        ({"rule": "pc"}, "pc runs eagerly: rule pc has not been checked"),
    ],
)
def test_rules_that_cannot_compile_say_why_and_run_eagerly(changes, why, digits):
    lines = []
    config = dataclasses.replace(TINY, **changes)
    trainer = Trainer(config, progress=False, data=digits, compile=True, log=lines.append)
    assert lines == [f"--compile: {why}" + lines[0].split(why, 1)[1]] and why in lines[0]
    assert not trainer.compiled and trainer.rule_step == trainer.rule.updates


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("rule", ["bp", "fa"])
def test_compiled_steps_on_cuda_equal_eager_steps(rule, digits):
    """On a GPU the step is compiled with mode="reduce-overhead" (a CUDA graph)."""
    config = dataclasses.replace(TINY, rule=rule, device="cuda", dtype="float32")
    eager = Trainer(config, progress=False, data=digits)
    compiled = Trainer(config, progress=False, data=digits, compile=True)
    assert compiled.compiled and compiled.rule_step.cuda
    for epoch in (1, 2):
        a, b = eager.train_epoch(epoch), compiled.train_epoch(epoch)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    for name, p in eager.net.parameters().items():
        assert torch.allclose(compiled.net.parameters()[name], p, rtol=1e-4, atol=1e-5), name


def test_train_command_takes_compile(tmp_path, capsys):
    out = tmp_path / "r"
    args = ["train", "--compile", "--rule", "brsf", "--epochs", "2", "--train-subset", "800"]
    assert cli.main([*args, "--model", "mlp:8", "--out", str(out), "--quiet"]) == 0
    assert (
        "--compile: brsf runs eagerly: it draws fresh feedback magnitudes"
        in capsys.readouterr().out
    )
    config = json.loads((out / "config.json").read_text())
    assert config["compiled"] is False and config["rule"] == "brsf"

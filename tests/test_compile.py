"""--compile: the compiled step (updates and optimiser) trains as eager does (bp, fa and dfa; sgd,
adam and adamw under a cosine schedule, a few steps on the CPU) without recompiling at every
step, resumes exactly, rules that cannot be compiled fall back with one line, and the command
line takes the flag."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch._dynamo.utils import counters

from creditlab import cli
from creditlab.speed.compiled import CompiledStep
from creditlab.speed.stacked_runs import StackedTrainer
from creditlab.training import checkpoint
from creditlab.training.trainer import TrainConfig, Trainer

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
    assert compiled.compiled and isinstance(compiled.compiled_step, CompiledStep) and not lines
    torch._dynamo.reset()  # no graph cached by an earlier test may serve this one
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


OPTIMISERS = {
    "sgd momentum": {"optimizer": "sgd", "momentum": 0.9},
    "sgd nesterov, weight decay": {
        "optimizer": "sgd",
        "momentum": 0.8,
        "nesterov": True,
        "weight_decay": 0.01,
    },
    "sgd plain": {"optimizer": "sgd", "momentum": 0.0},
    "adam, weight decay": {"optimizer": "adam", "lr": 0.01, "weight_decay": 0.001},
    "adamw": {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.05},
}


@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_the_optimiser_inside_the_compiled_step_follows_eager(name, digits):
    """A cosine schedule changes the rate at every step; the step count and the rate are
    tensors inside the compiled step, so neither recompiles it: two graphs (the full batches
    and the shorter last one) serve all ten steps."""
    config = dataclasses.replace(
        TINY, batch_size=20, schedule="cosine", min_lr=0.001, **OPTIMISERS[name]
    )
    eager = Trainer(config, progress=False, data=digits)
    compiled = Trainer(config, progress=False, data=digits, compile=True)
    torch._dynamo.reset()  # no graph cached by an earlier test may serve this one
    graphs = counters["stats"]["unique_graphs"]
    for epoch in (1, 2):
        a, b = eager.train_epoch(epoch), compiled.train_epoch(epoch)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-10)
    assert counters["stats"]["unique_graphs"] - graphs == 2
    assert compiled.opt_state["step"] == eager.opt_state["step"] == 10  # a plain int, as eager
    assert a["lr"] == b["lr"] != config.lr  # the schedule moved the rate
    for name, p in eager.net.parameters().items():
        assert torch.allclose(compiled.net.parameters()[name], p, rtol=1e-9, atol=1e-12), name
    buffers = [k for k, v in eager.opt_state.items() if isinstance(v, dict)]
    assert buffers or config.momentum == 0  # momentum, or adam's m and v
    for key in buffers:
        for name, value in eager.opt_state[key].items():
            assert torch.allclose(compiled.opt_state[key][name], value, rtol=1e-9, atol=1e-12)


def test_a_compiled_run_resumes_exactly(tmp_path, digits):
    """A compiled run stopped after its first epoch and resumed (a new process would build a new
    compiled step) ends with the weights of an uninterrupted compiled run."""
    config = dataclasses.replace(TINY, optimizer="adam", lr=0.01, schedule="cosine", epochs=3)
    whole = Trainer(config, tmp_path / "whole", progress=False, data=digits, compile=True)
    whole.fit()
    first = Trainer(config, tmp_path / "parts", progress=False, data=digits, compile=True)
    first.fit(until=1)
    second = Trainer(config, tmp_path / "parts", progress=False, data=digits, compile=True)
    assert second.restore() and second.opt_state["step"] == first.opt_state["step"] == 3
    second.fit()
    assert second.opt_state["step"] == whole.opt_state["step"] == 9
    saved = checkpoint.load(tmp_path / "parts" / "checkpoint.pt")
    assert saved["optimizer"]["step"] == 9 and isinstance(saved["optimizer"]["step"], int)
    for name, p in whole.net.parameters().items():
        assert torch.equal(second.net.parameters()[name], p), name


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_a_compiled_stack_runs_its_shared_optimiser_inside_the_step(device, digits):
    """Stacked seeds sharing one optimiser (adam, cosine schedule): the compiled stack steps
    and applies in one compiled unit (on a GPU one CUDA graph), one graph for all steps, and
    ends where the eager stack does, each member's optimiser count a plain int as a separate
    run's."""
    cpu = device == "cpu"
    config = dataclasses.replace(
        TINY,
        train_subset=80,  # 2 steps of 40 an epoch: one batch shape
        optimizer="adam",
        lr=0.01,
        schedule="cosine",
        min_lr=0.001,
        device=device,
        dtype="float64" if cpu else "float32",
    )
    rtol, atol = (1e-9, 1e-12) if cpu else (1e-4, 1e-6)

    def stack(compile):
        members = [dataclasses.replace(config, seed=s) for s in (0, 1)]
        trainers = [Trainer(c, progress=False, data=digits) for c in members]
        return StackedTrainer(trainers, progress=False, compile=compile)

    eager, compiled = stack(False), stack(True)
    assert compiled.captured and not eager.captured
    torch._dynamo.reset()
    graphs, skips = counters["stats"]["unique_graphs"], counters["inductor"]["cudagraph_skips"]
    for epoch in (1, 2):
        a, b = eager.train_epoch(epoch), compiled.train_epoch(epoch)
        for k in (0, 1):
            assert b[k]["train_loss"] == pytest.approx(a[k]["train_loss"], rel=rtol)
    assert counters["stats"]["unique_graphs"] - graphs == 1
    assert counters["inductor"]["cudagraph_skips"] == skips
    for ours, theirs in zip(compiled.trainers, eager.trainers, strict=True):
        assert ours.opt_state["step"] == theirs.opt_state["step"] == 4
        for name, p in theirs.net.parameters().items():
            assert torch.allclose(ours.net.parameters()[name], p, rtol=rtol, atol=atol), name
        for name, v in theirs.opt_state["v"].items():
            assert torch.allclose(ours.opt_state["v"][name], v, rtol=rtol, atol=atol**2), name


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
    assert not trainer.compiled and trainer.compiled_step is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("rule", ["bp", "fa"])
def test_compiled_steps_on_cuda_equal_eager_steps(rule, digits):
    """On a GPU the compiled step is replayed from CUDA graphs (tests/test_cuda_graphs.py)."""
    config = dataclasses.replace(TINY, rule=rule, device="cuda", dtype="float32")
    eager = Trainer(config, progress=False, data=digits)
    compiled = Trainer(config, progress=False, data=digits, compile=True)
    assert compiled.compiled and compiled.compiled_step.cuda
    for epoch in (1, 2):
        a, b = eager.train_epoch(epoch), compiled.train_epoch(epoch)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    for name, p in eager.net.parameters().items():
        assert torch.allclose(compiled.net.parameters()[name], p, rtol=1e-4, atol=1e-5), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["sgd nesterov, weight decay", "adamw"])
def test_on_cuda_the_optimiser_runs_inside_the_cuda_graph(name, digits):
    """The whole step, optimiser included, is one CUDA graph: no recompile when the cosine
    schedule moves the rate, every full batch after the warm-up calls replayed from the graph,
    and eager's weights at the end."""
    config = dataclasses.replace(
        TINY,
        batch_size=20,
        schedule="cosine",
        min_lr=0.001,
        device="cuda",
        dtype="float32",
        **OPTIMISERS[name],
    )
    eager = Trainer(config, progress=False, data=digits)
    compiled = Trainer(config, progress=False, data=digits, compile=True)
    torch._dynamo.reset()
    graphs, skips = counters["stats"]["unique_graphs"], counters["inductor"]["cudagraph_skips"]
    for epoch in (1, 2):
        a, b = eager.train_epoch(epoch), compiled.train_epoch(epoch)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    assert counters["stats"]["unique_graphs"] - graphs == 2
    assert counters["inductor"]["cudagraph_skips"] == skips
    assert compiled.opt_state["step"] == eager.opt_state["step"] == 10
    # 8 full batches and 2 short ones; each shape warms up twice before its capture
    replays = [s.replays for s in compiled.compiled_step.graphs.shapes.values()]
    assert sorted(replays) == [0, 8 - 2]
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

"""The compiled step captured by hand in CUDA graphs (speed/cuda_graphs.py).

On the CPU the bookkeeping runs against a stand-in for CUDA graphs that behaves as one does: a
capture records the step without running it, and a replay runs what was recorded on the
buffers it was recorded with, writing its output into the same tensor every time. With it, the
compiled step trains exactly as eager does, through warm-ups, captures, replays, a second batch
shape, a resumed run and a failed capture. On a GPU the same checks run with real graphs."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from creditlab.speed.compiled import CompiledStep
from creditlab.speed.cuda_graphs import WARM_UP_CALLS, StepGraphs
from creditlab.training.trainer import Trainer
from tests.test_compile import TINY as COMPILE_TINY

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class StandInGraphs:
    """What a CUDA graph does, on the CPU: capture records without running; replay runs the
    recorded call and writes its result into the tensor the capture handed out."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.warm_ups = self.captures = 0

    def warm_up(self, call):
        self.warm_ups += 1
        return call()

    def capture(self, call):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing\nmore detail")
        self.captures += 1
        out = torch.zeros(())
        return (lambda: out.copy_(call())), out


def test_a_shape_warms_up_then_is_captured_and_replayed_on_the_new_batch():
    """A toy step p += sum(x) * lr: every call is a real step, the capture runs nothing, each
    replay reads the batch just copied in, and the loss comes back in the capture's tensor."""
    p = torch.zeros(())
    ran = []

    def step(x, y, state, lr):
        ran.append(x.shape[0])
        p.add_(x.sum() * lr)
        return p.clone()

    backend = StandInGraphs()
    graphs = StepGraphs(step, backend)
    state, lr = {"step": 0}, torch.tensor(1.0)
    losses = []
    for k in range(1, 6):
        x = torch.full((4, 2), float(k))
        losses.append(graphs(x, torch.zeros(4), state, lr).clone())
    assert backend.warm_ups == WARM_UP_CALLS and backend.captures == 1
    expected = torch.cumsum(torch.tensor([8.0 * k for k in range(1, 6)]), 0)
    assert torch.equal(torch.stack(losses), expected) and p == expected[-1]
    (shape,) = graphs.shapes.values()
    assert shape.replays == 5 - WARM_UP_CALLS
    # A shorter batch is a shape of its own: warmed up and captured on its own.
    for _ in range(WARM_UP_CALLS + 2):
        graphs(torch.ones(3, 2), torch.zeros(3), state, lr)
    assert backend.captures == 2 and len(graphs.shapes) == 2
    assert p == expected[-1] + 6 * (WARM_UP_CALLS + 2)


def test_a_new_optimiser_state_or_rate_drops_the_graphs():
    """The graphs hold the addresses of the state and rate they were captured with."""
    graphs = StepGraphs(lambda x, y, state, lr: x.sum(), StandInGraphs())
    x, y, lr = torch.ones(2, 2), torch.zeros(2), torch.tensor(1.0)
    state = {"step": 0}
    for _ in range(WARM_UP_CALLS + 1):
        graphs(x, y, state, lr)
    assert next(iter(graphs.shapes.values())).replay is not None
    graphs(x, y, {"step": 0}, lr)  # a restored state: new tensors
    assert next(iter(graphs.shapes.values())).replay is None
    graphs(x, y, state, torch.tensor(1.0))
    assert next(iter(graphs.shapes.values())).calls == 1


TINY = dataclasses.replace(
    COMPILE_TINY,
    batch_size=20,  # 5 steps an epoch, the last one shorter: two shapes, both captured
    epochs=3,
    optimizer="adam",
    lr=0.01,
    schedule="cosine",
    min_lr=0.001,
)


def stand_in(trainer: Trainer, backend: StandInGraphs) -> Trainer:
    """The trainer's compiled step, replayed from stand-in graphs."""
    trainer.compiled_step = CompiledStep(
        trainer.rule, trainer.net, trainer.opt, log=trainer.log, backend=backend
    )
    return trainer


@pytest.mark.parametrize("rule", ["bp", "fa", "dfa"])
def test_steps_replayed_from_graphs_equal_compiled_and_eager_steps(rule, digits):
    """Replays run the very function the compiled step runs without graphs: the same weights to
    the bit. Against eager, compiled Adam rounds differently in the last bits."""
    config = dataclasses.replace(TINY, rule=rule)
    eager = Trainer(config, progress=False, data=digits)
    compiled = Trainer(config, progress=False, data=digits, compile=True)
    assert compiled.compiled_step.graphs is None  # on the CPU, no graphs unless asked
    backend = StandInGraphs()
    graphed = stand_in(Trainer(config, progress=False, data=digits, compile=True), backend)
    for epoch in (1, 2, 3):
        a, b, c = (t.train_epoch(epoch) for t in (eager, compiled, graphed))
        assert c["train_loss"] == b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-10)
    assert backend.captures == 2  # the full batches and the shorter last one
    replays = sum(s.replays for s in graphed.compiled_step.graphs.shapes.values())
    assert replays == 15 - 2 * WARM_UP_CALLS
    assert graphed.opt_state["step"] == eager.opt_state["step"] == 15
    for name, p in eager.net.parameters().items():
        assert torch.equal(graphed.net.parameters()[name], compiled.net.parameters()[name])
        assert torch.allclose(graphed.net.parameters()[name], p, rtol=1e-7, atol=1e-10), name


def test_a_resumed_run_captures_again_and_ends_as_an_uninterrupted_one(tmp_path, digits):
    config = dataclasses.replace(TINY, rule="fa")
    whole = stand_in(
        Trainer(config, tmp_path / "whole", progress=False, data=digits, compile=True),
        StandInGraphs(),
    )
    whole.fit()
    first = stand_in(
        Trainer(config, tmp_path / "parts", progress=False, data=digits, compile=True),
        StandInGraphs(),
    )
    first.fit(until=2)
    backend = StandInGraphs()
    second = stand_in(
        Trainer(config, tmp_path / "parts", progress=False, data=digits, compile=True), backend
    )
    second.train_epoch(1)  # graphs captured before the restore must not survive it
    assert backend.captures == 1
    assert second.restore()
    second.fit()
    assert backend.captures == 2  # captured again after the restore (the epoch: one shape)
    for name, p in whole.net.parameters().items():
        assert torch.equal(second.net.parameters()[name], p), name


def test_a_failed_capture_falls_back_with_one_line_and_trains_as_eager(digits):
    config = dataclasses.replace(TINY, rule="bp")
    eager = Trainer(config, progress=False, data=digits)
    lines = []
    graphed = Trainer(config, progress=False, data=digits, compile=True, log=lines.append)
    stand_in(graphed, StandInGraphs(fail=True))
    for epoch in (1, 2):
        a, b = eager.train_epoch(epoch), graphed.train_epoch(epoch)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-10)
    assert lines == [
        "--compile: the step could not be captured in a CUDA graph (operation not permitted "
        "when stream is capturing); it runs in torch.compile's own CUDA graphs"
    ]
    assert graphed.compiled_step.graphs is None
    for name, p in eager.net.parameters().items():
        assert torch.allclose(graphed.net.parameters()[name], p, rtol=1e-7, atol=1e-10), name


@CUDA
@pytest.mark.parametrize("graphs", ["captured", "compiler"])
@pytest.mark.parametrize("rule", ["bp", "dfa"])
def test_on_cuda_graphed_steps_equal_eager_steps(rule, graphs, digits):
    """Real CUDA graphs, captured by hand (the default) or by torch.compile (the fallback)."""
    config = dataclasses.replace(TINY, rule=rule, device="cuda", dtype="float32")
    eager = Trainer(config, progress=False, data=digits)
    graphed = Trainer(config, progress=False, data=digits, compile=True)
    step = graphed.compiled_step
    if graphs == "compiler":
        step = graphed.compiled_step = CompiledStep(graphed.rule, graphed.net, graphed.opt, graphs)
    for epoch in (1, 2, 3):
        a, b = eager.train_epoch(epoch), graphed.train_epoch(epoch)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
    if graphs == "captured":
        assert sum(s.replays for s in step.graphs.shapes.values()) == 15 - 2 * WARM_UP_CALLS
    else:
        assert step.graphs is None
    assert graphed.opt_state["step"] == eager.opt_state["step"] == 15
    for name, p in eager.net.parameters().items():
        assert torch.allclose(graphed.net.parameters()[name], p, rtol=1e-4, atol=1e-5), name


@CUDA
def test_on_cuda_a_resumed_graphed_run_ends_as_an_uninterrupted_one(tmp_path, digits):
    config = dataclasses.replace(TINY, rule="fa", device="cuda", dtype="float32")
    whole = Trainer(config, tmp_path / "whole", progress=False, data=digits, compile=True)
    whole.fit()
    Trainer(config, tmp_path / "parts", progress=False, data=digits, compile=True).fit(until=2)
    second = Trainer(config, tmp_path / "parts", progress=False, data=digits, compile=True)
    assert second.restore()
    second.fit()
    assert second.compiled_step.graphs.shapes  # the resumed epoch ran through graphs
    for name, p in whole.net.parameters().items():
        assert torch.allclose(second.net.parameters()[name], p, rtol=1e-5, atol=1e-6), name

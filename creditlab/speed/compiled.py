"""A captured training step: forward pass, the rule's updates and the optimiser as one unit.

`creditlab train --compile` runs each step's forward pass, backward sweep, the rule's updates
and the optimiser's step through torch.compile, which fuses the engine's elementwise work and
the optimiser's into few kernels. On a GPU the compiled step is also recorded as a CUDA graph
and replayed, so a step costs one launch instead of dozens: captured by hand, one graph per
batch shape (cuda_graphs.py), which leaves the host two copies and a replay per step. Where a
capture fails, the step falls back, with one line, to torch.compile's own CUDA graphs
(mode="reduce-overhead"), which run more Python per step. The compiled function is our own
explicit code (no autograd); torch.compile only makes it faster, and the trained weights equal
eager's within float rounding (tests/test_compile.py).

The optimiser runs in its capturable form (optim.py): the step count and the learning rate are
0-d tensors on the device, so a schedule that changes the rate every step neither recompiles
the step nor breaks the graph. The count is kept here on the device and the optimiser state's
own count (a plain int, as checkpoints store it) is kept in step beside it. On a GPU the
parameters, the optimiser's buffers, the count and the rate are marked as static addresses:
the graph updates them where they live instead of copying them in and out at every replay.

Batches: the training data is on the device from the start and each epoch's order is applied
there (training/trainer.py); a step's batch is a slice of it, which is copied into the graph's
own input buffers before each replay (two device-to-device copies, about 0.4 MB at batch 128 on
MNIST). Indexing the epoch's data inside the graph, from a device step counter, would save
those two copies at the price of a static buffer per epoch; not done, as it was not measured
to matter.

A step is compiled once per batch shape (the full batches and the epoch's last, shorter one).
Rules whose step cannot be captured fall back to eager, and the training loop says why in one
line (`compile_problem`): each rule declares whether its step compiles, and why not
(`Rule.not_compiled`, rules/base.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from creditlab.engine.network import Network
from creditlab.optim import Optimizer, State, captured_state
from creditlab.rules import Rule
from creditlab.speed.cuda_graphs import CaptureFailed, CudaGraphBackend, StepGraphs

Tensor = torch.Tensor


def compile_problem(rule: Rule, net: Network) -> str | None:
    """Why this rule's step is not compiled on this network (one line), or None. The rule
    declares whether its step compiles (Rule.not_compiled)."""
    if any(g.dropout > 0 for g in net.groups.values()):
        return "dropout draws from the network's generator inside the step"
    return rule.compile_problem(net)


class CapturedOptimizer:
    """What an optimiser's step needs inside a compiled function: the learning rate as a 0-d
    tensor refilled before each step, and the optimiser state with its count as a device
    tensor, kept beside the loop's own state (whose count stays a plain int, as eager keeps
    it and checkpoints store it). On a GPU the parameters, the state's tensors and the rate
    are marked as static addresses: the graph updates them where they live."""

    def __init__(self, params: dict[str, Tensor], like: Tensor):
        self.params = params
        self.lr = torch.zeros((), dtype=like.dtype, device=like.device)
        self.rate = 0.0  # the value in self.lr
        self.cuda = like.device.type == "cuda"
        self.state: State | None = None  # the optimiser state, its count on the device
        self.source: State | None = None  # the loop's state it was made from
        self.count = -1  # the source's step count, as the last step left it

    def before(self, state: State, lr: float) -> tuple[State, Tensor]:
        """The state and rate to hand to the compiled step for this step."""
        if state is not self.source or state["step"] != self.count:
            self._adopt(state)  # the first step, or a state restored from a checkpoint
        if lr != self.rate:  # a write to the device only when the rate changed
            self.lr.fill_(lr)
            self.rate = lr
        return self.state, self.lr

    def after(self, state: State) -> None:
        """Count the step in the loop's state, as eager's update does (the device count was
        counted inside the step)."""
        state["step"] += 1
        self.count = state["step"]

    def _adopt(self, state: State) -> None:
        self.source, self.state = state, captured_state(state, self.lr.device)
        self.count = state["step"]
        if self.cuda:  # written in place by the graph: static, not copied at each replay
            for tensor in (*self.params.values(), *_tensors(self.state), self.lr):
                torch._dynamo.mark_static_address(tensor)


class CompiledStep:
    """One training step, compiled: rule.updates(net, x, y) and then opt.update(...) on the
    network's parameters. The batch loss goes to rule.last_loss as in eager. On a GPU the
    compiled step is replayed from CUDA graphs captured by hand (`graphs="captured"`), or from
    torch.compile's own (`graphs="compiler"`: the fallback, and a benchmark's comparison)."""

    def __init__(
        self,
        rule: Rule,
        net: Network,
        opt: Optimizer,
        graphs: str = "captured",
        log: Callable[[str], None] = print,
        backend: Any = None,
    ):
        if graphs not in ("captured", "compiler"):
            raise ValueError(f"graphs must be 'captured' or 'compiler', not {graphs!r}")
        self.rule, self.net, self.opt, self.log = rule, net, opt, log
        _warm_up(rule, net)
        self.params = net.parameters()
        self.optimizer = CapturedOptimizer(self.params, next(iter(self.params.values())))
        self.cuda = net.device.type == "cuda"
        if backend is None and self.cuda and graphs == "captured":
            backend = CudaGraphBackend(net.device)
        self.graphs: StepGraphs | None = None
        if backend is not None:  # (on the CPU only in tests, with a stand-in for CUDA graphs)
            self.compiled = torch.compile(self._step, dynamic=False)
            self.graphs = StepGraphs(self.compiled, backend)
        else:
            self._compile_with_compiler_graphs()

    def _compile_with_compiler_graphs(self) -> None:
        mode = "reduce-overhead" if self.cuda else None
        self.compiled = torch.compile(self._step, mode=mode, dynamic=False)

    def _step(self, x: Tensor, y: Tensor, state: State, lr: Tensor) -> Tensor | None:
        updates = self.rule.updates(self.net, x, y)
        self.opt.update(self.params, updates, state, lr)
        return self.rule.last_loss

    def reset(self) -> None:
        """Something the step reads was replaced (a rule's state loaded on resume): capture
        its graphs again."""
        if self.graphs is not None:
            self.graphs.reset()

    def __call__(self, x: Tensor, y: Tensor, state: State, lr: float) -> None:
        """One step on the batch (x, y) at rate `lr`; counts the step in `state` as eager
        does (a plain int)."""
        captured, rate = self.optimizer.before(state, lr)
        if self.graphs is not None:
            try:
                self.rule.last_loss = self.graphs(x, y, captured, rate)
            except CaptureFailed as err:  # the step has not run: run it the other way
                self.log(
                    f"--compile: the step could not be captured in a CUDA graph ({err}); "
                    "it runs in torch.compile's own CUDA graphs"
                )
                self.graphs = None
                self._compile_with_compiler_graphs()
        if self.graphs is None:
            if self.cuda:
                # A new step: the CUDA graph may reuse the last step's output memory, which
                # the loop has finished with (the loss was stored).
                torch.compiler.cudagraph_mark_step_begin()
            self.rule.last_loss = self.compiled(x, y, captured, rate)
        self.optimizer.after(state)


def _tensors(value) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _warm_up(rule: Rule, net: Network) -> None:
    """One eager step on a one-example batch, outside the graph: whatever the rule makes
    lazily on its first step (fa's drawn matrices, dfa's joined ones) is made now, as plain
    tensors, rather than inside a compiled graph whose outputs a CUDA graph may reuse. The
    rules compiled keep no other state, so the step changes nothing."""
    x = torch.zeros(1, net.input_size, dtype=net.dtype, device=net.device)
    if net.loss_fn.classification:
        y = torch.zeros(1, dtype=torch.long, device=net.device)
    else:
        y = torch.zeros(1, net.output_size, dtype=net.dtype, device=net.device)
    rule.updates(net, x, y)
    rule.last_loss = None

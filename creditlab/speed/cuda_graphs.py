"""A compiled step captured by hand in CUDA graphs, one per batch shape, and replayed.

torch.compile's own CUDA graphs (mode="reduce-overhead") run Python at every call: dynamo's
guards, the compiled wrapper, and the bookkeeping of cudagraph trees (which checks the inputs'
addresses and copies the batch into its buffers). On a GPU at batch 128 that host work takes
about as long as the step's kernels, so the GPU waits for the CPU. Captured by hand, a step
costs the host two copies (the batch into the graph's input buffers) and one replay; the
kernels are the same ones torch.compile generated.

The recipe is torch.cuda.graphs': a shape's first calls run the compiled function for real on
a side stream (they compile it and let lazy initialisation happen outside a capture), the next
call captures it, which records the kernels without running them, and replays the graph at
once. Every call is a real training step, so the run equals eager's step for step.

A graph keeps the addresses it was captured with. Everything the step reads besides the batch
(the parameters, the optimiser's buffers, its device step count and rate, a rule's fixed
matrices) must stay where it is: parameters are loaded in place, and when the optimiser state
is replaced (a resumed run) or a rule's state is loaded, `reset()` drops the graphs and they are
captured again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Tensor = torch.Tensor
Step = Callable[[Tensor, Tensor, Any, Tensor], Tensor | None]

WARM_UP_CALLS = 2  # real, uncaptured calls of a batch shape before it is captured


class CaptureFailed(RuntimeError):
    """The step could not be recorded in a CUDA graph; it has not run."""


class CudaGraphBackend:
    """Capture and warm-up on the GPU (torch.cuda.graphs)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.side = torch.cuda.Stream(device)

    def warm_up(self, call: Callable[[], Any]) -> Any:
        """call() on a side stream, ordered after the work already queued and before what
        follows."""
        current = torch.cuda.current_stream(self.device)
        self.side.wait_stream(current)
        with torch.cuda.stream(self.side):
            out = call()
        current.wait_stream(self.side)
        return out

    def capture(self, call: Callable[[], Any]) -> tuple[Callable[[], None], Any]:
        """Record call() in a new graph without running it: (replay, what call() returned,
        whose memory every replay writes again)."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = call()
        return graph.replay, out


class _Captured:
    """One batch shape: the input buffers the graph reads and, once captured, its replay."""

    def __init__(self, x: Tensor, y: Tensor):
        self.x, self.y = torch.empty_like(x), torch.empty_like(y)
        self.calls = 0  # calls before the capture
        self.replays = 0
        self.replay: Callable[[], None] | None = None
        self.loss: Tensor | None = None


class StepGraphs:
    """Runs `step(x, y, state, lr)` through CUDA graphs captured by hand, one per batch shape.
    `state` and `lr` must be the same objects at every call (the graph holds their addresses);
    other objects drop the graphs first. `backend` captures and warms up (tests pass a CPU
    stand-in)."""

    def __init__(self, step: Step, backend: Any):
        self.step, self.backend = step, backend
        self.shapes: dict[tuple, _Captured] = {}
        self.bound: tuple[Any, Tensor] | None = None  # the state and rate the graphs hold

    def reset(self) -> None:
        """Forget every graph; the next calls warm up and capture again."""
        self.shapes.clear()
        self.bound = None

    def __call__(self, x: Tensor, y: Tensor, state: Any, lr: Tensor) -> Tensor | None:
        if self.bound is None or self.bound[0] is not state or self.bound[1] is not lr:
            self.reset()
            self.bound = (state, lr)
        key = (tuple(x.shape), x.dtype, tuple(y.shape), y.dtype)
        shape = self.shapes.get(key)
        if shape is None:
            shape = self.shapes[key] = _Captured(x, y)
        shape.x.copy_(x)
        shape.y.copy_(y)

        def call():
            return self.step(shape.x, shape.y, state, lr)

        if shape.replay is None:
            shape.calls += 1
            if shape.calls <= WARM_UP_CALLS:
                return self.backend.warm_up(call)
            try:
                shape.replay, shape.loss = self.backend.capture(call)
            except RuntimeError as err:
                self.reset()
                raise CaptureFailed(str(err).splitlines()[0] if str(err) else repr(err)) from err
        shape.replay()
        shape.replays += 1
        return shape.loss

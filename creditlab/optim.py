"""Optimisers and learning-rate schedules.

A rule computes a direction per parameter; an optimiser turns directions into steps and applies
them, in place. Each optimiser is an init/update pair in the manner of optax: `init(params)`
makes the state (a dict of plain values and tensors, so it goes into checkpoints as is) and
`update(params, updates, state, lr)` moves the parameters against the updates. The formulas
follow torch.optim, so a run here and a plain PyTorch run with the same settings take the same
steps.

Capturable form. In eager runs the step count is a Python int and the rate a Python float, as
checkpoints store them. Inside a captured step (speed/compiled.py) both are 0-d tensors
on the device instead, so that neither a new step count nor a schedule's new rate recompiles
the step or leaves a CUDA graph: the same `update` then uses only tensor arithmetic (no Python
branch on the step, no Python number taken from a tensor). `captured_state` makes that form of
a state; the captured step keeps the state's int count beside it, so checkpoints are unchanged.

Why not torch.optim's fused/foreach/capturable optimisers fed through `.grad`: they would be a
second implementation of the same formulas beside this one, which eager runs and checkpoints
use; inside the compiled step inductor fuses this code's elementwise work into a few kernels
with the rule's last ones, where torch.optim's own multi-tensor kernels would sit outside the
fusion. On the CPU (benchmarks/step_time.py, docs/speed-and-gpu.md) the compiled step with
this optimiser inside was as fast as the compiled updates followed by this optimiser or by
torch.optim's fused SGD, and faster than torch.optim's foreach SGD; on a GPU what counts is
that the whole step is then one CUDA graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from creditlab.errors import UnknownNameError, UsageError

Tensor = torch.Tensor
Params = dict[str, Tensor]
State = dict[str, Any]


def _check(name: str, value: float, low: float, high: float = math.inf) -> float:
    if not (low <= value < high) or math.isnan(value):
        raise UsageError(f"{name} must be in [{low}, {high}), got {value}")
    return float(value)


class Optimizer:
    name = ""

    def init(self, params: Params) -> State:
        return {"step": 0}

    def update(self, params: Params, updates: Params, state: State, lr: float | Tensor) -> None:
        raise NotImplementedError


def captured_state(state: State, device: torch.device) -> State:
    """The state with its step count as a 0-d int64 tensor on `device`, an exact count like the
    int it stands for (and not float64: inductor on the CPU drops in-place writes to 0-d
    float64 inputs, torch 2.13); the buffers are shared, not copied."""
    return {**state, "step": torch.tensor(int(state["step"]), device=device)}


def _descend(p: Tensor, direction: Tensor, step_size: float | Tensor) -> None:
    """p -= step_size * direction; a tensor step size (captured) cannot be an `alpha`."""
    if isinstance(step_size, Tensor):
        p.sub_(direction * step_size)
    else:
        p.add_(direction, alpha=-step_size)


def _advance(state: State) -> None:
    """Count a step: in place for a tensor count, whose address a CUDA graph keeps."""
    if isinstance(state["step"], Tensor):
        state["step"].add_(1)
    else:
        state["step"] += 1


class SGD(Optimizer):
    """SGD with optional momentum (heavy ball or Nesterov) and L2 weight decay."""

    name = "sgd"

    def __init__(self, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
        self.momentum = _check("momentum", momentum, 0.0, 1.0)
        self.nesterov = nesterov
        self.weight_decay = _check("weight decay", weight_decay, 0.0)
        if nesterov and self.momentum == 0:
            raise UsageError("nesterov needs a momentum above 0")

    def init(self, params: Params) -> State:
        state: State = {"step": 0}
        if self.momentum:
            state["momentum"] = {k: torch.zeros_like(p) for k, p in params.items()}
        return state

    def update(self, params: Params, updates: Params, state: State, lr: float | Tensor) -> None:
        m, step = self.momentum, state["step"]
        for name, p in params.items():
            g = updates[name]
            if self.weight_decay:
                g = g.add(p, alpha=self.weight_decay)
            if m:
                buf = state["momentum"][name]
                if isinstance(step, Tensor):  # captured: the same choice, without a branch
                    buf.copy_(torch.where(step == 0, g, torch.add(g, buf, alpha=m)))
                elif step == 0:
                    buf.copy_(g)  # torch.optim starts the buffer at the first gradient
                else:
                    torch.add(g, buf, alpha=m, out=buf)  # buf = g + m * buf, in one pass
                g = g.add(buf, alpha=m) if self.nesterov else buf
            _descend(p, g, lr)
        _advance(state)


class Adam(Optimizer):
    """Adam (Kingma and Ba 2015); weight_decay adds an L2 term to the gradient."""

    name = "adam"
    decoupled = False

    def __init__(
        self,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay=0.0,
    ):
        self.b1 = _check("beta1", betas[0], 0.0, 1.0)
        self.b2 = _check("beta2", betas[1], 0.0, 1.0)
        self.eps = _check("eps", eps, 0.0)
        self.weight_decay = _check("weight decay", weight_decay, 0.0)

    def init(self, params: Params) -> State:
        return {
            "step": 0,
            "m": {k: torch.zeros_like(p) for k, p in params.items()},
            "v": {k: torch.zeros_like(p) for k, p in params.items()},
        }

    def update(self, params: Params, updates: Params, state: State, lr: float | Tensor) -> None:
        _advance(state)
        t = state["step"]
        if isinstance(t, Tensor):  # captured: the powers in float64, as Python's are
            t = t.to(torch.float64)
        bias1, bias2 = 1 - self.b1**t, 1 - self.b2**t
        root2 = bias2.sqrt() if isinstance(t, Tensor) else math.sqrt(bias2)
        for name, p in params.items():
            g = updates[name]
            if self.weight_decay and self.decoupled:
                p.mul_(1 - lr * self.weight_decay)
            elif self.weight_decay:
                g = g.add(p, alpha=self.weight_decay)
            m, v = state["m"][name], state["v"][name]
            m.lerp_(g, 1 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            # One new tensor, not two: in place, div_ rounds exactly as `/` does.
            denom = v.sqrt().div_(root2).add_(self.eps)
            if isinstance(t, Tensor):  # captured: a tensor step size cannot be a `value`
                p.sub_(m / denom * (lr / bias1))
            else:
                p.addcdiv_(m, denom, value=-lr / bias1)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter 2019)."""

    name = "adamw"
    decoupled = True

    def __init__(self, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(betas, eps, weight_decay)


OPTIMIZERS: dict[str, type[Optimizer]] = {o.name: o for o in (SGD, Adam, AdamW)}


def optimizer(name: str, **settings: Any) -> Optimizer:
    if name not in OPTIMIZERS:
        raise UnknownNameError("optimizer", name, OPTIMIZERS)
    return OPTIMIZERS[name](**settings)


# ---- learning-rate schedules: the rate for a given step --------------------------------------
@dataclass(frozen=True)
class Schedule:
    """lr at step t of a run of `total_steps` steps, `steps_per_epoch` to an epoch."""

    kind: str
    lr: float
    steps_per_epoch: int
    total_steps: int
    step_epochs: int = 10  # "step": multiply by gamma every this many epochs
    gamma: float = 0.1
    min_lr: float = 0.0  # "cosine": the rate reached at the last step
    warmup_epochs: float = 0.0  # linear warm-up from 0, for any kind
    # "step": multiply by gamma as each of these epochs begins (counted from 0, as torch's
    # MultiStepLR stepped once per epoch), instead of every step_epochs; () for none.
    milestones: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise UnknownNameError("schedule", self.kind, SCHEDULES)
        _check("learning rate", self.lr, 0.0)
        if self.step_epochs < 1:
            raise UsageError(f"the step schedule needs step_epochs >= 1, got {self.step_epochs}")

    def __call__(self, t: int) -> float:
        warmup = self.warmup_epochs * self.steps_per_epoch
        if t < warmup:
            return self.lr * (t + 1) / warmup
        if self.kind == "constant":
            return self.lr
        if self.kind == "step" and self.milestones:
            epoch = t // self.steps_per_epoch  # 0 for the first epoch
            return self.lr * self.gamma ** sum(epoch >= m for m in self.milestones)
        if self.kind == "step":
            return self.lr * self.gamma ** (t // (self.step_epochs * self.steps_per_epoch))
        progress = (t - warmup) / max(1.0, self.total_steps - warmup)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * progress))


SCHEDULES = ("constant", "step", "cosine")


def parse_milestones(text: str | None) -> tuple[int, ...]:
    """The epochs of "100,150,200" (increasing positive integers); () for None or ""."""
    if not text:
        return ()
    parts = [part.strip() for part in str(text).split(",")]
    if not all(part.isdigit() for part in parts):
        raise UsageError(
            f"milestones must be epochs joined by commas, e.g. 100,150,200; got {text!r}"
        )
    epochs = tuple(int(part) for part in parts)
    if epochs[0] < 1 or epochs != tuple(sorted(set(epochs))):
        raise UsageError(f"milestones must be increasing positive epochs, got {text!r}")
    return epochs

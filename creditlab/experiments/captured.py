"""A captured training step: the forward pass and the rule's updates as one compiled unit.

`creditlab train --compile` runs each step's forward pass, backward sweep and weight updates
through torch.compile, which fuses the engine's elementwise work into few kernels; on a GPU it
uses mode="reduce-overhead", which also records the step as a CUDA graph and replays it, so a
step costs one launch instead of dozens. The compiled function is our own explicit code (no
autograd); torch.compile only makes it faster, and the updates equal eager's within float
rounding (tests/test_compile.py). The optimiser (optim.py) then applies them as it always does.

A step is compiled once per batch shape (the full batches and the epoch's last, shorter one).
Rules whose step cannot be captured fall back to eager, and the training loop says why in one
line (`compile_problem`).
"""

from __future__ import annotations

import torch

from creditlab.engine.network import Network
from creditlab.rules import Rule

Tensor = torch.Tensor

# Rules checked to give eager's updates when compiled (tests/test_compile.py covers bp and fa;
# the others share their code paths: the sweep with fixed or sign-concordant feedback).
COMPILED = ("bp", "fa", "usf", "frsf", "dfa")
WHY_NOT = {
    "brsf": "it draws fresh feedback magnitudes from its own generator every step",
    "es": "it draws its population's perturbations from its own generator every step",
    "hillclimb": "it draws its proposals from its own generator every step",
    "dni": "its synthesizers' optimiser counts steps in Python, which would recompile every step",
    "cdni": "its synthesizers' optimiser counts steps in Python, which would recompile every step",
}


def compile_problem(rule: Rule, net: Network) -> str | None:
    """Why this rule's step is not compiled on this network (one line), or None."""
    if any(g.dropout > 0 for g in net.groups.values()):
        return "dropout draws from the network's generator inside the step"
    if rule.name in WHY_NOT:
        return WHY_NOT[rule.name]
    if rule.name not in COMPILED:
        return f"rule {rule.name} has not been checked against eager under torch.compile"
    return None


class CompiledStep:
    """rule.updates(net, x, y), compiled; the batch loss goes to rule.last_loss as in eager."""

    def __init__(self, rule: Rule, net: Network):
        self.rule, self.net = rule, net
        _warm_up(rule, net)
        self.cuda = net.device.type == "cuda"
        mode = "reduce-overhead" if self.cuda else None
        self.compiled = torch.compile(self._step, mode=mode, dynamic=False)

    def _step(self, x: Tensor, y: Tensor):
        updates = self.rule.updates(self.net, x, y)
        return updates, self.rule.last_loss

    def __call__(self, net: Network, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        if net is not self.net:
            raise ValueError("a compiled step belongs to one network")
        if self.cuda:
            # A new step: the CUDA graph may reuse the last step's output memory, which the
            # loop has finished with (the optimiser applied the updates, the loss was stored).
            torch.compiler.cudagraph_mark_step_begin()
        updates, loss = self.compiled(x, y)
        self.rule.last_loss = loss
        return updates


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

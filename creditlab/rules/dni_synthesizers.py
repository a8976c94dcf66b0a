"""Block boundaries and synthetic error signals: the machinery of decoupled neural interfaces.

Jaderberg et al. (2016) split a network into blocks. At a block boundary b (a hidden group, the
top of the block below) a small model M_b, the synthesizer, predicts the error signal that will
arrive at b's output from above, dE/dz_b, from what b has just emitted (z_b, and for the
conditioned variant the target as well). The block below updates with the prediction at once,
without waiting for the blocks above; M_b is trained toward the signal that does arrive, which
is itself built on the synthetic signals of the boundaries above (bootstrapping), except for the
topmost block, whose signal comes from the loss.

In the derivation's notation, with groups visited in reverse topological order:
    output group o:         delta_o = f_o'(s_o) * dE/dz_o                     (the true loss)
    boundary group b:       delta_b = f_b'(s_b) * M_b(u_b),  u_b = z_b or [z_b, c]
                            target_b = sum over k in outs(b) of delta_k W_bk^T  (what arrives)
    any other group j:      delta_j = f_j'(s_j) * sum over k in outs(j) of delta_k W_jk^T
So in a DAG every group forms its delta from the deltas of the groups it feeds, whatever they
are; a boundary's delta is synthetic-based, and a group below a boundary that also feeds a group
above it directly (a skip connection) receives both the boundary's synthetic-based delta and the
group above's delta, as the sum over its outs. Deltas are per example, so M_b predicts the
per-example dE/dz_b; weight_updates divides by the batch size once.

Synthesizer loss at b: L_b = 0.5 * mean over the batch of ||M_b(u_b) - target_b||^2, minimised
with explicit gradients by one of creditlab's optimisers. Two kinds:
    linear: M(u) = u A + c                     (A, c zero)
    mlp:    M(u) = relu(u A1 + c1) A2 + c2     (A1 He-random, c1, A2, c2 zero)
Both start by predicting 0, as in the paper, so at first the blocks below a boundary stand still
while the synthesizers learn what to say.

The blocks run in lockstep in one process here (the decoupling is simulated): in a step, every
block updates with the prediction its boundary made from this batch, and each synthesizer then
takes one step toward the signal that arrived on the same forward pass.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

from creditlab.engine.backward import incoming_signal, local_delta, loss_signals, transpose_feedback
from creditlab.engine.network import Network, Trace
from creditlab.errors import UsageError
from creditlab.optim import SGD, Adam, Optimizer
from creditlab.rules.machinery.feedback import check_fits

Tensor = torch.Tensor
SYNTH_KINDS = ("linear", "mlp")
SYNTH_OPTIMIZERS = ("adam", "sgd")
# An oracle gives the signal to use at boundary b in place of the synthesizer's prediction:
# oracle(net, trace, y, b) -> (N, size_b). For tests (an oracle that returns the true dE/dz_b
# turns the rule into backpropagation) and for studies of what a perfect synthesizer would do.
Oracle = Callable[[Network, Trace, Tensor, str], Tensor]


def resolve_boundaries(net: Network, names: Sequence[str], rule: str) -> list[str]:
    """The boundary groups in topological order; default_boundaries(net) when `names` is empty.

    Only hidden groups can end a block: the output already receives the true error signal, and
    the input has no weights below it to update.
    """
    hidden = net.hidden
    names = [b.strip() for b in names]  # "h1, h2" on a command line means h1 and h2
    if not names:
        return default_boundaries(net)
    bad = [b for b in names if b not in hidden]
    if bad:
        what = "is not a hidden group" if len(bad) == 1 else "are not hidden groups"
        valid = ", ".join(hidden) or "none (the network has no hidden group)"
        raise UsageError(
            f"block boundary {', '.join(map(repr, bad))} of rule {rule!r} {what} of this "
            f"network; valid groups: {valid}"
        )
    chosen = set(names)
    return [j for j in hidden if j in chosen]


def default_boundaries(net: Network) -> list[str]:
    """Every hidden group of a dense network; one boundary on a network with other kinds.

    Every synthesizer starts by predicting 0 and learns from the one above it, so a chain of
    boundaries reaches its lowest block only after each synthesizer above has learned: on
    LeNet, six boundaries (one per hidden group) left the network at 0.228 test accuracy after
    2 epochs on 2,000 MNIST images, one boundary at pool2 reached 0.887
    (docs/results/defaults.md). A linear synthesizer over a convolution's output also has
    size^2 entries (22 GiB at a CapsNet's conv1). So on a network with convolutions (or
    capsules) the default is two blocks, the features and the head, split at the narrowest
    non-dense group below the prediction (the top of the features: LeNet's pool2, a CapsNet's
    primary capsules, a ResNet's pooled features); the highest of equals.
    """
    hidden = net.hidden
    if all(net.groups[j].kind == "dense" for j in hidden):
        return list(hidden)
    below, todo = set(), [net.output_name]
    while todo:  # the ancestors of the prediction
        for i in net.groups[todo.pop()].ins:
            if i not in below:
                below.add(i)
                todo.append(i)
    features = [j for j in hidden if j in below and net.groups[j].kind != "dense"]
    if not features:
        return list(hidden)
    narrowest = min(net.groups[j].size for j in features)
    return [[j for j in features if net.groups[j].size == narrowest][-1]]


def synthetic_sweep(
    net: Network,
    trace: Trace,
    y: Tensor,
    boundaries: Sequence[str],
    synthetic: Callable[[str], Tensor],
    delta_o: Tensor | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The backward sweep with the signal at each boundary b replaced by synthetic(b).

    Returns the deltas of every non-input group and, per boundary, the signal that arrived
    there from above (the synthesizer's target). `delta_o`: the output's delta when it comes
    from outside the loss (then y is not read).
    """
    feedback = transpose_feedback(net)
    if delta_o is None:
        sources = loss_signals(net, trace, y)  # dE/dz_o at the outputs
        deltas: dict[str, Tensor] = {}
    else:  # the output's delta came from outside the loss
        sources, deltas = {}, {net.output_name: delta_o}
    arriving: dict[str, Tensor] = {}
    cut = set(boundaries)
    for j in reversed(net.order):
        if j == net.input_name or j in deltas:
            continue
        # Every group but an output feeds some group above it, and every group above has a
        # delta by now (reverse topological order), so a signal always arrives.
        incoming = incoming_signal(net, deltas, j, feedback, trace)
        if j in sources:
            incoming = sources[j] if incoming is None else incoming.add_(sources[j])
        if j in cut:
            arriving[j] = incoming
            incoming = synthetic(j)
        deltas[j] = local_delta(net, trace, j, incoming)
    return deltas, arriving


def condition(net: Network, y: Tensor) -> Tensor:
    """What a conditioned synthesizer reads beside z_b: the one-hot label for class labels,
    the target itself for losses with output-shaped targets (mse, bce)."""
    if y.dim() == 1:
        return torch.nn.functional.one_hot(y, net.n_scores).to(net.dtype)
    return y.to(net.dtype)


class Synthesizer:
    """M_b for one boundary b, reading n_in numbers and predicting n_out = size of b.

    Its parameters live in a shared flat dict `theta` (names like "A[h1]"), so that one
    optimiser state and one state_dict hold every synthesizer.
    """

    def __init__(self, b: str, kind: str, n_in: int, n_out: int, hidden: int):
        if kind not in SYNTH_KINDS:
            raise UsageError(f"unknown synthesizer {kind!r}; valid: {', '.join(SYNTH_KINDS)}")
        self.b, self.kind, self.n_in, self.n_out, self.hidden = b, kind, n_in, n_out, hidden

    def key(self, part: str) -> str:
        return f"{part}[{self.b}]"

    def shapes(self) -> dict[str, tuple[int, ...]]:
        if self.kind == "linear":
            return {self.key("A"): (self.n_in, self.n_out), self.key("c"): (self.n_out,)}
        return {
            self.key("A1"): (self.n_in, self.hidden),
            self.key("c1"): (self.hidden,),
            self.key("A2"): (self.hidden, self.n_out),
            self.key("c2"): (self.n_out,),
        }

    def init(self, seed: int, dtype: torch.dtype, device: torch.device) -> dict[str, Tensor]:
        """Fresh parameters whose prediction is 0 for every input: all zero but A1."""
        theta = {
            k: torch.zeros(shape, dtype=dtype, device=device) for k, shape in self.shapes().items()
        }
        if self.kind == "mlp":
            # He normal, drawn on the CPU in float64 from a generator seeded by the net's seed
            # and b's name, so a seed gives the same synthesizer on every device and dtype.
            rng = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(self.b.encode()) + 17)
            a1 = torch.randn(self.n_in, self.hidden, generator=rng, dtype=torch.float64)
            theta[self.key("A1")] = (a1 * math.sqrt(2.0 / self.n_in)).to(device, dtype)
        return theta

    def predict(self, theta: dict[str, Tensor], u: Tensor) -> tuple[Tensor, Tensor | None]:
        """M_b(u), and the hidden activations the gradient needs (None for linear)."""
        if self.kind == "linear":
            return torch.addmm(theta[self.key("c")], u, theta[self.key("A")]), None
        h = torch.addmm(theta[self.key("c1")], u, theta[self.key("A1")]).clamp_min_(0)
        return torch.addmm(theta[self.key("c2")], h, theta[self.key("A2")]), h

    def gradients(
        self, theta: dict[str, Tensor], u: Tensor, h: Tensor | None, error: Tensor
    ) -> dict[str, Tensor]:
        """dL_b/dparam for L_b = 0.5 mean_n ||M(u_n) - target_n||^2, given error = M(u) - target.

        With G = error / N (dL_b/dM): linear dA = u^T G, dc = sum_n G; mlp dA2 = h^T G,
        dc2 = sum_n G, dH = (G A2^T) * [h > 0], dA1 = u^T dH, dc1 = sum_n dH.
        """
        g = error / error.shape[0]
        if self.kind == "linear":
            return {self.key("A"): u.t() @ g, self.key("c"): g.sum(dim=0)}
        dh = (g @ theta[self.key("A2")].t()).mul_(h.sign())  # relu' = 1 where h > 0
        return {
            self.key("A1"): u.t() @ dh,
            self.key("c1"): dh.sum(dim=0),
            self.key("A2"): h.t() @ g,
            self.key("c2"): g.sum(dim=0),
        }


def synth_optimizer(name: str, momentum: float) -> Optimizer:
    if name == "adam":
        return Adam()
    if name == "sgd":
        return SGD(momentum=momentum)
    raise UsageError(
        f"unknown synthesizer optimizer {name!r}; valid: {', '.join(SYNTH_OPTIMIZERS)}"
    )


class SyntheticGradients:
    """Everything a synthetic-gradient rule keeps and does: one synthesizer per boundary, their
    parameters and optimiser state, and the step that turns a batch into weight updates.

    Created without a network; the boundaries and parameters are set up lazily on the first
    step (load_state_dict may come before it).
    """

    def __init__(
        self,
        rule: str,
        boundaries: Sequence[str],
        kind: str,
        hidden: int,
        lr: float,
        optimizer: str,
        momentum: float = 0.9,
        conditioned: bool = False,
    ):
        if isinstance(hidden, bool) or hidden < 1:
            raise UsageError(f"option {rule}.hidden must be a positive integer, got {hidden!r}")
        if not (lr >= 0 and math.isfinite(lr)):
            raise UsageError(f"option {rule}.synth_lr must be a finite number >= 0, got {lr!r}")
        self.rule, self.names, self.kind, self.hidden = rule, tuple(boundaries), kind, hidden
        self.lr, self.conditioned = lr, conditioned
        self.opt = synth_optimizer(optimizer, momentum)
        self.boundaries: list[str] | None = None
        self.synths: dict[str, Synthesizer] = {}
        self.theta: dict[str, Tensor] | None = None
        self.opt_state: dict[str, Any] | None = None
        self.oracle: Oracle | None = None
        self.net: Network | None = None  # the network last set up for (checked at each step)
        # A stack (speed/vmap_stack.py) sets a dict here on its own template: step then leaves
        # the synthesizers' gradients in it, and the stack's optimiser applies them to every
        # member at once outside torch.func.vmap (see TrainedSynthesizers in rules/dni.py).
        self.deferred: dict[str, Tensor] | None = None

    # ---- set-up -----------------------------------------------------------------------------
    def setup(self, net: Network) -> None:
        self.net = net
        self.boundaries = resolve_boundaries(net, self.names, self.rule)
        saved = [j for j in net.order if self.theta is not None and f"c[{j}]" in self.theta]
        if not self.names and saved and all(j in net.hidden for j in saved):
            # The default boundaries are chosen when the synthesizers are made: a resumed run
            # keeps those it was saved with (a run made before the default for networks with
            # convolutions became a single boundary goes on with its own).
            self.boundaries = saved
        extra = net.n_scores if self.conditioned else 0
        self.synths = {}
        for b in self.boundaries:
            size = net.groups[b].size
            self.synths[b] = Synthesizer(b, self.kind, size + extra, size, self.hidden)
        if self.theta is None:  # a new run; a resumed one brought its parameters already
            # Sized first: a synthesizer reading a large image group (a convolution's output)
            # is large, and its optimiser keeps up to two more copies.
            entries = sum(math.prod(s) for m in self.synths.values() for s in m.shapes().values())
            check_fits(self.rule, "its synthesizers and their optimiser state", 3 * entries, net)
            self.theta = {}
            for m in self.synths.values():
                self.theta.update(m.init(net.seed, net.dtype, net.device))
            self.opt_state = self.opt.init(self.theta)
            return
        shapes = {k: v for m in self.synths.values() for k, v in m.shapes().items()}
        bad = sorted(
            k
            for k in set(shapes) | set(self.theta)
            if k not in shapes or k not in self.theta or tuple(self.theta[k].shape) != shapes[k]
        )
        # (a stack's template carries no optimiser state: the stack steps it outside vmap)
        opt_keys = set(self.opt_state) if self.opt_state is not None else set(self.opt.init({}))
        if not bad and opt_keys != set(self.opt.init({})):
            bad = ["the optimiser state"]
        if bad and saved != self.boundaries and all(j in net.hidden for j in saved):
            raise UsageError(
                f"the saved state of rule {self.rule!r} has synthesizers at "
                f"{', '.join(saved) or 'no boundary'}, and these options put them at "
                f"{', '.join(self.boundaries) or 'no boundary'}; to go on with the saved ones, "
                f"give --rule-opt {self.rule}.boundaries={','.join(saved)}"
            )
        if bad:
            raise UsageError(
                f"the state of rule {self.rule!r} (saved, or made for another network) does "
                f"not fit this network and these options: {', '.join(bad)} differ; a rule "
                "object trains one network: make a new one for another"
            )

    # ---- one step ---------------------------------------------------------------------------
    def step(
        self,
        net: Network,
        x: Tensor,
        y: Tensor | None,
        trace: Trace | None = None,
        delta_o: Tensor | None = None,
    ) -> tuple[dict[str, Tensor], Trace, dict]:
        """Deltas for the batch, with the synthesizers trained one step toward what arrived.

        Returns (deltas, trace, metrics); the caller turns deltas into weight updates. With
        `delta_o` the output's delta comes from outside the loss (y is not needed unless the
        synthesizers are conditioned); `trace` is a training forward pass of x already run.
        """
        if self.boundaries is None or net is not self.net:
            self.setup(net)
        trace = trace if trace is not None else net.forward(x, train=True, labels=y)
        c = condition(net, y) if self.conditioned else None
        inputs: dict[str, Tensor] = {}
        predictions: dict[str, tuple[Tensor, Tensor | None]] = {}
        used: dict[str, Tensor] = {}  # the signal each boundary sent down

        def synthetic(b: str) -> Tensor:
            if self.oracle is not None:
                used[b] = self.oracle(net, trace, y, b)
            else:
                u = trace.z[b] if c is None else torch.cat([trace.z[b], c], dim=1)
                inputs[b] = u
                predictions[b] = self.synths[b].predict(self.theta, u)
                used[b] = predictions[b][0]
            return used[b]

        deltas, arriving = synthetic_sweep(net, trace, y, self.boundaries, synthetic, delta_o)
        metrics: dict[str, Tensor] = {}
        grads: dict[str, Tensor] = {}
        for b in self.boundaries:
            error = used[b] - arriving[b]
            metrics[f"synth_loss/{b}"] = 0.5 * error.pow(2).sum() / error.shape[0]
            if self.oracle is None:
                u, (_, h) = inputs[b], predictions[b]
                grads.update(self.synths[b].gradients(self.theta, u, h, error))
        if self.boundaries:
            metrics["synth_loss"] = sum(metrics.values()) / len(self.boundaries)
        if grads and self.deferred is not None:
            self.deferred.update(grads)
        elif grads:
            self.opt.update(self.theta, grads, self.opt_state, self.lr)
        return deltas, trace, metrics

    # ---- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Copies, so that later steps do not change a state already handed out."""
        if self.theta is None:
            return {}
        return {"theta": _copy(self.theta), "optimizer": _copy(self.opt_state)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state_dict(); an empty one means "no step taken yet"."""
        self.boundaries = None  # set up again, and checked against the network, on the next step
        if not state:
            self.theta = self.opt_state = None
            return
        if set(state) != {"theta", "optimizer"}:
            raise UsageError(
                f"not a state of rule {self.rule!r}: expected keys theta, optimizer, "
                f"got {', '.join(sorted(state))}"
            )
        self.theta, self.opt_state = _copy(state["theta"]), _copy(state["optimizer"])


def _copy(value: Any) -> Any:
    """A deep copy of nested dicts of tensors and numbers."""
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value

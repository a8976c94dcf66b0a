"""Forward gradients: the gradient estimated from directional derivatives along random tangents.

A forward pass and a forward tangent sweep (engine/tangent.py, the dual of the backward sweep)
give the directional derivative dE = (dE/dtheta) . v of the loss along a random tangent v at
the cost of about one more forward pass, with no backward pass at all. With v ~ N(0, I),
E[(g . v) v] = g, so (g . v) v is an unbiased estimate of the gradient g; its variance grows
with the dimension of v, and averaging K tangents divides it by K.

- mode "weight" (Baydin, Pearlmutter, Syme, Wood and Torr 2022, "Gradients without
  backpropagation"): v perturbs every weight and bias; the update is (mean over the batch of
  dE_n . v) v for every parameter. The dimension is the number of parameters.
- mode "activity" (Ren, Kornblith, Liao and Hinton 2023, "Scaling forward gradient with local
  losses"): v perturbs every hidden group's activity z_j, independently per example; the
  estimate of dE_n/dz_j is dE_n u_j, and the weights into j follow from it by the local
  algebra (delta_j = f_j'(s_j) * estimate, dE/dW_ij = z_i^T delta_j / N), as in the backward
  sweep. Groups nobody reads (the outputs) get the exact delta of their own loss, which is
  local to them. The dimension is the number of hidden units, not of weights: far less noise.
- local_losses (activity mode; Ren et al.'s local greedy variant): each hidden group j also
  feeds a linear head of its own, A_j (size_j, classes) + c_j, with the network's loss on it;
  the tangent at z_j then reaches j's head alone (the greedy, block-local objective: a block is
  one group here), and the heads learn from their exact gradient, with the rule's own Adam at
  head_lr. The network's own output layer keeps its exact local gradient.

Options: mode, tangents (K), local_losses, head_lr. The tangents come from the rule's own
generator (seeded by the network's seed, saved in state_dict, so a resumed run draws the same
ones), as do the heads.

Defaults: activity mode with one tangent (the cheapest; the variance it leaves is small enough
for Adam on digits and MNIST); weight mode learns too, more slowly (see docs/rules/fg.md).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from creditlab.engine.backward import local_delta, loss_signals, weight_updates
from creditlab.engine.kinds.base import Kind
from creditlab.engine.losses import loss
from creditlab.engine.tangent import directional_derivative, tangent_sweep
from creditlab.errors import UsageError
from creditlab.optim import Adam
from creditlab.rules.base import Option, Rule
from creditlab.rules.machinery.feedback import random_matrix, seed_for
from creditlab.rules.machinery.randomness import RuleGenerator
from creditlab.rules.machinery.space import SearchSpace, optimiser_space

Tensor = torch.Tensor


class ForwardGradient(Rule):
    name = "fg"
    summary = "forward gradient: directional derivatives along random tangents, no backward pass"
    any_kind = True  # every kind has a forward tangent
    recommended: ClassVar[dict[str, Any]] = {"optimizer": "adam", "lr": 0.0003}
    # Convolutions and capsules: more tangents and a larger step. A tangent perturbs every
    # activity, and a convolution's output has thousands: with 4 tangents LeNet reached 0.42
    # test accuracy after 2 epochs on 2,000 MNIST images (lr 1e-3; 0.29 at 3e-4, 0.36 at 3e-3),
    # with 16 0.63 (32: 0.70, at twice the cost); capsnet:small 0.47 with 4, 0.69 with 16
    # (docs/results/defaults.md).
    recommended_for: ClassVar[dict[str, dict[str, Any]]] = {
        family: {"lr": 0.001, "options": {"tangents": 16}} for family in ("conv", "capsule")
    }
    options: ClassVar[dict[str, Option]] = {
        "mode": Option(
            str,
            "activity",
            "what the tangents perturb: hidden activities (Ren et al. 2023) or weights "
            "(Baydin et al. 2022)",
            ("activity", "weight"),
        ),
        "tangents": Option(int, 4, "K >= 1 random tangents per batch, averaged"),
        "local_losses": Option(
            bool, False, "activity mode: a linear head and loss per hidden group (local greedy)"
        ),
        "head_lr": Option(float, 0.001, "Adam learning rate of the local heads (> 0)"),
    }
    search_space: ClassVar[SearchSpace] = {
        **optimiser_space(adam_lr=(1e-5, 3e-3), sgd_lr=(1e-4, 0.1)),
        "tangents": (1, 16, "log"),
    }

    def __init__(self, **opts: Any):
        super().__init__(**opts)
        o = self.opts
        if isinstance(o["tangents"], bool) or o["tangents"] < 1:
            raise UsageError(f"option fg.tangents must be an integer >= 1, got {o['tangents']!r}")
        if o["local_losses"] and o["mode"] != "activity":
            raise UsageError(
                "option fg.local_losses needs fg.mode=activity (the heads read activities)"
            )
        if not (math.isfinite(o["head_lr"]) and o["head_lr"] > 0):
            raise UsageError(f"option fg.head_lr must be a number > 0, got {o['head_lr']!r}")
        self.rng = RuleGenerator(offset=4241)
        self.heads: dict[str, dict[str, Tensor]] | None = None  # j -> {"A": ..., "c": ...}
        self.head_opt = Adam()
        self.head_state: dict[str, Any] | None = None
        self._pending_heads: dict[str, Any] | None = None

    def check(self, net):
        for j in net.order[1:]:
            kind = net.kind(j)
            if type(kind).tangent is Kind.tangent:
                raise UsageError(
                    f"rule 'fg' needs a forward tangent through every group; group {j!r} is "
                    f"{kind.name}, which has none"
                )
        if self.opts["local_losses"] and not net.loss_fn.classification:
            raise UsageError(
                "fg.local_losses gives each hidden group a classifier head; this network's "
                f"loss {net.loss_fn.name!r} is not a classification loss"
            )

    def updates(self, net, x, y):
        trace = net.forward(x, train=True, labels=y)
        self.last_loss = net.total_loss(trace, y)
        if self.opts["mode"] == "weight":
            return self._weight_perturbed(net, trace, y)
        if self.opts["local_losses"]:
            return self._local(net, trace, y)
        return self._activity_perturbed(net, trace, y)

    # ---- Baydin et al. 2022 ---------------------------------------------------------------
    def _weight_perturbed(self, net, trace, y):
        gen, K = self.rng.get(net), self.opts["tangents"]
        signals = loss_signals(net, trace, y)
        params = net.parameters()
        estimate = {k: torch.zeros_like(p) for k, p in params.items()}
        for _ in range(K):
            v = {k: _normal(p.shape, p, gen) for k, p in params.items()}
            dz = tangent_sweep(net, trace, params=v)
            slope = float(directional_derivative(net, trace, dz, signals).mean()) / K
            for k in params:
                estimate[k].add_(v[k], alpha=slope)
        return estimate

    # ---- Ren et al. 2023 ------------------------------------------------------------------
    def _activity_perturbed(self, net, trace, y):
        gen, K = self.rng.get(net), self.opts["tangents"]
        signals = loss_signals(net, trace, y)
        read = [j for j in net.order[1:] if net.outs(j)]  # groups whose activity others read
        estimate = {j: torch.zeros_like(trace.z[j]) for j in read}
        for _ in range(K):
            u = {j: _normal(trace.z[j].shape, trace.z[j], gen) for j in read}
            dE = directional_derivative(
                net, trace, tangent_sweep(net, trace, activities=u), signals
            )
            for j in read:  # dE_n u_j estimates dE_n/dz_j, example by example
                estimate[j].addcmul_(dE.unsqueeze(1), u[j], value=1.0 / K)
        deltas = {j: local_delta(net, trace, j, g) for j, g in estimate.items()}
        for o, signal in signals.items():
            if o not in deltas:  # nobody reads it: its own loss is local, its delta exact
                deltas[o] = local_delta(net, trace, o, signal)
        return weight_updates(net, trace, deltas)

    # ---- Ren et al.'s local greedy variant ------------------------------------------------
    def _local(self, net, trace, y):
        gen, K = self.rng.get(net), self.opts["tangents"]
        heads = self._heads(net)
        # A head's scores are flat: the margin loss of a capsule output reads capsules, so a
        # CapsNet's heads are softmax classifiers (the loss Ren et al.'s heads use).
        head_loss = loss("cross_entropy") if net.loss_fn.capsules else net.loss_fn
        deltas, head_grads = {}, {}
        for o, signal in loss_signals(net, trace, y).items():
            if not net.outs(o):
                deltas[o] = local_delta(net, trace, o, signal)
        for j, head in heads.items():
            z = trace.z[j]
            logits = torch.addmm(head["c"], z, head["A"])
            dlogits = head_loss.dz(logits, y)  # dL_j/dlogits per example
            # The head's exact gradient (it is local), and the forward gradient at z_j along
            # tangents u that reach the head alone: dL_j = dlogits . (u A).
            head_grads[j] = {
                "A": z.t() @ dlogits / z.shape[0],
                "c": dlogits.mean(dim=0),
            }
            estimate = torch.zeros_like(z)
            for _ in range(K):
                u = _normal(z.shape, z, gen)
                slope = (dlogits * (u @ head["A"])).sum(dim=1, keepdim=True)
                estimate.addcmul_(slope, u, value=1.0 / K)
            deltas[j] = local_delta(net, trace, j, estimate)
        for j, head in heads.items():
            self.head_opt.update(head, head_grads[j], self.head_state[j], self.opts["head_lr"])
        return weight_updates(net, trace, deltas)

    def _heads(self, net):
        if self.heads is None:
            n_classes = net.n_scores
            self.heads = {}
            for j in net.order[1:]:
                if j in {o.name for o in net.outputs} or not net.outs(j):
                    continue
                size = net.groups[j].size
                std = math.sqrt(2.0 / (size + n_classes))  # Glorot
                # Drawn from the seed, not from the tangents' generator: a resumed run draws
                # the same heads without moving the tangents' stream.
                A = random_matrix(net, (size, n_classes), std, "normal", seed_for(net, "fg", j))
                self.heads[j] = {"A": A, "c": torch.zeros_like(A[0])}
            self.head_state = {j: self.head_opt.init(h) for j, h in self.heads.items()}
            if self._pending_heads is not None:
                self._load_heads(self._pending_heads)
                self._pending_heads = None
        return self.heads

    # ---- state ----------------------------------------------------------------------------
    def state_dict(self):
        state = {}
        rng = self.rng.state()
        if rng is not None:
            state["rng"] = rng
        if self.heads is not None:
            state["heads"] = {
                j: {k: t.clone() for k, t in h.items()} for j, h in self.heads.items()
            }
            state["head_state"] = _clone(self.head_state)
        elif self._pending_heads is not None:
            state.update(self._pending_heads)
        return state

    def load_state_dict(self, state):
        unknown = set(state) - {"rng", "heads", "head_state"}
        if unknown:
            raise UsageError(f"rule 'fg' got an unknown state: {sorted(unknown)}")
        self.rng.load(state.get("rng"))
        if "heads" in state:
            heads = {"heads": state["heads"], "head_state": state["head_state"]}
            if self.heads is None:
                self._pending_heads = heads
            else:
                self._load_heads(heads)

    def _load_heads(self, saved):
        for j, head in self.heads.items():
            for k, t in head.items():
                t.copy_(saved["heads"][j][k])
        self.head_state = {
            j: _to_like(saved["head_state"][j], self.heads[j]["A"]) for j in self.heads
        }


def _normal(shape, like: Tensor, gen: torch.Generator) -> Tensor:
    return torch.randn(shape, generator=gen, dtype=like.dtype, device=like.device)


def _clone(value):
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    return value


def _to_like(value, like: Tensor):
    if isinstance(value, Tensor):
        return value.to(device=like.device, dtype=like.dtype if value.is_floating_point() else None)
    if isinstance(value, dict):
        return {k: _to_like(v, like) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_like(v, like) for v in value)
    return value

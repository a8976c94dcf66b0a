"""Learned inverse mappings: the feedback path of target propagation (Lee et al. 2015).

Target propagation runs on a chain of groups, input -> h1 -> ... -> hL -> output, each reading
the one below: z_k = f_k(z_i W_ik + b_k), with i the group k reads. The inverse of k maps k's
activity back to i's:

    g_k(z_k) = a(z_k V_k + c_k),  V_k of shape (size_k, size_i) (W_ik^T's shape), c_k of size_i,

where a is the activation of group i unless chosen otherwise. It is trained as a denoising
auto-encoder of i's activity through layer k, on a noise-corrupted reconstruction loss:

    z~_i = z_i + sigma * eps,  eps ~ N(0, I)      (a fresh draw per example and unit)
    u    = f_k(z~_i W_ik + b_k)                    (layer k's forward map, no dropout)
    r    = g_k(u)
    L_k  = 0.5 * mean over the batch of ||r - z~_i||^2

The forward weights are held fixed in L_k. Its gradients, written out (no autograd): with
e = r - z~_i and A = a'(u V_k + c_k) * e / N,

    dL_k/dV_k = u^T A,   dL_k/dc_k = sum over the batch of A.

All V_k and c_k live in one flat dict `theta` (names "V[k->i]", "c[k->i]") with one optimiser
state, so a checkpoint holds them whole. V_k starts Glorot-uniform (as the forward weights do),
drawn on the CPU in float64 from a generator seeded by the network's seed and the mapping's
name, so a seed gives the same inverses on any device and in any dtype; c_k starts at zero.
The noise comes from a generator on the network's device whose state is kept as well, so a
resumed run draws exactly the noise an uninterrupted one would.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import torch

from creditlab.engine.activations import Activation, activation
from creditlab.engine.network import Network
from creditlab.errors import UsageError
from creditlab.optim import SGD, Adam, Optimizer

Tensor = torch.Tensor
INVERSE_OPTIMIZERS = ("adam", "sgd")
NOISE_SEED_OFFSET = 7_919  # the noise generator's seed is the network's seed plus this


def chain(net: Network, rule: str) -> list[str]:
    """The groups of a chain network, input first; a UsageError naming the first group that
    reads other than exactly one group (a merge or skip connection) otherwise.

    When every non-input group reads exactly one group the graph is a tree rooted at the input,
    and since every group but the output is read by some group it has one leaf: a chain.
    """
    for j in net.order[1:]:
        ins = net.groups[j].ins
        if len(ins) != 1:
            raise UsageError(
                f"rule {rule!r} needs a chain network (each group reads exactly one group, "
                f"as in mlp:H1-H2-...), but group {j!r} reads {len(ins)} groups: "
                f"{', '.join(ins)}"
            )
    return list(net.order)


def mapping_names(k: str, i: str) -> tuple[str, str]:
    """The names of V_k and c_k for the inverse that maps group k back to group i."""
    return f"V[{k}->{i}]", f"c[{k}->{i}]"


class InverseMappings:
    """The inverses g_k for a list of (k, i) pairs, their optimiser and their noise.

    Created without a network; parameters are made lazily by `setup` (a state loaded before
    that, from a checkpoint, is checked against the network there and used instead).
    """

    def __init__(
        self,
        rule: str,
        act: str = "same",
        lr: float = 3e-3,
        optimizer: str = "adam",
        momentum: float = 0.9,
        sigma: float = 0.1,
    ):
        for key, value in (("inverse_lr", lr), ("sigma", sigma)):
            if not (math.isfinite(value) and value >= 0):
                raise UsageError(f"option {rule}.{key} must be a finite number >= 0, got {value!r}")
        if act != "same":
            activation(act)  # a bad name fails now, listing the valid ones
        if optimizer == "adam":
            self.opt: Optimizer = Adam()
        elif optimizer == "sgd":
            self.opt = SGD(momentum=momentum)
        else:
            raise UsageError(
                f"option {rule}.inverse_optimizer must be one of "
                f"{', '.join(INVERSE_OPTIMIZERS)}, got {optimizer!r}"
            )
        self.rule, self.act_name, self.lr, self.sigma = rule, act, lr, sigma
        self.pairs: list[tuple[str, str]] | None = None  # (k, i): g_k maps k back to i
        self.acts: dict[str, Activation] = {}
        self.theta: dict[str, Tensor] | None = None
        self.opt_state: dict[str, Any] | None = None
        self.rng: torch.Generator | None = None
        self._rng_state: Tensor | None = None  # a loaded generator state, set on setup

    # ---- set-up -----------------------------------------------------------------------------
    def setup(self, net: Network, pairs: list[tuple[str, str]]) -> None:
        self.pairs = list(pairs)
        self.acts = {
            k: net.groups[i].act if self.act_name == "same" else activation(self.act_name)
            for k, i in self.pairs
        }
        fresh = {}
        for k, i in self.pairs:
            v_name, c_name = mapping_names(k, i)
            size_k, size_i = net.groups[k].size, net.groups[i].size
            seed = net.seed * 1_000_003 + zlib.crc32(f"{self.rule}/{v_name}".encode())
            bound = math.sqrt(6.0 / (size_k + size_i))
            v = torch.rand(
                (size_k, size_i), generator=torch.Generator().manual_seed(seed), dtype=torch.float64
            )
            fresh[v_name] = v.mul_(2).sub_(1).mul_(bound).to(net.device, net.dtype)
            fresh[c_name] = torch.zeros(size_i, dtype=net.dtype, device=net.device)
        if self.rng is not None and self._rng_state is None:  # set up again: keep drawing on
            self._rng_state = self.rng.get_state()
        self.rng = torch.Generator(device=net.device).manual_seed(net.seed + NOISE_SEED_OFFSET)
        if self._rng_state is not None:
            self.rng.set_state(self._rng_state.cpu())
            self._rng_state = None
        if self.theta is None:  # a new run; a resumed one brought its parameters already
            self.theta, self.opt_state = fresh, self.opt.init(fresh)
            return
        bad = sorted(
            name
            for name in set(fresh) | set(self.theta)
            if name not in fresh
            or name not in self.theta
            or fresh[name].shape != self.theta[name].shape
        )
        if bad:
            raise UsageError(
                f"the state of rule {self.rule!r} (saved, or made for another network) does "
                f"not fit this network and these options: inverse parameters {', '.join(bad)} "
                "differ; a rule object trains one network: make a new one for another"
            )
        self.theta = {name: p.to(net.device, net.dtype) for name, p in self.theta.items()}

    # ---- the mapping and its training ---------------------------------------------------------
    def g(self, k: str, i: str, z_k: Tensor) -> Tensor:
        """g_k(z_k) = a(z_k V_k + c_k): group k's activity mapped back to group i."""
        v_name, c_name = mapping_names(k, i)
        return self.acts[k].f(torch.addmm(self.theta[c_name], z_k, self.theta[v_name]))

    def loss_and_gradients(
        self, net: Network, k: str, i: str, z_noisy: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """L_k and its gradients for V_k and c_k, given the corrupted activity z~_i."""
        v_name, c_name = mapping_names(k, i)
        act_k = net.groups[k].act
        u = act_k.f(torch.addmm(net.b[k], z_noisy, net.W[(i, k)]))
        pre = torch.addmm(self.theta[c_name], u, self.theta[v_name])
        r = self.acts[k].f(pre)
        e = r - z_noisy
        n = e.shape[0]
        loss = 0.5 * e.pow(2).sum() / n
        a_grad = self.acts[k].df(pre, r).mul_(e).div_(n)
        return loss, {v_name: u.t() @ a_grad, c_name: a_grad.sum(dim=0)}

    def train(self, net: Network, z: dict[str, Tensor]) -> dict[str, Tensor]:
        """One optimiser step on every L_k, each from a fresh corruption of the activity z_i
        the forward pass recorded; returns L_k per group k (before the step)."""
        losses: dict[str, Tensor] = {}
        grads: dict[str, Tensor] = {}
        for k, i in self.pairs:
            z_i = z[i]
            noise = torch.randn(z_i.shape, generator=self.rng, device=net.device, dtype=net.dtype)
            losses[k], g = self.loss_and_gradients(net, k, i, z_i + self.sigma * noise)
            grads.update(g)
        if grads:
            self.opt.update(self.theta, grads, self.opt_state, self.lr)
        return losses

    # ---- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.theta is None:
            return {}
        rng = self.rng.get_state() if self.rng is not None else self._rng_state
        return {"theta": dict(self.theta), "optimizer": self.opt_state, "rng": rng}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved state; an empty one means "nothing made yet" (a fresh start)."""
        self.pairs, self.rng = None, None  # checked against the network on the next step
        if not state:
            self.theta, self.opt_state, self._rng_state = None, None, None
            return
        if set(state) != {"theta", "optimizer", "rng"}:
            raise UsageError(
                f"not a state of rule {self.rule!r}: expected keys optimizer, rng, theta; "
                f"got {', '.join(sorted(state))}"
            )
        self.theta = {name: p.clone() for name, p in state["theta"].items()}
        self.opt_state = _clone(state["optimizer"])
        self._rng_state = state["rng"].clone()


def _clone(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return value

"""How closely a rule's updates align with the true gradient.

On a fixed probe batch, the rule's update for every parameter is compared with backpropagation's
gradient on the same batch and the same weights: the cosine between them and the angle in
degrees (0: the same direction, 90: orthogonal, above 90: against the gradient). For rules that
carry errors back along their own matrices, the angle between each W^T and the matrix used in
its place is reported too. Probing must not change the run: the rule's state and the network's
random generator are restored afterwards, so a run with probes takes exactly the steps of a run
without them.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from creditlab.engine.network import Network, weight_name
from creditlab.rules import GRADIENT_RULE, Rule, rule

Tensor = torch.Tensor


def cosine(u: Tensor, g: Tensor) -> float:
    """cos of the angle between two tensors taken as flat vectors; nan if either is zero."""
    u, g = u.reshape(-1).double(), g.reshape(-1).double()
    norms = float(u.norm() * g.norm())
    return float(u @ g) / norms if norms > 0 else math.nan


def angle(cos: float) -> float:
    """The angle in degrees for a cosine (nan stays nan)."""
    return math.degrees(math.acos(max(-1.0, min(1.0, cos)))) if math.isfinite(cos) else math.nan


def _clone(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


def probe(learner: Rule, net: Network, x: Tensor, y: Tensor) -> dict[str, Any]:
    """Per-parameter cosine and angle between learner's update and the bp gradient on (x, y)."""
    saved_state = _clone(learner.state_dict())
    saved_rng = net.rng.get_state()
    saved_loss, saved_metrics = learner.last_loss, dict(learner.metrics)
    try:
        update = learner.updates(net, x, y)
        net.rng.set_state(saved_rng)  # the same dropout masks for the reference
        gradient = rule(GRADIENT_RULE).updates(net, x, y)
        feedback = learner.feedback_matrices(net)
    finally:
        learner.load_state_dict(saved_state)
        net.rng.set_state(saved_rng)
        learner.last_loss, learner.metrics = saved_loss, saved_metrics
    cos = {name: cosine(update[name], g) for name, g in gradient.items()}
    names = list(gradient)
    cos["all"] = cosine(
        torch.cat([update[n].reshape(-1) for n in names]),
        torch.cat([gradient[n].reshape(-1) for n in names]),
    )
    record: dict[str, Any] = {"cos": cos, "angle": {k: angle(c) for k, c in cos.items()}}
    # W as the way back uses it (W^T for dense connections, the kernel itself for convolutions)
    weights = {
        weight_name(i, j): net.feedback_view(i, j)
        for j in net.order
        for i in net.groups[j].ins
        if net.kind(j).weighted
    }
    if feedback:
        record["feedback_angle"] = {
            name: angle(cosine(weights[name], b))
            for name, b in feedback.items()
            if name in weights and tuple(b.shape) == tuple(weights[name].shape)
        }
    return record

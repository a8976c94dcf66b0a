"""`creditlab explain`: the derivation of backpropagation, executed step by step on tiny networks.

The steps follow the derivation the engine is written in (see engine/backward.py):

    (a) one path i -> j -> k -> o, one unit each: dE/dW_ij by the chain rule, factor by factor;
    (b) several inputs: s_j = sum over i of z_i W_ij + b_j, and every W_ij shares delta_j;
    (c) several outputs: z_j reaches E through every unit k it feeds, so the paths add;
    (d) the general delta for groups in a DAG:
            delta_j = f_j'(s_j) * sum over k in outs(j) of delta_k W_jk^T;
    (e) the mini-batch rule dE/dW_ij = z_i^T delta_j (divided by the batch size N).

Every step is computed twice: by hand here, from the forward pass's s and z with the formula
written out (the derivatives f' are this module's own), and by the engine (engine/backward.py's
sweep and weight updates, which the bp rule runs); both are then checked against central finite
differences of the loss in float64, on the spot. A rule given by name (--rule) is then run on
the network and mini-batch of (d) and (e), and its updates are set beside bp's gradient
parameter by parameter, with the matrices it uses in W^T's place where it has such
(Rule.feedback_matrices). Rules are looked up by name in the registry; none is named here.

torch.autograd is never used here: finite differences are this module's check, and autograd is
the oracle in the tests (tests/test_explain.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from creditlab.engine.backward import error_sweep, weight_updates
from creditlab.engine.network import Network, Trace, bias_name, weight_name
from creditlab.errors import UsageError
from creditlab.rules import rule as make_rule
from creditlab.training.diagnostics import angle, cosine

Tensor = torch.Tensor
FD_EPS = 1e-6  # central differences in float64: truncation ~eps^2, round-off ~1e-16 / eps
FD_TOLERANCE = 1e-6  # relative to the largest entry of the parameter's gradient
HAND_TOLERANCE = 1e-12  # the hand formula and the engine do the same sums in another order
BATCH = 4  # examples in the mini-batch of (e)
STATE_SHOWN = 6  # tensors of a rule's state shown at most
PICTURE_FORMATS = (".svg", ".png", ".pdf")

# f'(s) written with z = f(s), as a student would: these are this module's own, not the
# engine's (engine/activations.py), so the hand numbers do not borrow the engine's derivatives.
DERIVATIVES: dict[str, tuple[str, Callable[[Tensor, Tensor], Tensor]]] = {
    "identity": ("1", lambda s, z: torch.ones_like(s)),
    "tanh": ("1 - z^2", lambda s, z: 1 - z * z),
    "sigmoid": ("z (1 - z)", lambda s, z: z * (1 - z)),
}


# ---- the results ------------------------------------------------------------------------------
@dataclass
class Step:
    """One step of the derivation: its network and batch, its printout and its numbers."""

    key: str  # "a" .. "e"
    title: str
    net: Network
    x: Tensor
    y: Tensor
    lines: list[str] = field(default_factory=list)
    hand: dict[str, Tensor] = field(default_factory=dict)  # dE/dparam by the written formula
    # engine/backward.py's sweep and weight updates, as the bp rule runs them
    engine: dict[str, Tensor] = field(default_factory=dict)
    fd: dict[str, Tensor] = field(default_factory=dict)  # central finite differences
    deltas: dict[str, Tensor] = field(default_factory=dict)  # delta_j by hand, per example
    engine_deltas: dict[str, Tensor] = field(default_factory=dict)
    trace: Trace | None = None

    @property
    def engine_error(self) -> float:
        """The largest difference between the hand-written numbers and the engine's."""
        return max(_diff(self.hand[n], self.engine[n]) for n in self.hand)

    @property
    def fd_error(self) -> float:
        """The largest difference from finite differences, relative to each parameter's
        largest entry (or absolute where that is below 1)."""
        return max(_diff(self.hand[n], self.fd[n]) / _scale(self.fd[n]) for n in self.hand)

    @property
    def ok(self) -> bool:
        """Both checks pass: hand = engine (to round-off) and hand = finite differences."""
        scale = max(_scale(g) for g in self.hand.values())
        return self.engine_error <= HAND_TOLERANCE * scale and self.fd_error <= FD_TOLERANCE


@dataclass
class Comparison:
    """A rule's updates beside bp's gradient on the network and mini-batch of (d)/(e)."""

    rule: str
    net: Network
    x: Tensor
    y: Tensor
    updates: dict[str, Tensor]
    gradient: dict[str, Tensor]
    cos: dict[str, float]
    angle: dict[str, float]
    # per weight name: (W^T, the matrix the rule uses in its place, the angle between them)
    feedback: dict[str, tuple[Tensor, Tensor, float]]
    # the largest difference between the rule's updates and step (d) run by hand with the
    # rule's matrices in W^T's place (None when the rule has no such matrices)
    reproduced: float | None
    lines: list[str] = field(default_factory=list)


@dataclass
class Explanation:
    """Everything `creditlab explain` computed; text() is what it prints."""

    seed: int
    steps: list[Step]
    comparison: Comparison | None = None
    picture: Path | None = None

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)

    def step(self, key: str) -> Step:
        return next(s for s in self.steps if s.key == key)

    def text(self) -> str:
        lines: list[str] = []
        for step in self.steps:
            lines += [*step.lines, ""]
        if self.comparison is not None:
            lines += [*self.comparison.lines, ""]
        return "\n".join(lines).rstrip() + "\n"


# ---- the networks -----------------------------------------------------------------------------
def _network(seed: int, groups: list[tuple[str, int, str, list[str]]]) -> Network:
    """A float64 network: the first entry is the input (name, size), the last the output (mse).

    Weights are the engine's own initial draw; biases are drawn too (small, nonzero), so that
    every term of the formulas shows a number.
    """
    net = Network(dtype=torch.float64, device="cpu", seed=seed)
    (name, size, _, _), *rest = groups
    net.input(size, name=name)
    for name, size, act, ins in rest:
        net.dense(ins, size, activation=act, name=name)
    net.output(rest[-1][0], loss="mse")
    g = torch.Generator().manual_seed(seed * 7919 + 11)
    for b in net.b.values():
        b.copy_((torch.rand(b.shape, generator=g, dtype=torch.float64) - 0.5) * 0.5)
    return net


def path_network(seed: int, n_inputs: int = 1, n_k: int = 1, n_o: int = 1) -> Network:
    """i -> j -> k -> o: j tanh, k sigmoid, o identity; j has one unit (steps a, b, c)."""
    return _network(
        seed,
        [
            ("i", n_inputs, "", []),
            ("j", 1, "tanh", ["i"]),
            ("k", n_k, "sigmoid", ["j"]),
            ("o", n_o, "identity", ["k"]),
        ],
    )


def dag_network(seed: int) -> Network:
    """x (3) -> a (3, tanh); b (2, sigmoid) reads x and a; c (2, identity) reads a and b."""
    return _network(
        seed,
        [
            ("x", 3, "", []),
            ("a", 3, "tanh", ["x"]),
            ("b", 2, "sigmoid", ["x", "a"]),
            ("c", 2, "identity", ["a", "b"]),
        ],
    )


def chain_network(seed: int) -> Network:
    """The DAG's groups as a plain chain x -> a -> b -> c, for rules that need a chain."""
    return _network(
        seed,
        [
            ("x", 3, "", []),
            ("a", 3, "tanh", ["x"]),
            ("b", 2, "sigmoid", ["a"]),
            ("c", 2, "identity", ["b"]),
        ],
    )


def _regression_batch(seed: int, net: Network, n: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed * 7919 + 23)
    x = torch.randn(n, net.input_size, generator=g, dtype=torch.float64)
    y = torch.rand(n, net.output_size, generator=g, dtype=torch.float64)
    return x, y


def _class_batch(seed: int, net: Network, n: int) -> tuple[Tensor, Tensor]:
    """Inputs and one-hot targets (so that rules that need class labels read them too)."""
    g = torch.Generator().manual_seed(seed * 7919 + 37)
    x = torch.randn(n, net.input_size, generator=g, dtype=torch.float64)
    labels = torch.arange(n) % net.output_size
    labels = labels[torch.randperm(n, generator=g)]
    return x, torch.nn.functional.one_hot(labels, net.output_size).to(torch.float64)


# ---- numbers ----------------------------------------------------------------------------------
def _diff(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max())


def _scale(t: Tensor) -> float:
    return max(1.0, float(t.abs().max()))


def num(v: float | Tensor) -> str:
    """A number as the printout shows it: signed, 6 significant digits."""
    return f"{float(v):+.6g}"


def short(v: float | Tensor) -> str:
    """A factor inside a written-out formula: signed, 4 decimals."""
    return f"{float(v):+.4f}"


def vec(t: Tensor, fmt: Callable = short) -> str:
    return "[" + ", ".join(fmt(v) for v in t.reshape(-1)) + "]"


def mat(t: Tensor, fmt: Callable = short) -> str:
    if t.dim() < 2:
        return vec(t, fmt)
    return "[" + ", ".join(vec(row, fmt) for row in t) + "]"


def finite_differences(net: Network, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """dE/dparam for every entry of every parameter by central differences of net.loss."""
    grads = {}
    for name, p in net.parameters().items():
        g = torch.zeros_like(p)
        flat, out = p.view(-1), g.view(-1)
        for n in range(flat.numel()):
            keep = float(flat[n])
            flat[n] = keep + FD_EPS
            up = net.loss(x, y)
            flat[n] = keep - FD_EPS
            down = net.loss(x, y)
            flat[n] = keep
            out[n] = (up - down) / (2 * FD_EPS)
        grads[name] = g
    return grads


def _engine_and_fd(step: Step) -> None:
    """The engine's numbers for a step (its backward sweep's deltas and weight updates), and
    the finite differences."""
    step.trace = step.net.forward(step.x, train=True)
    step.engine_deltas = error_sweep(step.net, step.trace, step.y)
    step.engine = weight_updates(step.net, step.trace, step.engine_deltas)
    step.fd = finite_differences(step.net, step.x, step.y)


def _verdict(step: Step) -> list[str]:
    fd_ok = step.fd_error <= FD_TOLERANCE
    scale = max(_scale(g) for g in step.hand.values())
    engine_ok = step.engine_error <= HAND_TOLERANCE * scale
    return [
        f"  by hand and by the engine: the same to {step.engine_error:.0e}"
        if engine_ok
        else f"  by hand and by the engine: DOES NOT MATCH: off by {step.engine_error:.1e}",
        f"  both against central finite differences (float64, eps {FD_EPS:g}): "
        + (
            f"matches finite differences to {step.fd_error:.0e}"
            if fd_ok
            else f"DOES NOT MATCH: off by {step.fd_error:.1e} (tolerance {FD_TOLERANCE:g})"
        ),
    ]


def _table(step: Step, labels: dict[str, list[str]]) -> list[str]:
    """Every entry of every parameter: by hand, by the engine, by finite differences."""
    lines = [f"  {'parameter':12s} {'by hand':>14s} {'engine':>14s} {'finite diff.':>14s}"]
    for name, hand in step.hand.items():
        for n, label in enumerate(labels[name]):
            h, e, f = (t.reshape(-1)[n] for t in (hand, step.engine[name], step.fd[name]))
            lines.append(f"  {label:12s} {num(h):>14s} {num(e):>14s} {num(f):>14s}")
    return lines


# ---- (a), (b), (c): units on a path -----------------------------------------------------------
def _unit(net: Network, j: str, u: int) -> str:
    """A unit's name: the group's for a one-unit group, else the group's with a number."""
    return j if net.groups[j].size == 1 else f"{j}{u + 1}"


def _path_step(key: str, title: str, intro: list[str], net: Network, seed: int) -> Step:
    """A chain i -> j -> k -> o written out unit by unit, for one example."""
    x, y = _regression_batch(seed, net, 1)
    step = Step(key, title, net, x, y)
    trace = net.forward(x)
    s, z = ({j: v[0] for j, v in d.items()} for d in (trace.s, trace.z))
    W, b = net.W, net.b
    L = step.lines
    L += [f"({key}) {title}", *intro]
    L.append(
        "  forward, s_j = sum over i of z_i W_ij + b_j and z_j = f_j(s_j):"
        + f"  x = z_i = {vec(z['i'])}, target y = {vec(y[0])}"
    )
    order = net.order
    for j in order[1:]:
        (i,) = net.groups[j].ins
        act = net.groups[j].act.name
        for u in range(net.groups[j].size):
            uj = _unit(net, j, u)
            terms = [f"z_{_unit(net, i, v)} W_{_unit(net, i, v)},{uj}" for v in range(z[i].numel())]
            nums = [f"({short(z[i][v])})({short(W[(i, j)][v, u])})" for v in range(z[i].numel())]
            L.append(f"    s_{uj} = {' + '.join(terms)} + b_{uj}")
            L.append(f"        = {' + '.join(nums)} + ({short(b[j][u])}) = {num(s[j][u])}")
            L.append(f"    z_{uj} = {act}(s_{uj}) = {num(z[j][u])}")
    o = net.output_name
    err = z[o] - y[0]
    E = 0.5 * float((err * err).sum())
    units_o = [_unit(net, o, u) for u in range(net.groups[o].size)]
    L.append(
        "    E = 1/2 "
        + " + 1/2 ".join(
            f"(z_{u} - y_{u})^2" if len(units_o) > 1 else "(z_o - y)^2" for u in units_o
        )
        + f" = {num(E)}"
    )

    # Backward: delta = dE/ds, unit by unit, from the output down.
    L.append("  backward, delta_j = dE/ds_j, from the output down:")
    delta: dict[str, Tensor] = {}
    for j in reversed(order[1:]):
        act = net.groups[j].act.name
        formula, df = DERIVATIVES[act]
        d_f = df(s[j], z[j])
        delta[j] = torch.zeros_like(s[j])
        for u in range(net.groups[j].size):
            uj = _unit(net, j, u)
            fprime = f"f_{uj}'(s_{uj}) = {formula} = {short(d_f[u])}"
            if j == o:
                yj = "y" if len(units_o) == 1 else f"y_{uj}"
                delta[j][u] = d_f[u] * err[u]
                L.append(f"    {fprime}   ({act})")
                L.append(
                    f"    delta_{uj} = f_{uj}'(s_{uj}) dE/dz_{uj} = f_{uj}'(s_{uj}) (z_{uj} - {yj})"
                    f" = ({short(d_f[u])})({short(err[u])}) = {num(delta[j][u])}"
                )
                continue
            (k,) = net.outs(j)
            n_k = net.groups[k].size
            terms = [f"W_{uj},{_unit(net, k, v)} delta_{_unit(net, k, v)}" for v in range(n_k)]
            nums = [f"({short(W[(j, k)][u, v])})({short(delta[k][v])})" for v in range(n_k)]
            delta[j][u] = d_f[u] * (W[(j, k)][u] * delta[k]).sum()
            L.append(f"    {fprime}   ({act})")
            if n_k == 1:
                L.append(
                    f"    delta_{uj} = f_{uj}'(s_{uj}) {terms[0]} = ({short(d_f[u])}){nums[0]}"
                    f" = {num(delta[j][u])}"
                )
            else:
                L.append(f"    delta_{uj} = f_{uj}'(s_{uj}) ({' + '.join(terms)})")
                L.append(
                    f"        = ({short(d_f[u])})({' + '.join(nums)}) = {num(delta[j][u])}"
                    f"   ({n_k} paths from {uj} to E, added)"
                )
    step.deltas = {j: d.unsqueeze(0) for j, d in delta.items()}

    # The gradients: dE/dW_ij = z_i delta_j, dE/db_j = delta_j.
    L.append("  gradients, dE/dW_ij = z_i delta_j and dE/db_j = delta_j:")
    labels: dict[str, list[str]] = {}
    for j in order[1:]:
        (i,) = net.groups[j].ins
        name = weight_name(i, j)
        step.hand[name] = torch.outer(z[i], delta[j])
        labels[name] = []
        for v in range(net.groups[i].size):
            for u in range(net.groups[j].size):
                ui, uj = _unit(net, i, v), _unit(net, j, u)
                labels[name].append(f"W_{ui},{uj}")
                L.append(
                    f"    dE/dW_{ui},{uj} = z_{ui} delta_{uj} = ({short(z[i][v])})"
                    f"({short(delta[j][u])}) = {num(step.hand[name][v, u])}"
                )
        step.hand[bias_name(j)] = delta[j].clone()
        labels[bias_name(j)] = [f"b_{_unit(net, j, u)}" for u in range(net.groups[j].size)]
    step.hand = {n: step.hand[n] for n in net.parameters()}  # the engine's order
    _engine_and_fd(step)
    L += _table(step, {n: labels[n] for n in step.hand})
    L += _verdict(step)
    return step


def one_path(seed: int) -> Step:
    net = path_network(seed)
    step = _path_step(
        "a",
        "One path: i -> j -> k -> o, one unit each, one example",
        [
            "  network: i (input) -> j (tanh) -> k (sigmoid) -> o (identity), "
            "loss E = 1/2 (z_o - y)^2",
        ],
        net,
        seed,
    )
    # The whole chain rule for W_ij in one product, factor by factor.
    trace = net.forward(step.x)
    z = {j: v[0, 0] for j, v in trace.z.items()}
    s = {j: v[0, 0] for j, v in trace.s.items()}
    W = {k: w[0, 0] for k, w in net.W.items()}
    fp = {j: DERIVATIVES[net.groups[j].act.name][1](s[j], z[j]) for j in ("j", "k", "o")}
    factors = [
        z["i"],
        fp["j"],
        W[("j", "k")],
        fp["k"],
        W[("k", "o")],
        fp["o"],
        z["o"] - step.y[0, 0],
    ]
    product = math.prod(float(f) for f in factors)
    at = step.lines.index("  gradients, dE/dW_ij = z_i delta_j and dE/db_j = delta_j:")
    step.lines[at:at] = [
        "  the chain rule along the path, for W_ij:",
        "    dE/dW_ij = ds_j/dW_ij dz_j/ds_j ds_k/dz_j dz_k/ds_k ds_o/dz_k dz_o/ds_o dE/dz_o",
        "             = z_i f_j'(s_j) W_jk f_k'(s_k) W_ko f_o'(s_o) (z_o - y)",
        "             = " + "".join(f"({short(f)})" for f in factors) + f" = {num(product)}",
        "    (the deltas above are this product's tails: delta_o = f_o'(s_o) (z_o - y), "
        "delta_k = f_k'(s_k) W_ko delta_o, delta_j = f_j'(s_j) W_jk delta_k)",
    ]
    return step


def several_inputs(seed: int) -> Step:
    return _path_step(
        "b",
        "Several inputs: i has 3 units, all feeding j",
        [
            "  network: i (3, input) -> j (1, tanh) -> k (1, sigmoid) -> o (1, identity), "
            "E = 1/2 (z_o - y)^2",
            "  s_j sums over its inputs, and ds_j/dW_i,j = z_i: every W_i,j shares j's delta_j and",
            "  differs only by its own input z_i. (A group reading several groups is the same sum,",
            "  over i in ins(j): step (d).)",
        ],
        path_network(seed, n_inputs=3),
        seed,
    )


def several_outputs(seed: int) -> Step:
    return _path_step(
        "c",
        "Several outputs: j feeds 2 units k1, k2, which feed 2 outputs o1, o2",
        [
            "  network: i (3, input) -> j (1, tanh) -> k (2, sigmoid) -> o (2, identity), "
            "E = 1/2 sum of (z_o - y_o)^2",
            "  z_j reaches E along every unit it feeds: dE/dz_j = sum over k of W_j,k delta_k,",
            "  the paths' contributions add.",
        ],
        path_network(seed, n_inputs=3, n_k=2, n_o=2),
        seed,
    )


# ---- (d), (e): groups in a DAG ----------------------------------------------------------------
def hand_sweep(
    net: Network,
    trace: Trace,
    y: Tensor,
    transport: Callable[[str, str], Tensor] | None = None,
    lines: list[str] | None = None,
) -> dict[str, Tensor]:
    """delta_j = f_j'(s_j) * sum over k in outs(j) of delta_k M_jk, per example, written out.

    M_jk is W_jk^T for backpropagation, or what `transport(j, k)` gives (a rule's matrix in
    W^T's place). The output's delta_o = f_o'(s_o) * (z_o - y) (the mse loss, per example).
    With `lines`, each group's formula and numbers (for the first example) are appended.
    """
    sym = "W" if transport is None else "M"
    transport = transport or (lambda j, k: net.W[(j, k)].T)
    deltas: dict[str, Tensor] = {}
    o = net.output_name
    for j in reversed(net.order[1:]):
        act = net.groups[j].act.name
        formula, df = DERIVATIVES[act]
        d_f = df(trace.s[j], trace.z[j])
        if j == o:
            deltas[j] = d_f * (trace.z[j] - y)
            if lines is not None:
                lines.append(
                    f"    delta_{j} = f_{j}'(s_{j}) * (z_{j} - y) = {vec(d_f[0])} * "
                    f"{vec(trace.z[j][0] - y[0])} = {vec(deltas[j][0])}   (f' = {formula})"
                )
            continue
        outs = net.outs(j)
        parts = {k: deltas[k] @ transport(j, k) for k in outs}
        deltas[j] = d_f * sum(parts.values())
        if lines is not None:
            written = " + ".join(f"delta_{k} {sym}_{j}{k}^T" for k in outs)
            lines.append(f"    delta_{j} = f_{j}'(s_{j}) * ({written})   (f' = {formula})")
            lines.append(
                f"        = {vec(d_f[0])} * ("
                + " + ".join(vec(p[0]) for p in parts.values())
                + f") = {vec(deltas[j][0])}"
            )
    return deltas


def hand_gradients(net: Network, trace: Trace, deltas: dict[str, Tensor]) -> dict[str, Tensor]:
    """dE/dW_ij = z_i^T delta_j / N and dE/db_j = (sum of delta_j over the batch) / N."""
    n = trace.z[net.input_name].shape[0]
    grads = {}
    for j in net.order[1:]:
        for i in net.groups[j].ins:
            grads[weight_name(i, j)] = trace.z[i].T @ deltas[j] / n
        grads[bias_name(j)] = deltas[j].sum(dim=0) / n
    return {name: grads[name] for name in net.parameters()}


def _dag_intro(net: Network) -> list[str]:
    ins = ", ".join(f"ins({j}) = {{{', '.join(net.groups[j].ins)}}}" for j in net.order[1:])
    outs = ", ".join(
        f"outs({j}) = {{{', '.join(net.outs(j))}}}" for j in net.order[1:] if net.outs(j)
    )
    return [
        "  network: x (3, input) -> a (3, tanh); b (2, sigmoid) reads x and a; "
        "c (2, identity, output) reads a and b; E = 1/2 ||z_c - y||^2",
        f"  {ins}",
        f"  {outs}",
    ]


def _forward_lines(net: Network, trace: Trace, row: int | None) -> list[str]:
    lines = []
    for j in net.order[1:]:
        terms = " + ".join(f"z_{i} W_{i}{j}" for i in net.groups[j].ins)
        act = net.groups[j].act.name
        if row is None:
            lines.append(f"    s_{j} = {terms} + b_{j},  z_{j} = {act}(s_{j})")
            continue
        lines.append(
            f"    s_{j} = {terms} + b_{j} = {vec(trace.s[j][row])},  "
            f"z_{j} = {act}(s_{j}) = {vec(trace.z[j][row])}"
        )
    return lines


def general_delta(seed: int) -> Step:
    net = dag_network(seed)
    x, y = _class_batch(seed, net, BATCH)
    step = Step("d", "The general delta: groups in a DAG, one example", net, x[:1], y[:1])
    trace = net.forward(step.x)
    L = step.lines
    L += [f"(d) {step.title}", *_dag_intro(net)]
    L.append(f"  x = z_x = {vec(step.x[0])}, target y = {vec(step.y[0])}")
    L.append("  the weights, as the way back uses them (W_jk^T, shape (size_k, size_j)):")
    for i, k in net.W:
        if i != net.input_name:
            L.append(f"    W_{i}{k}^T = {mat(net.W[(i, k)].T)}")
    L.append("  forward:")
    L += _forward_lines(net, trace, 0)
    L.append(
        "  backward, in reverse topological order; delta_j = f_j'(s_j) * "
        "sum over k in outs(j) of delta_k W_jk^T:"
    )
    step.deltas = hand_sweep(net, trace, step.y, lines=L)
    step.hand = hand_gradients(net, trace, step.deltas)
    _engine_and_fd(step)
    L.append("  the engine's backward sweep (engine/backward.py, error_sweep):")
    for j in reversed(net.order[1:]):
        d = step.engine_deltas[j]
        L.append(
            f"    delta_{j} = {vec(d[0])}   (by hand - engine: {_diff(d, step.deltas[j]):.0e}; "
            f"finite differences of b_{j}, dE/db_j = delta_j: {vec(step.fd[bias_name(j)], num)})"
        )
    L.append("  gradients, one example: dE/dW_ij = z_i^T delta_j (an outer product), dE/db_j:")
    L += _gradient_lines(step)
    L += _verdict(step)
    return step


def _gradient_lines(step: Step) -> list[str]:
    lines = []
    for name, g in step.hand.items():
        lines.append(f"    dE/d{name} = {mat(g, num)}")
        lines.append(
            f"      engine - hand: {_diff(step.engine[name], g):.0e}, "
            f"finite differences - hand: {_diff(step.fd[name], g):.0e}"
        )
    return lines


def mini_batch(seed: int) -> Step:
    net = dag_network(seed)
    x, y = _class_batch(seed, net, BATCH)
    step = Step("e", f"The mini-batch rule: the network of (d), {BATCH} examples", net, x, y)
    trace = net.forward(x)
    L = step.lines
    L += [
        f"(e) {step.title}",
        f"  E is the mean of the {BATCH} examples' losses. Stack each group's z_i and delta_j "
        f"as rows, one per example (Z_i: ({BATCH}, size_i), Delta_j: ({BATCH}, size_j)); then",
        f"    dE/dW_ij = (1/N) Z_i^T Delta_j = (1/N) sum over examples n of z_i^n^T delta_j^n,"
        f"  dE/db_j = (1/N) sum over n of delta_j^n, N = {BATCH}",
        f"  X = Z_x = {mat(x)}",
        f"  Y = {mat(y)}",
    ]
    step.deltas = hand_sweep(net, trace, y)
    L.append("  every example's deltas, by step (d)'s formula applied to each row:")
    for j in reversed(net.order[1:]):
        L.append(f"    Delta_{j} = {mat(step.deltas[j])}")
    step.hand = hand_gradients(net, trace, step.deltas)
    # The same sum written as a loop over examples, to show that the product is that sum.
    i, j = "a", "b"
    looped = sum(torch.outer(trace.z[i][n], step.deltas[j][n]) for n in range(BATCH)) / BATCH
    L += [
        f"  for instance dE/dW_{i}{j} = (1/{BATCH}) Z_{i}^T Delta_{j}, with",
        f"    Z_{i}^T = {mat(trace.z[i].T)}",
        f"    Delta_{j} = {mat(step.deltas[j])}",
        f"    dE/dW_{i}{j} = {mat(step.hand[weight_name(i, j)], num)}",
        f"    (the same as the loop over the examples of z_{i}^n^T delta_{j}^n / {BATCH}, "
        f"to {_diff(looped, step.hand[weight_name(i, j)]):.0e})",
    ]
    _engine_and_fd(step)
    L.append("  every parameter (engine: error_sweep and weight_updates on the batch):")
    L += _gradient_lines(step)
    L += _verdict(step)
    return step


# ---- a rule beside bp -------------------------------------------------------------------------
def _state_tensors(state, prefix: str = "") -> dict[str, Tensor]:
    """The floating-point tensors a rule keeps, by path (random generator states left out)."""
    found = {}
    items = state.items() if isinstance(state, dict) else ()
    for key, value in items:
        path = f"{prefix}{key}"
        if isinstance(value, Tensor) and value.is_floating_point():
            found[path] = value
        elif isinstance(value, dict):
            found.update(_state_tensors(value, path + "/"))
    return found


def compare_rule(name: str, opts: dict, seed: int) -> Comparison:
    """`name`'s updates beside bp's gradient on the network and mini-batch of (d) and (e),
    or on the same groups as a chain when the rule cannot train the DAG."""
    learner = make_rule(name, **opts)
    net = dag_network(seed)
    x, y = _class_batch(seed, net, BATCH)
    note: list[str] = []
    try:
        learner.check(net)
    except UsageError as err:
        chain = chain_network(seed)
        note = [
            f"  rule {name!r} cannot train the network of (d): {err}",
            "  so it is compared on the same groups as a chain, x -> a -> b -> c (weights drawn "
            "from the same seed), with the mini-batch of (e):",
        ]
        try:
            learner.check(chain)
        except UsageError as err2:
            raise UsageError(
                f"rule {name!r} cannot train the tiny dense networks `creditlab explain` uses: "
                f"{err}; and as a chain: {err2}"
            ) from None
        net = chain
    gradient = _engine_gradient(net, x, y)
    updates = learner.updates(net, x, y)
    cos = {n: cosine(updates[n], g) for n, g in gradient.items()}
    names = list(gradient)
    cos["all"] = cosine(
        torch.cat([updates[n].reshape(-1) for n in names]),
        torch.cat([gradient[n].reshape(-1) for n in names]),
    )
    matrices = learner.feedback_matrices(net)
    feedback = {}
    for i, k in net.W:
        key = weight_name(i, k)
        if key in matrices:
            WT = net.feedback_view(i, k)
            feedback[key] = (WT, matrices[key], angle(cosine(WT, matrices[key])))
    reproduced = None
    # Step (d) by hand with the rule's matrices in W^T's place, where every connection that
    # carries a delta down has one: does that give the rule's updates?
    if feedback and all(weight_name(j, k) in feedback for j, k in _hidden_connections(net)):
        trace = net.forward(x, train=True)
        deltas = hand_sweep(net, trace, y, transport=lambda j, k: feedback[weight_name(j, k)][1])
        by_hand = hand_gradients(net, trace, deltas)
        reproduced = max(_diff(by_hand[n], updates[n]) for n in names)
    comparison = Comparison(
        name,
        net,
        x,
        y,
        updates,
        gradient,
        cos,
        {k: angle(c) for k, c in cos.items()},
        feedback,
        reproduced,
    )
    comparison.lines = _comparison_lines(comparison, learner, note)
    return comparison


def _engine_gradient(net: Network, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Backpropagation's gradient, by the engine's sweep (what the bp rule returns)."""
    trace = net.forward(x, train=True)
    return weight_updates(net, trace, error_sweep(net, trace, y))


def _hidden_connections(net: Network) -> list[tuple[str, str]]:
    """The connections that carry a delta down: those out of a group that is not the input."""
    return [(i, k) for i, k in net.W if i != net.input_name]


def _comparison_lines(c: Comparison, learner, note: list[str]) -> list[str]:
    L = [f"(rule {c.rule}) {learner.summary or c.rule}"]
    L += note or [
        "  on the network of (d) with the mini-batch of (e), the same weights and numbers"
    ]
    tolerance = HAND_TOLERANCE * max(_scale(g) for g in c.gradient.values())
    from_bp = max(_diff(c.updates[n], g) for n, g in c.gradient.items())
    if from_bp <= tolerance:
        L.append(
            f"  its updates are bp's gradient (the same to {from_bp:.0e}): it does not depart "
            "from step (d)"
        )
    elif c.feedback:
        L.append("  the matrices it uses in W_jk^T's place (its feedback_matrices()):")
        for key, (WT, M, ang) in c.feedback.items():
            L.append(f"    {key}: W^T = {mat(WT)}")
            L.append(f"    {' ' * len(key)}  M   = {mat(M)}   angle to W^T {ang:.1f} degrees")
        if c.reproduced is not None and c.reproduced <= tolerance:
            L += [
                "  where it departs from step (d): M_jk stands in W_jk^T's place,",
                "    delta_j = f_j'(s_j) * sum over k in outs(j) of delta_k M_jk",
                "  (checked: step (d) by hand with M in W^T's place, then (e), gives the rule's "
                f"updates to {c.reproduced:.0e})",
            ]
        elif c.reproduced is not None:
            L.append(
                f"  step (d) by hand with M in W^T's place differs from its updates by "
                f"{c.reproduced:.1e}: it uses these matrices its own way (see its documentation)"
            )
        else:
            L.append(
                "  not every connection that carries a delta down has one, so they do not simply "
                "stand in step (d): it uses them its own way (see its documentation)"
            )
    else:
        L.append(
            "  it uses no matrix in W_jk^T's place (its feedback_matrices() is empty): it does "
            "not carry delta_k back through W_jk^T;"
        )
        L.append("  its updates below show where it departs, parameter by parameter.")
        kept = {k: t for k, t in _state_tensors(_safe_state(learner)).items() if "optim" not in k}
        if kept:
            L.append("  what it keeps between steps (its state, after this batch):")
            for key, t in list(kept.items())[:STATE_SHOWN]:
                shape = "x".join(map(str, t.shape)) or "scalar"
                L.append(f"    {key} ({shape}) = {mat(t) if t.numel() <= 24 else '...'}")
            if len(kept) > STATE_SHOWN:
                L.append(f"    ... and {len(kept) - STATE_SHOWN} more")
    if learner.applies_own_step:
        L.append(
            "  its update is a finished step, not an estimate of the gradient: training "
            "subtracts it as it is (plain SGD at rate 1, whatever optimiser was asked for)"
        )
    L.append("  its updates beside bp's gradient, grad = dE/dparam (a rule's update has its sign):")
    width = max(4, len(c.rule))
    for n, g in c.gradient.items():
        u = c.updates[n]
        zero = float(u.abs().max()) == 0.0
        how = (
            "the update is zero: no direction to compare"
            if zero
            else f"cos {c.cos[n]:+.4f}, angle {c.angle[n]:6.2f} degrees"
            + ("  (= the gradient)" if _diff(u, g) <= HAND_TOLERANCE * _scale(g) else "")
        )
        L.append(f"    {n:8s} {c.rule:>{width}s} {mat(u, num)}")
        L.append(f"    {'':8s} {'grad':>{width}s} {mat(g, num)}   {how}")
    all_cos = c.cos["all"]
    L.append(
        "  all parameters together: "
        + (
            f"cos {all_cos:+.4f}, angle {c.angle['all']:.2f} degrees"
            if math.isfinite(all_cos)
            else "no direction to compare"
        )
    )
    return L


def _safe_state(learner) -> dict:
    try:
        return learner.state_dict()
    except Exception:  # a state we only show; a rule that cannot give one shows none
        return {}


# ---- the command ------------------------------------------------------------------------------
def check_picture_path(out: str | Path, force: bool) -> Path:
    """The picture's path, refused before any work if it exists (without force), has a format
    we cannot write, or lies in a folder that does not exist or cannot be written."""
    path = Path(out)
    if path.suffix.lower() not in PICTURE_FORMATS:
        raise UsageError(
            f"--out {str(out)!r}: the picture is written as SVG, PNG or PDF; give a path ending "
            f"in {', '.join(PICTURE_FORMATS)}"
        )
    if path.is_dir():
        raise UsageError(f"--out {str(out)!r} is a folder; give a file path such as explain.svg")
    if path.exists() and not force:
        raise UsageError(f"--out {str(out)!r} exists; add --force to overwrite it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"--out {str(out)!r}: the folder {str(parent)!r} does not exist")
    if not _writable(path if path.exists() else parent):
        raise UsageError(f"--out {str(out)!r}: no permission to write there")
    return path


def _writable(path: Path) -> bool:
    import os

    return os.access(path, os.W_OK)


def explain(
    seed: int = 0,
    rule: str | None = None,
    rule_opts: dict | None = None,
    out: str | Path | None = None,
    force: bool = False,
) -> Explanation:
    """Run every step (and the rule's comparison, and the picture when `out` is given)."""
    if rule_opts and rule is None:
        raise UsageError("--rule-opt needs --rule (the options are the rule's)")
    if rule is not None:
        make_rule(rule, **(rule_opts or {}))  # an unknown rule or option fails before any work
    path = check_picture_path(out, force) if out is not None else None
    steps = [
        one_path(seed),
        several_inputs(seed),
        several_outputs(seed),
        general_delta(seed),
        mini_batch(seed),
    ]
    result = Explanation(seed, steps)
    if rule is not None:
        result.comparison = compare_rule(rule, rule_opts or {}, seed)
    if path is not None:
        from creditlab.explain_picture import draw

        try:
            draw(result.step("d"), path)
        except OSError as err:
            raise UsageError(f"--out {str(out)!r}: cannot write the picture: {err}") from None
        result.picture = path
    return result

"""The picture of `creditlab explain`: a network with each group's delta flowing backwards.

Groups stand left to right in topological order. Forward connections arc above (grey, W_ij);
the backward ones arc below (red), each labelled with what it carries down, delta_k W_jk^T,
and every group shows its own delta_j, the sum of what reaches it times f_j'(s_j). The output's
delta comes in from the loss on the right. Written with matplotlib (a dependency) as SVG, PNG or
PDF by the file's suffix; SVG keeps its text as text.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

SPACING = 3.8  # between neighbouring groups
BOX_W, BOX_H = 2.6, 1.0
RAD = -0.45  # arc3 bend: forward arcs above, backward ones below (both run with rad < 0)
FORWARD, BACKWARD = "#7a7a7a", "#c0392b"


def _vec(t) -> str:
    return "[" + ", ".join(f"{float(v):+.3f}" for v in t.reshape(-1)) + "]"


def _arc_middle(x1: float, x2: float, y: float) -> tuple[float, float]:
    """The middle of matplotlib's arc3 curve from (x1, y) to (x2, y): the quadratic Bezier's
    middle lies half way to its control point, offset by -rad * dx perpendicular."""
    return (x1 + x2) / 2, y - 0.5 * RAD * (x2 - x1)


def draw(step, path: Path) -> Path:
    """Draw step (d)'s network and deltas (its first example) to `path`."""
    net, deltas = step.net, step.deltas
    trace = step.trace
    order = net.order
    x = {j: n * SPACING for n, j in enumerate(order)}
    width = SPACING * (len(order) - 1) + 6.0
    # A bare Figure, not pyplot: no window, no global state changed for the caller.
    fig = Figure(figsize=(width * 0.95, 5.0))
    ax = fig.subplots()
    ax.set_aspect("equal")
    ax.axis("off")
    boxes = {}
    for j in order:
        g = net.groups[j]
        box = FancyBboxPatch(
            (x[j] - BOX_W / 2, -BOX_H / 2),
            BOX_W,
            BOX_H,
            boxstyle="round,pad=0.05",
            facecolor="#eef3fb" if not g.is_input else "#f4f4f4",
            edgecolor="#34495e",
            linewidth=1.2,
        )
        ax.add_patch(box)
        boxes[j] = box
        what = "input" if g.is_input else g.act.name
        ax.text(x[j], 0.22, j, ha="center", va="center", fontsize=13, fontweight="bold")
        ax.text(x[j], -0.02, f"{g.size} units, {what}", ha="center", va="center", fontsize=8)
        if j in deltas:
            ax.text(
                x[j],
                -0.27,
                f"δ_{j} = {_vec(deltas[j][0])}",
                ha="center",
                va="center",
                fontsize=7.5,
                color=BACKWARD,
            )
    for k in order[1:]:
        for i in net.groups[k].ins:
            ax.add_patch(
                FancyArrowPatch(
                    (x[i], 0),
                    (x[k], 0),
                    connectionstyle=f"arc3,rad={RAD}",
                    arrowstyle="-|>",
                    mutation_scale=12,
                    color=FORWARD,
                    linewidth=1.0,
                    patchA=boxes[i],
                    patchB=boxes[k],
                )
            )
            mx, my = _arc_middle(x[i], x[k], 0)
            ax.text(mx, my + 0.12, f"W_{i}{k}", ha="center", va="bottom", fontsize=8, color=FORWARD)
            if i == net.input_name:
                continue  # the input group receives no delta
            ax.add_patch(
                FancyArrowPatch(
                    (x[k], 0),
                    (x[i], 0),
                    connectionstyle=f"arc3,rad={RAD}",
                    arrowstyle="-|>",
                    mutation_scale=14,
                    color=BACKWARD,
                    linewidth=1.6,
                    patchA=boxes[k],
                    patchB=boxes[i],
                )
            )
            carried = deltas[k][0] @ net.W[(i, k)].T
            mx, my = _arc_middle(x[k], x[i], 0)
            ax.text(
                mx,
                my - 0.12,
                f"δ_{k} W_{i}{k}ᵀ = {_vec(carried)}",
                ha="center",
                va="top",
                fontsize=8,
                color=BACKWARD,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0},
            )
    o = net.output_name
    loss_x = x[o] + SPACING * 0.95
    ax.text(loss_x, 0, "E", ha="center", va="center", fontsize=14, fontweight="bold")
    ax.add_patch(
        FancyArrowPatch(
            (loss_x - 0.25, 0),
            (x[o], 0),
            arrowstyle="-|>",
            mutation_scale=14,
            color=BACKWARD,
            linewidth=1.6,
            patchB=boxes[o],
        )
    )
    dz = trace.z[o][0] - step.y[0]
    ax.text(
        (x[o] + loss_x) / 2 + 0.45,
        -0.22,
        f"dE/dz_{o} =\nz_{o} − y =\n{_vec(dz)}",
        ha="center",
        va="top",
        fontsize=7.5,
        color=BACKWARD,
    )
    span = SPACING * (len(order) - 1)
    # The longest connection arcs farthest from the row of groups.
    longest = max(x[k] - x[i] for k in order[1:] for i in net.groups[k].ins)
    height = 0.5 * -RAD * longest
    ax.set_xlim(-BOX_W, span + SPACING * 1.3)
    ax.set_ylim(-height - 0.6, height + 0.5)
    ax.set_title(
        "creditlab explain, step (d): δ_j = f_j'(s_j) * Σ over k in outs(j) of δ_k W_jkᵀ "
        f"(seed {net.seed}, one example)",
        fontsize=10,
    )
    # Text stays text in the SVG; a fixed salt for its element ids, so that the same seed
    # writes the same file.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "creditlab-explain"}):
        fig.savefig(path, bbox_inches="tight", metadata=_metadata(path))
    return path


def _metadata(path: Path) -> dict:
    """No creation date in the file, so the same seed writes the same picture."""
    suffix = path.suffix.lower()
    if suffix == ".svg":
        return {"Date": None}
    if suffix == ".pdf":
        return {"CreationDate": None}
    return {}

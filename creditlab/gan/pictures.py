"""Pictures and pages of a GAN run: sample grids, the epoch strip, loss and score curves, and
index.html, a self-contained page (every image inside it as a data: URI).

Everything is drawn from results.json's record and the per-epoch grids (uint8 arrays) and
nothing else. Figures use matplotlib's Figure directly (Agg, no pyplot), as report.py does.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from creditlab.compare.report import COLORS, STYLE
from creditlab.training.checkpoint import atomic_write

Tensor = torch.Tensor


def to_uint8(images: Tensor, image_shape: Sequence[int]) -> Tensor:
    """Images in [-1, 1], (N, pixels), as uint8 (N, H, W) on the CPU."""
    unit = (images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5
    return unit.round().to(torch.uint8).reshape(images.shape[0], *image_shape)


def tile(images: np.ndarray, cols: int = 8, pad: int = 2) -> np.ndarray:
    """(N, H, W) uint8 as one (rows * (H + pad), cols * (W + pad)) mosaic on a grey ground."""
    n, h, w = images.shape
    rows = -(-n // cols)
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), 96, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        out[top : top + h, left : left + w] = images[k]
    return out


def image_png(mosaic: np.ndarray, scale: float = 3.0) -> bytes:
    """A grey-level mosaic as a PNG, each pixel `scale` screen pixels, no axes."""
    h, w = mosaic.shape
    fig = Figure(figsize=(w * scale / 100, h * scale / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    return png_bytes(fig)


def grid_png(grid: Tensor) -> bytes:
    return image_png(tile(np.asarray(grid)))


def write_grid(path: Path, grid: Tensor) -> None:
    payload = grid_png(grid)
    atomic_write(path, lambda f: f.write(payload))


def strip_png(grids: list[Tensor], per_epoch: int = 10, max_rows: int = 40) -> bytes | None:
    """One row per epoch (the first `per_epoch` samples of the fixed batch): how they grew."""
    if not grids:
        return None
    step = max(1, -(-len(grids) // max_rows))
    chosen = list(range(0, len(grids), step))
    if chosen[-1] != len(grids) - 1:
        chosen.append(len(grids) - 1)
    rows = np.concatenate([np.asarray(grids[e][:per_epoch]) for e in chosen])
    return image_png(tile(rows, cols=per_epoch), scale=2.0)


def _figure(title: str, ylabel: str) -> tuple[Figure, Any]:
    fig = Figure(figsize=(7.5, 4.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, ax


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def loss_png(history: list[dict[str, Any]]) -> bytes | None:
    if not history:
        return None
    epochs = [h["epoch"] for h in history]
    fig, ax = _figure("losses (mean over the epoch's steps)", "loss")
    ax.plot(epochs, [h["d_loss"] for h in history], "o-", color=COLORS[0], label="D")
    ax.plot(epochs, [h["g_loss"] for h in history], "o-", color=COLORS[1], label="G")
    ax.legend()
    return png_bytes(fig)


def reference_lines(ax, references: dict[str, float]) -> None:
    ax.axhline(
        references["fid_train_vs_test"], color="#2ca02c", ls="--", label="floor: train vs test"
    )
    ax.axhline(
        references["fid_uniform_noise"], color="#7f7f7f", ls=":", label="ceiling: uniform noise"
    )


def fid_png(results: dict[str, Any]) -> bytes | None:
    history = results["history"]
    if not history:
        return None
    fig, ax = _figure("classifier FID against the test set (lower is better)", "FID")
    ax.plot(
        [h["epoch"] for h in history],
        [h["fid"] for h in history],
        "o-",
        color=COLORS[0],
        label=f"{results['rule_g']}/{results['rule_d']}",
    )
    reference_lines(ax, results["references"])
    ax.set_yscale("log")
    ax.legend()
    return png_bytes(fig)


def shares_png(results: dict[str, Any]) -> bytes | None:
    history = results["history"]
    if not history:
        return None
    shares = np.array([h["class_shares"] for h in history])
    fig, ax = _figure("class shares of the samples (mode coverage)", "share")
    bottom = np.zeros(len(history))
    epochs = [h["epoch"] for h in history]
    for c in range(shares.shape[1]):
        ax.bar(epochs, shares[:, c], bottom=bottom, color=COLORS[c % len(COLORS)], label=str(c))
        bottom += shares[:, c]
    ax.set_ylim(0, 1)
    ax.legend(ncol=5, fontsize=8, loc="lower right")
    return png_bytes(fig)


def page(title: str, intro: list[str], sections: list[tuple[str, str | bytes | None]]) -> str:
    """A self-contained HTML page: sections of (heading, PNG bytes or HTML text)."""
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        *[f"<p>{e(line)}</p>" for line in intro],
    ]
    for heading, body in sections:
        if body is None:
            continue
        out.append(f"<h2>{e(heading)}</h2>")
        if isinstance(body, bytes):
            data = base64.b64encode(body).decode("ascii")
            out.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{e(heading)}"></figure>'
            )
        else:
            out.append(body)
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def table_html(headers: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def epoch_rows(results: dict[str, Any]) -> list[list[str]]:
    return [
        [
            str(h["epoch"]),
            f"{h['d_loss']:.4f}",
            f"{h['g_loss']:.4f}",
            f"{h['fid']:.2f}",
            f"{h['confidence']:.3f}",
            f"{min(h['class_shares']):.3f} / {max(h['class_shares']):.3f}",
            f"{h['seconds']:.1f}",
            "; ".join(h["warnings"]),
        ]
        for h in results["history"]
    ]


EPOCH_HEADERS = [
    "epoch",
    "D loss",
    "G loss",
    "classifier FID",
    "confidence",
    "class share min / max",
    "s (training)",
    "warnings",
]


def render_run(results: dict[str, Any], grids: list[Tensor], out_dir: Path) -> None:
    """samples.png, epochs.png, loss.png, fid.png, shares.png and index.html in out_dir."""
    files: dict[str, bytes | None] = {
        "samples.png": grid_png(grids[-1]) if grids else None,
        "epochs.png": strip_png(grids),
        "loss.png": loss_png(results["history"]),
        "fid.png": fid_png(results),
        "shares.png": shares_png(results),
    }
    for name, payload in files.items():
        if payload is not None:
            atomic_write(out_dir / name, lambda f, p=payload: f.write(p))
    c, refs, judge = results["config"], results["references"], results["judge"]
    intro = [
        f"status: {results['status']}; {results['epochs']} of {c['epochs']} epochs; best "
        f"classifier FID {_fmt(results['best_fid'])} at epoch {results['best_epoch']}.",
        f"generator {c['generator']} ({c['activation_g']}, tanh output), rule {c['rule_g']}; "
        f"discriminator {c['discriminator']} ({c['activation_d']}), rule {c['rule_d']}; "
        f"{c['loss']} loss, k = {c['k']}, latent {c['latent']}, {c['optimizer']} lr "
        f"{c['lr']:g} (G {c['lr_g'] or c['lr']:g}, D {c['lr_d'] or c['lr']:g}), betas "
        f"{tuple(c['betas'])}, batch {c['batch_size']}, seed {c['seed']}, on {c['dataset']}.",
        f"judge: {judge['classifier']} (test accuracy {judge['test_accuracy']:.4f}, SHA-256 "
        f"{judge['sha256'][:16]}...). References: train vs test {refs['fid_train_vs_test']:.2f} "
        f"(floor), uniform noise {refs['fid_uniform_noise']:.2f} (ceiling).",
    ]
    if results["warnings"]:
        intro.append("warnings: " + " | ".join(results["warnings"]))
    sections = [
        ("samples (the latest epoch, a fixed latent batch)", files["samples.png"]),
        ("every epoch (rows: epochs, top first)", files["epochs.png"]),
        ("classifier FID", files["fid.png"]),
        ("losses", files["loss.png"]),
        ("class shares", files["shares.png"]),
        ("per epoch", table_html(EPOCH_HEADERS, epoch_rows(results))),
    ]
    title = f"GAN {results['rule_g']}/{results['rule_d']} on {results['dataset']}"
    text = page(title, intro, sections)
    atomic_write(out_dir / "index.html", lambda f: f.write(text.encode()))


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"

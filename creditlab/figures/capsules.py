"""Pictures of what a capsule network has learnt.

- recon.png (written by `creditlab train` for a network with a reconstruction output): test
  images in the top row of each pair, the decoder's reconstructions from the predicted capsule
  (the mask keeps the longest, as in evaluation) below them.
- `creditlab capsules --run DIR` draws Figure 4 of Sabour, Frosst and Hinton (2017): for a few
  test digits, each of the 16 dimensions of the predicted digit capsule is perturbed by -0.25
  to 0.25 in steps of 0.05 and the masked capsules are decoded; each row of a grid is one
  dimension, each column one perturbation (the middle one is the unperturbed reconstruction).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from creditlab.data import load_dataset, match_input_stats
from creditlab.data.augment import image_shape_of
from creditlab.engine.network import Network
from creditlab.errors import UsageError
from creditlab.training import checkpoint

STEPS = [round(-0.25 + 0.05 * k, 2) for k in range(11)]  # -0.25 .. 0.25


def reconstruction_output(net: Network) -> str | None:
    """The name of the output group with the reconstruction loss, if there is one."""
    return next((o.name for o in net.outputs if o.loss.target == "input"), None)


def mask_group(net: Network) -> str:
    masks = [j for j in net.order if net.groups[j].kind == "mask"]
    if not masks:
        raise UsageError("the network has no capsule mask to perturb (it is not a CapsNet)")
    return masks[0]


def _save(fig: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    checkpoint.atomic_write(path, lambda f: f.write(buffer.getvalue()))


def _pictures(images: torch.Tensor, shape: tuple[int, int, int]) -> np.ndarray:
    c, h, w = shape
    pics = images.detach().float().cpu().reshape(-1, c, h, w).permute(0, 2, 3, 1).numpy()
    return pics[..., 0] if c == 1 else pics.clip(0, 1)


@torch.no_grad()
def write_reconstructions(
    net: Network, x: torch.Tensor, image_shape: tuple[int, ...], path: Path, n: int = 10
) -> Path | None:
    """recon.png: n inputs above their reconstructions; None when the net reconstructs nothing."""
    out = reconstruction_output(net)
    if out is None or not len(x):
        return None
    shape = image_shape_of(tuple(image_shape), net.input_size)
    x = x[:n]
    recon = net.forward(x).z[out]
    fig = Figure(figsize=(1.2 * len(x), 2.6), layout="constrained")
    axes = fig.subplots(2, len(x), squeeze=False)
    for row, images in enumerate((x, recon)):
        for k, pic in enumerate(_pictures(images, shape)):
            axes[row, k].imshow(pic, cmap="gray", vmin=0, vmax=1)
            axes[row, k].set_axis_off()
    axes[0, 0].set_title("input", fontsize=8, loc="left")
    axes[1, 0].set_title("reconstruction", fontsize=8, loc="left")
    _save(fig, path)
    return path


@torch.no_grad()
def perturbation_grid(net: Network, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Decodings of one example's predicted capsule with each dimension perturbed by each of
    STEPS: (dims, len(STEPS), input size), and the predicted class."""
    m, out = mask_group(net), reconstruction_output(net)
    trace = net.forward(x[:1])
    masked = net.shaped(m, trace.z[m])[0]  # (n, d): only the predicted capsule is nonzero
    predicted = int(masked.norm(dim=1).argmax())
    dims = masked.shape[1]
    steps = torch.tensor(STEPS, dtype=net.dtype, device=net.device)
    tweaked = masked.repeat(dims * len(STEPS), 1, 1)  # (dims * steps, n, d)
    rows = torch.arange(dims, device=net.device).repeat_interleave(len(STEPS))
    tweaked[torch.arange(len(rows)), predicted, rows] += steps.repeat(dims)
    flat = tweaked.reshape(len(rows), -1)
    batch = x[:1].expand(len(rows), *x.shape[1:])
    # `emit` hands the mask's readers the perturbed capsules in place of the mask's output.
    decoded = net.forward(batch, emit=lambda j, z: flat if j == m else z).z[out]
    return decoded.view(dims, len(STEPS), -1), predicted


def load_run(run: str | Path) -> tuple[Network, dict]:
    """The network of a training run's folder with its best parameters, and its config."""
    run = Path(run)
    config_path, best_path = run / "config.json", run / "best.pt"
    if not config_path.exists() or not best_path.exists():
        raise UsageError(f"{run} holds no finished training run (config.json and best.pt)")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as err:
        raise UsageError(f"{config_path} is not a run's config ({err})") from None
    best = checkpoint.load(best_path)
    missing = [key for key in ("network", "params") if not isinstance(best.get(key), dict)]
    if missing or not isinstance(config, dict) or "dataset" not in config:
        what = f"has no {', '.join(missing)}" if missing else f"{config_path} names no dataset"
        raise UsageError(
            f"{best_path} is not a training run's best checkpoint ({what}); `creditlab "
            "capsules` draws from a `creditlab train` run of a capsule network"
        )
    net = Network.from_spec(best["network"], dtype=config.get("dtype", "float32"))
    net.load_parameters(best["params"])
    return net, config


def figure4(
    run: str | Path,
    out: str | Path | None = None,
    examples: int = 3,
    data_dir: str | Path | None = None,
) -> Path:
    """Figure 4 of the CapsNet paper for the run in `run`; returns the PNG's path. The test
    images come from `data_dir`, else from the folder the run recorded (when it is still
    there), else from where any run would find them ($CREDITLAB_DATA, the cache)."""
    net, config = load_run(run)
    if reconstruction_output(net) is None:
        raise UsageError(f"the network of {run} has no reconstruction output to decode with")
    recorded = config.get("data_dir")
    if data_dir is None and recorded and Path(recorded).is_dir():
        data_dir = recorded
    data = load_dataset(config["dataset"], data_dir, config.get("val_size"), False)
    data = match_input_stats(data, config.get("input_stats") or "raw")  # as the run saw them
    shape = image_shape_of(tuple(data.image_shape), data.input_size)
    x = data.test_x.to(net.dtype)
    dims = net.groups[mask_group(net)].shape[1]
    fig = Figure(figsize=(4.2 * examples, 4.2 * dims / len(STEPS) + 1.2), layout="constrained")
    panels = fig.subplots(1, examples, squeeze=False)[0]
    for k, ax in enumerate(panels):
        grid, predicted = perturbation_grid(net, x[k : k + 1])
        pics = _pictures(grid.reshape(-1, grid.shape[-1]), shape)
        dims, steps = grid.shape[:2]
        h, w = pics.shape[1:3]
        mosaic = pics.reshape(dims, steps, h, w).transpose(0, 2, 1, 3).reshape(dims * h, steps * w)
        ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([(s + 0.5) * w for s in range(steps)], [f"{v:+.2f}" for v in STEPS])
        ax.tick_params(axis="x", labelsize=5, rotation=90)
        ax.set_yticks([(d + 0.5) * h for d in range(dims)], [str(d) for d in range(dims)])
        ax.tick_params(axis="y", labelsize=6)
        ax.set_title(f"test example {k}, predicted {predicted}", fontsize=9)
    fig.suptitle("each dimension of the digit capsule (rows) perturbed by -0.25 .. 0.25 (columns)")
    path = Path(out) if out else Path(run) / "figure4.png"
    _save(fig, path)
    return path

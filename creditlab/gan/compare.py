"""Compare GANs trained by several generator/discriminator rule pairs over seeds.

Every pair on a seed starts from the same generator and discriminator weights, sees the same
real batches and is judged by the same classifier on the same fixed latent batch. Runs live in
OUT/runs/G-D-seedN (ordinary GAN run folders); running the same command again keeps finished
runs and resumes an unfinished one from its checkpoint. OUT gets results.json, table.md, the
classifier-FID curves with seed bands (fid.png), every pair's samples side by side
(samples.png) and index.html holding all of it.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from creditlab.compare.report import COLORS
from creditlab.compare.runs import seed_list
from creditlab.data import load_dataset
from creditlab.engine.devices import resolve_device
from creditlab.errors import UsageError
from creditlab.gan import pictures, scoring
from creditlab.gan.loop import GanConfig, GanTrainer
from creditlab.rules import DEFAULT_GAN_PAIRS, rule_class
from creditlab.training import checkpoint
from creditlab.training.trainer import differing_fields

__all__ = ["compare", "markdown_table", "pair_list", "seed_list"]


def pair_list(text: str) -> list[tuple[str, str]]:
    """'bp/bp,fa/fa' as [('bp', 'bp'), ('fa', 'fa')], every name checked."""
    pairs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        g, sep, d = item.partition("/")
        if not sep or not g or not d:
            raise UsageError(
                f"--rules needs GENERATOR/DISCRIMINATOR pairs like {DEFAULT_GAN_PAIRS[0]}, "
                f"got {item!r}"
            )
        rule_class(g)  # an unknown name fails here, listing the valid ones
        rule_class(d)
        pairs.append((g, d))
    if not pairs or len(set(pairs)) != len(pairs):
        raise UsageError(f"--rules needs distinct rule pairs, got {text!r}")
    return pairs


def run_dir(out: Path, pair: tuple[str, str], seed: int) -> Path:
    return out / "runs" / f"{pair[0]}-{pair[1]}-seed{seed}"


def compare(
    base: GanConfig,
    pairs: list[tuple[str, str]],
    seeds: list[int],
    out: Path,
    progress: bool = True,
    log=print,
) -> dict[str, Any]:
    data = load_dataset(base.dataset, base.data_dir, None, progress)
    judge = scoring.load_judge(
        data,
        scoring.data_folder_of(base.dataset, base.data_dir),
        resolve_device(base.device),
        progress,
        log,
    )
    runs = []
    for pair in pairs:
        for seed in seeds:
            config = dataclasses.replace(base, rule_g=pair[0], rule_d=pair[1], seed=seed)
            folder = run_dir(out, pair, seed)
            saved = _read_json(folder / "results.json")
            if saved is not None:
                current = config.to_dict()
                differ = differing_fields({k: saved["config"].get(k) for k in current}, current)
                if differ:
                    raise UsageError(
                        f"{folder} holds a run of another configuration ({'; '.join(differ)}); "
                        "choose another --out"
                    )
                if saved["status"] != "running":
                    log(f"{pair[0]}/{pair[1]} seed {seed}: {saved['status']}, kept")
                    runs.append(saved)
                    continue
            log(f"{pair[0]}/{pair[1]} seed {seed}")
            trainer = GanTrainer(config, folder, progress, log, data=data, judge=judge)
            trainer.restore()
            runs.append(trainer.fit())
    record = {
        "settings": {"command": shlex.join(["creditlab", *sys.argv[1:]]), "config": base.to_dict()},
        "pairs": ["/".join(p) for p in pairs],
        "seeds": seeds,
        "references": runs[0]["references"],
        "judge": runs[0]["judge"],
        "runs": runs,
    }
    checkpoint.write_json(out / "results.json", record)
    render(record, out)
    return record


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def rows(record: dict[str, Any]) -> list[list[str]]:
    table = []
    for pair in record["pairs"]:
        runs = [r for r in record["runs"] if f"{r['rule_g']}/{r['rule_d']}" == pair]
        last = [r["history"][-1] for r in runs if r["history"]]
        seconds = [s for r in runs for s in r["seconds_per_epoch"]]
        table.append(
            [
                pair,
                str(len(runs)),
                _mean_std([r["best_fid"] for r in runs]),
                _mean_std([h["fid"] for h in last]),
                _mean_std([min(h["class_shares"]) for h in last]),
                _mean_std([h["confidence"] for h in last]),
                f"{statistics.median(seconds):.1f}" if seconds else "n/a",
                ", ".join(sorted({r["status"] for r in runs})),
                str(sum(len(r["warnings"]) for r in runs)),
            ]
        )
    return table


HEADERS = [
    "G/D rules",
    "seeds",
    "best classifier FID",
    "final FID",
    "final smallest class share",
    "final confidence",
    "s/epoch (median)",
    "status",
    "warnings",
]


def markdown_table(record: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(record)]
    refs = record["references"]
    lines.append("")
    lines.append(
        f"References: train vs test {refs['fid_train_vs_test']:.2f} (floor), uniform noise "
        f"{refs['fid_uniform_noise']:.2f} (ceiling); judge: {record['judge']['classifier']}."
    )
    return "\n".join(lines)


def fid_curves_png(record: dict[str, Any]) -> bytes:
    """Classifier FID per epoch per pair: the mean over seeds, a band from lowest to highest."""
    fig = Figure(figsize=(7.5, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for n, pair in enumerate(record["pairs"]):
        runs = [r for r in record["runs"] if f"{r['rule_g']}/{r['rule_d']}" == pair]
        length = min((len(r["history"]) for r in runs), default=0)
        if not length:
            continue
        fids = np.array([[h["fid"] for h in r["history"][:length]] for r in runs])
        epochs = np.arange(1, length + 1)
        color = COLORS[n % len(COLORS)]
        ax.plot(epochs, fids.mean(axis=0), "o-", color=color, label=pair)
        if len(runs) > 1:
            ax.fill_between(epochs, fids.min(axis=0), fids.max(axis=0), color=color, alpha=0.2)
    pictures.reference_lines(ax, record["references"])
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("classifier FID")
    ax.set_title("classifier FID (mean over seeds, band: lowest to highest)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return pictures.png_bytes(fig)


def best_grid(run: dict[str, Any], folder: Path) -> np.ndarray | None:
    """The fixed latent batch's samples at the run's best epoch, from its checkpoint."""
    if not run["best_epoch"]:
        return None
    state = checkpoint.load(folder / "checkpoint.pt")
    return np.asarray(state["grids"][run["best_epoch"] - 1])


def samples_png(record: dict[str, Any], out: Path) -> bytes:
    """Every pair's best-epoch samples (first seed) side by side."""
    pairs = record["pairs"]
    cols = min(len(pairs), 5)
    rows = -(-len(pairs) // cols)
    fig = Figure(figsize=(3.2 * cols, 3.6 * rows), dpi=100, layout="constrained")
    seed = record["seeds"][0]
    for n, pair in enumerate(pairs):
        ax = fig.add_subplot(rows, cols, n + 1)
        run = next(
            r
            for r in record["runs"]
            if f"{r['rule_g']}/{r['rule_d']}" == pair and r["seed"] == seed
        )
        grid = best_grid(run, run_dir(out, tuple(pair.split("/")), seed))
        if grid is not None:
            ax.imshow(pictures.tile(grid), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        fid = "n/a" if run["best_fid"] is None else f"{run['best_fid']:.1f}"
        ax.set_title(f"{pair}: FID {fid} (epoch {run['best_epoch']})", fontsize=9)
        ax.set_axis_off()
    return pictures.png_bytes(fig)


def render(record: dict[str, Any], out: Path) -> None:
    files = {"fid.png": fid_curves_png(record), "samples.png": samples_png(record, out)}
    for name, payload in files.items():
        checkpoint.atomic_write(out / name, lambda f, p=payload: f.write(p))
    table = markdown_table(record)
    checkpoint.atomic_write(out / "table.md", lambda f: f.write((table + "\n").encode()))
    c = record["settings"]["config"]
    intro = [
        f"generator {c['generator']}, discriminator {c['discriminator']}, {c['loss']} loss, "
        f"k = {c['k']}, {c['optimizer']} lr {c['lr']:g}, batch {c['batch_size']}, "
        f"{c['epochs']} epochs, seeds {', '.join(map(str, record['seeds']))}, on {c['dataset']}.",
        table.splitlines()[-1],
        f"command: {record['settings']['command']}",
    ]
    warnings = [
        f"{r['rule_g']}/{r['rule_d']} seed {r['seed']}: {w}"
        for r in record["runs"]
        for w in r["warnings"]
    ]
    sections = [
        ("classifier FID", pictures.table_html(HEADERS, rows(record))),
        ("samples at each pair's best epoch (first seed)", files["samples.png"]),
        ("classifier FID per epoch", files["fid.png"]),
        (
            "warnings",
            pictures.table_html(["warning"], [[w] for w in warnings]) if warnings else None,
        ),
    ]
    text = pictures.page(f"GAN rule pairs on {c['dataset']}", intro, sections)
    checkpoint.atomic_write(out / "index.html", lambda f: f.write(text.encode()))

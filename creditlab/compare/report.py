"""The compare report: table.md, PNG plots and index.html, drawn from a compare's results.

Everything here reads the aggregated record that creditlab.compare.runs writes to
results.json and
nothing else, so a report can be drawn again from a folder on disk. index.html carries its
plots inside it as data: URIs and has no other outside reference, so it opens in any browser,
offline, even when copied away from its folder; the PNG files are written beside it as well.
Figures are drawn with matplotlib's Figure class directly (the Agg renderer, no pyplot), so
drawing never needs a display and never changes the caller's matplotlib backend.
"""

from __future__ import annotations

import base64
import html
import io
import math
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from creditlab.training.checkpoint import atomic_write

MIB = 2**20
COLORS = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


@dataclass
class Plot:
    file: str
    title: str
    caption: str
    png: bytes


# ---- reading the record --------------------------------------------------------------------
def runs_by_rule(record: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The runs grouped by rule, in the compare's order of rules."""
    groups: dict[str, list[dict[str, Any]]] = {name: [] for name in record["settings"]["rules"]}
    for run in record["runs"]:
        groups.setdefault(run["rule"], []).append(run)
    return groups


def probes(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Every alignment probe of a run, in order of training step."""
    return [p for epoch in run.get("history", []) for p in epoch.get("alignment", [])]


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _mean(values: Sequence[float | None]) -> float:
    values = _finite(values)
    return statistics.fmean(values) if values else math.nan


def _mean_std(values: Sequence[float | None], digits: int = 2) -> str:
    """Mean ± sample standard deviation over seeds; the mean alone for one seed."""
    values = _finite(values)
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _fmt(value: float | None, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if value is not None and math.isfinite(value) else "–"


def _seconds_per_epoch(run: dict[str, Any]) -> float:
    return _mean(run.get("seconds_per_epoch", []))


def _peak_mib(run: dict[str, Any]) -> float | None:
    value = (run.get("peak_memory") or {}).get("bytes")
    return value / MIB if value is not None else None


# ---- tables --------------------------------------------------------------------------------
def tables(record: dict[str, Any]) -> list[Table]:
    groups = runs_by_rule(record)
    memory = record["settings"].get("memory", "peak memory")
    memory_note = {
        "peak RSS": "peak RSS: the whole process's highest resident memory during the run "
        "(Linux VmHWM, reset before each run), so it includes Python, PyTorch and the data set; "
        "the largest over seeds.",
        "peak CUDA memory": "peak CUDA memory: the most GPU memory PyTorch had allocated during "
        "the run (torch.cuda.max_memory_allocated); the largest over seeds.",
    }.get(memory, "")
    notes = [n for r in record["runs"] if (n := (r.get("peak_memory") or {}).get("note"))]
    if notes:
        memory_note += f" For some runs the peak is {notes[0]}."

    summary = Table(
        "Results",
        ["rule", "runs", "test error (%)", "best val. epoch", "s / epoch", f"{memory} (MiB)"],
        [],
        [
            "test error: of the parameters of each run's best validation epoch, mean ± standard "
            "deviation over the seeds of the finished runs (diverged and stalled runs are counted "
            "under 'runs' and left out of the means).",
            "best val. epoch: mean over seeds. s / epoch: training time alone (no evaluation, "
            "no probes), mean over epochs and seeds.",
            memory_note,
        ],
    )
    for name, runs in groups.items():
        finished = [r for r in runs if r.get("status") == "finished"]
        failed = Counter(r.get("status", "?") for r in runs if r.get("status") != "finished")
        peaks = _finite([_peak_mib(r) for r in runs])
        summary.rows.append(
            [
                name,
                f"{len(runs)}"
                + (f" ({', '.join(f'{n} {st}' for st, n in failed.items())})" if failed else ""),
                _mean_std([100 * r["test_error"] for r in finished]),
                _fmt(_mean([r["best_epoch"] for r in finished]), 1),
                _fmt(_mean([_seconds_per_epoch(r) for r in runs]), 3),
                _fmt(max(peaks), 0) if peaks else "–",
            ]
        )

    alignment = Table(
        "Alignment with backprop at the last probe",
        ["rule", "step", "update vs gradient, all parameters (°)", "W^T vs feedback (°)"],
        [],
        [
            "The angle between the rule's update and the exact backprop gradient on the fixed "
            "probe batch, with the same weights (0°: the gradient's direction, 90°: orthogonal), "
            "taken over all parameters together, mean ± std over seeds.",
            "W^T vs feedback: for rules that send errors back along their own matrices, the "
            "angle between each W^T and the matrix used in its place, averaged over layers.",
        ],
    )
    for name, runs in groups.items():
        last = [ps[-1] for r in runs if (ps := probes(r))]
        if not last:
            continue
        feedback = [
            _mean(list(p["feedback_angle"].values())) for p in last if "feedback_angle" in p
        ]
        alignment.rows.append(
            [
                name,
                str(max(p["step"] for p in last)),
                _mean_std([p["angle"].get("all") for p in last], 1),
                _mean_std(feedback, 1) if feedback else "–",
            ]
        )

    per_run = Table(
        "Runs",
        [
            "rule",
            "seed",
            "status",
            "epochs",
            "test error (%)",
            "best val. epoch",
            "val. accuracy (%)",
            "s / epoch",
            f"{memory} (MiB)",
            "folder",
        ],
        [],
    )
    for name, runs in groups.items():
        for r in runs:
            per_run.rows.append(
                [
                    name,
                    str(r["seed"]),
                    r.get("status", "?"),
                    str(r.get("epochs", "–")),
                    _fmt(100 * r["test_error"]),
                    str(r.get("best_epoch", "–")),
                    _fmt(100 * r["val_accuracy"] if r.get("val_accuracy", -1) >= 0 else None),
                    _fmt(_seconds_per_epoch(r), 3),
                    _fmt(_peak_mib(r), 0),
                    r.get("dir", ""),
                ]
            )
    return [summary, alignment, per_run] if alignment.rows else [summary, per_run]


def markdown_table(table: Table) -> str:
    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [row(table.headers), "|" + "---|" * len(table.headers)]
    lines += [row(r) for r in table.rows]
    return "\n".join(lines)


def html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# ---- plots ---------------------------------------------------------------------------------
def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 3)
    return math.ceil(n / cols), cols


def val_accuracy_plot(record: dict[str, Any]) -> bytes | None:
    """Validation accuracy per epoch per rule: the mean over seeds, a band from the lowest to the
    highest seed."""
    fig = Figure(figsize=(7.5, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    drawn = False
    for k, (name, runs) in enumerate(runs_by_rule(record).items()):
        curves = [[h["val_accuracy"] for h in r.get("history", [])] for r in runs]
        curves = [c for c in curves if c]
        if not curves:
            continue
        acc = np.full((len(curves), max(map(len, curves))), np.nan)
        for i, c in enumerate(curves):
            acc[i, : len(c)] = 100 * np.asarray(c, dtype=float)
        epochs = np.arange(1, acc.shape[1] + 1)
        color = COLORS[k % len(COLORS)]
        label = f"{name} ({len(curves)} seed{'s' if len(curves) > 1 else ''})"
        ax.plot(epochs, np.nanmean(acc, axis=0), color=color, marker="o", ms=3, label=label)
        if len(curves) > 1:
            low, high = np.nanmin(acc, axis=0), np.nanmax(acc, axis=0)
            ax.fill_between(epochs, low, high, color=color, alpha=0.2, linewidth=0)
        drawn = True
    if not drawn:
        return None
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Validation accuracy: mean over seeds, band from lowest to highest seed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def _series(runs: list[dict[str, Any]], key: str) -> dict[str, tuple[list[int], list[float]]]:
    """Per parameter: the probe steps and the angle in probe[key] there, mean over seeds."""
    values: dict[str, dict[int, list[float]]] = {}
    for run in runs:
        for p in probes(run):
            for name, angle in p.get(key, {}).items():
                values.setdefault(name, {}).setdefault(p["step"], []).append(angle)
    return {
        name: (sorted(by_step), [_mean(by_step[s]) for s in sorted(by_step)])
        for name, by_step in values.items()
    }


def angle_plot(record: dict[str, Any], key: str, title: str, ylabel: str) -> bytes | None:
    """One subplot per rule, a line per layer (weight matrix) for the angle in probe[key],
    mean over seeds; for the update-vs-gradient angle, also the angle over all parameters."""
    panels = {}
    for name, runs in runs_by_rule(record).items():
        series = {
            p: s
            for p, s in _series(runs, key).items()
            if key != "angle" or p.startswith("W[") or p == "all"
        }
        if series:
            panels[name] = series
    if not panels:
        return None
    rows, cols = _grid(len(panels))
    fig = Figure(figsize=(4.6 * cols, 3.4 * rows + 0.5), dpi=100, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    top = max(max(_finite(v), default=0.0) for s in panels.values() for _, v in s.values())
    for ax, (name, series) in zip(axes.flat, panels.items(), strict=False):
        layers = [p for p in series if p != "all"]
        for k, layer in enumerate(layers):
            steps, angles = series[layer]
            ax.plot(steps, angles, color=COLORS[k % len(COLORS)], lw=1.2, label=layer)
        if "all" in series:
            steps, angles = series["all"]
            ax.plot(steps, angles, color="black", lw=1.8, ls="--", label="all parameters")
        ax.axhline(90, color="grey", lw=0.8, ls=":")
        ax.set_ylim(0, max(95.0, 1.05 * top))
        ax.set_title(name)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    return _png(fig)


PLOTS: list[tuple[str, str, str, Callable[[dict[str, Any]], bytes | None]]] = [
    (
        "val_accuracy.png",
        "Validation accuracy",
        "Validation accuracy after every epoch, per rule: the line is the mean over seeds, the "
        "band spans the lowest to the highest seed.",
        val_accuracy_plot,
    ),
    (
        "alignment.png",
        "Update vs. backprop gradient",
        "Every few steps, on a fixed probe batch, the angle between each weight matrix's update "
        "from the rule and the exact backprop gradient for the same batch and weights (mean over "
        "seeds). 0° is backprop's direction; 90° (dotted) is orthogonal to it.",
        lambda r: angle_plot(
            r, "angle", "Angle between the rule's update and the backprop gradient", "angle (°)"
        ),
    ),
    (
        "feedback_alignment.png",
        "W^T vs. feedback matrices",
        "For rules that send errors back along their own matrices: the angle between each W^T "
        "and the matrix used in its place (mean over seeds). Where that matrix is fixed and "
        "random (fa, dfa), two large random matrices are nearly orthogonal, so this angle starts "
        "near 90° and moves little even while the rule learns: the forward weights change by a "
        "small fraction of their size. What aligns is the update: see the angle between the "
        "rule's update and backprop's gradient in the plot above.",
        lambda r: angle_plot(
            r, "feedback_angle", "Angle between W^T and the feedback matrix", "angle (°)"
        ),
    ),
]


def plots(record: dict[str, Any]) -> list[Plot]:
    drawn = [(file, title, caption, draw(record)) for file, title, caption, draw in PLOTS]
    return [Plot(file, title, caption, png) for file, title, caption, png in drawn if png]


# ---- the documents -------------------------------------------------------------------------
def _title(record: dict[str, Any]) -> str:
    s = record["settings"]
    return f"creditlab compare: {', '.join(s['rules'])} on {s['config']['dataset']}"


def _setting_lines(record: dict[str, Any]) -> list[str]:
    s, c = record["settings"], record["settings"]["config"]
    lines = [
        f"Dataset {c['dataset']}, model {c['model']} ({c['activation']}, {c['loss']}), "
        f"{c['epochs']} epochs of batch {c['batch_size']}, optimizer {_per_rule(c['optimizer'])} "
        f"(lr {_per_rule(c['lr'])}, schedule {_per_rule(c['schedule'])}), {c['dtype']} on "
        f"{s['device']}.",
        f"Seeds {', '.join(map(str, s['seeds']))}: on each seed every rule starts from the same "
        "initial forward weights and sees the same batches in the same order.",
        f"Alignment probed every {c['probe_every']} steps on the first {c['probe_size']} "
        "training examples."
        if c.get("probe_every")
        else "No alignment probes (probe_every 0).",
        f"Started {s['started']}"
        + (f", finished {s['finished']}" if s.get("finished") else "")
        + f"; PyTorch {s['torch']}, Python {s['python']}, {s['platform']}.",
    ]
    for name, fields in s.get("rule_configs", {}).items():  # e.g. the best settings of a tune
        shown = ", ".join(f"{k} {v}" for k, v in fields.items())
        lines.append(f"{name} trains with its own settings: {shown or 'the shared ones'}.")
    done, total = len(record["runs"]), len(s["rules"]) * len(s["seeds"])
    if record.get("status") != "finished":
        lines.insert(0, f"This compare has not finished: {done} of {total} runs are in.")
    return lines


def _option_rows(record: dict[str, Any]) -> Table:
    s = record["settings"]
    table = Table("Rule options", ["rule", "option", "value", "set by"], [])
    for name in s["rules"]:
        given = s["rule_opts"].get(name, {})
        recommended = s.get("rule_recommended_options", {}).get(name, {})
        for key, value in s["rule_options"].get(name, {}).items():
            source = (
                "--rule-opt"
                if key in given
                else SOURCES["rule"]
                if key in recommended
                else "default"
            )
            table.rows.append([name, key, repr(value), source])
        # Training settings left unset take each rule's recommendation (settings.py).
        for key, (value, source) in s.get("rule_settings", {}).get(name, {}).items():
            table.rows.append([name, key, repr(value), SOURCES.get(source, source)])
    return table


SOURCES = {"user": "command line", "rule": "rule's recommendation", "default": "default"}


def _used_value(settings: dict[str, Any], key: str, value: Any) -> str:
    """A config field as the runs used it: a field left unset (None) took each rule's
    recommendation or the default, which the record keeps per rule; show those values."""
    if value is not None:
        return repr(value)
    used = {
        name: fields[key][0]
        for name, fields in settings.get("rule_settings", {}).items()
        if key in fields
    }
    if not used:
        return repr(value)
    if len(set(map(repr, used.values()))) == 1:
        return f"{next(iter(used.values()))!r} (every rule)"
    return ", ".join(f"{name}: {v!r}" for name, v in used.items())


def _per_rule(value: Any) -> str:
    """A compare setting; unset ones were each rule's recommendation."""
    return "per rule (see Rule options)" if value is None else str(value)


def markdown(record: dict[str, Any], plot_list: list[Plot]) -> str:
    parts = [f"# {_title(record)}", "", *_setting_lines(record), ""]
    for table in tables(record):
        parts += [f"## {table.title}", "", markdown_table(table), ""]
        parts += [f"- {n}" for n in table.notes if n] + ([""] if table.notes else [])
    options = _option_rows(record)
    if options.rows:
        parts += [f"## {options.title}", "", markdown_table(options), ""]
    parts += ["## Plots", ""] + [f"- [{p.title}]({p.file})" for p in plot_list]
    parts += ["", "Command:", "", "    " + record["settings"]["command"], ""]
    return "\n".join(parts)


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
td:not(:first-child) { font-variant-numeric: tabular-nums; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption, .note { color: #555; font-size: 0.9em; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; white-space: pre-wrap; }
"""


def html_page(record: dict[str, Any], plot_list: list[Plot]) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(_title(record))}</title><style>{STYLE}</style></head><body>",
        f"<h1>{e(_title(record))}</h1>",
    ]
    out += [f"<p>{e(line)}</p>" for line in _setting_lines(record)]
    for table in tables(record):
        out += [f"<h2>{e(table.title)}</h2>", html_table(table)]
        out += [f'<p class="note">{e(n)}</p>' for n in table.notes if n]
    for p in plot_list:
        data = base64.b64encode(p.png).decode("ascii")
        out += [
            f"<h2>{e(p.title)}</h2>",
            f'<figure><img src="data:image/png;base64,{data}" alt="{e(p.title)}" '
            f'data-file="{e(p.file)}"><figcaption>{e(p.caption)}</figcaption></figure>',
        ]
    s = record["settings"]
    out += ["<h2>Settings</h2>", "<p>Command:</p>", f"<pre>{e(s['command'])}</pre>"]
    options = _option_rows(record)
    if options.rows:
        out += [f"<h3>{e(options.title)}</h3>", html_table(options)]
    config = Table("Training configuration", ["field", "value"], [])
    config.rows = [[k, _used_value(s, k, v)] for k, v in s["config"].items()]
    out += [f"<h3>{e(config.title)}</h3>", html_table(config), "</body></html>"]
    return "\n".join(out) + "\n"


def render(record: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write the plots (PNG), table.md and index.html into out_dir; the paths written."""
    out_dir = Path(out_dir)
    plot_list = plots(record)
    written = []

    def write(name: str, payload: bytes) -> None:
        atomic_write(out_dir / name, lambda f: f.write(payload))
        written.append(out_dir / name)

    for p in plot_list:
        write(p.file, p.png)
    write("table.md", markdown(record, plot_list).encode())
    write("index.html", html_page(record, plot_list).encode())
    return written

"""The tune's own report, beside the compare report of the retrained best: tune.json (every
trial), tune.md and tune.html (the best configuration and search time of each rule, every
trial) and search_curves.png (best validation accuracy against trials, per rule).

Drawn with report.py's tables, style and Agg figures, so both pages look alike and tune.html,
like index.html, carries its picture inside it and opens offline.
"""

from __future__ import annotations

import base64
import datetime
import html
import math
import platform
import statistics
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from creditlab.compare import report
from creditlab.compare.report import Table, html_table, markdown_table
from creditlab.training.checkpoint import atomic_write

STATUSES = ("running", "paused", "stopped", "finished", "stalled", "diverged", "error", "new")


def new_record(kind, base, rules, trials, seeds, asha, fixed, where, command) -> dict[str, Any]:
    config = {k: v for k, v in base.to_dict().items() if k not in ("rule", "rule_opts", "seed")}
    return {
        "kind": kind,
        "status": "searching",
        "settings": {
            "rules": list(rules),
            "trials": trials,
            "epochs": base.epochs,
            "grace_epochs": asha.grace,
            "eta": asha.eta,
            "milestones": asha.milestones,
            "seeds": list(seeds),
            "search_seed": base.seed,
            "fixed_options": fixed,
            "config": config,
            "where": where,
            "command": command,
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "rules": {name: {} for name in rules},
    }


def best_trial(trials):
    """The trial with the best validation accuracy so far (the first on a tie), leaving out
    trials that diverged or failed."""
    done = [t for t in trials if t.curve and t.status not in ("diverged", "error")]
    return max(done, key=lambda t: (t.best, -t.index)) if done else None


def fill(record: dict[str, Any], trials: dict[str, list]) -> dict[str, Any]:
    """Every trial's record, each rule's best and search time, into record; the best trials."""
    best = {}
    for name, rule_trials in trials.items():
        entry = record["rules"][name]
        entry["trials"] = [t.record() for t in rule_trials]
        entry["search_seconds"] = sum(t.seconds for t in rule_trials)
        entry["epochs_trained"] = sum(t.epochs for t in rule_trials)
        top = best_trial(rule_trials)
        if top is not None:
            best[name] = top
            entry["best"] = {
                "trial": top.name,
                "val_accuracy": top.best,
                "epochs": top.epochs,
                "params": top.params,
                "config": top.config.to_dict(),
            }
    return best


def status_table(trials: dict[str, list]) -> str:
    """A Ray-Tune-style status: per rule, how many trials are in each state, and the best."""
    lines = ["== Status =="]
    for name, rule_trials in trials.items():
        counts = {s: sum(t.status == s for t in rule_trials) for s in STATUSES}
        text = " | ".join(f"{n} {s.upper()}" for s, n in counts.items() if n)
        top = best_trial(rule_trials)
        lead = f"; best {top.name}: val acc {top.best:.4f} {_params(top.params)}" if top else ""
        lines.append(f"{name}: {text}{lead}")
    return "\n".join(lines)


def _params(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def _test_error(errors: dict[str, float]) -> str:
    values = [100 * e for e in errors.values()]
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "not yet"
    return f"{statistics.mean(values):.2f} +- {statistics.stdev(values):.2f}"


# ---- tables and the picture ----------------------------------------------------------------
def tables(record: dict[str, Any]) -> list[Table]:
    s = record["settings"]
    best = Table(
        "Best configuration per rule",
        [
            "rule",
            "best trial",
            "val accuracy",
            "epochs",
            "settings",
            "search time",
            "epochs trained",
            "test error (%), retrained",
        ],
        [],
        [
            f"Search time: the time its {s['trials']} trials trained, summed over the workers "
            f"(the sweep of all rules took {_minutes(s.get('sweep_seconds', 0))} of wall time). "
            "Epochs trained: by all its trials together. Test error: mean +- std over the seeds "
            "of the best settings trained again (index.html)."
        ],
    )
    trials = Table(
        "Every trial", ["trial", "status", "epochs", "best val accuracy", "settings"], []
    )
    for name, entry in record["rules"].items():
        b = entry.get("best")
        best.rows.append(
            [
                name,
                b["trial"],
                f"{b['val_accuracy']:.4f}",
                str(b["epochs"]),
                _params(b["params"]),
                _minutes(entry["search_seconds"]),
                str(entry["epochs_trained"]),
                _test_error(entry.get("test_errors", {})),
            ]
            if b
            else [name, "none", "", "", "", _minutes(entry.get("search_seconds", 0)), "", ""]
        )
        for t in entry.get("trials", []):
            value = "" if math.isnan(t["best_val_accuracy"]) else f"{t['best_val_accuracy']:.4f}"
            trials.rows.append(
                [t["name"], t["status"], str(t["epochs"]), value, _params(t["params"])]
            )
    return [best, trials]


def search_curves(record: dict[str, Any]) -> bytes | None:
    """Best validation accuracy so far against the number of trials, one line per rule."""
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    drawn = False
    for k, (name, entry) in enumerate(record["rules"].items()):
        values = [t["best_val_accuracy"] for t in entry.get("trials", [])]
        xs, ys, top = [], [], -math.inf
        for i, v in enumerate(values, 1):
            if not math.isnan(v):
                top = max(top, v)
            if top > -math.inf:
                xs.append(i)
                ys.append(top)
        if xs:
            ax.step(
                xs,
                ys,
                where="post",
                marker="o",
                ms=3,
                label=name,
                color=report.COLORS[k % len(report.COLORS)],
            )
            drawn = True
    if not drawn:
        return None
    ax.set_xlabel("trials (in the order drawn)")
    ax.set_ylabel("best validation accuracy so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return report._png(fig)


# ---- the documents -------------------------------------------------------------------------
def _lines(record: dict[str, Any]) -> list[str]:
    s, c = record["settings"], record["settings"]["config"]
    return [
        f"{s['trials']} trials per rule on {c['dataset']}, model {c['model']} ({c['activation']}), "
        f"up to {s['epochs']} epochs of batch {c['batch_size']}, optimizer {c['optimizer']}; "
        f"judged on the validation split.",
        f"ASHA for every rule: milestones at epochs {s['milestones'] or 'none'}, reduction "
        f"factor {s['eta']}; the best trial of each rule retrained on seeds "
        f"{', '.join(map(str, s['seeds']))} (the compare report: index.html).",
        f"Ran on {s['where']}; started {s['started']}; PyTorch {s['torch']}, Python "
        f"{s['python']}, {s['platform']}.",
    ]


def markdown(record: dict[str, Any]) -> str:
    parts = [f"# creditlab tune: {', '.join(record['settings']['rules'])}", "", *_lines(record)]
    for table in tables(record):
        parts += ["", f"## {table.title}", "", markdown_table(table), ""]
        parts += [f"- {n}" for n in table.notes]
    parts += ["", "![search curves](search_curves.png)", ""]
    parts += ["Command:", "", "    " + record["settings"]["command"], ""]
    return "\n".join(parts)


def html_page(record: dict[str, Any], png: bytes | None) -> str:
    e = html.escape
    title = f"creditlab tune: {', '.join(record['settings']['rules'])}"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{report.STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        *[f"<p>{e(line)}</p>" for line in _lines(record)],
        '<p><a href="index.html">The retrained best configurations on the test set</a></p>',
    ]
    best, trials = tables(record)
    out += [f"<h2>{e(best.title)}</h2>", html_table(best)]
    out += [f'<p class="note">{e(n)}</p>' for n in best.notes]
    if png:
        data = base64.b64encode(png).decode("ascii")
        out += [
            "<h2>Search curves</h2>",
            f'<figure><img src="data:image/png;base64,{data}" alt="search curves" '
            'data-file="search_curves.png"><figcaption>Best validation accuracy against '
            "trials, per rule.</figcaption></figure>",
        ]
    out += [f"<h2>{e(trials.title)}</h2>", html_table(trials)]
    out += ["<p>Command:</p>", f"<pre>{e(record['settings']['command'])}</pre>"]
    return "\n".join(out) + "\n</body></html>\n"


def render(record: dict[str, Any], out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    png = search_curves(record)
    files = {"tune.md": markdown(record).encode(), "tune.html": html_page(record, png).encode()}
    if png:
        files["search_curves.png"] = png
    for name, payload in files.items():
        atomic_write(out_dir / name, lambda f, p=payload: f.write(p))
    return [out_dir / name for name in files]

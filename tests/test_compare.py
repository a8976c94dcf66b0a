"""`creditlab compare`: every file of the report, a report a browser shows whole, resuming
without redoing finished runs, run folders kept safe, and bad input refused before training."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from creditlab import cli
from creditlab.compare import runs as compare
from creditlab.errors import UsageError
from creditlab.rules import RULES, Option, Rule
from creditlab.rules.bp import Backprop
from creditlab.training import settings
from creditlab.training.trainer import Trainer

PNG = b"\x89PNG\r\n\x1a\n"
PLOTS = ("val_accuracy.png", "alignment.png", "feedback_alignment.png")
# Tiny runs: 1000 digits in batches of 25, a probe every 20 of the 40 steps of an epoch. (Fewer
# steps leave some rules near chance, and such runs are marked stalled.)
TINY = [
    "--dataset",
    "digits",
    "--train-subset",
    "1000",
    "--batch-size",
    "25",
    "--epochs",
    "2",
    "--model",
    "mlp:32-32",
    "--probe-every",
    "20",
    "--probe-size",
    "64",
    "--quiet",
]


class ScaledBackprop(Rule):
    """A test rule: backprop's gradient times `scale` (scale 1e12 makes a run diverge), with W^T
    itself as its "feedback matrices", and an option checked against the network."""

    name = "scaled_bp"
    summary = "test rule: the bp gradient times a scale"
    options: ClassVar[dict[str, Option]] = {
        "scale": Option(float, 0.5, "factor on the gradient"),
        "group": Option(str, "", "a group that must exist in the network"),
    }

    def updates(self, net, x, y):
        if self.opts["group"] and self.opts["group"] not in net.groups:
            raise UsageError(f"option scaled_bp.group: no group {self.opts['group']!r}")
        bp = Backprop()
        gradient = bp.updates(net, x, y)
        self.last_loss = bp.last_loss
        return {name: self.opts["scale"] * g for name, g in gradient.items()}

    def feedback_matrices(self, net):
        return {n: p.t().clone() for n, p in net.parameters().items() if n.startswith("W[h")}


@pytest.fixture
def scaled_bp(monkeypatch):
    monkeypatch.setitem(RULES, "scaled_bp", ScaledBackprop)


def existing_default_rules() -> list[str]:
    return [name for name in compare.DEFAULT_RULES if name in RULES]


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    """One compare, shared by the tests that read its files."""
    out = tmp_path_factory.mktemp("compare") / "report"
    rules = [*existing_default_rules(), "scaled_bp"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(RULES, "scaled_bp", ScaledBackprop)
        args = ["compare", *TINY, "--rules", ",".join(rules), "--seeds", "2", "--out", str(out)]
        assert cli.main([*args, "--rule-opt", "scaled_bp.scale=0.25"]) == 0
    return out


def test_compare_writes_every_file(report_dir):
    rules = [*existing_default_rules(), "scaled_bp"]
    record = json.loads((report_dir / "results.json").read_text())
    assert record["status"] == "finished"
    assert record["settings"]["rules"] == rules and record["settings"]["seeds"] == [0, 1]
    assert record["settings"]["rule_opts"]["scaled_bp"] == {"scale": 0.25}
    assert record["settings"]["rule_options"]["scaled_bp"] == {"scale": 0.25, "group": ""}
    assert [(r["rule"], r["seed"]) for r in record["runs"]] == [
        (name, seed) for seed in (0, 1) for name in rules
    ]
    for run in record["runs"]:
        assert run["status"] == "finished", run.get("message")
        assert len(run["history"]) == 2
        probes = [p for h in run["history"] for p in h["alignment"]]
        assert [p["step"] for p in probes] == [20, 40, 60, 80]
        assert run["peak_memory"]["kind"] == "peak RSS" and run["peak_memory"]["bytes"] > 0
        on_disk = json.loads((report_dir / run["dir"] / "results.json").read_text())
        assert on_disk["test_accuracy"] == run["test_accuracy"]
    scaled = next(r for r in record["runs"] if r["rule"] == "scaled_bp")
    assert scaled["rule_options"]["scale"] == 0.25
    probe = scaled["history"][0]["alignment"][0]
    assert probe["angle"]["all"] < 1e-3  # a scaled gradient points the gradient's way
    assert probe["feedback_angle"] == {"W[h1->h2]": 0.0, "W[h2->out]": 0.0}
    for name in PLOTS:
        assert (report_dir / name).read_bytes().startswith(PNG), name
    table = (report_dir / "table.md").read_text()
    for name in rules:
        assert f"\n| {name} | 2 | " in table
    assert "test error (%)" in table and "±" in table and "peak RSS (MiB)" in table
    assert "Alignment with backprop" in table
    assert (report_dir / "index.html").exists()


def test_runs_of_a_seed_share_everything_but_the_rule(report_dir):
    record = json.loads((report_dir / "results.json").read_text())
    for seed in (0, 1):
        configs = [r["config"] for r in record["runs"] if r["seed"] == seed]
        own = ("rule", "rule_opts", "rule_options", "settings_source", "optimizer_used")
        own += tuple(settings.DEFAULTS)
        shared = [{k: v for k, v in c.items() if k not in own} for c in configs]
        assert all(s == shared[0] for s in shared), "same data, budget, seed and network"
        for c in configs:  # nothing set on the command line: each rule's recommendation
            recommended = {"scaled_bp": ScaledBackprop}.get(c["rule"], RULES.get(c["rule"]))
            recommended = recommended.recommended
            for key, source in c["settings_source"].items():
                assert source == ("rule" if key in recommended else "default")
                assert c[key] == recommended.get(key, settings.DEFAULTS[key])


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        self.links += [v for k, v in attrs.items() if k in ("src", "href") and v]


def test_html_report_holds_every_image(report_dir):
    """Parsed: every <img> is a PNG inside the page, and the page refers to nothing outside."""
    page = Images()
    page.feed((report_dir / "index.html").read_text())
    assert len(page.images) == len(PLOTS)
    for src in page.images:
        head, _, data = src.partition(",")
        assert head == "data:image/png;base64"
        assert base64.b64decode(data, validate=True).startswith(PNG)
    assert all(link.startswith("data:") for link in page.links)  # no network, no sibling files
    for name in PLOTS:  # the same pictures as the files beside it
        encoded = base64.b64encode((report_dir / name).read_bytes()).decode()
        assert any(src.endswith(encoded) for src in page.images), name


# Appended to a copy of the page: records, once the page has loaded, whether each image decoded.
PROBE_SCRIPT = """<script>window.addEventListener("load", () => {
  const seen = [...document.images].map(i => (i.complete && i.naturalWidth > 0 ? "ok" : "broken"));
  document.body.setAttribute("data-images", seen.join(","));
});</script>"""


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium not installed")
def test_html_report_shows_every_image_in_a_real_browser(report_dir, tmp_path):
    """Headless chromium opens a copy of index.html alone in an empty folder, with no network:
    every image must load and decode (naturalWidth > 0)."""
    page = tmp_path / "alone" / "index.html"
    page.parent.mkdir()
    page.write_text((report_dir / "index.html").read_text() + PROBE_SCRIPT)
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=10000",  # wait for the page to settle
                "--dump-dom",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    dom = Images()
    dom.feed(done.stdout)
    assert len(dom.images) == len(PLOTS)
    assert f'data-images="{",".join(["ok"] * len(PLOTS))}"' in done.stdout


def test_report_only_draws_the_report_again(report_dir, capsys):
    html = (report_dir / "index.html").read_text()
    for name in (*PLOTS, "index.html", "table.md"):
        (report_dir / name).unlink()
    assert cli.main(["compare", "--report-only", "--out", str(report_dir)]) == 0
    assert "index.html" in capsys.readouterr().out
    assert (report_dir / "index.html").read_text() == html
    assert all((report_dir / name).exists() for name in (*PLOTS, "table.md"))


class Interrupt(KeyboardInterrupt):
    pass


def counting_epochs(monkeypatch, interrupt_at: int | None = None) -> list[str]:
    """Count Trainer.train_epoch calls (as 'rule-seed:epoch'); raise Ctrl-C once, at call n."""
    calls: list[str] = []
    original = Trainer.train_epoch
    interrupted = []

    def train_epoch(self, epoch):
        calls.append(f"{self.config.rule}-{self.config.seed}:{epoch}")
        if len(calls) == interrupt_at and not interrupted:
            interrupted.append(True)
            raise Interrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
    return calls


def run_outcome(out: Path) -> dict:
    """What a compare computed (not how long it took): results and final weights per run."""
    record = json.loads((out / "results.json").read_text())
    outcome = {}
    for run in record["runs"]:
        history = [{k: v for k, v in h.items() if k != "seconds"} for h in run["history"]]
        weights = torch.load(out / run["dir"] / "checkpoint.pt", weights_only=True)["params"]
        outcome[run["dir"]] = (run["test_accuracy"], run["best_epoch"], history, weights)
    return outcome


def test_interrupted_compare_resumes_without_redoing_finished_runs(
    tmp_path, monkeypatch, scaled_bp, capsys
):
    # One run at a time (a stacked compare's resume: tests/test_stack_training.py).
    args = ["compare", *TINY, "--rules", "bp,scaled_bp", "--seeds", "2", "--no-stack"]
    calls = counting_epochs(monkeypatch, interrupt_at=4)  # in scaled_bp seed 0's second epoch
    out = tmp_path / "interrupted"
    assert cli.main([*args, "--out", str(out)]) == 130
    assert "run the same command again" in capsys.readouterr().err
    assert calls == ["bp-0:1", "bp-0:2", "scaled_bp-0:1", "scaled_bp-0:2"]
    finished = (out / "runs" / "bp-seed0" / "results.json").read_bytes()
    assert not (out / "runs" / "scaled_bp-seed0" / "results.json").exists()

    calls.clear()
    assert cli.main([*args, "--out", str(out)]) == 0
    assert "resuming from epoch 1" in capsys.readouterr().out
    assert calls == ["scaled_bp-0:2", "bp-1:1", "bp-1:2", "scaled_bp-1:1", "scaled_bp-1:2"]
    assert (out / "runs" / "bp-seed0" / "results.json").read_bytes() == finished

    calls.clear()
    assert cli.main([*args, "--out", str(tmp_path / "straight")]) == 0
    assert len(calls) == 8
    resumed, straight = run_outcome(out), run_outcome(tmp_path / "straight")
    assert resumed.keys() == straight.keys() and len(resumed) == 4
    for key, (accuracy, best, history, weights) in straight.items():
        assert resumed[key][:3] == (accuracy, best, history), key
        for name, w in weights.items():
            assert torch.equal(resumed[key][3][name], w), (key, name)

    calls.clear()  # once more: everything is done, nothing trains, the report is redrawn
    assert cli.main([*args, "--out", str(out)]) == 0
    assert calls == []


def test_a_run_folder_made_with_other_settings_is_not_overwritten(tmp_path, capsys):
    out = str(tmp_path / "r")
    base = ["compare", *TINY, "--rules", "bp", "--seeds", "1", "--epochs", "1", "--out", out]
    assert cli.main(base) == 0
    before = (tmp_path / "r" / "runs" / "bp-seed0" / "results.json").read_bytes()
    assert cli.main([*base, "--lr", "0.2"]) == 2
    err = capsys.readouterr().err
    assert "bp-seed0" in err and "lr (checkpoint 0.05, now 0.2)" in err and "--force" in err
    assert (tmp_path / "r" / "runs" / "bp-seed0" / "results.json").read_bytes() == before
    assert cli.main([*base, "--lr", "0.2", "--force"]) == 0
    results = json.loads((tmp_path / "r" / "runs" / "bp-seed0" / "results.json").read_text())
    assert results["config"]["lr"] == 0.2


def test_a_folder_holding_something_else_is_refused(tmp_path, capsys):
    (tmp_path / "results.json").write_text('{"status": "finished"}')  # e.g. a train run
    args = ["compare", *TINY, "--rules", "bp", "--seeds", "1", "--out", str(tmp_path)]
    assert cli.main(args) == 2
    assert "holds no creditlab compare run" in capsys.readouterr().err
    assert (tmp_path / "results.json").read_text() == '{"status": "finished"}'


def test_a_diverged_run_is_recorded_and_the_compare_goes_on(tmp_path, scaled_bp, capsys):
    out = tmp_path / "d"
    args = ["compare", *TINY, "--rules", "bp,scaled_bp", "--seeds", "1", "--out", str(out)]
    args += ["--optimizer", "sgd", "--lr", "0.05"]  # Adam would normalise the huge updates away
    assert cli.main([*args, "--rule-opt", "scaled_bp.scale=1e12"]) == 0
    assert "diverged: scaled_bp seed 0" in capsys.readouterr().out
    record = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in record["runs"]] == ["finished", "diverged"]
    assert "epoch 1, step" in record["runs"][1]["message"]
    assert "| scaled_bp | 1 (1 diverged) |" in (out / "table.md").read_text()
    assert all((out / name).exists() for name in ("index.html", "val_accuracy.png"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rules", "bp,telepathy"], "unknown rule 'telepathy'; valid rules: bp"),
        (["--rules", "bp,bp"], "more than once"),
        (["--rules", ","], "at least one rule"),
        (["--rule-opt", "bp.scale=2"], "unknown option(s) scale for rule 'bp'"),
        (["--rule-opt", "scaled_bp.size=2"], "valid options: group, scale"),
        (["--rule-opt", "scaled_bp.scale=big"], "option scaled_bp.scale needs a float"),
        (["--rule-opt", "scale=2"], "needs RULE.KEY=VALUE"),
        (["--rule-opt", "dni.hidden=256"], "is for rule 'dni', which is not among the rules"),
        (["--rule-opt", "scaled_bp.group=h7"], "no group 'h7'"),
        (["--seeds", "0"], "at least one seed"),
        (["--seeds", "1,1"], "distinct seeds"),
        (["--seeds", "a,b"], "a count or a list"),
        (["--epochs", "0"], "epochs must be a positive integer"),
        (["--probe-every", "-1"], "probe_every must be an integer >= 0"),
        (["--activation", "swish"], "valid activations"),
    ],
)
def test_bad_input_exits_2_before_anything_trains(tmp_path, capsys, scaled_bp, args, message):
    out = tmp_path / "r"
    code = cli.main(["compare", *TINY, "--rules", "bp,scaled_bp", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("creditlab: error:") and message in err, err
    assert not (out / "runs").exists()


def test_report_only_needs_a_compare_folder(tmp_path, capsys):
    assert cli.main(["compare", "--report-only"]) == 2
    assert "--report-only needs --out" in capsys.readouterr().err
    assert cli.main(["compare", "--report-only", "--out", str(tmp_path)]) == 2
    assert "holds no compare results" in capsys.readouterr().err


def test_defaults_compare_bp_fa_dfa_dni_in_a_folder_per_settings():
    args = cli.build_parser().parse_args(["compare"])
    assert args.rules == "bp,fa,dfa,dni" and args.dataset == "digits"
    assert tuple(args.rules.split(",")) == compare.DEFAULT_RULES
    config = cli.config_from_args(args, "bp", {})
    first = compare.default_out_dir(config, ["bp", "fa"], [0, 1, 2], {})
    assert first == compare.default_out_dir(config, ["bp", "fa"], [0, 1, 2], {})
    assert first.parent == Path("reports") and first.name.startswith("digits-")
    assert first != compare.default_out_dir(config, ["bp", "fa"], [0, 1], {})
    assert first != compare.default_out_dir(config, ["bp", "fa"], [0, 1, 2], {"fa": {"scale": 2}})

"""The README's ladder runs as shown: every command in it parses, and each one runs to the end
(exit 0, the output line the README promises) on a small share of its data.

The commands are read from README.md between its `--8<-- [start:ladder]` and `[end:ladder]`
markers (the same markers put the ladder into the docs' Getting started page), so a command
edited there is the command tested here. To keep the suite quick, each runs with a few
options appended (argparse takes the last value of a repeated option): one epoch, a few hundred
training examples, fewer trials and seeds. Everything else is as the README prints it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from creditlab.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# What each subcommand gets appended so that it runs in seconds.
SMALL = {
    "train": ["--epochs", "1", "--train-subset", "600", "--val-size", "200", "--quiet"],
    "compare": ["--epochs", "1", "--seeds", "1", "--train-subset", "600", "--quiet"],
    # the README's 12 epochs: after one a GAN has collapsed, which exits 1 by design
    "gan": ["--train-subset", "600", "--eval-samples", "500", "--quiet"],
    "tune": [
        "--trials",
        "2",
        "--epochs",
        "1",
        "--seeds",
        "1",
        "--train-subset",
        "600",
        "--workers",
        "1",
        "--quiet",
    ],
}
# What each subcommand prints when it has finished (besides exit code 0).
FINISHED = {
    "train": re.compile(r"on (digits|mnist): test accuracy 0\.\d+"),
    "compare": re.compile(r"report in .*index\.html"),
    "gan": re.compile(r"GAN \w+/\w+ on \w+: finished, best classifier FID"),
    "tune": re.compile(r"best configurations in .*tune\.md"),
}


def ladder() -> list[tuple[list[str], str]]:
    """(argv after `creditlab`, the expected output the README shows after it) per step."""
    text = README.read_text(encoding="utf-8")
    start, end = text.index("[start:ladder]"), text.index("[end:ladder]")
    section = text[start:end]
    steps = []
    pieces = re.split(r"```bash\n(.*?)```", section, flags=re.S)
    for i in range(1, len(pieces), 2):
        (line,) = [c for c in pieces[i].splitlines() if c.strip()]
        after = pieces[i + 1] if i + 1 < len(pieces) else ""
        shown = re.search(r"`([^`]+)`", after)
        argv = shlex.split(line)
        assert argv[0] == "creditlab", f"a ladder command must start with creditlab: {line!r}"
        steps.append((argv[1:], shown.group(1) if shown else ""))
    return steps


STEPS = ladder()


def test_the_ladder_has_every_step():
    commands = [argv[0] for argv, _ in STEPS]
    assert commands.count("train") >= 5
    for command in ("compare", "gan", "tune"):
        assert command in commands
    models = " ".join(" ".join(argv) for argv, _ in STEPS)
    for needle in ("--rule fa", "--dataset mnist", "lenet", "capsnet:small"):
        assert needle in models, needle


@pytest.mark.parametrize("argv", [a for a, _ in STEPS], ids=lambda a: " ".join(a)[:60])
def test_every_ladder_command_parses(argv):
    args = build_parser().parse_args(argv)
    assert args.command == argv[0]


def _small(argv: list[str], out: Path) -> list[str]:
    argv = list(argv)
    if "--out" in argv:
        argv[argv.index("--out") + 1] = str(out)
    return argv + SMALL[argv[0]]


@pytest.mark.parametrize("step", range(len(STEPS)), ids=[" ".join(a)[:60] for a, _ in STEPS])
def test_ladder_command_runs(step, tmp_path):
    argv, shown = STEPS[step]
    if "mnist" in argv and not (Path(os.environ["CREDITLAB_DATA"]) / "mnist").is_dir():
        pytest.skip("MNIST is not in $CREDITLAB_DATA (the test never downloads)")
    run = subprocess.run(
        [sys.executable, "-m", "creditlab.cli", *_small(argv, tmp_path / "out")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert FINISHED[argv[0]].search(run.stdout), run.stdout[-2000:]
    # The line the README shows after the command starts as the real one does ("bp on
    # digits: test accuracy", "GAN bp/bp on digits: finished"); the numbers differ here.
    prefix = re.split(r"\d", shown, maxsplit=1)[0].strip()
    if prefix and ":" in prefix:
        assert prefix in run.stdout, (prefix, run.stdout[-2000:])

"""Hostile use: random bad arguments never give a traceback, and a compare killed at random
moments keeps every finished run and resumes."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

import pytest

from creditlab import cli

TINY = ["--train-subset", "1000", "--batch-size", "25", "--model", "mlp:16", "--quiet"]
TINY += ["--probe-every", "0", "--epochs", "1"]

# Values every one of which must be refused, per flag (with --schedule step or cosine where
# the flag only matters for that schedule).
BAD = {
    "--epochs": ["0", "-3", "x", "1.5"],
    "--batch-size": ["0", "-1", "big"],
    "--lr": ["-1", "nan", "inf", "fast"],
    "--momentum": ["-0.1", "1", "2", "nan"],
    "--weight-decay": ["-1", "nan"],
    "--gamma": ["-1", "0", "2", "nan"],
    "--min-lr": ["-0.5", "nan", "inf"],
    "--warmup-epochs": ["-1", "inf"],
    "--step-epochs": ["0", "-2", "1.5"],
    "--dropout": ["1.5", "-0.1"],
    "--seed": ["-1", str(2**64), str(2**100), "abc"],
    "--probe-size": ["0", "-1"],
    "--probe-every": ["-1"],
    "--train-subset": ["0", "-5"],
    "--val-size": ["0", "-1", "100000"],
    "--patience": ["0", "-1"],
    "--device": ["mps", "xpu", "meta", "cpu:3", "tpu", "cuda:99"],
    "--dtype": ["int8", "float8"],
    "--model": ["mlp: 32", "mlp:+32", "mlp:3_2", "mlp:0", "cnn:3", "mlp:-", "nothing.json"],
    "--rule": ["telepathy", ""],
    "--rule-opt": ["nonsense", "fa.scale=2"],
    "--optimizer": ["rmsprop", ""],
    "--schedule": ["cyclic"],
    "--activation": ["swish"],
    "--loss": ["hinge"],
    "--dataset": ["svhn", "idx:"],
    "--out": [""],
}
BAD_COMPARE = {
    "--rules": ["", ",", "bp,bp", "bp,telepathy"],
    "--seeds": ["0", "1,1", "a,b", "-2"],
    "--rule-opt": ["bp.scale=2", "scale=2", "dni.hidden=2"],
}
BAD_GRADCHECK = {
    "--trials": ["0", "-1", "x"],
    "--tol-fd": ["nan", "0", "-1", "inf"],
    "--tol-autograd": ["nan", "0", "-1e-9"],
    "--seed": ["-1", str(2**64)],
}


def outcome(args: list[str]) -> int:
    """The exit code of `creditlab ARGS`, in process: an exception other than SystemExit
    escaping here is a traceback the user would have seen."""
    try:
        return cli.main(args)
    except SystemExit as stop:  # argparse's own errors
        return stop.code


def cases(n: int, seed: int = 0) -> list[list[str]]:
    """n command lines, each with one or two bad flags among good ones."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        command = rng.choice(["train", "train", "compare", "gradcheck"])
        if command == "gradcheck":
            flag = rng.choice(sorted(BAD_GRADCHECK))
            lines.append(["gradcheck", "--trials", "1", flag, rng.choice(BAD_GRADCHECK[flag])])
            continue
        table = {**BAD, **BAD_COMPARE} if command == "compare" else BAD
        args = [command, *TINY]
        for flag in rng.sample(sorted(table), rng.choice([1, 2])):
            if flag in ("--gamma", "--step-epochs"):
                args += ["--schedule", "step"]
            if flag in ("--min-lr",):
                args += ["--schedule", "cosine"]
            args += [flag, rng.choice(table[flag])]
        lines.append(args)
    return lines


@pytest.mark.parametrize("args", cases(60), ids=lambda a: " ".join(a[:1] + a[len(TINY) + 1 :]))
def test_random_bad_arguments_exit_2_without_a_traceback(tmp_path, monkeypatch, capsys, args):
    monkeypatch.chdir(tmp_path)  # a default --out lands here, if a case ever got that far
    if "--out" not in args:
        args = [*args, "--out", str(tmp_path / "out")] if args[0] != "gradcheck" else args
    assert outcome(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith(("creditlab: error:", "usage:")), err
    assert not (tmp_path / "out").exists(), "refused before anything was written"


def test_a_compare_killed_at_random_moments_keeps_every_finished_run(tmp_path):
    out = tmp_path / "c"
    command = [sys.executable, "-m", "creditlab", "compare", *TINY, "--epochs", "2"]
    command += ["--rules", "bp,fa", "--seeds", "2", "--out", str(out)]
    rng = random.Random(0)
    kept: dict = {}  # results.json of every run found finished -> its bytes
    for _ in range(2):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and not (out / "results.json").exists():
            time.sleep(0.05)  # the compare has checked its input and begun writing
        time.sleep(rng.uniform(0.0, 1.5))
        proc.kill()
        proc.wait()
        for path, data in kept.items():
            assert path.read_bytes() == data, f"{path} changed after it had finished"
        json.loads((out / "results.json").read_text())  # never torn
        for path in out.glob("runs/*/results.json"):
            results = json.loads(path.read_text())
            if results["status"] == "finished":
                assert (path.parent / "best.pt").exists() and (path.parent / "config.json").exists()
                kept.setdefault(path, path.read_bytes())
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((out / "results.json").read_text())
    assert record["status"] == "finished"
    assert sorted((r["rule"], r["seed"]) for r in record["runs"]) == [
        ("bp", 0),
        ("bp", 1),
        ("fa", 0),
        ("fa", 1),
    ]
    assert all(len(r["history"]) == 2 for r in record["runs"])
    for path, data in kept.items():
        assert path.read_bytes() == data, f"{path} was trained again"

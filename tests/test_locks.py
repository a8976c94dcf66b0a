"""Two real creditlab processes on one --out: the second refuses at once (exit 2, naming the
folder and the holder's command and pid) and the first finishes with its own, whole results.

The first process is paused (SIGSTOP) once it holds the folder and has written a checkpoint, so
that the second certainly starts while the first runs, whatever the machine's load; it is
resumed (SIGCONT) after the second has been refused. No wall-clock limits: every wait is for a
file or a process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from creditlab.training import checkpoint, locks

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--dataset", "digits", "--quiet", "--probe-every", "0"]
GAN = [
    "--dataset",
    "digits",
    "--generator",
    "mlp:32",
    "--discriminator",
    "mlp:32",
    "--latent",
    "8",
    "--eval-samples",
    "200",
    "--quiet",
]


def start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "creditlab.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(*args: str) -> subprocess.CompletedProcess:
    proc = start(*args)
    out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def pause_when(proc: subprocess.Popen, path: Path) -> None:
    """Wait until `path` exists (the first process has held the folder and trained an epoch),
    then stop the process where it is; it keeps its lock while stopped."""
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the first process ended early: {proc.communicate()[1]}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGSTOP)


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def assert_refused_by_holder(second: subprocess.CompletedProcess, folder: Path, first) -> None:
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1, second.stderr  # one line, no traceback
    assert str(folder) in lines[0] and f"pid {first.pid}" in lines[0], lines[0]
    assert "is in use by `creditlab " in lines[0]


def test_train_then_train_and_train_force(tmp_path):
    out = tmp_path / "run"
    first = start("train", *TRAIN, "--epochs", "60", "--out", str(out))  # runs a while
    pause_when(first, out / "checkpoint.pt")
    try:
        held = snapshot(out)
        for extra in ([], ["--force"], ["--resume"]):
            second = run(
                "train", *TRAIN, "--epochs", "1", "--lr", "0.01", *extra, "--out", str(out)
            )
            assert_refused_by_holder(second, out, first)
            assert "--epochs 60" in second.stderr  # the holder's command line
            assert snapshot(out) == held  # touched nothing
    finally:
        done = finish(first)
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "finished" and results["config"]["epochs"] == 60
    assert results["config"]["lr"] != 0.01  # its own settings, not the refused run's
    state = checkpoint.load_run(out / "checkpoint.pt")
    assert state["epoch"] == 60 and state["config"]["epochs"] == 60
    assert checkpoint.load(out / "best.pt")["params"]
    assert not (out / locks.LOCK_NAME).exists()  # released and removed on the way out
    assert json.loads((out / locks.KIND_NAME).read_text())["kind"] == "train"


def test_compare_then_train(tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", *TRAIN, "--rules", "bp", "--seeds", "1", "--epochs", "30", "--out", str(out)]
    first = start(*args)
    pause_when(first, out / "runs" / "bp-seed0" / "checkpoint.pt")
    try:
        held = snapshot(out)
        for extra in ([], ["--force"]):
            second = run("train", *TRAIN, "--epochs", "1", *extra, "--out", str(out))
            assert second.returncode == 2, second.stderr
            assert len(second.stderr.strip().splitlines()) == 1
            assert str(out) in second.stderr and "compare" in second.stderr
            again = run(*args, *extra)  # the same compare, a second time, while it runs
            assert_refused_by_holder(again, out, first)
            assert snapshot(out) == held
    finally:
        done = finish(first)
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in record["runs"]] == ["finished"]
    assert record["runs"][0]["epochs"] == 30


def test_gan_then_compare(tmp_path):
    out = tmp_path / "gan"
    first = start("gan", *GAN, "--epochs", "3", "--out", str(out))
    pause_when(first, out / "checkpoint.pt")
    try:
        held = snapshot(out)
        for extra in ([], ["--force"]):
            second = run(
                "compare", *TRAIN, "--rules", "bp", "--seeds", "1", *extra, "--out", str(out)
            )
            assert second.returncode == 2, second.stderr
            assert len(second.stderr.strip().splitlines()) == 1
            assert str(out) in second.stderr
            again = run("gan", *GAN, "--epochs", "1", *extra, "--out", str(out))
            assert_refused_by_holder(again, out, first)
            assert snapshot(out) == held
    finally:
        done = finish(first)
    assert done.returncode in (0, 1), done.stderr  # 1: the toy GAN learned no digits
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "finished" and results["epochs"] == 3
    assert results["config"]["epochs"] == 3


def test_kill_9_releases_the_folder(tmp_path):
    out = tmp_path / "run"
    first = start("train", *TRAIN, "--epochs", "40", "--out", str(out))
    pause_when(first, out / "checkpoint.pt")
    first.kill()  # SIGKILL: no handler runs, the kernel drops the lock
    first.communicate()
    assert (out / locks.LOCK_NAME).exists()  # the file stays; the lock does not
    # (the same 40 epochs: the killed run may have trained a few before it was stopped)
    resumed = run("train", *TRAIN, "--epochs", "40", "--resume", "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint.load_run(out / "checkpoint.pt")["epoch"] == 40


def test_the_lock_in_one_process(tmp_path):
    """hold() itself: a second hold on a held folder refuses, naming the holder."""
    from creditlab.errors import UsageError

    folder = tmp_path / "f"
    with locks.hold(folder, "train", command="creditlab train --first"):
        assert json.loads((folder / locks.LOCK_NAME).read_text())["pid"] == os.getpid()
        # flock locks belong to an open file: a second open in this process conflicts too
        refused = r"in use by `creditlab train --first` \(pid \d+\)"
        with pytest.raises(UsageError, match=refused), locks.hold(folder, "train"):
            pass
    assert not folder.exists()  # nothing was written: no trace left

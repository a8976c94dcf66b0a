"""tune/watchdog.py: the processes a creditlab process started (a local Ray's) stop when it is
killed with SIGKILL. Tried on a stand-in: a parent that starts the watchdog and a child."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from creditlab.tune import watchdog

ROOT = Path(__file__).resolve().parents[1]
PARENT = """
import subprocess, sys, time
from creditlab.tune import watchdog
dog = watchdog.start_for(__import__("os").getpid())
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
time.sleep(1.5)  # the watchdog has had a look at the child
print(dog.pid, child.pid, flush=True)
time.sleep(600)
"""


def gone(pid: int, start: int) -> bool:
    return not watchdog._alive(pid, start)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="Linux /proc only")
def test_a_killed_parent_takes_its_children_along():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, env=env
    )
    dog, child = map(int, parent.stdout.readline().split())
    child_start = watchdog._stat(child)[1]
    dog_start = watchdog._stat(dog)[1]
    assert child in watchdog.descendants(parent.pid)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    for _ in range(600):  # at most a minute; the watchdog looks once a second
        if gone(child, child_start) and gone(dog, dog_start):
            break
        time.sleep(0.1)
    assert gone(child, child_start), "the child outlived its killed parent"
    assert gone(dog, dog_start), "the watchdog did not exit"

"""Stop a local Ray's processes when the creditlab process that started them dies.

`ray.init()` on this machine starts Ray's own processes (the GCS server, the raylet, workers) as
children of the creditlab process. They outlive it when it is killed with SIGKILL, no handler
running: a killed `creditlab tune` would leave Ray's processes behind, holding cores and memory.

`start_for(pid)` starts this module as a small separate process. It watches the creditlab
process, noting every second which processes descend from it (with their start times, so that
a reused process id is never mistaken for one of them). When the creditlab process is gone, it
stops those it noted (SIGTERM, then SIGKILL for those still there after a moment) and exits. When
the creditlab process ends Ray itself and exits normally, the watchdog finds nothing left to stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 1.0
GRACE_S = 3.0


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, from /proc; None for a
    process that is gone or has ended (a zombie waiting for its parent to read its status)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (command) "
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """Every live process below `root`: pid -> start time."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _stat(int(entry))
            if found is not None:
                children.setdefault(found[0], []).append(int(entry))
                starts[int(entry)] = found[1]
    below, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in below and child != os.getpid():
                below[child] = starts[child]
                todo.append(child)
    return below


def _alive(pid: int, start: int) -> bool:
    found = _stat(pid)
    return found is not None and found[1] == start


def stop(processes: dict[int, int]) -> None:
    """SIGTERM each process noted (still the same process), then SIGKILL the stragglers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, start in processes.items():
            if _alive(pid, start):
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + GRACE_S
        while time.monotonic() < deadline and any(_alive(p, s) for p, s in processes.items()):
            time.sleep(0.1)


def watch(parent: int, ready=None) -> None:
    parent_start = (_stat(parent) or (0, -1))[1]
    noted: dict[int, int] = descendants(parent)
    if ready is not None:  # the first look is taken: the parent may go on
        ready()
    while _alive(parent, parent_start):
        # Keep what was noted before: a process reparented away from the tree is still Ray's.
        noted = {p: s for p, s in noted.items() if _alive(p, s)}
        noted.update(descendants(parent))
        time.sleep(POLL_S)
    # Processes that Ray's processes started after the last look belong to them too.
    for pid in list(noted):
        noted.update(descendants(pid))
    stop(noted)


def start_for(pid: int) -> subprocess.Popen | None:
    """Start the watchdog for process `pid` (Linux only; elsewhere nothing is started), and
    wait for its first look at `pid`'s processes. It runs this file as a script: it needs the
    standard library only, so it starts at once (importing creditlab would import torch)."""
    if not Path("/proc/self/stat").exists():
        return None
    dog = subprocess.Popen(
        [sys.executable, "-S", str(Path(__file__).resolve()), str(pid)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C or a kill of the process group leaves it running
    )
    dog.stdout.readline()  # "ready", or nothing if it failed to start
    dog.stdout.close()
    return dog


def _ready() -> None:
    print("ready", flush=True)
    # stdout is the parent's pipe, which it closes: nothing more is written there.
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115


if __name__ == "__main__":
    watch(int(sys.argv[1]), _ready)

"""The one epoch loop: every trainer (one run, a stack of runs, a GAN) plugs its step into it.

What an epoch is, apart from the step, is the same for all of them and lives here once: the
progress bar, the cadence of the guards (losses stay on the device and are checked every
CHECK_EVERY steps and after the last, since a check on a GPU waits for it; every loss is kept,
so a message still names the first bad step), the probes (diagnostics every `probe_every`
steps, timed apart so that they never count as training), and the epoch's time.

A trainer's part, each a plain function of the step's index in the epoch:

- `step(i)`: batch i's updates, applied by the optimiser; it records the batch's losses in the
  trainer's buffers;
- `check(first, last)`: the guard over the losses of steps first..last-1 (training/guards.py),
  raising TrainingError to stop;
- `probe(global_step)` (optional): the diagnostics after that many steps of the run;
- `postfix(i)` (optional): what the progress bar shows after step i, or None to leave it.

    loop = EpochLoop(f"epoch {epoch}/{epochs}", steps, device, progress)
    seconds = loop.run(step, check, first_step=(epoch - 1) * steps, probe_every=50, probe=probe)
    ...evaluate...
    loop.close(loss="0.1234")
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from creditlab.progress import bar as progress_bar

CHECK_EVERY = 25  # steps between checks of the losses (each check waits for a GPU)


def batch_slice(i: int, batch_size: int) -> slice:
    """The rows of step i's batch in the epoch's order (the last batch may be shorter)."""
    return slice(i * batch_size, (i + 1) * batch_size)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timings on a GPU); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EpochLoop:
    """One epoch of `steps` steps: made at the epoch's start (its time starts then), run once
    with the trainer's step, closed after the trainer's evaluation."""

    def __init__(self, desc: str, steps: int, device: torch.device, progress: bool):
        self.steps, self.device = steps, device
        synchronize(device)
        self.start = time.perf_counter()
        self.probe_seconds = 0.0
        self.bar = progress_bar(
            total=steps, desc=desc, unit="batch", disable=not progress, dynamic_ncols=True
        )

    def run(
        self,
        step: Callable[[int], None],
        check: Callable[[int, int], None],
        *,
        first_step: int = 0,
        probe_every: int = 0,
        probe: Callable[[int], None] | None = None,
        postfix: Callable[[int], dict[str, str] | None] | None = None,
    ) -> float:
        """Run every step; the seconds the epoch trained (since the loop was made, less the
        probes). `first_step`: the run's steps before this epoch (for the probes' cadence)."""
        checked = 0
        for i in range(self.steps):
            step(i)
            if (i + 1) % CHECK_EVERY == 0 or i + 1 == self.steps:
                check(checked, i + 1)
                checked = i + 1
            done = first_step + i + 1  # the run's steps so far
            if probe is not None and probe_every and done % probe_every == 0:
                synchronize(self.device)
                probe_start = time.perf_counter()
                probe(done)
                synchronize(self.device)
                self.probe_seconds += time.perf_counter() - probe_start  # not training
            if postfix is not None and not self.bar.disable:  # (reading losses waits for a GPU)
                shown = postfix(i)
                if shown:
                    self.bar.set_postfix(shown, refresh=False)
            self.bar.update(1)
        synchronize(self.device)
        return time.perf_counter() - self.start - self.probe_seconds

    def close(self, **postfix: str) -> None:
        """End the progress bar, showing `postfix` (the epoch's figures) last."""
        if postfix:
            self.bar.set_postfix(postfix)
        self.bar.close()

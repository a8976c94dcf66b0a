"""The one epoch loop (training/loop.py) that every trainer plugs its step into: the guards'
cadence, the probes' cadence across epochs, a guard that stops the epoch, and the trainers
that use it."""

from __future__ import annotations

import pytest
import torch

from creditlab.errors import TrainingError
from creditlab.gan import loop as gan_loop
from creditlab.speed import stacked_runs
from creditlab.training import trainer
from creditlab.training.loop import CHECK_EVERY, EpochLoop, batch_slice

CPU = torch.device("cpu")


def test_every_step_runs_and_the_losses_are_checked_every_few_steps_and_after_the_last():
    steps, ran, checks = 2 * CHECK_EVERY + 7, [], []
    loop = EpochLoop("epoch 1/1", steps, CPU, progress=False)
    seconds = loop.run(ran.append, lambda first, last: checks.append((first, last)))
    loop.close()
    assert ran == list(range(steps))
    assert checks == [(0, CHECK_EVERY), (CHECK_EVERY, 2 * CHECK_EVERY), (2 * CHECK_EVERY, steps)]
    assert seconds >= 0


def test_probes_follow_the_runs_step_count_across_epochs_and_are_not_timed():
    probed, steps = [], 7
    for epoch in (1, 2, 3):
        loop = EpochLoop("", steps, CPU, progress=False)
        loop.run(
            lambda i: None,
            lambda first, last: None,
            first_step=(epoch - 1) * steps,
            probe_every=5,
            probe=probed.append,
        )
    assert probed == [5, 10, 15, 20]  # every 5 steps of the run, across epoch boundaries
    assert loop.probe_seconds >= 0


def test_a_guard_that_raises_stops_the_epoch_at_its_check():
    ran = []

    def check(first, last):
        if last == 2 * CHECK_EVERY:
            raise TrainingError("diverged")

    loop = EpochLoop("", 3 * CHECK_EVERY, CPU, progress=False)
    with pytest.raises(TrainingError, match="diverged"):
        loop.run(ran.append, check)
    assert ran == list(range(2 * CHECK_EVERY))


def test_the_progress_bar_shows_what_the_step_reports(capsys):
    loop = EpochLoop("epoch 1/1", 3, CPU, progress=True)
    loop.run(lambda i: None, lambda a, b: None, postfix=lambda i: {"loss": f"{i:.1f}"})
    loop.close(loss="0.5")
    assert "loss=0.5" in capsys.readouterr().err


def test_batches_are_consecutive_slices():
    rows = torch.arange(10)
    assert [rows[batch_slice(i, 4)].tolist() for i in range(3)] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9],
    ]


@pytest.mark.parametrize("module", [trainer, stacked_runs, gan_loop])
def test_every_trainer_runs_its_epochs_in_the_one_loop(module):
    """No trainer builds its own progress bar or timer: each takes EpochLoop's."""
    assert module.EpochLoop is EpochLoop
    assert not hasattr(module, "tqdm") and not hasattr(module, "time")

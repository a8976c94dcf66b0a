"""Asynchronous successive halving (ASHA; Li et al. 2020), as Ray Tune's ASHAScheduler runs it.

A trial trains towards the epoch budget, and at each milestone (rung) grace * eta^k epochs it
reports its best validation accuracy so far. It goes on only if that value is at least the
(1 - 1/eta) quantile of the values earlier trials reported at the same rung, so about one trial
in eta survives each rung, without waiting for a whole generation of trials to finish (the
"asynchronous" of ASHA). The first trial to reach a rung always goes on. Each rule gets its own
instance: trials are ranked only against trials of the same rule, under the same milestones.
"""

from __future__ import annotations

import numpy as np

from creditlab.errors import UsageError


class ASHA:
    def __init__(self, max_epochs: int, grace: int = 1, eta: int = 3):
        if grace < 1 or grace > max_epochs:
            raise UsageError(f"--grace-epochs must be between 1 and --epochs, got {grace}")
        if eta < 2:
            raise UsageError(f"--eta (ASHA's reduction factor) must be >= 2, got {eta}")
        self.max_epochs, self.grace, self.eta = max_epochs, grace, eta
        self.milestones: list[int] = []
        rung = grace
        while rung < max_epochs:
            self.milestones.append(rung)
            rung *= eta
        self.recorded: dict[int, dict[int, float]] = {m: {} for m in self.milestones}

    def next_stop(self, epoch: int) -> int:
        """Where a trial that has trained `epoch` epochs reports next: the next milestone,
        else the end of the budget."""
        return next((m for m in self.milestones if m > epoch), self.max_epochs)

    def cutoff(self, milestone: int, without: int | None = None) -> float | None:
        """The value a trial must reach at `milestone` to go on, over the values recorded there
        (leaving out trial `without`'s own); None while nobody else reported."""
        values = [v for t, v in self.recorded[milestone].items() if t != without]
        if not values:
            return None
        return float(np.percentile(values, 100 * (1 - 1 / self.eta)))

    def report(self, trial: int, milestone: int, value: float) -> bool:
        """Record a trial's value at a milestone; whether it goes on. A trial reporting again
        at the same milestone (after a resume) is judged against the others, not itself."""
        if milestone not in self.recorded:
            return True
        cutoff = self.cutoff(milestone, without=trial)
        self.recorded[milestone][trial] = value
        return cutoff is None or value >= cutoff

"""Guards that make a run that learns nothing say so, instead of finishing quietly.

- A loss that is not finite, or one that has exploded while staying finite (a window of batch
  losses averaging EXPLOSION_FACTOR times the loss of the very first batch, taken before any
  update), stops training: the run is `diverged`.
- Validation accuracy near chance (within NEAR_CHANCE of the way from the majority-class rate
  to 100%) after the first epoch is a warning (some rules start slowly); at the end of the run,
  when the best epoch is still there, the run is `stalled`.

Every message says what happened and what to try.
"""

from __future__ import annotations

import math

import torch

from creditlab.errors import TrainingError

EXPLOSION_FACTOR = 100.0  # cross-entropy on 10 classes starts near 2.3: 230 is no longer learning
NEAR_CHANCE = 0.1

ADVICE = (
    "Try a smaller learning rate, or leave --optimizer and --lr unset so that the rule's "
    "recommended settings apply (see `creditlab rules`)."
)


def check_losses(
    losses: torch.Tensor, first: int, last: int, epoch: int, reference: float, kept: str
) -> None:
    """Raise TrainingError if batch losses first..last-1 of `epoch` hold a non-finite value or
    average more than EXPLOSION_FACTOR times `reference`; `kept` says what is left on disk."""
    window = losses[first:last]
    bad = ~torch.isfinite(window)
    if bool(bad.any()):
        step = first + int(bad.nonzero()[0]) + 1
        value = float(window[step - first - 1])
        raise TrainingError(
            f"training stopped: the loss became {value} at epoch {epoch}, step {step}; {kept}. "
            + ADVICE
        )
    mean = float(window.mean()) if len(window) else 0.0
    if math.isfinite(reference) and mean > EXPLOSION_FACTOR * max(abs(reference), 1e-6):
        raise TrainingError(
            f"training stopped: the loss exploded to {mean:.3g} (mean of epoch {epoch}, step "
            f"{first + 1} to step {last}), over {EXPLOSION_FACTOR:g} times its starting value "
            f"{reference:.3g}: the run diverged; {kept}. " + ADVICE
        )


def chance_rate(labels: torch.Tensor, n_classes: int) -> float:
    """The accuracy of always answering the most common class (at least 1 / n_classes)."""
    if not len(labels):
        return 1.0 / max(1, n_classes)
    counts = torch.bincount(labels.cpu(), minlength=n_classes)
    return max(float(counts.max()) / len(labels), 1.0 / max(1, n_classes))


def near_chance(accuracy: float, chance: float) -> bool:
    return accuracy < chance + NEAR_CHANCE * (1.0 - chance)


# For a rule that applies its own step (no optimiser, no learning rate: hillclimb).
OWN_STEP_ADVICE = (
    "This rule applies its own steps, with no learning rate: try its options (--rule-opt; "
    "`creditlab rules` lists them and what it recommends for each family of network) or more "
    "epochs."
)


def stalled_message(
    accuracy: float, chance: float, epochs: int, final: bool, own_step: bool = False
) -> str:
    when = f"after {epochs} epoch(s)" if final else "after the first epoch"
    what = (
        "the run learned nothing useful"
        if final
        else "it may still pick up, but most runs that start like this never do"
    )
    advice = (
        OWN_STEP_ADVICE
        if own_step
        else ADVICE + " A rate too small can stall a run as well as one too large."
    )
    return (
        f"validation accuracy {accuracy:.4f} is near chance ({chance:.4f}) {when}: {what}. {advice}"
    )


def check_weights(params: dict[str, torch.Tensor], epoch: int, kept: str) -> None:
    """Stop a run whose weights are no longer all finite at the end of an epoch: a loss measured
    before the last update can be finite while the update overflowed. Such weights are never
    written as a checkpoint, so "the last good checkpoint" is good."""
    bad = [name for name, p in params.items() if not bool(torch.isfinite(p).all())]
    if bad:
        raise TrainingError(
            f"training stopped: the weights of {', '.join(map(str, bad[:3]))}"
            f"{' and others' if len(bad) > 3 else ''} became non-finite in epoch {epoch}: the run "
            f"diverged; {kept}. {ADVICE}"
        )

"""Losses: E per example and dE/dz against autograd, and bad targets."""

import pytest
import torch
import torch.nn.functional as F

from creditlab.engine.losses import LOSSES, loss
from creditlab.errors import UnknownNameError, UsageError

Z = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
TARGETS = {
    "cross_entropy": torch.tensor([0, 3, 1, 2, 2, 0]),
    "mse": torch.randn(6, 4, dtype=torch.float64),
    "bce": torch.rand(6, 4, dtype=torch.float64),
}
REFERENCE = {
    "cross_entropy": lambda z, y: F.cross_entropy(z, y, reduction="none"),
    "mse": lambda z, y: 0.5 * ((z - y) ** 2).sum(1),
    "bce": lambda z, y: F.binary_cross_entropy_with_logits(z, y, reduction="none").sum(1),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_and_derivative_match_autograd(name):
    fn, y = LOSSES[name], TARGETS[name]
    z = Z.clone().requires_grad_(True)
    expected = REFERENCE[name](z, y)
    (grad,) = torch.autograd.grad(expected.sum(), z)
    torch.testing.assert_close(fn.per_example(Z, y), expected.detach())
    torch.testing.assert_close(fn.dz(Z, y), grad)
    assert fn.mean(Z, y) == pytest.approx(float(expected.detach().mean()))


def test_bce_is_stable_for_large_logits():
    z = torch.tensor([[500.0, -500.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    assert torch.isfinite(LOSSES["bce"].per_example(z, y)).all()


def test_bad_targets_are_refused():
    with pytest.raises(UsageError, match="integer class labels"):
        LOSSES["cross_entropy"].per_example(Z, TARGETS["mse"])
    with pytest.raises(UsageError, match="shaped like the output"):
        LOSSES["mse"].dz(Z, torch.zeros(6, 3, dtype=torch.float64))


def test_unknown_loss_lists_valid_names():
    with pytest.raises(UnknownNameError, match="bce, cross_entropy, mse"):
        loss("hinge")

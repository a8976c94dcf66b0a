"""The step schedule's milestones: the learning rate of torch's MultiStepLR, epoch by epoch."""

import pytest
import torch

from creditlab.errors import UsageError
from creditlab.optim import Schedule, parse_milestones
from creditlab.training.trainer import TrainConfig


def test_milestones_give_multisteplr_rates():
    steps_per_epoch, epochs, milestones = 3, 12, (4, 7, 9)
    ours = Schedule("step", 0.1, steps_per_epoch, steps_per_epoch * epochs, milestones=milestones)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    theirs = torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), gamma=0.1)
    for epoch in range(epochs):
        expected = opt.param_groups[0]["lr"]
        for step in range(steps_per_epoch):
            assert ours(epoch * steps_per_epoch + step) == pytest.approx(expected, rel=1e-12)
        opt.step()
        theirs.step()
    assert ours(0) == 0.1 and ours(steps_per_epoch * 9) == pytest.approx(1e-4)


def test_bad_milestones_are_refused():
    assert parse_milestones("100,150,200") == (100, 150, 200)
    assert parse_milestones(None) == ()
    for bad in ("150,100", "0,5", "5,5", "ten", "1,,2"):
        with pytest.raises(UsageError, match="milestones must be"):
            TrainConfig(milestones=bad)

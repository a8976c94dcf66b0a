"""Optimisers take the same steps as torch.optim given the same gradients; schedules."""

import math

import pytest
import torch

from creditlab.errors import UnknownNameError, UsageError
from creditlab.optim import SGD, Adam, AdamW, Schedule, optimizer

CASES = [
    (SGD(), lambda p: torch.optim.SGD(p, lr=0.1)),
    (SGD(momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    (
        SGD(momentum=0.9, nesterov=True, weight_decay=1e-2),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
    ),
    (Adam(), lambda p: torch.optim.Adam(p, lr=0.1)),
    (Adam(weight_decay=1e-2), lambda p: torch.optim.Adam(p, lr=0.1, weight_decay=1e-2)),
    (AdamW(weight_decay=0.05), lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.05)),
]


@pytest.mark.parametrize(("ours", "theirs"), CASES, ids=lambda c: repr(getattr(c, "__dict__", c)))
def test_steps_match_torch_optim(ours, theirs):
    g = torch.Generator().manual_seed(0)
    start = {
        "w": torch.randn(4, 3, generator=g, dtype=torch.float64),
        "b": torch.randn(3, generator=g, dtype=torch.float64),
    }
    grads = [
        {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in start.items()}
        for _ in range(6)
    ]
    params = {k: v.clone() for k, v in start.items()}
    state = ours.init(params)
    reference = {k: v.clone().requires_grad_(True) for k, v in start.items()}
    opt = theirs(list(reference.values()))
    for step in grads:
        ours.update(params, {k: v.clone() for k, v in step.items()}, state, lr=0.1)
        for k, p in reference.items():
            p.grad = step[k].clone()
        opt.step()
        for k in params:
            torch.testing.assert_close(params[k], reference[k].detach(), rtol=1e-12, atol=1e-12)


def test_update_leaves_the_given_updates_alone_without_momentum_aliasing():
    params = {"w": torch.zeros(2)}
    opt = SGD(momentum=0.5)
    state = opt.init(params)
    upd = {"w": torch.ones(2)}
    opt.update(params, upd, state, lr=1.0)
    opt.update(params, upd, state, lr=1.0)
    assert torch.equal(upd["w"], torch.ones(2))
    assert torch.equal(params["w"], torch.full((2,), -2.5))


def test_schedules():
    constant = Schedule("constant", 0.1, steps_per_epoch=10, total_steps=100)
    assert constant(0) == constant(99) == 0.1
    step = Schedule("step", 0.1, 10, 100, step_epochs=3, gamma=0.5)
    assert step(29) == 0.1 and step(30) == 0.05 and step(60) == 0.025
    cosine = Schedule("cosine", 0.1, 10, 100, min_lr=0.001)
    assert cosine(0) == pytest.approx(0.1)
    assert cosine(50) == pytest.approx(0.0505)
    assert cosine(100) == pytest.approx(0.001)
    warm = Schedule("cosine", 0.1, 10, 100, warmup_epochs=1)
    assert warm(0) == pytest.approx(0.01) and warm(9) == pytest.approx(0.1)
    assert all(math.isfinite(warm(t)) for t in range(100))


def test_bad_names_and_values():
    with pytest.raises(UnknownNameError, match="adam, adamw, sgd"):
        optimizer("rmsprop")
    with pytest.raises(UnknownNameError, match="constant, cosine, step"):
        Schedule("cyclic", 0.1, 1, 1)
    with pytest.raises(UsageError, match="momentum"):
        SGD(momentum=1.5)
    with pytest.raises(UsageError, match="nesterov"):
        SGD(nesterov=True)
    with pytest.raises(UsageError, match="learning rate"):
        Schedule("constant", -1.0, 1, 1)

"""Shared test set-up: real MNIST from ../shared/data, and never the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    value = os.environ.get("CREDITLAB_DATA")
    if not value:
        return ROOT.parent / "shared" / "data"
    path = Path(value)
    return path if path.is_absolute() else ROOT / path  # CI gives it relative to the root


# Subprocesses (CLI tests) and in-process loaders both see an absolute path.
os.environ["CREDITLAB_DATA"] = str(shared_data())
os.environ["CREDITLAB_MNIST_MIRRORS"] = ""  # a test that needs a download fails, not fetches
torch.set_flush_denormal(True)
# The tests' networks are small: one thread is faster than two fighting over the cores (and
# CI machines are often shared).
torch.set_num_threads(1)


@pytest.fixture
def digits():
    from creditlab.data import load_dataset

    return load_dataset("digits", progress=False)


def train_on_digits(net, rule_name: str, digits, epochs: int, batch: int = 32, lr: float = 3e-3):
    """`epochs` passes over digits' training set in its order: rule's updates, applied by Adam."""
    import creditlab as cl

    rule, opt = cl.rule(rule_name), cl.optim.Adam()
    params = net.parameters()
    state = opt.init(params)
    for _ in range(epochs):
        for a in range(0, len(digits.train_y), batch):
            u = rule.updates(net, digits.train_x[a : a + batch], digits.train_y[a : a + batch])
            opt.update(params, u, state, lr)


def make_dag(dtype=torch.float64, seed: int = 0, loss: str = "mse"):
    """The issue's example network: x feeds a and b, a feeds b and c, b feeds c."""
    import creditlab as cl

    net = cl.Network(dtype=dtype, device="cpu", seed=seed)
    x = net.input(4)
    a = net.dense(x, 5, activation="tanh")
    b = net.dense([x, a], 3, activation="sigmoid")
    c = net.dense([a, b], 2 if loss != "cross_entropy" else 3, activation="identity")
    net.output(c, loss=loss)
    return net


class Interrupt(Exception):
    """Raised by a patched training loop to stand for a crash or a Ctrl-C."""


def straight_and_resumed(make_config, tmp_path, data, monkeypatch, stop_at: int = 3):
    """Train one configuration twice: straight through, and interrupted as epoch `stop_at`
    begins, then resumed from its checkpoint. Returns (straight trainer, its results, resumed
    trainer, its results), for tests that the two end the same."""
    from creditlab.training.trainer import Trainer

    straight = Trainer(make_config(), tmp_path / "straight", progress=False, data=data)
    expected = straight.fit()
    original = Trainer.train_epoch

    def crash(self, epoch):
        if epoch == stop_at:
            raise Interrupt
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", crash)
    with pytest.raises(Interrupt):
        Trainer(make_config(), tmp_path / "broken", progress=False, data=data).fit()
    monkeypatch.setattr(Trainer, "train_epoch", original)
    resumed = Trainer(make_config(), tmp_path / "broken", progress=False, data=data)
    assert resumed.restore()
    assert resumed.epoch == stop_at - 1
    return straight, expected, resumed, resumed.fit()


def pytest_collection_modifyitems(config, items):
    """Tests marked slow run only when CREDITLAB_SLOW=1 (CI runs plain pytest: a sample)."""
    if os.environ.get("CREDITLAB_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow; set CREDITLAB_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def output_delta(net, trace, y):
    """delta_o = dE/ds_o for every example of the batch, for the (first) output group (tests
    seed backward sweeps with it)."""
    from creditlab.engine.backward import local_delta

    o = net.output_name
    return local_delta(net, trace, o, net.loss_fn.dz(trace.z[o], y))


def squared_error(z, target):
    """E = 0.5 ||z - target||^2 per example (mean over the batch returned) and dE/dz."""
    diff = z - target
    return 0.5 * diff.pow(2).sum(dim=1).mean(), diff


# The smallest GAN the command line runs: digits, tiny MLPs, one epoch, a small judge sample.
SMALL_GAN_ARGS = (
    "--dataset",
    "digits",
    "--generator",
    "mlp:32",
    "--discriminator",
    "mlp:32",
    "--latent",
    "8",
    "--epochs",
    "1",
    "--eval-samples",
    "200",
    "--quiet",
)

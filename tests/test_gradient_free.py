"""Evolution strategies and hill climbing: the batched population and what the rules promise."""

import math

import pytest
import torch

import creditlab as cl
from creditlab.checks.gradcheck import random_batch, random_dag
from creditlab.errors import UsageError
from creditlab.rules.machinery.population import (
    antithetic_losses,
    antithetic_members,
    population_losses,
    stack_members,
)
from creditlab.training.diagnostics import cosine
from creditlab.training.trainer import TrainConfig, Trainer
from tests.conftest import make_dag, straight_and_resumed


@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "bce"])
def test_batched_population_equals_the_member_by_member_loop(loss):
    net = random_dag(3, loss, ["tanh", "relu", "gelu", "sigmoid"], n_hidden=4)
    x, y = random_batch(net, 9, seed=1)
    params = net.parameters()
    g = torch.Generator().manual_seed(0)
    offsets = [None] + [
        {k: 0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in params.items()}
        for _ in range(5)
    ]
    batched = population_losses(net, x, y, stack_members(params, offsets))
    original = net.copy_parameters()
    for k, offset in enumerate(offsets):
        for name, p in net.parameters().items():
            p.copy_(original[name] + (0 if offset is None else offset[name]))
        assert batched[k].item() == pytest.approx(net.loss(x, y), rel=1e-12)
    net.load_parameters(original)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_antithetic_pass_equals_the_batched_population_of_explicit_copies(loss):
    net = random_dag(5, loss, ["tanh", "relu", "elu"], n_hidden=4)  # some groups read the input
    x, y = random_batch(net, 7, seed=2)
    g = torch.Generator().manual_seed(3)
    noise = {
        k: torch.randn((4, *p.shape), generator=g, dtype=p.dtype)
        for k, p in net.parameters().items()
    }
    explicit = population_losses(net, x, y, antithetic_members(net.parameters(), noise, 0.1))
    torch.testing.assert_close(antithetic_losses(net, x, y, noise, 0.1), explicit)


def test_antithetic_members_are_theta_then_plus_then_minus():
    params = {"w": torch.ones(2, 3), "b[out]": torch.zeros(3)}
    noise = {"w": torch.full((4, 2, 3), 2.0), "b[out]": torch.ones(4, 3)}
    members = antithetic_members(params, noise, sigma=0.5)
    assert members["w"].shape == (9, 2, 3)
    assert torch.equal(members["w"][0], torch.ones(2, 3))
    assert torch.equal(members["w"][1:5], torch.full((4, 2, 3), 2.0))
    assert torch.equal(members["w"][5:], torch.zeros(4, 2, 3))


def _quadratic():
    """A linear network with mse: the loss is a quadratic function of the parameters."""
    net = cl.mlp([6, 4], activation="identity", loss="mse", dtype=torch.float64, seed=0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 6, generator=g, dtype=torch.float64)
    y = torch.randn(32, 4, generator=g, dtype=torch.float64)
    return net, x, y


@pytest.mark.parametrize("shaping", ["rank", "none"])
def test_es_estimate_aligns_better_with_the_gradient_as_the_population_grows(shaping):
    net, x, y = _quadratic()
    gradient = cl.rule("bp").updates(net, x, y)
    flat_gradient = torch.cat([g.reshape(-1) for g in gradient.values()])
    means = []
    for population in (4, 32, 256, 2048):
        es = cl.rule("es", population=population, sigma=1e-3, shaping=shaping)
        cosines = []
        for _ in range(8):
            estimate = es.updates(net, x, y)
            cosines.append(
                cosine(torch.cat([e.reshape(-1) for e in estimate.values()]), flat_gradient)
            )
        means.append(sum(cosines) / len(cosines))
    assert means == sorted(means), means
    assert means[-1] > 0.8 and means[0] < 0.6, means


def test_es_reports_the_loss_at_theta_and_its_memory():
    net = make_dag(loss="cross_entropy")
    x, y = random_batch(net, 5, seed=0)
    es = cl.rule("es", population=10)
    es.updates(net, x, y)
    assert es.last_loss.item() == pytest.approx(net.loss(x, y))
    n_params = sum(p.numel() for p in net.parameters().values())
    units = sum(net.groups[j].size for j in net.order[1:])
    expected_mb = (5 * n_params + 11 * 5 * units) * 8 / 2**20  # noise, 11 members' activations
    assert es.metrics["population_mb"] == pytest.approx(expected_mb)


def test_hillclimb_never_accepts_a_step_that_raises_the_batch_loss():
    net = make_dag(loss="cross_entropy", dtype=torch.float64)
    climber = cl.rule("hillclimb", step=0.3, proposals=3)
    accepted = 0
    for seed in range(60):
        x, y = random_batch(net, 16, seed=seed % 4)
        before = net.loss(x, y)
        update = climber.updates(net, x, y)
        for name, p in net.parameters().items():
            p.sub_(update[name])
        after = net.loss(x, y)
        assert after <= before
        accepted += after < before
    assert 0 < accepted < 60  # it does move, and it does refuse


def test_hillclimb_step_size_settles_where_the_target_share_of_proposals_improve():
    # The step size is multiplied by grow per improving proposal and by shrink per other one,
    # so over a run the share of improving proposals approaches ln(1/shrink) / ln(grow/shrink)
    # (45% with the defaults) however many proposals a step scores. Counted per step instead,
    # the best of 8 improves far more often than that and the step size runs away.
    torch.manual_seed(0)
    net = cl.mlp([6, 8, 3], activation="tanh", loss="mse", dtype=torch.float64, seed=0)
    x, y = torch.randn(64, 6, dtype=torch.float64), torch.randn(64, 3, dtype=torch.float64)
    climber = cl.rule("hillclimb", proposals=8, step=0.5)
    shares = []
    for _ in range(400):
        update = climber.updates(net, x, y)
        for name, p in net.parameters().items():
            p.sub_(update[name])
        shares.append(climber.metrics["improving"])
    target = math.log(1 / 0.96) / math.log(1.05 / 0.96)
    assert abs(sum(shares[100:]) / 300 - target) < 0.08
    assert 1e-6 < climber.step_size < 0.5


def test_hillclimb_is_applied_as_is_whatever_the_optimizer(digits):
    config = TrainConfig(
        rule="hillclimb",
        optimizer="adam",
        lr=0.5,
        epochs=1,
        device="cpu",
        model="mlp:16",
        probe_every=0,
    )
    trainer = Trainer(config, progress=False, data=digits)
    assert trainer.opt.name == "sgd" and trainer.opt.momentum == 0
    assert trainer.schedule(0) == 1.0
    assert "applies its own step" in trainer.config_record()["optimizer_used"]


# Digits, model mlp:64, 20 epochs, seed 0. Measured: es (population 100, sigma 0.05, adam lr
# 0.01) 93.9%; hillclimb (defaults, 8 proposals a step) 88.3%; with 1 proposal 36.4% (seeds 1
# and 2: 41.7%). Chance is 10%.
@pytest.mark.parametrize(
    ("rule", "opts", "extra", "bar"),
    [
        ("es", {"population": 100, "sigma": 0.05}, {"optimizer": "adam", "lr": 0.01}, 0.85),
        ("hillclimb", {}, {}, 0.6),
    ],
)
def test_gradient_free_rules_beat_chance_on_digits(digits, rule, opts, extra, bar):
    config = TrainConfig(
        rule=rule, rule_opts=opts, model="mlp:64", epochs=20, device="cpu", probe_every=0, **extra
    )
    assert Trainer(config, progress=False, data=digits).fit()["test_accuracy"] >= bar


def test_resume_is_exact_for_es(tmp_path, digits, monkeypatch):
    def config():
        return TrainConfig(
            rule="es",
            rule_opts={"population": 20},
            model="mlp:16",
            epochs=3,
            device="cpu",
            optimizer="adam",
            lr=0.01,
            probe_every=0,
        )

    straight, _, resumed, _ = straight_and_resumed(config, tmp_path, digits, monkeypatch)
    for name, p in straight.net.parameters().items():
        assert torch.equal(p, resumed.net.parameters()[name]), name


@pytest.mark.parametrize(
    ("rule", "opts", "message"),
    [
        ("es", {"population": 7}, "even number"),
        ("es", {"sigma": -1.0}, "positive"),
        ("es", {"shaping": "fancy"}, "must be one of rank, none"),
        ("hillclimb", {"proposals": 0}, "proposals"),
        ("hillclimb", {"grow": 0.5}, "grow"),
        ("hillclimb", {"step": "big"}, "needs a float"),
    ],
)
def test_bad_options(rule, opts, message):
    with pytest.raises(UsageError, match=message):
        cl.rule(rule, **opts)

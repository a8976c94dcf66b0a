"""Capsules on the engine: routing (both modes) against the oracles, squash at zero, the
margin and reconstruction losses, the mask, several outputs, every error-carrying rule."""

import pytest
import torch

import creditlab as cl
from creditlab.checks import gradcheck
from creditlab.engine.activations import squash, squash_vjp
from creditlab.engine.losses import loss
from creditlab.engine.models import build_model
from creditlab.errors import GraphError
from tests.conftest import train_on_digits
from tests.test_conv import CARRYING, Transposed


def capsule_batch(net, seed, n=5):
    x, y = gradcheck.random_batch(net, n, seed)
    return x.sigmoid(), y


@pytest.mark.parametrize("seed", range(3))
def test_exact_routing_gradient_matches_finite_differences_and_autograd(seed):
    net = gradcheck.random_capsule_net(300 + seed, routing_gradient=True)
    x, y = capsule_batch(net, seed)
    fd, ag = gradcheck.check_network(net, x, y, "capsules").worst()
    assert fd < 1e-6 and ag < 1e-10


@pytest.mark.parametrize("seed", range(3))
def test_constant_couplings_match_autograd_with_detached_couplings(seed):
    net = gradcheck.random_capsule_net(300 + seed, routing_gradient=False)
    x, y = capsule_batch(net, seed)
    result = gradcheck.check_network(net, x, y, "capsules")
    assert result.worst()[1] < 1e-10


def small_capsnet(routing_gradient=True, routing=3, seed=0, dtype=torch.float64, n=3):
    net = cl.Network(dtype=dtype, seed=seed)
    x = net.input((1, 8, 8))
    c = net.conv(x, 4, kernel=3, activation="relu")
    pc = net.primary_capsules(c, types=2, dim=4, kernel=3, stride=1)
    dc = net.capsules(pc, n=n, dim=6, routing=routing, routing_gradient=routing_gradient)
    net.output(dc, loss="margin")
    m = net.mask(dc)
    net.output(net.dense(net.dense(m, 16), 64, activation="sigmoid"), "reconstruction", 0.05)
    return net


def test_the_two_routing_modes_differ_only_with_several_iterations():
    x, y = capsule_batch(small_capsnet(), 0)
    for routing, same in ((1, True), (3, False)):
        exact = cl.rule("bp").updates(small_capsnet(True, routing), x, y)
        constant = cl.rule("bp").updates(small_capsnet(False, routing), x, y)
        key = "W[h2->h3]"
        assert torch.allclose(exact[key], constant[key], rtol=0, atol=1e-14) == same


def test_squash_is_safe_at_zero_and_matches_autograd():
    s = torch.zeros(3, 4, dtype=torch.float64)
    g = torch.randn(3, 4, dtype=torch.float64)
    assert torch.equal(squash(s), s)
    back = squash_vjp(s, squash(s), g)
    assert torch.isfinite(back).all() and torch.equal(back, torch.zeros_like(g))
    s = torch.randn(5, 7, dtype=torch.float64) * torch.tensor(
        [[0.01], [0.5], [1.0], [3.0], [30.0]], dtype=torch.float64
    )
    g = torch.randn(5, 7, dtype=torch.float64)
    t = s.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad((gradcheck._reference_squash(t) * g).sum(), t)
    torch.testing.assert_close(squash_vjp(s, squash(s), g), expected)


def test_margin_loss_and_its_derivative_match_autograd():
    v = torch.randn(6, 4, 3, dtype=torch.float64) * 0.6
    v[0, 2] = 0  # a zero capsule: finite derivative
    y = torch.tensor([0, 3, 1, 2, 2, 0])
    margin = loss("margin")
    t = v.clone().requires_grad_(True)
    expected = gradcheck.REFERENCE_LOSSES["margin"](t, y) * 6
    (grad,) = torch.autograd.grad(expected, t)
    torch.testing.assert_close(margin.per_example(v, y).sum(), expected.detach())
    got = margin.dz(v, y)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[1:], grad[1:])
    torch.testing.assert_close(margin.scores(v), v.norm(dim=2))


def test_reconstruction_loss_compares_with_the_input():
    net = small_capsnet()
    x, y = capsule_batch(net, 1)
    trace = net.forward(x, labels=y)
    recon = trace.z[net.outputs[1].name]
    margin = loss("margin").mean(net.shaped("h3", trace.z["h3"]), y)
    expected = margin + 0.05 * (recon - x).pow(2).sum(dim=1).mean()
    assert net.loss(x, y) == pytest.approx(float(expected), rel=1e-12)


def test_mask_keeps_the_label_while_training_and_the_longest_in_evaluation():
    net = small_capsnet()
    x, y = capsule_batch(net, 2, n=8)
    v = net.predict(x)
    assert v.shape == (8, 3, 6)
    longest = v.norm(dim=2).argmax(dim=1)
    for labels, chosen in ((None, longest), (y, y)):
        masked = net.shaped("h4", net.forward(x, labels=labels).z["h4"])
        kept = masked.norm(dim=2) > 0
        assert torch.equal(kept, torch.nn.functional.one_hot(chosen, 3).bool())
        torch.testing.assert_close(masked[torch.arange(8), chosen], v[torch.arange(8), chosen])


def test_margin_refuses_non_capsules_and_capsules_refuse_non_capsules():
    net = cl.Network()
    x = net.input((1, 6, 6))
    h = net.dense(x, 10, name="plain")
    with pytest.raises(GraphError, match=r"margin loss needs a capsule group .* 'plain'"):
        net.output(h, loss="margin")
    with pytest.raises(GraphError, match=r"group 'dc' \(capsules\) reads 'plain'.*not a capsule"):
        net.capsules(h, n=2, dim=4, name="dc")
    with pytest.raises(GraphError, match=r"group 'm' \(mask\) reads 'plain'.*not a capsule"):
        net.mask(h, name="m")
    with pytest.raises(GraphError, match=r"reconstruction loss compares output group 'plain'"):
        net.output(h, loss="reconstruction")


@pytest.mark.parametrize("name", CARRYING)
def test_every_error_carrying_rule_on_capsules_with_image_or_flat_batches(name):
    net = small_capsnet()
    x, y = capsule_batch(net, 3)
    a = cl.rule(name).updates(net, x, y)
    b = cl.rule(name).updates(net, x.view(-1, 1, 8, 8), y)
    assert list(a) == list(net.parameters())
    for key in a:
        assert torch.isfinite(a[key]).all()
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_feedback_rule_with_w_in_place_is_backprop_on_capsules():
    net = small_capsnet(seed=4)
    x, y = capsule_batch(net, 4)
    ours, bp = Transposed().updates(net, x, y), cl.rule("bp").updates(net, x, y)
    for key in bp:
        torch.testing.assert_close(ours[key], bp[key], rtol=0, atol=0)


def test_capsnet_model_strings():
    full = build_model("capsnet", 784, 10)
    assert full.groups["primary"].shape == (1152, 8) and full.groups["digits"].shape == (10, 16)
    assert full.W[("primary", "digits")].shape == (1152, 10, 16, 8)
    assert [(o.name, o.loss.name, o.weight) for o in full.outputs] == [
        ("digits", "margin", 1.0),
        ("recon", "reconstruction", 0.0005),
    ]
    small = build_model("capsnet:small", 784, 10)
    assert small.groups["conv1"].shape == (64, 20, 20)
    assert small.groups["primary"].shape == (288, 8)
    assert small.n_scores == 10


def test_capsule_spec_round_trip():
    net = small_capsnet(routing_gradient=False)
    again = cl.Network.from_spec(net.spec(), dtype=torch.float64)
    x, y = capsule_batch(net, 5)
    assert again.loss(x, y) == net.loss(x, y)
    assert again.groups["h3"].options["routing_gradient"] is False


def test_capsule_net_trains_on_digits(digits):
    net = cl.Network(seed=0)
    x = net.input((1, 8, 8))
    c = net.conv(x, 16, kernel=3)
    pc = net.primary_capsules(c, types=4, dim=4, kernel=3, stride=1)
    dc = net.capsules(pc, n=10, dim=8, routing=2)
    net.output(dc, loss="margin")
    train_on_digits(net, "bp", digits, epochs=3)
    scores = net.loss_fn.scores(net.predict(digits.test_x))
    assert (scores.argmax(1) == digits.test_y).float().mean() > 0.9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", [r for r in CARRYING if r != "brsf"])  # brsf: device draws
def test_capsule_and_conv_updates_on_cuda_match_the_cpu(name):
    cpu = small_capsnet(seed=6)
    cuda = cl.Network.from_spec(cpu.spec(), dtype=torch.float64, device="cuda", seed=6)
    x, y = capsule_batch(cpu, 6)
    a = cl.rule(name).updates(cpu, x, y)
    b = cl.rule(name).updates(cuda, x.cuda(), y.cuda())
    for key in a:
        torch.testing.assert_close(b[key].cpu(), a[key], rtol=1e-9, atol=1e-12)

"""Batch normalisation as an engine kind: torch's forward in training and evaluation, torch's
running statistics, the exact backward, the buffers in checkpoints and specs, and the rules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import creditlab as cl
from creditlab.checks import gradcheck
from creditlab.engine.network import weight_name
from creditlab.errors import UsageError
from creditlab.rules.machinery.feedback import FeedbackRule, feedback_connections


def bn_net(spatial: bool, momentum=0.1, eps=1e-5, seed: int = 0) -> cl.Network:
    net = cl.Network(dtype=torch.float64, seed=seed)
    if spatial:
        x = net.input((2, 3, 3))
        h = net.conv(x, 3, kernel=2, activation="identity", bias=False)
    else:
        x = net.input(4)
        h = net.dense(x, 5, activation="identity", bias=False)
    bn = net.batch_norm(h, momentum=momentum, eps=eps, activation="tanh", name="bn")
    net.output(net.dense(bn, 3, activation="identity", name="out"))
    g = torch.Generator().manual_seed(seed)
    net.W[(h.name, "bn")].copy_(1 + 0.5 * torch.randn(net.W[(h.name, "bn")].shape, generator=g))
    net.b["bn"].copy_(0.5 * torch.randn(net.b["bn"].shape, generator=g, dtype=torch.float64))
    return net


@pytest.mark.parametrize("spatial", [False, True])
@pytest.mark.parametrize("momentum", [0.1, 0.7, None])
def test_batch_norm_matches_torch_in_training_and_evaluation(spatial, momentum):
    net = bn_net(spatial, momentum=momentum, eps=1e-3)
    h = net.groups["bn"].ins[0]
    gamma, beta = net.W[(h, "bn")], net.b["bn"]
    features = gamma.shape[0]
    mean, var = (
        torch.zeros(features, dtype=torch.float64),
        torch.ones(features, dtype=torch.float64),
    )
    for step in range(4):
        x = torch.randn(
            6, net.input_size, dtype=torch.float64, generator=torch.Generator().manual_seed(step)
        )
        trace = net.forward(x, train=True)
        u = net.shaped(h, trace.z[h])
        m = 1.0 / (step + 1) if momentum is None else momentum
        expected = F.batch_norm(u, mean, var, gamma, beta, training=True, momentum=m, eps=1e-3)
        torch.testing.assert_close(
            net.shaped("bn", trace.s["bn"]), expected, rtol=1e-12, atol=1e-12
        )
    torch.testing.assert_close(net.buffers["running_mean[bn]"], mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(net.buffers["running_var[bn]"], var, rtol=1e-12, atol=1e-12)
    assert int(net.buffers["num_batches_tracked[bn]"]) == 4
    # Evaluation uses the running statistics and moves nothing.
    trace = net.forward(x)
    expected = F.batch_norm(net.shaped(h, trace.z[h]), mean, var, gamma, beta, eps=1e-3)
    torch.testing.assert_close(net.shaped("bn", trace.s["bn"]), expected, rtol=1e-12, atol=1e-12)
    assert int(net.buffers["num_batches_tracked[bn]"]) == 4


@pytest.mark.parametrize("spatial", [False, True])
def test_batch_norm_backward_matches_finite_differences_and_autograd(spatial):
    net = bn_net(spatial, seed=3)
    x, y = gradcheck.random_batch(net, 5, 3)
    result = gradcheck.check_network(net, x, y, "bn")
    fd, ag = result.worst()
    assert fd < 1e-6 and ag < 1e-10, result.errors


def test_the_input_signal_through_batch_statistics_is_exact():
    """dE/dx through batch norm in training mode couples the examples: bp's input signal
    against autograd through torch's batch norm."""
    net = bn_net(True, seed=1)
    x = torch.randn(4, net.input_size, dtype=torch.float64)
    r = torch.randn(4, net.output_size, dtype=torch.float64)
    trace = net.forward(x, train=True)
    deltas = cl.rule("bp").signal_deltas(net, trace, r)
    ours = cl.rule("bp").signal_at_input(net, trace, deltas)
    xa = x.clone().requires_grad_(True)
    z = gradcheck.reference_forward(net, net.parameters(), xa)[net.output_name]
    (auto,) = torch.autograd.grad((r * z).sum(), xa)
    torch.testing.assert_close(ours, auto, rtol=1e-10, atol=1e-12)


def test_running_statistics_travel_with_copy_and_load_parameters_and_specs():
    net = bn_net(True)
    net.forward(torch.randn(5, net.input_size, dtype=torch.float64), train=True)
    saved = net.copy_parameters()
    assert {"running_mean[bn]", "running_var[bn]", "num_batches_tracked[bn]"} <= set(saved)
    assert "running_mean[bn]" not in net.parameters()  # buffers are not trained
    again = cl.Network.from_spec(net.spec(), dtype=torch.float64, seed=5)
    assert again.groups["bn"].options == net.groups["bn"].options
    assert "b[h1]" not in again.parameters()  # the convolution has no bias
    again.load_parameters(saved)
    x = torch.randn(3, net.input_size, dtype=torch.float64)
    torch.testing.assert_close(again.predict(x), net.predict(x), rtol=0, atol=0)
    with pytest.raises(UsageError, match=r"missing \['running_mean\[bn\]'"):
        again.load_parameters({k: v for k, v in saved.items() if k != "running_mean[bn]"})


def test_training_checkpoints_keep_the_running_statistics(tmp_path, digits):
    """A run's best-epoch weights (copy_parameters) hold the buffers: restoring them gives the
    same predictions."""
    from creditlab.engine.models import build_model

    net = build_model("vgg:small", 64, 10, dtype=torch.float32, image_shape=(1, 8, 8))
    rule, opt = cl.rule("bp"), cl.optim.Adam()
    params = net.parameters()
    state = opt.init(params)
    for a in range(0, 256, 32):
        opt.update(
            params,
            rule.updates(net, digits.train_x[a : a + 32], digits.train_y[a : a + 32]),
            state,
            1e-3,
        )
    best = net.copy_parameters()
    torch.save(best, tmp_path / "best.pt")
    before = net.predict(digits.test_x)
    rule.updates(net, digits.train_x[:32], digits.train_y[:32])  # moves the statistics
    assert not torch.equal(net.predict(digits.test_x), before)
    net.load_parameters(torch.load(tmp_path / "best.pt"))
    torch.testing.assert_close(net.predict(digits.test_x), before, rtol=0, atol=0)


def test_batch_norm_refuses_one_value_per_feature_and_bad_options():
    net = bn_net(False)
    with pytest.raises(UsageError, match=r"batch-norm group 'bn' needs more than one value"):
        net.forward(torch.zeros(1, 4, dtype=torch.float64), train=True)
    net.predict(torch.zeros(1, 4, dtype=torch.float64))  # evaluation is fine
    other = cl.Network()
    x = other.input(3)
    with pytest.raises(UsageError, match=r"momentum of group 'b' must be a number in \[0, 1\]"):
        other.batch_norm(x, momentum=2.0, name="b")
    with pytest.raises(UsageError, match=r"eps of group 'b' must be a number > 0"):
        other.batch_norm(x, eps=0, name="b")
    with pytest.raises(cl.GraphError, match=r"needs an image"):
        other.batch_norm(x, spatial=True, name="b")


@pytest.mark.parametrize("name", ["fa", "usf", "brsf", "frsf"])
def test_feedback_rules_carry_the_exact_signal_through_batch_norm(name):
    """The rules put their stand-ins in place of the weights of dense and convolution
    connections only: batch norm (and the parameter-free kinds) carry the signal exactly,
    with gamma itself and the batch statistics."""
    net = bn_net(True, seed=2)
    x, y = gradcheck.random_batch(net, 6, 2)
    rule = cl.rule(name)
    rule.updates(net, x, y)
    stand_ins = rule.feedback_matrices(net)
    assert not any("->bn]" in key for key in stand_ins)
    assert ("h1", "bn") not in feedback_connections(net)


class Transposed(FeedbackRule):
    """A feedback rule whose stand-ins are the forward weights themselves: it must be bp."""

    name = ""

    def step_feedback(self, net):
        return {weight_name(i, j): net.feedback_view(i, j) for i, j in feedback_connections(net)}


@pytest.mark.parametrize("spatial", [False, True])
def test_a_feedback_rule_with_w_in_place_is_bp_through_batch_norm(spatial):
    net = bn_net(spatial, seed=5)
    x, y = gradcheck.random_batch(net, 6, 5)
    ours, bp = Transposed().updates(net, x, y), cl.rule("bp").updates(net, x, y)
    for key in bp:
        torch.testing.assert_close(ours[key], bp[key], rtol=1e-12, atol=1e-14)


def test_dfa_trains_batch_norm_affine_parameters_with_its_delta():
    net = bn_net(True, seed=4)
    x, y = gradcheck.random_batch(net, 6, 4)
    rule = cl.rule("dfa")
    updates = rule.updates(net, x, y)
    assert float(updates["W[h1->bn]"].abs().max()) > 0 and float(updates["b[bn]"].abs().max()) > 0
    # gamma's update is sum(delta_bn * xhat) / N with DFA's delta at the group
    assert "bn" in type(rule)._targets(net)

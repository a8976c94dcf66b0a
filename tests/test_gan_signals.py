"""Error signals from outside the loss: dE/dx at the input, and updates for a given dE/dz_out.

bp is checked against autograd (float64) and central finite differences; the feedback rules
against hand-built references that carry the signal with their own matrices.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F

import creditlab as cl
from creditlab.checks import gradcheck
from creditlab.engine.activations import ACTIVATIONS
from creditlab.engine.backward import (
    backward_sweep,
    incoming_signal,
    local_delta,
    transpose_feedback,
)
from creditlab.engine.network import bias_name, weight_name
from creditlab.errors import UsageError
from creditlab.gan.losses import GAN_LOSSES
from creditlab.rules import RULES


def reference_output(net, x, params=None):
    """z_o by torch.nn.functional, differentiable for autograd (the oracle)."""
    params = params or net.parameters()
    z = {net.input_name: x}
    for j in net.order[1:]:
        group = net.groups[j]
        s = params[bias_name(j)] + sum(z[i] @ params[weight_name(i, j)] for i in group.ins)
        z[j] = gradcheck.REFERENCE_ACTIVATIONS[group.act.name](s)
    return z[net.output_name]


def outside_signal(net, n, seed):
    g = torch.Generator().manual_seed(seed + 50)
    return torch.randn(n, net.output_size, generator=g, dtype=net.dtype)


@pytest.mark.parametrize("seed", range(4))
def test_bp_input_signal_is_the_gradient_on_random_dags(seed):
    names = list(ACTIVATIONS)
    net = gradcheck.random_dag(200 + seed, "mse", names[seed:] + names[:seed], n_hidden=5)
    x, _ = gradcheck.random_batch(net, 6, seed)
    r = outside_signal(net, 6, seed)  # E = sum over n of <r_n, z_o(x_n)>
    ours = cl.rule("bp").input_signal(net, x, r)

    xa = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad((r * reference_output(net, xa)).sum(), xa)
    torch.testing.assert_close(ours, auto, rtol=1e-10, atol=1e-12)

    eps, numeric = 1e-6, torch.zeros_like(x)
    for idx in range(x.numel()):
        up, down = x.clone(), x.clone()
        up.view(-1)[idx] += eps
        down.view(-1)[idx] -= eps
        e_up = (r * net.predict(up)).sum()
        e_down = (r * net.predict(down)).sum()
        numeric.view(-1)[idx] = (e_up - e_down) / (2 * eps)
    torch.testing.assert_close(ours, numeric, rtol=1e-5, atol=1e-8)


def test_bp_updates_for_signal_are_the_gradient():
    net = gradcheck.random_dag(9, "mse", list(ACTIVATIONS), n_hidden=5)
    x, _ = gradcheck.random_batch(net, 7, 3)
    r = outside_signal(net, 7, 3)
    ours = cl.rule("bp").updates_for_signal(net, x, r)
    params = {k: v.clone().requires_grad_(True) for k, v in net.parameters().items()}
    energy = (r * reference_output(net, x, params)).sum() / x.shape[0]
    auto = dict(zip(params, torch.autograd.grad(energy, list(params.values())), strict=True))
    assert list(ours) == list(params)
    for name in params:
        torch.testing.assert_close(ours[name], auto[name], rtol=1e-10, atol=1e-12)


def gan_pair(seed=0):
    g = cl.mlp(
        [5, 16, 12, 9],
        activation="leaky_relu",
        loss="mse",
        output_activation="tanh",
        dtype=torch.float64,
        seed=seed,
    )
    d = cl.mlp(
        [9, 14, 10, 1], activation="leaky_relu", loss="bce", dtype=torch.float64, seed=seed + 1
    )
    for net in (g, d):
        for b in net.b.values():
            b.normal_(0, 0.3, generator=torch.Generator().manual_seed(seed + 7))
    latent = torch.randn(8, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return g, d, latent


@pytest.mark.parametrize("loss", sorted(GAN_LOSSES))
def test_generator_updates_are_the_gradient_of_the_gan_loss_through_d(loss):
    g, d, latent = gan_pair()
    bp = cl.rule("bp")
    g_trace = g.forward(latent, train=True)
    fake = g_trace.z[g.output_name]
    d_trace = d.forward(fake, train=True)
    _, dl = GAN_LOSSES[loss].g_fake(d_trace.z[d.output_name])
    signal = bp.input_signal(d, fake, dl, d_trace)
    ours = bp.updates_for_signal(g, latent, signal, g_trace)

    params = {k: v.clone().requires_grad_(True) for k, v in g.parameters().items()}
    logits = reference_output(d, reference_output(g, latent, params))
    energy = GAN_LOSSES[loss].g_fake(logits)[0].mean()
    auto = dict(zip(params, torch.autograd.grad(energy, list(params.values())), strict=True))
    for name in params:
        torch.testing.assert_close(ours[name], auto[name], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss", sorted(GAN_LOSSES))
def test_gan_loss_derivatives_match_autograd(loss):
    logits = torch.linspace(-3, 3, 13, dtype=torch.float64).view(-1, 1) + 0.01
    for term in (GAN_LOSSES[loss].d_real, GAN_LOSSES[loss].d_fake, GAN_LOSSES[loss].g_fake):
        la = logits.clone().requires_grad_(True)
        value, derivative = term(la.detach())
        (auto,) = torch.autograd.grad(term(la)[0].sum(), la)
        torch.testing.assert_close(derivative, auto)
        torch.testing.assert_close(value, term(la)[0].detach())
    if loss == "nonsaturating":  # the textbook forms
        torch.testing.assert_close(
            GAN_LOSSES[loss].d_real(logits)[0], -torch.log(torch.sigmoid(logits))
        )
        torch.testing.assert_close(
            GAN_LOSSES[loss].d_fake(logits)[0], -torch.log(1 - torch.sigmoid(logits))
        )


# ---- the feedback rules: hand-built references ---------------------------------------------
def chain(seed=0):
    net = cl.mlp(
        [6, 9, 7, 4], "tanh", "mse", output_activation="tanh", dtype=torch.float64, seed=seed
    )
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return net, x, outside_signal(net, 5, seed)


def chain_reference(net, x, r, B):
    """delta down a chain with B[W[i->j]] in W_ij^T's place, and dE/dx: by hand."""
    z = {"input": x}
    for a, b in links(net):
        z[b] = torch.tanh(z[a] @ net.W[(a, b)] + net.b[b])  # every group is tanh, out too
    delta = {"out": r * (1 - z["out"] ** 2)}
    for a, b in reversed(links(net)):
        carried = delta[b] @ B[weight_name(a, b)]
        if a == "input":
            return delta, carried
        delta[a] = carried * (1 - z[a] ** 2)
    raise AssertionError


def links(net):
    return list(itertools.pairwise(net.order))


def sign_feedback(W, M=None):
    s = torch.sign(W.t()) if M is None else torch.sign(W.t()) * M
    return s * (W.norm() / s.norm())


@pytest.mark.parametrize("name", ["fa", "usf", "frsf"])
def test_feedback_rules_carry_the_signal_along_their_own_matrices(name):
    net, x, r = chain(1)
    learner = cl.rule(name)
    ours = learner.input_signal(net, x, r)
    if name == "fa":
        B = {**learner.B.get(net), **learner.B_input.get(net)}
        for a, b in links(net):  # fixed random, not the forward weights, of W^T's shape
            assert B[weight_name(a, b)].shape == net.W[(a, b)].t().shape
            assert not torch.allclose(B[weight_name(a, b)], net.W[(a, b)].t())
    elif name == "usf":
        B = {weight_name(a, b): sign_feedback(net.W[(a, b)]) for a, b in links(net)}
    else:
        M = {**learner.M.get(net), **learner.M_input.get(net)}
        B = {
            weight_name(a, b): sign_feedback(net.W[(a, b)], M[weight_name(a, b)])
            for a, b in links(net)
        }
    _, expected = chain_reference(net, x, r, B)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
    bp = cl.rule("bp").input_signal(net, x, r)
    assert not torch.allclose(ours, bp)  # a different signal from the gradient's


def test_brsf_signal_is_sign_concordant_with_fresh_magnitudes():
    net, x, r = chain(2)
    learner = cl.rule("brsf")
    first = learner.input_signal(net, x, r)
    second = learner.input_signal(net, x, r)
    assert not torch.allclose(first, second)  # magnitudes redrawn for every signal
    # With every W positive, sign-concordant feedback is positive: so is the signal's sweep
    for W in net.W.values():
        W.abs_()
    signal = learner.input_signal(net, x, torch.ones_like(r))
    ones = {weight_name(a, b): torch.ones_like(net.W[(a, b)].t()) for a, b in links(net)}
    bp_like = chain_reference(net, x, torch.ones_like(r), ones)[1]
    assert torch.equal(torch.sign(signal), torch.sign(bp_like))


def test_dfa_sends_the_output_error_straight_to_the_input():
    net, x, r = chain(3)
    learner = cl.rule("dfa")
    ours = learner.input_signal(net, x, r)
    delta_o = r * (1 - net.predict(x) ** 2)
    B_x = learner._B_input[1]
    assert B_x.shape == (net.output_size, net.input_size)
    torch.testing.assert_close(ours, delta_o @ B_x)
    for W in net.W.values():  # the matrix is fixed: it ignores the forward weights
        W.mul_(-2)
    learner.input_signal(net, x, r)
    assert learner._B_input[1] is B_x


@pytest.mark.parametrize("name", ["bp", "fa", "dfa", "usf", "frsf"])
def test_updates_for_the_loss_signal_equal_the_rules_own_updates(name):
    net = cl.mlp([6, 9, 7, 3], activation="relu", dtype=torch.float64, seed=4)
    x, y = gradcheck.random_batch(net, 8, 4)
    learner = cl.rule(name)
    expected = learner.updates(net, x, y)
    dz = net.loss_fn.dz(net.predict(x), y)
    ours = learner.updates_for_signal(net, x, dz)
    for key in expected:
        torch.testing.assert_close(ours[key], expected[key], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["dtp", "pc", "ff", "es", "hillclimb"])
def test_rules_without_a_backward_signal_refuse_clearly(name):
    net, x, r = chain(0)
    learner = cl.rule(name)
    with pytest.raises(UsageError, match=f"rule {name!r} sends no error signal backwards"):
        learner.check_signal(net)
    with pytest.raises(UsageError, match="cannot pass a signal"):
        learner.input_signal(net, x, r)
    with pytest.raises(UsageError, match="cannot pass a signal"):
        learner.updates_for_signal(net, x, r)


def test_dni_with_perfect_synthesizers_passes_bp_signal():
    net, x, r = chain(5)
    trace = net.forward(x)
    exact = backward_sweep(net, trace, {"out": local_delta(net, trace, "out", r)})
    learner = cl.rule("dni")
    learner.oracle = lambda _net, _trace, _y, b: incoming_signal(
        net, exact, b, transpose_feedback(net)
    )
    torch.testing.assert_close(
        learner.input_signal(net, x, r), cl.rule("bp").input_signal(net, x, r)
    )
    torch.testing.assert_close(
        learner.updates_for_signal(net, x, r)["W[input->h1]"],
        cl.rule("bp").updates_for_signal(net, x, r)["W[input->h1]"],
    )


def test_dni_synthesizers_learn_from_outside_signals():
    net, x, r = chain(6)
    learner = cl.rule("dni")
    first = learner.input_signal(net, x, r)
    assert torch.equal(first, torch.zeros_like(first))  # synthesizers start by predicting 0
    for _ in range(20):
        later = learner.input_signal(net, x, r)
    assert later.abs().max() > 0
    assert learner.metrics["synth_loss"] > 0


def test_cdni_refuses_a_signal_without_a_target():
    net, x, r = chain(0)
    with pytest.raises(UsageError, match="conditions its synthesizers on the target"):
        cl.rule("cdni").check_signal(net)
    with pytest.raises(UsageError, match="conditions its synthesizers on the target"):
        cl.rule("cdni").input_signal(net, x, r)


def test_every_rule_either_carries_a_signal_or_refuses():
    net, x, r = chain(0)
    for name in RULES:
        learner = cl.rule(name)
        try:
            learner.check_signal(net)
        except UsageError:
            continue
        for _ in range(3):  # dni's synthesizers need a step per block before a signal gets down
            signal = learner.input_signal(net, x, r)
        assert signal.shape == x.shape
        assert F.mse_loss(signal, torch.zeros_like(x)) > 0

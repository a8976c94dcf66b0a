"""Backpropagation against finite differences and autograd, on fixed and random DAGs."""

import subprocess
import sys

import pytest
import torch

import creditlab as cl
from creditlab.checks import gradcheck
from creditlab.engine.activations import ACTIVATIONS
from creditlab.engine.backward import backward_sweep
from creditlab.engine.losses import LOSSES
from tests.conftest import make_dag, output_delta, squared_error


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_issue_example_equals_autograd_and_finite_differences(loss):
    net = make_dag(loss=loss)
    for b in net.b.values():
        b.normal_()
    x, y = gradcheck.random_batch(net, 7, seed=1)
    updates = cl.rule("bp").updates(net, x, y)
    assert list(updates) == list(net.parameters())
    auto = gradcheck.autograd_gradients(net, x, y)
    numeric = gradcheck.finite_differences(net, x, y)
    for name, p in net.parameters().items():
        assert updates[name].shape == p.shape
        torch.testing.assert_close(updates[name], auto[name], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(updates[name], numeric[name], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_random_dags_every_activation(seed, loss):
    names = list(ACTIVATIONS)
    acts = names[seed * 2 :] + names[: seed * 2]
    net = gradcheck.random_dag(100 + seed, loss, acts, n_hidden=5)
    x, y = gradcheck.random_batch(net, 6, seed)
    result = gradcheck.check_network(net, x, y, "test")
    fd, ag = result.worst()
    assert fd < 1e-4, result.errors
    assert ag < 1e-9, result.errors


def test_random_dag_has_fan_in_and_fan_out():
    net = gradcheck.random_dag(7, "mse", list(ACTIVATIONS), n_hidden=6)
    assert max(len(g.ins) for g in net.groups.values()) >= 2
    assert max(len(net.outs(j)) for j in net.order) >= 2


def test_float32_matches_float64_closely():
    net64 = make_dag(dtype=torch.float64, loss="cross_entropy")
    net32 = make_dag(dtype=torch.float32, loss="cross_entropy")
    x, y = gradcheck.random_batch(net64, 16, seed=2)
    u64 = cl.rule("bp").updates(net64, x, y)
    u32 = cl.rule("bp").updates(net32, x.float(), y)
    for name in u64:
        torch.testing.assert_close(u32[name].double(), u64[name], rtol=1e-4, atol=1e-6)


def test_updates_do_not_change_the_network():
    net = make_dag()
    before = net.copy_parameters()
    x, y = gradcheck.random_batch(net, 5, seed=0)
    cl.rule("bp").updates(net, x, y)
    for name, p in net.parameters().items():
        assert torch.equal(p, before[name])


def test_dropout_gradient_matches_autograd_with_the_same_mask():
    net = cl.mlp([6, 8, 8, 3], activation="tanh", dtype=torch.float64, dropout=0.5, seed=1)
    x, y = gradcheck.random_batch(net, 9, seed=3)
    state = net.rng.get_state()
    updates = cl.rule("bp").updates(net, x, y)
    net.rng.set_state(state)
    trace = net.forward(x, train=True)
    # autograd over the same masks: z_j = tanh(s_j) * gain_j
    params = {k: v.clone().requires_grad_(True) for k, v in net.parameters().items()}
    z = x
    for j in ("h1", "h2", "out"):
        i = net.groups[j].ins[0]
        s = z @ params[f"W[{i}->{j}]"] + params[f"b[{j}]"]
        z = s if j == "out" else torch.tanh(s) * trace.gain[j]
    loss = torch.nn.functional.cross_entropy(z, y)
    grads = torch.autograd.grad(loss, list(params.values()))
    for (name, _), g in zip(params.items(), grads, strict=True):
        torch.testing.assert_close(updates[name], g)


def test_backward_sweep_sums_every_path_out_of_a_group():
    net = make_dag()
    x, y = gradcheck.random_batch(net, 4, seed=5)
    trace = net.forward(x)
    deltas = backward_sweep(net, trace, {"h3": output_delta(net, trace, y)})
    # delta_h1 = f'(s_h1) * (delta_h2 W_h1h2^T + delta_h3 W_h1h3^T): h1 feeds h2 and h3
    incoming = deltas["h2"] @ net.W[("h1", "h2")].T + deltas["h3"] @ net.W[("h1", "h3")].T
    torch.testing.assert_close(deltas["h1"], (1 - trace.z["h1"] ** 2) * incoming)


def test_gradcheck_command_passes_and_reports_every_parameter():
    done = subprocess.run(
        [sys.executable, "-m", "creditlab", "gradcheck", "--trials", "2"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "gradcheck passed" in done.stdout
    assert done.stdout.count("W[") >= 6 * 3


def test_gradcheck_command_fails_on_a_wrong_derivative(monkeypatch, capsys):
    from creditlab import cli
    from creditlab.engine import activations

    broken = activations.Activation("tanh", torch.tanh, lambda s, z: 1 - z, "glorot")
    monkeypatch.setitem(activations.ACTIVATIONS, "tanh", broken)
    code = cli.main(["gradcheck", "--trials", "1"])
    out = capsys.readouterr()
    assert code == 1
    assert "MISMATCH" in out.out and "gradcheck FAILED" in out.err


def test_local_updates_equal_autograd_of_a_per_group_loss():
    from creditlab.rules.machinery.local import local_updates

    net = make_dag()
    x = torch.randn(6, 4, dtype=torch.float64)
    trace = net.forward(x)
    target = torch.randn(6, 3, dtype=torch.float64)
    loss, dz = squared_error(trace.z["h2"], target)
    updates = local_updates(net, trace, {"h2": dz})
    # autograd: only h2's own weights, with its inputs held fixed
    w_x = net.W[("input", "h2")].clone().requires_grad_(True)
    w_a = net.W[("h1", "h2")].clone().requires_grad_(True)
    b = net.b["h2"].clone().requires_grad_(True)
    z = torch.sigmoid(x @ w_x + trace.z["h1"] @ w_a + b)
    ref = 0.5 * ((z - target) ** 2).sum(1).mean()
    grads = torch.autograd.grad(ref, [w_x, w_a, b])
    assert float(loss) == pytest.approx(float(ref.detach()))
    for name, g in zip(["W[input->h2]", "W[h1->h2]", "b[h2]"], grads, strict=True):
        torch.testing.assert_close(updates[name], g)
    assert not updates["W[input->h1]"].any()

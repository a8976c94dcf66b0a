"""The forward tangent sweep (engine/tangent.py) against the backward sweep and torch.func.jvp.

For a tangent v of the parameters and the input and a signal u at the outputs, the tangent
sweep's (J v) . u must equal v . (J^T u) from the backward sweep, on random DAGs and on
convolutional, upsampling and capsule graphs, in float64. torch.func.jvp over the independent
reference forward pass of the gradient check is a second oracle for J v itself.
"""

from __future__ import annotations

import pytest
import torch

from creditlab.engine.backward import backward_sweep, input_signal, weight_updates
from creditlab.engine.tangent import loss_directional_derivative, tangent_sweep
from creditlab.errors import UsageError

try:  # the package layout is being reorganised: experiments/ -> checks/
    from creditlab.checks import gradcheck
except ImportError:  # pragma: no cover - the layout before the move
    from creditlab.checks import gradcheck


def _tangents(net, x, seed):
    g = torch.Generator().manual_seed(seed)
    params = {
        k: torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in net.parameters().items()
    }
    dx = torch.randn(x.shape, generator=g, dtype=x.dtype)
    return params, dx


def _adjoint_gap(net, x, y, seed, train=False):
    """|(J v) . u - v . (J^T u)| relative to the sum of the terms' magnitudes."""
    x = x.reshape(x.shape[0], -1)
    trace = net.forward(x, train=train, labels=y)
    params, dx = _tangents(net, x, seed)
    g = torch.Generator().manual_seed(seed + 1)
    u = {
        o.name: torch.randn(trace.z[o.name].shape, generator=g, dtype=x.dtype) for o in net.outputs
    }
    dz = tangent_sweep(net, trace, params, {net.input_name: dx})
    forward = sum((u[o] * dz[o]).sum() for o in u)
    deltas = backward_sweep(net, trace, {}, sources={o: t.clone() for o, t in u.items()})
    grads = weight_updates(net, trace, deltas)
    terms = [x.shape[0] * (params[k] * grads[k]).sum() for k in params]
    terms.append((dx * input_signal(net, deltas, trace=trace)).sum())
    backward = sum(terms)
    scale = sum(abs(float(t)) for t in terms) + abs(float(forward))
    return abs(float(forward - backward)) / scale


@pytest.mark.parametrize("seed", range(6))
def test_tangent_sweep_is_the_transpose_of_the_backward_sweep_on_random_dags(seed):
    acts = ["tanh", "sigmoid", "relu", "softplus", "elu", "gelu", "leaky_relu", "identity"]
    acts = acts[seed:] + acts[:seed]
    for loss in ("cross_entropy", "mse", "bce"):
        net = gradcheck.random_dag(seed * 10 + 1, loss, acts)
        x, y = gradcheck.random_batch(net, 5, seed)
        assert _adjoint_gap(net, x, y, seed) < 1e-12


@pytest.mark.parametrize("seed", range(4))
def test_tangent_sweep_is_the_transpose_on_conv_deconv_and_capsule_graphs(seed):
    nets = [
        gradcheck.random_conv_net(seed),
        gradcheck.random_deconv_net(seed),
        gradcheck.random_capsule_net(seed, routing_gradient=True),
        gradcheck.random_capsule_net(seed, routing_gradient=False),
    ]
    for net in nets:
        x, y = gradcheck.random_batch(net, 4, seed)
        assert _adjoint_gap(net, x, y, seed) < 1e-12, net


def test_tangent_sweep_counts_dropout_as_the_backward_sweep_does():
    net = gradcheck.random_dag(3, "mse", ["tanh", "sigmoid"])
    for g in net.groups.values():
        if not g.is_input and g.name != "out":
            g.dropout = 0.5
    x, y = gradcheck.random_batch(net, 6, 0)
    assert _adjoint_gap(net, x, y, 0, train=True) < 1e-12


@pytest.mark.parametrize(
    "make",
    [
        lambda s: gradcheck.random_dag(s, "cross_entropy", ["tanh", "gelu", "sigmoid"]),
        gradcheck.random_conv_net,
        lambda s: gradcheck.random_capsule_net(s, routing_gradient=True),
    ],
)
def test_tangent_sweep_equals_torch_func_jvp_of_the_reference_forward(make):
    net = make(2)
    x, y = gradcheck.random_batch(net, 4, 2)
    x = x.reshape(x.shape[0], -1)
    params, dx = _tangents(net, x, 5)
    names = list(params)

    def outputs(values, inputs):
        z = gradcheck.reference_forward(net, dict(zip(names, values, strict=True)), inputs, y)
        return tuple(z[o.name] for o in net.outputs)

    primal = tuple(p.clone() for p in net.parameters().values())
    _, expected = torch.func.jvp(outputs, (primal, x), (tuple(params.values()), dx))
    dz = tangent_sweep(net, net.forward(x, labels=y), params, {net.input_name: dx})
    for o, want in zip(net.outputs, expected, strict=True):
        torch.testing.assert_close(dz[o.name], want, rtol=1e-9, atol=1e-11)


def test_directional_derivative_matches_central_differences():
    net = gradcheck.random_dag(7, "cross_entropy", ["tanh", "softplus"])
    x, y = gradcheck.random_batch(net, 5, 1)
    params, _ = _tangents(net, x, 3)
    dE = float(
        loss_directional_derivative(
            net, net.forward(x), y, tangent_sweep(net, net.forward(x), params)
        ).mean()
    )
    eps, live = 1e-6, net.parameters()
    for k, v in params.items():
        live[k].add_(v, alpha=eps)
    up = net.loss(x, y)
    for k, v in params.items():
        live[k].add_(v, alpha=-2 * eps)
    down = net.loss(x, y)
    assert dE == pytest.approx((up - down) / (2 * eps), rel=1e-6)


def test_a_kind_without_a_tangent_is_refused_by_name():
    from creditlab.engine.kinds.base import Kind

    class Odd(Kind):
        name = "odd"

    net = gradcheck.random_dag(1, "mse", ["tanh"])
    group = net.groups["out"]
    with pytest.raises(UsageError, match="'out' is a odd group"):
        Odd().tangent(net, group, None, [], [], [], None)

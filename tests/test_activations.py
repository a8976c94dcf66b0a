"""Each activation's derivative against autograd and central differences."""

import pytest
import torch

from creditlab.checks.gradcheck import REFERENCE_ACTIVATIONS
from creditlab.engine.activations import ACTIVATIONS, activation
from creditlab.errors import UnknownNameError

# Points near 0 but off relu's kink, and large magnitudes where saturation matters.
S = torch.cat([torch.linspace(-6, 6, 241, dtype=torch.float64), torch.tensor([-30.0, 30.0])])
S = S[S.abs() > 1e-3]


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_forward_matches_reference(name):
    act = ACTIVATIONS[name]
    torch.testing.assert_close(act.f(S), REFERENCE_ACTIVATIONS[name](S), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_derivative_matches_autograd(name):
    act = ACTIVATIONS[name]
    s = S.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(REFERENCE_ACTIVATIONS[name](s).sum(), s)
    got = act.df(S, act.f(S))
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_derivative_matches_finite_differences(name):
    act, eps = ACTIVATIONS[name], 1e-6
    numeric = (act.f(S + eps) - act.f(S - eps)) / (2 * eps)
    torch.testing.assert_close(act.df(S, act.f(S)), numeric, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_float32_keeps_dtype(name):
    s = S.float()
    act = ACTIVATIONS[name]
    assert act.f(s).dtype == torch.float32
    assert act.df(s, act.f(s)).dtype == torch.float32


def test_required_activations_exist():
    required = {"identity", "sigmoid", "tanh", "relu", "leaky_relu", "softplus", "elu", "gelu"}
    assert required <= set(ACTIVATIONS)


def test_unknown_activation_lists_valid_names():
    with pytest.raises(UnknownNameError, match=r"valid activations: .*relu.*tanh"):
        activation("swish-ish")

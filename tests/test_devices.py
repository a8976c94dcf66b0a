"""Devices are normalised where they enter: on a CPU machine the CUDA calls are faked, so the
logic that would have caught "batch on cuda:0, network on cuda" runs everywhere."""

import pytest
import torch

import creditlab as cl
from creditlab.engine.devices import resolve_device


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend torch sees two GPUs and the current one is cuda:1."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)


def test_bare_cuda_becomes_the_current_index(fake_cuda):
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cuda")) == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    # A tensor made on a bare "cuda" reports an index; the resolved device must equal it.
    assert str(resolve_device("cuda")) == "cuda:1"


def test_a_gpu_index_torch_does_not_see_is_refused(fake_cuda):
    with pytest.raises(cl.UsageError, match="cuda:0 to cuda:1"):
        resolve_device("cuda:2")


def test_cpu_and_auto_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(cl.UsageError, match="no CUDA GPU"):
        resolve_device("cuda")


@pytest.mark.parametrize("bad", ["mps", "xpu", "meta", "cpu:3", "gpu", "", "cuda:x"])
def test_unsupported_devices_are_refused(bad):
    with pytest.raises(cl.UsageError):
        resolve_device(bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_network_on_bare_cuda_accepts_batches_made_on_cuda():
    net = cl.mlp([4, 8, 3], device="cuda", seed=0)
    x = torch.randn(5, 4, device="cuda")
    y = torch.randint(0, 3, (5,), device="cuda")
    assert net.device == x.device
    cl.rule("bp").updates(net, x, y)
    assert net.predict(x).shape == (5, 3)

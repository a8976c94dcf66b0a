"""Residual additions, global average pooling, layers without bias, and the presets built from
them (resnet20, vgg:small): gradient checks, exact signals, specs, and the torch twins."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import creditlab as cl
from creditlab.checks import gradcheck
from creditlab.engine.kinds.batch_norm import RESIDUAL_GRAPH
from creditlab.engine.models import build_model
from creditlab.errors import GraphError, UsageError

ROOT = Path(__file__).resolve().parents[1]


def torch_zoo():
    spec = importlib.util.spec_from_file_location("zoo", ROOT / "benchmarks/torch_models_zoo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("seed", range(4))
def test_random_residual_graphs_match_finite_differences_and_autograd(seed):
    net = gradcheck.random_network(RESIDUAL_GRAPH, seed, ["cross_entropy", "mse", "bce"][seed % 3])
    x, y = gradcheck.random_batch(net, 5, seed)
    result = gradcheck.check_network(net, x, y, f"residual {seed}")
    fd, ag = result.worst()
    assert fd < 1e-6 and ag < 1e-10, result.errors


def test_random_residual_graphs_cover_the_new_kinds():
    kinds = set()
    shortcuts = set()
    for seed in range(6):
        net = gradcheck.random_network(RESIDUAL_GRAPH, seed, "cross_entropy")
        kinds |= {g.kind for g in net.groups.values()}
        for g in net.groups.values():
            if g.kind == "add":
                shortcuts.add(net.groups[g.ins[1]].kind)  # identity (an add) or projection (bn)
    assert {"add", "batch_norm", "global_pool", "conv", "pool"} <= kinds
    assert shortcuts == {"add", "batch_norm"}
    # and `creditlab gradcheck` runs them
    assert any("residual" in r.case for r in gradcheck.run(trials=1))


def test_addition_carries_the_signal_exactly_to_every_group_it_reads():
    net = cl.Network(dtype=torch.float64)
    x = net.input(3)
    a = net.dense(x, 4, activation="tanh")
    b = net.dense(x, 4, activation="identity")
    s = net.add([a, b], activation="relu", name="sum")
    net.output(net.dense(s, 2, activation="identity", name="out"), loss="mse")
    xb = torch.randn(5, 3, dtype=torch.float64)
    trace = net.forward(xb)
    torch.testing.assert_close(trace.s["sum"], trace.z[a.name] + trace.z[b.name])
    deltas = cl.rule("bp").signal_deltas(net, trace, torch.randn(5, 2, dtype=torch.float64))
    from creditlab.engine.backward import incoming_signal, transpose_feedback

    for i in (a.name, b.name):
        dz = incoming_signal(net, {"sum": deltas["sum"]}, i, transpose_feedback(net), trace)
        torch.testing.assert_close(dz, deltas["sum"])  # the identity: delta_sum itself
    assert "W[h1->sum]" not in net.parameters() and "b[sum]" not in net.parameters()


def test_addition_refuses_groups_of_different_sizes():
    net = cl.Network()
    x = net.input(3)
    a, b = net.dense(x, 4, name="a"), net.dense(x, 5, name="b")
    with pytest.raises(GraphError, match=r"addition 's' reads groups of different sizes"):
        net.add([a, b], name="s")
    with pytest.raises(GraphError, match=r"reads the same group twice"):
        net.add([a, a], name="t")


def test_global_pool_is_adaptive_average_pooling():
    net = cl.Network(dtype=torch.float64)
    x = net.input((3, 4, 5))
    g = net.global_pool(x, name="gap")
    assert g.shape == (3, 1, 1)
    net.output(net.dense(g, 2, activation="identity"))
    xb = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    expected = F.adaptive_avg_pool2d(xb, 1).reshape(2, 3)
    torch.testing.assert_close(net.forward(xb).s["gap"], expected)


def test_layers_without_bias_have_no_bias_parameter_and_keep_it_in_specs():
    net = cl.Network()
    x = net.input((1, 6, 6))
    c = net.conv(x, 2, bias=False, name="c")
    d = net.dense(c, 4, bias=False, name="d")
    net.output(net.dense(d, 3, activation="identity", name="out"))
    assert {"b[c]", "b[d]"}.isdisjoint(net.parameters()) and "b[out]" in net.parameters()
    again = cl.Network.from_spec(net.spec())
    assert set(again.parameters()) == set(net.parameters())
    with pytest.raises(UsageError, match=r"bias of group 'e' must be True or False"):
        net.dense(x, 2, bias=0, name="e")


def test_resnet20_preset_is_he_et_al_s_cifar_resnet_with_option_b_shortcuts():
    net = build_model("resnet20", 3 * 32 * 32, 10, image_shape=(3, 32, 32))
    kinds = [g.kind for g in net.groups.values()]
    assert kinds.count("conv") == 19 + 2  # 1 + 3 stages x 3 blocks x 2, and 2 projections
    assert kinds.count("add") == 9 and kinds.count("global_pool") == 1
    assert net.groups["layer3.2.add"].shape == (64, 8, 8)
    assert sum(p.numel() for p in net.parameters().values()) == 272_474
    assert all(not net.kind(j).has_bias(net.groups[j]) for j in net.groups if "conv" in j)


def without_init(spec: dict) -> dict:
    return {**spec, "groups": [{k: v for k, v in g.items() if k != "init"} for g in spec["groups"]]}


@pytest.mark.parametrize(
    ("preset", "factory"), [("resnet20", "resnet20"), ("vgg:small", "vgg_small")]
)
def test_presets_and_their_torch_twins_have_one_structure(preset, factory):
    """from_torch of the torch module gives the preset's groups, and to_torch copies the
    preset's weights into the module: they then compute the same function."""
    zoo = torch_zoo()
    module = zoo.resnet20(10, 1) if factory == "resnet20" else zoo.vgg_small(10, 1, 8)
    module = module.double()
    net = build_model(preset, 64, 10, dtype=torch.float64, image_shape=(1, 8, 8), seed=3)
    converted = cl.from_torch(module, torch.zeros(2, 1, 8, 8, dtype=torch.float64))
    # The same groups, kinds, options, reads and activations (the initialisation aside:
    # the converted network's weights are the module's).
    assert without_init(net.spec()) == without_init(converted.spec())
    cl.to_torch(net, module)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    module.eval()
    torch.testing.assert_close(net.predict(x), module(x), rtol=1e-10, atol=1e-12)


def test_vgg_small_trains_on_digits_with_bp(digits):
    net = build_model("vgg:small", 64, 10, image_shape=(1, 8, 8), seed=0)
    rule, opt = cl.rule("bp"), cl.optim.Adam()
    params = net.parameters()
    state = opt.init(params)
    for _ in range(2):
        for a in range(0, len(digits.train_y), 32):
            u = rule.updates(net, digits.train_x[a : a + 32], digits.train_y[a : a + 32])
            opt.update(params, u, state, 3e-3)
    accuracy = (net.predict(digits.test_x).argmax(1) == digits.test_y).float().mean()
    assert accuracy > 0.9, float(accuracy)

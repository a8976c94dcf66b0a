"""Building networks: the public API, validation errors that name the group, the forward pass."""

import json

import pytest
import torch

import creditlab as cl
from creditlab.engine.models import build_model
from creditlab.errors import GraphError, UnknownNameError, UsageError
from tests.conftest import make_dag


def test_issue_example_builds_and_runs():
    net = make_dag()
    params = net.parameters()
    assert list(params) == [
        "W[input->h1]",
        "b[h1]",
        "W[input->h2]",
        "W[h1->h2]",
        "b[h2]",
        "W[h1->h3]",
        "W[h2->h3]",
        "b[h3]",
    ]
    assert params["W[h1->h2]"].shape == (5, 3) and params["W[h1->h2]"].dtype == torch.float64
    xb = torch.randn(7, 4, dtype=torch.float64)
    assert net.predict(xb).shape == (7, 2)
    assert isinstance(net.loss(xb, torch.zeros(7, 2, dtype=torch.float64)), float)
    assert net.outs("h1") == ["h2", "h3"]


def test_parameters_are_live():
    net = make_dag()
    xb = torch.randn(3, 4, dtype=torch.float64)
    before = net.predict(xb).clone()
    net.parameters()["b[h3]"].add_(1.0)
    torch.testing.assert_close(net.predict(xb), before + 1.0)


def test_forward_records_s_and_z_by_the_formula():
    net = make_dag()
    x = torch.randn(5, 4, dtype=torch.float64)
    trace = net.forward(x)
    W, b = net.W, net.b
    s_h2 = x @ W[("input", "h2")] + trace.z["h1"] @ W[("h1", "h2")] + b["h2"]
    torch.testing.assert_close(trace.s["h2"], s_h2)
    torch.testing.assert_close(trace.z["h2"], torch.sigmoid(s_h2))


def test_same_seed_same_weights_different_seed_different():
    a, b, c = make_dag(seed=3), make_dag(seed=3), make_dag(seed=4)
    for name, p in a.parameters().items():
        torch.testing.assert_close(p, b.parameters()[name])
    assert not torch.equal(a.W[("input", "h1")], c.W[("input", "h1")])


def test_initialisation_scales():
    net = cl.mlp([400, 300, 10], activation="relu", seed=0)
    he = net.W[("input", "h1")]
    assert he.std().item() == pytest.approx((2 / 400) ** 0.5, rel=0.05)
    glorot = net.W[("h1", "out")]  # identity output: Glorot uniform
    assert glorot.abs().max().item() <= (6 / 310) ** 0.5
    tanh = cl.mlp([400, 300, 10], activation="tanh", seed=0).W[("input", "h1")]
    assert tanh.abs().max().item() <= (6 / 700) ** 0.5
    forced = cl.mlp([400, 300, 10], activation="tanh", init="he", seed=0).W[("input", "h1")]
    assert forced.std().item() == pytest.approx((2 / 400) ** 0.5, rel=0.05)


def test_mlp_shortcut():
    net = cl.mlp([784, 800, 800, 10], activation="relu", loss="cross_entropy")
    assert [net.groups[g].size for g in net.order] == [784, 800, 800, 10]
    assert net.output_name == "out" and net.loss_fn.name == "cross_entropy"
    assert net.predict(torch.zeros(2, 784)).shape == (2, 10)


def test_cycle_is_refused_naming_the_groups():
    net = cl.Network()
    x = net.input(3)
    a = net.dense(x, 4)
    b = net.dense(a, 4)
    c = net.dense(b, 2, activation="identity")
    net.output(c)
    net.connect(b, a)  # a -> b -> a
    with pytest.raises(GraphError, match=r"cycle through group.*h1.*h2"):
        net.predict(torch.zeros(1, 3))


def test_unread_group_is_refused_by_name():
    net = cl.Network()
    x = net.input(3)
    net.dense(x, 4, name="dangling")
    out = net.dense(x, 2, activation="identity")
    with pytest.raises(GraphError, match="'dangling' is read by no group"):
        net.output(out)


def test_missing_output_is_refused():
    net = cl.Network()
    net.dense(net.input(3), 2)
    with pytest.raises(GraphError, match="no output group"):
        net.parameters()


def test_sizes_and_references_are_checked():
    net = cl.Network()
    x = net.input(3)
    with pytest.raises(GraphError, match="'h1' needs a positive integer size"):
        net.dense(x, 0)
    with pytest.raises(GraphError, match="'big' refers to 'nowhere'"):
        net.dense("nowhere", 3, name="big")
    with pytest.raises(GraphError, match="reads the same group twice"):
        net.dense([x, x], 3)
    other = cl.Network()
    foreign = other.input(3)
    foreign.name = "elsewhere"
    with pytest.raises(GraphError, match="elsewhere"):
        net.dense(foreign, 3)


def test_batch_of_the_wrong_width_names_the_input_group():
    net = make_dag()
    with pytest.raises(UsageError, match="input group 'input' has 4 units"):
        net.predict(torch.zeros(2, 5, dtype=torch.float64))


def test_unknown_names_at_build_time():
    net = cl.Network()
    x = net.input(3)
    with pytest.raises(UnknownNameError, match="valid activations"):
        net.dense(x, 3, activation="sine")
    with pytest.raises(UsageError, match="valid inits"):
        net.dense(x, 3, init="orthogonal")
    with pytest.raises(UnknownNameError, match="valid losses"):
        net.output(net.dense(x, 3), loss="hinge")


def test_spec_round_trip_and_groups_in_any_order():
    net = make_dag(seed=5)
    spec = net.spec()
    spec["groups"].reverse()
    rebuilt = cl.Network.from_spec(json.loads(json.dumps(spec)), dtype=torch.float64, seed=5)
    assert rebuilt.order == net.order
    for name, p in net.parameters().items():
        torch.testing.assert_close(rebuilt.parameters()[name], p)


def test_spec_with_a_cycle_names_the_groups():
    spec = {
        "groups": [
            {"name": "x", "size": 2},
            {"name": "a", "size": 2, "ins": ["x", "b"]},
            {"name": "b", "size": 2, "ins": ["a"]},
            {"name": "o", "size": 2, "ins": ["b"], "activation": "identity"},
        ],
        "output": "o",
    }
    with pytest.raises(GraphError, match=r"cycle through group.*a, b"):
        cl.Network.from_spec(spec)


def test_load_parameters_checks_shapes():
    net = make_dag()
    values = net.copy_parameters()
    values["W[h1->h2]"] = torch.zeros(5, 4, dtype=torch.float64)
    with pytest.raises(UsageError, match=r"W\[h1->h2\] has shape \(5, 3\)"):
        net.load_parameters(values)


def test_json_model_with_auto_sizes(tmp_path):
    spec = {
        "groups": [
            {"name": "x", "size": "auto"},
            {"name": "a", "size": 16, "ins": ["x"], "activation": "tanh"},
            {"name": "b", "size": 16, "ins": ["x", "a"], "activation": "relu"},
            {"name": "o", "size": "auto", "ins": ["a", "b"], "activation": "identity"},
        ],
        "output": "o",
        "loss": "cross_entropy",
    }
    path = tmp_path / "net.json"
    path.write_text(json.dumps(spec))
    net = build_model(str(path), input_size=64, n_outputs=10)
    assert net.input_size == 64 and net.output_size == 10


def test_skip_model_is_a_dag_with_merges():
    net = build_model("skip:8-8-8", input_size=5, n_outputs=3)
    assert net.groups["h2"].ins == ["h1", "input"]
    assert net.groups["out"].ins == ["h1", "h2", "h3"]


def test_bad_model_strings():
    with pytest.raises(UsageError, match="valid models"):
        build_model("cnn:3x3", 4, 2)
    with pytest.raises(UsageError, match="bad hidden sizes"):
        build_model("mlp:80-x", 4, 2)


def test_emit_changes_what_readers_receive_and_weight_updates_use_it():
    from creditlab.engine.backward import weight_updates

    net = make_dag()
    x = torch.randn(5, 4, dtype=torch.float64)
    trace = net.forward(x, emit=lambda j, z: 2 * z)
    assert torch.equal(trace.emitted["h1"], 2 * trace.z["h1"])
    expected_s = x @ net.W[("input", "h2")] + 2 * trace.z["h1"] @ net.W[("h1", "h2")] + net.b["h2"]
    torch.testing.assert_close(trace.s["h2"], expected_s)
    assert "h3" not in trace.emitted or torch.equal(trace.emitted["h3"], trace.z["h3"])
    delta = torch.ones(5, 3, dtype=torch.float64)
    updates = weight_updates(net, trace, {"h2": delta})
    torch.testing.assert_close(updates["W[h1->h2]"], (2 * trace.z["h1"]).T @ delta / 5)

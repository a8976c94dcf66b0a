"""Kinds describe themselves: every registered kind declares its option schema, its reference
forward and a random graph, and appears in the networks gradcheck checks; a kind that leaves
one out is named with what it lacks; the builders take their options from the schema."""

from __future__ import annotations

import pytest
import torch

from creditlab.checks import gradcheck
from creditlab.engine.kinds import KINDS, Kind, KindOption
from creditlab.engine.network import Network
from creditlab.errors import GraphError, UsageError


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_kind_declares_its_schema_reference_and_random_graph(name):
    assert gradcheck.declaration_problems(KINDS[name]) == []


def test_every_kind_appears_in_the_random_graph_gradcheck():
    checked = gradcheck.kinds_checked()  # as `creditlab gradcheck` runs by default
    missing = sorted(set(KINDS) - checked)
    assert not missing, (
        f"kinds {missing} appear in none of the random networks gradcheck checks; give them "
        "a Kind.random_graph (docs/writing-a-kind.md)"
    )


def test_a_kind_without_a_reference_is_named_with_what_it_lacks():
    class Scale(Kind):  # registers itself, as every kind does
        name = "scale_test"
        weighted = False
        biased = False
        options = {"factor": KindOption(int, 2, minimum=1)}

    try:
        assert KINDS["scale_test"].name == "scale_test"
        problems = gradcheck.declaration_problems(KINDS["scale_test"])
        assert problems == [
            "kind 'scale_test' declares no reference forward (Kind.reference); see "
            "docs/writing-a-kind.md",
            "kind 'scale_test' declares no random graph for gradcheck (Kind.random_graph); "
            "see docs/writing-a-kind.md",
        ]
        with pytest.raises(NotImplementedError, match="declares no reference forward"):
            KINDS["scale_test"].reference(None, None, [], {}, None, None)
    finally:
        del KINDS["scale_test"]
    assert "scale_test" not in gradcheck.kinds_checked(trials=1)


def test_a_subclass_that_keeps_its_parents_name_does_not_replace_it():
    before = KINDS["conv"]

    class Conv2(type(before)):
        pass

    assert KINDS["conv"] is before


def test_the_schema_fills_defaults_and_checks_values():
    net = Network(dtype=torch.float64)
    x = net.input((1, 6, 6))
    c = net.conv(x, 2, name="c")
    assert c.options == {"channels": 2, "kernel": 3, "stride": 1, "padding": 0, "bias": True}
    p = net.pool(c, 2, name="p")
    assert p.options == {"kernel": 2, "stride": 2, "mode": "max"}  # stride: the kernel
    with pytest.raises(GraphError, match="padding of group 'bad' must be an integer >= 0"):
        net.conv(x, 2, padding=-1, name="bad")
    with pytest.raises(UsageError, match="unknown pooling 'median'; valid: max, avg"):
        net.pool(c, 2, kind="median", name="bad")
    with pytest.raises(GraphError, match=r"group 'bad' \(conv\) has no option\(s\) dilation"):
        net._add_kind("conv", x, {"channels": 1, "dilation": 2}, "relu", None, "bad", 0.0)
    with pytest.raises(GraphError, match=r"group 'bad' \(conv\) needs option 'channels'"):
        net._add_kind("conv", x, {}, "relu", None, "bad", 0.0)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_each_reference_gives_the_kinds_forward(name):
    """On the random graphs, every group's reference s_j equals the engine's forward."""
    graph = KINDS[name].random_graph
    for trial in range(3):
        for variant in graph.variants(trial):
            net = gradcheck.random_network(graph, 100 + trial, variant, trial)
            x, y = gradcheck.random_batch(net, 3, trial)
            if graph.unit_input:
                x = x.sigmoid()
            # a training pass, as gradcheck's (batch norm's batch statistics; no dropout)
            ours = net.forward(x, train=True, labels=y).z
            theirs = gradcheck.reference_forward(net, net.parameters(), x, y)
            for j in net.order:
                assert torch.allclose(ours[j], theirs[j], atol=1e-12), (name, trial, j)

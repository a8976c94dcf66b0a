"""A rule declares what it can do, and nothing outside its file has to know it: two rules
defined here, and registered only for these tests, train, compare, stack and compile (or are
refused, each with the reason it states itself), and the messages that list the rules able to
do something list them too."""

from __future__ import annotations

import dataclasses
import json
from typing import ClassVar

import pytest
import torch

from creditlab import cli
from creditlab.engine.network import Network
from creditlab.errors import UsageError
from creditlab.rules import RULES, Option, Rule
from creditlab.rules.bp import Backprop
from creditlab.rules.machinery.stacking import Stateless
from creditlab.speed.compiled import CompiledStep, compile_problem
from creditlab.speed.stacked_runs import train_stacked
from creditlab.speed.vmap_stack import stacked_rule
from creditlab.training.trainer import TrainConfig, Trainer, train


class HalfBackprop(Backprop):
    """bp's gradient times a fixed factor: compiles and stacks as bp does (it says so by
    inheriting bp's declarations), and trains every kind of group."""

    name = "half_bp_test"
    summary = "test rule: the bp gradient times a factor"
    options: ClassVar[dict[str, Option]] = {"factor": Option(float, 0.5, "factor on the gradient")}

    def updates(self, net, x, y):
        return {k: self.opts["factor"] * u for k, u in super().updates(net, x, y).items()}


class JitteredBackprop(Rule):
    """bp's gradient times a factor drawn every step from the rule's own generator: it
    declares that it cannot be compiled or stacked, and why, and that it trains dense groups
    only (the default)."""

    name = "jittered_bp_test"
    summary = "test rule: the bp gradient times a random factor"
    not_compiled = "it draws a jitter factor from its own generator every step (test rule)"

    def __init__(self, **opts):
        super().__init__(**opts)
        self.generator = torch.Generator().manual_seed(0)

    @classmethod
    def stacked_form(cls, rules, nets):
        return "its jitter is drawn per member inside the step (test rule)"

    def updates(self, net, x, y):
        bp = Backprop()
        gradient = bp.updates(net, x, y)
        self.last_loss = bp.last_loss
        factor = 0.5 + float(torch.rand((), generator=self.generator))
        return {k: factor * u for k, u in gradient.items()}


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    monkeypatch.setitem(RULES, HalfBackprop.name, HalfBackprop)
    monkeypatch.setitem(RULES, JitteredBackprop.name, JitteredBackprop)


TINY = TrainConfig(
    dataset="digits",
    train_subset=600,
    batch_size=50,
    epochs=2,
    model="mlp:16-16",
    probe_every=0,
    dtype="float64",
    optimizer="sgd",
    lr=0.2,
    momentum=0.9,
)


@pytest.mark.parametrize("name", [HalfBackprop.name, JitteredBackprop.name])
def test_a_rule_defined_in_a_test_trains(name, digits):
    results = train(dataclasses.replace(TINY, rule=name), progress=False)
    assert results["status"] == "finished" and results["rule"] == name
    assert results["test_accuracy"] > 0.4  # chance is 0.1; 24 steps at half the rate


def test_a_declared_stacked_form_stacks_and_equals_separate_runs(digits, tmp_path):
    configs = [dataclasses.replace(TINY, rule=HalfBackprop.name, seed=s) for s in (0, 1)]
    lines = []
    stacked = train_stacked(configs, None, progress=False, log=lines.append, data=digits)
    assert not [line for line in lines if "stack" in line]
    for config, result in zip(configs, stacked, strict=True):
        assert all(h["stacked"] == 2 for h in result["history"])
        alone = train(config, progress=False)
        assert result["test_accuracy"] == alone["test_accuracy"]
        for a, b in zip(result["history"], alone["history"], strict=True):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9)


def test_a_rule_refuses_to_stack_with_its_own_reason(digits):
    configs = [dataclasses.replace(TINY, rule=JitteredBackprop.name, seed=s) for s in (0, 1)]
    nets = [Trainer(c, progress=False, data=digits).net for c in configs]
    plan = stacked_rule([JitteredBackprop(), JitteredBackprop()], nets)
    assert plan == "its jitter is drawn per member inside the step (test rule)"
    assert isinstance(stacked_rule([HalfBackprop(), HalfBackprop()], nets), Stateless)
    # Members of different rules do not share a stack, whatever each could do alone.
    assert "do not share one arithmetic shape" in stacked_rule([HalfBackprop(), Backprop()], nets)


def test_compare_stacks_a_new_rule_and_trains_a_refused_one_alone(tmp_path, capsys):
    out = tmp_path / "report"
    rules = f"{HalfBackprop.name},{JitteredBackprop.name}"
    args = ["compare", "--dataset", "digits", "--train-subset", "600", "--batch-size", "50"]
    args += ["--epochs", "2", "--model", "mlp:16-16", "--probe-every", "0", "--quiet"]
    args += ["--optimizer", "sgd", "--lr", "0.2", "--momentum", "0.9"]  # as TINY
    assert cli.main([*args, "--rules", rules, "--seeds", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{HalfBackprop.name} seeds 0, 1: 2 runs stacked" in printed
    assert "its jitter is drawn per member inside the step (test rule)" in printed
    record = json.loads((out / "results.json").read_text())
    assert sorted({r["rule"] for r in record["runs"]}) == sorted(rules.split(","))
    assert all(r["status"] == "finished" for r in record["runs"])


def test_a_rule_that_compiles_compiles_and_matches_eager(digits):
    config = dataclasses.replace(TINY, train_subset=90, batch_size=40, rule=HalfBackprop.name)
    eager = Trainer(config, progress=False, data=digits)
    lines = []
    compiled = Trainer(config, progress=False, data=digits, compile=True, log=lines.append)
    assert compiled.compiled and isinstance(compiled.compiled_step, CompiledStep) and not lines
    torch._dynamo.reset()
    a, b = eager.train_epoch(1), compiled.train_epoch(1)
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-10)
    for name, p in eager.net.parameters().items():
        assert torch.allclose(compiled.net.parameters()[name], p, rtol=1e-9, atol=1e-12), name


def test_a_rule_refuses_to_compile_with_its_own_reason(digits):
    lines = []
    config = dataclasses.replace(TINY, rule=JitteredBackprop.name)
    trainer = Trainer(config, progress=False, data=digits, compile=True, log=lines.append)
    assert not trainer.compiled and trainer.compiled_step is None
    assert lines == [
        f"--compile: {JitteredBackprop.name} runs eagerly: it draws a jitter factor from its "
        "own generator every step (test rule)"
    ]
    # A rule that declares nothing is refused as unchecked, by name.
    unchecked = type("Unchecked", (JitteredBackprop,), {"name": "unchecked_test"})
    unchecked.not_compiled = Rule.not_compiled
    problem = compile_problem(unchecked(), trainer.net)
    assert problem == "rule unchecked_test has not been checked against eager under torch.compile"


def test_messages_list_the_rules_that_can_from_what_they_declare():
    conv = Network(dtype=torch.float64, seed=0)
    x = conv.input((1, 8, 8))
    conv.output(conv.dense(conv.conv(x, 2, kernel=3), 10, activation="identity"))
    with pytest.raises(UsageError, match="trains dense groups only") as refused:
        JitteredBackprop().check(conv)
    every_kind = str(refused.value).split("rules for every kind: ")[1]
    assert HalfBackprop.name in every_kind and JitteredBackprop.name not in every_kind
    assert {name for name, cls in RULES.items() if cls.any_kind} == {
        name.strip(" )") for name in every_kind.split(",")
    }
    with pytest.raises(UsageError, match="rules that can: ") as no_signal:
        JitteredBackprop().check_signal(conv)
    can = str(no_signal.value).split("rules that can: ")[1]
    assert HalfBackprop.name in can and JitteredBackprop.name not in can

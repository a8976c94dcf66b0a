"""Stacked networks: every member's steps equal its own separate run (float64, a few steps)."""

from __future__ import annotations

import pytest
import torch

import creditlab as cl
from creditlab.optim import SGD, Adam
from creditlab.speed.vmap_stack import Stack, StackError, stacked_rule


def _members(rule_specs, seeds, sizes=(6, 7, 5, 3), dropout=0.0):
    nets = [
        cl.mlp(sizes, activation="tanh", dtype=torch.float64, seed=s, dropout=dropout)
        for s in seeds
    ]
    rules = [cl.rule(name, **opts) for name, opts in rule_specs]
    return nets, rules


def _batches(k, steps, n=9, d=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(steps, k, n, d, generator=g, dtype=torch.float64)
    ys = torch.randint(0, classes, (steps, k, n), generator=g)
    return xs, ys


def _separate(net, learner, opt, lr, xs, ys):
    params = net.parameters()
    state = opt.init(params)
    losses = []
    for x, y in zip(xs, ys, strict=True):
        updates = learner.updates(net, x, y)
        losses.append(float(learner.last_loss))
        opt.update(params, updates, state, lr)
    return net.copy_parameters(), losses, learner.state_dict()


def _stacked(nets, rules, opts, lrs, xs, ys, compile=False):
    stack = Stack(nets, rules, compile)
    assert stack.compiled == compile
    states = [o.init(n.parameters()) for o, n in zip(opts, nets, strict=True)]
    losses = []
    for x, y in zip(xs, ys, strict=True):
        updates, loss, _ = stack.updates(x, y)
        losses.append(loss.tolist())
        for k, net in enumerate(nets):
            opts[k].update(
                net.parameters(), {n: u[k] for n, u in updates.items()}, states[k], lrs[k]
            )
    stack.sync()
    return stack, losses


def _check(rule_specs, opt_factory, lrs, steps=4, compile=False):
    seeds = list(range(3, 3 + len(rule_specs)))
    xs, ys = _batches(len(seeds), steps)
    nets, rules = _members(rule_specs, seeds)
    opts = [opt_factory(k) for k in range(len(seeds))]
    _, losses = _stacked(nets, rules, opts, lrs, xs, ys, compile)
    ref_nets, ref_rules = _members(rule_specs, seeds)
    for k in range(len(seeds)):
        params, ref_losses, ref_state = _separate(
            ref_nets[k], ref_rules[k], opt_factory(k), lrs[k], xs[:, k], ys[:, k]
        )
        got = nets[k].parameters()
        for name, p in params.items():
            assert torch.allclose(got[name], p, rtol=1e-10, atol=1e-12), (k, name)
        assert [step[k] for step in losses] == pytest.approx(ref_losses, rel=1e-10)
        _same_state(rules[k].state_dict(), ref_state)
    return nets


def _same_state(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    elif isinstance(a, dict):
        assert set(a) == set(b)
        for key in a:
            _same_state(a[key], b[key])
    else:
        assert a == b


def test_bp_members_with_different_seeds_and_learning_rates_match_separate_runs():
    _check([("bp", {})] * 3, lambda k: SGD(momentum=0.9, weight_decay=1e-3 * k), [0.1, 0.05, 0.2])


def test_mixed_feedback_rules_match_separate_runs():
    specs = [("fa", {}), ("usf", {}), ("fa", {"scale": 1.5}), ("frsf", {}), ("brsf", {})]
    _check(specs, lambda k: SGD(momentum=0.5), [0.1, 0.2, 0.05, 0.1, 0.1])


def test_a_compiled_stack_matches_separate_runs():
    specs = [("fa", {}), ("usf", {}), ("frsf", {})]
    _check(specs, lambda k: SGD(momentum=0.9), [0.1, 0.2, 0.05], steps=3, compile=True)


@pytest.mark.parametrize("name", ["dfa", "dni"])
def test_a_compiled_stack_of_a_rule_with_state_matches_separate_runs(name):
    # dfa's fixed matrices are handed to the compiled step; dni's synthesizers' gradients
    # leave it, and their optimiser steps outside it.
    _check([(name, {})] * 2, lambda k: Adam(), [0.01, 0.02], steps=3, compile=True)


@pytest.mark.parametrize("name", ["dfa", "dni", "cdni"])
def test_rules_with_state_match_separate_runs(name):
    _check([(name, {})] * 2, lambda k: Adam(), [0.01, 0.02])


@pytest.mark.parametrize(
    "opts", [{"synth_optimizer": "sgd"}, {"synth": "mlp", "hidden": 5}, {"boundaries": ("h2",)}]
)
def test_synthesizers_stepped_outside_vmap_match_separate_runs(opts):
    # The stack steps every member's synthesizers at once, outside vmap: each synthesizer
    # optimiser and model, and a boundary left without one, as in a separate run.
    _check([("dni", opts)] * 3, lambda k: SGD(momentum=0.9), [0.05, 0.1, 0.02])


def test_the_stack_changes_every_member():
    nets, rules = _members([("bp", {})] * 2, [0, 1])
    before = [n.copy_parameters() for n in nets]
    xs, ys = _batches(2, 1)
    stack = Stack(nets, rules)
    updates, _, _ = stack.updates(xs[0], ys[0])
    for name, p in stack.params.items():
        p.sub_(updates[name])
    for k in range(2):
        assert all(not torch.equal(before[k][n], p) for n, p in nets[k].parameters().items())


@pytest.mark.parametrize(
    ("specs", "dropout", "why"),
    [
        ([("bp", {}), ("bp", {})], 0.2, "dropout"),
        ([("bp", {}), ("fa", {})], 0.0, "do not share"),
        ([("dfa", {}), ("dfa", {"scale": 1.0})], 0.0, "options differ"),
        ([("es", {}), ("es", {})], 0.0, "no stacked form"),
        ([("pc", {}), ("pc", {})], 0.0, "no stacked form"),
    ],
)
def test_what_cannot_stack_says_why(specs, dropout, why):
    nets, rules = _members(specs, [0, 1], dropout=dropout)
    plan = stacked_rule(rules, nets)
    assert isinstance(plan, str) and why in plan
    with pytest.raises(StackError, match=why):
        Stack(nets, rules)


def test_members_must_share_the_architecture():
    a = cl.mlp([6, 7, 3], dtype=torch.float64)
    b = cl.mlp([6, 8, 3], dtype=torch.float64)
    with pytest.raises(ValueError, match="architecture"):
        Stack([a, b], [cl.rule("bp"), cl.rule("bp")])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_a_stack_on_cuda_matches_separate_runs(compile):
    """Eager: fa, usf and brsf mixed (brsf draws from CUDA generators); compiled: bp, through
    torch.compile's CUDA graphs."""
    specs = [("fa", {}), ("usf", {}), ("brsf", {})] if not compile else [("bp", {})] * 3
    seeds, steps = [3, 4, 5], 3
    xs, ys = _batches(len(seeds), steps)
    xs, ys = xs.cuda(), ys.cuda()

    def members():
        nets = [
            cl.mlp((6, 7, 5, 3), "tanh", dtype=torch.float64, seed=s, device="cuda") for s in seeds
        ]
        return nets, [cl.rule(name, **opts) for name, opts in specs]

    nets, rules = members()
    _stacked(nets, rules, [SGD(momentum=0.9) for _ in seeds], [0.1] * 3, xs, ys, compile)
    ref_nets, ref_rules = members()
    for k in range(len(seeds)):
        params, _, _ = _separate(
            ref_nets[k], ref_rules[k], SGD(momentum=0.9), 0.1, xs[:, k], ys[:, k]
        )
        for name, p in params.items():
            assert torch.allclose(nets[k].parameters()[name], p, rtol=1e-8, atol=1e-10), (k, name)

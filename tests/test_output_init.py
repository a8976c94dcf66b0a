"""--output-init: the output layer's weights start as drawn or at zero, recorded in config.json,
kept across resumption and stacking; fa's and dfa's feedback matrices do not follow the zeroed
weights to zero, and the rules still learn from there."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import creditlab as cl
from creditlab import cli
from creditlab.errors import UsageError
from creditlab.speed.stacked_runs import train_stacked
from creditlab.training.output_init import apply_output_init
from creditlab.training.trainer import TrainConfig, Trainer, differing_fields, train

TINY = TrainConfig(
    dataset="digits",
    train_subset=600,
    batch_size=50,
    epochs=2,
    model="mlp:32",
    probe_every=0,
    dtype="float64",
)
CLI = ["--dataset", "digits", "--train-subset", "600", "--batch-size", "20", "--model", "mlp:16"]
CLI += ["--probe-every", "0", "--quiet"]


def output_weights(net) -> list[torch.Tensor]:
    return [net.W[(i, net.output_name)] for i in net.groups[net.output_name].ins]


def test_zero_sets_only_the_weights_into_the_output(digits):
    zero = Trainer(dataclasses.replace(TINY, output_init="zero"), progress=False, data=digits)
    drawn = Trainer(dataclasses.replace(TINY, output_init="random"), progress=False, data=digits)
    assert all(bool((w == 0).all()) for w in output_weights(zero.net))
    assert all(bool((w != 0).any()) for w in output_weights(drawn.net))
    for key, w in drawn.net.W.items():  # every other weight and every bias as drawn
        if key[1] != drawn.net.output_name:
            assert torch.equal(zero.net.W[key], w), key
    for name, b in drawn.net.b.items():
        assert torch.equal(zero.net.b[name], b), name


@pytest.mark.parametrize("name", ["fa", "dfa"])
def test_feedback_matrices_do_not_follow_the_zeroed_weights(digits, name):
    """fa's B and dfa's B_j take their scale from the output group's initial distribution
    (Network.init_std), not from its weights: zeroing the weights leaves them unchanged."""
    matrices = []
    for how in ("random", "zero"):
        config = dataclasses.replace(TINY, rule=name, output_init=how)
        trainer = Trainer(config, progress=False, data=digits)
        d = trainer.data  # on the device, in the run's dtype
        trainer.rule.updates(trainer.net, d.train_x[:8], d.train_y[:8])
        B = trainer.rule.state_dict()["B"]
        assert B and all(float(m.abs().max()) > 0 for m in B.values())
        matrices.append(B)
    assert matrices[0].keys() == matrices[1].keys()
    for key in matrices[0]:
        assert torch.equal(matrices[0][key], matrices[1][key]), key


@pytest.mark.parametrize("name", ["fa", "dfa"])
def test_fa_and_dfa_learn_from_zero_output_weights(digits, name):
    config = dataclasses.replace(
        TINY, rule=name, output_init="zero", train_subset=None, epochs=4, dtype="float32"
    )
    results = train(config, progress=False)
    assert results["status"] == "finished"
    assert results["test_accuracy"] > 0.8  # chance is 0.1


def test_the_cli_option_is_recorded_and_a_resumption_keeps_it(tmp_path):
    out = tmp_path / "r"
    args = ["train", *CLI, "--rule", "fa", "--output-init", "zero", "--out", str(out)]
    assert cli.main([*args, "--epochs", "1"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["output_init"] == "zero" and config["settings_source"]["output_init"] == "user"
    assert cli.main([*args, "--epochs", "2", "--resume"]) == 0
    assert json.loads((out / "results.json").read_text())["epochs"] == 2
    # resuming it as another start is refused, naming the field
    other = [a if a != "zero" else "random" for a in args]
    assert cli.main([*other, "--epochs", "3", "--resume"]) == 2


def test_runs_saved_before_the_option_resume_as_random():
    old = {"rule": "fa", "lr": 0.05}
    assert differing_fields(old, {"rule": "fa", "lr": 0.05, "output_init": "random"}) == []
    changed = differing_fields(old, {"rule": "fa", "lr": 0.05, "output_init": "zero"})
    assert changed == ["output_init (checkpoint 'random', now 'zero')"]


def test_compare_passes_the_option_to_every_run(tmp_path):
    out = tmp_path / "c"
    args = ["compare", *CLI, "--rules", "bp,fa", "--epochs", "1", "--output-init", "zero"]
    assert cli.main([*args, "--out", str(out)]) == 0
    configs = [json.loads(p.read_text()) for p in sorted(out.rglob("config.json"))]
    runs = [c for c in configs if "rule" in c and c.get("rule")]
    assert {c["rule"] for c in runs} == {"bp", "fa"}
    assert all(c["output_init"] == "zero" for c in runs)


def test_stacked_members_with_zero_output_weights_equal_their_separate_runs(digits, tmp_path):
    configs = [
        dataclasses.replace(TINY, rule="fa", output_init="zero", lr=0.1),
        dataclasses.replace(TINY, rule="fa", output_init="random", lr=0.1, seed=1),
    ]
    dirs = [tmp_path / f"stacked{k}" for k in range(2)]
    stacked = train_stacked(configs, dirs, progress=False, data=digits)
    for k, config in enumerate(configs):
        alone = train(config, tmp_path / f"alone{k}", progress=False)
        assert stacked[k]["history"][0]["stacked"] == 2
        assert stacked[k]["test_accuracy"] == alone["test_accuracy"]
        a = torch.load(dirs[k] / "best.pt", weights_only=True)["params"]
        b = torch.load(tmp_path / f"alone{k}" / "best.pt", weights_only=True)["params"]
        for name in a:
            assert torch.allclose(a[name], b[name], rtol=1e-9, atol=1e-12), name


def test_bad_values_are_refused_clearly(tmp_path, capsys):
    with pytest.raises(UsageError, match="output init"):
        TrainConfig(output_init="ones")
    code = cli.main(["train", *CLI, "--output-init", "ones", "--out", str(tmp_path / "r")])
    assert code == 2
    assert "output init" in capsys.readouterr().err


def test_a_capsule_output_cannot_start_at_zero():
    """Routed capsules with zero weights predict zero vectors, whose squash passes no gradient:
    refused when asked for, rather than a network that never learns."""
    net = cl.Network(seed=0)
    x = net.input((1, 8, 8))
    pc = net.primary_capsules(net.conv(x, 4, kernel=3), types=2, dim=4, kernel=3)
    net.output(net.capsules(pc, n=3, dim=6, routing=2), loss="margin")
    with pytest.raises(UsageError, match="needs a dense output group"):
        apply_output_init(net, "zero")
    apply_output_init(net, "random")  # leaves it as drawn


@pytest.mark.parametrize("name", ["fa", "dfa"])
def test_fa_and_dfa_recommend_the_zero_start_and_the_user_may_refuse_it(digits, name):
    recommended = Trainer(dataclasses.replace(TINY, rule=name), progress=False, data=digits)
    assert recommended.config.output_init == "zero"
    assert recommended.sources["output_init"] == "rule"
    assert all(bool((w == 0).all()) for w in output_weights(recommended.net))
    config = dataclasses.replace(TINY, rule=name, output_init="random")
    drawn = Trainer(config, progress=False, data=digits)
    assert drawn.sources["output_init"] == "user"
    assert all(bool((w != 0).any()) for w in output_weights(drawn.net))
    bp = Trainer(dataclasses.replace(TINY, rule="bp"), progress=False, data=digits)
    assert (bp.config.output_init, bp.sources["output_init"]) == ("random", "default")


def test_a_capsule_output_keeps_its_weights_under_the_recommendation(digits, tmp_path):
    """fa recommends the zero start for dense outputs; a capsule network trained by fa keeps its
    drawn weights (the run records the default), and asking for zero there is refused."""
    net = cl.Network(seed=0)
    x = net.input((1, 8, 8))
    pc = net.primary_capsules(net.conv(x, 4, kernel=3), types=2, dim=4, kernel=3)
    net.output(net.capsules(pc, n=10, dim=6, routing=2), loss="margin")
    spec = tmp_path / "caps.json"
    spec.write_text(json.dumps(net.spec()))
    config = dataclasses.replace(TINY, rule="fa", model=str(spec))
    trainer = Trainer(config, progress=False, data=digits)
    assert (trainer.config.output_init, trainer.sources["output_init"]) == ("random", "default")
    assert all(bool((w != 0).any()) for w in output_weights(trainer.net))
    with pytest.raises(UsageError, match="needs a dense output group"):
        Trainer(dataclasses.replace(config, output_init="zero"), progress=False, data=digits)

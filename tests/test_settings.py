"""Each rule's recommended settings: applied where the user sets none, listed, recorded with
their source, and good enough that every rule learns with nothing but --rule."""

from __future__ import annotations

import json

import pytest

from creditlab import cli
from creditlab.optim import OPTIMIZERS, SCHEDULES
from creditlab.rules import RULES
from creditlab.training import settings
from creditlab.training.trainer import TrainConfig, Trainer, differing_fields

TINY = ["--train-subset", "1000", "--batch-size", "25", "--model", "mlp:16", "--quiet"]


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_declares_valid_recommended_settings(name):
    recommended = RULES[name].recommended
    assert set(recommended) <= set(settings.DEFAULTS), "only settings the loop knows"
    assert recommended.get("optimizer", "sgd") in OPTIMIZERS
    assert recommended.get("schedule", "constant") in SCHEDULES
    TrainConfig(rule=name, **recommended)  # the values pass the config's own checks


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_recommends_valid_settings_per_family(name):
    cls = RULES[name]
    assert set(cls.recommended_for) <= set(settings.FAMILIES)
    for family, extra in cls.recommended_for.items():
        assert set(extra) <= {*settings.DEFAULTS, "options"}, family
        options = extra.get("options", {})
        assert set(options) <= set(cls.options), (family, options)
        config, _ = settings.resolve(
            TrainConfig(rule=name, **{k: v for k, v in extra.items() if k != "options"})
        )
        cls(**config.rule_opts)  # the options pass the rule's own checks


def test_a_rule_recommends_its_own_options_per_family_and_the_users_win():
    config, _ = settings.resolve(TrainConfig(rule="fg", model="lenet"))
    assert (config.lr, config.rule_opts) == (0.001, {"tangents": 16})
    config, _ = settings.resolve(TrainConfig(rule="fg", model="lenet", rule_opts={"tangents": 2}))
    assert config.rule_opts == {"tangents": 2}
    config, _ = settings.resolve(TrainConfig(rule="fg", model="mlp:64"))
    assert (config.lr, config.rule_opts) == (0.0003, {})


def test_a_run_saved_before_a_family_recommendation_resumes_with_its_own_options():
    """fg on a convolutional network saved with 4 tangents (its default then, rule_opts {})
    is not resumed with the 16 recommended now: refused, naming the flag that resumes it; with
    that flag (text, as a command line gives it) the options in effect agree."""
    old = {"rule": "fg", "rule_opts": {}}
    (refusal,) = differing_fields(old, {"rule": "fg", "rule_opts": {"tangents": 16}})
    assert refusal.startswith("rule_opts (checkpoint {}, now {'tangents': 16}")
    assert "give --rule-opt fg.tangents=4" in refusal
    assert differing_fields(old, {"rule": "fg", "rule_opts": {"tangents": "4"}}) == []
    assert differing_fields({"rule": "fg", "rule_opts": {"tangents": "16"}},
                            {"rule": "fg", "rule_opts": {"tangents": 16}}) == []  # fmt: skip
    (other,) = differing_fields(old, {"rule": "bp", "rule_opts": {}})
    assert other.startswith("rule (checkpoint 'fg', now 'bp')")


def test_unset_settings_come_from_the_rule_then_the_default():
    config, sources = settings.resolve(TrainConfig(rule="dni", lr=3e-4))
    assert (config.optimizer, config.lr, config.momentum) == ("adam", 3e-4, 0.9)
    assert sources == {
        "optimizer": "rule",
        "lr": "user",
        "momentum": "default",
        "weight_decay": "default",
        "schedule": "default",
        "output_init": "default",
    }
    config, sources = settings.resolve(TrainConfig(rule="bp"))
    assert (config.optimizer, config.lr, sources["lr"]) == ("sgd", 0.05, "rule")


def test_train_records_each_setting_and_its_source(tmp_path):
    out = tmp_path / "r"
    args = ["train", *TINY, "--epochs", "1", "--rule", "es", "--momentum", "0.5"]
    assert cli.main([*args, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["optimizer"], config["lr"], config["momentum"]) == ("adam", 0.01, 0.5)
    assert config["settings_source"]["optimizer"] == config["settings_source"]["lr"] == "rule"
    assert config["settings_source"]["momentum"] == "user"
    assert config["settings_source"]["schedule"] == "default"
    # a resumption with the same command line agrees with the recorded, resolved settings
    assert cli.main([*args, "--epochs", "2", "--out", str(out), "--resume"]) == 0


def test_rules_command_lists_the_recommended_settings(capsys):
    assert cli.main(["rules"]) == 0
    out = capsys.readouterr().out
    assert out.count("recommended:") == len(RULES)
    assert "recommended: optimizer adam, lr 0.001" in out  # dni, cdni, ff


def test_compare_gives_each_rule_its_settings_unless_set_for_all(tmp_path):
    args = ["compare", *TINY, "--epochs", "1", "--rules", "bp,dni", "--seeds", "1"]
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 0
    record = json.loads((tmp_path / "a" / "results.json").read_text())
    chosen = record["settings"]["rule_settings"]
    assert chosen["bp"]["optimizer"] == ["sgd", "rule"]
    assert chosen["dni"]["optimizer"] == ["adam", "rule"]
    assert [r["config"]["optimizer"] for r in record["runs"]] == ["sgd", "adam"]
    assert "rule's recommendation" in (tmp_path / "a" / "table.md").read_text()
    assert cli.main([*args, "--optimizer", "adam", "--out", str(tmp_path / "b")]) == 0
    record = json.loads((tmp_path / "b" / "results.json").read_text())
    assert [r["config"]["optimizer"] for r in record["runs"]] == ["adam", "adam"]
    assert record["settings"]["rule_settings"]["bp"]["optimizer"] == ["adam", "user"]


# The targets on digits, with no option but the rule: mlp:64, 20 epochs, seed 0.
# Measured (test accuracy): see docs/results.md, "Every rule with nothing but --rule".
@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_learns_digits_with_its_recommended_settings(digits, name):
    config = TrainConfig(rule=name, model="mlp:64", epochs=20, probe_every=0, device="cpu")
    results = Trainer(config, progress=False, data=digits, log=lambda _: None).fit()
    assert results["status"] == "finished"
    assert results["test_accuracy"] >= (0.6 if name == "hillclimb" else 0.9)

"""The command line tells you what it takes: every option of every subcommand has help that
gives its default, and the lists of names in it come from the registries."""

import argparse

import pytest

from creditlab.cli import build_parser
from creditlab.data import DATASETS
from creditlab.engine.models import MODEL_KINDS
from creditlab.rules import DEFAULT_COMPARE_RULES, DEFAULT_TUNE_RULES


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_option_has_help_with_its_default(name):
    parser = subcommands()[name]
    text = parser.format_help()
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        formatted = parser._get_formatter()._expand_help(action)
        assert action.help, f"{name} {action.option_strings[0]} has no help"
        assert "default" in formatted, f"{name} {action.option_strings[0]}: {formatted!r}"
    assert "%(" not in text


def test_model_and_dataset_help_list_every_registered_name():
    help_text = " ".join(subcommands()["train"].format_help().split())
    for name in (*MODEL_KINDS, *DATASETS):
        assert name in help_text, name
    assert "THE CODE IN PATH.py" in help_text  # torch: models run the user's file


def test_compare_and_tune_default_to_the_same_rules():
    assert DEFAULT_TUNE_RULES == DEFAULT_COMPARE_RULES
    commands = subcommands()
    for name in ("compare", "tune"):
        (rules,) = [a for a in commands[name]._actions if a.dest == "rules"]
        assert rules.default == ",".join(DEFAULT_COMPARE_RULES)


def test_train_compare_tune_and_gan_default_to_the_same_dataset():
    commands = subcommands()
    defaults = {
        name: next(a.default for a in commands[name]._actions if a.dest == "dataset")
        for name in ("train", "compare", "tune", "gan", "gan-compare")
    }
    assert len(set(defaults.values())) == 1, defaults


def test_tune_says_it_starts_from_adam():
    (optimizer,) = [a for a in subcommands()["tune"]._actions if a.dest == "optimizer"]
    assert optimizer.default == "adam"
    assert "adam" in optimizer.help

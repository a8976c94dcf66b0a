"""The command line, one module per subcommand: train, compare, tune, gradcheck, capsules,
explain, rules, and gan (gan, sample, gan-compare). main.py builds the parser from them;
options.py generates the training options from the config dataclasses' fields."""

from creditlab.cli.main import build_parser, main
from creditlab.cli.options import config_from_args

__all__ = ["build_parser", "config_from_args", "main"]

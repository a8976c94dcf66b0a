"""Options shared by the subcommands, generated from the config dataclasses' fields.

A config field's `option(...)` metadata (training/config.py) is its help; `add_config_options`
turns every field into a flag with that help and its default, and `config_from_args` reads them
back, so an option is written once, where the setting is defined."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from creditlab.errors import UsageError

TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def flag_of(field: dataclasses.Field) -> str:
    return "--" + field.name.replace("_", "-")


def cli_fields(config_cls: type) -> list[dataclasses.Field]:
    """The fields of a config dataclass that are command-line options."""
    return [f for f in dataclasses.fields(config_cls) if f.metadata.get("cli", False)]


def help_of(field: dataclasses.Field, default: Any) -> str:
    """The field's help, its valid names (from their registry, now) and its default."""
    meta = field.metadata
    text = meta["help"]
    if meta.get("names"):
        text += ": " + ", ".join(meta["names"]())
    if isinstance(default, bool):
        shown = "on" if default else "off"
    elif default is None:
        shown = meta.get("default_text") or "none"
    else:
        shown = str(default)
    return f"{text} (default: {shown})".replace("%", "%%")


def add_config_options(
    p: argparse.ArgumentParser, config_cls: type, defaults: dict[str, Any] | None = None
) -> None:
    """One flag per command-line field of `config_cls`; `defaults` overrides some defaults
    for this subcommand (tune starts from Adam), and the help says so."""
    defaults = defaults or {}
    for field in cli_fields(config_cls):
        default = defaults.get(field.name, field.default)
        kind = TYPES[str(field.type).split("|")[0].strip()]
        help_text = help_of(field, default)
        if kind is bool:
            p.add_argument(flag_of(field), action="store_true", default=default, help=help_text)
        else:
            p.add_argument(
                flag_of(field),
                type=kind,
                default=default,
                choices=field.metadata.get("choices"),
                help=help_text,
            )


def config_values(args: argparse.Namespace, config_cls: type) -> dict[str, Any]:
    """The command-line fields of `config_cls` as parsed, with --data-dir checked."""
    values = {
        f.name: getattr(args, f.name) for f in cli_fields(config_cls) if hasattr(args, f.name)
    }
    if "data_dir" in values:
        values["data_dir"] = data_dir_arg(values["data_dir"])
    return values


def add_training_options(p: argparse.ArgumentParser, defaults: dict[str, Any] | None = None):
    from creditlab.training.config import TrainConfig

    add_config_options(p, TrainConfig, defaults)
    p.add_argument("--quiet", action="store_true", help="no progress bars (default: off)")


def data_dir_arg(text: str | None) -> str | None:
    """--data-dir as an absolute path to an existing folder: the run records where its data
    came from, so that `creditlab capsules --run` and a resume elsewhere find it again."""
    if text is None:
        return None
    path = Path(text).expanduser()
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise UsageError(f"--data-dir {text} {what}; give the folder holding the dataset's files")
    return str(path.resolve())


def config_from_args(args, rule_name: str, rule_opts: dict):
    """The TrainConfig the command line asks for, for `rule_name` with `rule_opts`."""
    from creditlab.training.config import TrainConfig

    return TrainConfig(**config_values(args, TrainConfig), rule=rule_name, rule_opts=rule_opts)


def rule_opts(items: list[str], rule_name: str) -> dict[str, str]:
    """--rule-opt KEY=VALUE or RULE.KEY=VALUE, for the rule being trained."""
    opts = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--rule-opt needs KEY=VALUE or RULE.KEY=VALUE, got {item!r}")
        owner, dot, name = key.rpartition(".")
        if dot and owner != rule_name:
            raise UsageError(
                f"--rule-opt {item!r} is for rule {owner!r}, but the rule is {rule_name!r}"
            )
        opts[name] = value
    return opts


def add_pool_options(p: argparse.ArgumentParser, tune: bool) -> None:
    p.add_argument(
        "--address",
        default=None,
        help="an existing Ray cluster: auto, or ray://HOST:PORT"
        + ("" if tune else " (default: train here, one run after another)"),
    )
    if not tune:
        p.set_defaults(workers=None, cpus_per_trial=1.0, gpus_per_trial=None)
        return
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local Ray: how many workers (default: one per core)",
    )
    p.add_argument(
        "--cpus-per-trial",
        type=float,
        default=1.0,
        help="cores each trial takes (default %(default)s)",
    )
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        default=None,
        help="GPUs each trial takes, e.g. 0.25 (default: 1 with --device cuda, else 0)",
    )


def open_pool_of(args):
    from creditlab.tune.ray_backend import open_pool

    gpus = args.gpus_per_trial
    if gpus is None:  # a trial on CUDA asks for a whole GPU unless told otherwise
        gpus = 1.0 if args.device.startswith("cuda") else 0.0
    return open_pool(args.address, args.workers, args.cpus_per_trial, gpus)


def fresh_dir(base: Path) -> Path:
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path

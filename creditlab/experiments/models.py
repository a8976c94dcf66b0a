"""Model descriptions as the command line writes them, turned into networks.

- "mlp:800-800": a plain stack with those hidden sizes ("mlp:" alone is a linear model);
- "skip:256-256": every group reads the group below and the input, the output reads every
  hidden group (a DAG with skip connections and merges);
- a path to a JSON file holding a network spec (see Network.from_spec); its input and output
  groups may give "size": "auto" to take the dataset's input size and number of classes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from creditlab.engine.network import Network, mlp
from creditlab.errors import UsageError

MODEL_KINDS = ("mlp:H1-H2-...", "skip:H1-H2-...", "PATH.json")


# Sizes as a person writes them: digits only, no sign, space, underscore or leading zero
# (int() would accept " 32", "+32" and "3_2", which are typos more often than intent).
SIZES = re.compile(r"[1-9][0-9]*(-[1-9][0-9]*)*")


def _hidden_sizes(text: str, model: str) -> list[int]:
    if not text:
        return []
    if not SIZES.fullmatch(text):
        raise UsageError(
            f"bad hidden sizes in model {model!r}: write positive whole numbers joined by '-', "
            "e.g. mlp:800-800"
        )
    return [int(part) for part in text.split("-")]


def build_model(
    model: str,
    input_size: int,
    n_outputs: int,
    activation: str = "relu",
    loss: str = "cross_entropy",
    dtype: torch.dtype | str = torch.float32,
    device: str = "cpu",
    seed: int = 0,
    dropout: float = 0.0,
    init: str | None = None,
) -> Network:
    kind, _, rest = model.partition(":")
    if kind == "mlp" and _:
        sizes = [input_size, *_hidden_sizes(rest, model), n_outputs]
        return mlp(sizes, activation, loss, "identity", dtype, device, seed, dropout, init)
    if kind == "skip" and _:
        return skip_network(
            _hidden_sizes(rest, model),
            input_size,
            n_outputs,
            activation,
            loss,
            dtype,
            device,
            seed,
            dropout,
            init,
        )
    if model.endswith(".json"):
        return _from_json(Path(model), input_size, n_outputs, dtype, device, seed)
    raise UsageError(f"unknown model {model!r}; valid models: {', '.join(MODEL_KINDS)}")


def skip_network(
    hidden: list[int],
    input_size: int,
    n_outputs: int,
    activation: str = "relu",
    loss: str = "cross_entropy",
    dtype: torch.dtype | str = torch.float32,
    device: str = "cpu",
    seed: int = 0,
    dropout: float = 0.0,
    init: str | None = None,
) -> Network:
    """Hidden group k reads group k-1 and the input; the output reads every hidden group."""
    net = Network(dtype=dtype, device=device, seed=seed)
    x = net.input(input_size)
    groups = []
    for size in hidden:
        ins = [x] if not groups else [groups[-1], x]
        groups.append(net.dense(ins, size, activation, init=init, dropout=dropout))
    out = net.dense(groups or [x], n_outputs, activation="identity", name="out")
    net.output(out, loss=loss)
    return net


def _read_spec(path: Path) -> dict:
    """The JSON object in `path`, or a UsageError saying what is wrong with the file."""
    if path.is_dir():
        raise UsageError(f"model file {path} is a folder, not a JSON file")
    try:
        text = path.read_bytes().decode("utf-8")
        spec = json.loads(text)
    except FileNotFoundError:
        raise UsageError(f"model file {path} does not exist") from None
    except OSError as err:
        raise UsageError(f"cannot read model file {path}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise UsageError(
            f"model file {path} is not UTF-8 text ({err.reason} at byte {err.start})"
        ) from None
    except json.JSONDecodeError as err:
        raise UsageError(f"model file {path} is not valid JSON: {err}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("groups"), list):
        raise UsageError(f"model file {path} needs an object with a 'groups' list")
    _check_spec_types(spec, path)
    return spec


# The fields of a group in a JSON spec and the types each may hold.
GROUP_FIELDS = {
    "name": (str,),
    "size": (int, str),
    "ins": (list,),
    "activation": (str,),
    "init": (str, type(None)),
    "dropout": (int, float),
}


def _check_spec_types(spec: dict, path: Path) -> None:
    """Types first, so a malformed file gets a message naming the field, not a traceback."""
    if not isinstance(spec.get("output"), str):
        raise UsageError(f"model file {path}: 'output' must be the name of a group (a string)")
    if "loss" in spec and not isinstance(spec["loss"], str):
        raise UsageError(f"model file {path}: 'loss' must be a string, got {spec['loss']!r}")
    for k, group in enumerate(spec["groups"]):
        where = f"model file {path}, group {k + 1}"
        if not isinstance(group, dict):
            raise UsageError(
                f"{where}: a group must be an object like "
                '{"name": "h1", "size": 64, "ins": ["x"]}, got ' + repr(group)
            )
        for field in ("name", "size"):
            if field not in group:
                raise UsageError(f"{where}: missing field {field!r}")
        for field, kinds in GROUP_FIELDS.items():
            value = group.get(field)
            if field in group and (isinstance(value, bool) or not isinstance(value, kinds)):
                names = " or ".join("null" if t is type(None) else t.__name__ for t in kinds)
                raise UsageError(f"{where}: {field!r} must be {names}, got {value!r}")
        if isinstance(group["size"], str) and group["size"] != "auto":
            raise UsageError(f"{where}: 'size' must be a number or \"auto\", got {group['size']!r}")
        if not all(isinstance(i, str) for i in group.get("ins", [])):
            raise UsageError(f"{where}: 'ins' must list group names (strings)")


def _from_json(path: Path, input_size: int, n_outputs: int, dtype, device, seed) -> Network:
    spec = _read_spec(path)
    for group in spec["groups"]:
        if group.get("size") == "auto":
            group["size"] = n_outputs if group.get("name") == spec.get("output") else input_size
    net = Network.from_spec(spec, dtype=dtype, device=device, seed=seed)
    if net.input_size != input_size:
        raise UsageError(
            f"input group {net.input_name!r} of {path} has {net.input_size} units; "
            f"the data has {input_size} inputs"
        )
    return net

"""Model descriptions as the command line writes them, turned into networks.

- "mlp:800-800": a plain stack with those hidden sizes ("mlp:" alone is a linear model);
- "skip:256-256": every group reads the group below and the input, the output reads every
  hidden group (a DAG with skip connections and merges);
- a path to a JSON file holding a network spec (see Network.from_spec); its input and output
  groups may give "size": "auto" to take the dataset's input size and number of classes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from creditlab.engine.network import Network, mlp
from creditlab.errors import UsageError

MODEL_KINDS = ("mlp:H1-H2-...", "skip:H1-H2-...", "PATH.json")


def _hidden_sizes(text: str, model: str) -> list[int]:
    if not text:
        return []
    try:
        sizes = [int(part) for part in text.split("-")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise UsageError(f"bad hidden sizes in model {model!r}; write e.g. mlp:800-800")
    return sizes


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


def _from_json(path: Path, input_size: int, n_outputs: int, dtype, device, seed) -> Network:
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"model file {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"model file {path} is not valid JSON: {err}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("groups"), list):
        raise UsageError(f"model file {path} needs an object with a 'groups' list")
    for group in spec["groups"]:
        if isinstance(group, dict) and group.get("size") == "auto":
            group["size"] = n_outputs if group.get("name") == spec.get("output") else input_size
    net = Network.from_spec(spec, dtype=dtype, device=device, seed=seed)
    if net.input_size != input_size:
        raise UsageError(
            f"input group {net.input_name!r} of {path} has {net.input_size} units; "
            f"the data has {input_size} inputs"
        )
    return net

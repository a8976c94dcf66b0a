"""Model descriptions as the command line writes them, turned into networks.

- "mlp:800-800": a plain stack with those hidden sizes ("mlp:" or "mlp" alone is a linear
  model);
- "skip:256-256": every group reads the group below and the input, the output reads every
  hidden group (a DAG with skip connections and merges);
- "lenet": LeNet-5 on the image (conv 6@5x5 with padding 2, max pool 2, conv 16@5x5, max pool
  2, dense 120-84-classes);
- "capsnet": Sabour, Frosst and Hinton's CapsNet (conv1 256@9x9 relu; PrimaryCaps 32 types of
  8-D capsules, 9x9, stride 2; DigitCaps one 16-D capsule per class, 3 routing iterations, margin
  loss; a decoder 512-1024-image reading the masked digit capsules, reconstruction loss weighted
  0.0005); "capsnet:small" is the same with 64 conv1 channels and 8 primary types, for CPUs;
- "resnet20" and "vgg:small": He et al.'s CIFAR ResNet-20 and a small VGG, both with batch
  norm (see engine/zoo.py);
- "torch:PATH.py:FACTORY": the torch.nn.Module a function in a Python file returns, converted
  (engine/torch_models.py; the file's code runs);
- a path to a JSON file holding a network spec (see Network.from_spec); its input and output
  groups may give "size": "auto" to take the dataset's input size and number of classes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from creditlab.data.augment import image_shape_of
from creditlab.engine import memory, torch_models, zoo
from creditlab.engine.network import Network, resolve_dtype
from creditlab.errors import UsageError

MODEL_KINDS = (
    "mlp:H1-H2-...",
    "skip:H1-H2-...",
    "lenet",
    "capsnet",
    "capsnet:small",
    "resnet20",
    "vgg:small",
    "PATH.json",
    torch_models.FORMAT,
)
IMAGE_PRESETS = {"resnet20": zoo.resnet20, "vgg:small": zoo.vgg_small}
# conv1 channels and primary capsule types of the capsule networks
CAPSNETS = {"capsnet": (256, 32), "capsnet:small": (64, 8)}


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


def mlp(
    sizes: Sequence[int],
    activation: str = "relu",
    loss: str = "cross_entropy",
    output_activation: str = "identity",
    dtype: torch.dtype | str = torch.float32,
    device: str = "cpu",
    seed: int = 0,
    dropout: float = 0.0,
    init: str | None = None,
) -> Network:
    """A plain stack: input sizes[0], hidden groups h1..hn, output group 'out' of sizes[-1]."""
    sizes = list(sizes)
    if len(sizes) < 2:
        raise UsageError(f"an mlp needs at least an input and an output size, got {sizes}")
    net = Network(dtype=dtype, device=device, seed=seed)
    group = net.input(sizes[0])
    for size in sizes[1:-1]:
        group = net.dense(group, size, activation=activation, init=init, dropout=dropout)
    out = net.dense(group, sizes[-1], activation=output_activation, name="out")
    net.output(out, loss=loss)
    return net


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
    image_shape: tuple[int, ...] | None = None,
) -> Network:
    """The network `model` names, for inputs of `input_size` (images of `image_shape`, (H, W)
    or (C, H, W), for the convolutional models) and `n_outputs` classes."""
    if torch_models.is_torch_model(model):  # the module decides its layers and their init
        if init is not None or dropout:
            raise UsageError(f"--init and --dropout do not apply to {model}: the module sets them")
        dtype = resolve_dtype(dtype)
        return torch_models.build(
            model, input_size, n_outputs, loss, dtype, device, seed, image_shape
        )
    if model in IMAGE_PRESETS:
        image = _image(model, input_size, image_shape)
        return IMAGE_PRESETS[model](image, n_outputs, dtype, device, seed)
    if model in ("lenet", *CAPSNETS):
        image = _image(model, input_size, image_shape)
        if model == "lenet":
            return lenet(image, n_outputs, activation, dtype, device, seed, init)
        channels, types = CAPSNETS[model]
        return capsnet(image, n_outputs, channels, types, dtype, device, seed)
    kind, _, rest = model.partition(":")
    if model == "mlp":  # as "mlp:": no hidden group, a linear model
        kind, _, rest = "mlp", ":", ""
    if kind in ("mlp", "skip") and _:  # sizes checked before a byte is allocated
        sizes = [input_size, *_hidden_sizes(rest, model), n_outputs]
        memory.check_model(
            memory.dense_parameters(sizes, skip=kind == "skip"),
            memory.torch_itemsize(resolve_dtype(dtype)),
            f"model {model!r}",
            str(device),
        )
    if kind == "mlp" and _:
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


def _image(model: str, input_size: int, image_shape) -> tuple[int, int, int]:
    if image_shape is None:
        side = round(input_size**0.5)
        if side * side != input_size:
            raise UsageError(f"model {model!r} needs images; the data has {input_size} inputs")
        image_shape = (side, side)
    return image_shape_of(tuple(image_shape), input_size)


def lenet(
    image: tuple[int, int, int],
    n_outputs: int,
    activation: str = "relu",
    dtype: torch.dtype | str = torch.float32,
    device: str = "cpu",
    seed: int = 0,
    init: str | None = None,
) -> Network:
    """LeNet-5: conv 6@5x5 (padding 2), pool, conv 16@5x5, pool, dense 120-84-n_outputs."""
    net = Network(dtype=dtype, device=device, seed=seed)
    x = net.input(image)
    c1 = net.conv(x, 6, kernel=5, padding=2, activation=activation, init=init, name="conv1")
    p1 = net.pool(c1, 2, kind="max", name="pool1")
    c2 = net.conv(p1, 16, kernel=5, activation=activation, init=init, name="conv2")
    p2 = net.pool(c2, 2, kind="max", name="pool2")
    f1 = net.dense(p2, 120, activation=activation, init=init, name="fc1")
    f2 = net.dense(f1, 84, activation=activation, init=init, name="fc2")
    out = net.dense(f2, n_outputs, activation="identity", name="out")
    net.output(out, loss="cross_entropy")
    return net


def capsnet(
    image: tuple[int, int, int],
    n_classes: int,
    channels: int = 256,
    types: int = 32,
    dtype: torch.dtype | str = torch.float32,
    device: str = "cpu",
    seed: int = 0,
    routing: int = 3,
    routing_gradient: bool = True,
) -> Network:
    """CapsNet (Sabour et al. 2017): conv1 channels@9x9 relu, PrimaryCaps `types` x 8-D (9x9,
    stride 2), DigitCaps n_classes x 16-D with routing by agreement and the margin loss, and a
    decoder 512-1024-image (sigmoid) reading the masked digit capsules, its reconstruction
    loss weighted 0.0005."""
    net = Network(dtype=dtype, device=device, seed=seed)
    x = net.input(image)
    conv1 = net.conv(x, channels, kernel=9, activation="relu", name="conv1")
    primary = net.primary_capsules(conv1, types=types, dim=8, kernel=9, stride=2, name="primary")
    digits = net.capsules(
        primary,
        n=n_classes,
        dim=16,
        routing=routing,
        routing_gradient=routing_gradient,
        name="digits",
    )
    net.output(digits, loss="margin")
    masked = net.mask(digits, name="masked")
    d1 = net.dense(masked, 512, activation="relu", name="dec1")
    d2 = net.dense(d1, 1024, activation="relu", name="dec2")
    recon = net.dense(d2, image[0] * image[1] * image[2], activation="sigmoid", name="recon")
    net.output(recon, loss="reconstruction", weight=0.0005)
    return net


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
    "activation": (str, type(None)),  # null for the input group, as Network.spec writes it
    "init": (str, type(None)),
    "dropout": (int, float),
    "kind": (str,),  # conv, pool, primary_capsules, capsules, mask (dense when absent)
    "options": (dict,),
    "shape": (list,),  # an image input's (C, H, W)
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

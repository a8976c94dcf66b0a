"""`--model torch:PATH.py:FACTORY`: a user's own torch.nn.Module, trained by any rule.

PATH.py is a Python file and FACTORY a function in it that takes no arguments and returns the
module. The file is RUN (imported) to get it, as `python PATH.py` would run it: use only files
you trust. The module receives batches shaped as the data set's images, (N, C, H, W), as in
torchvision (a grey image (H, W) comes as (N, 1, H, W); an MLP starts with nn.Flatten()); its
output must be (N, number of classes). It is converted by creditlab.from_torch into a Network,
which the rule trains; the best epoch's weights go back into a fresh module from the factory
(creditlab.to_torch) and its state_dict is saved as `module.pt` in the run folder:

    module = FACTORY(); module.load_state_dict(torch.load("RUN/module.pt"))

The factory runs with torch's global generator seeded by the run's seed (and restored after),
so the module's initial weights, and the run, are reproducible.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
import uuid
from pathlib import Path

import torch
from torch import nn

from creditlab.engine.network import Network
from creditlab.errors import CreditlabError, UsageError

PREFIX = "torch:"
FORMAT = "torch:PATH.py:FACTORY"


def is_torch_model(model: str) -> bool:
    return isinstance(model, str) and model.startswith(PREFIX)


def parse(model: str) -> tuple[Path, str]:
    """(the file, the factory's name) of "torch:PATH.py:FACTORY"."""
    path, colon, factory = model.removeprefix(PREFIX).rpartition(":")
    if not colon or not path or not factory.isidentifier():
        raise UsageError(
            f"model {model!r}: write {FORMAT}, a Python file and the name of a function in it "
            "that returns the torch.nn.Module, e.g. torch:models/net.py:make_net"
        )
    file = Path(path).expanduser()
    if file.suffix != ".py":
        raise UsageError(f"model {model!r}: {path} is not a Python file (.py)")
    if not file.is_file():
        raise UsageError(f"model {model!r}: there is no file {file}")
    return file, factory


def _where(err: BaseException, file: Path) -> str:
    """' (PATH, line N)' for the deepest frame of the user's file in err's traceback."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename) == file]
    return f" ({file}, line {frames[-1].lineno})" if frames else f" ({file})"


def load_module(model: str, seed: int = 0) -> nn.Module:
    """Run the file, call the factory (torch's generator seeded by `seed`), check the result."""
    file, factory = parse(model)
    name = f"creditlab_user_model_{uuid.uuid4().hex}"  # never clashes with a real module
    spec = importlib.util.spec_from_file_location(name, file)
    source = importlib.util.module_from_spec(spec)
    sys.modules[name] = source  # dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(source)
    except CreditlabError:
        raise
    except Exception as err:
        raise UsageError(
            f"model {model!r}: running {file} failed: {type(err).__name__}: {err}"
            f"{_where(err, file.resolve())}"
        ) from None
    finally:
        sys.modules.pop(name, None)
    make = getattr(source, factory, None)
    if not callable(make):
        found = [k for k, v in vars(source).items() if callable(v) and not k.startswith("_")]
        raise UsageError(
            f"model {model!r}: {file} defines no function {factory!r}; its callables: "
            f"{', '.join(sorted(found)) or 'none'}"
        )
    try:
        with torch.random.fork_rng(devices=[]):  # the caller's generator is left as it was
            torch.manual_seed(seed)
            module = make()
    except CreditlabError:
        raise
    except Exception as err:
        raise UsageError(
            f"model {model!r}: {factory}() failed: {type(err).__name__}: {err}"
            f"{_where(err, file.resolve())}"
        ) from None
    if not isinstance(module, nn.Module):
        raise UsageError(
            f"model {model!r}: {factory}() returned a {type(module).__name__}, not a "
            "torch.nn.Module"
        )
    return module


def image_batch_shape(image_shape: tuple[int, ...] | None, input_size: int) -> tuple[int, ...]:
    """What one example looks like to the module: (C, H, W) for images, (D,) otherwise."""
    if image_shape is None:
        return (input_size,)
    shape = (1, *image_shape) if len(image_shape) == 2 else tuple(image_shape)
    return shape if len(shape) == 3 else (input_size,)


def check_fit(module: nn.Module, model: str, example: torch.Tensor, n_classes: int) -> None:
    """Refuse a module that fails on the data's images or does not give one score per class,
    naming both shapes. Runs it once in evaluation mode, without gradients: nothing moves."""
    shape = ("N", *example.shape[1:])
    modes = {m: m.training for m in module.modules()}
    try:
        module.eval()
        with torch.no_grad():
            out = module(example)
    except Exception as err:
        raise UsageError(
            f"model {model!r} does not fit the data: the data's batches are {_text(shape)} and "
            f"the module fails on them: {type(err).__name__}: {err}"
        ) from None
    finally:
        for m, training in modes.items():
            m.training = training
    want = ("N", n_classes)
    got = ("N", *out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != want:
        raise UsageError(
            f"model {model!r} does not fit the data: for batches {_text(shape)} it gives "
            f"{_text(got) if isinstance(got, tuple) else got}; the data set has {n_classes} "
            f"classes, so it must give {_text(want)}"
        )


def _text(shape: tuple) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def build(
    model: str,
    input_size: int,
    n_outputs: int,
    loss: str,
    dtype: torch.dtype,
    device: str | torch.device,
    seed: int,
    image_shape: tuple[int, ...] | None,
) -> Network:
    """The Network of the module that `model` names, for the data's shape and classes."""
    from creditlab.engine.torch_bridge import from_torch

    module = load_module(model, seed).to(device=device, dtype=dtype)
    example_shape = image_batch_shape(image_shape, input_size)
    example = torch.zeros((2, *example_shape), dtype=dtype, device=device)
    check_fit(module, model, example, n_outputs)
    return from_torch(module, example, loss=loss, seed=seed)


def write_module(model: str, net: Network, path: Path, seed: int) -> None:
    """Save the network's parameters (and batch-norm statistics) as the state_dict of a fresh
    module from the factory: the user's own module, trained."""
    from creditlab.engine.torch_bridge import to_torch

    module = load_module(model, seed)
    first = next(iter(net.parameters().values()))
    module = to_torch(net, module.to(device=first.device, dtype=first.dtype))
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    tmp = path.with_name(f".{path.name}.part")
    torch.save(state, tmp)
    tmp.replace(path)  # never a half-written module.pt

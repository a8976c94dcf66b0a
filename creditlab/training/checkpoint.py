"""Checkpoints and result files, written atomically and loaded without executing code.

A write goes to a temporary file in the same folder, is flushed to disk, then renamed over the
old file: a crash mid-write leaves the previous file intact. Checkpoints are read with
torch.load(weights_only=True), which refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from creditlab.errors import CreditlabError, MachineError, UsageError

FORMAT = 1  # bump when the checkpoint layout changes
# Write failures that are the machine's fault (exit 1, MachineError), not the input's.
MACHINE_FAULTS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO, errno.EACCES, errno.EPERM}


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call write(f) on a temporary file, then move it to `path` in one rename. The file gets
    the permissions open() would have given it (mkstemp's are owner-only)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in MACHINE_FAULTS:
            # A full disk, a read-only file system: the machine's fault, said in one line with
            # the path. The previous file at `path` is untouched.
            raise MachineError(
                f"cannot write {path}: {os.strerror(err.errno)}; the files written before are "
                "intact"
            ) from None
        raise


def _umask() -> int:
    # The only way to read the process's umask is to set it; it is put back at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Strict JSON (a NaN or infinity is written as null, which every JSON reader accepts)."""
    text = json.dumps(_finite_or_null(data), indent=2, sort_keys=False, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(v) for v in value]
    return value


def save(path: str | os.PathLike, state: dict[str, Any]) -> None:
    state = {"format": FORMAT, **state}
    atomic_write(path, lambda f: torch.save(state, f))


def load(
    path: str | os.PathLike | IO[bytes],
    map_location: str | torch.device = "cpu",
    name: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """A checkpoint's contents; `name` is the file messages name when `path` is an in-memory
    copy of it."""
    name = path if name is None else name
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CreditlabError(f"no checkpoint at {name}") from None
    except Exception as err:  # a torn or foreign file: say so, never execute it
        # torch's own message advises loading with weights_only=False, which could run code
        # hidden in the file: it is not passed on.
        raise UsageError(
            f"{name} is not a creditlab checkpoint, or it is damaged ({type(err).__name__} "
            "while reading it safely); move it away, or start the run over with --force"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UsageError(f"{name} is not a creditlab checkpoint of format {FORMAT}")
    return state


# What a training run's checkpoint holds (train.Trainer.save_checkpoint), with its types.
RUN_KEYS = {
    "config": dict,
    "epoch": int,
    "params": dict,
    "best_params": dict,
    "best": dict,
    "optimizer": dict,
    "rule": dict,
    "history": list,
}


def load_run(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A training run's checkpoint, with every part a resumption reads checked first."""
    state = load(path, map_location)
    wrong = [key for key, kind in RUN_KEYS.items() if not isinstance(state.get(key), kind)] + (
        [] if isinstance(state.get("rng"), torch.Tensor) else ["rng"]
    )
    if wrong:
        raise UsageError(
            f"{path} is not a creditlab run checkpoint: missing or malformed {', '.join(wrong)}; "
            "move it away, or start the run over with --force"
        )
    return state

"""Checkpoints and result files, written atomically and loaded without executing code.

A write goes to a temporary file in the same folder, is flushed to disk, then renamed over the
old file: a crash mid-write leaves the previous file intact. Checkpoints are read with
torch.load(weights_only=True), which refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from creditlab.errors import CreditlabError

FORMAT = 1  # bump when the checkpoint layout changes


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call write(f) on a temporary file, then move it to `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=False, allow_nan=True) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def save(path: str | os.PathLike, state: dict[str, Any]) -> None:
    state = {"format": FORMAT, **state}
    atomic_write(path, lambda f: torch.save(state, f))


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CreditlabError(f"no checkpoint at {path}") from None
    except Exception as err:  # a torn or foreign file: say which, never execute it
        raise CreditlabError(f"cannot read checkpoint {path}: {err}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CreditlabError(f"{path} is not a creditlab checkpoint of format {FORMAT}")
    return state

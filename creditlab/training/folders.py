"""Output folders: never write where a user's files would be lost or mixed with a run's.

A train run's folder holds RUN_FILES and nothing else of ours; its config.json says
"kind": "creditlab-train". `check_out` decides, before anything is loaded or written, whether a
folder may receive a run; `clear_run` empties a run's files for --force, moving them aside
first, so that the folder never holds a mix of an old run's files and a new one's.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from creditlab.errors import UsageError

# A folder's own bookkeeping (training/locks.py): its lock and the record of its kind. No
# command counts them as the folder's files.
LOCK_NAME = ".creditlab.lock"
KIND_NAME = ".creditlab.json"
OURS = (LOCK_NAME, KIND_NAME)

TRAIN_KIND = "creditlab-train"
RUN_FILES = ("checkpoint.pt", "best.pt", "module.pt", "results.json", "config.json")


def out_path(text: str | os.PathLike, flag: str = "--out") -> Path:
    """The folder named by --out, refusing "" (which would mean the current directory)."""
    if not str(text).strip():
        raise UsageError(
            f"{flag} needs a folder name; an empty one would write into the current directory"
        )
    return Path(text).expanduser()


def check_writable(folder: Path, flag: str = "--out") -> None:
    """Refuse a folder that is a file, lies under a file, or cannot be written."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag} {folder} is a file, not a folder; choose another {flag}")
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise UsageError(
            f"{flag} {folder} lies under {existing}, which is a file; choose another {flag}"
        )
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {folder}: {existing} is not writable; choose another {flag}")


def is_empty(folder: Path) -> bool:
    """No files but, perhaps, the temporary files of an atomic write cut short by a crash, and
    the folder's lock and kind (training/locks.py)."""
    return not any(
        not (p.name.startswith(".") and p.name.endswith(".tmp")) and p.name not in OURS
        for p in folder.iterdir()
    )


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_train_run(folder: Path) -> bool:
    """Whether `folder` holds a creditlab train run (its config.json says so, or, for runs made
    before config.json carried a kind, it has a train config's fields)."""
    config = _read_json(folder / "config.json")
    if isinstance(config, dict):
        return config.get("kind") == TRAIN_KIND or (
            "kind" not in config and "network" in config and "rule" in config
        )
    return False


def has_results(folder: Path) -> bool:
    """Whether a run folder holds anything a new run would overwrite: a checkpoint, the best
    parameters or results (a config.json alone is a run that never finished an epoch)."""
    return any((folder / name).exists() for name in RUN_FILES if name != "config.json")


def check_train_out(folder: Path, resume: bool, force: bool) -> None:
    """Refuse --out folders a train run must not write into, before anything is written."""
    if resume and force:
        raise UsageError("--resume continues a run and --force starts it over: pass only one")
    check_writable(folder)
    if not folder.is_dir() or is_empty(folder):
        return
    if not is_train_run(folder):
        raise UsageError(
            f"--out {folder} is not empty and holds no creditlab train run; a run would mix its "
            "files with what is there. Choose a new or empty folder"
        )
    if has_results(folder) and not (resume or force):
        raise UsageError(
            f"{folder} already holds a run; pass --resume to continue it or --force to start over"
        )


def clear_run(folder: Path) -> None:
    """Remove a train run's files (--force): moved into a hidden folder first, one rename each,
    then deleted, so the folder never shows the old run's files beside the new one's. Other
    files in the folder are left alone."""
    if not folder.is_dir():
        return
    present = [folder / name for name in RUN_FILES if (folder / name).exists()]
    if not present:
        return
    trash = Path(tempfile.mkdtemp(prefix=".old-run-", dir=folder))
    for path in present:
        os.replace(path, trash / path.name)
    shutil.rmtree(trash, ignore_errors=True)

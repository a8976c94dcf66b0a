"""A run folder belongs to one command at a time, and to one kind of command for good.

Every command that writes a folder (train, compare, tune, gan, gan-compare, sample) holds it
with `hold(folder, kind)` for the whole run:

- **The kind.** A folder records, when a command first writes it, which kind of command did
  (`.creditlab.json`, {"kind": "train", ...}). Any command refuses a folder of another kind, and
  a folder inside another command's folder, before doing any work and whatever its --force:
  --force starts over a run of the same kind only. Folders written before the kind was recorded
  are recognised by their files (`detect_kind`).
- **The lock.** An exclusive `fcntl.flock` on `.creditlab.lock` inside the folder. The kernel
  drops it when the process ends in any way, kill -9 included, so a crashed run never leaves a
  folder locked. A second command finds it taken and refuses at once, naming the holder's
  command line and process id (written into the lock file), exit 2, having written nothing.
  The lock file is removed when the holder exits normally.

The lock is taken before anything is loaded or written, and the kind is checked again once it
is held, so two commands racing for a new folder cannot both pass.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

from creditlab.errors import UsageError
from creditlab.training import folders
from creditlab.training.folders import KIND_NAME, LOCK_NAME, OURS

# LOCK_NAME, KIND_NAME and OURS (our bookkeeping files) are named in folders.py, which
# counts a folder's files without them.
KINDS = ("train", "compare", "tune", "gan", "gan-compare", "sample")


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def detect_kind(folder: Path) -> str | None:
    """The kind of command that wrote `folder`: its recorded kind, else (for folders written
    before kinds were recorded) what its files say; None for a folder no command wrote."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    marker = _read_json(folder / KIND_NAME)
    if isinstance(marker, dict) and marker.get("kind") in KINDS:
        return marker["kind"]
    tune = _read_json(folder / "tune.json")
    if isinstance(tune, dict) and tune.get("kind") == "creditlab-tune":
        return "tune"
    results = _read_json(folder / "results.json")
    if isinstance(results, dict):
        if results.get("kind") == "creditlab-compare":
            return "compare"
        if "pairs" in results and "runs" in results:
            return "gan-compare"
        if "rule_g" in results and "best_fid" in results:
            return "gan"
    config = _read_json(folder / "config.json")
    if isinstance(config, dict):
        if config.get("kind") == "creditlab-train" or (
            "kind" not in config and "network" in config and "rule" in config
        ):
            return "train"
        if "rule_g" in config and "generator" in config:
            return "gan"
    return None


def enclosing(folder: Path) -> tuple[Path, str] | None:
    """The nearest folder above `folder` that a command wrote, with its kind, if any: a run
    folder inside another's (a compare's runs/, a tune's trials) belongs to that command."""
    path = Path(os.path.abspath(folder))
    for parent in path.parents:
        kind = detect_kind(parent)
        if kind is not None:
            return parent, kind
    return None


def holder_of(folder: Path) -> str:
    """'`creditlab train ...` (pid N)', as the holder wrote it into the lock file."""
    info = _read_json(Path(folder) / LOCK_NAME)
    if not isinstance(info, dict):
        return "another creditlab command (it has not yet said which)"
    return f"`{info.get('command', 'creditlab')}` (pid {info.get('pid', '?')})"


def check_kind(folder: Path, kind: str, flag: str = "--out") -> None:
    """Refuse a folder written by another kind of command, or lying inside one's folder."""
    found = detect_kind(folder)
    if found is not None and found != kind:
        raise UsageError(
            f"{flag} {folder} is a `creditlab {found}` folder, not a {kind}'s; a {kind} never "
            f"writes into it (--force only starts over a {kind}). Choose another {flag}"
        )
    outer = enclosing(folder)
    if outer is not None:
        raise UsageError(
            f"{flag} {folder} lies inside {outer[0]}, a `creditlab {outer[1]}` folder; choose a "
            f"{flag} outside it"
        )


def _only_ours(folder: Path) -> bool:
    return all(
        p.name in OURS or (p.name.startswith(".") and p.name.endswith(".tmp"))
        for p in folder.iterdir()
    )


# The arguments of the command being run, as cli.main received them (None: the process's own).
invoked: list[str] | None = None


def _command_line() -> str:
    return shlex.join(["creditlab", *(sys.argv[1:] if invoked is None else invoked)])


class _Lock:
    """An flock on folder/.creditlab.lock, taken without waiting."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_NAME
        self.fd: int | None = None

    def acquire(self, command: str) -> bool:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited (PEP 446)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    return False
                raise
            # The holder before us may have removed the file between our open and our flock:
            # then we locked a file nobody else will see. Try again on the file now there.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        info = {
            "command": command,
            "pid": os.getpid(),
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        return True

    def release(self) -> None:
        if self.fd is None:
            return
        # Removed while still held, so that no other command can have it open for a lock.
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)  # closing drops the flock
        self.fd = None


@contextlib.contextmanager
def hold(
    folder: str | os.PathLike,
    kind: str,
    *,
    flag: str = "--out",
    command: str | None = None,
    foreign_ok: bool = False,
) -> Iterator[Path]:
    """Hold `folder` for a command of `kind` for the duration of the with-block.

    Refuses (UsageError, exit 2, nothing written) a folder of another kind, one inside another
    command's folder, one that is not empty and holds no command's files (unless `foreign_ok`,
    for `sample`, whose file may go into any plain folder), and one another command holds.
    Creates the folder if need be and records its kind. A folder this call created and in which
    the command wrote nothing (it failed its checks) is removed again on the way out."""
    if kind not in KINDS:
        raise ValueError(f"unknown folder kind {kind!r}")
    folder = Path(folder)
    folders.check_writable(folder, flag)
    check_kind(folder, kind, flag)
    created = not folder.exists()
    if created:
        try:
            folder.mkdir(parents=True)
        except FileExistsError:  # another command made it just now: the lock decides
            created = False
        except OSError as err:  # a read-only file system, a protected place: say where
            what = "run" if kind == "train" else kind
            raise UsageError(f"cannot write the {what} into {folder}: {err}") from None
    lock, marked = _Lock(folder), False
    if not lock.acquire(command or _command_line()):
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise UsageError(
            f"{flag} {folder} is in use by {holder_of(folder)}; wait for it to finish or "
            f"choose another {flag}"
        )
    try:
        check_kind(folder, kind, flag)  # again, now that no one else can write it
        found = detect_kind(folder)
        if found is None and not _only_ours(folder) and not foreign_ok:
            raise UsageError(
                f"{flag} {folder} is not empty and holds no creditlab {kind} run; its files would "
                "be mixed with the run's. Choose a new or empty folder"
            )
        marked = False
        if found is None and _only_ours(folder):
            from creditlab.training import checkpoint

            checkpoint.write_json(
                folder / KIND_NAME,
                {
                    "kind": kind,
                    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
                        timespec="seconds"
                    ),
                    "command": command or _command_line(),
                },
            )
            marked = True
        # An older folder of this kind without a record keeps its files as they are: they say
        # what it is (detect_kind).
        yield folder
    finally:
        lock.release()
        # Nothing but our bookkeeping: the command refused before writing; leave no trace.
        if folder.is_dir() and (created or marked) and _only_ours(folder):
            if marked:
                with contextlib.suppress(OSError):
                    (folder / KIND_NAME).unlink()
            if created:
                with contextlib.suppress(OSError):
                    folder.rmdir()

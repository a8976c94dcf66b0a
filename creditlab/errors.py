"""The errors creditlab raises on purpose.

Every error a user can cause derives from CreditlabError, so the command line can print its
message without a traceback and exit with its code: 2 for a bad choice or option (as argparse
does), 1 for everything else (bad data, a diverged run).
"""

from __future__ import annotations

from collections.abc import Iterable


class CreditlabError(Exception):
    """An error caused by input, data or a run, not by a bug in creditlab."""

    exit_code = 1


class UsageError(CreditlabError, ValueError):
    """A bad name, option or value given by the user."""

    exit_code = 2


class UnknownNameError(UsageError, KeyError):
    """A name that is not in a registry; the message lists the valid ones."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]):
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        plural = kind + ("es" if kind.endswith("s") else "s")
        super().__init__(f"unknown {kind} {name!r}; valid {plural}: {', '.join(self.valid)}")

    def __str__(self) -> str:  # KeyError would otherwise print the message in quotes
        return self.args[0]


class GraphError(UsageError):
    """A network that cannot be built: a cycle, a group nobody reads, no output, bad sizes."""


class DataError(CreditlabError):
    """Data that is missing, corrupt or truncated; the message names the file."""


class MachineError(CreditlabError):
    """A fault of the machine, not of the input: a full disk, a read-only file system, an I/O
    error. The message names the path; exit 1. Files written before it are whole (every write
    is atomic), so the run can go on once the fault is fixed."""


class TrainingError(CreditlabError):
    """A run that cannot go on, such as a non-finite loss."""

"""Progress bars for long work, that behave in a log file as well as in a terminal.

In a terminal (or a notebook) a bar redraws itself in place. Written to a file or a pipe, the
same redraws would pile up line after line, so there a bar stays silent while it runs and
writes one final line when it closes: what was done, how long it took and the last numbers.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm as plain_tqdm
from tqdm.auto import tqdm as live_tqdm


class FinalLineBar(plain_tqdm):
    """A tqdm bar that draws nothing until it closes, then one line (close() ends it)."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if not self.disable:  # running: tqdm sets disable only once close() has begun
            return True
        self.fp.write(self.__str__())
        return True


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or a stand-in without isatty
        return False


def bar(*args: Any, **kwargs: Any) -> plain_tqdm:
    """A tqdm bar (same arguments) that redraws in a terminal and writes one final line
    elsewhere."""
    stream = kwargs.get("file") or sys.stderr
    if is_terminal(stream) or "ipykernel" in sys.modules:
        return live_tqdm(*args, **kwargs)
    kwargs["leave"] = True  # the final line is the whole point off a terminal
    return FinalLineBar(*args, **kwargs)

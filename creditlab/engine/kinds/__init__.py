"""The kinds of connection a group can have, one file each, found by name.

Every module of this package is imported here, and each Kind subclass that sets `name`
registers itself in KINDS (kinds/base.py): adding a kind is adding its file, plus a builder
method on Network (engine/network.py) that passes its options. See docs/writing-a-kind.md.
"""

from __future__ import annotations

import importlib
import pkgutil

from creditlab.engine.kinds.base import KINDS, Kind, KindOption, RandomGraph

__all__ = ["KINDS", "Kind", "KindOption", "RandomGraph"]

# dense first: the kind of every plain network leads the registry (and gradcheck's checks).
for _name in ["dense", *(m.name for m in pkgutil.iter_modules(__path__) if m.name != "dense")]:
    importlib.import_module(f"{__name__}.{_name}")

"""The tutorials run: every ```python block of each tutorial page is executed, in order, in one
namespace per page, as a reader pasting them one after another would.

A block that raises fails the test with the page and the block's first line; the pages check
their own results with asserts (a rule equal to bp at the first step, accuracies far above
chance), so a tutorial that drifts from the code stops the suite.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs" / "tutorials").glob("*.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text(encoding="utf-8"))


def test_there_are_tutorials_with_code():
    names = {p.name for p in PAGES}
    assert {"write-a-rule.md", "own-network.md"} <= names
    for page in PAGES:
        assert blocks(page), f"{page.name} has no python block"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_tutorial_runs(page):
    from creditlab.rules import RULES

    # A tutorial may register a rule by hand; the registry is put back afterwards.
    saved = dict(RULES)
    namespace = {"__name__": f"tutorial_{page.stem.replace('-', '_')}"}
    try:
        for number, code in enumerate(blocks(page), 1):
            first = code.strip().splitlines()[0]
            try:
                exec(compile(code, f"{page.name} block {number}", "exec"), namespace)
            except Exception as err:
                raise AssertionError(f"{page.name}, block {number} ({first!r}): {err!r}") from err
    finally:
        RULES.clear()
        RULES.update(saved)

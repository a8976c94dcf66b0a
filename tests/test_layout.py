"""The package's layout keeps its promises, read from the source (ASTs), not from the running
code: no module outside creditlab/rules/ names a rule (what a rule can do it declares, and the
defaults come from rules/__init__.py), and imports have no cycles."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from creditlab.rules import RULES

PACKAGE = Path(__file__).resolve().parents[1] / "creditlab"

# String constants outside rules/ that equal a rule's name but do not name the rule, each with
# the reason. (module path relative to creditlab/, the constant) -> why.
NOT_A_RULE = {
    ("errors.py", "es"): "the English plural ending in UnknownNameError's message",
}


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its __init__)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def test_no_module_outside_rules_names_a_rule():
    names = set(RULES)
    # A list of rule names in one string ("bp,fa" or "bp/bp") names rules as much as one does.
    joined = re.compile(r"[\w-]+(?:[,/][\w-]+)+")
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.startswith("rules/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            value = node.value
            parts = re.split(r"[,/]", value) if joined.fullmatch(value) else [value]
            if any(p in names for p in parts) and (relative, value) not in NOT_A_RULE:
                found.append(f"{relative}:{node.lineno}: {value!r}")
    assert not found, (
        "modules outside creditlab/rules/ name rules; ask the rule what it can do, or take the "
        "name from rules/__init__.py (DEFAULT_RULE, ...):\n" + "\n".join(found)
    )


def test_the_allow_list_is_still_needed():
    for (relative, value), why in NOT_A_RULE.items():
        source = (PACKAGE / relative).read_text()
        assert f'"{value}"' in source, f"{relative} no longer holds {value!r} ({why})"


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports, anywhere in its code except in an
    `if TYPE_CHECKING:` block (never run)."""
    out: set[str] = set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                out.update(a.name for a in child.names if a.name in modules)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package[: len(package) - child.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    if full in modules:
                        out.add(full)  # a module imported from its package
                    elif base in modules:
                        out.add(base)
            visit(child)

    visit(ast.parse(path.read_text()))
    out.discard(name)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return components


def test_imports_have_no_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert graph["creditlab.training.trainer"] >= {"creditlab.training.settings"}  # it reads
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]

"""The source tree's shape: modules and units a reader can hold, imports that go one way, and no import circles.

Read from the files with :mod:`ast` (no import runs), so a circle hidden behind ``TYPE_CHECKING`` counts too.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("pure", "reference", "properties", "handgrad")  # in the order imports may go: each from those before
MAX_LINES = 350
MODULES = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


NAMES = {_name(p): p for p in MODULES}


def _imports(path: pathlib.Path) -> set[str]:
    """The project's modules ``path`` imports at module level (a function's own imports are lazy, and excluded)."""
    found = set()
    tree = ast.parse(path.read_text())
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If | ast.Try):  # TYPE_CHECKING blocks and import fallbacks
            pending += node.body + node.orelse + getattr(node, "handlers", []) + getattr(node, "finalbody", [])
        elif isinstance(node, ast.ExceptHandler):
            pending += node.body
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in found if n in NAMES}


GRAPH = {name: _imports(path) - {name} for name, path in NAMES.items()}


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_no_module_is_over_350_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)}: {lines} lines"


@pytest.mark.parametrize("name", sorted(NAMES))
def test_imports_go_one_way(name):
    rank = PACKAGES.index(name.split(".")[0])
    later = {m for m in GRAPH[name] if PACKAGES.index(m.split(".")[0]) > rank}
    assert not later, f"{name} imports {sorted(later)}, from a package that builds on it"


def _cycle_from(start: str) -> list[str] | None:
    """A path of module-level imports from ``start`` back to itself, through modules other than packages'
    ``__init__`` (which import their children by design), or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in GRAPH[node]:
            if nxt == start:
                return path + [start]
            if nxt not in seen and not NAMES[nxt].name == "__init__.py":
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


@pytest.mark.parametrize("name", sorted(n for n, p in NAMES.items() if p.name != "__init__.py"))
def test_no_import_circle(name):
    assert _cycle_from(name) is None


def test_the_check_sees_a_circle_and_an_import_behind_type_checking(tmp_path):
    """The check above can fail: a planted circle is found, and so is an import behind ``TYPE_CHECKING``."""
    saved = {k: set(v) for k, v in GRAPH.items()}
    try:
        GRAPH["properties.op"].add("properties.law")
        assert _cycle_from("properties.law") is not None
    finally:
        GRAPH.clear()
        GRAPH.update(saved)
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from properties.law import Law\n")
    path = tmp_path / "planted.py"
    path.write_text(ast.unparse(tree))
    assert _imports(path) == {"properties.law"}


MAX_UNIT = 100


def _units(path: pathlib.Path) -> list[tuple[str, int]]:
    """Every function and class of a module, with its length in lines."""
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]


@pytest.mark.parametrize("path", MODULES, ids=_name)
def test_no_function_or_class_is_100_lines_or_more(path):
    long = [(name, n) for name, n in _units(path) if n >= MAX_UNIT]
    assert not long, f"{path.relative_to(ROOT)}: {long}"

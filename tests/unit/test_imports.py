"""No import cycle among foreman's modules.

Every ``import``/``from ... import`` of a foreman module counts, wherever it is written: at module
level, under ``if TYPE_CHECKING:`` or inside a function (a deferred import hides a cycle, it does
not remove it). ``from package import name`` is an edge to ``package.name`` when that is a module,
else to the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import foreman

ROOT = Path(foreman.__file__).parent


def module_names() -> dict[str, Path]:
    """Every module under src/foreman by dotted name (a package by its own name)."""
    names: dict[str, Path] = {}
    for path in ROOT.rglob("*.py"):
        parts = ("foreman", *path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The foreman modules that module imports anywhere in its source."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing package
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in known else base)
    return {name for name in found if name in known and name != module}


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    known = set(modules)
    return {name: imported(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of graph as a path that ends where it starts, or None."""
    visiting: list[str] = []
    on_path: set[str] = set()
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        visiting.append(node)
        on_path.add(node)
        for target in sorted(graph[node]):
            if target in on_path:
                return [*visiting[visiting.index(target) :], target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        visiting.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_imports_at_every_level():
    graph = import_graph()
    # Module level, and deferred inside a function (open_queue imports its backends on demand).
    assert "foreman.errors" in graph["foreman.client._base"]
    assert {"foreman.queue.bullmq", "foreman.queue.postgres"} <= graph["foreman.queue"]


def test_find_cycle_reports_the_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_foreman():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])

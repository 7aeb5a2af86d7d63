"""`foreman bench` talks to Foreman only as a user's program would (architecture issue, point 5).

Its modules may import the SDK's public names (foreman.client, foreman.worker, the package root),
the configuration, the error tree and the logging set-up; never store, server or queue code, and
no private module. What it needs from the server it asks over HTTP or as a `foreman` process.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import foreman.bench

BENCH_DIR = Path(foreman.bench.__file__).parent
# Modules bench may import whole; each is public: a user sets it up or catches it.
ALLOWED_MODULES = {"foreman.errors", "foreman.settings", "foreman.logs"}
ALLOWED_MODULES_NAMES = {name.rsplit(".", 1)[1] for name in ALLOWED_MODULES}
# Packages bench may import public names from (those in their __all__).
PUBLIC_PACKAGES = ("foreman", "foreman.client", "foreman.worker")


def imports_of(path: Path) -> list[tuple[str, tuple[str, ...], int]]:
    """(module, imported names, line) of every import statement, nested ones included."""
    found: list[tuple[str, tuple[str, ...], int]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, (), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            found.append((module, tuple(alias.name for alias in node.names), node.lineno))
    return found


def violation(module: str, names: tuple[str, ...]) -> str | None:
    """Why importing names from module breaks the boundary; None when it does not."""
    if module.startswith("."):
        return "relative import"
    if module != "foreman" and not module.startswith("foreman."):
        return None  # the standard library or a third-party package
    if module == "foreman.bench" or module.startswith("foreman.bench."):
        return None
    if module in ALLOWED_MODULES:
        return None
    if module in PUBLIC_PACKAGES and names:
        public = set(importlib.import_module(module).__all__)
        if module == "foreman":
            public |= ALLOWED_MODULES_NAMES
        hidden = [name for name in names if name not in public]
        return f"not public: {', '.join(hidden)}" if hidden else None
    return "Foreman internals: use the HTTP API, the SDK or a `foreman` process"


def bench_modules() -> list[Path]:
    return sorted(BENCH_DIR.rglob("*.py"))


def test_bench_package_has_modules():
    names = {path.name for path in bench_modules()}
    assert {"command.py", "suite.py", "services.py", "scale.py"} <= names


@pytest.mark.parametrize("path", bench_modules(), ids=lambda p: p.name)
def test_bench_imports_only_public_foreman(path: Path):
    bad = [
        f"{path.name}:{line}: {module} {names or ''}: {reason}"
        for module, names, line in imports_of(path)
        if (reason := violation(module, names)) is not None
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("foreman.store.migrate", ("apply_migrations_async",)),
        ("foreman.store", ("db",)),
        ("foreman.server.app", ()),
        ("foreman.queue", ("open_queue",)),
        ("foreman.client._base", ("TaskSpec",)),
        ("foreman.client", ("_base",)),
        ("foreman.worker.worker", ("Worker",)),
        ("foreman.ids", ()),
        (".stats", ("percentile",)),
    ],
)
def test_the_check_rejects_internal_imports(module, names):
    assert violation(module, names) is not None


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("foreman.client", ("AsyncClient", "TaskSpec")),
        ("foreman.worker", ("TaskContext",)),
        ("foreman", ("errors",)),
        ("foreman.settings", ("Settings",)),
        ("foreman.bench.stats", ("percentile",)),
        ("asyncpg", ()),
    ],
)
def test_the_check_accepts_public_imports(module, names):
    assert violation(module, names) is None

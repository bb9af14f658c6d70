"""The layers of the code: each module imports only its own layer and those below it, and no
modules import each other in a circle. api -> domains -> infrastructure; devtools -> product;
never the reverse. Imports inside functions count too: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Lowest first. A module belongs to the longest prefix that names it.
LAYERS: list[tuple[str, ...]] = [
    ("app", "app.config", "app.logs", "app.heap"),  # settings and process set-up
    ("app.kit",),  # the database, the publisher, clocks, metrics, domain errors
    ("app.upstream",),  # the gateway contract and its implementations
    ("app.operators",),  # keys, the audit trail, the activity
    ("app.jobs", "app.models"),  # the job core; the tables derive from its statuses
    ("app.events",),  # the intake and reads of events (they show their jobs)
    ("app.webhooks",),  # messages about jobs and events
    ("app.api", "app.console", "app.cli", "app.main"),  # the edges people and services use
    ("worker",),  # the Celery processes, wiring the domains together
    ("devtools",),  # the local stack, the sandbox, the demo: never imported by the product
]


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    return None if best is None else best[0]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool) -> set[str]:
    """Every project module `module` imports (anywhere in it), by full name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + is_package]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            # `from app.kit import db` names a module, not a value
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def project_graph() -> dict[str, set[str]]:
    files = {}
    for top in ("app", "worker", "devtools"):
        for path in (ROOT / top).rglob("*.py"):
            files[module_name(path)] = path
    graph = {}
    for name, path in files.items():
        deps = imports_of(path.read_text(), name, path.name == "__init__.py")
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def upward(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for module, deps in sorted(graph.items()):
        mine = layer_of(module)
        assert mine is not None, f"{module} is on no layer: add it to LAYERS"
        for dep in sorted(deps):
            theirs = layer_of(dep)
            if theirs is not None and theirs > mine:
                out.append(f"{module} -> {dep}")
    return out


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_a_layer_above_its_own() -> None:
    assert upward(project_graph()) == []


def test_no_modules_import_each_other_in_a_circle() -> None:
    assert circles(project_graph()) == []


def test_the_checks_find_what_they_look_for() -> None:
    planted = {
        "app.kit.db": {"app.api.deps"},
        "app.api.deps": {"app.kit.db"},
        "app.jobs.run": {"devtools.sandbox.state"},
    }
    assert upward(planted) == [
        "app.jobs.run -> devtools.sandbox.state",
        "app.kit.db -> app.api.deps",
    ]
    assert circles(planted) == [["app.api.deps", "app.kit.db"]]


@pytest.mark.parametrize(
    ("module", "layer"),
    [("app.kit.db", 1), ("app.models", 4), ("app.api.deps", 7), ("devtools.sandbox", 9)],
)
def test_layer_of(module: str, layer: int) -> None:
    assert layer_of(module) == layer

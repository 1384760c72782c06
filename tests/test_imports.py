"""The import graph: no cycle among the project's modules, and each process imports only what is its own.

Edges are read from the source (every `import` and `from … import` statement,
function-level ones included), not from a running interpreter, so an import that
only runs on some path still counts. A package's implicit import of its parent
`__init__` is not an edge: it is how Python packages work, not a dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from settings import ROOT

SKIP = {".venv", ".git", "data", "node_modules", "__pycache__"}


def project_modules() -> dict[str, Path]:
    """Every module of the project by dotted name (packages by their own name)."""
    modules = {}
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT)
        if SKIP & set(relative.parts):
            continue
        parts = list(relative.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that `name` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)] if package else []
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a module `a.b`: the edge is to a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_graph_sees_function_level_imports(graph):
    assert "integrations" in graph["workflows"]  # only imported inside check_registry()
    assert "temporalio" not in graph["processor"]  # third-party modules are not nodes


def test_no_import_cycle_among_project_modules(graph):
    assert cycles(graph) == []


def test_the_cycle_check_can_fail():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", ["web.task_store", "web.db"])
def test_the_storage_layer_imports_nothing_from_integrations(graph, module):
    assert not {m for m in reachable(graph, module) if m.split(".")[0] == "integrations"}


@pytest.mark.parametrize("module", ["integrations", "processor", "workflows", "settings", "logs"])
def test_shared_modules_and_other_processes_import_nothing_of_the_web_process(graph, module):
    assert not {m for m in reachable(graph, module) if m.split(".")[0] in ("web", "app")}


def test_importing_integrations_loads_no_database_module():
    """The processor and the worker import integrations; none may pull in the database layer."""
    code = (
        "import sys, integrations, settings\n"
        "from integrations import load_integrations\n"
        "cfgs = [i.get_pull_mode_config() for i in load_integrations(settings.load_config())]\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('sqlite3', '_sqlite3', 'sqlite_utils', 'web', "
        "'flask', 'psycopg', 'psycopg_pool', 'psycopg_binary'))\n"
        "print(len(cfgs), bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"INTERNAL_API_TOKEN": "t", "PATH": ""}, check=True).stdout
    assert out.strip() == "2 []"

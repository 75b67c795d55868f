"""The layout's dependency rule, checked on the source (function-level imports included):

    cli -> views -> analysis -> results <- engine        (integrations -> engine, results)

Nothing imports upward or sideways between engine and analysis, and no module imports itself
back through others (no cycles). bench.errors and the root package are below everything."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import bench

PACKAGE = Path(bench.__file__).parent
BASE = {"bench", "bench.errors"}
# What each layer may import besides itself and BASE.
ALLOWED = {
    "results": set(),
    "engine": {"results"},
    "analysis": {"results"},
    "views": {"analysis", "results"},
    "integrations": {"engine", "results"},
    "cli": {"views", "analysis", "results", "engine"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str | None:
    """'results', 'engine', ... for bench.<layer>...; None for the base modules."""
    if module in BASE:
        return None
    if module == "bench.__main__":
        return "cli"
    return module.split(".")[1]


def imports(module: str, source: str | None = None) -> set[str]:
    """Every bench module `module` imports, anywhere in its source."""
    tree = ast.parse(source if source is not None else MODULES[module].read_text(encoding="utf-8"))
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            # `from bench.engine import workloads` imports the submodule bench.engine.workloads.
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        else:
            continue
        found.update(n for n in names if n == "bench" or n.startswith("bench."))
    return {n for n in found if n in MODULES} - {module}


GRAPH = {module: imports(module) for module in MODULES}


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Edges that break the layer rule."""
    wrong = []
    for module, targets in graph.items():
        own = layer(module)
        for target in targets:
            other = layer(target)
            if own is None and other is not None:
                wrong.append(f"{module} -> {target}")
            elif own and other is not None and other != own and other not in ALLOWED[own]:
                wrong.append(f"{module} -> {target}")
    return wrong


def cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every back edge a depth-first search finds, as the cycle it closes."""
    state: dict[str, int] = {}
    found = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                found.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_every_layer_imports_only_downward() -> None:
    assert violations(GRAPH) == []


def test_no_import_cycles() -> None:
    assert cycles(GRAPH) == []


@pytest.mark.parametrize(
    ("module", "target"),
    [("bench.results.schema", "bench.errors"), ("bench.views.report", "bench.analysis.summary")],
)
def test_the_checker_sees_imports(module: str, target: str) -> None:
    """Guard the checker itself: it finds known edges (a parser that finds none passes all)."""
    assert target in GRAPH[module]


def test_the_checker_catches_upward_imports_and_cycles() -> None:
    """A function-level upward import in the engine, and a cycle it closes, are both found."""
    source = MODULES["bench.engine.runner"].read_text(encoding="utf-8")
    source += "\n\ndef _later():\n    from bench.views import report\n"
    graph = {**GRAPH, "bench.engine.runner": imports("bench.engine.runner", source)}
    assert "bench.engine.runner -> bench.views.report" in violations(graph)
    graph["bench.results.schema"] = GRAPH["bench.results.schema"] | {"bench.engine.runner"}
    assert any("bench.engine.runner" in c and "bench.results.schema" in c for c in cycles(graph))

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


# ---------------------------------------------------------------------------------------------
# Rooms that hold their own facts
# ---------------------------------------------------------------------------------------------

MODES_PACKAGE = "bench.engine.modes"
# Names a precision mode shares with a dtype (a reduce dtype, a compute dtype): a comparison with
# one of these is a precision-name comparison only where the other side is a precision.
_DTYPE_NAMES = {"fp32", "tf32", "bf16", "fp16", "fp8"}


def _precision_names() -> set[str]:
    from bench.engine.modes import PRECISION_MODES

    return set(PRECISION_MODES)


def _string_constants(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [
            e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)
        ]
    return []


def precision_name_comparisons(source: str, names: set[str]) -> list[str]:
    """`x == "fp8"`, `precision in ("fp32", ...)`, `p.startswith("fp8")`: a precision mode named
    by a string literal in a comparison. A name that is also a dtype ("fp32", "bf16") counts only
    where the other side mentions a precision."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("startswith", "endswith")
        ):
            operands = [node.func.value, *node.args]
        else:
            continue
        for i, operand in enumerate(operands):
            literals = [c for c in _string_constants(operand) if c in names]
            if not literals:
                continue
            others = " ".join(ast.unparse(o) for j, o in enumerate(operands) if j != i)
            if any(c not in _DTYPE_NAMES for c in literals) or "precision" in others:
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_no_precision_name_comparisons_outside_the_modes() -> None:
    """A fact about a precision belongs to its mode (bench.engine.modes): code elsewhere asks the
    mode, it never tests the name."""
    names = _precision_names()
    wrong = []
    for module, path in MODULES.items():
        if module == MODES_PACKAGE or module.startswith(MODES_PACKAGE + "."):
            continue
        for hit in precision_name_comparisons(path.read_text(encoding="utf-8"), names):
            wrong.append(f"{module}: {hit}")
    assert wrong == []


def test_the_precision_name_checker_sees_what_it_must() -> None:
    names = _precision_names()
    flagged = [
        'case.precision == "fp32"',
        'name in ("fp8", "fp8_rowwise", "mxfp8")',
        'mode == "amp_bf16"',
        'precision.startswith(("fp8", "mxfp8"))',
    ]
    for snippet in flagged:
        assert precision_name_comparisons(snippet, names), snippet
    allowed = ['reduce_dtype in (None, "fp32")', 'dtype == "bf16"', 'x == "train"']
    for snippet in allowed:
        assert not precision_name_comparisons(snippet, names), snippet


def case_attribute_uses(source: str, attribute: str) -> list[str]:
    """Every `<something>.<attribute>` in the source, as 'line N: ...'."""
    return [
        f"line {node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute) and node.attr == attribute
    ]


def test_the_runner_has_no_data_parallel_or_compile_branch() -> None:
    """The runner applies the layout (one device or data-parallel) and the execution (eager,
    compiled or graphs) as components (bench.engine.parallel, bench.engine.execution): it never
    asks a case whether it is data-parallel, compiled or graphed."""
    source = MODULES["bench.engine.runner"].read_text(encoding="utf-8")
    assert case_attribute_uses(source, "parallel") == []
    assert [u for u in case_attribute_uses(source, "compiled") if "case." in u] == []
    assert [u for u in case_attribute_uses(source, "execution") if "case." in u] == []
    assert case_attribute_uses("if case.parallel is not None:\n    pass\n", "parallel")

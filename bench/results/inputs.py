"""Every input `report`, `compare`, `check` and `baseline` accept, read as a Run:

  * a run directory, or its results.jsonl;
  * a baseline file (baselines/<device>.json), or a directory of baselines, from which the one
    for the current run's device is picked;
  * a pytest-benchmark JSON file (--benchmark-json, or a --benchmark-autosave file).

The format is told from the path and, for .json files, from the document itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.errors import ResultsError
from bench.results.baseline import (
    is_baseline_dir,
    is_baseline_document,
    pick_baseline,
    run_from_baseline,
)
from bench.results.files import read_json_file
from bench.results.pytest_benchmark import is_pytest_benchmark_document, run_from_pytest_benchmark
from bench.results.rundir import Run, load_run

INPUT_HELP = (
    "a run directory, its results.jsonl, a baseline file (baselines/<device>.json) or a "
    "pytest-benchmark JSON file"
)


def load_json_input(path: Path) -> Run:
    """A .json input: an mpbench baseline or a pytest-benchmark file, told apart by content."""
    data = read_json_file(path, "file")
    if is_baseline_document(data):
        return run_from_baseline(data, path)
    if is_pytest_benchmark_document(data):
        return run_from_pytest_benchmark(data, path)
    raise ResultsError(
        f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' list) or an mpbench baseline"
    )


def load_input(
    ref: str | Path, role: str, current_env: dict[str, Any] | None = None, allow_empty: bool = False
) -> Run:
    """A run from any accepted input. `role` names it in messages (BASE, CURRENT, RUN_DIR); a
    directory of baselines needs the current run's env to pick from. A run with no result is an
    error unless `allow_empty`."""
    path = Path(ref)
    if not path.exists():
        raise ResultsError(f"{role} {ref}: no such run directory or file")
    if path.suffix == ".json" and path.is_file():
        run = load_json_input(path)
    elif is_baseline_dir(path) and not (path / "env.json").is_file():
        if not any(path.glob("*.json")):
            raise ResultsError(
                f"{role} {ref}: not a run directory (no results.jsonl) and holds no baselines"
            )
        if current_env is None:
            raise ResultsError(
                f"{role} {ref}: is a directory of baselines; name a file in it, or use it as "
                "`check --baseline DIR`"
            )
        run = load_json_input(pick_baseline(path, current_env))
    else:
        run = load_run(path)
    if not run.results and not allow_empty:
        detail = f" ({run.warnings[0]})" if run.warnings else ""
        raise ResultsError(f"{role} {ref}: holds no case result{detail}")
    return run

"""The results contract: `Case`, `CaseResult`, and reading/writing a run directory.

A run directory holds:
  env.json        the environment, captured once per run (bench.engine.env)
  suite.toml      the resolved suite as run
  results.jsonl   one JSON object per case (CaseResult.to_dict), appended and fsynced as each finishes

Every later stage (report, compare, check) reads these files only, so nothing needs re-running.
The schema is documented in README.md ("Results format"); bump SCHEMA_VERSION on breaking changes.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import ResultsError

SCHEMA_VERSION = 1
RESULTS_FILE = "results.jsonl"
ENV_FILE = "env.json"
SUITE_FILE = "suite.toml"

# Case statuses. "ok" is measured; every other status carries a `reason`.
STATUSES = ("ok", "skipped", "oom", "error", "crashed", "timeout")


@dataclass(frozen=True)
class Case:
    """One point of a sweep: a model, a workload and a precision at one batch size and sequence length."""

    model: str
    family: str
    workload: str
    precision: str
    batch_size: int
    seq_len: int
    device: str

    @property
    def id(self) -> str:
        """Stable, human-readable id, e.g. `gpt2-124m/train/amp_bf16/bs8/seq512` (device not included)."""
        return (
            f"{self.model}/{self.workload}/{self.precision}/bs{self.batch_size}/seq{self.seq_len}"
        )

    def to_dict(self) -> dict[str, Any]:
        """The `case` object of a results line."""
        return {"id": self.id, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Case:
        """Inverse of to_dict (the `id` key is derived, so it is ignored)."""
        return cls(**{k: v for k, v in data.items() if k != "id"})


@dataclass
class CaseResult:
    """What one case produced. Field names and units are the JSON schema."""

    case: Case
    status: str
    reason: str | None = None
    timing: dict[str, Any] | None = (
        None  # warmup, iterations, step_s[], median_s, mean_s, stdev_s, ...
    )
    throughput: dict[str, float] | None = None  # samples_per_s, tokens_per_s
    memory: dict[str, Any] | None = None  # peak_bytes, reserved_bytes, method
    losses: list[float] | None = None  # training: loss of every timed step, in order
    numerics: dict[str, Any] | None = None  # divergence vs fp32 (see README)
    details: dict[str, Any] = field(default_factory=dict)  # mode settings, scaler stats, parameters
    started_at: str | None = None  # ISO 8601, UTC
    wall_s: float | None = None  # whole case, set-up included

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; expected one of {STATUSES}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseResult:
        """Inverse of to_dict (reads a results.jsonl line back)."""
        known = {f for f in cls.__dataclass_fields__ if f != "case"}
        values = {k: v for k, v in data.items() if k in known}
        values["details"] = values.get("details") or {}
        return cls(case=Case.from_dict(data["case"]), **values)

    def to_dict(self) -> dict[str, Any]:
        """One line of results.jsonl."""
        data = asdict(self)
        data["case"] = self.case.to_dict()
        return {"schema": SCHEMA_VERSION, **data}


class ResultsWriter:
    """Appends CaseResults to results.jsonl, flushed and fsynced per line so a crash loses nothing."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / RESULTS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A line torn by a crash stays on its own line (and is skipped with a warning when read),
        # so appending after it never glues two results together.
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "rb+") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")

    def append(self, result: CaseResult) -> None:
        """Write one result as a line and make it durable before returning."""
        line = json.dumps(result.to_dict(), allow_nan=True, separators=(",", ":"))
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())


@dataclass
class Run:
    """A run directory read back: its environment, its results (as dicts) and load warnings."""

    path: Path
    env: dict[str, Any]
    results: list[dict[str, Any]]
    warnings: list[str]
    suite_text: str | None = None

    def by_id(self) -> dict[str, dict[str, Any]]:
        """Results keyed by case id (a later line for the same id wins, as with --resume)."""
        return {r["case"]["id"]: r for r in self.results}


def read_json_file(path: Path, what: str = "file") -> Any:
    """Parse a JSON file; unreadable or invalid JSON is a ResultsError naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: not valid JSON ({exc})") from None


def read_results_file(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Parse results.jsonl; a torn or corrupt line is skipped with a warning naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read results file ({exc.strerror or exc})") from None
    results: list[dict[str, Any]] = []
    problems: list[str] = []
    lines = text.split("\n")
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict) or "case" not in data or "status" not in data:
                raise ValueError("not a case result object")
            data["case"]["id"]
        except (ValueError, KeyError, TypeError) as exc:
            torn = lineno == len(lines) and not text.endswith("\n")
            kind = (
                "truncated last line (interrupted write?)" if torn else f"unreadable line ({exc})"
            )
            problems.append(f"{path}:{lineno}: {kind}; skipped")
            continue
        results.append(data)
    return results, problems


def load_run(path: str | os.PathLike[str]) -> Run:
    """Load a run directory, or a bare results.jsonl file (env then read from beside it if present)."""
    p = Path(path)
    if p.suffix == ".json" and p.is_file():
        return _load_json_run(p)
    if p.is_dir():
        run_dir, results_path = p, p / RESULTS_FILE
    elif p.is_file():
        run_dir, results_path = p.parent, p
    else:
        raise ResultsError(f"{p}: no such run directory or results file")
    if not results_path.is_file():
        raise ResultsError(f"{run_dir}: no {RESULTS_FILE} in this directory; is it an mpbench run?")
    results, problems = read_results_file(results_path)
    for problem in problems:
        warnings.warn(problem, stacklevel=2)
    env: dict[str, Any] = {}
    env_path = run_dir / ENV_FILE
    if env_path.is_file():
        try:
            env = json.loads(env_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ResultsError(f"{env_path}: not valid JSON ({exc})") from None
    suite_path = run_dir / SUITE_FILE
    suite_text = suite_path.read_text(encoding="utf-8") if suite_path.is_file() else None
    return Run(path=run_dir, env=env, results=results, warnings=problems, suite_text=suite_text)


def _load_json_run(path: Path) -> Run:
    """A pytest-benchmark JSON file (or an mpbench baseline) read as a run (bench.results.pytest_benchmark)."""
    from bench.results.pytest_benchmark import load_pytest_benchmark

    return load_pytest_benchmark(path)

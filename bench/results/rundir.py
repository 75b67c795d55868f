"""A run directory on disk: create it, append results as cases finish, read it back.

A run directory holds:
  env.json        the environment, captured once per run (bench.engine.env)
  suite.toml      the resolved suite as run (its [check] and [numerics] tables included)
  results.jsonl   one CaseResult per line (bench.results.schema), appended and fsynced per case
  max_batch.json  only for `--find-max-batch`: the largest batch per configuration

Every later stage (report, compare, check, baseline, resume) reads these files only, so nothing
needs re-running. A write that fails (disk full) never leaves a torn line behind: the writer
rolls results.jsonl back to its last whole line and raises OutputError (exit code 3).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import MpbenchError, OutputError, ResultsError
from bench.results.identity import DeviceIdentity
from bench.results.schema import Case, CaseResult

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

RESULTS_FILE = "results.jsonl"
ENV_FILE = "env.json"
SUITE_FILE = "suite.toml"
INFLIGHT_FILE = (
    "inflight"  # the case a data-parallel run's ranks are running (bench.engine.session)
)
MAX_BATCH_FILE = "max_batch.json"


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _free_space(directory: Path) -> str:
    """'12.0 KiB free' on the file system holding `directory`, or '' where it cannot be read."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return ""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if free >= size:
            return f"{free / size:.1f} {unit} free"
    return f"{free} bytes free"


def output_error(path: Path, exc: OSError) -> OutputError:
    """One line naming the file, the OS's reason and the free space left in its directory."""
    free = _free_space(path.parent)
    return OutputError(
        f"cannot write {path}: {exc.strerror or exc}"
        + (f" ({free} in {path.parent})" if free else "")
    )


def write_text_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing: a temp file renamed into place, removed if the write fails."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise output_error(path, exc) from None


def create_run_dir(out: Path) -> None:
    """Create a new run directory; refuse one that already holds results (nothing is overwritten)."""
    for name in (RESULTS_FILE, ENV_FILE, MAX_BATCH_FILE):
        if (out / name).exists():
            raise ResultsError(
                f"--out {out}: already holds {name}; choose a new directory (or continue an "
                f"interrupted run with `mpbench run --resume {out}`)"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResultsError(
            f"--out {out}: cannot create the run directory ({exc.strerror})"
        ) from None


def write_json(path: Path, data: Any) -> None:
    """A JSON file (env.json, max_batch.json), written whole or not at all."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def rank_report_path(run_dir: Path, rank: int) -> Path:
    """RUN_DIR/inflight-rankN.json: what rank N's share of the in-flight case ended in, written by
    a rank whose share failed before it leaves (its peers cannot hear it any more)."""
    return Path(run_dir) / f"{INFLIGHT_FILE}-rank{rank}.json"


def write_rank_report(run_dir: Path, rank: int, result: CaseResult) -> None:
    """Leave a failed rank's result for rank 0 or `mpbench run --nproc` to record."""
    write_json(rank_report_path(run_dir, rank), result.to_dict())


def read_rank_reports(run_dir: Path, case_id: str) -> dict[int, CaseResult]:
    """The failed ranks' reports of this case, by rank (unreadable or other cases' ignored)."""
    reports = {}
    for path in Path(run_dir).glob(f"{INFLIGHT_FILE}-rank*.json"):
        try:
            result = CaseResult.from_dict(json.loads(path.read_text(encoding="utf-8")), str(path))
            rank = int(path.stem.rsplit("rank", 1)[1])
        except (OSError, ValueError, MpbenchError):
            continue
        if result.case.id == case_id:
            reports[rank] = result
    return reports


def reported_failure(run_dir: Path, case: Case) -> CaseResult | None:
    """The case's result as the lowest failed rank reported it (its status, its reason naming
    the rank), or None where no rank left a report. That rank's failure is the cause; its peers'
    errors, their collectives failing, are the consequence."""
    reports = read_rank_reports(run_dir, case.id)
    if not reports:
        return None
    rank = min(reports)
    return reports[rank].replace(case=case, reason=f"rank {rank}: {reports[rank].reason}")


def clear_inflight(run_dir: Path) -> None:
    """Remove RUN_DIR/inflight and the ranks' reports."""
    for path in [Path(run_dir) / INFLIGHT_FILE, *Path(run_dir).glob(f"{INFLIGHT_FILE}-rank*.json")]:
        path.unlink(missing_ok=True)


class ResultsWriter:
    """Appends CaseResults to results.jsonl, flushed and fsynced per line so a crash loses nothing.

    A failed append (disk full, I/O error) truncates the file back to its size before the append,
    so the file always ends with a whole line, then raises OutputError.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / RESULTS_FILE
        # A line torn by a crash stays on its own line (and is skipped with a warning when read),
        # so appending after it never glues two results together.
        try:
            if self.path.exists() and self.path.stat().st_size:
                with open(self.path, "rb+") as fh:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":
                        fh.write(b"\n")
        except OSError as exc:
            raise output_error(self.path, exc) from None

    def append(self, result: CaseResult) -> None:
        """Write one result as a line and make it durable before returning."""
        line = json.dumps(result.to_dict(), allow_nan=True, separators=(",", ":")) + "\n"
        data = line.encode("utf-8")
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise output_error(self.path, exc) from None
        try:
            size_before = os.fstat(fd).st_size
            try:
                written = 0
                while written < len(data):
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            except OSError as exc:
                try:
                    os.ftruncate(fd, size_before)  # back to the last whole line
                except OSError:
                    pass
                raise output_error(self.path, exc) from None
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    """A run read back: its environment, its results (typed, in file order) and load warnings."""

    path: Path
    env: dict[str, Any]
    results: list[CaseResult]
    warnings: list[str] = field(default_factory=list)
    suite_text: str | None = None
    source: str = "run directory"  # or "baseline", "pytest-benchmark"

    def by_id(self) -> dict[str, CaseResult]:
        """Results keyed by case id; a later line for the same id wins (as after --resume)."""
        return {r.case.id: r for r in self.results}

    def latest(self) -> list[CaseResult]:
        """One result per case id (the last written), in the order the ids first appeared."""
        return list(self.by_id().values())

    @property
    def identity(self) -> DeviceIdentity:
        """The device and software the run recorded."""
        return DeviceIdentity.from_env(self.env)

    def suite_table(self, name: str) -> dict[str, Any] | None:
        """A table ([check], [numerics]) of the suite this run recorded, if any."""
        if not self.suite_text:
            return None
        try:
            doc = tomllib.loads(self.suite_text)
        except tomllib.TOMLDecodeError as exc:
            raise ResultsError(f"{self.path / SUITE_FILE}: TOML syntax error: {exc}") from None
        table = doc.get(name)
        if table is not None and not isinstance(table, dict):
            raise ResultsError(f"{self.path / SUITE_FILE}: {name}: must be a table ([{name}])")
        return table

    @property
    def numerics_enabled(self) -> bool:
        """False when the run's suite turned the numerics passes off on purpose."""
        table = self.suite_table("numerics") or {}
        return table.get("enabled", True) is not False


def read_results(path: Path) -> tuple[list[CaseResult], list[str]]:
    """Parse results.jsonl. A line that is not JSON (torn by a crash) is skipped with a warning
    naming it; a JSON line that breaks the schema is an error naming the line and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: cannot read results file ({exc})") from None
    results: list[CaseResult] = []
    problems: list[str] = []
    lines = text.split("\n")
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            torn = lineno == len(lines) and not text.endswith("\n")
            kind = (
                "truncated last line (interrupted write?)" if torn else f"unreadable line ({exc})"
            )
            problems.append(f"{path}:{lineno}: {kind}; skipped")
            continue
        results.append(CaseResult.from_dict(data, f"{path}:{lineno}"))
    return results, problems


def read_env(path: Path) -> dict[str, Any]:
    """env.json as a dict; unreadable, invalid or non-object JSON is a ResultsError naming it."""
    data = read_json_file(path, "env.json")
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: not a JSON object")
    return data


def read_json_file(path: Path, what: str = "file") -> Any:
    """Parse a JSON file; unreadable or invalid JSON is a ResultsError naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: not valid JSON ({exc})") from None


def load_run(path: str | os.PathLike[str]) -> Run:
    """A run directory, or a bare results.jsonl (env.json and suite.toml then read beside it).

    A run directory whose results.jsonl does not exist yet (stopped before its first case) reads
    as a run with no results.
    """
    p = Path(path)
    if p.is_dir():
        run_dir, results_path = p, p / RESULTS_FILE
        if not results_path.is_file() and not (p / ENV_FILE).is_file():
            raise ResultsError(f"{p}: no {RESULTS_FILE} in this directory; is it an mpbench run?")
    elif p.is_file():
        run_dir, results_path = p.parent, p
    else:
        raise ResultsError(f"{p}: no such run directory or results file")
    if results_path.is_file():
        results, problems = read_results(results_path)
    else:
        results, problems = (
            [],
            [f"{RESULTS_FILE} is missing: the run stopped before any case finished"],
        )
    env = read_env(run_dir / ENV_FILE) if (run_dir / ENV_FILE).is_file() else {}
    suite_path = run_dir / SUITE_FILE
    suite_text = None
    if suite_path.is_file():
        try:
            suite_text = suite_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ResultsError(f"{suite_path}: cannot read the run's suite ({exc})") from None
    return Run(run_dir, env, results, problems, suite_text)

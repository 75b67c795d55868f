"""A run directory on disk: create it, append results as cases finish, read it back.

A run directory holds:
  env.json        the environment, captured once per run, }  the run's manifest:
  suite.toml      the resolved suite as run               }  bench.results.manifest
  results.jsonl   one CaseResult per line (bench.results.schema), appended and fsynced per case
  max_batch.json  only for `--find-max-batch`: the largest batch per configuration

Every later stage (report, compare, check, baseline, resume) reads these files only, so nothing
needs re-running. A write that fails (disk full) never leaves a torn line behind: the writer
rolls results.jsonl back to its last whole line and raises OutputError (exit code 3).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import MpbenchError, ResultsError
from bench.results.files import output_error, write_json
from bench.results.identity import DeviceIdentity
from bench.results.manifest import ENV_FILE, SUITE_FILE, RunManifest
from bench.results.schema import Case, CaseResult

RESULTS_FILE = "results.jsonl"
# RUN_DIR/inflight-rankN.json: rank N's report of a case its share failed (bench.engine.executors)
RANK_REPORT_PREFIX = "inflight-rank"
MAX_BATCH_FILE = "max_batch.json"


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


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


def rank_report_path(run_dir: Path, rank: int) -> Path:
    """RUN_DIR/inflight-rankN.json: what rank N's share of the in-flight case ended in, written by
    a rank whose share failed before it leaves (its peers cannot hear it any more)."""
    return Path(run_dir) / f"{RANK_REPORT_PREFIX}{rank}.json"


def write_rank_report(run_dir: Path, rank: int, result: CaseResult) -> None:
    """Leave a failed rank's result for rank 0 or `mpbench run --nproc` to record."""
    write_json(rank_report_path(run_dir, rank), result.to_dict())


def read_rank_reports(run_dir: Path, case_id: str) -> dict[int, CaseResult]:
    """The failed ranks' reports of this case, by rank (unreadable or other cases' ignored)."""
    reports = {}
    for path in Path(run_dir).glob(f"{RANK_REPORT_PREFIX}*.json"):
        try:
            result = CaseResult.from_dict(json.loads(path.read_text(encoding="utf-8")), str(path))
            rank = int(path.stem.rsplit("rank", 1)[1])
        except (OSError, ValueError, MpbenchError):
            continue
        if result.case.id == case_id:
            reports[rank] = result
    return reports


def reported_failure(run_dir: Path, case: Case, consume: bool = False) -> CaseResult | None:
    """The case's result as the lowest failed rank reported it (its status, its reason naming
    the rank), or None where no rank left a report. That rank's failure is the cause; its peers'
    errors, their collectives failing, are the consequence. `consume` removes the reports."""
    reports = read_rank_reports(run_dir, case.id)
    if consume:
        clear_rank_reports(run_dir)
    if not reports:
        return None
    rank = min(reports)
    return reports[rank].replace(case=case, reason=f"rank {rank}: {reports[rank].reason}")


def clear_rank_reports(run_dir: Path) -> None:
    """Remove the ranks' reports (RUN_DIR/inflight-rankN.json)."""
    for path in Path(run_dir).glob(f"{RANK_REPORT_PREFIX}*.json"):
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
    """A run read back: its manifest (env.json, suite.toml), its results (typed, in file order)
    and load warnings."""

    path: Path
    manifest: RunManifest
    results: list[CaseResult]
    warnings: list[str] = field(default_factory=list)
    source: str = "run directory"  # or "baseline", "pytest-benchmark"

    @property
    def env(self) -> dict[str, Any]:
        """The env.json object."""
        return self.manifest.env

    @property
    def suite_text(self) -> str | None:
        """The resolved suite.toml, where the run has one."""
        return self.manifest.suite_text

    def by_id(self) -> dict[str, CaseResult]:
        """Results keyed by case id; a later line for the same id wins (as after --resume)."""
        return {r.case.id: r for r in self.results}

    def latest(self) -> list[CaseResult]:
        """One result per case id (the last written), in the order the ids first appeared."""
        return list(self.by_id().values())

    @property
    def identity(self) -> DeviceIdentity:
        """The device and software the run recorded."""
        return self.manifest.identity

    def suite_table(self, name: str) -> dict[str, Any] | None:
        """A table ([check], [numerics]) of the suite this run recorded, if any."""
        return self.manifest.suite_table(name, str(self.path / SUITE_FILE))

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
    return Run(run_dir, RunManifest.read(run_dir), results, problems)

"""A whole sweep: the run directory, resume, and every case through the executor into
results.jsonl. Progress goes to a SweepProgress; nothing here prints.

    suite -> cases -> executor (runner) -> ResultsWriter (results.jsonl, one fsynced line a case)

Tables, the report and everything else read results.jsonl afterwards (bench.cli).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.engine.device import Device
from bench.engine.env import capture_env
from bench.engine.interrupts import ExecutionOptions, InterruptibleSweep
from bench.engine.oom import OomLimits
from bench.engine.progress import SweepProgress
from bench.engine.suite import Shard, Suite, parse_shard, parse_suite
from bench.errors import MpbenchError, OutputError
from bench.results.rundir import (
    ENV_FILE,
    RESULTS_FILE,
    SUITE_FILE,
    ResultsWriter,
    create_run_dir,
    read_env,
    read_results,
    write_json,
    write_text_atomic,
)
from bench.results.schema import CaseResult


@dataclass(frozen=True)
class RunOptions:
    """How a sweep runs (the `mpbench run` flags the engine needs)."""

    execution: ExecutionOptions = field(default_factory=ExecutionOptions)
    skip_larger: bool = True  # after an OOM, predict OOM for larger batches of that config
    resume: bool = False
    shard: Shard | None = None  # --shard I/N: only the cases of that shard


@dataclass
class SweepOutcome:
    """What a sweep did: its exit code (0, or 130/143 after an interrupt) and counts."""

    exit_code: int
    finished: int  # cases run (and saved) by this invocation
    not_run: int  # cases left after an interrupt
    already_done: int  # cases a resumed run found in results.jsonl
    startup_s: list[float]  # worker start-up times


def start_run_dir(
    suite: Suite, device: Device, out: Path, isolate: str, shard: Shard | None = None
) -> dict:
    """Create the run directory with env.json and the resolved suite.toml; returns the env."""
    create_run_dir(out)
    env = capture_env(device, suite.name, suite.source)
    env["suite_sha256"] = suite.fingerprint()
    env["isolate"] = isolate
    env["shard"] = str(shard) if shard else None
    write_json(out / ENV_FILE, env)
    write_text_atomic(out / SUITE_FILE, suite.to_toml())
    return env


def load_resumable(run_dir: Path, suite: Suite | None, device: Device) -> Suite:
    """The suite of an interrupted run; a suite given again must be the same one (by hash), and
    the device the same."""
    if not (run_dir / SUITE_FILE).is_file() or not (run_dir / ENV_FILE).is_file():
        raise MpbenchError(f"--resume {run_dir}: not an mpbench run directory (no {SUITE_FILE})")
    stored = parse_suite(
        (run_dir / SUITE_FILE).read_text(encoding="utf-8"), str(run_dir / SUITE_FILE)
    )
    if suite is not None and suite.fingerprint() != stored.fingerprint():
        raise MpbenchError(
            f"--resume {run_dir}: the suite given ({suite.source}, with flags) differs from the one "
            f"this run started with; run `mpbench run --resume {run_dir}` alone to continue it"
        )
    env = read_env(run_dir / ENV_FILE)
    if env.get("device") != device.name:
        raise MpbenchError(
            f"--resume {run_dir}: the run was measured on {env.get('device')}, not {device.name}; "
            f"resume it with --device {env.get('device')}"
        )
    return stored


def resumed_shard(run_dir: Path, given: Shard | None) -> Shard | None:
    """The shard an interrupted run was started with; a --shard given again must match it."""
    stored = read_env(run_dir / ENV_FILE).get("shard")
    shard = parse_shard(stored, f"{run_dir / ENV_FILE}: shard") if stored else None
    if given is not None and given != shard:
        raise MpbenchError(
            f"--resume {run_dir}: the run was started as shard {stored or 'none (the whole suite)'}"
            f", not {given}; run `mpbench run --resume {run_dir}` alone to continue it"
        )
    return shard


def previous_results(out: Path) -> tuple[list[CaseResult], list[str]]:
    """Results already in a run directory (for --resume) and warnings about torn lines."""
    path = out / RESULTS_FILE
    return read_results(path) if path.exists() else ([], [])


def run_suite(
    suite: Suite | None,
    device: Device,
    out: Path,
    options: RunOptions = RunOptions(),
    progress: SweepProgress | None = None,
) -> SweepOutcome:
    """Run every case of `suite` on `device` into `out` (or, with options.resume, continue `out`).

    Each result is appended to results.jsonl and fsynced before the next case starts. Ctrl-C or
    SIGTERM abandons the case in flight and returns exit code 130 / 143; a results file that
    cannot be written raises OutputError (exit 3) with every earlier line intact.
    """
    progress = progress or SweepProgress()
    shard = options.shard
    if options.resume:
        suite = load_resumable(out, suite, device)
        shard = resumed_shard(out, shard)
        previous, problems = previous_results(out)  # before the writer mends a torn line
    else:
        start_run_dir(suite, device, out, options.execution.isolate, shard)
        previous, problems = [], []
    writer = ResultsWriter(out)
    done_ids = {r.case.id for r in previous}
    cases = [c for c in suite.cases(device.name, shard) if c.id not in done_ids]
    for problem in problems:
        progress.notice(problem)
    name = suite.name if shard is None else f"{suite.name}, shard {shard}"
    progress.sweep_started(name, device.name, out, len(cases), len(done_ids))
    oom_limits = OomLimits(enabled=options.skip_larger)
    for result in previous:
        oom_limits.record(result)
    finished = 0
    with InterruptibleSweep(suite, device, options.execution) as sweep:
        for case in cases:
            progress.case_started(case)
            result = oom_limits.predict(case)
            if result is None:
                result = sweep.executor.run(
                    case, lambda name, step, total, c=case: progress.phase(c, name, step, total)
                )
            try:
                writer.append(result)  # durable before the next case starts
            except OutputError as exc:
                kept = len(previous) + finished
                raise OutputError(
                    f"{exc}; stopped. The {kept} result(s) before it are intact; free some space "
                    f"and continue with `mpbench run --resume {out}`"
                ) from None
            finished += 1
            oom_limits.record(result)
            progress.case_finished(case, result)
    return SweepOutcome(
        exit_code=sweep.exit_code,
        finished=finished,
        not_run=len(cases) - finished,
        already_done=len(done_ids),
        startup_s=list(sweep.executor.startup_s),
    )

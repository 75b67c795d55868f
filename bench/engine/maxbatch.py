"""`mpbench run --find-max-batch`: the largest batch size that fits, per model, workload,
precision and sequence length. Doubling from 1 until a batch runs out of memory, then bisection
between the last fit and the first OOM. "bf16 fits 2.3x the batch of fp32" is the headline
(bench.analysis.maxbatch computes the ratios; the CLI writes them to max_batch.json).

Each probe is a real case (1 warm-up and 2 timed steps, numerics off) run by the same executor as
a sweep, so a probe that kills its worker costs one worker, not the search. A probe that
crashes or times out counts as "does not fit" (the OOM killer ends CPU runs that way).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.engine.device import Device
from bench.engine.executors import ExecutionOptions, make_executor
from bench.engine.session import start_run_dir
from bench.engine.suite import Suite, Timing
from bench.engine.supervisor import InterruptibleSweep
from bench.results.schema import Case, CaseResult

# Probe statuses that mean "this batch does not fit" (anything else but ok ends the search).
DOES_NOT_FIT = ("oom", "crashed", "timeout")


@dataclass
class MaxBatch:
    """Search result for one model/workload/precision/seq_len."""

    model: str
    workload: str
    precision: str
    seq_len: int
    max_batch_size: int | None  # None: not even batch 1 fits (or the mode is skipped)
    limit_reached: bool  # True when the cap was reached without an OOM
    reason: str | None = None  # why there is no figure (skipped mode, error)
    probes: list[dict[str, Any]] = field(default_factory=list)  # batch_size, status, median_s


def probe_suite(suite: Suite) -> Suite:
    """The suite with short timing and numerics off: a probe asks "does it fit?", not "how fast"."""
    tables = {**suite.tables, "numerics": {**suite.tables.get("numerics", {}), "enabled": False}}
    return replace(suite, timing=Timing(warmup=1, iterations=2), tables=tables)


def find_max_batch(run_case: Callable[[Case], CaseResult], template: Case, cap: int) -> MaxBatch:
    """Double, then bisect; `run_case(case) -> CaseResult` runs one probe."""
    out = MaxBatch(
        template.model, template.workload, template.precision, template.seq_len, None, False
    )

    def fits(batch_size: int) -> bool | None:
        result = run_case(replace(template, batch_size=batch_size))
        out.probes.append(
            {"batch_size": batch_size, "status": result.status, "median_s": result.median_s}
        )
        if result.status == "ok":
            return True
        if result.status in DOES_NOT_FIT:
            return False
        out.reason = f"{result.status}: {result.reason}"
        return None  # skipped or error: no answer to find

    good, bad, batch = 0, None, 1
    while True:  # double up to the cap (the cap itself is probed too)
        answer = fits(batch)
        if answer is None:
            return out
        if not answer:
            bad = batch
            break
        good = batch
        if batch >= cap:
            out.max_batch_size, out.limit_reached = good, True
            return out
        batch = min(batch * 2, cap)
    while bad - good > 1:
        middle = (good + bad) // 2
        answer = fits(middle)
        if answer is None:
            return out
        good, bad = (middle, bad) if answer else (good, middle)
    out.max_batch_size = good or None
    return out


@dataclass
class MaxBatchOutcome:
    """What a search did: exit code (0, or 130/143 after an interrupt) and the searches that
    ended, in the suite's order (bench.analysis.maxbatch adds each one's ratio to fp32's)."""

    exit_code: int
    found: list[MaxBatch]


def search_max_batch(
    suite: Suite,
    device: Device,
    out: Path,
    execution: ExecutionOptions,
    cap: int,
    on_found: Callable[[MaxBatch], None] | None = None,
) -> MaxBatchOutcome:
    """One search per model x workload x precision x seq_len, in the run directory `out` (its
    env.json and suite.toml; the caller writes max_batch.json from the outcome). `on_found` sees
    each search as it ends; an interrupt keeps the finished ones."""
    start_run_dir(suite, device, out, execution.isolate)
    probes = probe_suite(suite)
    found: list[MaxBatch] = []
    executor = make_executor(execution, probes, device, out)
    with InterruptibleSweep(executor) as sweep:
        seen = set()
        for case in probes.cases(device.name):
            key = (case.model, case.workload, case.precision, case.seq_len)
            if key in seen:
                continue
            seen.add(key)
            found.append(find_max_batch(executor.run, case, cap))
            if on_found is not None:
                on_found(found[-1])
    return MaxBatchOutcome(sweep.exit_code, found)

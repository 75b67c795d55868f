"""`mpbench run --find-max-batch`: the largest batch size that fits, per model, workload,
precision and sequence length. Doubling from 1 until a batch runs out of memory, then bisection
between the last fit and the first OOM. "bf16 fits 2.3x the batch of fp32" is the headline.

Each probe is a real case (1 warm-up and 2 timed steps, numerics off) run by the same executor as
a sweep, so a probe that kills its worker costs one worker, not the search. A probe that
crashes or times out counts as "does not fit" (the OOM killer ends CPU runs that way).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.engine.suite import Suite, Timing
from bench.results.schema import Case

MAX_BATCH_FILE = "max_batch.json"
FAILED = ("oom", "crashed", "timeout")


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


def find_max_batch(run_case: Any, template: Case, cap: int) -> MaxBatch:
    """Double, then bisect; `run_case(case) -> CaseResult` runs one probe."""
    out = MaxBatch(
        template.model, template.workload, template.precision, template.seq_len, None, False
    )

    def fits(batch_size: int) -> bool | None:
        result = run_case(replace(template, batch_size=batch_size))
        median = result.timing["median_s"] if result.timing else None
        out.probes.append({"batch_size": batch_size, "status": result.status, "median_s": median})
        if result.status == "ok":
            return True
        if result.status in FAILED:
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


def search_all(
    suite: Suite,
    device_name: str,
    run_case: Any,
    cap: int,
    found: list[MaxBatch],
    progress: Any = None,
) -> list[MaxBatch]:
    """One search per model x workload x precision x seq_len, appended to `found` as each ends
    (so an interrupted search keeps the finished ones)."""
    seen = set()
    for case in suite.cases(device_name):
        key = (case.model, case.workload, case.precision, case.seq_len)
        if key in seen:
            continue
        seen.add(key)
        result = find_max_batch(run_case, case, cap)
        found.append(result)
        if progress is not None:
            progress(result)
    return found


def with_ratios(found: list[MaxBatch]) -> list[dict[str, Any]]:
    """Rows for max_batch.json: each result plus its ratio to fp32's max batch."""
    fp32 = {
        (m.model, m.workload, m.seq_len): m.max_batch_size for m in found if m.precision == "fp32"
    }
    rows = []
    for m in found:
        base = fp32.get((m.model, m.workload, m.seq_len))
        ratio = m.max_batch_size / base if base and m.max_batch_size else None
        rows.append({**asdict(m), "vs_fp32": ratio})
    return rows


def write_max_batch(out: Path, found: list[MaxBatch], cap: int) -> Path:
    """Write max_batch.json into the run directory."""
    path = out / MAX_BATCH_FILE
    path.write_text(json.dumps({"cap": cap, "results": with_ratios(found)}, indent=2) + "\n")
    return path

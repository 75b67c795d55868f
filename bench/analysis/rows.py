"""Typed rows of a run's analysis: one CaseRow per case, what the views read instead of the
analysis' pandas frame (bench.analysis.summary builds the frame, then these rows from it, once).

Units are in the names (median_s, peak_bytes, energy_per_sample_j); a missing value is None,
never NaN (an infinite figure, e.g. a rate over a zero median, stays infinite).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import pandas as pd


@dataclass(frozen=True)
class CaseRow:
    """One case of a run (a later result for the same id wins) with its comparison against
    fp32 at the same shape, as every view shows it."""

    id: str
    model: str
    workload: str
    precision: str
    execution: str  # eager, compiled or graphs
    mode: str  # what views list it as (Case.mode): "bf16", "bf16 ddp2 reduce-bf16 +compile"
    layout: str  # data-parallel strategy and world size ("ddp4"); "" on one device
    world_size: int  # 1 on one device
    batch_size: int | None  # None for a labelled benchmark
    seq_len: int | None
    sweep: bool  # a sweep point; False for a labelled benchmark (a plain pytest-benchmark test)
    headline: bool  # at its model and workload's headline point
    status: str
    reason: str | None
    median_s: float | None
    samples_per_s: float | None
    tokens_per_s: float | None
    rate: float | None  # in rate_unit
    rate_unit: str | None
    peak_bytes: int | None
    speedup: float | None  # median step of fp32 / this case's, same shape and execution, both ok
    speedup_note: str | None  # why a compiled or graphed case has no speedup
    execution_gain: float | None  # median step of its precision run eagerly / this case's
    compile_s: float | None  # the first call, timed apart (compiling, or capturing a graph)
    memory_saving: float | None  # 1 - peak / fp32's peak, same shape
    verdict: str | None  # its numerics pass's verdict
    numerics_error: str | None
    divergence_metric: str | None
    divergence: float | None
    warmup_steps: int | None
    warmup_steady: bool | None  # None where there is no timing
    cv: float | None  # stdev / mean of the timed steps
    robust_cv: float | None  # IQR / (1.349 x median): the spread `unstable` is judged on
    unstable: bool
    gpu_busy_fraction: float | None  # GPU cases: kernel time over a profiled window's wall time
    host_bound: bool  # GPU busy below bench.analysis.hostbound.HOST_BOUND_BELOW
    flops_per_step: int | None
    achieved_tflops: float | None
    peak_tflops: float | None
    mfu: float | None
    mfu_reason: str | None  # why there is no MFU
    energy_per_step_j: float | None
    energy_per_sample_j: float | None
    power_mean_w: float | None
    throttled: bool
    throttle_reasons: str | None  # comma-separated, as NVML names them
    telemetry_reason: str | None  # why there is no GPU telemetry
    comm_s_per_step: float | None  # time in collectives per step (data-parallel)
    scaling_efficiency: float | None  # vs the same case on one rank (data-parallel)

    @property
    def ok(self) -> bool:
        """The case ran and was measured."""
        return self.status == "ok"


# Columns the frame holds as floats (NaN for missing) whose values are whole numbers.
_INTEGER_COLUMNS = ("batch_size", "seq_len", "peak_bytes", "warmup_steps", "flops_per_step")
_FIELDS = tuple(f.name for f in fields(CaseRow))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def case_rows(frame: pd.DataFrame) -> tuple[CaseRow, ...]:
    """The rows of an analysed case frame, in its order: missing values (NaN) as None, whole
    numbers as int, every value a plain Python one."""
    rows = []
    for record in frame.to_dict("records"):
        clean = {key: None if _missing(record[key]) else record[key] for key in _FIELDS}
        for key in _INTEGER_COLUMNS:
            if clean[key] is not None:
                clean[key] = int(clean[key])
        rows.append(CaseRow(**clean))
    return tuple(rows)

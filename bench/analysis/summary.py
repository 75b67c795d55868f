"""The analysis of one run: every figure a view shows about a run is computed here, once.

The terminal tables, summary.md, index.html and `mpbench report --json` all read a RunAnalysis, so
they cannot disagree. The rules (README, "Reading the results"):

* **Speedup** of a case = median step of fp32 / median step of the case, at the same model,
  workload, batch size, sequence length and execution, both ok (METHODS rules 5 and 28): a
  compiled bf16 case compares with compiled fp32, a graphed one with graphed fp32, so the
  speedup measures the precision, not the compiler. Where the run has no fp32 of that execution
  at the shape, the case has no speedup and its note says so (never eager fp32 instead).
* **Execution gain** of a case that did not run eagerly = median step of the same precision run
  eagerly / its median step, same shape and layout (TorchBench's compiled-vs-eager figure): what
  torch.compile or CUDA graphs give, apart from the precision (`execution_gains`).
* **Memory saving** of a case = 1 - peak(case) / peak(fp32), at that same shape.
* **Headline point** of a model x workload, the one shape its summary shows: among the shapes
  where fp32 ran ok, the one where the most precisions ran ok; ties go to the larger
  batch x sequence, then the larger batch. Where fp32 ran nowhere, the shape where the most
  precisions ran ok (and there are no speedups).
* **Verdict** of a precision: its numerics verdict, shared by every case of that model, workload
  and precision (the divergence pass runs once per triple).
* **Recommended** mode: the fastest mode at the headline point whose verdict is ok; fp32 is the
  reference and passes unless its own pass went wrong. Where no mode of the group has numerics,
  the fastest mode is named "speed only", never recommended.
* **Achieved TFLOP/s** of a case = counted FLOPs per step / median step; **MFU** = achieved /
  the dense peak of the mode's compute dtype (recorded with the case; none on a CPU or an
  unknown GPU without --peak-tflops, and the reason says so).
* **Achieved TFLOP/s** and **MFU** with a FLOPs split by dtype (fp8 models): the peak is the
  FLOP-weighted one, total FLOPs / sum_i(FLOPs_i / peak_i) (bench.results.peaks).
* **Energy per sample** = NVML energy over the energy window (the timed steps and the untimed
  ones that stretch it to 5 s) / its steps / batch size (GPU only).
* **Host-bound**: a GPU case whose GPU was busy less than 85% of its step (kernel time over a
  profiled window, bench.analysis.hostbound); its speedup is marked, not dropped.
* **Unstable**: the timed steps' robust spread, IQR / (1.349 x median) (`timing.robust_cv`, the
  stdev / mean that one outlier step cannot move), exceeds the suite's limit (10% by default);
  **throttled**: NVML saw a power or thermal slowdown during the timed steps.

The substrate is one tidy pandas frame of cases joined against fp32 at the same shape; views
read it as typed rows (bench.analysis.rows.CaseRow), never the frame itself.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from bench.analysis.hostbound import HOST_BOUND_BELOW, is_host_bound
from bench.analysis.rows import CaseRow, case_rows
from bench.results.schema import (
    BASELINE_PRECISION,
    EXECUTION_SUFFIXES,
    FAILURES,
    REDUCE_DTYPES,
    CaseResult,
    execution_rank,
    precision_rank,
    workload_rank,
)

SHAPE = ["batch_size", "seq_len"]
GROUP = ["model", "workload"]
# Where each headline divergence keeps fp32's own error (its noise floor).
FLOOR_KEYS = {"max_rel_div": "max_rel_div", "rel_rmse": "fp32_vs_fp64_rel_rmse"}


def _float(value: Any) -> float | None:
    """A finite or infinite float; None for NaN, None and non-numbers (pandas' missing values)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _text(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _divergence_floor(result: CaseResult, key: str | None) -> float | None:
    floor_key = FLOOR_KEYS.get(key or "")
    noise = (result.numerics or {}).get("noise_floor")
    if floor_key is None or not isinstance(noise, dict):
        return None
    return _float(noise.get(floor_key))


def case_frame(results: Iterable[CaseResult]) -> pd.DataFrame:
    """One row per case (a later result for the same id wins), with the fp32 comparison at its
    shape: `speedup` and `memory_saving` (NaN where either side did not run ok)."""
    latest: dict[str, CaseResult] = {}
    for result in results:
        latest[result.case.id] = result
    rows = []
    for order, result in enumerate(latest.values()):
        case = result.case
        divergence = result.divergence()
        rows.append(
            {
                "order": order,
                "id": case.id,
                "model": case.model,
                "family": case.family,
                "workload": case.workload,
                "precision": case.precision,
                "execution": case.execution,
                "mode": case.mode,
                "layout": case.layout,
                "parallel": case.parallel,
                "world_size": case.world_size or 1,
                "reduce_dtype": case.reduce_dtype or "",  # "" on one device
                "numerics_key": case.numerics_key,
                "batch_size": case.batch_size,
                "seq_len": case.seq_len,
                "sweep": case.label is None,
                "status": result.status,
                "reason": result.reason,
                "median_s": result.median_s,
                "samples_per_s": result.samples_per_s,
                "tokens_per_s": result.throughput.tokens_per_s if result.throughput else None,
                "rate": result.rate,
                "rate_unit": result.rate_unit,
                "peak_bytes": result.peak_bytes,
                "verdict": result.verdict,
                "numerics_error": result.numerics_error,
                "divergence_metric": divergence[0] if divergence else None,
                "divergence": divergence[1] if divergence else None,
                "divergence_floor": _divergence_floor(
                    result, divergence[0] if divergence else None
                ),
                "long_position_drop_db": _long_position_drop(result),
                "caveat": result.details.get("caveat") if result.ok else None,
                "compile_s": result.timing.compile_s if result.ok and result.timing else None,
                **_quality_columns(result),
            }
        )
    frame = pd.DataFrame(rows, columns=_CASE_COLUMNS).astype(_CASE_DTYPES)
    ok = frame["status"] == "ok"
    # The baseline of a shape is fp32 of the same execution, laid out the same way (one device,
    # or the same data-parallel strategy and world size), with gradients reduced in fp32.
    fp32_of_execution = (frame["precision"] == BASELINE_PRECISION) & frame["reduce_dtype"].isin(
        ["", "fp32"]
    )
    frame["baseline"] = fp32_of_execution
    fp32 = frame[ok & frame["sweep"] & fp32_of_execution]
    fp32 = fp32[[*GROUP, *SHAPE, "layout", "execution", "median_s", "peak_bytes"]].rename(
        columns={"median_s": "fp32_median_s", "peak_bytes": "fp32_peak_bytes"}
    )
    frame = frame.merge(fp32, on=[*GROUP, *SHAPE, "layout", "execution"], how="left")
    # The same precision run eagerly, same shape and layout: what the execution gains.
    eager = frame[ok & frame["sweep"] & (frame["execution"] == "eager")]
    eager = eager[[*GROUP, *SHAPE, "layout", "precision", "reduce_dtype", "median_s"]].rename(
        columns={"median_s": "eager_median_s"}
    )
    on = [*GROUP, *SHAPE, "layout", "precision", "reduce_dtype"]
    frame = frame.merge(eager, on=on, how="left").sort_values("order")
    measured = ok & frame["sweep"]
    frame["speedup"] = (frame["fp32_median_s"] / frame["median_s"]).where(measured)
    not_eager = frame["execution"] != "eager"
    frame["execution_gain"] = (frame["eager_median_s"] / frame["median_s"]).where(
        measured & not_eager
    )
    frame["speedup_note"] = [
        _speedup_note(execution)
        if is_measured and execution != "eager" and math.isnan(fp32_median)
        else None
        for is_measured, execution, fp32_median in zip(
            measured, frame["execution"], frame["fp32_median_s"], strict=True
        )
    ]
    # A zero peak (a window too short for the resident set to move) is no measurement.
    peak_known = (frame["fp32_peak_bytes"] > 0) & (frame["peak_bytes"] > 0)
    frame["memory_saving"] = (1.0 - frame["peak_bytes"] / frame["fp32_peak_bytes"]).where(
        measured & peak_known
    )
    frame["achieved_tflops"] = (frame["flops_per_step"] / frame["median_s"] / 1e12).where(ok)
    frame["mfu"] = frame["achieved_tflops"] / frame["peak_tflops"]
    frame = frame.reset_index(drop=True)
    frame["scaling_efficiency"] = scaling_efficiency(frame)
    return frame


def scaling_efficiency(frame: pd.DataFrame) -> pd.Series:
    """Per data-parallel case: its global samples/s over world size x the samples/s of the same
    case on one rank (the same strategy at world size 1, else the single-device case), when the
    frame holds that case ok; NaN otherwise. 1.0 is perfect weak scaling (per-rank batch kept)."""
    ok = frame[(frame["status"] == "ok") & frame["sweep"]]
    single: dict[tuple, float] = {}
    for row in ok[ok["world_size"] == 1].itertuples():
        key = (row.model, row.workload, row.precision, row.execution, row.batch_size, row.seq_len)
        strategy_key = (*key, row.parallel, row.reduce_dtype)
        single[strategy_key] = row.samples_per_s
        if not row.layout:
            single.setdefault(key, row.samples_per_s)
    out = pd.Series(float("nan"), index=frame.index)
    for index, row in ok[ok["world_size"] > 1].iterrows():
        key = (row.model, row.workload, row.precision, row.execution, row.batch_size, row.seq_len)
        reference = single.get((*key, row.parallel, row.reduce_dtype), single.get(key))
        if reference:
            out[index] = row.samples_per_s / (row.world_size * reference)
    return out


def _speedup_note(execution: str) -> str:
    """Why a case that did not run eagerly has no speedup: no fp32 of its execution."""
    suffix = EXECUTION_SUFFIXES.get(execution, execution)
    return (
        f"no fp32 {suffix} ran ok at this shape: no speedup (a speedup compares the same "
        "execution, never eager fp32)"
    )


def _long_position_drop(result: CaseResult) -> float | None:
    """dB of logits SQNR a rotary model loses at late positions (numerics.long_positions)."""
    check = (result.numerics or {}).get("long_positions")
    if not isinstance(check, dict) or not check.get("run"):
        return None
    return _float(check.get("late_drop_db"))


def _quality_columns(result: CaseResult) -> dict[str, Any]:
    """Steadiness, FLOPs and GPU telemetry of one case (None where the result has none)."""
    timing, flops, telemetry = result.timing, result.flops, result.telemetry
    ok = result.ok
    return {
        "warmup_steps": timing.warmup if ok and timing else None,
        "warmup_steady": timing.warmup_steady if ok and timing else None,
        "cv": timing.cv if ok and timing else None,
        "robust_cv": timing.robust_cv if ok and timing else None,
        "unstable": bool(timing.unstable) if ok and timing else False,
        "gpu_busy_fraction": timing.gpu_busy_fraction if ok and timing else None,
        "host_bound": is_host_bound(timing.gpu_busy_fraction) if ok and timing else False,
        "flops_per_step": flops.per_step if ok and flops else None,
        "peak_tflops": flops.peak_tflops if ok and flops else None,
        "mfu_reason": (flops.peak_reason if flops else "FLOPs not counted") if ok else None,
        "energy_per_step_j": telemetry.energy_per_step_j if ok and telemetry else None,
        "energy_per_sample_j": telemetry.energy_per_sample_j if ok and telemetry else None,
        "power_mean_w": telemetry.power_mean_w if ok and telemetry else None,
        "throttled": bool(telemetry.throttled) if ok and telemetry else False,
        "throttle_reasons": ", ".join(telemetry.throttle_reasons) if ok and telemetry else None,
        "telemetry_reason": telemetry.reason if ok and telemetry else None,
        "comm_s_per_step": (result.details.get("parallel") or {}).get("comm_s_per_step")
        if ok
        else None,
    }


_CASE_DTYPES = {
    "order": "int64",
    "id": object,
    "model": object,
    "family": object,
    "workload": object,
    "precision": object,
    "execution": object,
    "mode": object,
    "layout": object,
    "parallel": object,
    "world_size": "int64",
    "reduce_dtype": object,
    "numerics_key": object,
    "batch_size": "float64",
    "seq_len": "float64",
    "sweep": bool,
    "status": object,
    "reason": object,
    "median_s": "float64",
    "samples_per_s": "float64",
    "tokens_per_s": "float64",
    "rate": "float64",
    "rate_unit": object,
    "peak_bytes": "float64",
    "verdict": object,
    "numerics_error": object,
    "divergence_metric": object,
    "divergence": "float64",
    "divergence_floor": "float64",
    "long_position_drop_db": "float64",
    "caveat": object,
    "compile_s": "float64",
    "warmup_steps": "float64",
    "warmup_steady": object,
    "cv": "float64",
    "robust_cv": "float64",
    "unstable": bool,
    "gpu_busy_fraction": "float64",
    "host_bound": bool,
    "flops_per_step": "float64",
    "peak_tflops": "float64",
    "mfu_reason": object,
    "energy_per_step_j": "float64",
    "energy_per_sample_j": "float64",
    "power_mean_w": "float64",
    "throttled": bool,
    "throttle_reasons": object,
    "telemetry_reason": object,
    "comm_s_per_step": "float64",
}
_CASE_COLUMNS = list(_CASE_DTYPES)


def mode_rank(
    precision: str, execution: str, layout: str = "", reduce_dtype: str | None = None
) -> tuple[Any, ...]:
    """Sort key of a mode: the documented precision order; within a precision one device
    first, then each data-parallel layout with its reduce dtypes in REDUCE_DTYPES order; each
    in EXECUTIONS order (eager, compiled, graphs)."""
    reduce_order = REDUCE_DTYPES.index(reduce_dtype) if reduce_dtype in REDUCE_DTYPES else -1
    strategy = layout.rstrip("0123456789")
    ranks = int(layout[len(strategy) :] or 0)  # ddp2 before ddp16
    return (*precision_rank(precision), strategy, ranks, reduce_order, execution_rank(execution))


@dataclass(frozen=True)
class ModeSummary:
    """One mode (a precision in one execution) of a model x workload: its case at the headline
    point and its verdict."""

    precision: str
    execution: str  # eager, compiled or graphs
    status: str  # the case's status at the headline point, or "not run"
    reason: str | None
    case_id: str | None
    median_s: float | None
    rate: float | None
    speedup: float | None
    peak_bytes: int | None
    memory_saving: float | None
    verdict: str | None  # the triple's numerics verdict; None without one
    numerics_error: str | None
    divergence: float | None
    divergence_metric: str | None
    divergence_floor: float | None
    is_baseline: bool  # fp32 itself (of its execution: each execution's own reference)
    caveat: str | None = None  # what to know about this mode's figures here (fp8 on a CPU)
    achieved_tflops: float | None = None  # counted FLOPs per step / median step
    mfu: float | None = None  # achieved / the dense peak of the mode's compute dtype
    energy_per_sample_j: float | None = None  # GPU energy (NVML) per sample
    unstable: bool = False  # its timed steps spread beyond the suite's limit
    gpu_busy_fraction: float | None = None  # GPU cases: kernel time over a profiled window
    host_bound: bool = False  # GPU busy below HOST_BOUND_BELOW: its speed is partly the host's
    throttled: bool = False  # the GPU slowed down (power, thermal) during its timed steps
    layout: str = ""  # data-parallel strategy and world size ("ddp4"); "" on one device
    reduce_dtype: str | None = None  # data-parallel gradients reduced in
    scaling_efficiency: float | None = None  # vs the same case on one rank (data-parallel)
    comm_s_per_step: float | None = None  # time in collectives per step (data-parallel)
    # A rotary model's logits: SQNR lost at positions 2048+ against the first 512 (numerics)
    long_position_drop_db: float | None = None
    speedup_note: str | None = None  # why a compiled or graphed mode has no speedup
    execution_gain: float | None = None  # eager median of its precision / its median
    eager_median_s: float | None = None  # the same precision run eagerly, same shape
    compile_s: float | None = None  # its first call: compiling, or warming up and capturing

    @property
    def label(self) -> str:
        """What views call the mode (Case.mode): the precision, a data-parallel layout and
        its non-fp32 reduce dtype, then the execution's suffix (' +compile', ' +graphs')."""
        reduce = f"reduce-{self.reduce_dtype}" if self.reduce_dtype not in (None, "fp32") else ""
        words = (self.precision, self.layout, reduce, EXECUTION_SUFFIXES.get(self.execution, ""))
        return " ".join(w for w in words if w)

    @property
    def eager_label(self) -> str:
        """The label of the same mode run eagerly (what its execution gain compares with)."""
        reduce = f"reduce-{self.reduce_dtype}" if self.reduce_dtype not in (None, "fp32") else ""
        return " ".join(w for w in (self.precision, self.layout, reduce) if w)

    @property
    def ok(self) -> bool:
        """Measured at the headline point."""
        return self.status == "ok"

    @property
    def passes(self) -> bool:
        """Eligible for a recommendation: measured, and its numerics are ok (fp32: not failed)."""
        if not self.ok:
            return False
        if self.is_baseline:
            return self.verdict in (None, "ok") and self.numerics_error is None
        return self.verdict == "ok"


@dataclass(frozen=True)
class GroupSummary:
    """The summary of one model x workload at its headline point."""

    model: str
    workload: str
    batch_size: int | None  # the headline point; None where nothing ran ok
    seq_len: int | None
    rate_unit: str
    modes: tuple[ModeSummary, ...]
    recommended: str | None  # label of the fastest mode that passes the numerics check
    speed_only: str | None  # label of the fastest mode, set only where no mode has numerics
    has_numerics: bool
    has_baseline: bool  # fp32 ran ok at the headline point: speedups exist
    divergence_metric: str | None  # the group's headline divergence (see DIVERGENCE_KEYS)

    def mode(self, label: str) -> ModeSummary | None:
        """The summary of one mode ("bf16", "bf16 +compile"), if the group has it."""
        return next((m for m in self.modes if m.label == label), None)


@dataclass(frozen=True)
class ExecutionGain:
    """One compiled or graphed mode at its group's headline point against the same precision
    run eagerly: what torch.compile or CUDA graphs gain, apart from the precision."""

    model: str
    workload: str
    batch_size: int | None
    seq_len: int | None
    mode: str  # the mode's label ("bf16 +compile")
    eager_mode: str  # the label of the same mode run eagerly ("bf16")
    execution: str  # compiled or graphs
    status: str  # the mode's status at the headline point
    median_s: float | None
    eager_median_s: float | None
    gain: float | None  # eager_median_s / median_s; None where either did not run ok
    compile_s: float | None  # the first call, timed apart: compiling or capturing


@dataclass(frozen=True)
class ProblemGroup:
    """Cases that share a status and a reason, e.g. every tf32 case skipped for want of a GPU."""

    status: str
    reason: str | None
    case_ids: tuple[str, ...]


@dataclass
class RunAnalysis:
    """Everything the views of a run show: one typed row per case, one summary per model x
    workload, and the cases that did not run ok. Views read `rows` (and the helpers below);
    `frame`, the pandas frame the figures are computed on, is the analysis' own substrate."""

    frame: pd.DataFrame  # every case joined against fp32 at its shape (see case_frame)
    rows: tuple[CaseRow, ...]  # every case, sweep points and labelled benchmarks alike, in order
    groups: list[GroupSummary]  # one per model x workload of the sweep points
    problems: list[ProblemGroup] = field(default_factory=list)
    results: dict[str, CaseResult] = field(default_factory=dict)  # by case id, for curves
    # Every compiled or graphed mode at its group's headline point against eager
    execution_gains: list[ExecutionGain] = field(default_factory=list)

    def result(self, case_id: str | None) -> CaseResult | None:
        """The full result of a case (per-step times, loss curves, numerics)."""
        return self.results.get(case_id) if case_id is not None else None

    @property
    def benchmark_rows(self) -> list[CaseRow]:
        """The labelled benchmarks (plain pytest-benchmark tests): no sweep point, no fp32."""
        return [r for r in self.rows if not r.sweep]

    def group_rows(self, group: GroupSummary) -> list[CaseRow]:
        """Every case of a group's model and workload, in order."""
        return [r for r in self.rows if (r.model, r.workload) == (group.model, group.workload)]

    @property
    def status_counts(self) -> dict[str, int]:
        """How many cases ended in each status."""
        return dict(sorted(Counter(r.status for r in self.rows).items()))

    @property
    def skipped_precisions(self) -> dict[str, int]:
        """How many cases of each precision were skipped, in precision order."""
        counts = Counter(r.precision for r in self.rows if r.status == "skipped")
        return dict(sorted(counts.items(), key=lambda kv: precision_rank(kv[0])))

    @property
    def telemetry_reasons(self) -> list[str]:
        """Why cases have no GPU telemetry, each reason once, in case order."""
        reasons = (r.telemetry_reason for r in self.rows if r.telemetry_reason is not None)
        return list(dict.fromkeys(reasons))

    @property
    def unstable_cases(self) -> list[tuple[str, float]]:
        """(case id, robust CV) of every case whose timed steps spread beyond the suite's
        limit."""
        return [
            (r.id, math.nan if r.robust_cv is None else r.robust_cv)
            for r in self.rows
            if r.unstable
        ]

    @property
    def host_bound_cases(self) -> list[tuple[str, float]]:
        """(case id, GPU-busy fraction) of every host-bound case (bench.analysis.hostbound)."""
        return [(r.id, r.gpu_busy_fraction or 0.0) for r in self.rows if r.host_bound]

    @property
    def has_gpu_busy(self) -> bool:
        """True when any case has a GPU-busy fraction (a GPU run)."""
        return any(r.gpu_busy_fraction is not None for r in self.rows)

    @property
    def throttled_cases(self) -> list[tuple[str, str]]:
        """(case id, reasons) of every case during which the GPU slowed down."""
        return [(r.id, str(r.throttle_reasons)) for r in self.rows if r.throttled]

    @property
    def has_mfu(self) -> bool:
        """True when any case has an MFU (a known GPU, or --peak-tflops)."""
        return any(r.mfu is not None for r in self.rows)

    @property
    def has_parallel(self) -> bool:
        """True when any case ran data-parallel."""
        return any(r.world_size > 1 or r.layout for r in self.rows)

    @property
    def has_scaling(self) -> bool:
        """True when any data-parallel case has a scaling efficiency."""
        return any(r.scaling_efficiency is not None for r in self.rows)

    @property
    def has_energy(self) -> bool:
        """True when any case has an energy figure (GPU telemetry)."""
        return any(r.energy_per_sample_j is not None for r in self.rows)

    def group(self, model: str, workload: str) -> GroupSummary | None:
        """The summary of one model x workload."""
        return next((g for g in self.groups if (g.model, g.workload) == (model, workload)), None)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (`mpbench report --json`): NaN and infinities become null."""
        return {
            "rules": RULES,
            "status_counts": self.status_counts,
            "groups": [_json_value(asdict(g)) for g in self.groups],
            "cases": [{key: _json_value(getattr(r, key)) for key in CASE_KEYS} for r in self.rows],
            "execution_gains": [_json_value(asdict(g)) for g in self.execution_gains],
            "problems": [_json_value(asdict(p)) for p in self.problems],
        }


# The fields of each case in `mpbench report --json`, in this order.
CASE_KEYS = (
    "id",
    "model",
    "workload",
    "precision",
    "execution",
    "mode",
    "batch_size",
    "seq_len",
    "status",
    "reason",
    "median_s",
    "rate",
    "rate_unit",
    "peak_bytes",
    "speedup",
    "speedup_note",
    "execution_gain",
    "compile_s",
    "memory_saving",
    "verdict",
    "numerics_error",
    "divergence_metric",
    "divergence",
    "headline",
    "warmup_steps",
    "warmup_steady",
    "cv",
    "robust_cv",
    "unstable",
    "gpu_busy_fraction",
    "host_bound",
    "flops_per_step",
    "achieved_tflops",
    "peak_tflops",
    "mfu",
    "mfu_reason",
    "energy_per_step_j",
    "energy_per_sample_j",
    "power_mean_w",
    "throttled",
    "throttle_reasons",
)

RULES = {
    "speedup": "median step of fp32 / median step of the mode, same model, workload, shape and "
    "execution (compiled vs compiled fp32, graphs vs graphs fp32)",
    "execution_gain": "median step of the same precision run eagerly / median step of the "
    "compiled or graphed mode, same model, workload and shape",
    "memory_saving": "1 - peak(mode) / peak(fp32), same model, workload and shape",
    "headline_point": "the shape where fp32 ran ok and the most precisions ran ok (ties: larger "
    "batch x sequence, then larger batch)",
    "recommended": "the fastest mode at the headline point whose numerics verdict is ok",
    "achieved_tflops": "FLOPs per step (torch FlopCounterMode) / median step / 1e12",
    "mfu": "achieved TFLOP/s / dense peak TFLOP/s of the mode's compute dtype; with FLOPs "
    "split by dtype, / the FLOP-weighted peak: total FLOPs / sum(FLOPs_i / peak_i)",
    "host_bound": f"GPU busy (kernel time over a profiled window's wall time) below "
    f"{HOST_BOUND_BELOW:.0%}: the host sets the pace; the speedup is marked, a floor",
    "energy_per_sample_j": "NVML energy over the timed steps / steps / batch size",
    "unstable": "IQR / (1.349 x median) of the timed steps (robust_cv) above the suite's "
    "timing.unstable_cv",
}


def _json_value(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars from the frame
        return _json_value(value.item())
    return value


def headline_point(group: pd.DataFrame) -> tuple[int, int] | None:
    """The headline (batch size, sequence length) of one model x workload (rule above)."""
    ok = group[(group["status"] == "ok") & group["sweep"]]
    if ok.empty:
        return None
    by_shape = ok.groupby(SHAPE)
    table = pd.DataFrame(
        {
            "has_fp32": by_shape["baseline"].any(),
            "precisions": by_shape["mode"].nunique(),
        }
    ).reset_index()
    table["tokens"] = table["batch_size"] * table["seq_len"]
    best = table.sort_values(
        ["has_fp32", "precisions", "tokens", "batch_size"], ascending=False, kind="stable"
    ).iloc[0]
    return int(best["batch_size"]), int(best["seq_len"])


def _triple_numerics(group: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per numerics pass (a precision, with its data-parallel layout and reduce dtype): the
    verdict, error and divergence of its numerics (any ok case)."""
    out: dict[str, dict[str, Any]] = {}
    with_numerics = group[group["verdict"].notna() | group["numerics_error"].notna()]
    for row in with_numerics.sort_values("order").itertuples():
        out.setdefault(
            row.numerics_key,
            {
                "verdict": _text(row.verdict),
                "numerics_error": _text(row.numerics_error),
                "divergence": _float(row.divergence),
                "divergence_metric": _text(row.divergence_metric),
                "divergence_floor": _float(row.divergence_floor),
                "long_position_drop_db": _float(row.long_position_drop_db),
            },
        )
    return out


def _mode_summary(
    kind: tuple[str, str, str, str | None], row: Any, numerics: dict[str, Any]
) -> ModeSummary:
    precision, execution, layout, reduce = kind
    reduce_dtype = reduce or None
    ok = row is not None and row.status == "ok"
    return ModeSummary(
        precision=precision,
        execution=execution,
        speedup_note=_text(row.speedup_note) if ok else None,
        execution_gain=_float(row.execution_gain) if ok else None,
        eager_median_s=_float(row.eager_median_s) if ok else None,
        compile_s=_float(row.compile_s) if ok else None,
        layout=layout,
        reduce_dtype=reduce_dtype,
        scaling_efficiency=_float(row.scaling_efficiency) if ok else None,
        comm_s_per_step=_float(row.comm_s_per_step) if ok else None,
        status=row.status if row is not None else "not run",
        reason=_text(row.reason) if row is not None else None,
        case_id=row.id if row is not None else None,
        median_s=_float(row.median_s) if ok else None,
        rate=_float(row.rate) if ok else None,
        speedup=_float(row.speedup) if ok else None,
        peak_bytes=int(row.peak_bytes) if ok and _float(row.peak_bytes) is not None else None,
        memory_saving=_float(row.memory_saving) if ok else None,
        verdict=numerics.get("verdict"),
        numerics_error=numerics.get("numerics_error"),
        divergence=numerics.get("divergence"),
        divergence_metric=numerics.get("divergence_metric"),
        divergence_floor=numerics.get("divergence_floor"),
        long_position_drop_db=numerics.get("long_position_drop_db"),
        is_baseline=precision == BASELINE_PRECISION and reduce_dtype in (None, BASELINE_PRECISION),
        caveat=_text(row.caveat) if ok else None,
        achieved_tflops=_float(row.achieved_tflops) if ok else None,
        mfu=_float(row.mfu) if ok else None,
        energy_per_sample_j=_float(row.energy_per_sample_j) if ok else None,
        unstable=bool(row.unstable) if ok else False,
        gpu_busy_fraction=_float(row.gpu_busy_fraction) if ok else None,
        host_bound=bool(row.host_bound) if ok else False,
        throttled=bool(row.throttled) if ok else False,
    )


def summarize_group(model: str, workload: str, group: pd.DataFrame) -> GroupSummary:
    """Throughput, speedup, memory and verdict per precision at the headline point, and the
    recommended mode."""
    point = headline_point(group)
    at_point = group
    if point is not None:
        at_point = group[(group["batch_size"] == point[0]) & (group["seq_len"] == point[1])]
    else:  # nothing ran ok: show each precision's largest case (its status says why)
        at_point = group.sort_values(["batch_size", "seq_len", "order"], na_position="first")
    rows = {row.mode: row for row in at_point.itertuples()}
    numerics = _triple_numerics(group)  # per pass: every execution shares the eager one's
    columns = ("precision", "execution", "layout", "reduce_dtype", "mode", "numerics_key")
    kinds = {
        (p, c, layout, r): (mode, key)
        for p, c, layout, r, mode, key in zip(*(group[k] for k in columns), strict=True)
    }
    modes = tuple(
        _mode_summary(kind, rows.get(kinds[kind][0]), numerics.get(kinds[kind][1], {}))
        for kind in sorted(kinds, key=lambda k: mode_rank(*k))
    )
    measured = [m for m in modes if m.ok and m.rate is not None]
    has_numerics = bool(numerics)
    recommended = speed_only = None
    if has_numerics:
        passing = [m for m in measured if m.passes]
        if passing:
            recommended = max(passing, key=lambda m: m.rate or 0.0).label
    elif measured:
        speed_only = max(measured, key=lambda m: m.rate or 0.0).label
    metrics = [m.divergence_metric for m in modes if m.divergence_metric]
    units = set(group["rate_unit"].dropna())
    return GroupSummary(
        model=model,
        workload=workload,
        batch_size=point[0] if point else None,
        seq_len=point[1] if point else None,
        rate_unit=units.pop() if len(units) == 1 else "samples/s",
        modes=modes,
        recommended=recommended,
        speed_only=speed_only,
        has_numerics=has_numerics,
        has_baseline=any(m.is_baseline and m.ok for m in modes),
        divergence_metric=max(sorted(set(metrics)), key=metrics.count) if metrics else None,
    )


def problem_groups(frame: pd.DataFrame) -> list[ProblemGroup]:
    """Cases that did not run ok, grouped by (status, reason): failures first, then OOM, skips."""
    severity = {s: i for i, s in enumerate((*FAILURES, "oom", "skipped"))}
    not_ok = frame[frame["status"] != "ok"]
    groups: dict[tuple[str, str | None], list[str]] = {}
    for row in not_ok.sort_values("order").itertuples():
        groups.setdefault((row.status, _text(row.reason)), []).append(row.id)
    ordered = sorted(groups.items(), key=lambda kv: (severity.get(kv[0][0], -1), -len(kv[1])))
    return [ProblemGroup(status, reason, tuple(ids)) for (status, reason), ids in ordered]


def analyze(results: Sequence[CaseResult] | Iterable[CaseResult]) -> RunAnalysis:
    """The analysis of a run's results (a later result for the same case id wins)."""
    results = list(results)
    frame = case_frame(results)
    # Labelled benchmarks (plain pytest-benchmark tests) are no sweep point: no group, no fp32.
    sweep = frame[frame["sweep"]]
    models = list(dict.fromkeys(sweep["model"]))
    keys = sorted(
        {(m, w) for m, w in zip(sweep["model"], sweep["workload"], strict=True)},
        key=lambda mw: (models.index(mw[0]), workload_rank(mw[1])),
    )
    groups = [
        summarize_group(
            model, workload, sweep[(sweep["model"] == model) & (sweep["workload"] == workload)]
        )
        for model, workload in keys
    ]
    headline = pd.Series(False, index=frame.index)
    for g in groups:
        if g.batch_size is not None:
            headline |= (
                (frame["model"] == g.model)
                & (frame["workload"] == g.workload)
                & (frame["batch_size"] == g.batch_size)
                & (frame["seq_len"] == g.seq_len)
            )
    frame["headline"] = headline
    by_id = {r.case.id: r for r in results}
    rows = case_rows(frame)
    return RunAnalysis(frame, rows, groups, problem_groups(frame), by_id, execution_gains(groups))


def execution_gains(groups: Sequence[GroupSummary]) -> list[ExecutionGain]:
    """Each compiled or graphed mode of each group at its headline point, against the same
    precision run eagerly (its gain None where either side did not run ok there)."""
    out = []
    for group in groups:
        for mode in group.modes:
            if mode.execution == "eager":
                continue
            out.append(
                ExecutionGain(
                    model=group.model,
                    workload=group.workload,
                    batch_size=group.batch_size,
                    seq_len=group.seq_len,
                    mode=mode.label,
                    eager_mode=mode.eager_label,
                    execution=mode.execution,
                    status=mode.status,
                    median_s=mode.median_s,
                    eager_median_s=mode.eager_median_s,
                    gain=mode.execution_gain,
                    compile_s=mode.compile_s,
                )
            )
    return out

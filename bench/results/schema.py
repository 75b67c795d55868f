"""The results contract: `Case`, `CaseResult` and its typed parts, one JSON object per line of
results.jsonl (README, "Results format").

`CaseResult.from_dict` is the only way a results line, a baseline entry or a pytest-benchmark
entry becomes a result: it checks the schema version, the status and the fields that status
requires, and upgrades lines that an older mpbench wrote. Everything downstream (analysis, views,
compare, check, resume) works on these typed objects, never on raw dicts.

Schema history (bump SCHEMA_VERSION on any change a reader must know about):
  1  first release.
  2  `timing.method`: how the steps were timed ("cuda-events", "perf-counter", or
     "pytest-benchmark" for plain pytest-benchmark files); check refuses to judge timings taken
     by different methods. Version-1 lines are upgraded on read: the method is inferred from the
     memory method ("cuda-*" means CUDA events, anything else perf_counter; results read from a
     pytest-benchmark file, "pytest-benchmark").
  3  `case.compiled` (the case ran under torch.compile; its id ends in "/compiled") and
     `timing.compile_s` (the compiling first call, kept out of the step times). Version-2 lines
     read as eager cases.
  4  `timing.warmup` is the number of warm-up steps a case ran (the warm-up now goes on until
     the step time is steady), `timing.warmup_steady`, `timing.cv` and `timing.unstable`; the
     `telemetry` object (GPU power, energy, clocks, throttling: bench.engine.telemetry) and the
     `flops` object (FLOPs per step and the peak that MFU is taken against). Older lines have
     none of these (null).
  5  data-parallel cases: `case.parallel` ("ddp" or "fsdp"), `case.world_size` and
     `case.reduce_dtype` (the dtype gradients are reduced in); the id gains `/ddpN` (and
     `/reduce-bf16` where gradients are not reduced in fp32). Their timing is the slowest rank's
     per step and their throughput is global (all ranks); `details.parallel` keeps every rank's
     step times and peak memory (bench.engine.parallel). Older lines are single-device cases.
  6  `case.execution` ("eager", "compiled" or "graphs": a whole step captured once as a CUDA
     graph and replayed) replaces `case.compiled`; ids end in "/compiled" or "/graphs" (eager:
     no suffix, as before). Older lines read `compiled: true` as "compiled", else "eager".
     Robust timing, the host-bound check and precision-aware MFU (issue 18):
     `timing.robust_cv` (IQR / (1.349 x median), the spread `timing.unstable` is now judged on;
     older lines derive it from `iqr_s` and `median_s` on read and keep the `unstable` they
     recorded, judged on stdev / mean), `timing.gpu_busy_fraction` (GPU cases: the union of
     kernel time over a profiled window's wall time; null on a CPU and in older lines),
     `telemetry.energy_window_s` and `telemetry.energy_steps` (the window the energy covers,
     timed steps plus untimed ones that stretch it to at least 5 s; null in older lines, whose
     energy covered the timed steps alone), `flops.by_dtype` (FLOPs per step split by the dtype
     each matmul ran in) and `flops.peaks_tflops` (the peak of each of those dtypes); with a
     split, `flops.peak_tflops` is the FLOP-weighted peak (bench.results.peaks). Older lines
     have no split (null): their peak is the mode's compute dtype's, as recorded.
"""

from __future__ import annotations

import contextlib
import math
import statistics
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from bench.errors import ResultsError

SCHEMA_VERSION = 6

# Case statuses. "ok" is measured; every other status carries a `reason`.
STATUSES = ("ok", "skipped", "oom", "error", "crashed", "timeout")
# The statuses that mean something broke (oom and skipped are outcomes, not faults).
FAILURES = ("error", "crashed", "timeout")
# Precision modes in the order views show them where a run did not record its modes' order
# (bench.engine.modes defines each mode, with its order; a run records it in env.json).
PRECISIONS = ("fp32", "tf32", "amp_fp16", "amp_bf16", "bf16", "fp16", "fp8", "fp8_rowwise", "mxfp8")
BASELINE_PRECISION = "fp32"  # what every speedup, saving and divergence is measured against
WORKLOADS = ("train", "infer", "generate")
# Numerics verdicts, best first.
VERDICTS = ("ok", "warn", "diverged", "nan")
# The headline divergence of a case: the first of these its numerics carry (training loss first,
# then inference outputs).
DIVERGENCE_KEYS = ("max_rel_div", "rel_rmse", "kl_mean")
# Data-parallel strategies (bench.engine.parallel) and the dtypes gradients may be reduced in.
PARALLEL_STRATEGIES = ("ddp", "fsdp")
# How a case's steps execute (bench.engine.execution), in the order views show them: eagerly,
# under torch.compile, or captured once as a CUDA graph and replayed.
EXECUTIONS = ("eager", "compiled", "graphs")
# What a mode label adds for each execution ("bf16 +compile", "bf16 +graphs").
EXECUTION_SUFFIXES = {"eager": "", "compiled": "+compile", "graphs": "+graphs"}


def execution_rank(execution: str) -> int:
    """Sort key of an execution: EXECUTIONS order, unknown ones last."""
    return EXECUTIONS.index(execution) if execution in EXECUTIONS else len(EXECUTIONS)


REDUCE_DTYPES = ("fp32", "bf16", "fp16")
# How per-step times were taken. Timings taken differently are not compared.
TIMING_METHODS = ("cuda-events", "perf-counter", "pytest-benchmark")


# The display order of the run being shown, where it recorded its modes' (bench.results.manifest
# sets it with `display_styles`): precision name -> order.
_DISPLAY_ORDER: ContextVar[dict[str, int] | None] = ContextVar("display_order", default=None)


def precision_rank(precision: str) -> tuple[int, int, str]:
    """Sort key: the order the shown run recorded for its modes, else the documented precision
    order; unknown names after both, alphabetically."""
    recorded = _DISPLAY_ORDER.get() or {}
    if precision in recorded:
        return (0, recorded[precision], precision)
    if precision in PRECISIONS:
        return (1, PRECISIONS.index(precision), precision)
    return (2, 0, precision)


@contextlib.contextmanager
def display_order(order: dict[str, int]) -> Iterator[None]:
    """Inside, precisions sort by `order` (a run's recorded display order) where it names them."""
    token = _DISPLAY_ORDER.set(order)
    try:
        yield
    finally:
        _DISPLAY_ORDER.reset(token)


def workload_rank(workload: str) -> tuple[int, str]:
    """Sort key: train, infer, generate, then anything else alphabetically."""
    if workload in WORKLOADS:
        return (WORKLOADS.index(workload), workload)
    return (len(WORKLOADS), workload)


def verdict_rank(verdict: str | None) -> int | None:
    """0 for ok up to 3 for nan; None for no (or an unknown) verdict."""
    return VERDICTS.index(verdict) if verdict in VERDICTS else None


# ---------------------------------------------------------------------------------------------
# Validation helpers: every problem names where it is (file:line) and the field.
# ---------------------------------------------------------------------------------------------


def _fail(where: str, key: str, message: str) -> ResultsError:
    return ResultsError(f"{where}: {key}: {message}")


def is_number(value: Any) -> bool:
    """A JSON number (int or float, NaN and infinities included), not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite_or_none(value: Any) -> float | None:
    """A finite number as a float; None for NaN, infinities, None and non-numbers."""
    return float(value) if is_number(value) and math.isfinite(value) else None


def _number(data: dict[str, Any], key: str, where: str, required: bool = False) -> float | None:
    value = data.get(key)
    if value is None:
        if required:
            raise _fail(where, key, "missing")
        return None
    if not is_number(value):
        raise _fail(where, key, f"must be a number; got {value!r}")
    return float(value)


def _integer(data: dict[str, Any], key: str, where: str, required: bool = False) -> int | None:
    value = data.get(key)
    if value is None:
        if required:
            raise _fail(where, key, "missing")
        return None
    if not is_number(value) or not math.isfinite(value) or value != int(value):
        raise _fail(where, key, f"must be an integer; got {value!r}")
    return int(value)


def _text(data: dict[str, Any], key: str, where: str, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise _fail(where, key, "missing")
        return None
    if not isinstance(value, str):
        raise _fail(where, key, f"must be a string; got {value!r}")
    return value


def _flag(data: dict[str, Any], key: str, where: str) -> bool | None:
    value = data.get(key)
    if value is not None and not isinstance(value, bool):
        raise _fail(where, key, f"must be true or false; got {value!r}")
    return value


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any] | None:
    value = data.get(key)
    if value is not None and not isinstance(value, dict):
        raise _fail(where, key, f"must be an object; got {type(value).__name__}")
    return value


# ---------------------------------------------------------------------------------------------
# Case
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One point of a sweep: a model, a workload and a precision at one batch size and sequence
    length, on one device.

    `label` is set only for a benchmark that is not a sweep point (a plain pytest-benchmark test):
    it is then the case's id, and the sweep fields it cannot know are None. `execution` is how
    its steps ran: "eager", "compiled" (torch.compile) or "graphs" (one CUDA graph replayed).
    A data-parallel training case names its `parallel` strategy, its
    `world_size` (ranks) and its gradient `reduce_dtype`; `batch_size` is then per rank.
    """

    model: str
    family: str | None  # the architecture, config.model_type (gpt2, llama, bert, ...)
    workload: str
    precision: str
    batch_size: int | None
    seq_len: int | None
    device: str | None
    label: str | None = None
    execution: str = "eager"  # one of EXECUTIONS
    parallel: str | None = None  # "ddp" or "fsdp": data-parallel training over world_size ranks
    world_size: int | None = None
    reduce_dtype: str | None = None  # gradients reduced in: "fp32", "bf16" or "fp16"

    @property
    def layout(self) -> str:
        """'' on one device, else the strategy and world size, e.g. 'ddp4'."""
        return f"{self.parallel}{self.world_size}" if self.parallel else ""

    @property
    def reduce_suffix(self) -> str:
        """'' when gradients are reduced in fp32 (or not at all), else e.g. 'reduce-bf16'."""
        reduced = self.reduce_dtype not in (None, "fp32")
        return f"reduce-{self.reduce_dtype}" if reduced else ""

    @property
    def id(self) -> str:
        """Stable, human-readable id, e.g. `gpt2-124m/train/amp_bf16/bs8/seq512` (no device);
        a data-parallel case adds `/ddp4` (and `/reduce-bf16` for a non-fp32 reduction), and a
        case that did not run eagerly ends in its execution (`/compiled`, `/graphs`)."""
        if self.label is not None:
            return self.label
        parts = [self.model, self.workload, self.precision, f"bs{self.batch_size}"]
        parts += [f"seq{self.seq_len}", self.layout, self.reduce_suffix]
        parts.append("" if self.execution == "eager" else self.execution)
        return "/".join(p for p in parts if p)

    @property
    def mode(self) -> str:
        """What views list as a row: the precision, then the layout and the reduction of a
        data-parallel case (`amp_bf16 ddp2 reduce-bf16`), then the execution's suffix (' +compile'
        under torch.compile, ' +graphs' under CUDA graphs; nothing eagerly)."""
        words = [
            self.precision,
            self.layout,
            self.reduce_suffix,
            EXECUTION_SUFFIXES.get(self.execution, f"+{self.execution}"),
        ]
        return " ".join(w for w in words if w)

    @property
    def numerics_key(self) -> str:
        """The cases that share one numerics pass: the mode without its execution's suffix."""
        return " ".join(w for w in (self.precision, self.layout, self.reduce_suffix) if w)

    def to_dict(self) -> dict[str, Any]:
        """The `case` object of a results line (`label` and the parallel fields only where
        set)."""
        data = {"id": self.id, **asdict(self)}
        if self.label is None:
            del data["label"]
        if self.parallel is None:
            for key in ("parallel", "world_size", "reduce_dtype"):
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = "case") -> Case:
        """Validate and read a `case` object; a sweep case's id must match its fields."""
        if not isinstance(data, dict):
            raise ResultsError(f"{where}: case: must be an object")
        label = _text(data, "label", where)
        sweep_point = label is None
        execution = _execution(data, where)
        parallel = _text(data, "parallel", where)
        if parallel is not None and parallel not in PARALLEL_STRATEGIES:
            raise _fail(
                where, "parallel", f"must be one of {PARALLEL_STRATEGIES}; got {parallel!r}"
            )
        world_size = _integer(data, "world_size", where, required=parallel is not None)
        if world_size is not None and world_size < 1:
            raise _fail(where, "world_size", f"must be at least 1; got {world_size}")
        reduce_dtype = _text(data, "reduce_dtype", where, required=parallel is not None)
        if reduce_dtype is not None and reduce_dtype not in REDUCE_DTYPES:
            raise _fail(
                where, "reduce_dtype", f"must be one of {REDUCE_DTYPES}; got {reduce_dtype!r}"
            )
        case = cls(
            model=_text(data, "model", where, required=True),
            family=_text(data, "family", where),
            workload=_text(data, "workload", where, required=True),
            precision=_text(data, "precision", where, required=True),
            batch_size=_integer(data, "batch_size", where, required=sweep_point),
            seq_len=_integer(data, "seq_len", where, required=sweep_point),
            device=_text(data, "device", where),
            label=label,
            execution=execution,
            parallel=parallel,
            world_size=world_size if parallel is not None else None,
            reduce_dtype=reduce_dtype if parallel is not None else None,
        )
        given = data.get("id")
        if given is not None and given != case.id:
            raise _fail(where, "case.id", f"{given!r} does not match its fields ({case.id!r})")
        return case


def _execution(data: dict[str, Any], where: str) -> str:
    """A case's execution; a case written before schema 6 has `compiled` (true: "compiled")."""
    if "execution" not in data:
        compiled = data.get("compiled", False)
        if not isinstance(compiled, bool):
            raise _fail(where, "compiled", f"must be true or false; got {compiled!r}")
        return "compiled" if compiled else "eager"
    execution = data["execution"]
    if execution not in EXECUTIONS:
        raise _fail(where, "execution", f"must be one of {EXECUTIONS}; got {execution!r}")
    return execution


# ---------------------------------------------------------------------------------------------
# Timing, throughput, memory
# ---------------------------------------------------------------------------------------------


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default method) of already-sorted values."""
    if not sorted_values:
        raise ValueError("quantile of an empty sequence")
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


# The interquartile range of a normal distribution is 1.349 standard deviations: IQR / 1.349 is
# a standard deviation that one outlier cannot move (Arachchige, Prendergast & Staudte, "Robust
# analogs to the coefficient of variation", Journal of Applied Statistics 49(2), 2022: RCV_Q =
# 0.7413 x IQR / median). Divided by the median it reads like stdev / mean on normal data, so
# the unstable limit keeps its meaning (pyperf's 10%).
IQR_PER_STDEV = 1.349


def robust_cv(iqr_s: float | None, median_s: float | None) -> float | None:
    """IQR / (1.349 x median): the steps' spread that a single outlier step cannot move (a
    quarter of the steps or more off the rest, a bimodal series, does); None where unknown."""
    if iqr_s is None or median_s is None or not median_s > 0:
        return None
    return iqr_s / (IQR_PER_STDEV * median_s)


def valid_fraction(data: dict[str, Any], key: str, where: str, name: str) -> float | None:
    """A number in [0, 1] (or null) under `key`; `name` is how errors call it."""
    value = _number(data, key, where)
    if value is not None and not 0.0 <= value <= 1.0:
        raise _fail(where, name, f"must be between 0 and 1; got {value!r}")
    return value


@dataclass(frozen=True)
class Timing:
    """The timed loop of a case: every per-step time, its summary statistics, and how it was timed.

    All statistics derive from `step_s` (`from_samples`); a plain pytest-benchmark file may hold
    the statistics without the samples, so `step_s` can be empty when read back.
    """

    warmup: int | None
    iterations: int | None
    step_s: tuple[float, ...]
    median_s: float
    mean_s: float | None = None
    stdev_s: float | None = None
    iqr_s: float | None = None
    p10_s: float | None = None
    p90_s: float | None = None
    min_s: float | None = None
    max_s: float | None = None
    method: str = "perf-counter"
    compile_s: float | None = None  # torch.compile's first call (compiling), not a step
    warmup_steady: bool | None = None  # the warm-up ended steady (False: it hit its cap)
    cv: float | None = None  # stdev / mean of the timed steps
    unstable: bool | None = None  # robust_cv above the suite's unstable_cv: the figure is shaky
    robust_cv: float | None = None  # IQR / (1.349 x median): the spread `unstable` judges
    # GPU cases: the share of a profiled window's wall time in which a kernel ran (None on CPU)
    gpu_busy_fraction: float | None = None

    @classmethod
    def from_samples(
        cls,
        step_s: Sequence[float],
        warmup: int | None,
        method: str,
        iterations: int | None = None,
        compile_s: float | None = None,
        warmup_steady: bool | None = None,
        unstable_cv: float | None = None,
        gpu_busy_fraction: float | None = None,
    ) -> Timing:
        """Median, mean, stdev, IQR, p10/p90, min and max of the per-step seconds; the
        coefficient of variation, the robust one, and whether the robust one exceeds
        `unstable_cv` (when given): one outlier step must not flag a case, a bimodal series
        must."""
        values = sorted(float(s) for s in step_s)
        if not values:
            raise ValueError("a timing needs at least one step")
        mean = statistics.fmean(values)
        stdev = statistics.stdev(values) if len(values) > 1 else 0.0
        cv = stdev / mean if mean > 0 else None
        median = statistics.median(values)
        iqr = quantile(values, 0.75) - quantile(values, 0.25)
        spread = robust_cv(iqr, median)
        return cls(
            warmup=warmup,
            iterations=len(values) if iterations is None else iterations,
            step_s=tuple(float(s) for s in step_s),
            median_s=median,
            mean_s=mean,
            stdev_s=stdev,
            iqr_s=iqr,
            p10_s=quantile(values, 0.10),
            p90_s=quantile(values, 0.90),
            min_s=values[0],
            max_s=values[-1],
            method=method,
            compile_s=compile_s,
            warmup_steady=warmup_steady,
            cv=cv,
            unstable=None if unstable_cv is None or spread is None else spread > unstable_cv,
            robust_cv=spread,
            gpu_busy_fraction=gpu_busy_fraction,
        )

    def to_dict(self) -> dict[str, Any]:
        """The `timing` object of a results line."""
        data = asdict(self)
        data["step_s"] = list(self.step_s)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Timing:
        """Validate a `timing` object (median_s and method required; samples finite numbers)."""
        samples = data.get("step_s") or []
        if not isinstance(samples, list) or not all(is_number(s) for s in samples):
            raise _fail(where, "timing.step_s", "must be a list of numbers")
        method = _text(data, "method", where, required=True)
        if method not in TIMING_METHODS:
            raise _fail(where, "timing.method", f"must be one of {TIMING_METHODS}; got {method!r}")
        median = _number(data, "median_s", where, required=True)
        if not median > 0:
            raise _fail(where, "timing.median_s", f"must be positive; got {median!r}")
        stats = {
            f.name: _number(data, f.name, where)
            for f in fields(cls)
            if f.name.endswith("_s") and f.name not in ("median_s", "step_s")
        }  # compile_s included
        spread = _number(data, "robust_cv", where)
        return cls(
            warmup=_integer(data, "warmup", where),
            iterations=_integer(data, "iterations", where),
            step_s=tuple(float(s) for s in samples),
            median_s=median,
            method=method,
            warmup_steady=_flag(data, "warmup_steady", where),
            cv=_number(data, "cv", where),
            unstable=_flag(data, "unstable", where),
            # Schema <= 5 has none: the same figure from the statistics it kept.
            robust_cv=spread if spread is not None else robust_cv(stats["iqr_s"], median),
            gpu_busy_fraction=valid_fraction(
                data, "gpu_busy_fraction", where, "timing.gpu_busy_fraction"
            ),
            **stats,
        )


@dataclass(frozen=True)
class Throughput:
    """Samples and tokens per second from the median step (METHODS rule 5)."""

    samples_per_s: float
    tokens_per_s: float | None = None

    @classmethod
    def from_median(
        cls, batch_size: int, tokens_per_sample: int | None, median_s: float
    ) -> Throughput:
        """batch / median (samples/s) and batch * tokens per sample / median (tokens/s): the one
        place throughput is derived."""
        tokens = batch_size * tokens_per_sample / median_s if tokens_per_sample else None
        return cls(samples_per_s=batch_size / median_s, tokens_per_s=tokens)

    def to_dict(self) -> dict[str, Any]:
        """The `throughput` object of a results line."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Throughput:
        """Validate a `throughput` object."""
        return cls(
            samples_per_s=_number(data, "samples_per_s", where, required=True),
            tokens_per_s=_number(data, "tokens_per_s", where),
        )


@dataclass(frozen=True)
class Memory:
    """A case's peak memory over what the process held before it, and how it was measured."""

    peak_bytes: int | None
    reserved_bytes: int | None = None
    method: str = "unavailable"  # cuda-max-allocated | vmhwm | rss-sampled | unavailable

    @property
    def exact(self) -> bool:
        """True for the CUDA allocator's counters: exact and repeatable. Resident-set peaks on a
        CPU also count pages that earlier cases left to the allocator."""
        return self.method.startswith("cuda")

    def to_dict(self) -> dict[str, Any]:
        """The `memory` object of a results line."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Memory:
        """Validate a `memory` object."""
        return cls(
            peak_bytes=_integer(data, "peak_bytes", where),
            reserved_bytes=_integer(data, "reserved_bytes", where),
            method=_text(data, "method", where) or "unavailable",
        )


# Where a telemetry reading's energy came from (bench.engine.telemetry).
ENERGY_COUNTER = "nvml-energy-counter"  # NVML's total-energy counter, before and after
POWER_INTEGRATED = "nvml-power-integrated"  # power samples, trapezoid rule
UNAVAILABLE = "unavailable"
TELEMETRY_METHODS = (ENERGY_COUNTER, POWER_INTEGRATED, UNAVAILABLE)
# NVML clock-event reasons that mean the GPU ran slower than it would have (power or thermal
# limits, hardware slowdowns); idle, application clocks, sync boost and display are not.
THROTTLING = frozenset(
    {
        "sw_power_cap",
        "hw_slowdown",
        "sw_thermal_slowdown",
        "hw_thermal_slowdown",
        "hw_power_brake_slowdown",
    }
)


@dataclass
class TelemetryReading:
    """What NVML saw during a case's timed steps; every figure None where NVML could not give
    it. Filled in by bench.engine.telemetry when its window closes (hence not frozen).

    `method` says where `energy_j` came from: the energy counter, power samples integrated over
    time, or nowhere ("unavailable", with `reason`; the other figures may still be there).
    `energy_per_step_j` and `energy_per_sample_j` are set by the runner, which knows the steps.
    The energy covers `energy_window_s` (the whole window, where an energy figure exists): the
    timed steps and the untimed ones that stretched it to a few seconds, `energy_steps` in all
    (NVML's counter moves at the driver's pace: short windows misread it, METHODS rule 31).
    """

    method: str
    reason: str | None = None
    duration_s: float | None = None
    energy_j: float | None = None
    samples: int = 0
    power_mean_w: float | None = None
    power_max_w: float | None = None
    sm_clock_min_mhz: float | None = None
    sm_clock_median_mhz: float | None = None
    mem_clock_median_mhz: float | None = None
    temperature_max_c: float | None = None
    gpu_util_mean_pct: float | None = None
    mem_util_mean_pct: float | None = None
    throttle_reasons: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    energy_per_step_j: float | None = None
    energy_per_sample_j: float | None = None
    energy_window_s: float | None = None  # seconds the energy figure covers
    energy_steps: int | None = None  # steps in that window: timed + untimed (energy only)

    @property
    def throttled(self) -> bool:
        """True when a sample saw a slowdown reason (power cap, thermal, hw slowdown, power brake)."""
        return any(name in THROTTLING for name in self.throttle_reasons)

    def to_dict(self) -> dict[str, Any]:
        """The `telemetry` object of a results line (with "throttled", for readers of the JSON)."""
        out = asdict(self)
        out["throttled"] = self.throttled
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> TelemetryReading:
        """Validate a `telemetry` object."""
        method = _text(data, "method", where, required=True)
        if method not in TELEMETRY_METHODS:
            raise _fail(where, "telemetry.method", f"must be one of {TELEMETRY_METHODS}")
        lists = {}
        for key in ("throttle_reasons", "unsupported"):
            value = data.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise _fail(where, f"telemetry.{key}", "must be a list of strings")
            lists[key] = list(value)
        numbers = {
            f.name: _number(data, f.name, where)
            for f in fields(cls)
            if f.name not in ("method", "reason", "samples", "energy_steps", *lists)
        }
        return cls(
            method=method,
            reason=_text(data, "reason", where),
            samples=_integer(data, "samples", where) or 0,
            energy_steps=_integer(data, "energy_steps", where),
            **lists,
            **numbers,
        )


@dataclass(frozen=True)
class Flops:
    """FLOPs of one step, counted once outside the timed loop, split by the dtype each matmul
    ran in, and the peak they are measured against (bench.results.peaks): with a split, the
    FLOP-weighted peak (total FLOPs / sum of FLOPs_i / peak_i), else the dense peak of the
    mode's compute dtype. Achieved TFLOP/s and MFU follow from the median step, in
    bench.analysis."""

    per_step: int
    counter: str  # how they were counted, e.g. "torch FlopCounterMode"
    dtype: str | None = None  # the mode's compute dtype (fp32, tf32, bf16, fp16, fp8)
    peak_tflops: float | None = None  # what MFU divides by (FLOP-weighted with a split)
    peak_source: str | None = None  # where the peak comes from (datasheet, --peak-tflops)
    peak_reason: str | None = None  # why there is no peak (CPU, unknown GPU, ...)
    by_dtype: dict[str, int] | None = None  # FLOPs per step by the dtype each matmul ran in
    peaks_tflops: dict[str, float] | None = None  # the dense peak of each dtype in by_dtype

    def to_dict(self) -> dict[str, Any]:
        """The `flops` object of a results line."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Flops:
        """Validate a `flops` object."""
        per_step = _integer(data, "per_step", where, required=True)
        if per_step < 0:
            raise _fail(where, "flops.per_step", f"must be >= 0; got {per_step}")
        return cls(
            per_step=per_step,
            counter=_text(data, "counter", where) or "unknown",
            dtype=_text(data, "dtype", where),
            peak_tflops=_number(data, "peak_tflops", where),
            peak_source=_text(data, "peak_source", where),
            peak_reason=_text(data, "peak_reason", where),
            by_dtype=_dtype_table(data, "by_dtype", where, whole=True),
            peaks_tflops=_dtype_table(data, "peaks_tflops", where, whole=False),
        )


def _dtype_table(data: dict[str, Any], key: str, where: str, whole: bool) -> Any:
    """A `flops` table by dtype: dtype -> FLOPs (whole numbers >= 0) or TFLOP/s (> 0); or null."""
    table = _table(data, key, where)
    if table is None:
        return None
    out: dict[str, Any] = {}
    for dtype, value in table.items():
        ok = is_number(value) and math.isfinite(value)
        ok = ok and (value >= 0 and value == int(value) if whole else value > 0)
        if not ok:
            need = "a whole number >= 0" if whole else "a positive number"
            raise _fail(where, f"flops.{key}.{dtype}", f"must be {need}; got {value!r}")
        out[str(dtype)] = int(value) if whole else float(value)
    return out


# ---------------------------------------------------------------------------------------------
# CaseResult
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseResult:
    """What one case produced. Field names and units are the JSON schema (README)."""

    case: Case
    status: str
    reason: str | None = None
    timing: Timing | None = None
    throughput: Throughput | None = None
    memory: Memory | None = None
    losses: tuple[float, ...] | None = None  # training: loss of every timed step, in order
    numerics: dict[str, Any] | None = None  # divergence vs fp32 (bench.engine.numerics)
    details: dict[str, Any] = field(default_factory=dict)  # mode settings, scaler, parameters
    started_at: str | None = None  # ISO 8601, UTC
    wall_s: float | None = None  # whole case, set-up included
    telemetry: TelemetryReading | None = None  # GPU power, energy, clocks during the timed steps
    flops: Flops | None = None  # FLOPs per step and the peak MFU is taken against

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; expected one of {STATUSES}")
        if self.status != "ok" and not self.reason:
            raise ValueError(f"a {self.status!r} result needs a reason")
        if self.status == "ok" and self.timing is None:
            raise ValueError("an 'ok' result needs its timing")

    # -- typed accessors: every view reads these, never the raw JSON -------------------------

    @property
    def ok(self) -> bool:
        """Measured successfully."""
        return self.status == "ok"

    @property
    def median_s(self) -> float | None:
        """Median step time in seconds (ok results)."""
        return self.timing.median_s if self.timing is not None else None

    @property
    def step_s(self) -> tuple[float, ...]:
        """Every timed step in seconds (empty where only statistics were kept)."""
        return self.timing.step_s if self.timing is not None else ()

    @property
    def samples_per_s(self) -> float | None:
        """Throughput in samples per second."""
        return self.throughput.samples_per_s if self.throughput is not None else None

    @property
    def rate(self) -> float | None:
        """The workload's headline throughput: tokens/s for generate, samples/s otherwise."""
        if self.throughput is None:
            return None
        if self.case.workload == "generate" and self.throughput.tokens_per_s is not None:
            return self.throughput.tokens_per_s
        return self.throughput.samples_per_s

    @property
    def rate_unit(self) -> str:
        """The unit of `rate`."""
        return "tokens/s" if self.case.workload == "generate" else "samples/s"

    @property
    def peak_bytes(self) -> int | None:
        """Peak memory of the case in bytes, where measured."""
        return self.memory.peak_bytes if self.memory is not None else None

    @property
    def verdict(self) -> str | None:
        """The numerics verdict (ok, warn, diverged, nan), or None without one."""
        verdict = (self.numerics or {}).get("verdict")
        return verdict if verdict in VERDICTS else None

    @property
    def numerics_error(self) -> str | None:
        """Why the numerics pass failed, when it did."""
        error = (self.numerics or {}).get("error")
        return str(error) if error else None

    def divergence(self) -> tuple[str, float] | None:
        """The headline divergence from fp32 (key, value): the first of DIVERGENCE_KEYS present."""
        numerics = self.numerics or {}
        for key in DIVERGENCE_KEYS:
            value = numerics.get(key)
            if is_number(value):
                return key, float(value)
        return None

    # -- (de)serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """One line of results.jsonl."""
        return {
            "schema": SCHEMA_VERSION,
            "case": self.case.to_dict(),
            "status": self.status,
            "reason": self.reason,
            "timing": self.timing.to_dict() if self.timing else None,
            "throughput": self.throughput.to_dict() if self.throughput else None,
            "memory": self.memory.to_dict() if self.memory else None,
            "losses": list(self.losses) if self.losses is not None else None,
            "numerics": self.numerics,
            "details": self.details,
            "started_at": self.started_at,
            "wall_s": self.wall_s,
            "telemetry": self.telemetry.to_dict() if self.telemetry else None,
            "flops": self.flops.to_dict() if self.flops else None,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "result") -> CaseResult:
        """Validate and read one result object (upgrading older schema versions).

        Raises ResultsError naming `where` (e.g. `results.jsonl:12`) and the offending field.
        """
        if not isinstance(data, dict):
            raise ResultsError(f"{where}: not a JSON object")
        data = upgrade(data, where)
        status = _text(data, "status", where, required=True)
        if status not in STATUSES:
            raise _fail(where, "status", f"must be one of {', '.join(STATUSES)}; got {status!r}")
        reason = _text(data, "reason", where)
        if status != "ok" and not reason:
            raise _fail(where, "reason", f"a {status!r} result must say why")
        case = Case.from_dict(data.get("case"), where)
        parts = {key: _table(data, key, where) for key in ("timing", "throughput", "memory")}
        extra = {key: _table(data, key, where) for key in ("telemetry", "flops")}
        if status == "ok":
            if parts["timing"] is None:
                raise _fail(where, "timing", "an 'ok' result must have its timing")
            if case.label is None:  # a sweep case: the engine always measures these
                for key in ("throughput", "memory"):
                    if parts[key] is None:
                        raise _fail(where, key, "an 'ok' result must have it")
        losses = data.get("losses")
        if losses is not None and (
            not isinstance(losses, list) or not all(is_number(v) for v in losses)
        ):
            raise _fail(where, "losses", "must be a list of numbers or null")
        details = _table(data, "details", where) or {}
        numerics = _table(data, "numerics", where)
        if numerics is not None and numerics.get("verdict") not in (None, *VERDICTS):
            raise _fail(
                where,
                "numerics.verdict",
                f"must be one of {', '.join(VERDICTS)} or null; got {numerics['verdict']!r}",
            )
        return cls(
            case=case,
            status=status,
            reason=reason,
            timing=Timing.from_dict(parts["timing"], where) if parts["timing"] else None,
            throughput=(
                Throughput.from_dict(parts["throughput"], where) if parts["throughput"] else None
            ),
            memory=Memory.from_dict(parts["memory"], where) if parts["memory"] else None,
            losses=tuple(float(v) for v in losses) if losses is not None else None,
            numerics=numerics,
            details=details,
            started_at=_text(data, "started_at", where),
            wall_s=_number(data, "wall_s", where),
            telemetry=TelemetryReading.from_dict(extra["telemetry"], where)
            if extra["telemetry"]
            else None,
            flops=Flops.from_dict(extra["flops"], where) if extra["flops"] else None,
        )

    def replace(self, **changes: Any) -> CaseResult:
        """A copy with some fields changed (results are immutable)."""
        return replace(self, **changes)


def upgrade(data: dict[str, Any], where: str) -> dict[str, Any]:
    """A result object of any supported schema version, as the current version (a new dict)."""
    version = data.get("schema")
    if version == SCHEMA_VERSION:
        return data
    if version == 1:
        return {**_upgrade_v1(data), "schema": SCHEMA_VERSION}
    if version in (2, 3, 4, 5):
        # v2: eager cases (`compiled` defaults to false); v2/v3: no steadiness, telemetry or
        # FLOPs (they read as null); v2-v4: single-device cases (no `parallel`); v2-v5:
        # `compiled` instead of `execution` (Case.from_dict reads it), and no robust spread
        # (derived on read), GPU-busy fraction, energy window or FLOPs split.
        return {**data, "schema": SCHEMA_VERSION}
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise ResultsError(
            f"{where}: schema {version} was written by a newer mpbench; this version reads "
            f"schema 1 to {SCHEMA_VERSION}. Upgrade mpbench to read it"
        )
    raise ResultsError(
        f"{where}: schema: {version!r} is not an mpbench results schema "
        f"(this version reads 1 to {SCHEMA_VERSION})"
    )


def _upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 -> 2: `timing.method` inferred from how memory was measured."""
    out = {**data, "schema": 2}
    timing = data.get("timing")
    if isinstance(timing, dict) and "method" not in timing:
        memory_method = str((data.get("memory") or {}).get("method") or "")
        if "pytest_benchmark" in (data.get("details") or {}):
            method = "pytest-benchmark"  # read from a pytest-benchmark file by mpbench 1
        else:
            method = "cuda-events" if memory_method.startswith("cuda") else "perf-counter"
        out["timing"] = {**timing, "method": method}
    return out

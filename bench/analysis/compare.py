"""Compare two runs case by case: match by case id, ratio every metric, test significance.

Statistics only: nothing here prints (bench.views renders a comparison) and nothing here passes
or fails (bench.analysis.assessment applies the thresholds).

Timing changes are tested on the per-step samples (bench.analysis.stats). Peak memory and
divergence are single numbers per case, so there is nothing to test: a change counts when it is
above a noise floor (an absolute amount below which the measurement itself wobbles); peaks of the
resident set (CPU runs) must also at least double or halve, since they depend on what earlier
cases left. Timings taken by different methods (CUDA events vs a pytest-benchmark timer) are not
compared at all: the comparison flags them and check refuses them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.analysis.stats import bootstrap_median_ratio_ci, mann_whitney_p, smallest_p_value
from bench.results.identity import DeviceIdentity
from bench.results.rundir import Run
from bench.results.schema import (
    DIVERGENCE_KEYS,
    Case,
    CaseResult,
    finite_or_none,
    verdict_rank,
)

DEFAULT_ALPHA = 0.002  # asv's p-value threshold: a CI gate must rarely cry wolf
BOOTSTRAP_RESAMPLES = 2000
DEFAULT_MEMORY_FLOOR_BYTES = 1 * 2**20
DEFAULT_DIVERGENCE_FLOOR = 1e-6
DEFAULT_RSS_MEMORY_FACTOR = 2.0
# NVML's energy counter is exact, but power draw follows temperature and clocks: a change of
# energy per sample below 2% is not told apart from that.
DEFAULT_ENERGY_FLOOR_FRACTION = 0.02


@dataclass(frozen=True)
class MetricSpec:
    """A compared metric: what it is and which direction is better."""

    name: str
    label: str
    unit: str
    higher_is_better: bool
    sampled: bool  # has per-step samples to test significance with


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("throughput", "throughput", "samples/s", True, True),
        MetricSpec("step_time", "median step time", "s", False, True),
        MetricSpec("peak_memory", "peak memory", "bytes", False, False),
        MetricSpec("divergence", "divergence from fp32", "", False, False),
        MetricSpec("energy", "energy per sample", "J", False, False),
    )
}


@dataclass(frozen=True)
class CompareOptions:
    """Knobs of the statistics (the CI gate's thresholds are in bench.analysis.thresholds)."""

    alpha: float = DEFAULT_ALPHA
    memory_floor_bytes: float = DEFAULT_MEMORY_FLOOR_BYTES
    # Resident-set peaks (CPU runs) vary +-60% between identical runs: only a doubling counts.
    rss_memory_factor: float = DEFAULT_RSS_MEMORY_FACTOR
    divergence_floor: float = DEFAULT_DIVERGENCE_FLOOR
    bootstrap_resamples: int = BOOTSTRAP_RESAMPLES


@dataclass(frozen=True)
class MetricDelta:
    """One metric of one case in both runs."""

    metric: str
    base: float
    current: float
    ratio: float | None  # current / base; None when base is 0 and current is not
    change_pct: float  # signed change of the value, in percent (inf from a zero base)
    worse_pct: float  # the change in the bad direction, in percent (negative: better)
    significant: bool | None  # None: nothing could be tested (too few samples)
    test: str  # how `significant` was decided, for the reader
    p_value: float | None = None
    ci_low: float | None = None  # bootstrap 95% interval of the ratio, timing metrics only
    ci_high: float | None = None
    base_n: int = 0  # samples per side
    current_n: int = 0

    @property
    def spec(self) -> MetricSpec:
        """The metric's description."""
        return METRICS[self.metric]

    @property
    def direction(self) -> str:
        """'worse', 'better' or 'same' (by value, significance aside)."""
        if self.worse_pct > 0:
            return "worse"
        return "better" if self.worse_pct < 0 else "same"


def numerics_state(result: CaseResult | None) -> str:
    """'verdict' (the pass ran and judged), 'error' (the pass failed), 'none' (no numerics), or
    'unjudged' (it ran, but fp32 itself was not finite, so there is no verdict)."""
    if result is None or not result.numerics:
        return "none"
    if result.numerics_error:
        return "error"
    return "verdict" if result.verdict is not None else "unjudged"


@dataclass(frozen=True)
class CaseComparison:
    """One case id in both runs (or in one of them)."""

    case_id: str
    case: Case
    base: CaseResult | None  # None: not in BASE
    current: CaseResult | None  # None: not in CURRENT
    divergence_key: str | None = None
    metrics: dict[str, MetricDelta] = field(default_factory=dict)
    timing_methods: tuple[str, str] | None = None  # set when the two were timed differently

    @property
    def base_status(self) -> str | None:
        """BASE's status, None when the case is not in BASE."""
        return self.base.status if self.base is not None else None

    @property
    def current_status(self) -> str | None:
        """CURRENT's status, None when the case is not in CURRENT."""
        return self.current.status if self.current is not None else None

    @property
    def current_reason(self) -> str | None:
        """Why CURRENT's case did not run ok."""
        return self.current.reason if self.current is not None else None

    @property
    def base_verdict(self) -> str | None:
        """BASE's numerics verdict."""
        return self.base.verdict if self.base is not None else None

    @property
    def current_verdict(self) -> str | None:
        """CURRENT's numerics verdict."""
        return self.current.verdict if self.current is not None else None

    @property
    def presence(self) -> str:
        """'both', 'only_base' (missing from CURRENT) or 'only_current' (new)."""
        if self.base is None:
            return "only_current"
        return "only_base" if self.current is None else "both"

    @property
    def status_change(self) -> str:
        """'same', 'worse' (ok -> not ok), 'better' (not ok -> ok), 'changed', or 'n/a'."""
        if self.presence != "both":
            return "n/a"
        if self.base_status == self.current_status:
            return "same"
        if self.base_status == "ok":
            return "worse"
        return "better" if self.current_status == "ok" else "changed"

    @property
    def verdict_change(self) -> str:
        """'same', 'worse', 'better', or 'n/a' when either side has no known verdict."""
        b, c = verdict_rank(self.base_verdict), verdict_rank(self.current_verdict)
        if b is None or c is None:
            return "n/a"
        return "same" if b == c else ("worse" if c > b else "better")

    @property
    def numerics_change(self) -> str:
        """How CURRENT's numerics pass compares with BASE's, beyond the verdict itself:
        'errored' (CURRENT's pass failed where BASE had numerics), 'missing' (CURRENT has none
        where BASE had), 'unjudged' (CURRENT has no verdict where BASE had one: its fp32
        reference went non-finite), 'fixed' (CURRENT judged where BASE errored), or 'n/a'."""
        if self.presence != "both" or self.current_status != "ok":
            return "n/a"
        base, current = numerics_state(self.base), numerics_state(self.current)
        if base == "none":
            return "n/a"
        if current in ("error", "none"):
            return {"error": "errored", "none": "missing"}[current]
        if base == "verdict" and current == "unjudged":
            return "unjudged"
        if base == "error" and current == "verdict":
            return "fixed"
        return "n/a"


@dataclass
class Comparison:
    """Every case of two runs, matched by id, plus what each run ran on."""

    base_label: str
    current_label: str
    base_device: DeviceIdentity
    current_device: DeviceIdentity
    base_env: dict[str, Any]
    current_env: dict[str, Any]
    cases: list[CaseComparison]
    options: CompareOptions
    warnings: list[str] = field(default_factory=list)
    current_numerics_enabled: bool = True  # False: CURRENT's suite turned numerics off

    @property
    def matched(self) -> list[CaseComparison]:
        """Cases present in both runs."""
        return [c for c in self.cases if c.presence == "both"]

    @property
    def mixed_timing(self) -> list[CaseComparison]:
        """Matched cases whose two timings were taken by different methods."""
        return [c for c in self.matched if c.timing_methods is not None]

    @property
    def same_device_model(self) -> bool:
        """True when both runs name the same device model (or either is unknown)."""
        b, c = self.base_device, self.current_device
        if not (b.known and c.known):
            return True
        return (b.kind, b.name) == (c.kind, c.name)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (for --json)."""
        return {
            "base": {"path": self.base_label, "device": asdict(self.base_device)},
            "current": {"path": self.current_label, "device": asdict(self.current_device)},
            "options": asdict(self.options),
            "warnings": list(self.warnings),
            "cases": [case_to_dict(c) for c in self.cases],
        }


# ---------------------------------------------------------------------------------------------
# Deltas
# ---------------------------------------------------------------------------------------------


def _change(spec: MetricSpec, base: float, current: float) -> tuple[float | None, float, float]:
    """(ratio, signed change %, change % in the bad direction)."""
    if base == 0:
        ratio = 1.0 if current == 0 else None
        change = 0.0 if current == 0 else math.copysign(math.inf, current)
    else:
        ratio = current / base
        change = (ratio - 1.0) * 100.0
    worse = -change if spec.higher_is_better else change
    return ratio, change, worse


def timing_deltas(
    base: CaseResult, current: CaseResult, options: CompareOptions
) -> dict[str, MetricDelta]:
    """Median step time and throughput, tested once on the per-step samples: the two are
    inverse to each other, so they share the p-value and (inverted) the bootstrap interval."""
    b_steps = [s for s in base.step_s if math.isfinite(s)]
    c_steps = [s for s in current.step_s if math.isfinite(s)]
    p = mann_whitney_p(b_steps, c_steps)
    nb, nc = len(b_steps), len(c_steps)
    if p is None:
        significant, test = None, "no per-step samples to test"
    elif smallest_p_value(nb, nc) >= options.alpha:
        # Too few samples: even a complete separation could not reach alpha.
        significant, test = None, f"too few samples ({nb} vs {nc}) for p < {options.alpha:g}"
    else:
        significant, test = p < options.alpha, f"Mann-Whitney U, p < {options.alpha:g}"
    ci = bootstrap_median_ratio_ci(b_steps, c_steps, options.bootstrap_resamples)
    values = {"step_time": (base.timing.median_s, current.timing.median_s, ci)}
    if base.samples_per_s is not None and current.samples_per_s is not None:
        inverse = (1.0 / ci[1], 1.0 / ci[0]) if ci else None  # throughput = 1 / step time
        values["throughput"] = (base.samples_per_s, current.samples_per_s, inverse)
    deltas = {}
    for metric, (b, c, interval) in values.items():
        ratio, change, worse = _change(METRICS[metric], b, c)
        deltas[metric] = MetricDelta(
            metric,
            b,
            c,
            ratio,
            change,
            worse,
            significant,
            test,
            p_value=p,
            ci_low=interval[0] if interval else None,
            ci_high=interval[1] if interval else None,
            base_n=nb,
            current_n=nc,
        )
    return deltas


def single_delta(
    metric: str, base: float, current: float, floor: float, min_factor: float = 1.0
) -> MetricDelta:
    """A metric measured once per case: it counts when the change exceeds the noise floor (and,
    for unrepeatable measurements, when the value changed by at least `min_factor` either way)."""
    spec = METRICS[metric]
    ratio, change, worse = _change(spec, base, current)
    significant = abs(current - base) > floor
    test = f"|change| > noise floor {floor:g}"
    if min_factor > 1.0:
        significant = significant and (ratio is None or not 1 / min_factor < ratio < min_factor)
        test += f" and a change of at least x{min_factor:g}"
    return MetricDelta(
        metric, base, current, ratio, change, worse, significant, test, base_n=1, current_n=1
    )


def _divergence(base: CaseResult, current: CaseResult) -> tuple[str, float, float] | None:
    """The first divergence metric both results carry, as finite numbers."""
    for key in DIVERGENCE_KEYS:
        b = finite_or_none((base.numerics or {}).get(key))
        c = finite_or_none((current.numerics or {}).get(key))
        if b is not None and c is not None:
            return key, b, c
    return None


def compare_metrics(
    base: CaseResult, current: CaseResult, options: CompareOptions
) -> tuple[dict[str, MetricDelta], str | None, tuple[str, str] | None]:
    """Every metric both results have, the divergence key used, and the two timing methods
    when they differ (timings are then not compared)."""
    deltas: dict[str, MetricDelta] = {}
    methods = None
    if base.timing is not None and current.timing is not None:
        if base.timing.method != current.timing.method:
            methods = (base.timing.method, current.timing.method)
        else:
            deltas.update(timing_deltas(base, current, options))
    if base.peak_bytes is not None and current.peak_bytes is not None:
        exact = base.memory.exact and current.memory.exact
        deltas["peak_memory"] = single_delta(
            "peak_memory",
            float(base.peak_bytes),
            float(current.peak_bytes),
            options.memory_floor_bytes,
            1.0 if exact else options.rss_memory_factor,
        )
    divergence = _divergence(base, current)
    if divergence is not None:
        key, b_div, c_div = divergence
        deltas["divergence"] = single_delta("divergence", b_div, c_div, options.divergence_floor)
    b_energy, c_energy = _energy(base), _energy(current)
    if b_energy is not None and c_energy is not None:
        floor = DEFAULT_ENERGY_FLOOR_FRACTION * b_energy
        deltas["energy"] = single_delta("energy", b_energy, c_energy, floor)
    return deltas, divergence[0] if divergence else None, methods


def _energy(result: CaseResult) -> float | None:
    """Energy per sample (J) where NVML measured it."""
    telemetry = result.telemetry
    return finite_or_none(telemetry.energy_per_sample_j) if telemetry is not None else None


def compare_case(
    case_id: str, base: CaseResult | None, current: CaseResult | None, options: CompareOptions
) -> CaseComparison:
    """Compare one case id; either side may be missing."""
    either = current if current is not None else base
    assert either is not None
    if base is not None and current is not None and base.ok and current.ok:
        metrics, key, methods = compare_metrics(base, current, options)
        return CaseComparison(case_id, either.case, base, current, key, metrics, methods)
    return CaseComparison(case_id, either.case, base, current)


def compare_runs(
    base: Run,
    current: Run,
    options: CompareOptions | None = None,
    base_label: str | None = None,
    current_label: str | None = None,
) -> Comparison:
    """Match two runs' cases by id (BASE order, then cases new in CURRENT) and compare each."""
    options = options or CompareOptions()
    b, c = base.by_id(), current.by_id()
    ids = list(b) + [i for i in c if i not in b]
    cases = [compare_case(i, b.get(i), c.get(i), options) for i in ids]
    warnings = [f"BASE: {w}" for w in base.warnings] + [f"CURRENT: {w}" for w in current.warnings]
    mixed = [case for case in cases if case.timing_methods is not None]
    if mixed:
        pairs = sorted({f"{m[0]} vs {m[1]}" for m in (case.timing_methods for case in mixed)})
        warnings.append(
            f"{len(mixed)} case(s) were timed by different methods ({'; '.join(pairs)}): their "
            "step times and throughput are not compared"
        )
    return Comparison(
        base_label=base_label or str(base.path),
        current_label=current_label or str(current.path),
        base_device=base.identity,
        current_device=current.identity,
        base_env=base.env,
        current_env=current.env,
        cases=cases,
        options=options,
        warnings=warnings,
        current_numerics_enabled=current.numerics_enabled,
    )


def case_to_dict(case: CaseComparison) -> dict[str, Any]:
    """Plain-JSON form of one case comparison (infinities become None: JSON has none)."""
    metrics = {}
    for name, delta in case.metrics.items():
        metrics[name] = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in asdict(delta).items()
        }
    return {
        "id": case.case_id,
        "case": case.case.to_dict(),
        "presence": case.presence,
        "base_status": case.base_status,
        "current_status": case.current_status,
        "current_reason": case.current_reason,
        "status_change": case.status_change,
        "base_verdict": case.base_verdict,
        "current_verdict": case.current_verdict,
        "verdict_change": case.verdict_change,
        "numerics_change": case.numerics_change,
        "timing_methods": list(case.timing_methods) if case.timing_methods else None,
        "divergence_key": case.divergence_key,
        "metrics": metrics,
    }

"""Compare two runs case by case: match by case id, ratio every metric, test significance.

Statistics only: nothing here prints. The terminal/Markdown/JSON views live in bench.cli.compare,
the HTML page in bench.views.compare_page, and the pass/fail rules of the CI gate in bench.analysis.check.

Significance of a timing change uses the per-step samples of both runs: a two-sided Mann-Whitney
U test (rank based, so it holds for the skewed, outlier-prone distributions of step times and is
the same for step time and throughput, which are monotone in each other), as asv does. A
bootstrap 95% interval of the median ratio is given for display. Peak memory and divergence are
single numbers per case, so there is nothing to test: a change counts when it is above a noise
floor (an absolute amount below which the measurement itself wobbles); peaks of the resident set
(CPU runs) must also at least double or halve, since they depend on what earlier cases left.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bench.results.schema import Run

# Case statuses and numerics verdicts, best first.
OK = "ok"
FAILED_STATUSES = ("oom", "error", "crashed", "timeout")
VERDICT_ORDER = ("ok", "warn", "diverged", "nan")
# Divergence metric compared per case, first present in both runs wins (same order as the report).
DIVERGENCE_KEYS = ("max_rel_div", "rel_rmse", "kl_mean")

DEFAULT_ALPHA = 0.002  # asv's p-value threshold: a CI gate must rarely cry wolf
BOOTSTRAP_RESAMPLES = 2000
DEFAULT_MEMORY_FLOOR_BYTES = 1 * 2**20
DEFAULT_DIVERGENCE_FLOOR = 1e-6
DEFAULT_RSS_MEMORY_FACTOR = 2.0


@dataclass(frozen=True)
class MetricSpec:
    """A compared metric: where it comes from and which direction is better."""

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
    )
}


@dataclass(frozen=True)
class CompareOptions:
    """Knobs of the statistics (the CI gate's thresholds are in bench.analysis.check)."""

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


@dataclass(frozen=True)
class DeviceIdentity:
    """What a run ran on, as far as comparability goes (from env.json)."""

    kind: str | None  # "cuda", "cpu" or None (unknown: no env.json)
    name: str | None  # GPU name, or CPU model on CPU runs
    compute_capability: str | None = None
    memory_total_bytes: int | None = None
    driver: str | None = None
    cuda: str | None = None
    torch: str | None = None
    transformers: str | None = None
    torch_threads: int | None = None
    hostname: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, Any]) -> DeviceIdentity:
        """Read the identity fields of an env.json (missing fields stay None)."""
        env = env if isinstance(env, dict) else {}
        gpu = env.get("gpu") if isinstance(env.get("gpu"), dict) else None
        cpu = env.get("cpu") if isinstance(env.get("cpu"), dict) else {}
        versions = env.get("versions") if isinstance(env.get("versions"), dict) else {}
        device = str(env.get("device") or "")
        if gpu:
            kind, name = "cuda", _text(gpu.get("name")) or _text(env.get("device_name"))
        elif device == "cpu" or cpu.get("model"):
            kind, name = "cpu", _text(cpu.get("model")) or _text(env.get("device_name"))
        else:
            kind, name = None, _text(env.get("device_name"))
        return cls(
            kind=kind,
            name=name,
            compute_capability=_text(gpu.get("compute_capability")) if gpu else None,
            memory_total_bytes=_int(gpu.get("memory_total_bytes")) if gpu else None,
            driver=_text(gpu.get("driver")) if gpu else None,
            cuda=_text(gpu.get("cuda") or versions.get("torch_cuda")) if gpu else None,
            torch=_text(versions.get("torch")),
            transformers=_text(versions.get("transformers")),
            torch_threads=_int(cpu.get("torch_threads")),
            hostname=_text(env.get("hostname")),
        )

    @property
    def known(self) -> bool:
        """True when the run recorded what it ran on."""
        return self.kind is not None and bool(self.name)

    @property
    def label(self) -> str:
        """One line for tables and page headers, e.g. 'NVIDIA H100 (cc 9.0, driver 550, CUDA 12.4,
        torch 2.13)'."""
        if not self.known:
            return "unknown device (no env.json)"
        parts = []
        if self.compute_capability:
            parts.append(f"cc {self.compute_capability}")
        if self.driver:
            parts.append(f"driver {self.driver}")
        if self.cuda:
            parts.append(f"CUDA {self.cuda}")
        if self.kind == "cpu" and self.torch_threads:
            parts.append(f"{self.torch_threads} threads")
        if self.torch:
            parts.append(f"torch {self.torch}")
        prefix = "CPU " if self.kind == "cpu" else ""
        return f"{prefix}{self.name}" + (f" ({', '.join(parts)})" if parts else "")

    @property
    def slug(self) -> str:
        """File-name-safe key of the device model: 'nvidia-h100-80gb-hbm3', 'cpu-amd-epyc-7742'."""
        name = re.sub(r"[^a-z0-9]+", "-", (self.name or "unknown").lower()).strip("-")
        return f"cpu-{name}" if self.kind == "cpu" else (name or "unknown")


@dataclass(frozen=True)
class CaseComparison:
    """One case id in both runs (or in one of them)."""

    case_id: str
    case: dict[str, Any]  # model, workload, precision, batch_size, seq_len (from either side)
    base_status: str | None  # None: not in BASE
    current_status: str | None  # None: not in CURRENT
    current_reason: str | None = None
    base_verdict: str | None = None
    current_verdict: str | None = None
    divergence_key: str | None = None
    metrics: dict[str, MetricDelta] = field(default_factory=dict)

    @property
    def presence(self) -> str:
        """'both', 'only_base' (missing from CURRENT) or 'only_current' (new)."""
        if self.base_status is None:
            return "only_current"
        return "only_base" if self.current_status is None else "both"

    @property
    def status_change(self) -> str:
        """'same', 'worse' (ok -> not ok), 'better' (not ok -> ok), 'changed', or 'n/a'."""
        if self.presence != "both":
            return "n/a"
        if self.base_status == self.current_status:
            return "same"
        if self.base_status == OK:
            return "worse"
        return "better" if self.current_status == OK else "changed"

    @property
    def verdict_change(self) -> str:
        """'same', 'worse', 'better', or 'n/a' when either side has no known verdict."""
        b, c = _verdict_rank(self.base_verdict), _verdict_rank(self.current_verdict)
        if b is None or c is None:
            return "n/a"
        return "same" if b == c else ("worse" if c > b else "better")


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

    @property
    def matched(self) -> list[CaseComparison]:
        """Cases present in both runs."""
        return [c for c in self.cases if c.presence == "both"]

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
# Statistics
# ---------------------------------------------------------------------------------------------


def mann_whitney_p(base: Sequence[float], current: Sequence[float]) -> float | None:
    """Two-sided Mann-Whitney U p-value of two samples; None with fewer than 2 per side."""
    if len(base) < 2 or len(current) < 2:
        return None
    from scipy.stats import mannwhitneyu

    if len(set(base) | set(current)) == 1:  # all equal: no evidence of any difference
        return 1.0
    p = float(mannwhitneyu(current, base, alternative="two-sided").pvalue)
    return 1.0 if math.isnan(p) else p


def smallest_p_value(n_base: int, n_current: int) -> float:
    """The smallest two-sided p the exact Mann-Whitney test can give for these sample sizes
    (all of one side below all of the other): 2 / C(n_base + n_current, n_base)."""
    return min(1.0, 2.0 / math.comb(n_base + n_current, n_base))


def bootstrap_median_ratio_ci(
    base: Sequence[float], current: Sequence[float], resamples: int, seed: int = 0
) -> tuple[float, float] | None:
    """95% percentile-bootstrap interval of median(current) / median(base); seeded, so stable."""
    if len(base) < 2 or len(current) < 2 or resamples < 1:
        return None
    rng = np.random.default_rng(seed)
    b = np.asarray(base, dtype=float)
    c = np.asarray(current, dtype=float)
    b_med = np.median(b[rng.integers(0, len(b), (resamples, len(b)))], axis=1)
    c_med = np.median(c[rng.integers(0, len(c), (resamples, len(c)))], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = c_med / b_med
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size == 0:
        return None
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


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


def timing_delta(
    metric: str,
    base_value: float,
    current_value: float,
    base_step_s: Sequence[float],
    current_step_s: Sequence[float],
    options: CompareOptions,
) -> MetricDelta:
    """Step time or throughput, tested on the per-step samples."""
    spec = METRICS[metric]
    ratio, change, worse = _change(spec, base_value, current_value)
    p = mann_whitney_p(base_step_s, current_step_s)
    nb, nc = len(base_step_s), len(current_step_s)
    if p is None:
        significant, test = None, "no per-step samples to test"
    elif smallest_p_value(nb, nc) >= options.alpha:
        # Too few samples: even a complete separation could not reach alpha.
        significant, test = None, f"too few samples ({nb} vs {nc}) for p < {options.alpha:g}"
    else:
        significant, test = p < options.alpha, f"Mann-Whitney U, p < {options.alpha:g}"
    ci = bootstrap_median_ratio_ci(base_step_s, current_step_s, options.bootstrap_resamples)
    if ci is not None and spec.higher_is_better:
        ci = (1.0 / ci[1], 1.0 / ci[0])  # throughput is the inverse of step time
    return MetricDelta(
        metric,
        base_value,
        current_value,
        ratio,
        change,
        worse,
        significant,
        test,
        p_value=p,
        ci_low=ci[0] if ci else None,
        ci_high=ci[1] if ci else None,
        base_n=nb,
        current_n=nc,
    )


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
        metric,
        base,
        current,
        ratio,
        change,
        worse,
        significant,
        test,
        base_n=1,
        current_n=1,
    )


def _repeatable_memory(base: dict[str, Any], current: dict[str, Any]) -> bool:
    """True when both peaks come from the CUDA allocator's counters: exact and repeatable. The
    CPU's resident-set peaks (vmhwm, rss-sampled) also count pages an earlier case left to the
    allocator, so they differ by tens of percent between identical runs."""
    methods = (_dig(base, "memory", "method"), _dig(current, "memory", "method"))
    return all(isinstance(m, str) and m.startswith("cuda") for m in methods)


# ---------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    """A finite float, else None (results may hold NaN, strings or nothing)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _samples(result: dict[str, Any]) -> list[float]:
    """The per-step seconds of a result (finite values only)."""
    values = _dig(result, "timing", "step_s")
    if not isinstance(values, list):
        return []
    return [v for v in (_float(x) for x in values) if v is not None]


def _verdict(result: dict[str, Any] | None) -> str | None:
    verdict = _dig(result, "numerics", "verdict")
    return verdict if isinstance(verdict, str) else None


def _verdict_rank(verdict: str | None) -> int | None:
    return VERDICT_ORDER.index(verdict) if verdict in VERDICT_ORDER else None


def _median_s(result: dict[str, Any]) -> float | None:
    median = _float(_dig(result, "timing", "median_s"))
    if median is None:
        samples = _samples(result)
        median = float(np.median(samples)) if samples else None
    return median


def _throughput(result: dict[str, Any]) -> float | None:
    """samples/s as recorded, else batch size over the median step."""
    value = _float(_dig(result, "throughput", "samples_per_s"))
    if value is None:
        batch = _float(_dig(result, "case", "batch_size"))
        median = _median_s(result)
        value = batch / median if batch and median else None
    return value


def _divergence(base: dict[str, Any], current: dict[str, Any]) -> tuple[str, float, float] | None:
    """The first divergence metric both results carry."""
    for key in DIVERGENCE_KEYS:
        b = _float(_dig(base, "numerics", key))
        c = _float(_dig(current, "numerics", key))
        if b is not None and c is not None:
            return key, b, c
    return None


def compare_metrics(
    base: dict[str, Any], current: dict[str, Any], options: CompareOptions
) -> tuple[dict[str, MetricDelta], str | None]:
    """Every metric both results have, and the divergence key used."""
    deltas: dict[str, MetricDelta] = {}
    b_steps, c_steps = _samples(base), _samples(current)
    b_med, c_med = _median_s(base), _median_s(current)
    if b_med is not None and c_med is not None:
        deltas["step_time"] = timing_delta("step_time", b_med, c_med, b_steps, c_steps, options)
    b_tp, c_tp = _throughput(base), _throughput(current)
    if b_tp is not None and c_tp is not None:
        deltas["throughput"] = timing_delta("throughput", b_tp, c_tp, b_steps, c_steps, options)
    b_mem = _float(_dig(base, "memory", "peak_bytes"))
    c_mem = _float(_dig(current, "memory", "peak_bytes"))
    if b_mem is not None and c_mem is not None:
        factor = 1.0 if _repeatable_memory(base, current) else options.rss_memory_factor
        deltas["peak_memory"] = single_delta(
            "peak_memory", b_mem, c_mem, options.memory_floor_bytes, factor
        )
    divergence = _divergence(base, current)
    if divergence is not None:
        key, b_div, c_div = divergence
        deltas["divergence"] = single_delta("divergence", b_div, c_div, options.divergence_floor)
    return deltas, divergence[0] if divergence else None


def _case_fields(result: dict[str, Any]) -> dict[str, Any]:
    case = result.get("case")
    return dict(case) if isinstance(case, dict) else {}


def compare_case(
    case_id: str,
    base: dict[str, Any] | None,
    current: dict[str, Any] | None,
    options: CompareOptions,
) -> CaseComparison:
    """Compare one case id; either side may be missing."""
    either = current if current is not None else base
    assert either is not None
    metrics: dict[str, MetricDelta] = {}
    divergence_key = None
    if (
        base is not None
        and current is not None
        and base.get("status") == current.get("status") == OK
    ):
        metrics, divergence_key = compare_metrics(base, current, options)
    return CaseComparison(
        case_id=case_id,
        case=_case_fields(either),
        base_status=str(base.get("status")) if base is not None else None,
        current_status=str(current.get("status")) if current is not None else None,
        current_reason=_text(current.get("reason")) if current is not None else None,
        base_verdict=_verdict(base),
        current_verdict=_verdict(current),
        divergence_key=divergence_key,
        metrics=metrics,
    )


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
    return Comparison(
        base_label=base_label or str(base.path),
        current_label=current_label or str(current.path),
        base_device=DeviceIdentity.from_env(base.env),
        current_device=DeviceIdentity.from_env(current.env),
        base_env=base.env,
        current_env=current.env,
        cases=cases,
        options=options,
        warnings=warnings,
    )


def case_to_dict(case: CaseComparison) -> dict[str, Any]:
    """Plain-JSON form of one case comparison (infinities become None: JSON has none)."""
    metrics = {}
    for name, delta in case.metrics.items():
        data = asdict(delta)
        metrics[name] = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in data.items()
        }
    return {
        "id": case.case_id,
        "case": case.case,
        "presence": case.presence,
        "base_status": case.base_status,
        "current_status": case.current_status,
        "current_reason": case.current_reason,
        "status_change": case.status_change,
        "base_verdict": case.base_verdict,
        "current_verdict": case.current_verdict,
        "verdict_change": case.verdict_change,
        "divergence_key": case.divergence_key,
        "metrics": metrics,
    }

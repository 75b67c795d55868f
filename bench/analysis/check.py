"""The CI gate: decide whether CURRENT regressed against a baseline, and the suite's [check] table.

A regression is any of:
  * a gated metric worse than its threshold *and* significant (bench.analysis.compare decides
    significance: Mann-Whitney U on the per-step samples for timing, a noise floor for single
    numbers);
  * a status change for the worse (ok -> skipped/oom/error/crashed/timeout);
  * worse numerics in any form: a verdict change for the worse (ok -> warn -> diverged -> nan), a
    numerics pass that errored, or one that is missing where the baseline had one. Only a suite
    that turns numerics off on purpose ([numerics] enabled = false) or `check --ignore-numerics`
    lifts this, and the output says so;
  * a case that was measured (ok) in the baseline and is missing from CURRENT.
Improvements beyond a threshold are reported and fail only with --fail-on-improvement (the
baseline is then stale and should be re-saved). Runs on different device models, runs with no
case in common, and timings taken by different methods are refused (exit 2): nothing can be
judged from them.

[check] table of a suite (percent thresholds; a sign is optional, e.g. throughput = -5 or 5):
    throughput  = -10    # fail when throughput drops more than 10 % (significantly); CPU: -30
    step_time   = false  # median step time; off by default (the inverse of throughput)
    peak_memory = 10     # fail when peak memory grows more than 10 %; CPU: not gated
    divergence  = 50     # fail when divergence from fp32 grows more than 50 %
    alpha = 0.002        # p-value below which a timing change is significant
    memory_floor_mib = 1 # peak-memory changes smaller than this are measurement noise
    divergence_floor = 1e-6
    fail_on_improvement = false
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from bench.analysis.compare import (
    METRICS,
    CaseComparison,
    CompareOptions,
    Comparison,
    MetricDelta,
)
from bench.errors import EXIT_OK, EXIT_REGRESSION, MpbenchError, SuiteError
from bench.results.identity import DeviceIdentity
from bench.results.rundir import SUITE_FILE, Run
from bench.results.schema import finite_or_none

# Percent beyond which a significant change counts; None = the metric is not gated.
# Throughput is the gate for timing (step time is its inverse: gating both would double count).
DEFAULT_THRESHOLDS_PCT: dict[str, float | None] = {
    "throughput": 10.0,  # asv's default factor; TorchBench flags 7%; tighten per suite on GPUs
    "step_time": None,
    "peak_memory": 10.0,
    "divergence": 50.0,
    "energy": None,  # GPU energy per sample: off by default (enable with energy = 10)
}
# CPU runs on a shared machine: whole cases run 10-25% faster or slower from one run to the next,
# every sample alike (measured on a 2-core box: two back-to-back smoke runs differed by up to 24%
# at p < 0.001), which no test on one run's samples can tell from a regression; and resident-set
# peaks move by up to 80% with allocator state. GPUs on a dedicated runner hold within a few %.
CPU_DEFAULT_THRESHOLDS_PCT: dict[str, float | None] = {"throughput": 30.0, "peak_memory": None}
OPTION_KEYS = ("alpha", "memory_floor_mib", "divergence_floor", "fail_on_improvement")
TABLE_KEYS = tuple(DEFAULT_THRESHOLDS_PCT) + OPTION_KEYS


class IncomparableRuns(MpbenchError):
    """The two runs cannot be checked against each other (different device, nothing in common)."""


# ---------------------------------------------------------------------------------------------
# Configuration: built-in defaults < the suite's [check] table < --threshold flags
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckConfig:
    """Thresholds (percent magnitudes, None = not gated) and the statistics options."""

    thresholds_pct: dict[str, float | None] = field(
        default_factory=lambda: dict(DEFAULT_THRESHOLDS_PCT)
    )
    options: CompareOptions = field(default_factory=CompareOptions)
    fail_on_improvement: bool = False
    origin: dict[str, str] = field(default_factory=dict)  # key -> where its value came from
    gate_numerics: bool = True  # False only with `check --ignore-numerics`

    def threshold(self, metric: str) -> float | None:
        """The metric's threshold in percent, or None when it is not gated."""
        return self.thresholds_pct.get(metric)

    def describe(self) -> str:
        """'throughput -5% (suite), peak_memory +10% (default), ...' for output headers."""
        parts = []
        for metric, pct in self.thresholds_pct.items():
            if pct is None:
                continue
            sign = "-" if METRICS[metric].higher_is_better else "+"
            parts.append(f"{metric} {sign}{pct:g}% ({self.origin.get(metric, 'default')})")
        parts.append(f"p < {self.options.alpha:g}")
        return ", ".join(parts)


def threshold_value(metric: str, value: Any) -> float | None:
    """A threshold's magnitude in percent, or None for `false`; raises ValueError.

    The sign is optional: 5 and -5 both mean "a 5% drop" for throughput. A negative threshold
    for a lower-is-better metric (peak_memory = -5) reads as "a drop is bad", which is a mistake
    worth a message rather than a silent abs().
    """
    if value is False:
        return None
    if not finite_or_none(value) is not None:
        raise ValueError(
            f"must be a percentage (e.g. {'-' if METRICS[metric].higher_is_better else ''}5) "
            f"or false to turn the check off; got {value!r}"
        )
    if value < 0 and not METRICS[metric].higher_is_better:
        raise ValueError(
            f"{value:g}: a {metric} regression is a rise, so the threshold is {abs(value):g}"
        )
    if abs(value) > 1000:
        raise ValueError(f"{value:g}% is not a sensible threshold; use at most 1000")
    return float(abs(value))


def _option_value(key: str, value: Any) -> Any:
    """Validate one non-threshold key of [check]; raises ValueError."""
    if key == "alpha":
        if not finite_or_none(value) is not None or not 0 < value < 1:
            raise ValueError(f"must be a p-value between 0 and 1 (e.g. 0.002); got {value!r}")
        return float(value)
    if key in ("memory_floor_mib", "divergence_floor"):
        if not finite_or_none(value) is not None or value < 0:
            raise ValueError(f"must be a non-negative number; got {value!r}")
        return float(value)
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false; got {value!r}")
    return value


def validate_table(table: dict, source: str) -> None:
    """Validate a suite's [check] table; raises SuiteError naming `{source}: check.KEY`."""
    config_from_table(table, source)


def config_from_table(
    table: dict[str, Any], source: str, base: CheckConfig | None = None
) -> CheckConfig:
    """Apply a [check] table over `base` (default: built-in defaults)."""
    config = base or CheckConfig()
    thresholds = dict(config.thresholds_pct)
    origin = dict(config.origin)
    options = config.options
    fail_on_improvement = config.fail_on_improvement
    for key, value in table.items():
        if key not in TABLE_KEYS:
            close = difflib.get_close_matches(key, TABLE_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SuiteError(
                f"{source}: check.{key}: unknown key{hint}; allowed: {', '.join(TABLE_KEYS)}"
            )
        try:
            if key in DEFAULT_THRESHOLDS_PCT:
                thresholds[key] = threshold_value(key, value)
            elif key == "alpha":
                options = replace(options, alpha=_option_value(key, value))
            elif key == "memory_floor_mib":
                options = replace(options, memory_floor_bytes=_option_value(key, value) * 2**20)
            elif key == "divergence_floor":
                options = replace(options, divergence_floor=_option_value(key, value))
            else:
                fail_on_improvement = _option_value(key, value)
        except ValueError as exc:
            raise SuiteError(f"{source}: check.{key}: {exc}") from None
        origin[key] = "suite"
    return CheckConfig(thresholds, options, fail_on_improvement, origin)


def parse_threshold_flag(text: str) -> tuple[str, float | None]:
    """'throughput=-5', 'peak_memory=10' or 'divergence=off' -> (metric, magnitude or None)."""
    metric, sep, raw = text.partition("=")
    metric = metric.strip().replace("-", "_")
    if not sep or metric not in DEFAULT_THRESHOLDS_PCT:
        raise ValueError(
            f"expected METRIC=PERCENT with METRIC one of {', '.join(DEFAULT_THRESHOLDS_PCT)} "
            f"(e.g. throughput=-5, peak_memory=off); got {text!r}"
        )
    raw = raw.strip().rstrip("%")
    if raw.lower() in ("off", "false", "none"):
        return metric, None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{metric}: {raw!r} is not a number (or 'off')") from None
    return metric, threshold_value(metric, value)


def suite_check_table(run: Run, label: str) -> tuple[dict[str, Any], str] | None:
    """The [check] table of the suite a run recorded, with a source name for messages."""
    table = run.suite_table("check")
    if table is None:
        return None
    source = f"{label} (suite)" if label.endswith(".json") else str(run.path / SUITE_FILE)
    return table, source


def default_config(device_kind: str | None = None) -> CheckConfig:
    """The built-in defaults; CPU runs get a wider timing threshold (CPU_DEFAULT_THRESHOLDS_PCT)."""
    if device_kind != "cpu":
        return CheckConfig()
    thresholds = {**DEFAULT_THRESHOLDS_PCT, **CPU_DEFAULT_THRESHOLDS_PCT}
    origin = {k: "default for CPU runs" for k in CPU_DEFAULT_THRESHOLDS_PCT}
    return CheckConfig(thresholds, origin=origin)


def resolve_config(
    tables: list[tuple[dict[str, Any], str] | None],
    flags: Sequence[tuple[str, float | None]] = (),
    fail_on_improvement: bool = False,
    alpha: float | None = None,
    device_kind: str | None = None,
    gate_numerics: bool = True,
) -> CheckConfig:
    """Defaults (for the device kind), then the first [check] table found, then flags."""
    config = default_config(device_kind)
    found = next((t for t in tables if t is not None), None)
    if found is not None:
        config = config_from_table(found[0], found[1], config)
    thresholds, origin = dict(config.thresholds_pct), dict(config.origin)
    for metric, value in flags:
        thresholds[metric] = value
        origin[metric] = "--threshold"
    options = config.options if alpha is None else replace(config.options, alpha=alpha)
    return CheckConfig(
        thresholds,
        options,
        config.fail_on_improvement or fail_on_improvement,
        origin,
        gate_numerics,
    )


# ---------------------------------------------------------------------------------------------
# Compatibility of the two devices
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Compatibility:
    """Why two runs are not the same device (mismatches) and what else differs (differences)."""

    mismatches: list[str] = field(default_factory=list)  # refused without --allow-device-mismatch
    differences: list[str] = field(default_factory=list)  # reported prominently

    @property
    def same_device(self) -> bool:
        """True when nothing forbids the comparison."""
        return not self.mismatches


_VERSION_FIELDS = (
    ("driver", "driver"),
    ("cuda", "CUDA"),
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("torch_threads", "torch threads"),
    ("memory_total_gib", "GPU memory (GiB)"),
)


def _identity_field(identity: DeviceIdentity, attr: str) -> Any:
    if attr == "memory_total_gib":
        total = identity.memory_total_bytes
        return None if total is None else round(total / 2**30, 1)
    return getattr(identity, attr)


def compatibility(base: DeviceIdentity, current: DeviceIdentity) -> Compatibility:
    """Compare two device identities: model (must match) and software versions (reported)."""
    mismatches: list[str] = []
    differences: list[str] = []
    for side, ident in (("BASE", base), ("CURRENT", current)):
        if not ident.known:
            differences.append(
                f"{side} does not record its device (no env.json): cannot verify it is the same"
            )
    if base.known and current.known:
        if base.kind != current.kind:
            mismatches.append(f"BASE ran on {base.label}, CURRENT on {current.label}")
        elif base.name != current.name:
            what = "GPU" if base.kind == "cuda" else "CPU"
            mismatches.append(
                f"different {what} model: BASE {base.name!r}, CURRENT {current.name!r}"
            )
        elif (
            base.compute_capability
            and current.compute_capability
            and base.compute_capability != current.compute_capability
        ):
            mismatches.append(
                f"different compute capability: BASE {base.compute_capability}, "
                f"CURRENT {current.compute_capability}"
            )
    for attr, label in _VERSION_FIELDS:
        b, c = _identity_field(base, attr), _identity_field(current, attr)
        if b is not None and c is not None and b != c:
            differences.append(f"{label} changed: BASE {b}, CURRENT {c}")
    return Compatibility(mismatches, differences)


# ---------------------------------------------------------------------------------------------
# Assessment
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """Something check says about one case."""

    case_id: str
    kind: str  # "regression", "improvement" or "note"
    what: str  # "status", "verdict", "numerics", "missing", "new", or a metric name
    message: str
    fails: bool
    delta: MetricDelta | None = None


@dataclass
class Assessment:
    """The comparison judged against the thresholds: findings and the exit code."""

    comparison: Comparison
    config: CheckConfig
    compatibility: Compatibility
    findings: list[Finding]
    notes: list[str] = field(default_factory=list)  # what the gate did not judge, and why

    def __post_init__(self) -> None:
        self._by_case: dict[str, list[Finding]] = {}
        for finding in self.findings:
            self._by_case.setdefault(finding.case_id, []).append(finding)

    @property
    def regressions(self) -> list[Finding]:
        """Findings that are regressions."""
        return [f for f in self.findings if f.kind == "regression"]

    @property
    def improvements(self) -> list[Finding]:
        """Improvements beyond a threshold."""
        return [f for f in self.findings if f.kind == "improvement"]

    @property
    def failed(self) -> bool:
        """True when any finding fails the gate."""
        return any(f.fails for f in self.findings)

    @property
    def exit_code(self) -> int:
        """0 pass, 1 regression."""
        return EXIT_REGRESSION if self.failed else EXIT_OK

    def findings_for(self, case_id: str) -> list[Finding]:
        """The findings of one case."""
        return self._by_case.get(case_id, [])

    def outcome(self, case_id: str) -> str:
        """'fail', 'regression' (not failing), 'improvement', 'note' or 'pass' for one case."""
        found = self.findings_for(case_id)
        if any(f.fails for f in found):
            return "fail"
        for kind in ("regression", "improvement", "note"):
            if any(f.kind == kind for f in found):
                return kind
        return "pass"

    def ordered_cases(self) -> list[CaseComparison]:
        """Cases worst first: failures, other findings, then by how much worse throughput got."""
        rank = {"fail": 0, "regression": 1, "improvement": 2, "note": 3, "pass": 4}

        def key(case: CaseComparison) -> tuple[int, float, str]:
            worst = max(
                (d.worse_pct for d in case.metrics.values() if math.isfinite(d.worse_pct)),
                default=0.0,
            )
            # A case that broke (status, verdict, missing) is worse than any slowdown.
            if any(
                f.delta is None and f.kind == "regression" for f in self.findings_for(case.case_id)
            ):
                worst = math.inf
            return rank[self.outcome(case.case_id)], -worst, case.case_id

        return sorted(self.comparison.cases, key=key)

    def counts(self) -> dict[str, int]:
        """How many cases were compared, missing, new, regressed, improved."""
        cases = self.comparison.cases
        return {
            "compared": sum(c.presence == "both" for c in cases),
            "missing": sum(c.presence == "only_base" for c in cases),
            "new": sum(c.presence == "only_current" for c in cases),
            "regressed": len({f.case_id for f in self.regressions}),
            "improved": len({f.case_id for f in self.improvements}),
            "failing": len({f.case_id for f in self.findings if f.fails}),
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (for --json)."""
        return {
            "passed": not self.failed,
            "exit_code": self.exit_code,
            "counts": self.counts(),
            "thresholds_pct": dict(self.config.thresholds_pct),
            "alpha": self.config.options.alpha,
            "fail_on_improvement": self.config.fail_on_improvement,
            "compatibility": asdict(self.compatibility),
            "notes": list(self.notes),
            "findings": [
                {k: v for k, v in asdict(f).items() if k != "delta"} for f in self.findings
            ],
            "comparison": self.comparison.to_dict(),
        }


def _format_value(metric: str, value: float) -> str:
    """A metric value with its unit, for messages."""
    if metric == "peak_memory":
        return f"{value / 2**20:.1f} MiB"
    if metric == "step_time":
        return f"{value * 1e3:.3g} ms"
    if metric == "throughput":
        return f"{value:.4g} samples/s"
    if metric == "energy":
        return f"{value:.4g} J/sample"
    return f"{value:.3g}"


def describe_delta(delta: MetricDelta) -> str:
    """'throughput -12.3% (1234 -> 1082 samples/s, p=1.1e-05)'."""
    change = "from 0" if delta.ratio is None else f"{delta.change_pct:+.1f}%"
    values = (
        f"{_format_value(delta.metric, delta.base)} -> {_format_value(delta.metric, delta.current)}"
    )
    evidence = f", p={delta.p_value:.2g}" if delta.p_value is not None else ""
    if delta.significant is None:
        evidence += f"; significance not tested: {delta.test}"
    return f"{delta.metric} {change} ({values}{evidence})"


def numerics_gated(comparison: Comparison, config: CheckConfig) -> str | None:
    """Why numerics are not gated (None: they are)."""
    if not config.gate_numerics:
        return "numerics not gated: --ignore-numerics"
    if not comparison.current_numerics_enabled:
        return "numerics not gated: CURRENT's suite turned them off ([numerics] enabled = false)"
    return None


def _numerics_findings(case: CaseComparison, improvement_fails: bool) -> list[Finding]:
    """Worse numerics in any form: a worse verdict, an errored pass, a missing pass."""
    cid = case.case_id
    found = []
    verdicts = f"numerics verdict {case.base_verdict} -> {case.current_verdict}"
    if case.verdict_change == "worse":
        found.append(Finding(cid, "regression", "verdict", verdicts, True))
    elif case.verdict_change == "better":
        found.append(Finding(cid, "improvement", "verdict", verdicts, improvement_fails))
    change = case.numerics_change
    if change == "errored":
        message = f"numerics pass errored: {case.current.numerics_error}"
        found.append(Finding(cid, "regression", "numerics", message, True))
    elif change == "missing":
        message = "numerics missing in CURRENT (BASE had them)"
        found.append(Finding(cid, "regression", "numerics", message, True))
    elif change == "unjudged":
        reasons = "; ".join((case.current.numerics or {}).get("reasons") or [])
        message = f"numerics gave no verdict in CURRENT (BASE: {case.base_verdict})" + (
            f": {reasons}" if reasons else ""
        )
        found.append(Finding(cid, "regression", "numerics", message, True))
    elif change == "fixed":
        message = f"numerics pass works again (verdict {case.current_verdict})"
        found.append(Finding(cid, "improvement", "numerics", message, improvement_fails))
    return found


def _unstable_sides(case: CaseComparison) -> str | None:
    """'BASE', 'CURRENT' or 'BASE and CURRENT (CV ...)' where a side's timing was unstable."""
    sides = []
    for name, result in (("BASE", case.base), ("CURRENT", case.current)):
        timing = result.timing if result is not None and result.ok else None
        if timing is not None and timing.unstable:
            sides.append(f"{name} (CV {timing.cv * 100:.0f}%)" if timing.cv else name)
    return " and ".join(sides) or None


def assess_case(
    case: CaseComparison, config: CheckConfig, gate_numerics: bool = True
) -> list[Finding]:
    """Every finding for one case."""
    cid = case.case_id
    improvement_fails = config.fail_on_improvement
    if case.presence == "only_base":
        if case.base_status == "ok":
            return [Finding(cid, "regression", "missing", "missing from CURRENT (was ok)", True)]
        return [
            Finding(cid, "note", "missing", f"missing from CURRENT (was {case.base_status})", False)
        ]
    if case.presence == "only_current":
        return [Finding(cid, "note", "new", f"new in CURRENT ({case.current_status})", False)]
    found: list[Finding] = []
    reason = f": {case.current_reason}" if case.current_reason else ""
    change = f"status {case.base_status} -> {case.current_status}"
    if case.status_change == "worse":
        found.append(Finding(cid, "regression", "status", change + reason, True))
    elif case.status_change == "better":
        found.append(Finding(cid, "improvement", "status", change, improvement_fails))
    elif case.status_change == "changed":
        found.append(Finding(cid, "note", "status", change + reason, False))
    if gate_numerics:
        found += _numerics_findings(case, improvement_fails)
    shaky = _unstable_sides(case)
    if shaky:
        message = (
            f"unstable timing in {shaky}: its timed steps spread more than the suite's limit, "
            "so a throughput change may be noise"
        )
        found.append(Finding(cid, "note", "unstable", message, False))
    for metric, delta in case.metrics.items():
        threshold = config.threshold(metric)
        if threshold is None or delta.significant is False:
            continue
        if delta.worse_pct > threshold:
            found.append(Finding(cid, "regression", metric, describe_delta(delta), True, delta))
        elif -delta.worse_pct > threshold:
            found.append(
                Finding(cid, "improvement", metric, describe_delta(delta), improvement_fails, delta)
            )
    return found


def assess(comparison: Comparison, config: CheckConfig) -> Assessment:
    """Judge every case of a comparison (no device policy: see run_check)."""
    not_gated = numerics_gated(comparison, config)
    findings = [
        f for case in comparison.cases for f in assess_case(case, config, not_gated is None)
    ]
    compat = compatibility(comparison.base_device, comparison.current_device)
    notes = [not_gated] if not_gated else []
    return Assessment(comparison, config, compat, findings, notes)


def run_check(
    comparison: Comparison, config: CheckConfig, allow_device_mismatch: bool = False
) -> Assessment:
    """The gate: refuse incomparable runs (IncomparableRuns, exit 2), else assess."""
    assessment = assess(comparison, config)
    if assessment.compatibility.mismatches and not allow_device_mismatch:
        raise IncomparableRuns(
            "; ".join(assessment.compatibility.mismatches)
            + ". A baseline is only valid on the device it was recorded on; pass "
            "--allow-device-mismatch to check anyway"
        )
    if not comparison.matched:
        raise IncomparableRuns(
            f"{comparison.base_label} and {comparison.current_label} have no case in common "
            "(different suites?)"
        )
    mixed = comparison.mixed_timing
    if mixed:
        base_method, current_method = mixed[0].timing_methods
        raise IncomparableRuns(
            f"{len(mixed)} case(s) were timed by different methods (BASE {base_method}, CURRENT "
            f"{current_method}, e.g. {mixed[0].case_id}); their timings cannot be judged against "
            "each other. Record the baseline the way CURRENT is measured (mpbench run, or the "
            "mpbench pytest plugin)"
        )
    return assessment

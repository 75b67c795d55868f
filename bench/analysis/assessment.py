"""The CI gate: judge a comparison of CURRENT against a baseline and decide whether it regressed.

The thresholds and statistics options come from bench.analysis.thresholds (defaults < the suite's
[check] table < --threshold flags); whether the two devices may be compared is decided by
bench.analysis.compatibility.

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
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.analysis.compare import CaseComparison, Comparison, MetricDelta
from bench.analysis.compatibility import Compatibility, compatibility
from bench.analysis.hostbound import HOST_BOUND_BELOW, is_host_bound
from bench.analysis.thresholds import CheckConfig
from bench.errors import EXIT_OK, EXIT_REGRESSION, MpbenchError


class IncomparableRuns(MpbenchError):
    """The two runs cannot be checked against each other (different device, nothing in common)."""


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
    """'BASE', 'CURRENT' or 'BASE and CURRENT (robust CV ...)' where a side's timing was
    unstable, with its spread: robust CV (what schema 6 judges) and CV (what older runs
    judged)."""
    sides = []
    for name, result in (("BASE", case.base), ("CURRENT", case.current)):
        timing = result.timing if result is not None and result.ok else None
        if timing is not None and timing.unstable:
            spreads = [
                f"{label} {value * 100:.0f}%"
                for label, value in (("robust CV", timing.robust_cv), ("CV", timing.cv))
                if value
            ]
            sides.append(f"{name} ({', '.join(spreads)})" if spreads else name)
    return " and ".join(sides) or None


def _host_bound_sides(case: CaseComparison) -> str | None:
    """'BASE', 'CURRENT' or both, each with its GPU-busy fraction, where a side was
    host-bound (bench.analysis.hostbound)."""
    sides = []
    for name, result in (("BASE", case.base), ("CURRENT", case.current)):
        timing = result.timing if result is not None and result.ok else None
        if timing is not None and is_host_bound(timing.gpu_busy_fraction):
            sides.append(f"{name} (GPU busy {timing.gpu_busy_fraction * 100:.0f}%)")
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
    waiting = _host_bound_sides(case)
    if waiting:
        message = (
            f"host-bound in {waiting}: the GPU was busy less than {HOST_BOUND_BELOW:.0%} of the "
            "step, so a throughput change may be the host's, not the GPU's"
        )
        found.append(Finding(cid, "note", "host-bound", message, False))
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

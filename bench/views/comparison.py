"""The view model of a comparison (`mpbench compare` / `check`), shared by the terminal table,
the Markdown summary, the HTML page and JUnit: the headline, the device lines and one row of
cells per case, worst first."""

from __future__ import annotations

from bench.analysis.assessment import Assessment
from bench.analysis.compare import CaseComparison, MetricDelta

TABLE_HEADERS = (
    "case",
    "status",
    "samples/s BASE -> CURRENT",
    "throughput",
    "p",
    "peak memory",
    "divergence",
    "energy",
    "verdict",
    "finding",
)
NUMERIC_COLUMNS = (2, 3, 4, 5, 6, 7)  # right-aligned where the medium can


def headline(assessment: Assessment, gate: bool) -> str:
    """One line: the verdict and the counts."""
    counts = assessment.counts()
    n_reg, n_imp = len(assessment.regressions), len(assessment.improvements)
    tail = f"{counts['compared']} cases compared, {counts['missing']} missing, {counts['new']} new"
    if not gate:
        return (
            f"{n_reg} regression(s) in {counts['regressed']} case(s), {n_imp} improvement(s) "
            f"beyond thresholds; {tail}"
        )
    if assessment.failed:
        failing = counts["failing"]
        return f"FAIL: {failing} case(s) regressed ({n_reg} regression(s), {n_imp} improvement(s)); {tail}"
    extra = f", {n_imp} improvement(s)" if n_imp else ""
    return f"PASS: no regression{extra}; {tail}"


def _status_text(case: CaseComparison) -> str:
    if case.presence == "only_base":
        return f"{case.base_status} -> missing"
    if case.presence == "only_current":
        return f"new ({case.current_status})"
    if case.base_status != case.current_status:
        return f"{case.base_status} -> {case.current_status}"
    return str(case.current_status)


def pct_cell(delta: MetricDelta | None) -> str:
    """'+12.3%', marked '*' when significant and '?' when untested."""
    if delta is None:
        return ""
    if delta.ratio is None:
        return "from 0"
    mark = {True: "*", False: "", None: "?"}[delta.significant]
    return f"{delta.change_pct:+.1f}%{mark}"


def _p(delta: MetricDelta | None) -> str:
    return f"{delta.p_value:.2g}" if delta is not None and delta.p_value is not None else ""


def _throughput_values(delta: MetricDelta | None) -> str:
    if delta is None:
        return ""
    return f"{delta.base:.4g} -> {delta.current:.4g}"


def _verdict_text(case: CaseComparison) -> str:
    if case.numerics_change in ("errored", "missing", "unjudged"):
        return f"{case.base_verdict or '-'} -> {case.numerics_change}"
    if case.base_verdict == case.current_verdict or case.verdict_change == "n/a":
        return case.current_verdict or ""
    return f"{case.base_verdict or '-'} -> {case.current_verdict or '-'}"


def _findings_text(assessment: Assessment, case_id: str) -> str:
    parts = []
    for f in assessment.findings_for(case_id):
        tag = {"regression": "REGRESSION", "improvement": "improved", "note": "note"}[f.kind]
        parts.append(f"{tag}: {f.what}")
    return "; ".join(parts)


def table_rows(assessment: Assessment) -> list[list[str]]:
    """One row of TABLE_HEADERS per case, worst first."""
    rows = []
    for case in assessment.ordered_cases():
        m = case.metrics
        rows.append(
            [
                case.case_id,
                _status_text(case),
                _throughput_values(m.get("throughput")),
                pct_cell(m.get("throughput")),
                _p(m.get("throughput")),
                pct_cell(m.get("peak_memory")),
                pct_cell(m.get("divergence")),
                pct_cell(m.get("energy")),
                _verdict_text(case),
                _findings_text(assessment, case.case_id),
            ]
        )
    return rows


def device_lines(assessment: Assessment, gate: bool = True) -> list[tuple[str, str]]:
    """(level, text) lines about the two runs: 'info', 'warn' or 'error'. Two device models are
    an error for the gate (allowed by a flag) and the point of the comparison otherwise."""
    comp, compat = assessment.comparison, assessment.compatibility
    lines = [
        ("info", f"BASE:    {comp.base_label} on {comp.base_device.label}"),
        ("info", f"CURRENT: {comp.current_label} on {comp.current_device.label}"),
    ]
    if gate:
        lines += [("error", f"device mismatch: {m}") for m in compat.mismatches]
    else:
        lines += [("warn", f"comparing two devices: {m}") for m in compat.mismatches]
    lines += [("warn", f"{d}") for d in compat.differences]
    lines += [("warn", w) for w in comp.warnings]
    lines += [("warn", n) for n in assessment.notes]
    return lines

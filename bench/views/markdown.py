"""Markdown views (GitHub-flavoured, for CI job summaries and PR comments): a run's summary.md
and the summary of a comparison. Plain Markdown only: no HTML entities or tags in the text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.analysis.assessment import Assessment
from bench.analysis.summary import RunAnalysis
from bench.views import format as fmt
from bench.views.comparison import TABLE_HEADERS, device_lines, headline, table_rows

# Characters that would end a table cell or start Markdown/HTML syntax; each is backslash-escaped
# (GitHub renders `\<` as `<`), so a reason like "rel_div >= 0.05" reads as written.
_SPECIAL = "\\|<>*`[]"


def md_text(value: Any) -> str:
    """Text for Markdown: special characters backslash-escaped, on one line."""
    text = " ".join(str(value).split("\n"))
    return "".join("\\" + ch if ch in _SPECIAL else ch for ch in text)


def md_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None
) -> list[str]:
    """A Markdown table; cells are escaped. `align` is one letter per column: l or r."""
    marks = ["---:" if a == "r" else "---" for a in (align or "l" * len(headers))]
    lines = ["| " + " | ".join(md_text(h) for h in headers) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(md_text(c) for c in row) + " |" for row in rows]
    return lines


def summary_markdown(analysis: RunAnalysis, title: str | None = None) -> str:
    """summary.md: per model x workload, each precision at the headline point."""
    lines = [f"## mpbench summary: {md_text(title)}" if title else "## mpbench summary", ""]
    if not analysis.rows:
        lines.append("No results.")
    for group in analysis.groups:
        lines += [
            f"### {md_text(group.model)} / {md_text(group.workload)} "
            f"({md_text(fmt.point_label(group))})",
            "",
            f"**{md_text(fmt.recommendation_text(group))}**",
            "",
        ]
        extras = fmt.extra_columns(group)
        headers = (
            "precision",
            group.rate_unit,
            "speedup vs fp32",
            "peak memory",
            "saving vs fp32",
            "verdict",
            fmt.METRIC_LABELS.get(group.divergence_metric or "", "divergence"),
            *(column.header for column in extras),
        )
        rows = []
        for mode in group.modes:
            name = mode.label
            if mode.label == group.recommended:
                name = f"{name} (recommended)"
            elif mode.label == group.speed_only:
                name = f"{name} (fastest, speed only)"
            if not mode.ok:
                reason = f": {mode.reason}" if mode.reason else ""
                rows.append(
                    [name, mode.status + reason, "", "", "", fmt.fmt_verdict(mode), ""]
                    + fmt.extra_cells(mode, extras)
                )
                continue
            rows.append(
                [
                    name,
                    fmt.fmt_number(mode.rate),
                    fmt.fmt_speedup(mode.speedup, mode.host_bound),
                    fmt.fmt_bytes(mode.peak_bytes),
                    fmt.fmt_saving(mode.memory_saving),
                    fmt.fmt_verdict(mode),
                    fmt.fmt_divergence(mode.divergence),
                    *fmt.extra_cells(mode, extras),
                ]
            )
        lines += md_table(headers, rows, "lrrrrlr" + "r" * len(extras))
        lines.append("")
        for caveat in fmt.caveat_lines(group) + fmt.quality_lines(group):
            lines += [f"Note ({md_text(caveat)})", ""]
    if analysis.execution_gains:
        lines += ["### Execution gains (vs the same precision run eagerly)", ""]
        rows = [fmt.gain_cells(gain) for gain in analysis.execution_gains]
        lines += md_table(fmt.GAIN_HEADERS, rows, "llllrrrr")
        lines += ["", f"Note ({md_text(fmt.GAIN_CAPTION)})", ""]
    others = analysis.benchmark_rows
    if others:
        lines += ["### Other benchmarks (no sweep point: no fp32 to compare against)", ""]
        rows = [
            [r.id, r.status, fmt.fmt_seconds(r.median_s), fmt.fmt_bytes(r.peak_bytes)]
            for r in others
        ]
        lines += md_table(("benchmark", "status", "median step", "peak memory"), rows, "llrr")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def comparison_markdown(assessment: Assessment, gate: bool) -> str:
    """A comparison as Markdown: verdict, devices, regressions, improvements, all cases."""
    comp = assessment.comparison
    title = "mpbench check" if gate else "mpbench compare"
    icon = ("❌" if assessment.failed else "✅") if gate else "📊"
    out = [f"## {icon} {title}: {md_text(headline(assessment, gate))}", ""]
    out += md_table(
        ["", "BASE", "CURRENT"],
        [
            ["run", comp.base_label, comp.current_label],
            ["device", comp.base_device.label, comp.current_device.label],
        ],
    )
    out.append("")
    for level, text in device_lines(assessment, gate)[2:]:
        strong = "**" if level == "error" else ""
        out.append(f"> {strong}⚠️ {md_text(text)}{strong}")
    out += ["", f"Thresholds: {md_text(assessment.config.describe())}", ""]
    for kind, heading in (("regression", "Regressions"), ("improvement", "Improvements")):
        found = [f for f in assessment.findings if f.kind == kind]
        if found:
            out += [f"### {heading}", ""]
            out += md_table(
                ["case", "what", "detail"], [[f.case_id, f.what, f.message] for f in found]
            )
            out.append("")
    out += [f"<details><summary>All {len(comp.cases)} cases (worst first)</summary>", ""]
    out += md_table(TABLE_HEADERS, table_rows(assessment), "llrrrrrrll")
    out += ["", "`*` significant, `?` not testable (too few samples).", "", "</details>", ""]
    return "\n".join(out)

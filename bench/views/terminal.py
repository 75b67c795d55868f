"""Terminal views (rich): the results and verdict tables after a run, a comparison, the largest
batch sizes. Every figure comes from bench.analysis, formatted by bench.views.format."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bench.analysis.assessment import Assessment
from bench.analysis.maxbatch import MaxBatchRow
from bench.analysis.rows import CaseRow
from bench.analysis.summary import RunAnalysis
from bench.results.schema import CaseResult
from bench.views import format as fmt
from bench.views.comparison import TABLE_HEADERS, device_lines, headline, table_rows

VERDICT_STYLES = {
    "ok": "green",
    "warn": "yellow",
    "diverged": "red",
    "nan": "bold red",
    "error": "bold red",
    "baseline": "dim",
}


def describe_result(result: CaseResult) -> str:
    """One line for a finished case: 'ok, median 12.3 ms, 456 samples/s' or 'oom: reason'."""
    if result.ok:
        return (
            f"ok, median {fmt.fmt_seconds(result.median_s)}, "
            f"{fmt.fmt_number(result.rate)} {result.rate_unit}"
        )
    return f"{result.status}: {result.reason}"


def results_table(analysis: RunAnalysis) -> Table:
    """Per case: median step, throughput, peak memory, speedup vs fp32 at the same shape, the
    achieved TFLOP/s (MFU and energy where the run has them) and what makes a figure shaky."""
    extras = fmt.run_extra_columns(analysis)
    table = Table(
        "case",
        "status",
        "median step",
        "throughput",
        "peak memory",
        "vs fp32",
        *(column.header for column in extras),
        "notes",
        title="mpbench results",
        caption="vs fp32: median step of fp32 / this case's, at the same batch size and length; "
        "TFLOP/s: counted FLOPs per step / median step",
    )
    for row in analysis.rows:
        if row.status != "ok":
            table.add_row(row.id, row.status, *[""] * (5 + len(extras)))
            continue
        rate = f"{fmt.fmt_number(row.rate)} {row.rate_unit}" if row.rate else ""
        table.add_row(
            row.id,
            row.status,
            fmt.fmt_seconds(row.median_s),
            rate,
            fmt.fmt_bytes(row.peak_bytes),
            fmt.fmt_speedup(row.speedup, row.host_bound),  # missing where fp32 did not run
            *(column.formatter(column.value(row)) for column in extras),
            Text(case_notes(row), style="yellow"),
        )
    return table


def case_notes(row: CaseRow) -> str:
    """What makes a case's figure shaky: unstable steps, a warm-up that never settled, a GPU
    that waited on the host, a GPU that throttled."""
    notes = []
    if row.unstable:
        notes.append(f"unstable (robust CV {fmt.fmt_fraction(row.robust_cv)})")
    if row.warmup_steady is False:
        notes.append(f"warm-up unsettled after {row.warmup_steps}")
    if row.host_bound:
        notes.append(f"host-bound (GPU busy {fmt.fmt_fraction(row.gpu_busy_fraction)})")
    if row.throttled:
        notes.append(f"throttled ({row.throttle_reasons})")
    return ", ".join(notes)


def verdict_table(analysis: RunAnalysis) -> Table:
    """Per model and workload, each mode at the headline point: speedup and memory saving vs
    fp32, the numerics verdict and its headline divergence (next to fp32's own, the floor)."""
    table = Table(
        "model",
        "workload",
        "precision",
        "shape",
        "speedup",
        "memory saving",
        "verdict",
        "divergence",
        title="speed vs numerics (vs fp32)",
    )
    for group in analysis.groups:
        shape = f"bs{group.batch_size} seq{group.seq_len}" if group.batch_size else ""
        for mode in group.modes:
            mark = {group.recommended: " ★", group.speed_only: " (fastest, speed only)"}.get(
                mode.label, ""
            )
            verdict = fmt.verdict_key(mode)
            table.add_row(
                group.model,
                group.workload,
                mode.label + mark,
                shape,
                fmt.fmt_speedup(mode.speedup, mode.host_bound) if mode.ok else mode.status,
                fmt.fmt_saving(mode.memory_saving) if mode.ok else "",
                Text(fmt.fmt_verdict(mode), style=VERDICT_STYLES.get(verdict or "", "")),
                fmt.fmt_divergence_with_floor(mode) if mode.divergence is not None else "",
            )
    notes = list(
        dict.fromkeys(
            line for g in analysis.groups for line in fmt.caveat_lines(g) + fmt.quality_lines(g)
        )
    )
    table.caption = "".join(f"Note ({line})\n" for line in notes) + (
        "per model and workload at its headline point (the shape where fp32 and the most "
        "precisions ran); ★ recommended: the fastest mode whose numerics verdict is ok (without "
        "numerics, the fastest is marked speed only); divergence: max rel. loss divergence "
        "(train) or rel. RMSE of outputs (infer), floor: fp32's own"
    )
    return table


def execution_table(analysis: RunAnalysis) -> Table | None:
    """What torch.compile or CUDA graphs gain over the same precision run eagerly (None where
    every mode ran eagerly)."""
    if not analysis.execution_gains:
        return None
    table = Table(*fmt.GAIN_HEADERS, title="execution gain (vs the same precision, eager)")
    for gain in analysis.execution_gains:
        table.add_row(*fmt.gain_cells(gain))
    table.caption = fmt.GAIN_CAPTION
    return table


def print_comparison(assessment: Assessment, gate: bool, stream: TextIO) -> None:
    """The comparison table, worst first, with the devices and the verdict."""
    console = Console(file=stream, width=None if stream.isatty() else 200, highlight=False)
    styles = {"info": "", "warn": "bold yellow", "error": "bold red"}
    for level, text in device_lines(assessment, gate):
        console.print(Text(text, style=styles[level]))
    console.print(Text(f"thresholds: {assessment.config.describe()}", style="dim"))
    table = Table(*TABLE_HEADERS, title="mpbench check" if gate else "mpbench compare")
    row_style = {"fail": "red", "regression": "red", "improvement": "green", "note": "yellow"}
    for case, row in zip(assessment.ordered_cases(), table_rows(assessment), strict=True):
        table.add_row(*row, style=row_style.get(assessment.outcome(case.case_id), ""))
    console.print(table)
    console.print(
        Text("* significant (p < alpha or above the noise floor); ? not testable", style="dim")
    )
    for finding in assessment.findings:
        if finding.kind == "note" and finding.what not in ("unstable", "host-bound"):
            continue  # missing and new cases: the table says so
        tag = {"regression": "REGRESSION", "improvement": "improved", "note": "note"}[finding.kind]
        style = "red" if finding.fails else ("green" if finding.kind == "improvement" else "")
        style = "yellow" if finding.kind == "note" else style
        console.print(Text(f"{tag} {finding.case_id}: {finding.message}", style=style))
    style = "bold red" if assessment.failed and gate else "bold green" if gate else "bold"
    console.print(Text(headline(assessment, gate), style=style))


def max_batch_table(rows: Sequence[MaxBatchRow]) -> Table:
    """The largest batch per model/workload/precision/seq, with its ratio to fp32's."""
    table = Table(
        "model",
        "workload",
        "precision",
        "seq",
        "max batch",
        "vs fp32",
        title="Largest batch that fits",
    )
    for row in rows:
        size = row.max_batch_size
        shown = "-" if size is None else f"{size}{'+' if row.limit_reached else ''}"
        ratio = f"{row.vs_fp32:.2f}×" if row.vs_fp32 else ""
        table.add_row(row.model, row.workload, row.precision, str(row.seq_len), shown, ratio)
    return table

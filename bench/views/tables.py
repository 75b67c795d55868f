"""Presentation of numbers: formatting, the summary as Markdown, the raw table and results.csv."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.analysis.summary import CaseRow, GroupSummary, PrecisionSummary, as_float, dedupe

MISSING = "–"  # shown for a value that is absent or undefined
VERDICT_LABELS = {
    "ok": "ok",
    "warn": "warn",
    "diverged": "diverged",
    "nan": "NaN/inf",
    "baseline": "baseline",
    None: "no numerics",
}
METRIC_LABELS = {
    "max_rel_div": "max rel. loss divergence",
    "rel_rmse": "rel. RMSE of outputs",
    "kl_mean": "mean KL divergence",
}


def _finite(value: float | None) -> bool:
    """A number that can be printed as one."""
    return value is not None and math.isfinite(value)


def _sig3(value: float) -> str:
    """3 significant figures, trailing zeros kept (4.70), whole numbers from 100 up (1,234)."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:#.3g}".rstrip(".")


def fmt_number(value: float | None) -> str:
    """3 significant figures, thousands separated: 12.3, 4,567."""
    if value is None:
        return MISSING
    if not math.isfinite(value):
        return str(value)
    return _sig3(value)


def fmt_bytes(value: float | None) -> str:
    """Binary units: 512 B, 12.0 KiB, 345 MiB, 1.50 GiB."""
    if not _finite(value):
        return MISSING
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{_sig3(value / size)} {unit}"
    return f"{value:.0f} B"


def fmt_seconds(value: float | None) -> str:
    """Step time in a readable unit: 850 µs, 12.3 ms, 1.20 s."""
    if not _finite(value):
        return MISSING
    if value >= 1:
        return f"{_sig3(value)} s"
    if value >= 1e-3:
        return f"{_sig3(value * 1e3)} ms"
    return f"{_sig3(value * 1e6)} µs"


def fmt_speedup(value: float | None) -> str:
    """1.84×."""
    return f"{value:.2f}×" if _finite(value) else MISSING


def fmt_saving(value: float | None) -> str:
    """Memory saved vs fp32 as a signed percentage; negative means more memory than fp32."""
    if not _finite(value):
        return MISSING
    return f"{value * 100:.0f} %".replace("-", "−")


def fmt_divergence(value: float | None) -> str:
    """Divergence in scientific notation: 3.1e-03."""
    if value is None:
        return MISSING
    return f"{value:.2g}" if math.isfinite(value) else str(value)


def fmt_verdict(summary: PrecisionSummary) -> str:
    """The numerics verdict as a word; blank where the case did not run."""
    if summary.status != "ok":
        return MISSING
    return VERDICT_LABELS.get(summary.verdict, str(summary.verdict))


def point_label(summary: GroupSummary) -> str:
    """Where precisions were compared: 'batch 8, seq 512'."""
    if summary.batch_size is None:
        return "no successful case"
    return f"batch {summary.batch_size}, seq {summary.seq_len}"


def recommendation_text(summary: GroupSummary) -> str:
    """One line saying which mode to use, and on what grounds."""
    if summary.recommended:
        return f"Recommended: {summary.recommended} (fastest mode that passes the numerics check)"
    if summary.speed_only:
        return f"Fastest: {summary.speed_only} (speed only: no numerics, so not a recommendation)"
    if summary.has_numerics:
        return "No recommendation: no measured mode passes the numerics check"
    return "No recommendation: no successful case"


@dataclass
class SummaryCells:
    """One formatted row of a summary table."""

    precision: str
    status: str
    reason: str | None
    throughput: str
    speedup: str
    peak: str
    saving: str
    verdict: str
    verdict_class: str
    divergence: str
    mark: str  # "recommended", "speed-only" or ""


def summary_cells(summary: GroupSummary) -> list[SummaryCells]:
    """The summary table of one model x workload, formatted."""
    rows = []
    for s in summary.precisions:
        mark = ""
        if s.precision == summary.recommended:
            mark = "recommended"
        elif s.precision == summary.speed_only:
            mark = "speed-only"
        rows.append(
            SummaryCells(
                precision=s.precision,
                status=s.status,
                reason=s.reason,
                throughput=fmt_number(s.throughput),
                speedup=fmt_speedup(s.speedup),
                peak=fmt_bytes(s.peak_bytes),
                saving=fmt_saving(s.memory_saving),
                verdict=fmt_verdict(s),
                verdict_class=f"v-{s.verdict}" if s.status == "ok" and s.verdict else "v-none",
                divergence=fmt_divergence(s.divergence),
                mark=mark,
            )
        )
    return rows


def _md(text: Any) -> str:
    """Escape a value for a Markdown table cell: pipes, angle brackets and newlines."""
    return (
        str(text)
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("|", "\\|")
        .replace("\n", " ")
    )


def summary_markdown_text(summaries: Sequence[GroupSummary], title: str | None = None) -> str:
    """The summary tables in GitHub Markdown, one per model x workload."""
    lines = [f"## mpbench summary: {_md(title)}" if title else "## mpbench summary", ""]
    if not summaries:
        lines.append("No results.")
    for summary in summaries:
        lines.append(
            f"### {_md(summary.model)} / {_md(summary.workload)} ({_md(point_label(summary))})"
        )
        lines.append("")
        lines.append(f"**{_md(recommendation_text(summary))}**")
        lines.append("")
        metric = METRIC_LABELS.get(summary.divergence_metric or "", "divergence")
        lines.append(
            f"| precision | {summary.throughput_unit} | speedup vs fp32 | peak memory "
            f"| saving vs fp32 | verdict | {metric} |"
        )
        lines.append("|---|---:|---:|---:|---:|---|---:|")
        for cells in summary_cells(summary):
            name = _md(cells.precision)
            if cells.mark == "recommended":
                name = f"**{name}** ★"
            elif cells.mark == "speed-only":
                name = f"{name} (fastest, speed only)"
            if cells.status != "ok":
                reason = f": {cells.reason}" if cells.reason else ""
                lines.append(f"| {name} | {_md(cells.status + reason)} | | | | | |")
                continue
            lines.append(
                f"| {name} | {cells.throughput} | {cells.speedup} | {cells.peak} "
                f"| {cells.saving} | {_md(cells.verdict)} | {cells.divergence} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# Raw table: (header, CaseRow attribute or callable, formatter, numeric?)
RAW_COLUMNS: list[tuple[str, str, Any, bool]] = [
    ("case", "id", str, False),
    ("model", "model", str, False),
    ("workload", "workload", str, False),
    ("precision", "precision", str, False),
    ("batch", "batch_size", str, True),
    ("seq", "seq_len", str, True),
    ("status", "status", str, False),
    ("median step", "median_s", fmt_seconds, True),
    ("p10", "p10_s", fmt_seconds, True),
    ("p90", "p90_s", fmt_seconds, True),
    ("samples/s", "samples_per_s", fmt_number, True),
    ("tokens/s", "tokens_per_s", fmt_number, True),
    ("peak memory", "peak_bytes", fmt_bytes, True),
    ("verdict", "verdict", str, False),
    ("divergence", "divergence", fmt_divergence, True),
    ("reason", "reason", str, False),
]


@dataclass
class RawCell:
    """A raw-table cell: its text and, for numbers, the value the inline script sorts by."""

    text: str
    sort: str | None


def raw_table(rows: Sequence[CaseRow]) -> tuple[list[tuple[str, bool]], list[list[RawCell]]]:
    """Headers (name, numeric?) and formatted cells for every case."""
    headers = [(name, numeric) for name, _, _, numeric in RAW_COLUMNS]
    body = []
    for row in rows:
        cells = []
        for _, attr, fmt, numeric in RAW_COLUMNS:
            value = getattr(row, attr)
            text = MISSING if value is None else fmt(value)
            sort = None
            if numeric and value is not None and math.isfinite(value):
                sort = repr(float(value))
            cells.append(RawCell(text, sort))
        body.append(cells)
    return headers, body


def results_frame(results: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per case with nested keys dotted (timing.median_s); list-valued fields dropped.

    Per-step lists (timing.step_s, losses, numerics.loss, ...) are summarised by the scalar
    statistics next to them, so the CSV stays one flat row per case.
    """
    records = dedupe(results)
    if not records:
        return pd.DataFrame(columns=["case.id", "status"])
    frame = pd.json_normalize(records, sep=".")
    list_columns = [
        c for c in frame.columns if frame[c].map(lambda v: isinstance(v, list | dict)).any()
    ]
    frame = frame.drop(columns=list_columns)
    first = [c for c in ("case.id", "status", "reason") if c in frame.columns]
    return frame[first + [c for c in frame.columns if c not in first]]


def write_results_csv(results: Sequence[dict[str, Any]], path: Path) -> Path:
    """Write results.csv (see results_frame) and return its path."""
    results_frame(results).to_csv(path, index=False)
    return path


def _text(value: Any) -> str | None:
    """A scalar from env.json as display text; None for null, empty or nested values."""
    if value is None or value == "" or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def environment_items(env: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs for the header, in reading order; absent keys are left out."""
    gpu = env.get("gpu") if isinstance(env.get("gpu"), dict) else {}
    cpu = env.get("cpu") if isinstance(env.get("cpu"), dict) else {}
    versions = env.get("versions") if isinstance(env.get("versions"), dict) else {}
    tf32 = env.get("tf32") if isinstance(env.get("tf32"), dict) else {}
    memory = gpu.get("memory_total_bytes")
    capability = gpu.get("compute_capability")
    if isinstance(capability, list):
        capability = ".".join(str(c) for c in capability)
    tf32_text = None
    if tf32:
        tf32_text = ", ".join(f"{k}: {_text(v) or MISSING}" for k, v in tf32.items())
    cpu_text = _text(cpu.get("model"))
    cores = [
        f"{cpu[key]} {label}"
        for key, label in (
            ("logical_cores", "logical cores"),
            ("threads", "threads"),
            ("torch_threads", "torch threads"),
        )
        if _text(cpu.get(key))
    ]
    if cpu_text and cores:
        cpu_text += f" ({', '.join(cores)})"
    argv = env.get("argv")
    command = " ".join(str(a) for a in argv) if isinstance(argv, list) and argv else None
    candidates = [
        ("suite", _text(env.get("suite"))),
        ("started", _text(env.get("started_at"))),
        ("device", _text(env.get("device"))),
        ("device name", _text(env.get("device_name"))),
        ("GPU", _text(gpu.get("name"))),
        ("compute capability", _text(capability)),
        ("GPU memory", fmt_bytes(as_float(memory)) if as_float(memory) else None),
        ("driver", _text(gpu.get("driver"))),
        ("CUDA", _text(gpu.get("cuda"))),
        ("CPU", cpu_text),
        ("TF32", tf32_text),
    ]
    candidates += [(name, _text(v)) for name, v in versions.items()]
    candidates += [
        ("host", _text(env.get("hostname"))),
        ("platform", _text(env.get("platform"))),
        ("git commit", _text(env.get("git_commit"))),
        ("command", command),
    ]
    return [(label, value) for label, value in candidates if value]

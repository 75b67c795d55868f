"""Assemble the report: load a run directory, compute, draw, and render one self-contained HTML.

Writes, next to the HTML: results.csv (one flat row per case) and summary.md (the summary tables
in Markdown for CI job summaries and PR comments).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from bench.analysis import summary as analysis
from bench.analysis.summary import CaseRow, GroupSummary
from bench.errors import ResultsError
from bench.results.schema import ENV_FILE, RESULTS_FILE, Run, load_run
from bench.views import plots, tables

log = logging.getLogger(__name__)

REPORT_FILE = "index.html"
CSV_FILE = "results.csv"
SUMMARY_FILE = "summary.md"
TEMPLATE = "report.html.j2"


@dataclass
class Plot:
    """One figure of a section: its inline SVG, or why it could not be drawn."""

    caption: str
    svg: Markup | None = None
    error: str | None = None


@dataclass
class Section:
    """A report section made of figures; `empty` says why there are none."""

    id: str
    title: str
    intro: str
    plots: list[Plot] = field(default_factory=list)
    empty: str = "No data for this section in this run."
    wide: bool = False  # one figure per row instead of two


def _draw(caption: str, draw: Callable[[], str], problems: list[str]) -> Plot:
    """Call a plotting function; a failure becomes a note in the page instead of no report at all.

    The report is also rendered automatically after a run that may have been cut short, where
    data of any shape can turn up: losing one figure is better than losing the whole report.
    """
    try:
        return Plot(caption, svg=Markup(draw()))
    except Exception as exc:  # noqa: BLE001 - deliberately broad, see docstring
        log.warning("report: could not draw %s: %s", caption, exc, exc_info=True)
        problems.append(f"Could not draw '{caption}': {type(exc).__name__}: {exc}")
        return Plot(caption, error=f"{type(exc).__name__}: {exc}")


def _group_title(summary: GroupSummary) -> str:
    """'gpt2-tiny / train' for figure titles."""
    return f"{summary.model} / {summary.workload}"


def _device_memory_bytes(env: dict[str, Any], rows: Sequence[CaseRow]) -> float | None:
    """The GPU's total memory, when the cases ran on a GPU (a CPU run has no such limit to draw)."""
    if not any((r.device or "").startswith("cuda") for r in rows):
        return None
    return analysis.as_float(analysis.dig(env, "gpu", "memory_total_bytes"))


def throughput_section(
    groups: dict[tuple[str, str], list[CaseRow]],
    summaries: Sequence[GroupSummary],
    problems: list[str],
) -> Section:
    """Throughput vs batch size, one line per precision, per model x workload."""
    section = Section(
        "throughput",
        "Throughput vs batch size",
        "Successful cases at the compared sequence length; higher is better.",
        empty="No successful case: nothing to plot.",
    )
    for summary in summaries:
        rows = groups[(summary.model, summary.workload)]
        series = analysis.series_vs_batch(rows, summary.seq_len, "throughput")
        if series:
            title = f"{_group_title(summary)}, seq {summary.seq_len}"
            section.plots.append(
                _draw(
                    title,
                    lambda s=series, t=title, u=summary.throughput_unit: plots.throughput_vs_batch(
                        s, title=t, unit=u
                    ),
                    problems,
                )
            )
    return section


def memory_section(
    groups: dict[tuple[str, str], list[CaseRow]],
    summaries: Sequence[GroupSummary],
    env: dict[str, Any],
    problems: list[str],
) -> Section:
    """Peak memory vs batch size, one line per precision, with the device's memory on a GPU."""
    section = Section(
        "memory",
        "Peak memory vs batch size",
        "Peak memory as measured by each case's method (on a GPU, the dotted line is the "
        "device's total memory).",
        empty="No case recorded peak memory.",
    )
    for summary in summaries:
        rows = groups[(summary.model, summary.workload)]
        series = analysis.series_vs_batch(rows, summary.seq_len, "peak_bytes")
        if series:
            title = f"{_group_title(summary)}, seq {summary.seq_len}"
            device_bytes = _device_memory_bytes(env, rows)
            section.plots.append(
                _draw(
                    title,
                    lambda s=series, t=title, d=device_bytes: plots.memory_vs_batch(
                        s, title=t, device_bytes=d
                    ),
                    problems,
                )
            )
    return section


def speedup_section(summaries: Sequence[GroupSummary], problems: list[str]) -> Section:
    """Speedup vs fp32 bars at the comparison point, coloured by verdict."""
    section = Section(
        "speedup",
        "Speedup vs fp32",
        "At the largest batch size and sequence length common to the precisions; bar colour is "
        "the numerics verdict.",
        empty="No speedup to show: fp32 or the other precisions did not complete.",
    )
    for summary in summaries:
        bars = [s for s in summary.precisions if s.speedup is not None]
        if len(bars) < 2:  # fp32 alone is not a comparison
            continue
        title = f"{_group_title(summary)} ({tables.point_label(summary)})"
        section.plots.append(
            _draw(
                title,
                lambda b=bars, t=title: plots.speedup_bars(
                    [s.precision for s in b],
                    [s.speedup for s in b],
                    [s.verdict for s in b],
                    title=t,
                ),
                problems,
            )
        )
    return section


def loss_section(
    groups: dict[tuple[str, str], list[CaseRow]],
    summaries: Sequence[GroupSummary],
    problems: list[str],
) -> Section:
    """Training loss per precision with the fp32 curve, and relative divergence per step."""
    section = Section(
        "loss",
        "Loss curves and divergence from fp32",
        "Loss of the deterministic divergence pass (or, without numerics, of the timed steps) "
        "per precision over fp32 (black); below, |loss − fp32 loss| / |fp32 loss| per step.",
        empty="No training losses in this run.",
    )
    for summary in summaries:
        if summary.workload != "train":
            continue
        data = analysis.loss_data(summary, groups[(summary.model, summary.workload)])
        if data is None:
            continue
        title = f"{summary.model} / train (losses from {data.source})"
        section.plots.append(
            _draw(title, lambda d=data, t=title: plots.loss_curves(d, title=t), problems)
        )
    return section


def tradeoff_section(summaries: Sequence[GroupSummary], problems: list[str]) -> Section:
    """Speed vs accuracy scatter per workload, one panel per model, Pareto front marked."""
    section = Section(
        "tradeoff",
        "Speed vs accuracy",
        "Each mode's speedup against its divergence from fp32 (log scale; lower is closer). "
        "Modes on the Pareto front are ringed: none is both faster and closer to fp32.",
        empty="No mode has both a speedup and a divergence measurement (numerics absent?).",
        wide=True,
    )
    for workload, by_model in analysis.tradeoff_points(summaries).items():
        metrics = [s.divergence_metric for s in summaries if s.workload == workload]
        metric = next((m for m in metrics if m), None)
        ylabel = tables.METRIC_LABELS.get(metric or "", "divergence from fp32")
        title = f"{workload}"
        section.plots.append(
            _draw(
                f"{workload}: speed vs accuracy",
                lambda b=by_model, t=title, y=ylabel: plots.tradeoff_scatter(b, title=t, ylabel=y),
                problems,
            )
        )
    return section


def step_time_section(summaries: Sequence[GroupSummary], problems: list[str]) -> Section:
    """Step-time distributions per precision at the comparison point."""
    section = Section(
        "step-times",
        "Step-time distributions",
        "Per-step time of the timed loop at the compared size: box = quartiles, "
        "whiskers = 1.5 IQR.",
        empty="No per-step timings in this run.",
    )
    for summary in summaries:
        samples = analysis.step_samples(summary)
        if samples:
            title = f"{_group_title(summary)} ({tables.point_label(summary)})"
            section.plots.append(
                _draw(title, lambda s=samples, t=title: plots.step_time_boxes(s, title=t), problems)
            )
    return section


def activation_section(rows: Sequence[CaseRow], problems: list[str]) -> Section:
    """Activation range per module against the fp16 limit."""
    section = Section(
        "activations",
        "Activation range and fp16 headroom",
        "Largest |activation| per module in an fp32 run, against the largest fp16 value. Red: "
        "overflows fp16; amber: within 16× of it.",
        empty="No activation range analysis in this run.",
        wide=True,
    )
    for profile in analysis.activation_profiles(rows):
        title = f"{profile.model}: max |activation| per module"
        section.plots.append(
            _draw(title, lambda p=profile, t=title: plots.activation_headroom(p, title=t), problems)
        )
    return section


def _report_title(run: Run) -> str:
    """The suite's name, else the run directory's."""
    suite = run.env.get("suite") if isinstance(run.env, dict) else None
    if isinstance(suite, dict):
        suite = suite.get("name")
    return str(suite or run.path.name or "mpbench run")


def _started_at(run: Run, rows: Sequence[CaseRow]) -> str | None:
    """When the run started: env.json's time, else the earliest case's."""
    started = analysis.as_str(run.env.get("started_at"))
    if started:
        return started
    times = sorted(str(r.result["started_at"]) for r in rows if r.result.get("started_at"))
    return times[0] if times else None


def build_context(run: Run, csv_name: str | None = CSV_FILE) -> dict[str, Any]:
    """Everything the template shows, computed from the run alone."""
    env = run.env if isinstance(run.env, dict) else {}
    rows = analysis.case_rows(run.results)
    groups = analysis.group_rows(rows)
    summaries = [analysis.summarize_group(m, w, g) for (m, w), g in groups.items()]
    problems: list[str] = []
    sections = [
        throughput_section(groups, summaries, problems),
        memory_section(groups, summaries, env, problems),
        speedup_section(summaries, problems),
        loss_section(groups, summaries, problems),
        tradeoff_section(summaries, problems),
        step_time_section(summaries, problems),
        activation_section(rows, problems),
    ]
    headers, raw_rows = tables.raw_table(rows)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    return {
        "title": _report_title(run),
        "started_at": _started_at(run, rows),
        "run_path": str(run.path),
        "env_items": tables.environment_items(env),
        "warnings": analysis.run_warnings(env, run.warnings, rows) + problems,
        "counts": dict(sorted(counts.items())),
        "n_cases": len(rows),
        "summaries": [
            {
                "summary": s,
                "title": _group_title(s),
                "point": tables.point_label(s),
                "recommendation": tables.recommendation_text(s),
                "metric": tables.METRIC_LABELS.get(s.divergence_metric or "", "divergence"),
                "rows": tables.summary_cells(s),
            }
            for s in summaries
        ],
        "sections": sections,
        "problems": analysis.problem_groups(rows),
        "raw_headers": headers,
        "raw_rows": raw_rows,
        "csv_name": csv_name,
    }


def _environment() -> jinja2.Environment:
    """Jinja environment over the package's templates, autoescaping everything."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,  # every string from a suite, model, error or env.json is untrusted
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(run: Run, csv_name: str | None = CSV_FILE) -> str:
    """The report as one HTML string."""
    return _environment().get_template(TEMPLATE).render(**build_context(run, csv_name))


def _load(run_dir: str | os.PathLike[str]) -> Run:
    """load_run, except that a run cut short before its first result gives an empty run."""
    path = Path(run_dir)
    if path.is_dir() and not (path / RESULTS_FILE).exists() and (path / ENV_FILE).is_file():
        run = load_run_env_only(path)
        run.warnings.append(f"{RESULTS_FILE} is missing: the run stopped before any case finished.")
        return run
    return load_run(path)


def load_run_env_only(path: Path) -> Run:
    """A Run with env.json but no results (see _load)."""
    try:
        env = json.loads((path / ENV_FILE).read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ResultsError(f"{path / ENV_FILE}: not valid JSON ({exc})") from None
    return Run(path=path, env=env if isinstance(env, dict) else {}, results=[], warnings=[])


def summary_markdown(run: Run | str | os.PathLike[str]) -> str:
    """The summary tables of a run (a Run or a run directory) in Markdown."""
    if not isinstance(run, Run):
        run = _load(run)
    rows = analysis.case_rows(run.results)
    title = _report_title(run)
    return tables.summary_markdown_text(analysis.summarize(rows), title)


def render_report(
    run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None
) -> Path:
    """Render RUN_DIR's report to `out` (default RUN_DIR/index.html); return the HTML's path.

    results.csv and summary.md are written next to the HTML. Only results.jsonl and env.json are
    read: nothing is re-run.
    """
    run = _load(run_dir)
    out_path = Path(out) if out is not None else run.path / REPORT_FILE
    out_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path = out_path.parent / CSV_FILE
    tables.write_results_csv(run.results, csv_path)
    (out_path.parent / SUMMARY_FILE).write_text(summary_markdown(run), encoding="utf-8")
    html = render_html(run, csv_name=csv_path.name)
    # Write then rename, so a reader (or a crash) never sees a half-written report.
    tmp_path = out_path.with_name(out_path.name + ".tmp")
    tmp_path.write_text(html, encoding="utf-8")
    tmp_path.replace(out_path)
    return out_path

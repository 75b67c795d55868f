"""The run report: one self-contained HTML page, plus results.csv and summary.md beside it.

Built from a run directory alone (results.jsonl, env.json): `render_report` reads it through
bench.results, analyses it once with bench.analysis.summary, draws bench.analysis.series with
bench.views.plots, and fills the jinja2 template in templates/. `report_json` is the same
analysis as JSON (`mpbench report --json`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import jinja2
import pandas as pd
from markupsafe import Markup

from bench.analysis import series
from bench.analysis.hostbound import HOST_BOUND_BELOW
from bench.analysis.rows import CaseRow
from bench.analysis.summary import GroupSummary, RunAnalysis, analyze
from bench.results.files import output_error, write_text_atomic
from bench.results.rundir import Run, load_run
from bench.results.schema import FAILURES, CaseResult
from bench.views import format as fmt
from bench.views import plots
from bench.views.markdown import summary_markdown

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
    table_headers: tuple[str, ...] = ()  # a table above the figures, where the section has one
    table_rows: list[list[str]] = field(default_factory=list)


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


def _title(group: GroupSummary) -> str:
    """'gpt2-tiny / train' for figure titles."""
    return f"{group.model} / {group.workload}"


def _device_memory_bytes(env: dict[str, Any], analysis: RunAnalysis) -> float | None:
    """The GPU's total memory, when the cases ran on a GPU (a CPU run has no such limit to draw)."""
    gpu = env.get("gpu") if isinstance(env.get("gpu"), dict) else {}
    memory = gpu.get("memory_total_bytes")
    ran_on_gpu = any(str(r.case.device or "").startswith("cuda") for r in analysis.results.values())
    return float(memory) if ran_on_gpu and isinstance(memory, (int, float)) else None


def _rate(row: CaseRow) -> float | None:
    return row.rate


def _peak_bytes(row: CaseRow) -> float | None:
    return row.peak_bytes


def per_batch_section(
    analysis: RunAnalysis,
    env: dict[str, Any],
    figure: Literal["throughput", "memory"],
    problems: list[str],
) -> Section:
    """Throughput or peak memory vs batch size, one line per precision, per model x workload at
    the headline sequence length."""
    if figure == "throughput":
        section = Section(
            "throughput",
            "Throughput vs batch size",
            "Successful cases at the headline sequence length; higher is better.",
            empty="No successful case: nothing to plot.",
        )
    else:
        section = Section(
            "memory",
            "Peak memory vs batch size",
            "Peak memory as measured by each case's method (on a GPU, the dotted line is the "
            "device's total memory).",
            empty="No case recorded peak memory.",
        )
    device_bytes = _device_memory_bytes(env, analysis)
    value = _rate if figure == "throughput" else _peak_bytes
    for group in analysis.groups:
        data = series.series_vs_batch(analysis, group, value)
        if not data:
            continue
        title = f"{_title(group)}, seq {group.seq_len}"
        if figure == "throughput":
            draw = partial(plots.throughput_vs_batch, data, title=title, unit=group.rate_unit)
        else:
            draw = partial(plots.memory_vs_batch, data, title=title, device_bytes=device_bytes)
        section.plots.append(_draw(title, draw, problems))
    return section


def _headline_bars(
    section: Section,
    analysis: RunAnalysis,
    problems: list[str],
    keep: Callable[[Any], bool],
    at_least: int,
    draw: Callable[[list[Any], str], str],
) -> None:
    """One bar plot per model and workload of the modes `keep` accepts at the headline point,
    where at least `at_least` of them are."""
    for group in analysis.groups:
        bars = [m for m in group.modes if keep(m)]
        if len(bars) < at_least:
            continue
        title = f"{_title(group)} ({fmt.point_label(group)})"
        section.plots.append(_draw(title, lambda b=bars, t=title: draw(b, t), problems))


def speedup_section(analysis: RunAnalysis, problems: list[str]) -> Section:
    """Speedup vs fp32 bars at the headline point, coloured by verdict."""
    section = Section(
        "speedup",
        "Speedup vs fp32",
        "At each model and workload's headline point (the summary's shape); bar colour is the "
        "numerics verdict.",
        empty="No speedup to show: fp32 or the other precisions did not complete.",
    )
    _headline_bars(
        section,
        analysis,
        problems,
        lambda m: m.speedup is not None,
        2,  # fp32 alone is not a comparison
        lambda b, t: plots.speedup_bars(
            [m.label for m in b], [m.speedup for m in b], [fmt.verdict_key(m) for m in b], title=t
        ),
    )
    return section


def execution_section(analysis: RunAnalysis, problems: list[str]) -> Section:
    """What torch.compile or CUDA graphs gain over the same precision run eagerly: the table
    and one bar plot per model and workload."""
    section = Section(
        "execution",
        "Execution gain vs eager",
        "Each compiled or graphed mode against the same precision run eagerly, at the headline "
        "point (speedups vs fp32 above compare the same execution). " + fmt.GAIN_CAPTION + ".",
        empty="Every mode ran eagerly, or no compiled or graphed mode has an eager counterpart.",
        table_headers=fmt.GAIN_HEADERS,
        table_rows=[fmt.gain_cells(gain) for gain in analysis.execution_gains],
    )
    by_group: dict[tuple[str, str], list[Any]] = {}
    for gain in analysis.execution_gains:
        if gain.gain is not None:
            by_group.setdefault((gain.model, gain.workload), []).append(gain)
    for group in analysis.groups:
        bars = by_group.get((group.model, group.workload))
        if not bars:
            continue
        title = f"{_title(group)} ({fmt.point_label(group)})"
        section.plots.append(
            _draw(
                title,
                lambda b=bars, t=title: plots.execution_gain_bars(
                    [g.mode for g in b], [g.gain for g in b], title=t
                ),
                problems,
            )
        )
    return section


def loss_section(analysis: RunAnalysis, problems: list[str]) -> Section:
    """Training loss per precision with the fp32 curve, and relative divergence per step."""
    section = Section(
        "loss",
        "Loss curves and divergence from fp32",
        "Loss of the deterministic divergence pass (or, without numerics, of the timed steps) "
        "per precision over fp32 (black); below, |loss − fp32 loss| / |fp32 loss| per step.",
        empty="No training losses in this run.",
    )
    for group in analysis.groups:
        if group.workload != "train":
            continue
        data = series.loss_data(analysis, group)
        if data is None:
            continue
        title = f"{group.model} / train (losses from {data.source})"
        section.plots.append(
            _draw(title, lambda d=data, t=title: plots.loss_curves(d, title=t), problems)
        )
    return section


def tradeoff_section(analysis: RunAnalysis, problems: list[str]) -> Section:
    """Speed vs accuracy scatter per workload, one panel per model, Pareto front marked."""
    section = Section(
        "tradeoff",
        "Speed vs accuracy",
        "Each mode's speedup against its divergence from fp32 (log scale; lower is closer). "
        "Modes on the Pareto front are ringed: none is both faster and closer to fp32.",
        empty="No mode has both a speedup and a divergence measurement (numerics absent?).",
        wide=True,
    )
    for workload, by_model in series.tradeoff_points(analysis).items():
        metric = next(
            (g.divergence_metric for g in analysis.groups if g.workload == workload), None
        )
        ylabel = fmt.METRIC_LABELS.get(metric or "", "divergence from fp32")
        section.plots.append(
            _draw(
                f"{workload}: speed vs accuracy",
                lambda b=by_model, t=workload, y=ylabel: plots.tradeoff_scatter(
                    b, title=t, ylabel=y
                ),
                problems,
            )
        )
    return section


def step_time_section(analysis: RunAnalysis, problems: list[str]) -> Section:
    """Step-time distributions per precision at the headline point."""
    section = Section(
        "step-times",
        "Step-time distributions",
        "Per-step time of the timed loop at the headline point: box = quartiles, "
        "whiskers = 1.5 IQR.",
        empty="No per-step timings in this run.",
    )
    for group in analysis.groups:
        samples = series.step_samples(analysis, group)
        if samples:
            title = f"{_title(group)} ({fmt.point_label(group)})"
            section.plots.append(
                _draw(title, lambda s=samples, t=title: plots.step_time_boxes(s, title=t), problems)
            )
    return section


def energy_section(analysis: RunAnalysis, problems: list[str]) -> Section:
    """GPU energy per sample per mode at the headline point (NVML)."""
    reasons = analysis.telemetry_reasons
    why = f" ({reasons[0]})" if len(reasons) == 1 else ""
    section = Section(
        "energy",
        "Energy per sample",
        "GPU energy over the timed steps (NVML's energy counter, else integrated power) per "
        "sample, at each model and workload's headline point; lower is better.",
        empty=f"No GPU energy in this run{why}.",
    )
    _headline_bars(
        section,
        analysis,
        problems,
        lambda m: m.energy_per_sample_j is not None,
        1,
        lambda b, t: plots.energy_bars(
            [m.label for m in b], [m.energy_per_sample_j for m in b], title=t
        ),
    )
    return section


def activation_section(analysis: RunAnalysis, problems: list[str]) -> Section:
    """Activation range per module against the fp16 limit."""
    section = Section(
        "activations",
        "Activation range and fp16 headroom",
        "Largest |activation| per module in an fp32 run, against the largest fp16 value. Red: "
        "overflows fp16; amber: within 16× of it.",
        empty="No activation range analysis in this run.",
        wide=True,
    )
    for profile in series.activation_profiles(analysis):
        title = f"{profile.model}: max |activation| per module"
        section.plots.append(
            _draw(title, lambda p=profile, t=title: plots.activation_headroom(p, title=t), problems)
        )
    return section


# ---------------------------------------------------------------------------------------------
# Tables of the page
# ---------------------------------------------------------------------------------------------


@dataclass
class SummaryRow:
    """One formatted row of a summary table."""

    precision: str
    status: str
    reason: str | None
    rate: str
    speedup: str
    peak: str
    saving: str
    verdict: str
    verdict_class: str
    divergence: str
    mark: str  # "recommended", "speed-only" or ""
    extras: list[str] = field(default_factory=list)  # cells of fmt.extra_columns


def summary_rows(group: GroupSummary) -> list[SummaryRow]:
    """The summary table of one model x workload, formatted."""
    rows = []
    extras = fmt.extra_columns(group)
    for mode in group.modes:
        mark = ""
        if mode.label == group.recommended:
            mark = "recommended"
        elif mode.label == group.speed_only:
            mark = "speed-only"
        rows.append(
            SummaryRow(
                precision=mode.label,
                status=mode.status,
                reason=mode.reason,
                rate=fmt.fmt_number(mode.rate),
                speedup=fmt.fmt_speedup(mode.speedup, mode.host_bound),
                peak=fmt.fmt_bytes(mode.peak_bytes),
                saving=fmt.fmt_saving(mode.memory_saving),
                verdict=fmt.fmt_verdict(mode),
                verdict_class=f"v-{fmt.verdict_key(mode) or 'none'}",
                divergence=fmt.fmt_divergence(mode.divergence),
                mark=mark,
                extras=fmt.extra_cells(mode, extras),
            )
        )
    return rows


@dataclass(frozen=True)
class RawColumn:
    """A column of the raw table: its header, the value it shows of a case, how that reads,
    whether it is a number (sorted by value, right-aligned) and whether it is shown only where
    some case has a value in it."""

    header: str
    value: Callable[[CaseRow], Any]
    formatter: Callable[[Any], str]
    numeric: bool
    optional: bool = False


def _whole(value: int) -> str:
    return str(int(value))


def _verdict_key(row: CaseRow) -> str | None:
    return fmt.case_verdict_key(row.verdict, row.numerics_error)


RAW_COLUMNS: list[RawColumn] = [
    RawColumn("case", lambda r: r.id, str, False),
    RawColumn("model", lambda r: r.model, str, False),
    RawColumn("workload", lambda r: r.workload, str, False),
    RawColumn("precision", lambda r: r.mode, str, False),
    RawColumn("batch", lambda r: r.batch_size, _whole, True),
    RawColumn("seq", lambda r: r.seq_len, _whole, True),
    RawColumn("status", lambda r: r.status, str, False),
    RawColumn("median step", lambda r: r.median_s, fmt.fmt_seconds, True),
    RawColumn("samples/s", lambda r: r.samples_per_s, fmt.fmt_number, True),
    RawColumn("tokens/s", lambda r: r.tokens_per_s, fmt.fmt_number, True),
    RawColumn("speedup", lambda r: r.speedup, fmt.fmt_speedup, True),
    RawColumn("peak memory", lambda r: r.peak_bytes, fmt.fmt_bytes, True),
    RawColumn("saving", lambda r: r.memory_saving, fmt.fmt_saving, True),
    RawColumn("verdict", _verdict_key, str, False),
    RawColumn("divergence", lambda r: r.divergence, fmt.fmt_divergence, True),
    *(RawColumn(c.header, c.value, c.formatter, True, optional=True) for c in fmt.EXTRA_COLUMNS),
    RawColumn("warm-up", lambda r: r.warmup_steps, _whole, True),
    RawColumn("CV", lambda r: r.cv, fmt.fmt_fraction, True),
    RawColumn("robust CV", lambda r: r.robust_cv, fmt.fmt_fraction, True),
    RawColumn("reason", lambda r: r.reason, str, False),
]


@dataclass
class RawCell:
    """A raw-table cell: its text and, for numbers, the value the inline script sorts by."""

    text: str
    sort: str | None


def raw_table(analysis: RunAnalysis) -> tuple[list[tuple[str, bool]], list[list[RawCell]]]:
    """Headers (name, numeric?) and formatted cells for every case; an optional column
    (fmt.EXTRA_COLUMNS) only where some case has a value in it."""
    rows = analysis.rows
    columns = [
        c for c in RAW_COLUMNS if not c.optional or any(c.value(r) is not None for r in rows)
    ]
    headers = [(c.header, c.numeric) for c in columns]
    body = []
    for row in rows:
        cells = []
        for column in columns:
            value = column.value(row)
            text = fmt.MISSING if value is None else column.formatter(value)
            sort = None
            if column.numeric and value is not None and math.isfinite(value):
                sort = repr(float(value))
            cells.append(RawCell(text, sort))
        body.append(cells)
    return headers, body


def results_frame(results: Sequence[CaseResult]) -> pd.DataFrame:
    """One row per case (results.csv) with nested keys dotted (timing.median_s); list-valued
    fields (per-step times, loss curves) left out: their statistics are the columns beside them."""
    latest = {r.case.id: r for r in results}
    if not latest:
        return pd.DataFrame(columns=["case.id", "status"])
    frame = pd.json_normalize([r.to_dict() for r in latest.values()], sep=".")
    lists = [c for c in frame.columns if frame[c].map(lambda v: isinstance(v, list | dict)).any()]
    frame = frame.drop(columns=lists)
    first = [c for c in ("case.id", "status", "reason") if c in frame.columns]
    return frame[first + [c for c in frame.columns if c not in first]]


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
    tf32_text = None
    if tf32:
        tf32_text = ", ".join(f"{k}: {_text(v) or fmt.MISSING}" for k, v in tf32.items())
    cpu_text = _text(cpu.get("model"))
    cores = [
        f"{cpu[key]} {label}"
        for key, label in (("logical_cores", "logical cores"), ("torch_threads", "torch threads"))
        if _text(cpu.get(key))
    ]
    if cpu_text and cores:
        cpu_text += f" ({', '.join(cores)})"
    argv = env.get("argv")
    command = " ".join(str(a) for a in argv) if isinstance(argv, list) and argv else None
    memory_text = fmt.fmt_bytes(float(memory)) if isinstance(memory, (int, float)) else None
    candidates = [
        ("suite", _text(env.get("suite"))),
        ("started", _text(env.get("started_at"))),
        ("device", _text(env.get("device"))),
        ("device name", _text(env.get("device_name"))),
        ("GPU", _text(gpu.get("name"))),
        ("compute capability", _text(gpu.get("compute_capability"))),
        ("GPU memory", memory_text),
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


def run_warnings(run: Run, analysis: RunAnalysis) -> list[str]:
    """Header warnings: unreadable lines, failed, out-of-memory and skipped cases."""
    out = list(run.warnings)
    counts = analysis.status_counts
    failed = {s: counts[s] for s in FAILURES if counts.get(s)}
    if failed:
        detail = ", ".join(f"{n} {s}" for s, n in failed.items())
        out.append(f"{sum(failed.values())} case(s) failed ({detail}).")
    if counts.get("oom"):
        out.append(f"{counts['oom']} case(s) ran out of memory.")
    skipped = analysis.skipped_precisions
    if skipped:
        modes = ", ".join(f"{p} ({n})" for p, n in skipped.items())
        out.append(f"Skipped modes: {modes}.")
    unstable = analysis.unstable_cases
    if unstable:
        listed = ", ".join(f"{cid} (robust CV {fmt.fmt_fraction(cv)})" for cid, cv in unstable[:8])
        more = f" and {len(unstable) - 8} more" if len(unstable) > 8 else ""
        out.append(
            f"{len(unstable)} case(s) with unstable timing (the timed steps spread more than "
            f"the suite's limit): {listed}{more}."
        )
    host_bound = analysis.host_bound_cases
    if host_bound:
        listed = ", ".join(
            f"{cid} (GPU busy {fmt.fmt_fraction(busy)})" for cid, busy in host_bound[:8]
        )
        more = f" and {len(host_bound) - 8} more" if len(host_bound) > 8 else ""
        out.append(
            f"{len(host_bound)} case(s) host-bound: the GPU was busy less than "
            f"{HOST_BOUND_BELOW:.0%} of the step, waiting on the host to launch kernels, so "
            f"their speed and speedups are the host's, floors for the precision: {listed}{more}."
        )
    throttled = analysis.throttled_cases
    if throttled:
        listed = ", ".join(f"{cid} ({why})" for cid, why in throttled[:8])
        more = f" and {len(throttled) - 8} more" if len(throttled) > 8 else ""
        out.append(f"{len(throttled)} case(s) ran on a throttled GPU: {listed}{more}.")
    if not analysis.rows:
        out.append("This run has no results yet.")
    elif "ok" not in counts:
        out.append("No case completed successfully.")
    return out


def report_title(run: Run) -> str:
    """The suite's name, else the run directory's."""
    return str(run.env.get("suite") or run.path.name or "mpbench run")


def build_context(run: Run, analysis: RunAnalysis, csv_name: str | None = CSV_FILE) -> dict:
    """Everything the template shows."""
    env = run.env
    problems: list[str] = []
    sections = [
        per_batch_section(analysis, env, "throughput", problems),
        per_batch_section(analysis, env, "memory", problems),
        speedup_section(analysis, problems),
        execution_section(analysis, problems),
        loss_section(analysis, problems),
        tradeoff_section(analysis, problems),
        step_time_section(analysis, problems),
        energy_section(analysis, problems),
        activation_section(analysis, problems),
    ]
    headers, raw_rows = raw_table(analysis)
    started = env.get("started_at") or min(
        (r.started_at for r in analysis.results.values() if r.started_at), default=None
    )
    return {
        "title": report_title(run),
        "started_at": started,
        "run_path": str(run.path),
        "env_items": environment_items(env),
        "warnings": run_warnings(run, analysis) + problems,
        "counts": analysis.status_counts,
        "n_cases": len(analysis.rows),
        "summaries": [
            {
                "group": g,
                "key": f"{g.model}/{g.workload}",
                "title": _title(g),
                "point": fmt.point_label(g),
                "recommendation": fmt.recommendation_text(g),
                "metric": fmt.METRIC_LABELS.get(g.divergence_metric or "", "divergence"),
                "rows": summary_rows(g),
                "extra_headers": [column.header for column in fmt.extra_columns(g)],
                "caveats": fmt.caveat_lines(g) + fmt.quality_lines(g),
            }
            for g in analysis.groups
        ],
        "sections": sections,
        "problems": analysis.problems,
        "others": [
            {
                "id": r.id,
                "status": r.status,
                "median": fmt.fmt_seconds(r.median_s),
                "peak": fmt.fmt_bytes(r.peak_bytes),
            }
            for r in analysis.benchmark_rows
        ],
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


def render_html(
    run: Run, analysis: RunAnalysis | None = None, csv_name: str | None = CSV_FILE
) -> str:
    """The report as one HTML string."""
    with run.manifest.styles().shown():  # the run's own order and colours for its modes
        analysis = analysis if analysis is not None else analyze(run.results)
        context = build_context(run, analysis, csv_name)
    return _environment().get_template(TEMPLATE).render(**context)


def report_json(analysis: RunAnalysis) -> str:
    """The analysis as JSON text (`mpbench report --json`)."""
    return json.dumps(analysis.to_dict(), indent=2, allow_nan=False) + "\n"


def render_report(
    run: Run | str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    analysis: RunAnalysis | None = None,
) -> Path:
    """Render a run's report to `out` (default RUN_DIR/index.html), with results.csv and summary.md
    beside it; returns the HTML's path. Raises OutputError (and leaves no temp file) when a file
    cannot be written."""
    if not isinstance(run, Run):
        run = load_run(run)
    out_path = Path(out) if out is not None else run.path / REPORT_FILE
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(out_path, exc) from None
    analysis = analysis if analysis is not None else analyze(run.results)
    csv_path = out_path.parent / CSV_FILE
    write_text_atomic(csv_path, results_frame(run.results).to_csv(index=False))
    write_text_atomic(out_path.parent / SUMMARY_FILE, summary_markdown(analysis, report_title(run)))
    write_text_atomic(out_path, render_html(run, analysis, csv_name=csv_path.name))
    return out_path

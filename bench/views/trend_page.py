"""The history's views: the trend page (one self-contained HTML file, inline CSS and SVG, no
external URL, in the run report's style) and the terminal tables of `mpbench history`.

The page says what the history holds, then the latest change points first (what moved, by how
much, and what changed in the environment between the runs on either side), then per device
model and suite: the runs whose environment changed, and per case small multiples of every
metric over the runs, change points marked by lettered lines with the level of each segment,
environment changes by grey ticks on the axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import matplotlib
from markupsafe import Markup
from matplotlib.figure import Figure
from rich.table import Table

from bench.analysis.changepoints import ALPHA
from bench.analysis.history import (
    HISTORY_METRIC_SPECS,
    Change,
    Series,
    env_changes,
    latest_changes,
    uses_log,
)
from bench.results.history import StoredRun
from bench.views import format as fmt
from bench.views.svg import STYLE, color_of, literal, to_svg

WORSE_COLOR = "#d62728"
BETTER_COLOR = "#4c9a2a"
LEVEL_COLOR = "#888888"
COLUMNS = 4  # small multiples per row
PANEL_IN = (2.6, 1.7)  # one metric's panel, inches
LATEST_CHANGES_SHOWN = 50


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


def fmt_metric(metric: str, value: float | None) -> str:
    """A metric's value with its unit."""
    if value is None or not math.isfinite(value):
        return fmt.MISSING
    if metric == "throughput":
        return f"{fmt.fmt_number(value)}/s"
    if metric == "step_time":
        return fmt.fmt_seconds(value)
    if metric == "peak_memory":
        return fmt.fmt_bytes(value)
    if metric == "energy_per_sample":
        return f"{value:.3g} J"
    if metric == "mfu":
        return f"{value * 100:.1f}%"
    if metric.endswith("_db"):
        return f"{value:.1f} dB"
    return f"{value:.3g}"


def fmt_change(change: Change) -> str:
    """'2.1k/s -> 1.4k/s (-33.0%)'."""
    point = change.point
    pct = point.change_pct
    pct_text = f"{pct:+.1f}%" if math.isfinite(pct) else "from 0"
    before, after = fmt_metric(change.metric, point.before), fmt_metric(change.metric, point.after)
    latest = "; the latest run only, so far" if point.provisional else ""
    return f"{before} -> {after} ({pct_text}{latest})"


def fmt_env(changes: Sequence[object]) -> str:
    """'torch 2.11 -> 2.13; driver 570 -> 580', or a dash."""
    return "; ".join(str(c) for c in changes) or "nothing recorded changed"


def _when(run: StoredRun) -> str:
    return run.started_at[:16].replace("T", " ")


# ---------------------------------------------------------------------------------------------
# Terminal tables
# ---------------------------------------------------------------------------------------------


def runs_table(runs: Sequence[StoredRun], where: str) -> Table:
    """`mpbench history list`: one row per run."""
    table = Table(
        "run",
        "started (UTC)",
        "suite",
        "device",
        "cases",
        "driver",
        "CUDA",
        "torch",
        "threads",
        "commit",
        title=f"mpbench history: {len(runs)} run(s) in {where}",
    )
    for run in runs:
        env = run.environment
        table.add_row(
            f"#{run.id}",
            _when(run),
            run.suite,
            run.device_model,
            str(run.cases),
            env.get("driver") or "",
            env.get("cuda") or "",
            env.get("torch") or "",
            str(env.get("torch_threads") or ""),
            (env.get("git_commit") or "")[:12],
        )
    return table


def case_table(series: Sequence[Series], metrics: Sequence[str]) -> list[Table]:
    """`mpbench history show CASE`: per device model and suite, a row per run, a column per
    metric; a value right after a change point is marked ▲ (up) or ▼ (down)."""
    groups: dict[tuple[str, str], list[Series]] = {}
    for s in series:
        groups.setdefault((s.device_model, s.suite), []).append(s)
    tables = []
    for (device, suite), group in groups.items():
        shown = [m for m in metrics if any(s.metric == m for s in group)]
        by_metric = {s.metric: s for s in group}
        runs: dict[int, StoredRun] = {}
        for s in group:
            for p in s.points:
                runs[p.run.id] = p.run
        ordered = sorted(runs.values(), key=lambda r: (r.started_at, r.id))
        table = Table(
            "run",
            "started (UTC)",
            *(HISTORY_METRIC_SPECS[m].label for m in shown),
            title=f"{group[0].case_id}: suite {suite} on {device}",
            caption="▲/▼: a change point (the level stepped up/down from this run on)",
        )
        for run in ordered:
            cells = []
            for metric in shown:
                s = by_metric[metric]
                value = next((p.value for p in s.points if p.run.id == run.id), None)
                mark = next(
                    (
                        "▲" if c.point.after > c.point.before else "▼"
                        for c in s.changes
                        if c.after.id == run.id
                    ),
                    "",
                )
                cells.append(fmt_metric(metric, value) + (f" {mark}" if mark else ""))
            table.add_row(f"#{run.id}", _when(run), *cells)
        tables.append(table)
    return tables


def changes_table(changes: Sequence[Change], title: str) -> Table:
    """Change points, as given (latest first), with what changed in the environment."""
    table = Table(
        "after run", "case", "metric", "before -> after", "p", "what changed", title=title
    )
    for change in changes:
        style = "red" if change.worse else "green"
        table.add_row(
            f"#{change.before.id} -> #{change.after.id} ({_when(change.after)})",
            change.case_id,
            change.spec.label,
            fmt_change(change),
            f"{change.point.p_value:.2g}",
            fmt_env(change.changes),
            style=style,
        )
    return table


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _precision_of(case_id: str) -> str:
    """The precision of a sweep case id (model/workload/precision/...), for its colour."""
    parts = case_id.split("/")
    return parts[2] if len(parts) > 2 else case_id


def _scale(metric: str) -> tuple[float, str]:
    """(factor, unit) the axis shows a metric in."""
    return {
        "step_time": (1e3, "ms"),
        "peak_memory": (1 / 2**20, "MiB"),
        "mfu": (100.0, "%"),
        "throughput": (1.0, "samples/s"),
        "energy_per_sample": (1.0, "J"),
    }.get(metric, (1.0, HISTORY_METRIC_SPECS[metric].unit))


def case_figure(case_id: str, series: Sequence[Series], runs: Sequence[StoredRun]) -> str:
    """Small multiples of one case: a panel per metric over the group's runs, each change point
    a lettered line (red: worse, green: better) with the level of each segment, environment
    changes as grey ticks at the bottom."""
    position = {run.id: i for i, run in enumerate(runs)}
    env_steps = [
        i for i in range(1, len(runs)) if env_changes(runs[i - 1].environment, runs[i].environment)
    ]
    letters = change_letters(series)
    color = color_of(_precision_of(case_id))
    rows = math.ceil(len(series) / COLUMNS)
    cols = min(COLUMNS, len(series))
    with matplotlib.rc_context({**STYLE, "font.size": 7, "axes.titlesize": 7.5}):
        fig = Figure(figsize=(PANEL_IN[0] * cols, PANEL_IN[1] * rows), layout="constrained")
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax in axes.flat[len(series) :]:
            ax.set_visible(False)
        for ax, s in zip(axes.flat, series):
            factor, unit = _scale(s.metric)
            xs = [position[p.run.id] for p in s.points]
            ys = [p.value * factor for p in s.points]
            ax.plot(xs, ys, marker="o", markersize=2.5, linewidth=1, color=color)
            _draw_levels(ax, s, position, factor)
            for change in s.changes:
                x = (position[change.before.id] + position[change.after.id]) / 2
                line = WORSE_COLOR if change.worse else BETTER_COLOR
                ax.axvline(x, color=line, linestyle="--", linewidth=0.9)
                ax.annotate(
                    letters[change.after.id],
                    (x, 1.0),
                    xycoords=("data", "axes fraction"),
                    xytext=(2, -8),
                    textcoords="offset points",
                    color=line,
                    fontweight="bold",
                )
            for i in env_steps:
                ax.plot(
                    [i - 0.5],
                    [0],
                    marker="^",
                    color=LEVEL_COLOR,
                    markersize=4,
                    clip_on=False,
                    transform=ax.get_xaxis_transform(),
                )
            ax.set_title(literal(f"{s.spec.label}" + (f" ({unit})" if unit else "")))
            if uses_log(s.spec, s.values) and max(s.values) / min(s.values) > 20:
                ax.set_yscale("log")
            ax.set_xlim(-0.5, max(len(runs) - 0.5, 0.5))
            ticks = _ticks(len(runs))
            ax.set_xticks(ticks, [f"#{runs[i].id}" for i in ticks])
        fig.suptitle(literal(case_id), fontsize=8.5, fontweight="bold")
        return to_svg(fig, id_prefix="t")


def _draw_levels(ax: Any, s: Series, position: dict[int, int], factor: float) -> None:
    """The level (geometric mean or mean) of each segment between change points, dotted."""
    if not s.changes:
        return
    bounds = [0, *(_index(s, c) for c in s.changes)]
    bounds.append(len(s.points))
    levels = [s.changes[0].point.before, *(c.point.after for c in s.changes)]
    for (a, b), level in zip(zip(bounds, bounds[1:]), levels):
        x0, x1 = position[s.points[a].run.id], position[s.points[b - 1].run.id]
        ax.hlines(
            level * factor, x0 - 0.3, x1 + 0.3, colors=LEVEL_COLOR, linestyles=":", linewidth=1
        )


def _index(s: Series, change: Change) -> int:
    """The index in the series of the first point after a change."""
    return next(i for i, p in enumerate(s.points) if p.run.id == change.after.id)


def _ticks(n: int, most: int = 6) -> list[int]:
    """At most `most` evenly spread positions, the last included."""
    if n <= most:
        return list(range(n))
    step = math.ceil(n / most)
    ticks = list(range(0, n, step))
    if ticks[-1] != n - 1:
        ticks.append(n - 1)
    return ticks


def change_letters(series: Sequence[Series]) -> dict[int, str]:
    """A letter per run that a change point of the case steps into (A, B, ... in run order),
    by that run's id: the change points of several metrics at one run share it."""
    after = sorted({(c.after.started_at, c.after.id) for s in series for c in s.changes})
    return {run_id: _letter(i) for i, (_, run_id) in enumerate(after)}


def _letter(i: int) -> str:
    return chr(ord("A") + i % 26) + ("" if i < 26 else str(i // 26))


# ---------------------------------------------------------------------------------------------
# Page
# ---------------------------------------------------------------------------------------------


@dataclass
class CaseSection:
    """One case's figure and the key to its lettered change points."""

    case_id: str
    svg: Markup | None
    error: str | None
    key: list[tuple[str, str, bool]]  # (letter, text, worse)


@dataclass
class GroupSection:
    """One device model and suite."""

    device: str
    suite: str
    runs: list[StoredRun]
    env_rows: list[tuple[str, str, str]]  # (run, started, what changed)
    cases: list[CaseSection]


def _group_sections(runs: Sequence[StoredRun], series: Sequence[Series]) -> list[GroupSection]:
    groups: dict[tuple[str, str], list[StoredRun]] = {}
    for run in runs:
        groups.setdefault((run.device_slug, run.suite), []).append(run)
    by_group: dict[tuple[str, str], dict[str, list[Series]]] = {}
    for s in series:
        by_group.setdefault((s.device_slug, s.suite), {}).setdefault(s.case_id, []).append(s)
    order = list(HISTORY_METRIC_SPECS)
    sections = []
    for key, group_runs in groups.items():
        env_rows = [
            (f"#{b.id}", _when(b), fmt_env(env_changes(a.environment, b.environment)))
            for a, b in zip(group_runs, group_runs[1:])
            if env_changes(a.environment, b.environment)
        ]
        cases = []
        for case_id, case_series in sorted(by_group.get(key, {}).items()):
            case_series = sorted(case_series, key=lambda s: order.index(s.metric))
            letters = change_letters(case_series)
            changes = sorted(
                (c for s in case_series for c in s.changes),
                key=lambda c: (letters[c.after.id], order.index(c.metric)),
            )
            keyed = [
                (
                    letters[c.after.id],
                    f"{c.spec.label}: {fmt_change(c)} between #{c.before.id} and #{c.after.id} "
                    f"(p={c.point.p_value:.2g}); changed: {fmt_env(c.changes)}",
                    c.worse,
                )
                for c in changes
            ]
            try:
                svg, error = Markup(case_figure(case_id, case_series, group_runs)), None
            except Exception as exc:  # noqa: BLE001 - one bad figure must not cost the page
                svg, error = None, f"could not draw ({type(exc).__name__}: {exc})"
            cases.append(CaseSection(case_id, svg, error, keyed))
        sections.append(
            GroupSection(group_runs[0].device_model, key[1], list(group_runs), env_rows, cases)
        )
    return sections


def listed_changes(changes: Sequence[Change]) -> list[Change]:
    """The change points to list: a step-time change is left out where the same case's
    throughput stepped at the same run (one is the inverse of the other)."""
    throughput = {(c.case_id, c.after.id) for c in changes if c.metric == "throughput"}
    return [
        c
        for c in changes
        if not (c.metric == "step_time" and (c.case_id, c.after.id) in throughput)
    ]


def change_events(changes: Sequence[Change]) -> list[dict[str, Any]]:
    """One row per run that change points step into (latest first): how many cases and metrics
    moved which way, their median change, and what changed in the environment."""
    by_run: dict[tuple[str, str, int], list[Change]] = {}
    for c in listed_changes(changes):
        by_run.setdefault((c.after.device_slug, c.after.suite, c.after.id), []).append(c)
    events = []
    for items in by_run.values():
        first = items[0]
        worse = [c for c in items if c.worse]
        metrics = sorted({c.spec.label for c in items})
        pcts = sorted(c.point.change_pct for c in items if math.isfinite(c.point.change_pct))
        median = pcts[len(pcts) // 2] if pcts else None
        summary = (
            f"{len(worse)} worse, {len(items) - len(worse)} better in "
            f"{len({c.case_id for c in items})} case(s): {', '.join(metrics)}"
        )
        events.append(
            {
                "runs": f"#{first.before.id} -> #{first.after.id} ({_when(first.after)})",
                "device": first.after.device_model,
                "suite": first.after.suite,
                "summary": summary,
                "median": f"{median:+.1f}%" if median is not None else fmt.MISSING,
                "env": fmt_env(first.changes),
                "worse": len(worse) * 2 >= len(items),
            }
        )
    return events


TEMPLATES = Path(__file__).parent / "templates"


def render_trend_page(runs: Sequence[StoredRun], series: Sequence[Series], where: str) -> str:
    """The trend page as one HTML string."""
    changes = latest_changes(series)
    device_of = {s.device_slug: s.device_model for s in series}
    rows = [
        {
            "before": c.before,
            "after": c.after,
            "when": _when(c.after),
            "device": device_of.get(c.after.device_slug, c.after.device_model),
            "suite": c.after.suite,
            "case_id": c.case_id,
            "metric": c.spec.label,
            "change": fmt_change(c),
            "p": f"{c.point.p_value:.2g}",
            "env": fmt_env(c.changes),
            "worse": c.worse,
        }
        for c in listed_changes(changes)[:LATEST_CHANGES_SHOWN]
    ]
    groups = _group_sections(runs, series)
    events = change_events(changes)
    devices = sorted({r.device_model for r in runs})
    worse = sum(c.worse for c in changes)
    headline = (
        f"{len(runs)} runs on {len(devices)} device model(s) ({', '.join(devices)}), "
        f"{len({(r.device_slug, r.suite) for r in runs})} series group(s); "
        f"{len(changes)} change point(s), {worse} of them for the worse"
    )
    context = {
        "title": f"mpbench history: {where}",
        "headline": headline,
        "alpha": f"{ALPHA:g}",
        "changes": rows,
        "events": events,
        "more": len(listed_changes(changes)) > LATEST_CHANGES_SHOWN,
        "total": len(listed_changes(changes)),
        "groups": groups,
        "where": where,
    }
    # Autoescaping everything: case ids, hosts and versions come from run files.
    loader = jinja2.FileSystemLoader(TEMPLATES)
    env = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined)
    env.trim_blocks = env.lstrip_blocks = True
    return env.get_template("trend.html.j2").render(**context)

"""The comparison page: one self-contained HTML file (inline CSS and SVG, no external URLs).

It says which device is which first (comparing an A100 with an H100 is a first-class use), then
the verdict and findings, then the change of each metric per case (one figure per model, bars
grouped by precision, 95% bootstrap intervals for timing), then every case in a table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import jinja2
import matplotlib
from markupsafe import Markup
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from bench.analysis.assessment import Assessment
from bench.analysis.compare import METRICS, CaseComparison
from bench.results.manifest import RunManifest
from bench.results.schema import execution_rank, precision_rank
from bench.views.comparison import (
    NUMERIC_COLUMNS,
    TABLE_HEADERS,
    device_lines,
    headline,
    table_rows,
)
from bench.views.format import MISSING
from bench.views.svg import STYLE, color_of, to_svg

PLOTTED_METRICS = ("throughput", "peak_memory", "divergence")


@dataclass(frozen=True)
class Bar:
    """One case's change of one metric, ready to draw."""

    label: str
    precision: str
    change_pct: float
    low_pct: float | None
    high_pct: float | None
    significant: bool | None


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def bars_for(cases: list[CaseComparison], metric: str) -> list[Bar]:
    """The bars of one model's figure: grouped by precision, then workload, batch, length."""
    bars = []
    ordered = sorted(
        (c for c in cases if metric in c.metrics),
        key=lambda c: (
            precision_rank(c.case.precision),
            execution_rank(c.case.execution),
            c.case.workload,
            c.case.batch_size or 0,
            c.case.seq_len or 0,
            c.case_id,
        ),
    )
    for case in ordered:
        delta = case.metrics[metric]
        if delta.ratio is None or not math.isfinite(delta.change_pct):
            continue
        low = (delta.ci_low - 1) * 100 if delta.ci_low is not None else None
        high = (delta.ci_high - 1) * 100 if delta.ci_high is not None else None
        c = case.case
        if c.label is None:
            label = f"{c.mode} {c.workload} bs{c.batch_size} seq{c.seq_len}"
        else:
            label = case.case_id
        bars.append(Bar(label, c.mode, delta.change_pct, low, high, delta.significant))
    return bars


def change_figure(title: str, bars: list[Bar], metric: str, threshold_pct: float | None) -> str:
    """Horizontal bars of percent change per case; faded when not significant; threshold lines."""
    spec = METRICS[metric]
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(7.5, 1.1 + 0.22 * len(bars)), layout="constrained")
        ax = fig.add_subplot()
        ys = list(range(len(bars)))[::-1]
        for y, bar in zip(ys, bars):
            color = color_of(bar.precision)
            ax.barh(y, bar.change_pct, color=color, alpha=1.0 if bar.significant else 0.35)
            if bar.low_pct is not None and bar.high_pct is not None:
                ax.plot([bar.low_pct, bar.high_pct], [y, y], color="#444444", linewidth=1)
        ax.axvline(0, color="#333333", linewidth=0.8)
        if threshold_pct is not None:
            bad = -threshold_pct if spec.higher_is_better else threshold_pct
            ax.axvline(bad, color="#d62728", linestyle="--", linewidth=0.9, label="threshold")
            ax.axvline(-bad, color="#4c9a2a", linestyle=":", linewidth=0.9)
        ax.set_yticks(ys, [b.label for b in bars])
        better = "higher" if spec.higher_is_better else "lower"
        ax.set_xlabel(f"{spec.label}: change CURRENT vs BASE, % ({better} is better)")
        ax.set_title(title)
        ax.grid(axis="y", visible=False)
        seen = []
        for bar in bars:
            if bar.precision not in seen:
                seen.append(bar.precision)
        handles = [Patch(color=color_of(p), label=p) for p in seen]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return to_svg(fig, id_prefix="c")


@dataclass
class PlotSection:
    """The figures of one metric."""

    metric: str
    title: str
    svgs: list[Markup]
    errors: list[str]
    notes: list[str] = field(default_factory=list)


def plot_sections(assessment: Assessment) -> list[PlotSection]:
    """One section per plotted metric, one figure per model."""
    by_model: dict[str, list[CaseComparison]] = {}
    for case in assessment.comparison.matched:
        by_model.setdefault(case.case.model or "benchmarks", []).append(case)
    sections = []
    for metric in PLOTTED_METRICS:
        section = PlotSection(metric, METRICS[metric].label, [], [])
        for model, cases in by_model.items():
            bars = bars_for(cases, metric)
            if not bars:
                continue
            if all(abs(b.change_pct) < 0.05 for b in bars):
                section.notes.append(f"{model}: no change in any case.")
                continue
            try:
                svg = change_figure(model, bars, metric, assessment.config.threshold(metric))
            except Exception as exc:  # noqa: BLE001 - one bad figure must not cost the page
                section.errors.append(f"{model}: could not draw ({type(exc).__name__}: {exc})")
                continue
            section.svgs.append(Markup(svg))
        if section.svgs or section.errors or section.notes:
            sections.append(section)
    return sections


# ---------------------------------------------------------------------------------------------
# Page
# ---------------------------------------------------------------------------------------------


def _device_rows(assessment: Assessment) -> list[dict[str, Any]]:
    """Rows of the BASE/CURRENT table; `differs` marks a row whose values differ."""
    comp = assessment.comparison
    b, c = comp.base_device, comp.current_device
    be, ce = comp.base_env, comp.current_env
    rows = [
        ("run", comp.base_label, comp.current_label),
        ("device", b.name, c.name),
        ("kind", b.kind, c.kind),
        ("compute capability", b.compute_capability, c.compute_capability),
        ("driver", b.driver, c.driver),
        ("CUDA", b.cuda, c.cuda),
        ("torch", b.torch, c.torch),
        ("transformers", b.transformers, c.transformers),
        ("torch threads", b.torch_threads, c.torch_threads),
        ("host", b.hostname, c.hostname),
        ("suite", be.get("suite"), ce.get("suite")),
        ("started", be.get("started_at"), ce.get("started_at")),
    ]
    out = []
    for name, bv, cv in rows:
        if bv is None and cv is None:
            continue
        differs = name not in ("run", "started", "host") and bv != cv
        out.append(
            {
                "name": name,
                "base": bv if bv is not None else MISSING,
                "current": cv if cv is not None else MISSING,
                "differs": differs,
            }
        )
    return out


TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1200px; padding: 1rem 1.5rem; color: #222; }
h1 { font-size: 1.5rem; margin-bottom: .3rem; }
h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: .85rem; margin: .5rem 0; }
th, td { border: 1px solid #ddd; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.differs td { background: #fff4d6; font-weight: 600; }
tr.fail td, tr.regression td { background: #fde2e1; }
tr.improvement td { background: #e3f4e1; }
tr.note td { background: #fffbe8; }
.banner { padding: .6rem 1rem; border-radius: 4px; font-weight: 600; margin: .6rem 0; }
.banner.fail { background: #fde2e1; color: #8a1111; }
.banner.pass { background: #e3f4e1; color: #1d5c12; }
.banner.info { background: #e8eef6; color: #1b3a5c; }
.alert { padding: .4rem .8rem; border-left: 4px solid #e0a100; background: #fffbe8; margin: .3rem 0; }
.alert.error { border-color: #d62728; background: #fde2e1; }
.muted { color: #666; font-size: .85rem; }
figure { margin: .8rem 0; }
figure svg { max-width: 100%; height: auto; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<div class="banner {{ banner_class }}">{{ headline }}</div>

<h2>Devices</h2>
<table>
<tr><th></th><th>BASE</th><th>CURRENT</th></tr>
{% for row in device_rows %}
<tr{% if row.differs %} class="differs"{% endif %}><th>{{ row.name }}</th><td>{{ row.base }}</td><td>{{ row.current }}</td></tr>
{% endfor %}
</table>
{% for level, text in alerts %}
<div class="alert {{ level }}">{{ text }}</div>
{% endfor %}
<p class="muted">Thresholds: {{ thresholds }}. Timing significance: two-sided Mann-Whitney U on
the per-step samples; peak memory and divergence count above a noise floor.</p>

{% for heading, findings in finding_groups %}
<h2>{{ heading }} ({{ findings|length }})</h2>
<table>
<tr><th>case</th><th>what</th><th>detail</th></tr>
{% for f in findings %}
<tr class="{{ f.kind }}"><td>{{ f.case_id }}</td><td>{{ f.what }}</td><td>{{ f.message }}</td></tr>
{% endfor %}
</table>
{% endfor %}

{% for section in sections %}
<h2>Change in {{ section.title }}</h2>
<p class="muted">Per case, CURRENT against BASE, grouped by precision; faded bars are not
significant; lines are 95% bootstrap intervals (timing); dashed red: the regression threshold.</p>
{% for svg in section.svgs %}<figure>{{ svg }}</figure>{% endfor %}
{% for error in section.errors %}<div class="alert">{{ error }}</div>{% endfor %}
{% for note in section.notes %}<p class="muted">{{ note }}</p>{% endfor %}
{% endfor %}

<h2>All cases ({{ rows|length }}, worst first)</h2>
<table>
<tr>{% for h in headers %}<th>{{ h }}</th>{% endfor %}</tr>
{% for outcome, row in rows %}
<tr class="{{ outcome }}">{% for cell in row %}<td{% if loop.index0 in numeric %} class="num"{% endif %}>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}
</table>
<p class="muted">* significant; ? not testable (too few samples). Generated by mpbench.</p>
</body>
</html>
"""


def _environment() -> jinja2.Environment:
    """Autoescaping everything: case ids, error messages and env.json values are untrusted."""
    return jinja2.Environment(
        loader=jinja2.DictLoader({"compare.html": TEMPLATE}),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_page(assessment: Assessment, gate: bool) -> str:
    """The page as one HTML string."""
    comp = assessment.comparison
    if gate:
        banner = "fail" if assessment.failed else "pass"
    else:
        banner = "info"
    title = f"mpbench {'check' if gate else 'compare'}: {comp.current_label} vs {comp.base_label}"
    if not comp.same_device_model:
        title += f" ({comp.current_device.name} vs {comp.base_device.name})"
    groups = [
        (heading, [f for f in assessment.findings if f.kind == kind])
        for kind, heading in (
            ("regression", "Regressions"),
            ("improvement", "Improvements"),
            ("note", "Notes"),
        )
    ]
    ordered = assessment.ordered_cases()
    styles = RunManifest.from_env(comp.current_env).styles()
    with styles.merged(RunManifest.from_env(comp.base_env).styles()).shown():
        sections = plot_sections(assessment)
    context = {
        "title": title,
        "banner_class": banner,
        "headline": headline(assessment, gate),
        "device_rows": _device_rows(assessment),
        "alerts": device_lines(assessment, gate)[2:],
        "thresholds": assessment.config.describe(),
        "finding_groups": [(h, f) for h, f in groups if f],
        "sections": sections,
        "headers": TABLE_HEADERS,
        "numeric": NUMERIC_COLUMNS,
        "rows": [
            (assessment.outcome(c.case_id), row) for c, row in zip(ordered, table_rows(assessment))
        ],
    }
    return _environment().get_template("compare.html").render(**context)

"""Figures for the report, each returned as inline SVG markup (text kept as text).

Figures are built on `matplotlib.figure.Figure` directly, never through pyplot: no backend is
selected, no window can open, nothing is registered globally that would need closing, and the host
program's own backend (a notebook's, say) is left alone. Style is applied per figure with
`rc_context`, so importing this module changes no global matplotlib setting either.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import matplotlib
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullLocator

from bench.report.analysis import (
    BASELINE,
    FP16_MAX,
    ActivationProfile,
    LossData,
    TradeoffPoint,
    precision_key,
)

STYLE = {
    "svg.fonttype": "none",  # text stays text: selectable, searchable, small
    "svg.hashsalt": "mpbench",  # deterministic ids, so a re-render gives the same file
    "svg.image_inline": True,
    "font.size": 8.5,
    "font.family": "sans-serif",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.titlesize": 9.5,
    "axes.titleweight": "bold",
    "legend.fontsize": 7.5,
    "legend.frameon": False,
    "lines.markersize": 4,
}
# Fixed colours so a precision looks the same in every figure; amp_* and its pure-dtype twin share
# a hue, the pure one dashed.
PRECISION_COLORS = {
    "fp32": "#222222",
    "tf32": "#8c8c8c",
    "amp_fp16": "#1f77b4",
    "fp16": "#1f77b4",
    "amp_bf16": "#2ca02c",
    "bf16": "#2ca02c",
    "fp8": "#9467bd",
}
EXTRA_COLORS = ("#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
DASHED = ("fp16", "bf16")
VERDICT_COLORS = {
    "ok": "#4c9a2a",
    "baseline": "#555555",
    "warn": "#e0a100",
    "diverged": "#d62728",
    "nan": "#7b0000",
}
NO_VERDICT_COLOR = "#9fb4c7"
WIDTH_IN = 5.0  # one plot of a grid of two per row at ~1200 px
HEIGHT_IN = 3.0

F = TypeVar("F", bound=Callable[..., Any])


def styled(func: F) -> F:
    """Run a plotting function under the report style without touching global rcParams."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with matplotlib.rc_context(STYLE):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def color_of(precision: str) -> str:
    """The precision's colour (unknown precisions get a stable one from the spare palette)."""
    if precision in PRECISION_COLORS:
        return PRECISION_COLORS[precision]
    digest = int(hashlib.sha1(precision.encode()).hexdigest(), 16)
    return EXTRA_COLORS[digest % len(EXTRA_COLORS)]


def linestyle_of(precision: str) -> str:
    """Dashed for a pure low-precision dtype, solid for amp and fp32."""
    return "--" if precision in DASHED else "-"


_TAG = re.compile(r"<[^>]+>")


def _prefix_ids(svg: str, prefix: str) -> str:
    """Make ids unique in the page: many SVGs inlined in one HTML document share an id space.

    Only tags are rewritten (matplotlib escapes '<' and '>' inside text and attributes), so text
    that happens to read id="..." is left as it is.
    """

    def fix(match: re.Match[str]) -> str:
        tag = match.group(0)
        tag = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}\1"', tag)
        tag = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}\1)", tag)
        return re.sub(r'href="#([^"]+)"', rf'href="#{prefix}\1"', tag)

    return _TAG.sub(fix, svg)


def to_svg(fig: Figure) -> str:
    """Serialise a figure as inline SVG: no XML prolog, DOCTYPE or RDF metadata (both carry
    external URLs), ids prefixed to be unique in the page."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    prefix = "f" + hashlib.sha1(text.encode()).hexdigest()[:10] + "-"
    return _prefix_ids(text, prefix)


def _new_figure(width_in: float = WIDTH_IN, height_in: float = HEIGHT_IN, **kwargs: Any) -> Figure:
    """A fresh figure with constrained layout (labels never clipped)."""
    return Figure(figsize=(width_in, height_in), layout="constrained", **kwargs)


def _batch_axis(ax: Any, batch_sizes: Sequence[int]) -> None:
    """Log2 x-axis with a tick at every measured batch size."""
    ax.set_xscale("log", base=2)
    ticks = sorted(set(batch_sizes))
    ax.set_xticks(ticks, [str(b) for b in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    if len(ticks) == 1:
        ax.set_xlim(ticks[0] / 1.5, ticks[0] * 1.5)
    ax.set_xlabel("batch size (log2)")


def _bytes_scale(max_bytes: float) -> tuple[float, str]:
    """Divisor and unit for an axis of byte counts."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if max_bytes >= size:
            return float(size), unit
    return 1.0, "B"


@styled
def throughput_vs_batch(
    series: dict[str, tuple[list[int], list[float]]], *, title: str, unit: str
) -> str:
    """One line per precision: throughput against batch size."""
    fig = _new_figure()
    ax = fig.add_subplot()
    for precision, (batch_sizes, values) in series.items():
        ax.plot(
            batch_sizes,
            values,
            marker="o",
            color=color_of(precision),
            linestyle=linestyle_of(precision),
            label=precision,
        )
    _batch_axis(ax, [b for bs, _ in series.values() for b in bs])
    ax.set_ylim(bottom=0)
    ax.set_ylabel(unit)
    ax.set_title(title)
    ax.legend(loc="best")
    return to_svg(fig)


@styled
def memory_vs_batch(
    series: dict[str, tuple[list[int], list[float]]],
    *,
    title: str,
    device_bytes: float | None = None,
) -> str:
    """One line per precision: peak memory against batch size, with the device's memory if known."""
    fig = _new_figure()
    ax = fig.add_subplot()
    peak_bytes = max(v for _, values in series.values() for v in values)
    divisor, unit = _bytes_scale(max(peak_bytes, device_bytes or 0))
    for precision, (batch_sizes, values) in series.items():
        ax.plot(
            batch_sizes,
            [v / divisor for v in values],
            marker="o",
            color=color_of(precision),
            linestyle=linestyle_of(precision),
            label=precision,
        )
    if device_bytes:
        ax.axhline(device_bytes / divisor, color="#d62728", linestyle=":", label="device memory")
        # A 141 GB device would flatten a few GB of use into the x-axis: switch to log.
        if device_bytes > 10 * peak_bytes:
            ax.set_yscale("log")
    if ax.get_yscale() == "linear":
        ax.set_ylim(bottom=0)
    _batch_axis(ax, [b for bs, _ in series.values() for b in bs])
    ax.set_ylabel(f"peak memory ({unit})")
    ax.set_title(title)
    ax.legend(loc="best")
    return to_svg(fig)


@styled
def speedup_bars(
    precisions: Sequence[str],
    speedups: Sequence[float],
    verdicts: Sequence[str | None],
    *,
    title: str,
) -> str:
    """Speedup vs fp32 per precision, coloured by numerics verdict, with the 1x line."""
    fig = _new_figure()
    ax = fig.add_subplot()
    colors = [VERDICT_COLORS.get(v or "", NO_VERDICT_COLOR) for v in verdicts]
    bars = ax.bar(list(precisions), list(speedups), color=colors)
    ax.bar_label(bars, labels=[f"{s:.2f}×" for s in speedups], padding=2, fontsize=7.5)
    ax.axhline(1.0, color="#222222", linewidth=0.8)
    ax.set_ylim(0, max([1.0, *speedups]) * 1.18)
    ax.set_ylabel("speedup vs fp32 (×)")
    ax.grid(axis="x", visible=False)
    ax.set_title(title)
    shown = dict.fromkeys(v or "" for v in verdicts)
    handles = [
        Patch(color=VERDICT_COLORS.get(v, NO_VERDICT_COLOR), label=v or "no numerics")
        for v in shown
    ]
    ax.legend(handles=handles, loc="upper left", title="verdict", title_fontsize=7.5)
    return to_svg(fig)


def _positive(values: Sequence[float]) -> list[float]:
    """Values for a log axis: zero, negative and NaN become NaN (a gap in the line)."""
    return [v if v > 0 and math.isfinite(v) else math.nan for v in values]


@styled
def loss_curves(data: LossData, *, title: str) -> str:
    """Loss per step for each precision over the fp32 curve; relative divergence per step below."""
    fig = _new_figure(WIDTH_IN, 4.2)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    if data.baseline:
        steps = range(1, len(data.baseline) + 1)
        top.plot(steps, data.baseline, color=color_of(BASELINE), linewidth=2.2, label="fp32")
    for precision, loss in data.curves.items():
        top.plot(
            range(1, len(loss) + 1),
            loss,
            color=color_of(precision),
            linestyle=linestyle_of(precision),
            linewidth=1.1,
            label=precision,
        )
    top.set_ylabel("loss")
    top.set_title(title)
    top.legend(loc="best", ncols=2)
    drawn = False
    for precision, divs in data.rel_div.items():
        positive = _positive(divs)
        if any(not math.isnan(v) for v in positive):
            drawn = True
            bottom.plot(
                range(1, len(divs) + 1),
                positive,
                color=color_of(precision),
                linestyle=linestyle_of(precision),
                linewidth=1.1,
            )
    if data.tolerance:
        bottom.axhline(data.tolerance, color="#d62728", linestyle=":", label="tolerance")
        bottom.legend(loc="best")
        drawn = True
    if drawn:
        bottom.set_yscale("log")
    else:
        bottom.text(
            0.5, 0.5, "no divergence data", ha="center", va="center", transform=bottom.transAxes
        )
    bottom.set_ylabel("|Δloss| / fp32")
    bottom.set_xlabel("step")
    return to_svg(fig)


@styled
def tradeoff_scatter(
    points_by_model: dict[str, list[TradeoffPoint]], *, title: str, ylabel: str
) -> str:
    """Speedup (x) vs divergence (y, log) per mode, one panel per model, Pareto front marked."""
    models = list(points_by_model)
    ncols = min(3, len(models))
    nrows = math.ceil(len(models) / ncols)
    fig = _new_figure(3.4 * ncols, 2.8 * nrows + 0.3)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    everything = [p.divergence for pts in points_by_model.values() for p in pts if p.divergence > 0]
    # An exact match (0) has no place on a log axis: draw it a decade below the smallest non-zero.
    floor = min(everything) / 10 if everything else 1e-12
    for ax, model in zip(axes, models, strict=False):
        points = sorted(points_by_model[model], key=lambda p: precision_key(p.precision))
        for p in points:
            y = max(p.divergence, floor)
            ax.scatter(
                [p.speedup],
                [y],
                s=46 if p.pareto else 26,
                color=color_of(p.precision),
                edgecolors="#000000" if p.pareto else "none",
                linewidths=1.2,
                zorder=3,
            )
            ax.annotate(
                p.precision, (p.speedup, y), xytext=(4, 3), textcoords="offset points", fontsize=7
            )
        front = sorted((p for p in points if p.pareto), key=lambda p: p.speedup)
        if len(front) > 1:
            ax.plot(
                [p.speedup for p in front],
                [max(p.divergence, floor) for p in front],
                color="#000000",
                linestyle="--",
                linewidth=0.8,
                zorder=2,
            )
        ax.axvline(1.0, color="#888888", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_title(model)
        ax.set_xlabel("speedup vs fp32 (×)")
        ax.set_ylabel(ylabel)
    for ax in axes[len(models) :]:
        ax.set_visible(False)
    fig.suptitle(f"{title}: ringed points and dashed line = Pareto front", fontsize=8.5)
    return to_svg(fig)


@styled
def step_time_boxes(samples_s: dict[str, list[float]], *, title: str) -> str:
    """Box plot of per-step time per precision, in milliseconds."""
    precisions = list(samples_s)
    fig = _new_figure(WIDTH_IN, 0.9 + 0.32 * len(precisions))
    ax = fig.add_subplot()
    data_ms = [[s * 1e3 for s in samples_s[p]] for p in precisions]
    boxes = ax.boxplot(
        data_ms,
        orientation="horizontal",
        tick_labels=precisions,
        patch_artist=True,
        widths=0.6,
        flierprops={"markersize": 2.5, "alpha": 0.6},
        medianprops={"color": "#000000"},
    )
    for patch, precision in zip(boxes["boxes"], precisions, strict=True):
        patch.set_facecolor(color_of(precision))
        patch.set_alpha(0.55)
    ax.invert_yaxis()  # precision order top to bottom, like the tables
    ax.set_xlabel("step time (ms)")
    ax.grid(axis="y", visible=False)
    ax.set_title(title)
    return to_svg(fig)


@styled
def activation_headroom(profile: ActivationProfile, *, title: str, max_modules: int = 60) -> str:
    """Max |activation| per module on a log axis, with the fp16 limit; overflowing modules in red."""
    order = list(range(len(profile.modules)))
    note = ""
    if len(order) > max_modules:
        # Keep the modules closest to (or over) the limit: those are the ones that matter.
        order = sorted(sorted(order, key=lambda i: profile.headroom_log2[i])[:max_modules])
        note = f" ({max_modules} of {len(profile.modules)} modules, least headroom)"
    names = [profile.modules[i] for i in order]
    values = [profile.max_abs[i] for i in order]
    colors = []
    for i in order:
        if profile.overflow[i]:
            colors.append("#d62728")
        elif profile.headroom_log2[i] < 4:  # within 16x of the limit: one bad batch away
            colors.append("#e0a100")
        else:
            colors.append("#1f77b4")
    fig = _new_figure(WIDTH_IN * 1.3, 1.0 + 0.17 * len(names))
    ax = fig.add_subplot()
    ax.barh(range(len(names)), [max(v, 1e-30) for v in values], color=colors)
    ax.set_yticks(range(len(names)), names, fontsize=6.5)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(FP16_MAX, color="#d62728", linestyle="--", linewidth=1, label="fp16 max (65504)")
    ax.set_xlim(right=max([FP16_MAX, *values]) * 8)
    ax.set_xlabel("max |activation| (fp32 run)")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.grid(axis="y", visible=False)
    ax.legend(loc="lower right")
    ax.set_title(title + note)
    return to_svg(fig)

"""The run report's figures, each returned as inline SVG markup (bench.views.svg: text kept as
text, one style and one colour per precision). They draw what bench.analysis.series derives."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import matplotlib
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

from bench.analysis.series import FP16_MAX, ActivationProfile, LossData, TradeoffPoint
from bench.results.schema import BASELINE_PRECISION as BASELINE
from bench.results.schema import precision_rank
from bench.views.svg import (
    HEIGHT_IN,
    NO_VERDICT_COLOR,
    STYLE,
    VERDICT_COLORS,
    WIDTH_IN,
    color_of,
    linestyle_of,
    literal,
    styled,
    to_svg,
)

# boxplot's `vert` is deprecated from matplotlib 3.10 in favour of `orientation` (new in 3.10).
_MPL_VERSION = tuple(int(p) for p in re.findall(r"\d+", matplotlib.__version__)[:2])
_HORIZONTAL_BOXES = {"orientation": "horizontal"} if _MPL_VERSION >= (3, 10) else {"vert": False}


# --- layout -------------------------------------------------------------------------------------
# Margins are set in inches from the text they must hold, instead of matplotlib's constrained
# layout: that measures every label by drawing the figure several times and made rendering a
# 2,000-case report three times slower. Widths are estimated generously (GLYPH_EM), so a label
# is never clipped; at worst a margin is a little wide.
GLYPH_EM = 0.62  # average glyph width of DejaVu Sans, in em, rounded up
MATH_GLYPHS = 4.5  # a log axis label such as 10^-3 is about this many glyphs wide
TICK_PAD_IN = 0.1  # tick length plus padding
LABEL_IN = 0.2  # an axis label's line (ylabel, xlabel)
TITLE_IN = 0.3
BOTTOM_IN = 0.5  # x tick labels and the xlabel


def _text_in(labels: Sequence[str], size_pt: float) -> float:
    """Estimated width in inches of the widest of the labels at the font size."""
    widest = 0.0
    for label in labels:
        glyphs = MATH_GLYPHS if label.startswith("$") else len(label)
        widest = max(widest, glyphs)
    return widest * size_pt * GLYPH_EM / 72


def _tick_labels(axis: Any, limits: tuple[float, float]) -> list[str]:
    """The major tick labels the axis will draw, computed without drawing."""
    lo, hi = sorted(limits)
    locs = [v for v in axis.get_major_locator()() if lo <= v <= hi]
    return [str(s) for s in axis.get_major_formatter().format_ticks(locs)]


def _ytick_in(ax: Any) -> float:
    """Width of the y tick labels of an axes (its limits must be final)."""
    return _text_in(_tick_labels(ax.yaxis, ax.get_ylim()), STYLE["font.size"])


def _legend_in(labels: Sequence[str], title: str | None = None) -> float:
    """Width of a legend with these labels: handle, gaps and the widest label (or title)."""
    size = STYLE["legend.fontsize"]
    return 0.45 + max(_text_in(labels, size), _text_in([title or ""], size))


def _new_figure(width_in: float = WIDTH_IN, height_in: float = HEIGHT_IN) -> Figure:
    """A fresh figure, not registered with pyplot (nothing to close)."""
    return Figure(figsize=(width_in, height_in))


def _place(
    fig: Figure,
    *,
    left_in: float,
    right_in: float,
    top_in: float = TITLE_IN,
    bottom_in: float = BOTTOM_IN,
    wspace_in: float = 0.0,
    hspace_in: float = 0.0,
    ncols: int = 1,
    nrows: int = 1,
) -> None:
    """Set the subplot margins and gaps in inches."""
    width_in, height_in = fig.get_size_inches()
    axes_w = max(0.5, (width_in - left_in - right_in - wspace_in * (ncols - 1)) / ncols)
    axes_h = max(0.3, (height_in - top_in - bottom_in - hspace_in * (nrows - 1)) / nrows)
    fig.subplots_adjust(
        left=left_in / width_in,
        right=1 - right_in / width_in,
        top=1 - top_in / height_in,
        bottom=bottom_in / height_in,
        wspace=wspace_in / axes_w,
        hspace=hspace_in / axes_h,
    )


def _title(ax: Any, text: str, width_in: float) -> None:
    """Axes title, in a smaller font where it would be wider than the figure."""
    size = STYLE["axes.titlesize"]
    needed_in = _text_in([text], size) * 1.05
    ax.set_title(literal(text), fontsize=max(6.0, size * min(1.0, width_in * 0.95 / needed_in)))


def _batch_axis(ax: Any, batch_sizes: Sequence[int]) -> None:
    """Log2 x-axis with a tick at every measured batch size."""
    ax.set_xscale("log", base=2)
    ticks = sorted(set(batch_sizes))
    ax.set_xticks(ticks, [str(b) for b in ticks])
    ax.xaxis.set_minor_locator(NullLocator())
    if len(ticks) == 1:
        ax.set_xlim(ticks[0] / 1.5, ticks[0] * 1.5)
    ax.set_xlabel("batch size (log2)")


def _legend_outside(ax: Any, **kwargs: Any) -> None:
    """Legend right of the axes, where it hides no line (the right margin holds it)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kwargs)


def _bytes_scale(max_bytes: float) -> tuple[float, str]:
    """Divisor and unit for an axis of byte counts."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if max_bytes >= size:
            return float(size), unit
    return 1.0, "B"


def _plain_log_ticks(axis: Any) -> None:
    """Log axis labelled 1, 2, 5, 10, 20, ... in plain numbers (easier to read than 10^x)."""
    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(NullLocator())


def _per_batch_figure(
    series: dict[str, tuple[list[int], list[float]]], title: str, extra_labels: Sequence[str] = ()
) -> tuple[Figure, Any, list[str]]:
    """A figure with one line per precision against batch size; returns it, its axes, labels."""
    fig = _new_figure()
    ax = fig.add_subplot()
    labels = []
    for precision, (batch_sizes, values) in series.items():
        ax.plot(
            batch_sizes,
            values,
            marker="o",
            color=color_of(precision),
            linestyle=linestyle_of(precision),
            label=literal(precision),
        )
        labels.append(precision)
    _batch_axis(ax, [b for bs, _ in series.values() for b in bs])
    _title(ax, title, WIDTH_IN)
    return fig, ax, [*labels, *extra_labels]


def _finish_single(fig: Figure, ax: Any, legend_labels: Sequence[str], **legend: Any) -> str:
    """Legend outside, margins from the text, SVG out."""
    legend_in = 0.0
    if legend_labels:
        _legend_outside(ax, **legend)
        legend_in = _legend_in(legend_labels, legend.get("title"))
    _place(
        fig,
        left_in=0.12 + LABEL_IN + _ytick_in(ax) + TICK_PAD_IN,
        right_in=0.12 + legend_in,
    )
    return to_svg(fig)


# --- figures ------------------------------------------------------------------------------------


@styled
def throughput_vs_batch(
    series: dict[str, tuple[list[int], list[float]]], *, title: str, unit: str
) -> str:
    """One line per precision: throughput against batch size."""
    fig, ax, labels = _per_batch_figure(series, title)
    ax.set_ylim(bottom=0)
    ax.set_ylabel(unit)
    return _finish_single(fig, ax, labels)


@styled
def memory_vs_batch(
    series: dict[str, tuple[list[int], list[float]]],
    *,
    title: str,
    device_bytes: float | None = None,
) -> str:
    """One line per precision: peak memory against batch size, with the device's memory if known."""
    peak_bytes = max(v for _, values in series.values() for v in values)
    divisor, unit = _bytes_scale(max(peak_bytes, device_bytes or 0))
    scaled = {p: (b, [v / divisor for v in vs]) for p, (b, vs) in series.items()}
    extra = ["device memory"] if device_bytes else []
    fig, ax, labels = _per_batch_figure(scaled, title, extra)
    if device_bytes:
        ax.axhline(device_bytes / divisor, color="#d62728", linestyle=":", label="device memory")
        # A 141 GB device would flatten a few GB of use into the x-axis: switch to log.
        if device_bytes > 10 * peak_bytes:
            ax.set_yscale("log")
            _plain_log_ticks(ax.yaxis)
    if ax.get_yscale() == "linear":
        ax.set_ylim(bottom=0)
    ax.set_ylabel(f"peak memory ({unit})")
    return _finish_single(fig, ax, labels)


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
    names = [literal(p) for p in precisions]
    bars = ax.bar(range(len(names)), list(speedups), color=colors)
    ax.bar_label(bars, labels=[f"{s:.2f}×" for s in speedups], padding=2, fontsize=7.5)
    ax.axhline(1.0, color="#222222", linewidth=0.8)
    ax.set_ylim(0, max([1.0, *speedups]) * 1.18)
    ax.set_ylabel("speedup vs fp32 (×)")
    ax.grid(axis="x", visible=False)
    _title(ax, title, WIDTH_IN)
    shown = list(dict.fromkeys(v or "" for v in verdicts))
    legend_labels = [v or "no numerics" for v in shown]
    handles = [
        Patch(color=VERDICT_COLORS.get(v, NO_VERDICT_COLOR), label=literal(label))
        for v, label in zip(shown, legend_labels, strict=True)
    ]
    # Rotate the names where they would not fit side by side under the bars.
    label_in = _text_in(precisions, STYLE["font.size"])
    axes_in = WIDTH_IN - 1.6 - _legend_in(legend_labels, "verdict")
    rotate = label_in * len(precisions) > axes_in * 0.9
    ax.set_xticks(
        range(len(names)), names, rotation=30 if rotate else 0, ha="right" if rotate else "center"
    )
    _legend_outside(ax, handles=handles, title="verdict", title_fontsize=7.5)
    _place(
        fig,
        left_in=0.12 + LABEL_IN + _ytick_in(ax) + TICK_PAD_IN,
        right_in=0.12 + _legend_in(legend_labels, "verdict"),
        bottom_in=0.3 + (label_in * 0.5 if rotate else 0.1),
    )
    return to_svg(fig)


@styled
def execution_gain_bars(labels: Sequence[str], gains: Sequence[float], *, title: str) -> str:
    """Gain of each compiled or graphed mode over its precision run eagerly, in the mode's
    colour, with the 1x line."""
    return _mode_bars(
        labels,
        list(gains),
        [f"{g:.2f}×" for g in gains],
        ylabel="gain vs eager (×)",
        top=max([1.0, *gains]) * 1.18,
        title=title,
        one_line=True,
    )


def energy_bars(labels: Sequence[str], joules: Sequence[float], *, title: str) -> str:
    """Energy per sample per mode (J, NVML), in each mode's colour; lower is better."""
    scale, unit = (1e3, "mJ") if max(joules, default=0) < 1 else (1.0, "J")
    values = [j * scale for j in joules]
    return _mode_bars(
        labels,
        values,
        [f"{v:.3g}" for v in values],
        ylabel=f"energy per sample ({unit})",
        top=max([*values, 1e-12]) * 1.18,
        title=title,
    )


def _mode_bars(
    labels: Sequence[str],
    values: list[float],
    value_labels: list[str],
    *,
    ylabel: str,
    top: float,
    title: str,
    one_line: bool = False,
) -> str:
    """One bar per mode in its colour, each labelled with its value; `one_line` draws y = 1."""
    fig = _new_figure()
    ax = fig.add_subplot()
    bars = ax.bar(range(len(labels)), values, color=[color_of(label) for label in labels])
    ax.bar_label(bars, labels=value_labels, padding=2, fontsize=7.5)
    if one_line:
        ax.axhline(1.0, color="#222222", linewidth=0.8)
    ax.set_ylim(0, top)
    ax.set_ylabel(ylabel)
    ax.grid(axis="x", visible=False)
    _title(ax, title, WIDTH_IN)
    label_in = _text_in(labels, STYLE["font.size"])
    rotate = label_in * len(labels) > (WIDTH_IN - 1.2) * 0.9
    ax.set_xticks(
        range(len(labels)),
        [literal(label) for label in labels],
        rotation=30 if rotate else 0,
        ha="right" if rotate else "center",
    )
    _place(
        fig,
        left_in=0.12 + LABEL_IN + _ytick_in(ax) + TICK_PAD_IN,
        right_in=0.2,
        bottom_in=0.3 + (label_in * 0.5 if rotate else 0.1),
    )
    return to_svg(fig)


def _positive(values: Sequence[float]) -> list[float]:
    """Values for a log axis: zero, negative and NaN become NaN (a gap in the line)."""
    return [v if v > 0 and math.isfinite(v) else math.nan for v in values]


@styled
def loss_curves(data: LossData, *, title: str) -> str:
    """Loss per step for each precision over the fp32 curve; relative divergence per step below."""
    fig = _new_figure(WIDTH_IN, 4.2)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
    labels = []
    if data.baseline:
        steps = range(1, len(data.baseline) + 1)
        top.plot(steps, data.baseline, color=color_of(BASELINE), linewidth=2.2, label="fp32")
        labels.append("fp32")
    for precision, loss in data.curves.items():
        top.plot(
            range(1, len(loss) + 1),
            loss,
            color=color_of(precision),
            linestyle=linestyle_of(precision),
            linewidth=1.1,
            label=literal(precision),
        )
        labels.append(precision)
    top.set_ylabel("loss")
    _title(top, title, WIDTH_IN)
    _legend_outside(top)
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
        _legend_outside(bottom)
        drawn = True
    if drawn:
        bottom.set_yscale("log")
    else:
        bottom.text(
            0.5, 0.5, "no divergence data", ha="center", va="center", transform=bottom.transAxes
        )
    bottom.set_ylabel("|Δloss| / fp32")
    bottom.set_xlabel("step")
    _place(
        fig,
        left_in=0.12 + LABEL_IN + max(_ytick_in(top), _ytick_in(bottom)) + TICK_PAD_IN,
        right_in=0.12 + _legend_in([*labels, "tolerance"]),
        hspace_in=0.15,
        nrows=2,
    )
    return to_svg(fig)


@styled
def tradeoff_scatter(
    points_by_model: dict[str, list[TradeoffPoint]], *, title: str, ylabel: str
) -> str:
    """Speedup (x) vs divergence (y, log) per mode, one panel per model, Pareto front marked."""
    models = list(points_by_model)
    ncols = min(3, len(models))
    nrows = math.ceil(len(models) / ncols)
    panel_w_in, panel_h_in = 3.4, 2.8
    fig = _new_figure(panel_w_in * ncols, panel_h_in * nrows + 0.3)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    everything = [p.divergence for pts in points_by_model.values() for p in pts if p.divergence > 0]
    # An exact match (0) has no place on a log axis: draw it a decade below the smallest non-zero.
    floor = min(everything) / 10 if everything else 1e-12
    for ax, model in zip(axes, models, strict=False):
        points = sorted(points_by_model[model], key=lambda p: precision_rank(p.precision))
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
                literal(p.precision),
                (p.speedup, y),
                xytext=(4, 3),
                textcoords="offset points",
                fontsize=7,
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
        # Room on the right for the labels of the fastest modes.
        ax.set_xlim(right=max(p.speedup for p in points) * 1.12 + 0.05)
        ax.set_yscale("log")
        _title(ax, model, panel_w_in)
        ax.set_xlabel("speedup vs fp32 (×)")
        ax.set_ylabel(ylabel)
    for ax in axes[len(models) :]:
        ax.set_visible(False)
    fig.suptitle(f"{literal(title)}: ringed points and dashed line = Pareto front", fontsize=8.5)
    side_in = 0.12 + LABEL_IN + max(_ytick_in(ax) for ax in axes[: len(models)]) + TICK_PAD_IN
    _place(
        fig,
        left_in=side_in,
        right_in=0.15,
        top_in=0.3 + TITLE_IN,
        wspace_in=side_in + 0.1,
        hspace_in=BOTTOM_IN + TITLE_IN,
        ncols=ncols,
        nrows=nrows,
    )
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
        **_HORIZONTAL_BOXES,
        patch_artist=True,
        widths=0.6,
        flierprops={"markersize": 2.5, "alpha": 0.6},
        medianprops={"color": "#000000"},
    )
    for patch, precision in zip(boxes["boxes"], precisions, strict=True):
        patch.set_facecolor(color_of(precision))
        patch.set_alpha(0.55)
    ax.set_yticks(range(1, len(precisions) + 1), [literal(p) for p in precisions])
    ax.invert_yaxis()  # precision order top to bottom, like the tables
    ax.set_xlabel("step time (ms)")
    ax.grid(axis="y", visible=False)
    _title(ax, title, WIDTH_IN)
    _place(
        fig,
        left_in=0.15 + _text_in(precisions, STYLE["font.size"]) + TICK_PAD_IN,
        right_in=0.25,
    )
    return to_svg(fig)


@styled
def activation_headroom(profile: ActivationProfile, *, title: str, max_modules: int = 60) -> str:
    """Max |activation| per module (log axis) against the fp16 limit; overflowing modules red."""
    order = list(range(len(profile.modules)))
    note = ""
    if len(order) > max_modules:
        # Keep the modules closest to (or over) the limit: those are the ones that matter.
        order = sorted(sorted(order, key=lambda i: profile.headroom_log2[i])[:max_modules])
        note = f" ({max_modules} of {len(profile.modules)} modules, least headroom)"
    names = [profile.modules[i] for i in order]
    finite = [profile.max_abs[i] for i in order if math.isfinite(profile.max_abs[i])]
    right = max([FP16_MAX, *finite]) * 3
    # A module whose activations overflowed to inf (or NaN) is drawn to the axis' end.
    values = [v if math.isfinite(v) else right for v in (profile.max_abs[i] for i in order)]
    colors = []
    for i in order:
        if profile.overflow[i]:
            colors.append("#d62728")
        elif profile.headroom_log2[i] < 4:  # within 16x of the limit: one bad batch away
            colors.append("#e0a100")
        else:
            colors.append("#1f77b4")
    name_size_pt = 6.5
    legend_label = "fp16 max (65504)"
    left_in = 0.15 + _text_in(names, name_size_pt) + TICK_PAD_IN
    right_in = 0.12 + _legend_in([legend_label])
    fig = _new_figure(left_in + 4.2 + right_in, max(1.8, 0.85 + 0.17 * len(names)))
    ax = fig.add_subplot()
    ax.barh(range(len(names)), [max(v, 1e-30) for v in values], color=colors)
    ax.set_yticks(range(len(names)), [literal(n) for n in names], fontsize=name_size_pt)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(FP16_MAX, color="#d62728", linestyle="--", linewidth=1, label=legend_label)
    ax.set_xlim(right=right)
    ax.set_xlabel("max |activation| (fp32 run)")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.grid(axis="y", visible=False)
    _legend_outside(ax)
    _title(ax, title + note, fig.get_size_inches()[0])
    _place(fig, left_in=left_in, right_in=right_in)
    return to_svg(fig)

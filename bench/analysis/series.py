"""The data behind the report's figures, derived from a RunAnalysis: curves, samples, points.

Nothing here draws or formats (bench.views.plots does); nothing here decides a headline figure
(bench.analysis.summary does): a figure shows the same points the summary tables use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.analysis.rows import CaseRow
from bench.analysis.summary import GroupSummary, RunAnalysis
from bench.results.schema import (
    BASELINE_PRECISION,
    EXECUTION_SUFFIXES,
    Case,
    execution_rank,
    is_number,
    precision_rank,
)

FP16_MAX = 65504.0  # drawn as the limit line; each module's headroom is the engine's own


def _numbers(value: Any) -> list[float]:
    """A JSON list of numbers as floats; anything else becomes NaN so step indices stay aligned."""
    if not isinstance(value, (list, tuple)):
        return []
    return [float(item) if is_number(item) else math.nan for item in value]


def _ordered(mapping: dict[str, Any]) -> dict[str, Any]:
    """A precision-keyed dict in precision order."""
    return dict(sorted(mapping.items(), key=lambda kv: _label_rank(kv[0])))


def _label_rank(label: str) -> tuple[Any, ...]:
    """Sort key of a mode label ("bf16", "bf16 +compile", "bf16 ddp2 reduce-bf16"): precision
    order, then the data-parallel layout and reduction, then eager, compiled, graphs."""
    rest, _, suffix = label.partition(" +")
    precision, _, layout = rest.partition(" ")
    shown = f"+{suffix}" if suffix else ""
    execution = next((name for name, s in EXECUTION_SUFFIXES.items() if s == shown), suffix)
    return (*precision_rank(precision), layout, execution_rank(execution))


def series_vs_batch(
    analysis: RunAnalysis, group: GroupSummary, value: Callable[[CaseRow], float | None]
) -> dict[str, tuple[list[int], list[float]]]:
    """Per precision, (batch sizes, values) of the group's ok cases at its headline sequence
    length, by batch size; `value` picks the figure of a case (its rate, its peak bytes)."""
    points: dict[str, list[tuple[int, float]]] = {}
    for row in analysis.group_rows(group):
        if not row.ok or row.batch_size is None or row.seq_len is None:
            continue
        figure = value(row)
        if row.seq_len == group.seq_len and figure is not None and math.isfinite(figure):
            points.setdefault(row.mode, []).append((row.batch_size, float(figure)))
    out: dict[str, tuple[list[int], list[float]]] = {}
    for mode, part in points.items():
        part.sort(key=lambda point: point[0])
        out[mode] = ([b for b, _ in part], [v for _, v in part])
    return _ordered(out)


def step_samples(analysis: RunAnalysis, group: GroupSummary) -> dict[str, list[float]]:
    """Per-step seconds per precision at the headline point (precisions without any left out)."""
    out = {}
    for mode in group.modes:
        result = analysis.result(mode.case_id) if mode.ok else None
        samples = [s for s in result.step_s if math.isfinite(s)] if result is not None else []
        if samples:
            out[mode.label] = samples
    return out


@dataclass
class LossData:
    """Loss curves of one model's training, with the relative divergence from fp32 per step."""

    source: str  # "numerics" (the deterministic divergence pass) or "timed steps"
    baseline: list[float]
    curves: dict[str, list[float]]
    rel_div: dict[str, list[float]]
    tolerance: float | None


def relative_divergence(loss: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """|loss - baseline| / |baseline| per step (NaN where undefined), over the common length."""
    return [abs(v - r) / abs(r) if r else math.nan for v, r in zip(loss, baseline, strict=False)]


def _is_baseline(case: Case) -> bool:
    """fp32 with gradients reduced in fp32 (or on one device): the curve the others diverge from."""
    return case.precision == BASELINE_PRECISION and case.reduce_dtype in (None, "fp32")


def loss_data(analysis: RunAnalysis, group: GroupSummary) -> LossData | None:
    """Loss curves of a training group: from the numerics pass (the same batches for every
    precision), else from the timed steps at the headline point."""
    # A compiled or graphed case carries its precision's eager pass.
    rows = [r for r in analysis.group_rows(group) if r.ok and r.execution == "eager"]
    curves: dict[str, list[float]] = {}
    rel_div: dict[str, list[float]] = {}
    baseline: list[float] = []
    tolerance = None
    for row in rows:
        result = analysis.result(row.id)
        numerics = result.numerics if result is not None else None
        loss = _numbers((numerics or {}).get("loss"))
        # One curve per numerics pass: a precision, with its data-parallel layout and reduction.
        precision = result.case.numerics_key if result is not None else ""
        if result is not None and _is_baseline(result.case):
            precision = BASELINE_PRECISION
        if not loss or precision in curves:
            continue
        curves[precision] = loss
        baseline = baseline or _numbers(numerics.get("baseline_loss"))
        divs = _numbers(numerics.get("rel_div"))
        if divs:
            rel_div[precision] = divs
        value = numerics.get("tolerance")
        if tolerance is None and is_number(value):
            tolerance = float(value)
    if curves:
        baseline = baseline or curves.get(BASELINE_PRECISION, [])
        curves.pop(BASELINE_PRECISION, None)
        rel_div.pop(BASELINE_PRECISION, None)
        for precision, loss in curves.items():
            if precision not in rel_div and baseline:
                rel_div[precision] = relative_divergence(loss, baseline)
        return LossData("numerics", baseline, _ordered(curves), _ordered(rel_div), tolerance)
    # No divergence pass: the timed steps' losses still show whether training went anywhere odd.
    for mode in group.modes:
        result = analysis.result(mode.case_id) if mode.ok else None
        if result is not None and result.losses:
            label = BASELINE_PRECISION if mode.is_baseline else mode.label
            curves.setdefault(label, list(result.losses))
    if not curves:
        return None
    baseline = curves.pop(BASELINE_PRECISION, [])
    rel_div = {p: relative_divergence(v, baseline) for p, v in curves.items() if baseline}
    return LossData("timed steps", baseline, _ordered(curves), _ordered(rel_div), None)


@dataclass
class TradeoffPoint:
    """A mode's speed and accuracy for the speed vs accuracy scatter."""

    model: str
    precision: str
    speedup: float
    divergence: float
    verdict: str | None
    pareto: bool = False


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated by another: higher x (speedup) and lower y (divergence)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (ox >= x and oy <= y) and (ox > x or oy < y)
            for j, (ox, oy) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


def tradeoff_points(analysis: RunAnalysis) -> dict[str, dict[str, list[TradeoffPoint]]]:
    """Per workload, per model: non-fp32 modes with a speedup and a divergence at the headline
    point, Pareto-marked per model (modes of different models are not alternatives)."""
    out: dict[str, dict[str, list[TradeoffPoint]]] = {}
    for group in analysis.groups:
        points = [
            TradeoffPoint(group.model, m.label, m.speedup, m.divergence, m.verdict)
            for m in group.modes
            if not m.is_baseline
            and m.speedup is not None
            and m.divergence is not None
            and math.isfinite(m.divergence)
        ]
        if not points:
            continue
        for i in pareto_front([(p.speedup, p.divergence) for p in points]):
            points[i].pareto = True
        out.setdefault(group.workload, {})[group.model] = points
    return out


@dataclass
class ActivationProfile:
    """Activation ranges per module of one model, from an fp32 case's numerics."""

    model: str
    case_id: str
    modules: list[str]
    max_abs: list[float]
    headroom_log2: list[float]  # log2(fp16 max / max |activation|); below 0 overflows fp16
    overflow: list[bool]
    frac_below_fp16_normal: list[float]


def _activation_profile(model: str, case_id: str, entries: list[Any]) -> ActivationProfile:
    """The engine's per-module record as it is (bench.engine.numerics.activations): an all-zero
    activation (no range to draw) is left out; one that overflowed to inf or NaN stays."""
    profile = ActivationProfile(model, case_id, [], [], [], [], [])
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        max_abs = entry.get("max_abs")
        max_abs = float(max_abs) if is_number(max_abs) else math.nan
        if max_abs == 0:
            continue
        headroom = entry.get("fp16_headroom_log2")
        below = entry.get("frac_below_fp16_normal")
        profile.modules.append(str(entry.get("module") or "?"))
        profile.max_abs.append(max_abs)
        profile.headroom_log2.append(float(headroom) if is_number(headroom) else -math.inf)
        profile.overflow.append(bool(entry.get("fp16_overflow")))
        profile.frac_below_fp16_normal.append(float(below) if is_number(below) else math.nan)
    return profile


def activation_profiles(analysis: RunAnalysis) -> list[ActivationProfile]:
    """One profile per model: the first fp32 case whose numerics carry `activations`."""
    by_model: dict[str, ActivationProfile] = {}
    fp32_first = sorted(analysis.rows, key=lambda r: r.precision != BASELINE_PRECISION)
    for row in fp32_first:
        result = analysis.result(row.id)
        entries = (result.numerics or {}).get("activations") if result is not None else None
        model = result.case.model if result is not None else ""
        if model in by_model or not isinstance(entries, list):
            continue
        profile = _activation_profile(model, row.id, entries)
        if profile.modules:
            by_model[model] = profile
    order = list(dict.fromkeys(r.model for r in analysis.rows))
    return sorted(by_model.values(), key=lambda p: order.index(p.model))

"""Statistics for the report, derived from result dicts alone: no formatting, no plotting.

Every accessor is defensive: the engine is still growing, so any key may be missing or null and
a half-written run may have no ok case at all. Functions here return plain data (dataclasses,
lists, dicts) that `tables` formats and `plots` draws.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

PRECISION_ORDER = ("fp32", "tf32", "amp_fp16", "amp_bf16", "bf16", "fp16", "fp8")
WORKLOAD_ORDER = ("train", "infer", "generate")
BASELINE = "fp32"
FAILED_STATUSES = ("error", "crashed", "timeout")
# A mode is recommended only when its numerics verdict is one of these ("baseline" is fp32 itself).
PASSING_VERDICTS = ("ok", "baseline")
# Divergence metric shown per case, first present wins: training loss, then inference outputs.
DIVERGENCE_METRICS = ("max_rel_div", "rel_rmse", "kl_mean")
FP16_MAX = 65504.0


def dig(data: Any, *keys: str, default: Any = None) -> Any:
    """`data[k1][k2]...`, or `default` where a level is missing, null or not a dict."""
    for key in keys:
        if not isinstance(data, dict):
            return default
        data = data.get(key)
        if data is None:
            return default
    return data


def as_float(value: Any) -> float | None:
    """A JSON number as float (NaN and inf kept); None for anything else, bools included."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def as_int(value: Any) -> int | None:
    """A JSON integer (or integral float) as int; None otherwise."""
    number = as_float(value)
    if number is None or not math.isfinite(number) or number != int(number):
        return None
    return int(number)


def as_str(value: Any) -> str | None:
    """A non-empty value as str (numbers too); None for null or empty."""
    if value is None or value == "":
        return None
    return str(value)


def float_list(value: Any) -> list[float]:
    """A JSON list of numbers as floats; non-numbers become NaN so step indices stay aligned."""
    if not isinstance(value, list):
        return []
    out = []
    for item in value:
        number = as_float(item)
        out.append(math.nan if number is None else number)
    return out


def precision_key(precision: str) -> tuple[int, str]:
    """Sort key: the documented precision order, unknown precisions after it by name."""
    if precision in PRECISION_ORDER:
        return (PRECISION_ORDER.index(precision), precision)
    return (len(PRECISION_ORDER), precision)


def workload_key(workload: str) -> tuple[int, str]:
    """Sort key: train, infer, generate, then anything else by name."""
    if workload in WORKLOAD_ORDER:
        return (WORKLOAD_ORDER.index(workload), workload)
    return (len(WORKLOAD_ORDER), workload)


@dataclass(eq=False)
class CaseRow:
    """One case flattened to the scalars the report needs; `result` keeps the raw dict for lists."""

    index: int
    id: str
    model: str
    family: str | None
    workload: str
    precision: str
    batch_size: int | None
    seq_len: int | None
    device: str | None
    status: str
    reason: str | None
    median_s: float | None
    p10_s: float | None
    p90_s: float | None
    iqr_s: float | None
    samples_per_s: float | None
    tokens_per_s: float | None
    peak_bytes: float | None
    verdict: str | None
    divergence: float | None
    divergence_metric: str | None
    wall_s: float | None
    result: dict[str, Any] = field(repr=False)

    @property
    def ok(self) -> bool:
        """Measured successfully."""
        return self.status == "ok"

    @property
    def throughput(self) -> float | None:
        """The workload's headline rate: tokens/s for generation, samples/s otherwise."""
        if self.workload == "generate" and self.tokens_per_s is not None:
            return self.tokens_per_s
        return self.samples_per_s

    @property
    def step_s(self) -> list[float]:
        """Per-step seconds of the timed loop (finite values only)."""
        return [s for s in float_list(dig(self.result, "timing", "step_s")) if math.isfinite(s)]


def dedupe(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Results keyed by case id, a later line winning (as after --resume), in first-seen order."""
    by_id: dict[str, dict[str, Any]] = {}
    for result in results:
        case_id = dig(result, "case", "id")
        if isinstance(result, dict) and case_id is not None:
            by_id[str(case_id)] = result
    return list(by_id.values())


def _divergence(numerics: Any) -> tuple[float | None, str | None]:
    """The first divergence metric present in numerics, with its key."""
    for key in DIVERGENCE_METRICS:
        value = as_float(dig(numerics, key))
        if value is not None:
            return value, key
    return None, None


def case_row(index: int, result: dict[str, Any]) -> CaseRow:
    """Flatten one result dict; samples/s is derived from the median step when it is missing."""
    case = result.get("case") if isinstance(result.get("case"), dict) else {}
    timing = result.get("timing")
    batch_size = as_int(case.get("batch_size"))
    median_s = as_float(dig(timing, "median_s"))
    samples_per_s = as_float(dig(result, "throughput", "samples_per_s"))
    if samples_per_s is None and batch_size and median_s:
        samples_per_s = batch_size / median_s
    numerics = result.get("numerics")
    divergence, metric = _divergence(numerics)
    return CaseRow(
        index=index,
        id=str(case.get("id")),
        model=as_str(case.get("model")) or "unknown",
        family=as_str(case.get("family")),
        workload=as_str(case.get("workload")) or "unknown",
        precision=as_str(case.get("precision")) or "unknown",
        batch_size=batch_size,
        seq_len=as_int(case.get("seq_len")),
        device=as_str(case.get("device")),
        status=as_str(result.get("status")) or "unknown",
        reason=as_str(result.get("reason")),
        median_s=median_s,
        p10_s=as_float(dig(timing, "p10_s")),
        p90_s=as_float(dig(timing, "p90_s")),
        iqr_s=as_float(dig(timing, "iqr_s")),
        samples_per_s=samples_per_s,
        tokens_per_s=as_float(dig(result, "throughput", "tokens_per_s")),
        peak_bytes=as_float(dig(result, "memory", "peak_bytes")),
        verdict=as_str(dig(numerics, "verdict")),
        divergence=divergence,
        divergence_metric=metric,
        wall_s=as_float(result.get("wall_s")),
        result=result,
    )


def case_rows(results: Iterable[dict[str, Any]]) -> list[CaseRow]:
    """Every (deduplicated) result as a CaseRow."""
    return [case_row(i, r) for i, r in enumerate(dedupe(results))]


def group_rows(rows: Iterable[CaseRow]) -> dict[tuple[str, str], list[CaseRow]]:
    """Rows by (model, workload): models in first-seen order, workloads train, infer, generate."""
    groups: dict[tuple[str, str], list[CaseRow]] = {}
    models: list[str] = []
    for row in rows:
        if row.model not in models:
            models.append(row.model)
        groups.setdefault((row.model, row.workload), []).append(row)
    return dict(
        sorted(groups.items(), key=lambda kv: (models.index(kv[0][0]), workload_key(kv[0][1])))
    )


def comparison_point(rows: Sequence[CaseRow]) -> tuple[int, int] | None:
    """The (batch size, seq len) to compare precisions at: the largest one common to all of them.

    Where no point is common to every precision (fp32 usually runs out of memory first), prefer a
    point where fp32 ran, then the one most precisions ran at, then the largest.
    """
    ran: dict[tuple[int, int], set[str]] = {}
    for row in rows:
        if row.ok and row.throughput is not None and row.batch_size and row.seq_len:
            ran.setdefault((row.batch_size, row.seq_len), set()).add(row.precision)
    if not ran:
        return None

    def preference(point: tuple[int, int]) -> tuple[bool, int, int, int]:
        precisions = ran[point]
        return (BASELINE in precisions, len(precisions), point[0] * point[1], point[0])

    return max(ran, key=preference)


@dataclass
class PrecisionSummary:
    """One precision of a model x workload at the comparison point."""

    precision: str
    status: str  # the case's status there, or "not run" where that point has no case
    reason: str | None
    throughput: float | None
    speedup: float | None  # throughput / fp32 throughput
    peak_bytes: float | None
    memory_saving: float | None  # fraction of fp32's peak saved: 0.25 = a quarter less
    verdict: str | None  # numerics verdict; "baseline" for fp32 without one; None = no numerics
    divergence: float | None
    case: CaseRow | None


@dataclass
class GroupSummary:
    """The summary table of one model x workload."""

    model: str
    workload: str
    batch_size: int | None
    seq_len: int | None
    throughput_unit: str
    divergence_metric: str | None
    precisions: list[PrecisionSummary]
    recommended: str | None  # fastest mode whose numerics pass
    speed_only: str | None  # fastest mode, set only when no mode has numerics to vouch for it
    has_numerics: bool


def _pick_at(rows: Sequence[CaseRow], point: tuple[int, int] | None) -> dict[str, CaseRow]:
    """For each precision, its case at the point (or, without a point, its most informative one)."""
    picked: dict[str, CaseRow] = {}
    for row in rows:
        if point is not None and (row.batch_size, row.seq_len) != point:
            continue
        # Without a common point every case failed or was skipped: show the largest one's reason.
        if point is None and row.precision in picked:
            current = picked[row.precision]
            if (row.batch_size or 0) < (current.batch_size or 0):
                continue
        picked[row.precision] = row
    return picked


def summarize_group(model: str, workload: str, rows: Sequence[CaseRow]) -> GroupSummary:
    """Throughput, speedup, memory and verdict per precision, and the recommended mode."""
    point = comparison_point(rows)
    at_point = _pick_at(rows, point)
    base = at_point.get(BASELINE)
    base_tp = base.throughput if base is not None and base.ok else None
    base_peak = base.peak_bytes if base is not None and base.ok else None
    precisions = sorted({r.precision for r in rows}, key=precision_key)
    summaries = []
    for precision in precisions:
        row = at_point.get(precision)
        if row is None:
            summaries.append(
                PrecisionSummary(
                    precision, "not run", None, None, None, None, None, None, None, None
                )
            )
            continue
        tp = row.throughput if row.ok else None
        peak = row.peak_bytes if row.ok else None
        verdict = row.verdict
        # fp32 is the reference itself: "ok" against itself says nothing, a NaN verdict does.
        if precision == BASELINE and row.ok and verdict in (None, "ok"):
            verdict = "baseline"
        summaries.append(
            PrecisionSummary(
                precision=precision,
                status=row.status,
                reason=row.reason,
                throughput=tp,
                speedup=tp / base_tp if tp is not None and base_tp else None,
                peak_bytes=peak,
                memory_saving=1 - peak / base_peak if peak is not None and base_peak else None,
                verdict=verdict if row.ok else None,
                divergence=row.divergence if row.ok else None,
                case=row,
            )
        )
    measured = [s for s in summaries if s.status == "ok" and s.throughput is not None]
    has_numerics = any(s.verdict not in (None, "baseline") for s in measured)
    recommended = speed_only = None
    if has_numerics:
        passing = [s for s in measured if s.verdict in PASSING_VERDICTS]
        if passing:
            recommended = max(passing, key=lambda s: s.throughput or 0.0).precision
    elif measured:
        speed_only = max(measured, key=lambda s: s.throughput or 0.0).precision
    metrics = [r.divergence_metric for r in rows if r.divergence_metric]
    return GroupSummary(
        model=model,
        workload=workload,
        batch_size=point[0] if point else None,
        seq_len=point[1] if point else None,
        throughput_unit="tokens/s" if workload == "generate" else "samples/s",
        divergence_metric=max(set(metrics), key=metrics.count) if metrics else None,
        precisions=summaries,
        recommended=recommended,
        speed_only=speed_only,
        has_numerics=has_numerics,
    )


def summarize(rows: Sequence[CaseRow]) -> list[GroupSummary]:
    """A GroupSummary per model x workload."""
    return [summarize_group(m, w, g) for (m, w), g in group_rows(rows).items()]


def series_vs_batch(
    rows: Sequence[CaseRow], seq_len: int | None, value: str
) -> dict[str, tuple[list[int], list[float]]]:
    """Per precision, (batch sizes, values) of ok cases at one seq len, sorted by batch size.

    `value` is a CaseRow attribute name, e.g. "throughput" or "peak_bytes".
    """
    points: dict[str, dict[int, float]] = {}
    for row in rows:
        number = getattr(row, value)
        if not row.ok or row.batch_size is None or number is None or not math.isfinite(number):
            continue
        if seq_len is not None and row.seq_len != seq_len:
            continue
        points.setdefault(row.precision, {})[row.batch_size] = number
    return {
        p: (sorted(v), [v[b] for b in sorted(v)])
        for p, v in sorted(points.items(), key=lambda kv: precision_key(kv[0]))
    }


def step_samples(summary: GroupSummary) -> dict[str, list[float]]:
    """Per-step seconds per precision at the comparison point (precisions without any left out)."""
    out = {}
    for s in summary.precisions:
        if s.case is not None and s.status == "ok" and s.case.step_s:
            out[s.precision] = s.case.step_s
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
    out = []
    for value, ref in zip(loss, baseline, strict=False):
        out.append(abs(value - ref) / abs(ref) if ref else math.nan)
    return out


def _numerics_candidates(rows: Sequence[CaseRow], point: tuple[int, int] | None) -> list[CaseRow]:
    """Ok rows, those at the comparison point first, then the largest batch size first."""
    ok = [r for r in rows if r.ok]
    return sorted(
        ok, key=lambda r: ((r.batch_size, r.seq_len) != point, -(r.batch_size or 0), r.index)
    )


def loss_data(summary: GroupSummary, rows: Sequence[CaseRow]) -> LossData | None:
    """Loss curves from numerics (loss / baseline_loss / rel_div), else from the timed losses."""
    point = (summary.batch_size, summary.seq_len) if summary.batch_size else None
    candidates = _numerics_candidates(rows, point)
    curves: dict[str, list[float]] = {}
    rel_div: dict[str, list[float]] = {}
    baseline: list[float] = []
    tolerance = None
    for row in candidates:
        numerics = row.result.get("numerics")
        loss = float_list(dig(numerics, "loss"))
        if not loss or row.precision in curves:
            continue
        curves[row.precision] = loss
        baseline = baseline or float_list(dig(numerics, "baseline_loss"))
        divs = float_list(dig(numerics, "rel_div"))
        if divs:
            rel_div[row.precision] = divs
        tolerance = tolerance if tolerance is not None else as_float(dig(numerics, "tolerance"))
    if curves:
        baseline = baseline or curves.get(BASELINE, [])
        for precision, loss in curves.items():
            if precision not in rel_div and baseline and precision != BASELINE:
                rel_div[precision] = relative_divergence(loss, baseline)
        curves.pop(BASELINE, None)
        return LossData("numerics", baseline, _ordered(curves), _ordered(rel_div), tolerance)
    # No divergence pass: the timed steps' losses still show whether training went anywhere odd.
    for s in summary.precisions:
        if s.case is not None and s.status == "ok":
            loss = float_list(s.case.result.get("losses"))
            if loss:
                curves[s.precision] = loss
    if not curves:
        return None
    baseline = curves.pop(BASELINE, [])
    rel_div = {p: relative_divergence(v, baseline) for p, v in curves.items() if baseline}
    return LossData("timed steps", baseline, curves, rel_div, None)


def _ordered(mapping: dict[str, Any]) -> dict[str, Any]:
    """A precision-keyed dict in precision order."""
    return dict(sorted(mapping.items(), key=lambda kv: precision_key(kv[0])))


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


def tradeoff_points(summaries: Sequence[GroupSummary]) -> dict[str, dict[str, list[TradeoffPoint]]]:
    """Per workload, per model: non-fp32 modes with both a speedup and a divergence, Pareto-marked.

    The front is computed per model: modes of different models are not alternatives to each other.
    """
    out: dict[str, dict[str, list[TradeoffPoint]]] = {}
    for summary in summaries:
        points = [
            TradeoffPoint(summary.model, s.precision, s.speedup, s.divergence, s.verdict)
            for s in summary.precisions
            if s.precision != BASELINE
            and s.speedup is not None
            and s.divergence is not None
            and math.isfinite(s.divergence)
        ]
        if not points:
            continue
        for i in pareto_front([(p.speedup, p.divergence) for p in points]):
            points[i].pareto = True
        out.setdefault(summary.workload, {})[summary.model] = points
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


def activation_profiles(rows: Sequence[CaseRow]) -> list[ActivationProfile]:
    """One profile per model: the first fp32 case carrying numerics.activations, else any case."""
    by_model: dict[str, ActivationProfile] = {}
    for row in sorted(rows, key=lambda r: (r.precision != BASELINE, r.index)):
        entries = dig(row.result, "numerics", "activations")
        if row.model in by_model or not isinstance(entries, list):
            continue
        profile = ActivationProfile(row.model, row.id, [], [], [], [], [])
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            max_abs = as_float(entry.get("max_abs"))
            headroom = as_float(entry.get("fp16_headroom_log2"))
            if headroom is not None and not abs(headroom) < 1000:  # NaN, inf, absurd
                headroom = None
            if (max_abs is None or not math.isfinite(max_abs)) and headroom is not None:
                max_abs = FP16_MAX / 2.0**headroom
            # A log axis can show neither 0 nor a negative, and neither has a headroom.
            if max_abs is None or not (0 < max_abs < math.inf):
                continue
            if headroom is None:
                headroom = math.log2(FP16_MAX / max_abs)
            overflow = entry.get("fp16_overflow")
            profile.modules.append(as_str(entry.get("module")) or "?")
            profile.max_abs.append(max_abs)
            profile.headroom_log2.append(headroom)
            profile.overflow.append(bool(overflow) if overflow is not None else headroom < 0)
            below = as_float(entry.get("frac_below_fp16_normal"))
            profile.frac_below_fp16_normal.append(math.nan if below is None else below)
        if profile.modules:
            by_model[row.model] = profile
    order = list(dict.fromkeys(r.model for r in rows))
    return sorted(by_model.values(), key=lambda p: order.index(p.model))


@dataclass
class ProblemGroup:
    """Cases that share a status and a reason, e.g. every tf32 case skipped for want of a GPU."""

    status: str
    reason: str | None
    case_ids: list[str]


def problem_groups(rows: Sequence[CaseRow]) -> list[ProblemGroup]:
    """Non-ok cases grouped by (status, reason): failures first, then OOM, then skipped."""
    groups: dict[tuple[str, str | None], list[str]] = {}
    for row in rows:
        if not row.ok:
            groups.setdefault((row.status, row.reason), []).append(row.id)
    severity = {s: i for i, s in enumerate((*FAILED_STATUSES, "oom", "skipped"))}
    ordered = sorted(groups.items(), key=lambda kv: (severity.get(kv[0][0], -1), -len(kv[1])))
    return [ProblemGroup(status, reason, ids) for (status, reason), ids in ordered]


def run_warnings(
    env: dict[str, Any], load_warnings: Sequence[str], rows: Sequence[CaseRow]
) -> list[str]:
    """Header warnings: the environment's own, unreadable lines, failed and skipped cases."""
    out = [str(w) for w in env.get("warnings") or [] if w] if isinstance(env, dict) else []
    out.extend(str(w) for w in load_warnings)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    failed = {s: counts[s] for s in FAILED_STATUSES if counts.get(s)}
    if failed:
        detail = ", ".join(f"{n} {s}" for s, n in failed.items())
        out.append(f"{sum(failed.values())} case(s) failed ({detail}).")
    if counts.get("oom"):
        out.append(f"{counts['oom']} case(s) ran out of memory.")
    skipped: dict[str, int] = {}
    for row in rows:
        if row.status == "skipped":
            skipped[row.precision] = skipped.get(row.precision, 0) + 1
    if skipped:
        modes = ", ".join(
            f"{p} ({n})" for p, n in sorted(skipped.items(), key=lambda kv: precision_key(kv[0]))
        )
        out.append(f"Skipped modes: {modes}.")
    if not rows:
        out.append("This run has no results yet.")
    elif not any(r.ok for r in rows):
        out.append("No case completed successfully.")
    return out

"""Verdicts from divergence numbers and tolerances, and the end-of-run verdict table."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich.table import Table

from bench.engine.numerics.config import NumericsConfig
from bench.results.schema import CaseResult

VERDICTS = ("ok", "warn", "diverged", "nan")
BASELINE = "fp32"
_STYLES = {"ok": "green", "warn": "yellow", "diverged": "red", "nan": "bold red"}


def _below(value: float | None, threshold: float) -> bool:
    """value < threshold, where NaN counts as below (it is no evidence of being fine)."""
    return value is not None and (math.isnan(value) or value < threshold)


def training_verdict(
    numerics: dict[str, Any], config: NumericsConfig
) -> tuple[str | None, list[str]]:
    """ok / warn / diverged / nan for a training pass, with the reasons behind it; None when
    the fp32 baseline itself went non-finite (nothing to compare against)."""
    if numerics.get("first_nan_step") is not None:
        where = numerics.get("nan_source") or "loss"
        return "nan", [f"non-finite {where} at step {numerics['first_nan_step']}"]
    if numerics.get("baseline_nan_step") is not None:
        return None, [f"fp32 baseline went non-finite at step {numerics['baseline_nan_step']}"]
    max_rel = numerics["max_rel_div"]
    if max_rel > config.diverged_rel_div:
        return "diverged", [f"max_rel_div {max_rel:.3g} > {config.diverged_rel_div:g}"]
    reasons = []
    if max_rel > config.warn_rel_div:
        reasons.append(f"max_rel_div {max_rel:.3g} > {config.warn_rel_div:g}")
    overall = (numerics.get("grad_sqnr_db") or {}).get("overall")
    if _below(overall, config.warn_grad_sqnr_db):
        reasons.append(f"grad_sqnr_db {overall:.1f} < {config.warn_grad_sqnr_db:g}")
    scaler = numerics.get("scaler")
    if scaler and numerics.get("steps"):
        frac = scaler["skipped_steps"] / numerics["steps"]
        if frac > config.warn_skipped_frac:
            reasons.append(
                f"GradScaler skipped {scaler['skipped_steps']}/{numerics['steps']} steps"
            )
    return ("warn" if reasons else "ok"), reasons


def inference_verdict(
    metrics: dict[str, Any], config: NumericsConfig
) -> tuple[str | None, list[str]]:
    """ok / warn / diverged / nan for a forward pass's logits vs fp32 (None when fp32's own
    logits are not finite)."""
    if metrics.get("baseline_finite") is False:
        return None, ["fp32 baseline logits are not finite"]
    if any(
        isinstance(metrics.get(k), float) and math.isnan(metrics[k])
        for k in ("max_abs_err", "sqnr_db")
    ):
        return "nan", ["non-finite outputs"]
    sqnr, cosine, top1 = metrics["sqnr_db"], metrics["cosine"], metrics["top1_agreement"]
    reasons = []
    if sqnr < config.diverged_sqnr_db:
        reasons.append(f"sqnr_db {sqnr:.1f} < {config.diverged_sqnr_db:g}")
    if cosine < config.diverged_cosine:
        reasons.append(f"cosine {cosine:.4f} < {config.diverged_cosine:g}")
    if reasons:
        return "diverged", reasons
    if sqnr < config.warn_sqnr_db:
        reasons.append(f"sqnr_db {sqnr:.1f} < {config.warn_sqnr_db:g}")
    if top1 < config.warn_top1_agreement:
        reasons.append(f"top1_agreement {top1:.3f} < {config.warn_top1_agreement:g}")
    return ("warn" if reasons else "ok"), reasons


# ---------------------------------------------------------------------------------------------
# The verdict table printed at the end of `mpbench run`
# ---------------------------------------------------------------------------------------------


def _shape(result: CaseResult) -> tuple[int, int]:
    return (result.case.batch_size, result.case.seq_len)


def _comparison(
    mode_results: Sequence[CaseResult], fp32_results: Sequence[CaseResult]
) -> tuple[CaseResult, CaseResult] | None:
    """The mode's and fp32's ok results at the largest batch (then sequence) both ran."""
    fp32_ok = {_shape(r): r for r in fp32_results if r.status == "ok" and r.timing}
    common = [r for r in mode_results if r.status == "ok" and r.timing and _shape(r) in fp32_ok]
    if not common:
        return None
    best = max(common, key=_shape)
    return best, fp32_ok[_shape(best)]


def _divergence_cell(numerics: dict[str, Any] | None) -> str:
    """The headline divergence: max relative loss divergence (train) or SQNR (infer)."""
    if not numerics:
        return ""
    if numerics.get("max_rel_div") is not None:
        text = f"{numerics['max_rel_div']:.2e} rel"
        floor = (numerics.get("noise_floor") or {}).get("max_rel_div")
        return text + (f" (floor {floor:.1e})" if floor is not None else "")
    if numerics.get("sqnr_db") is not None:
        text = f"{numerics['sqnr_db']:.1f} dB"
        floor = (numerics.get("noise_floor") or {}).get("sqnr_db")
        return text + (f" (floor {floor:.1f})" if floor is not None else "")
    return ""


def _verdict_cell(result: CaseResult | None) -> str:
    if result is None:
        return ""
    numerics = result.numerics or {}
    verdict = numerics.get("verdict")
    if verdict is None:
        return "error" if numerics.get("error") else ""
    return f"[{_STYLES.get(verdict, '')}]{verdict}[/]"


def verdict_table(results: list[CaseResult]) -> Table:
    """Per model and workload, each mode's speedup vs fp32 (median step at the largest common
    batch), memory saving vs fp32 at that shape, the numerics verdict and its headline number."""
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
    groups: dict[tuple[str, str], dict[str, list[CaseResult]]] = {}
    for r in results:
        key = (r.case.model, r.case.workload)
        groups.setdefault(key, {}).setdefault(r.case.precision, []).append(r)
    for (model, workload), by_precision in groups.items():
        fp32 = by_precision.get(BASELINE, [])
        for precision, mode_results in by_precision.items():
            pair = _comparison(mode_results, fp32)
            if pair is None:
                statuses = sorted({r.status for r in mode_results})
                numeric = next((r for r in mode_results if r.numerics), None)
                table.add_row(
                    model,
                    workload,
                    precision,
                    "",
                    "/".join(statuses) if "ok" not in statuses else "no fp32",
                    "",
                    _verdict_cell(numeric),
                    _divergence_cell(numeric.numerics if numeric else None),
                )
                continue
            mode_r, fp32_r = pair
            speedup = fp32_r.timing["median_s"] / mode_r.timing["median_s"]
            table.add_row(
                model,
                workload,
                precision,
                f"bs{mode_r.case.batch_size} seq{mode_r.case.seq_len}",
                f"{speedup:.2f}x",
                _memory_saving(mode_r, fp32_r),
                _verdict_cell(mode_r),
                _divergence_cell(mode_r.numerics),
            )
    table.caption = _caption(results)
    return table


def _caption(results: list[CaseResult]) -> str:
    """Where the numbers come from: timing at the shape shown, numerics at the pass's own."""
    passes = sorted(
        {
            (n.get("kind"), n.get("batch_size"), n.get("seq_len"), n.get("steps"))
            for r in results
            if (n := r.numerics) and n.get("batch_size") is not None
        },
        key=str,
    )
    shapes = "; ".join(
        f"{kind} bs{bs} seq{seq}" + (f", {steps} steps" if kind == "train" else "")
        for kind, bs, seq, steps in passes
    )
    return (
        "speedup: median step of fp32 / mode; memory saving: 1 - peak(mode) / peak(fp32); "
        f"verdict and divergence (floor: fp32's own) from the numerics pass ({shapes or 'none'})"
    )


def _memory_saving(mode_r: CaseResult, fp32_r: CaseResult) -> str:
    """1 - peak(mode) / peak(fp32), as a percentage; blank where fp32's peak is not known."""
    mode_peak = (mode_r.memory or {}).get("peak_bytes")
    fp32_peak = (fp32_r.memory or {}).get("peak_bytes")
    if not mode_peak or not fp32_peak:
        return ""
    return f"{100.0 * (1.0 - mode_peak / fp32_peak):+.0f}%"

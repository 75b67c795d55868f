"""Verdicts from divergence numbers and tolerances (the rules; bench.views shows them)."""

from __future__ import annotations

import math
from typing import Any

from bench.engine.numerics.config import NumericsConfig


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
    if _below(sqnr, config.diverged_sqnr_db):
        reasons.append(f"sqnr_db {sqnr:.1f} < {config.diverged_sqnr_db:g}")
    if _below(cosine, config.diverged_cosine):
        reasons.append(f"cosine {cosine:.4f} < {config.diverged_cosine:g}")
    if reasons:
        return "diverged", reasons
    if _below(sqnr, config.warn_sqnr_db):
        reasons.append(f"sqnr_db {sqnr:.1f} < {config.warn_sqnr_db:g}")
    if _below(top1, config.warn_top1_agreement):
        reasons.append(f"top1_agreement {top1:.3f} < {config.warn_top1_agreement:g}")
    return ("warn" if reasons else "ok"), reasons

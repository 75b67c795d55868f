"""Activation range analysis: one instrumented fp32 forward, forward hooks on every module.

Per module: the largest |activation| and the fraction of non-zero values below the smallest normal
number of fp16 (2**-14 ~ 6.1e-5) and of bf16 (~1.18e-38). Zeros are exactly representable in
every format, so they do not count as underflow. An fp16 run overflows where max |activation|
exceeds 65504 (METHODS rule 13: T5 reached 66246); `fp16_headroom_log2` = log2(65504 / max_abs)
is the number of doublings left before that happens (negative: it already overflows).
"""

from __future__ import annotations

import math
from typing import Any

import torch

FP16_MAX = float(torch.finfo(torch.float16).max)  # 65504
FP16_MIN_NORMAL = float(torch.finfo(torch.float16).tiny)  # 2**-14 ~ 6.1e-5
BF16_MIN_NORMAL = float(torch.finfo(torch.bfloat16).tiny)  # ~1.18e-38
# A module "underflows" fp16 in the summary when more than this fraction of its values would
# be subnormal or zero there: a few tiny values are normal in any layer.
UNDERFLOW_REPORT_FRAC = 0.01
# Modules whose output is their input in eval mode: they would only repeat their neighbour.
_SKIPPED_TYPES = (torch.nn.Dropout,)


def _first_tensor(output: Any) -> torch.Tensor | None:
    """The module's activation: its output tensor, or the first floating tensor of a tuple."""
    if isinstance(output, torch.Tensor):
        return output if output.is_floating_point() else None
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor) and item.is_floating_point():
                return item
    return None


def _headroom_log2(max_abs: float) -> float:
    if max_abs == 0:
        return math.inf
    if not math.isfinite(max_abs):
        return -math.inf
    return math.log2(FP16_MAX / max_abs)


def activation_ranges(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], forward_kwargs: dict[str, Any]
) -> list[dict[str, Any]]:
    """Run `model` once on `batch` (no grad) and return one entry per module, in call order."""
    stats: dict[str, dict[str, Any]] = {}

    def record(name: str, output: Any) -> None:
        tensor = _first_tensor(output)
        if tensor is None or tensor.numel() == 0:
            return
        values = tensor.detach().float().abs()
        nonzero = values > 0
        max_abs = float(values.max())
        entry = {
            "module": name,
            "max_abs": max_abs,
            "fp16_headroom_log2": _headroom_log2(max_abs),
            "frac_below_fp16_normal": float((nonzero & (values < FP16_MIN_NORMAL)).float().mean()),
            "frac_below_bf16_normal": float((nonzero & (values < BF16_MIN_NORMAL)).float().mean()),
            "fp16_overflow": not max_abs <= FP16_MAX,  # inf and NaN overflow too
        }
        previous = stats.get(name)
        # A module called twice (a shared block) keeps its worst range.
        if previous is None or max_abs > previous["max_abs"]:
            stats[name] = entry

    handles = []
    for name, module in model.named_modules():
        if not name or isinstance(module, _SKIPPED_TYPES):
            continue  # the root's output is a ModelOutput whose logits `lm_head` already gives
        handles.append(
            module.register_forward_hook(lambda _m, _i, out, name=name: record(name, out))
        )
    try:
        with torch.inference_mode():
            model(**batch, **forward_kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return list(stats.values())


def activation_summary(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """What an fp16 case needs to know: the module with the least headroom, and every module
    that would overflow fp16 or has over UNDERFLOW_REPORT_FRAC of its values below fp16's
    smallest normal number."""
    if not entries:
        return {"worst_module": None, "min_fp16_headroom_log2": None}
    worst = min(entries, key=lambda e: e["fp16_headroom_log2"])
    return {
        "worst_module": worst["module"],
        "max_abs": worst["max_abs"],
        "min_fp16_headroom_log2": worst["fp16_headroom_log2"],
        "fp16_overflow_modules": [e["module"] for e in entries if e["fp16_overflow"]],
        "fp16_underflow_modules": [
            e["module"] for e in entries if e["frac_below_fp16_normal"] > UNDERFLOW_REPORT_FRAC
        ],
        "max_frac_below_fp16_normal": max(e["frac_below_fp16_normal"] for e in entries),
    }

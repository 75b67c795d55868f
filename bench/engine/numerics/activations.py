"""Activation range analysis: one instrumented fp32 forward, forward hooks on every module.

Per module and per low-precision format (fp16, and fp8's e4m3 and e5m2): the largest
|activation|, the headroom `<fmt>_headroom_log2` = log2(format max / max_abs) (the doublings left
before the format overflows; negative: it already does), whether it overflows, and the fraction
of non-zero values below the format's smallest normal number (zeros are exact in every format,
so they do not count as underflow); bf16 only for underflow (its range is fp32's).

  format  max     smallest normal
  fp16    65504   2**-14 ~ 6.1e-5   (METHODS rule 13: T5 reached 66246)
  e4m3    448     2**-6  = 0.0156   (fp8 inputs and weights)
  e5m2    57344   2**-14 ~ 6.1e-5   (fp8 gradients, tensorwise recipe)
  bf16    3.4e38  ~1.18e-38

These are unscaled figures: what the format would do to the raw values. torchao's fp8 scales
each tensor dynamically (amax maps to the format's max), so overflow cannot happen there; what
scaling cannot save is the small end of a wide range. `frac_below_e4m3_normal_scaled` is the
fraction of non-zero values that fall below e4m3's smallest normal *after* tensorwise scaling
(|x| < amax * 2**-6 / 448): the values an fp8 run flushes or rounds coarsely.
"""

from __future__ import annotations

import math
from typing import Any

import torch

# format: (largest finite value, smallest normal value)
FORMATS: dict[str, tuple[float, float]] = {
    "fp16": (float(torch.finfo(torch.float16).max), float(torch.finfo(torch.float16).tiny)),
    "e4m3": (
        float(torch.finfo(torch.float8_e4m3fn).max),
        float(torch.finfo(torch.float8_e4m3fn).tiny),
    ),
    "e5m2": (float(torch.finfo(torch.float8_e5m2).max), float(torch.finfo(torch.float8_e5m2).tiny)),
}
FP16_MAX = FORMATS["fp16"][0]  # 65504
BF16_MIN_NORMAL = float(torch.finfo(torch.bfloat16).tiny)  # ~1.18e-38
# A module "underflows" a format in the summary when more than this fraction of its values would
# be subnormal there: a few tiny values are normal in any layer.
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


def headroom_log2(max_abs: float, format_max: float) -> float:
    """log2(format max / max |value|): inf for all zeros, -inf for non-finite values."""
    if max_abs == 0:
        return math.inf
    if not math.isfinite(max_abs):
        return -math.inf
    return math.log2(format_max / max_abs)


def range_entry(name: str, tensor: torch.Tensor) -> dict[str, Any]:
    """The range figures of one module's activation."""
    values = tensor.detach().float().abs()
    nonzero = values > 0
    max_abs = float(values.max())

    def fraction_below(threshold: float) -> float:
        return float((nonzero & (values < threshold)).float().mean())

    entry: dict[str, Any] = {"module": name, "max_abs": max_abs}
    for fmt, (fmt_max, fmt_tiny) in FORMATS.items():
        entry[f"{fmt}_headroom_log2"] = headroom_log2(max_abs, fmt_max)
        entry[f"{fmt}_overflow"] = not max_abs <= fmt_max  # inf and NaN overflow too
        entry[f"frac_below_{fmt}_normal"] = fraction_below(fmt_tiny)
    entry["frac_below_bf16_normal"] = fraction_below(BF16_MIN_NORMAL)
    e4m3_max, e4m3_tiny = FORMATS["e4m3"]
    scaled_cut = max_abs * e4m3_tiny / e4m3_max if math.isfinite(max_abs) else math.inf
    entry["frac_below_e4m3_normal_scaled"] = fraction_below(scaled_cut)
    return entry


def activation_ranges(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], forward_kwargs: dict[str, Any]
) -> list[dict[str, Any]]:
    """Run `model` once on `batch` (no grad) and return one entry per module, in call order."""
    stats: dict[str, dict[str, Any]] = {}

    def record(name: str, output: Any) -> None:
        tensor = _first_tensor(output)
        if tensor is None or tensor.numel() == 0:
            return
        entry = range_entry(name, tensor)
        previous = stats.get(name)
        # A module called twice (a shared block) keeps its worst range.
        if previous is None or entry["max_abs"] > previous["max_abs"]:
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


def activation_summary(entries: list[dict[str, Any]], fmt: str = "fp16") -> dict[str, Any]:
    """What a case of a low-precision format needs to know: the module with the least headroom
    in `fmt` ("fp16" or "e4m3"), every module that would overflow it, and every module with over
    UNDERFLOW_REPORT_FRAC of its values below its smallest normal number (for e4m3, after
    tensorwise scaling, as torchao's fp8 sees them)."""
    if not entries:
        return {"format": fmt, "worst_module": None, f"min_{fmt}_headroom_log2": None}
    underflow_key = "frac_below_e4m3_normal_scaled" if fmt == "e4m3" else f"frac_below_{fmt}_normal"
    worst = min(entries, key=lambda e: e[f"{fmt}_headroom_log2"])
    return {
        "format": fmt,
        "worst_module": worst["module"],
        "max_abs": worst["max_abs"],
        f"min_{fmt}_headroom_log2": worst[f"{fmt}_headroom_log2"],
        f"{fmt}_overflow_modules": [e["module"] for e in entries if e[f"{fmt}_overflow"]],
        f"{fmt}_underflow_modules": [
            e["module"] for e in entries if e[underflow_key] > UNDERFLOW_REPORT_FRAC
        ],
        f"max_{underflow_key}": max(e[underflow_key] for e in entries),
    }

"""Pure low precision: weights, gradients and AdamW state all in bf16 or fp16, no autocast and
no loss scaling. Their failures are findings, not bugs to hide: pure fp16 loses small updates
and can overflow, pure bf16 AdamW updates stagnate under round-to-nearest (METHODS rule 13).
Each shares its amp twin's colour, dashed."""

from __future__ import annotations

import torch

from bench.engine.modes.base import PrecisionMode

MODES = (
    PrecisionMode(
        "bf16",
        "pure bfloat16: weights, gradients and AdamW state in bfloat16, no autocast",
        order=40,
        compute_dtype="bf16",
        color="#2ca02c",
        dashed=True,
        param_dtype=torch.bfloat16,
    ),
    PrecisionMode(
        "fp16",
        "pure float16 weights and optimizer state, no loss scaling (failure is a finding)",
        order=50,
        compute_dtype="fp16",
        color="#1f77b4",
        dashed=True,
        param_dtype=torch.float16,
        activation_format="fp16",
    ),
)

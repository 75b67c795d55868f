"""Automatic mixed precision: fp32 master weights, matmuls under torch.autocast in fp16 or bf16.
amp_fp16 scales the loss (torch.amp.GradScaler): fp16's range is narrow, and small gradients
would flush to zero (METHODS rules 13-14); bf16 has fp32's range and needs no scaling."""

from __future__ import annotations

import torch

from bench.engine.modes.base import PrecisionMode

MODES = (
    PrecisionMode(
        "amp_fp16",
        "fp32 master weights, torch.autocast(float16), GradScaler for training",
        order=20,
        compute_dtype="fp16",
        color="#1f77b4",
        autocast_dtype=torch.float16,
        grad_scaler=True,
        activation_format="fp16",
    ),
    PrecisionMode(
        "amp_bf16",
        "fp32 master weights, torch.autocast(bfloat16), no loss scaling",
        order=30,
        compute_dtype="bf16",
        color="#2ca02c",
        autocast_dtype=torch.bfloat16,
    ),
)

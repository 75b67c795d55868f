"""fp32, the baseline every other mode is measured against, and tf32: the same fp32 weights with
TF32 tensor-core matmuls. fp32 turns TF32 off explicitly (matmul and cuDNN): PyTorch leaves
cuDNN's TF32 on by default, and many harnesses turn matmul TF32 on at import (METHODS rule 10)."""

from __future__ import annotations

from bench.engine.modes.base import PrecisionMode

MODES = (
    PrecisionMode(
        "fp32",
        "fp32 weights and math; TF32 explicitly off (matmul and cuDNN)",
        order=0,
        compute_dtype="fp32",
        color="#222222",
    ),
    PrecisionMode(
        "tf32",
        "fp32 weights; TF32 tensor-core matmuls and convolutions on",
        order=10,
        compute_dtype="tf32",
        color="#8c8c8c",
        tf32=True,
        min_compute_capability=(8, 0),
    ),
)

"""Precision modes: each knows whether a device can run it, how to prepare a model, the context
for a step, and whether training needs a GradScaler. Names follow TorchBench.

A mode never emulates what the device cannot do: `unsupported_reason` returns why, and the case
is recorded as skipped with that reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from bench.engine.device import Device


@dataclass(frozen=True)
class PrecisionMode:
    """How one precision runs: parameter dtype, autocast dtype, TF32, loss scaling."""

    name: str
    summary: str
    param_dtype: torch.dtype = torch.float32  # dtype of weights (and so of AdamW state)
    autocast_dtype: torch.dtype | None = None  # torch.autocast dtype, None = no autocast
    tf32: bool = False  # TF32 tensor-core math for fp32 matmuls/convolutions
    grad_scaler: bool = False  # torch.amp.GradScaler for training
    min_compute_capability: tuple[int, int] | None = None  # CUDA only when set
    implemented: bool = True

    def unsupported_reason(self, device: Device) -> str | None:
        """Why this mode cannot run on `device`, or None when it can."""
        if not self.implemented:
            need = _format_cc(self.min_compute_capability)
            return (
                f"{self.name} is declared but not implemented in this mpbench version "
                f"(planned with torchao; needs a CUDA GPU with compute capability >= {need})"
            )
        if self.min_compute_capability is not None:
            need = _format_cc(self.min_compute_capability)
            cc = device.compute_capability()
            if cc is None:
                return (
                    f"{self.name} needs a CUDA GPU with compute capability >= {need}; "
                    f"found {device.name}"
                )
            if cc < self.min_compute_capability:
                return (
                    f"{self.name} needs compute capability >= {need}; "
                    f"{device.product_name()} has {_format_cc(cc)}"
                )
        uses_bf16 = torch.bfloat16 in (self.param_dtype, self.autocast_dtype)
        if (
            uses_bf16
            and device.is_cuda
            and not torch.cuda.is_bf16_supported(including_emulation=False)
        ):
            return f"{self.name} needs native bfloat16 (compute capability >= 8.0); {device.product_name()} has none"
        return None

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Cast the model's weights to the mode's parameter dtype (in place; returns it)."""
        if self.param_dtype != torch.float32:
            model.to(dtype=self.param_dtype)
        return model

    def autocast(self, device: Device) -> contextlib.AbstractContextManager[object]:
        """The context each step runs in: torch.autocast for amp modes, else nothing."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def make_grad_scaler(self, device: Device) -> torch.amp.GradScaler | None:
        """A GradScaler with PyTorch's defaults (init 2**16, growth 2, backoff 0.5, interval 2000)."""
        if not self.grad_scaler:
            return None
        return torch.amp.GradScaler(device.type)

    @contextlib.contextmanager
    def global_state(self, device: Device) -> Iterator[None]:
        """Set the process-wide flags this mode needs and restore them all afterwards, so no case
        leaks TF32 or matmul-precision settings into the next (METHODS rule 10)."""
        saved = _GlobalFlags.capture()
        try:
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
            torch.backends.cudnn.allow_tf32 = self.tf32
            torch.set_float32_matmul_precision("high" if self.tf32 else "highest")
            torch.set_default_dtype(torch.float32)
            yield
        finally:
            saved.restore()

    def describe(self) -> dict[str, object]:
        """Settings recorded with every result of this mode."""
        return {
            "param_dtype": str(self.param_dtype).removeprefix("torch."),
            "autocast_dtype": (
                str(self.autocast_dtype).removeprefix("torch.") if self.autocast_dtype else None
            ),
            "tf32": self.tf32,
            "grad_scaler": self.grad_scaler,
        }


@dataclass(frozen=True)
class _GlobalFlags:
    """Every global a mode (or the numerics pass) may touch."""

    matmul_tf32: bool
    cudnn_tf32: bool
    matmul_precision: str
    default_dtype: torch.dtype
    deterministic: bool
    deterministic_warn_only: bool
    cudnn_benchmark: bool
    cudnn_deterministic: bool

    @classmethod
    def capture(cls) -> _GlobalFlags:
        return cls(
            matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
            cudnn_tf32=torch.backends.cudnn.allow_tf32,
            matmul_precision=torch.get_float32_matmul_precision(),
            default_dtype=torch.get_default_dtype(),
            deterministic=torch.are_deterministic_algorithms_enabled(),
            deterministic_warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            cudnn_deterministic=torch.backends.cudnn.deterministic,
        )

    def restore(self) -> None:
        torch.backends.cuda.matmul.allow_tf32 = self.matmul_tf32
        torch.backends.cudnn.allow_tf32 = self.cudnn_tf32
        torch.set_float32_matmul_precision(self.matmul_precision)
        torch.set_default_dtype(self.default_dtype)
        torch.use_deterministic_algorithms(
            self.deterministic, warn_only=self.deterministic_warn_only
        )
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.backends.cudnn.deterministic = self.cudnn_deterministic


def _format_cc(cc: tuple[int, int] | None) -> str:
    return "?" if cc is None else f"{cc[0]}.{cc[1]}"


PRECISION_MODES: dict[str, PrecisionMode] = {
    mode.name: mode
    for mode in (
        PrecisionMode("fp32", "fp32 weights and math; TF32 explicitly off (matmul and cuDNN)"),
        PrecisionMode(
            "tf32",
            "fp32 weights; TF32 tensor-core matmuls and convolutions on",
            tf32=True,
            min_compute_capability=(8, 0),
        ),
        PrecisionMode(
            "amp_fp16",
            "fp32 master weights, torch.autocast(float16), GradScaler for training",
            autocast_dtype=torch.float16,
            grad_scaler=True,
        ),
        PrecisionMode(
            "amp_bf16",
            "fp32 master weights, torch.autocast(bfloat16), no loss scaling",
            autocast_dtype=torch.bfloat16,
        ),
        PrecisionMode(
            "bf16",
            "pure bfloat16: weights, gradients and AdamW state in bfloat16, no autocast",
            param_dtype=torch.bfloat16,
        ),
        PrecisionMode(
            "fp16",
            "pure float16 weights and optimizer state, no loss scaling (failure is a finding)",
            param_dtype=torch.float16,
        ),
        PrecisionMode(
            "fp8",
            "float8 training via torchao (declared; not implemented yet, always skipped)",
            min_compute_capability=(8, 9),
            implemented=False,
        ),
    )
}

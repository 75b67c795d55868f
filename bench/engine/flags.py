"""Process-wide numeric flags a precision mode (or a numerics pass) may change, and their
restoration: TF32 for matmuls and cuDNN, the default dtype, deterministic algorithms, cuDNN
benchmark. A mode's `global_state` captures them all before a case and restores them after, so
no case leaks a setting into the next (METHODS rule 10); env.json records `tf32_state()`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

# ---------------------------------------------------------------------------------------------
# TF32. torch >= 2.9 has a new API (`fp32_precision` on each backend: "ieee", "tf32", "none" =
# inherit) next to the legacy one (`allow_tf32`, `set_float32_matmul_precision`). Once anything
# in the process used the new API (transformers' `enable_tf32` does), *reading* a legacy flag
# raises. So where the new API exists, mpbench sets, captures, records and restores through it
# alone; the legacy flags only on an older torch.
# ---------------------------------------------------------------------------------------------

# Backends whose fp32 math the new API governs, parent first ("" is torch.backends itself).
_FP32_PRECISION_KNOBS = (
    "",
    "cuda.matmul",
    "cudnn",
    "cudnn.conv",
    "cudnn.rnn",
    "mkldnn",
    "mkldnn.matmul",
    "mkldnn.conv",
    "mkldnn.rnn",
)
# The leaves a mode sets: TF32 on the GPU for the tf32 mode, exact fp32 ("ieee") otherwise,
# and exact fp32 for oneDNN on a CPU (which could otherwise be told to use bf16 for fp32).
_TF32_LEAVES = ("cuda.matmul", "cudnn.conv", "cudnn.rnn")
_CPU_LEAVES = ("mkldnn.matmul", "mkldnn.conv", "mkldnn.rnn")


def _backend(path: str) -> Any:
    obj: Any = torch.backends
    for part in filter(None, path.split(".")):
        obj = getattr(obj, part, None)
    return obj


def new_tf32_api() -> bool:
    """True where this torch has the `fp32_precision` API (torch >= 2.9)."""
    return hasattr(_backend("cuda.matmul"), "fp32_precision")


def _fp32_precisions() -> dict[str, str]:
    return {
        path: _backend(path).fp32_precision
        for path in _FP32_PRECISION_KNOBS
        if hasattr(_backend(path), "fp32_precision")
    }


def set_tf32(enabled: bool) -> None:
    """TF32 on (matmul and cuDNN) or exact fp32 everywhere, through the API this torch has."""
    if new_tf32_api():
        for path in _TF32_LEAVES + _CPU_LEAVES:
            backend = _backend(path)
            if hasattr(backend, "fp32_precision"):
                backend.fp32_precision = "tf32" if enabled and path in _TF32_LEAVES else "ieee"
        return
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    torch.set_float32_matmul_precision("high" if enabled else "highest")


def tf32_state() -> dict[str, Any]:
    """The TF32 settings now, as env.json records them: whether matmuls and cuDNN
    convolutions may use TF32, and which API says so."""
    if new_tf32_api():
        values = _fp32_precisions()

        def effective(path: str) -> bool:
            value = values.get(path, "none")
            parent = path.rpartition(".")[0]
            if value == "none" and path:
                return effective(parent)
            return value == "tf32"

        return {
            "matmul": effective("cuda.matmul"),
            "cudnn": effective("cudnn.conv"),
            "api": "fp32_precision",
        }
    return {
        "matmul": torch.backends.cuda.matmul.allow_tf32,
        "cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "api": "allow_tf32",
    }


@dataclass(frozen=True)
class GlobalFlags:
    """Every global a mode (or the numerics pass) may touch."""

    tf32: tuple[tuple[str, Any], ...]  # (knob, value) in restore order, through one API
    default_dtype: torch.dtype
    deterministic: bool
    deterministic_warn_only: bool
    cudnn_benchmark: bool
    cudnn_deterministic: bool

    @classmethod
    def capture(cls) -> GlobalFlags:
        if new_tf32_api():
            tf32 = tuple(_fp32_precisions().items())
        else:
            tf32 = (
                ("allow_tf32.matmul", torch.backends.cuda.matmul.allow_tf32),
                ("allow_tf32.cudnn", torch.backends.cudnn.allow_tf32),
                ("float32_matmul_precision", torch.get_float32_matmul_precision()),
            )
        return cls(
            tf32=tf32,
            default_dtype=torch.get_default_dtype(),
            deterministic=torch.are_deterministic_algorithms_enabled(),
            deterministic_warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            cudnn_deterministic=torch.backends.cudnn.deterministic,
        )

    def restore(self) -> None:
        for knob, value in self.tf32:
            if knob == "allow_tf32.matmul":
                torch.backends.cuda.matmul.allow_tf32 = value
            elif knob == "allow_tf32.cudnn":
                torch.backends.cudnn.allow_tf32 = value
            elif knob == "float32_matmul_precision":
                torch.set_float32_matmul_precision(value)
            else:  # the parent first (setting it resets its children), then each child
                _backend(knob).fp32_precision = value
        torch.set_default_dtype(self.default_dtype)
        torch.use_deterministic_algorithms(
            self.deterministic, warn_only=self.deterministic_warn_only
        )
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.backends.cudnn.deterministic = self.cudnn_deterministic


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """Exact fp32 math (TF32 off everywhere, fp32 default dtype) inside; every flag restored."""
    saved = GlobalFlags.capture()
    try:
        set_tf32(False)
        torch.set_default_dtype(torch.float32)
        yield
    finally:
        saved.restore()

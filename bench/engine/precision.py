"""Precision modes: each is one component that knows whether a device can run it, how to make a
case's working copy of the model (`prepare`), the context of a step (`autocast`,
`inference_context`), its optimizer and whether training needs a GradScaler. Names follow
TorchBench.

The timed runner (bench.engine.runner) and the numerics passes (bench.engine.numerics.passes)
both go through these methods and nothing else, so a mode that converts a model (fp8,
bench.engine.fp8) is timed and judged as the same model.

A mode never emulates what the device cannot do: `unsupported_reason` returns why, and the case
is recorded as skipped with that reason.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from bench.engine import workloads
from bench.engine.device import Device


@dataclass
class PreparedModel:
    """A mode's working copy of a model, on the device, and what preparing it did."""

    model: torch.nn.Module
    details: dict[str, Any] = field(default_factory=dict)  # recorded with the case's result
    # Parameters stored transposed against the pristine model (GPT-2's Conv1D turned into
    # nn.Linear): gradients are transposed back before they are compared with fp32's.
    transposed: frozenset[str] = frozenset()


def copy_in_dtype(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A deep copy whose floating-point parameters and buffers are made directly in `dtype`, so a
    bf16/fp16 copy never holds a transient fp32 copy (which would inflate its peak memory). Tied
    weights stay tied: deepcopy's memo maps each shared tensor to one new tensor."""
    memo: dict[int, Any] = {}
    if dtype != torch.float32:
        for p in model.parameters():
            if p.is_floating_point() and id(p) not in memo:
                memo[id(p)] = torch.nn.Parameter(
                    p.detach().to(dtype), requires_grad=p.requires_grad
                )
        for b in model.buffers():
            if b.is_floating_point() and id(b) not in memo:
                memo[id(b)] = b.detach().to(dtype)
    return copy.deepcopy(model, memo)


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

    def unsupported_reason(self, device: Device, workload: str | None = None) -> str | None:
        """Why this mode cannot run on `device` (for `workload`, when given), or None."""
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

    def prepare(self, pristine: torch.nn.Module, device: Device, workload: str) -> PreparedModel:
        """The working copy a case runs, timed or in a numerics pass: the pristine fp32 weights
        copied straight into the mode's parameter dtype, on the device."""
        model = copy_in_dtype(pristine, self.param_dtype)
        return PreparedModel(model.to(device.torch_device))

    def autocast(
        self, device: Device, workload: str = "train"
    ) -> contextlib.AbstractContextManager[object]:
        """The context each step runs in: torch.autocast for amp modes, else nothing."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)

    def caveat(self, device: Device, compiled: bool) -> str | None:
        """What a reader must know about this mode's figures on this device, or None."""
        return None

    def inference_context(self) -> contextlib.AbstractContextManager[object]:
        """The context of a forward pass that needs no gradients."""
        return torch.inference_mode()

    def make_optimizer(self, model: torch.nn.Module, device: Device) -> torch.optim.Optimizer:
        """The training optimizer (AdamW, lr 1e-4, state allocated: bench.engine.workloads),
        fused on CUDA for every mode."""
        return workloads.make_optimizer(model, fused=device.is_cuda)

    def after_optimizer_step(self, model: torch.nn.Module) -> Callable[[], None] | None:
        """A hook a training step runs after optimizer.step(), or None (none of the built-in
        modes needs one: the step then calls nothing extra)."""
        return None

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
            set_tf32(self.tf32)
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
class _GlobalFlags:
    """Every global a mode (or the numerics pass) may touch."""

    tf32: tuple[tuple[str, Any], ...]  # (knob, value) in restore order, through one API
    default_dtype: torch.dtype
    deterministic: bool
    deterministic_warn_only: bool
    cudnn_benchmark: bool
    cudnn_deterministic: bool

    @classmethod
    def capture(cls) -> _GlobalFlags:
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


def _format_cc(cc: tuple[int, int] | None) -> str:
    return "?" if cc is None else f"{cc[0]}.{cc[1]}"


# The modes that are dtype, autocast and flag settings; the fp8 modes convert the model
# (bench.engine.fp8); bench.engine.modes holds them all.
BASE_MODES: tuple[PrecisionMode, ...] = (
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
)

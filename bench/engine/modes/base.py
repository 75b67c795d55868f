"""The precision-mode component: everything mpbench knows about one precision, in one object.

A mode knows whether a device can run it (`unsupported_reason`), how to make a case's working
copy of the model (`prepare`), the context of a step (`autocast`, `inference_context`), its
optimizer and GradScaler, and what proves it took effect (`took_effect`, asked by selfcheck). It
also owns its facts: the dtype its matmuls run in (`compute_dtype`, the key of the peak table
and of the matmul rate), its place and colour in every view (`order`, `color`, `dashed`: recorded
in the run's manifest, which the views read), the number format its activation summary is judged
in (`activation_format`), and how much slower it runs eagerly on a GPU than the host floor says
(`eager_gpu_slowdown`, for the sweep estimate).

The timed runner (bench.engine.runner) and the numerics passes (bench.engine.numerics.passes)
both go through these methods and nothing else, so a mode that converts a model (fp8) is timed
and judged as the same model. A mode never emulates what the device cannot do:
`unsupported_reason` says why, and the case is recorded as skipped with that reason.

Adding a mode: one module in this package with a `MODES` tuple (bench.engine.modes finds it),
plus its tests.
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
from bench.engine.flags import GlobalFlags, exact_fp32, set_tf32, tf32_state
from bench.results.manifest import PrecisionStyle

_TORCH_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}
_TORCH_DTYPES["fp16"] = torch.float16


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


def square_matmul(device: Device, n: int, dtype: torch.dtype) -> Callable[[], Any]:
    """A call computing a @ b for two random n x n matrices of `dtype` on the device."""
    a = torch.randn(n, n, device=device.torch_device, dtype=dtype)
    b = torch.randn(n, n, device=device.torch_device, dtype=dtype)
    return lambda: a @ b


@dataclass(frozen=True)
class SlowKernel:
    """This device runs a mode's matmuls with a reference kernel, not a fast one: how fast it
    went, and the sentence that says so (bench.engine.budget decides what to time then)."""

    flops_per_s: float
    reason: str


@dataclass(frozen=True)
class PrecisionMode:
    """How one precision runs: parameter dtype, autocast dtype, TF32, loss scaling; and its facts."""

    name: str
    summary: str
    order: int  # place in every view (fp32, the baseline, is 0)
    compute_dtype: str  # the dtype its matmuls run in: fp32, tf32, bf16, fp16 or fp8 (peak key)
    color: str  # its colour in every plot; a pure-dtype twin shares its amp mode's hue...
    dashed: bool = False  # ...and is drawn dashed
    param_dtype: torch.dtype = torch.float32  # dtype of weights (and so of AdamW state)
    autocast_dtype: torch.dtype | None = None  # torch.autocast dtype, None = no autocast
    tf32: bool = False  # TF32 tensor-core math for fp32 matmuls/convolutions
    grad_scaler: bool = False  # torch.amp.GradScaler for training
    min_compute_capability: tuple[int, int] | None = None  # CUDA only when set
    # The format whose range the activation summary judges (None: no summary; fp32 records the
    # ranges themselves): "fp16" or "e4m3" (bench.engine.numerics.activations).
    activation_format: str | None = None
    # Eagerly on a GPU, step time over the host floor, per workload (torchao's float8 casts run
    # unfused without torch.compile); None where eager runs at the host floor.
    eager_gpu_slowdown: dict[str, float] | None = None

    @property
    def label(self) -> str:
        """What views call the mode."""
        return self.name

    def unsupported_reason(self, device: Device, workload: str | None = None) -> str | None:
        """Why this mode cannot run on `device` (for `workload`, when given), or None."""
        if self.min_compute_capability is not None:
            need = format_cc(self.min_compute_capability)
            cc = device.compute_capability()
            if cc is None:
                return (
                    f"{self.name} needs a CUDA GPU with compute capability >= {need}; "
                    f"found {device.name}"
                )
            if cc < self.min_compute_capability:
                return (
                    f"{self.name} needs compute capability >= {need}; "
                    f"{device.product_name()} has {format_cc(cc)}"
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

    def slow_kernel(self, device: Device) -> SlowKernel | None:
        """Whether this device runs the mode's matmuls on a reference kernel (None: a real one,
        as for every built-in mode but fp8 on some CPUs)."""
        return None

    def inference_context(self) -> contextlib.AbstractContextManager[object]:
        """The context of a forward pass that needs no gradients."""
        return torch.inference_mode()

    def make_optimizer(
        self, model: torch.nn.Module, device: Device, capturable: bool = False
    ) -> torch.optim.Optimizer:
        """The training optimizer (AdamW, lr 1e-4, state allocated: bench.engine.workloads),
        fused on CUDA for every mode; `capturable` where a CUDA graph captures its step."""
        return workloads.make_optimizer(model, fused=device.is_cuda, capturable=capturable)

    def after_optimizer_step(self, model: torch.nn.Module) -> Callable[[], None] | None:
        """A hook a training step runs after optimizer.step(), or None (none of the built-in
        modes needs one: the step then calls nothing extra)."""
        return None

    def sharded_param_dtype(self) -> torch.dtype | None:
        """The dtype FSDP2 all-gathers the parameters in and computes with
        (`MixedPrecisionPolicy(param_dtype=...)`): an amp mode's autocast dtype, since its fp32
        master weights would only be cast to it for every matmul anyway (FSDP2's documented
        mixed-precision recipe, torchtitan's default); None, the stored dtype, for the others
        (fp32 and tf32 compute in fp32; pure bf16/fp16 already store their compute dtype)."""
        if self.param_dtype == torch.float32 and self.autocast_dtype is not None:
            return self.autocast_dtype
        return None

    def prepare_for_sharding(self, model: torch.nn.Module) -> dict[str, Any]:
        """Whatever the mode changes in its model before FSDP2 shards it (fp8: the float8
        all-gather); what it did, for the case's details. Nothing for most modes."""
        return {}

    def make_grad_scaler(self, device: Device) -> torch.amp.GradScaler | None:
        """A GradScaler with PyTorch's defaults (init 2**16, growth 2, backoff 0.5, interval 2000)."""
        if not self.grad_scaler:
            return None
        return torch.amp.GradScaler(device.type)

    @contextlib.contextmanager
    def global_state(self, device: Device) -> Iterator[None]:
        """Set the process-wide flags this mode needs and restore them all afterwards, so no case
        leaks TF32 or matmul-precision settings into the next (METHODS rule 10)."""
        saved = GlobalFlags.capture()
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

    def display(self) -> PrecisionStyle:
        """The facts a run records for its views (its manifest's `precisions`)."""
        return PrecisionStyle(self.name, self.order, self.color, self.dashed, self.compute_dtype)

    def matmul(self, device: Device, n: int) -> Callable[[], Any]:
        """An n x n x n matmul as this mode's compute dtype runs it (bench.engine.rates times it,
        inside `global_state`)."""
        return square_matmul(device, n, _TORCH_DTYPES[self.compute_dtype])

    def took_effect(self, device: Device, model: torch.nn.Module, details: dict[str, Any]) -> str:
        """'' when a prepared model is what this mode says it is, else what is wrong: its
        parameters' dtype, its autocast's matmul dtype, TF32 changing a matmul's result."""
        dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
        if dtypes != {self.param_dtype}:
            return f"parameters are {sorted(map(str, dtypes))}, not {self.param_dtype}"
        return self._autocast_and_tf32_took_effect(device)

    def _autocast_and_tf32_took_effect(self, device: Device) -> str:
        if self.autocast_dtype is not None:
            x = torch.ones(8, 8, device=device.torch_device)
            with self.autocast(device):
                got = (x @ x).dtype
            if got != self.autocast_dtype:
                return f"a matmul under its autocast gives {got}, not {self.autocast_dtype}"
        if self.tf32:
            a = torch.randn(1024, 1024, device=device.torch_device)
            with exact_fp32():
                exact = a @ a
            with self.global_state(device):
                if not tf32_state()["matmul"]:
                    return "TF32 is not on inside the mode"
                tf32 = a @ a
            if torch.equal(exact, tf32):
                return "a 1024x1024 matmul gives the same result with and without TF32"
        return ""


def format_cc(cc: tuple[int, int] | None) -> str:
    """'8.9' for (8, 9); '?' when unknown."""
    return "?" if cc is None else f"{cc[0]}.{cc[1]}"

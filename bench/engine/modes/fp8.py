"""fp8 precision modes through torchao: one small component with a hardware gate, a clear import
error and a module filter (torchtitan's `Float8LinearConverter` is the model).

Modes:
  fp8          float8 training with tensorwise dynamic scaling (one scale per tensor; e4m3 for
               inputs and weights, e5m2 for gradients): torchao.float8.convert_to_float8_training
  fp8_rowwise  the same with rowwise scaling (one power-of-two scale per row, e4m3 throughout)
  mxfp8        MX block scaling (torchao's MXFP8Linear: blocks of 32 values share an e8m0 scale)
Training keeps fp32 master weights and runs the step under bf16 autocast, as torchtitan does.

Inference (infer, generate):
  GPU  the same layers quantized by torchao's float8 inference config (`quantize_` with
       Float8DynamicActivationFloat8WeightConfig: dynamic per-tensor or per-row activation and
       weight scales), bf16 weights, no autocast.
  CPU  torchao's inference config refuses a CPU, so the Float8Linear forward runs instead: the
       same dynamic scaling, under torch.no_grad (its tensors refuse torch.inference_mode).
`details.fp8_path` records which path ran.

Gates, each with its own skip reason: torchao importable; on a GPU compute capability >= 8.9
(Ada, Hopper; mxfp8: >= 10.0, Blackwell); on a CPU a float8 matmul in this torch build
(torch._scaled_mm has a CPU kernel since torch 2.13). fp8 on a CPU is real float8 quantisation
through that kernel: its numerics are the real thing, its speed is no fp8-hardware figure, and
the result says so (`details.caveat`). mxfp8 on a CPU would only be torchao's high-precision
emulation of MX, so it is skipped there.

Module filter (every nn.Linear, after GPT-2's Conv1D layers are turned into nn.Linear with the
transposed weight): both dimensions divisible by 16 (the float8 matmul's rule; 32 for mxfp8) and
not the output head (tied or not). `details` records how many Linear layers (and parameters) run
in fp8 out of how many.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bench.engine.device import Device
from bench.engine.modes.base import PrecisionMode, PreparedModel, SlowKernel, copy_in_dtype

INSTALL = "pip install 'torchao>=0.18' (a dependency of mpbench: reinstalling mpbench brings it)"
CPU_CAVEAT = (
    "fp8 on a CPU: real float8 quantisation through torch._scaled_mm's CPU kernel, not fp8 "
    "tensor cores; its numerics are real, its speed is no fp8-hardware figure"
)
EAGER_GPU_CAVEAT = (
    "fp8 without torch.compile: torchao's float8 is meant to run compiled (its casts are fused "
    "there); eager fp8 is known to be slow on small shapes"
)


def _quiet_import() -> None:
    """Import torchao without its notices: on a CPU it logs that its CUDA-only extension
    libraries cannot load, and torch warns about one of its enums; neither concerns mpbench."""
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import torchao.float8  # noqa: F401


@functools.cache
def torchao_reason(name: str) -> str | None:
    """Why torchao's float8 cannot be imported here, or None."""
    try:
        _quiet_import()
    except ImportError as exc:
        return f"{name} needs torchao's float8 ({exc}); {INSTALL}"
    return None


# A CPU whose float8 matmul runs below this fraction of its fp32 matmul's rate runs a reference
# kernel (torch 2.13 on an Intel Xeon with AMX: a 256x128x128 _scaled_mm in ~150 ms, 1/1000 of
# fp32; on an AMD EPYC with avx512_bf16 ~0.3 ms, a third of fp32).
REFERENCE_KERNEL_FRACTION = 1 / 50
PROBE_SHAPE = (128, 128, 128)  # M, K, N: small, so a reference kernel costs ~40 ms to find


@functools.cache
def cpu_kernel_rates() -> tuple[float, float]:
    """(fp8, fp32) FLOP/s of a small matmul on this CPU: the median of three calls each, after
    one untimed call (cached: once per process)."""
    m, k, n = PROBE_SHAPE
    a8 = torch.randn(m, k).to(torch.float8_e4m3fn)
    b8 = torch.randn(n, k).to(torch.float8_e4m3fn).t()
    a32, b32 = torch.randn(m, k), torch.randn(k, n)
    one = torch.ones(())

    def rate(call: Callable[[], Any]) -> float:
        call()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        return 2 * m * n * k / max(sorted(times)[1], 1e-9)

    fp8 = rate(lambda: torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16))
    return fp8, rate(lambda: a32 @ b32)


@functools.cache
def cpu_float8_matmul_reason() -> str | None:
    """Why this torch build cannot multiply float8 matrices on the CPU, or None."""
    try:
        a = torch.ones(16, 16).to(torch.float8_e4m3fn)
        one = torch.ones((), dtype=torch.float32)
        torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    except (AttributeError, RuntimeError, NotImplementedError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"torch {torch.__version__} has no float8 matmul on the CPU ({first[:120]})"
    return None


def fp8_matmul(device: Device, n: int) -> Callable[[], Any]:
    """An n x n x n e4m3 x e4m3 -> bf16 torch._scaled_mm on the device."""
    a = torch.randn(n, n, device=device.torch_device).to(torch.float8_e4m3fn)
    b = torch.randn(n, n, device=device.torch_device).to(torch.float8_e4m3fn).t()
    one = torch.ones((), device=device.torch_device)
    return lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# GPT-2's Conv1D, and which Linear layers run in fp8
# ---------------------------------------------------------------------------------------------


def swap_conv1d_for_linear(model: torch.nn.Module) -> frozenset[str]:
    """Replace every transformers Conv1D (weight [in, out], x @ W + b) by an nn.Linear holding the
    transposed weight (outputs and gradients are the same); returns the swapped weights' names."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return frozenset()
    swapped = set()
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, Conv1D):
                continue
            in_features, out_features = child.weight.shape
            linear = torch.nn.Linear(
                in_features,
                out_features,
                bias=child.bias is not None,
                device=child.weight.device,
                dtype=child.weight.dtype,
            )
            with torch.no_grad():
                linear.weight.copy_(child.weight.t())
                if child.bias is not None:
                    linear.bias.copy_(child.bias)
            setattr(parent, name, linear)
            swapped.add(f"{parent_name}.{name}.weight" if parent_name else f"{name}.weight")
    return frozenset(swapped)


class LinearFilter:
    """torchao's module filter: an nn.Linear runs in fp8 when both its dimensions are divisible by
    `multiple` and it is not the output head: tied to the input embedding, the head's matrix is
    also the embedding table; untied (Mistral's 32k, Llama-3-8B's 128k), it is the layer
    torchtitan's float8 recipe keeps in high precision too, since the logits' error goes
    straight into the loss."""

    def __init__(self, model: torch.nn.Module, multiple: int = 16) -> None:
        self.multiple = multiple
        embeddings = (
            model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        )
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self._tied = {id(embeddings.weight)} if embeddings is not None else set()
        if isinstance(head, torch.nn.Linear):
            self._tied.add(id(head.weight))
        self.accepted: list[str] = []
        self.linears = {
            name: module
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)
        }

    def __call__(self, module: torch.nn.Module, fqn: str) -> bool:
        keep = (
            isinstance(module, torch.nn.Linear)
            and id(module.weight) not in self._tied
            and module.in_features % self.multiple == 0
            and module.out_features % self.multiple == 0
        )
        if keep and fqn not in self.accepted:
            self.accepted.append(fqn)
        return keep

    def details(self) -> dict[str, Any]:
        """How much of the model runs in fp8: Linear layers and their parameters."""

        def params(names: Any) -> int:
            return sum(
                sum(p.numel() for p in self.linears[n].parameters(recurse=False)) for n in names
            )

        return {
            "fp8_linear_layers": len(self.accepted),
            "linear_layers": len(self.linears),
            "fp8_linear_parameters": params(self.accepted),
            "linear_parameters": params(self.linears),
        }


# ---------------------------------------------------------------------------------------------
# The modes
# ---------------------------------------------------------------------------------------------


def describe_float8_config(config: Any) -> dict[str, Any]:
    """A Float8LinearConfig as plain data (scaling type, granularity and dtype per cast)."""

    def cast(c: Any) -> dict[str, str]:
        return {
            "scaling": c.scaling_type.value,
            "granularity": c.scaling_granularity.value,
            "dtype": str(c.target_dtype).removeprefix("torch."),
        }

    return {
        "input": cast(config.cast_config_input),
        "weight": cast(config.cast_config_weight),
        "grad_output": cast(config.cast_config_grad_output),
        "round_scales_to_power_of_2": config.round_scales_to_power_of_2,
        "emulate": config.emulate,
    }


@dataclass(frozen=True)
class Float8Training(PrecisionMode):
    """fp8 and fp8_rowwise: torchao float8 training (dynamic scaling), fp32 master weights."""

    recipe: str = "tensorwise"  # torchao's Float8LinearConfig recipe name
    fp8_capability: tuple[int, int] = (8, 9)  # the GPU generation with the kernels it needs
    fp8_hardware: str = "(Ada, Hopper) for fp8 tensor cores"

    def unsupported_reason(self, device: Device, workload: str | None = None) -> str | None:
        """torchao missing; a GPU below its compute capability; a CPU it cannot run on."""
        reason = torchao_reason(self.name)
        if reason is not None:
            return reason
        cc = device.compute_capability()
        if cc is None:
            return self.cpu_reason(device)
        if cc < self.fp8_capability:
            need = ".".join(map(str, self.fp8_capability))
            return (
                f"{self.name} needs compute capability >= {need} {self.fp8_hardware}; "
                f"{device.product_name()} has {cc[0]}.{cc[1]}"
            )
        return super().unsupported_reason(device, workload)  # native bf16, for the autocast

    def cpu_reason(self, device: Device) -> str | None:
        """Why this mode cannot run on a CPU: only when this torch has no float8 matmul there."""
        return cpu_float8_matmul_reason()

    def slow_kernel(self, device: Device) -> SlowKernel | None:
        """On a CPU whose float8 matmul is a reference kernel (REFERENCE_KERNEL_FRACTION of
        fp32's rate or less): its rate and why. GPUs gate fp8 on real tensor cores."""
        if device.is_cuda or self.cpu_reason(device) is not None:
            return None
        fp8, fp32 = cpu_kernel_rates()
        if fp8 > fp32 * REFERENCE_KERNEL_FRACTION:
            return None
        return SlowKernel(
            fp8,
            f"torch's CPU float8 matmul here is a reference kernel ({fp8 / 1e9:.3g} GFLOP/s, "
            f"1/{fp32 / fp8:.0f} of fp32's)",
        )

    def _gpu_inference(self, device: Device, workload: str) -> bool:
        return device.is_cuda and workload != "train"

    def prepare(self, pristine: torch.nn.Module, device: Device, workload: str) -> PreparedModel:
        """An fp32 copy with Conv1D as Linear, its eligible Linear layers in fp8, on the device."""
        _quiet_import()
        model = copy_in_dtype(pristine, torch.float32)
        transposed = swap_conv1d_for_linear(model)
        gpu_inference = self._gpu_inference(device, workload)
        model.to(device.torch_device, dtype=torch.bfloat16 if gpu_inference else None)
        accept = LinearFilter(model)
        details: dict[str, Any] = {"fp8_recipe": self.recipe}
        if gpu_inference:
            from torchao.quantization import (
                Float8DynamicActivationFloat8WeightConfig,
                PerRow,
                PerTensor,
                quantize_,
            )

            granularity = PerRow() if self.recipe == "rowwise" else PerTensor()
            config = Float8DynamicActivationFloat8WeightConfig(granularity=granularity)
            quantize_(model, config, filter_fn=accept)
            details["fp8_path"] = (
                f"torchao quantize_ (Float8DynamicActivationFloat8WeightConfig, "
                f"{type(granularity).__name__}), bf16 weights"
            )
        else:
            from torchao.float8 import Float8LinearConfig, convert_to_float8_training

            config = Float8LinearConfig.from_recipe_name(self.recipe)
            convert_to_float8_training(model, module_filter_fn=accept, config=config)
            details["fp8_path"] = f"torchao float8 training (Float8Linear, {self.recipe} scaling)"
            if workload != "train":  # a GPU-less inference: the same Float8Linear, forward only
                details["fp8_path"] += ", forward only without gradients"
            details["fp8_config"] = describe_float8_config(config)
        details.update(accept.details(), conv1d_to_linear=len(transposed))
        return PreparedModel(model, details, transposed)

    def matmul(self, device: Device, n: int) -> Callable[[], Any]:
        """An e4m3 x e4m3 -> bf16 torch._scaled_mm (what torchao's float8 layers run)."""
        return fp8_matmul(device, n)

    def converted(self, model: torch.nn.Module) -> list[str]:
        """The names of the layers `prepare` turned into fp8 ones: torchao's Float8Linear for
        training, an nn.Linear holding a torchao float8 weight after `quantize_`."""
        from torchao.float8.float8_linear import Float8Linear

        found = []
        for name, module in model.named_modules():
            if isinstance(module, Float8Linear):
                found.append(name)
            elif isinstance(module, torch.nn.Linear) and type(module.weight) not in (
                torch.nn.Parameter,
                torch.Tensor,
            ):
                found.append(name)  # quantize_ swaps the weight for a float8 tensor subclass
        return found

    def took_effect(self, device: Device, model: torch.nn.Module, details: dict[str, Any]) -> str:
        """'' when as many layers run in fp8 as the details say (and at least one), and the
        autocast around them is bf16."""
        converted = self.converted(model)
        if not converted or details.get("fp8_linear_layers") != len(converted):
            return f"{len(converted)} fp8 Linear layers, details say {details.get('fp8_linear_layers')}"
        return self._autocast_and_tf32_took_effect(device)

    def caveat(self, device: Device, compiled: bool) -> str | None:
        """On a CPU: no fp8 hardware. On a GPU, eagerly: torchao's fp8 wants torch.compile."""
        if not device.is_cuda:
            return CPU_CAVEAT
        return None if compiled else EAGER_GPU_CAVEAT

    def prepare_for_sharding(self, model: torch.nn.Module) -> dict[str, Any]:
        """FSDP2 all-gathers the fp8 layers' weights in float8 (torchao's
        `enable_fsdp_float8_all_gather`, what torchtitan runs), a quarter of fp32's bytes; only
        tensorwise scaling has it (torchao 0.18 refuses it for rowwise)."""
        enabled = enable_float8_all_gather(model)
        if enabled is None:
            return {
                "fsdp_float8_all_gather": (
                    f"no: torchao's float8 all-gather needs tensorwise scaling ({self.recipe})"
                )
            }
        return {"fsdp_float8_all_gather": f"yes: {enabled} layers"}

    def after_optimizer_step(self, model: torch.nn.Module) -> Callable[[], None] | None:
        """Under FSDP2 with the float8 all-gather: the weights' float8 scales for the next
        all-gather, computed in one all-reduce after each optimizer step
        (torchao's `precompute_float8_dynamic_scale_for_fsdp`, as torchtitan does) instead of
        one per layer inside it. Nothing otherwise."""
        if not float8_all_gather_weights(model):
            return None
        from torchao.float8 import precompute_float8_dynamic_scale_for_fsdp

        return lambda: precompute_float8_dynamic_scale_for_fsdp(model)

    def autocast(
        self, device: Device, workload: str = "train"
    ) -> contextlib.AbstractContextManager[object]:
        """bf16 autocast around the fp8 layers; none for GPU inference (bf16 weights there)."""
        if self._gpu_inference(device, workload):
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    def inference_context(self) -> contextlib.AbstractContextManager[object]:
        """torch.no_grad: Float8Linear's tensors refuse torch.inference_mode (torchao 0.18)."""
        return torch.no_grad()


@dataclass(frozen=True)
class MXFP8Training(Float8Training):
    """mxfp8: torchao's MXFP8Linear (block scaling, 32 values a scale); compute capability 10.0.
    On anything else it is skipped: torchao's MX kernels need Blackwell, and its CPU path is a
    high-precision emulation, which would be reported as mxfp8 without being it."""

    recipe: str = "mxfp8"
    fp8_capability: tuple[int, int] = (10, 0)
    fp8_hardware: str = "(Blackwell) for torchao's MX kernels"

    def cpu_reason(self, device: Device) -> str | None:
        """Always: on a CPU torchao's MX path is an emulation, which mpbench never reports."""
        return (
            f"{self.name} needs a CUDA GPU with compute capability >= 10.0 {self.fp8_hardware}; "
            f"found {device.name} (torchao would only emulate MX there)"
        )

    def prepare(self, pristine: torch.nn.Module, device: Device, workload: str) -> PreparedModel:
        """An fp32 copy with Conv1D as Linear and its eligible Linear layers as MXFP8Linear."""
        _quiet_import()
        model = copy_in_dtype(pristine, torch.float32)
        transposed = swap_conv1d_for_linear(model)
        model.to(device.torch_device)
        accept = LinearFilter(model, multiple=32)  # MX blocks are 32 values long
        convert_to_mxfp8(model, accept, emulated=not device.is_cuda)
        details = {
            "fp8_recipe": self.recipe,
            "fp8_path": "torchao MXFP8Linear (e4m3 values, e8m0 scale per 32-value block)",
            **accept.details(),
            "conv1d_to_linear": len(transposed),
        }
        return PreparedModel(model, details, transposed)

    def prepare_for_sharding(self, model: torch.nn.Module) -> dict[str, Any]:
        """Nothing: FSDP2 all-gathers MXFP8Linear's weights in bf16 (torchao 0.18 has no MX
        all-gather for it)."""
        return {"fsdp_float8_all_gather": "no: torchao's MXFP8Linear has no float8 all-gather"}

    def converted(self, model: torch.nn.Module) -> list[str]:
        """The names of the layers `prepare` turned into torchao's MXFP8Linear."""
        from torchao.prototype.moe_training.mxfp8_linear import MXFP8Linear

        return [name for name, m in model.named_modules() if isinstance(m, MXFP8Linear)]

    def autocast(
        self, device: Device, workload: str = "train"
    ) -> contextlib.AbstractContextManager[object]:
        """bf16 autocast around the MX layers."""
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def enable_float8_all_gather(model: torch.nn.Module) -> int | None:
    """Switch the model's Float8Linear layers to FSDP2's float8 all-gather before the model is
    sharded: how many layers (None when their scaling is not tensorwise, which torchao's
    float8 all-gather refuses).

    torchao applies `Float8LinearConfig(enable_fsdp_float8_all_gather=True)` when it converts
    a layer (`Float8Linear.from_float`); the precision mode converts before it knows the
    layout, so this does the same afterwards: the config with the flag on, and the weight
    wrapped in `WeightWithDynamicFloat8CastTensor` (same Parameter data, so the optimizer, built
    later, sees it). tests/test_parallel_recipe.py holds it equal to torchao's own conversion."""
    from torchao.float8.config import ScalingGranularity, ScalingType
    from torchao.float8.float8_linear import Float8Linear
    from torchao.float8.fsdp_utils import WeightWithDynamicFloat8CastTensor

    layers = [m for m in model.modules() if isinstance(m, Float8Linear)]
    weight_casts = [m.config.cast_config_weight for m in layers]
    if any(
        c.scaling_granularity is not ScalingGranularity.TENSORWISE
        or c.scaling_type is not ScalingType.DYNAMIC
        for c in weight_casts
    ):
        return None
    for layer in layers:
        if layer.config.enable_fsdp_float8_all_gather:
            continue
        layer.config = dataclasses.replace(layer.config, enable_fsdp_float8_all_gather=True)
        layer.weight = torch.nn.Parameter(
            WeightWithDynamicFloat8CastTensor(
                layer.weight,
                layer.linear_mm_config,
                layer.config.cast_config_weight.target_dtype,
            ),
            requires_grad=layer.weight.requires_grad,
        )
    return len(layers)


def float8_all_gather_weights(model: torch.nn.Module) -> int:
    """How many Float8Linear weights FSDP2 has sharded with the float8 all-gather."""
    from torchao.float8.float8_linear import Float8Linear
    from torchao.float8.fsdp_utils import WeightWithDynamicFloat8CastTensor

    count = 0
    for module in model.modules():
        local = getattr(getattr(module, "weight", None), "_local_tensor", None)  # a DTensor's
        if isinstance(module, Float8Linear) and isinstance(
            local, WeightWithDynamicFloat8CastTensor
        ):
            count += 1
    return count


def convert_to_mxfp8(
    model: torch.nn.Module, accept: Callable[[torch.nn.Module, str], bool], emulated: bool = False
) -> None:
    """Swap every accepted nn.Linear for torchao's MXFP8Linear, keeping its parameter objects
    (so tied weights stay tied). `emulated` selects torchao's high-precision emulation, which
    only the tests use (a GPU of compute capability 10.0 runs the real kernels)."""
    from torchao.prototype.moe_training.mxfp8_linear import MXFP8Linear
    from torchao.quantization.quantize_.common.kernel_preference import KernelPreference

    preference = KernelPreference.EMULATED if emulated else KernelPreference.AUTO
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            fqn = f"{parent_name}.{name}" if parent_name else name
            if type(child) is not torch.nn.Linear or not accept(child, fqn):
                continue
            mx = MXFP8Linear(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                device="meta",
                kernel_preference=preference,
            )
            mx.weight, mx.bias = child.weight, child.bias
            setattr(parent, name, mx)


# Eager torchao float8 on a GPU (its casts unfused) runs this much slower than the host floor
# says (H200, gpt2-124m batch 8 x 512: train 166-205 ms vs bf16's 46 ms; infer 38-84 ms vs
# 30 ms). On a CPU the measured fp8 rate already includes the casts.
EAGER_GPU_SLOWDOWN = {"train": 4.0, "infer": 2.0, "generate": 2.0}

MODES = (
    Float8Training(
        "fp8",
        "float8 training via torchao: tensorwise dynamic scaling (e4m3, e5m2 gradients), fp32 "
        "master weights, bf16 autocast; GPU inference via torchao's float8 quantize_",
        order=60,
        compute_dtype="fp8",
        color="#9467bd",
        autocast_dtype=torch.bfloat16,
        activation_format="e4m3",
        eager_gpu_slowdown=EAGER_GPU_SLOWDOWN,
        recipe="tensorwise",
    ),
    Float8Training(
        "fp8_rowwise",
        "float8 training via torchao: rowwise dynamic scaling (e4m3, power-of-two scales), fp32 "
        "master weights, bf16 autocast",
        order=70,
        compute_dtype="fp8",
        color="#9467bd",
        dashed=True,
        autocast_dtype=torch.bfloat16,
        activation_format="e4m3",
        eager_gpu_slowdown=EAGER_GPU_SLOWDOWN,
        recipe="rowwise",
    ),
    MXFP8Training(
        "mxfp8",
        "MX block-scaled fp8 via torchao's MXFP8Linear (compute capability >= 10.0)",
        order=80,
        compute_dtype="fp8",
        color="#d62790",
        autocast_dtype=torch.bfloat16,
        activation_format="e4m3",
        eager_gpu_slowdown=EAGER_GPU_SLOWDOWN,
    ),
)

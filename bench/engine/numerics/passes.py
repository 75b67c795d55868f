"""The deterministic numerics passes: a short training run and a forward pass per precision.

Both start from a copy of the model's pristine fp32 state, cast as the precision requires, and
see the same batches in the same order (METHODS rule 9). The training step is
`bench.engine.workloads.train_step_fn` itself, with the mode's optimizer and GradScaler.
Dropout is switched off in these copies: its masks would make two precisions differ by their
random streams, not by their arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from bench.engine import workloads
from bench.engine.device import Device
from bench.engine.modes import BASELINE_MODE
from bench.engine.modes.base import PrecisionMode, PreparedModel
from bench.engine.numerics.activations import activation_ranges
from bench.engine.parallel import Layout, SingleDevice, full_tensor, local_tensor

# The reference fp32 is judged against where it is affordable (METHODS rule 12: PyTorch's same()).
# Not a mode a suite can name (it is not in bench.engine.modes' registry).
FP64_REFERENCE = PrecisionMode(
    "fp64",
    "fp64 weights and math: the reference for fp32's own error",
    order=-1,
    compute_dtype="fp64",
    color="#000000",
    param_dtype=torch.float64,
)
# GradScaler backs off by halving; the gradient check does the same, at most this many times.
_MAX_BACKOFFS = 64


def working_copy(
    pristine: torch.nn.Module, mode: PrecisionMode, device: Device, workload: str
) -> PreparedModel:
    """The mode's own working copy (`PrecisionMode.prepare`, as the timed case makes it), with
    dropout off."""
    prepared = mode.prepare(pristine, device, workload)
    for module in prepared.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return prepared


def parameter_names(model: torch.nn.Module) -> dict[str, tuple[str, ...]]:
    """Each parameter's first name -> all its names (tied weights have several)."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return {group[0]: tuple(group) for group in names.values()}


def _to_device(batch: dict[str, torch.Tensor], device: Device) -> dict[str, torch.Tensor]:
    return {k: v.to(device.torch_device) for k, v in batch.items()}


def _gradients_cpu(
    model: torch.nn.Module, divide_by: float = 1.0, transposed: frozenset[str] = frozenset()
) -> dict[str, torch.Tensor]:
    """Every parameter's gradient on the CPU in at least fp32, divided by the loss scale, in the
    pristine model's layout (a weight the mode stored transposed is transposed back)."""
    out = {}
    for name, param in model.named_parameters():
        if param.grad is not None:
            dtype = torch.float64 if param.grad.dtype == torch.float64 else torch.float32
            # FSDP2 shards gradients (DTensor): gathered whole, on every rank alike.
            grad = full_tensor(param.grad.detach()).to("cpu", dtype) / divide_by
            out[name] = grad.t() if name in transposed else grad
    return out


def _all_finite(tensors: Any) -> bool:
    flags = [torch.isfinite(local_tensor(t)).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True


def first_step_gradients(
    prepared: PreparedModel,
    mode: PrecisionMode,
    device: Device,
    batch: dict[str, torch.Tensor],
    scaler: torch.amp.GradScaler | None,
    module: torch.nn.Module | None = None,
    agree: Callable[[bool], bool] | None = None,
) -> dict[str, torch.Tensor]:
    """Gradients of the first batch at the initial weights, as the mode's training computes them.

    With a GradScaler the loss is scaled by its initial scale and halved until the gradients are
    finite, as the scaler's first steps would; the result is unscaled (powers of two: exact).
    Leaves the model's gradients cleared. `module` is what the forward pass calls (a DDP
    wrapper, whose backward all-reduces the gradients); the model itself by default. `agree`
    makes "finite" one answer for all ranks (FSDP2: each rank sees only its shards).
    """
    model = prepared.model
    module = module or model
    scale = float(scaler.get_scale()) if scaler is not None else 1.0
    for _ in range(_MAX_BACKOFFS):
        with mode.autocast(device, "train"):
            loss = module(**batch).loss
        (loss * scale if scaler is not None else loss).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if scaler is None:
            break
        finite = _all_finite(grads)
        if agree(finite) if agree is not None else finite:
            break
        model.zero_grad(set_to_none=True)
        scale /= 2.0
    out = _gradients_cpu(model, scale, prepared.transposed)
    model.zero_grad(set_to_none=True)
    return out


@dataclass
class TrainingTrace:
    """What one precision's training pass produced (losses read once per step, after it)."""

    loss: list[float] = field(default_factory=list)
    first_nan_step: int | None = None
    # "loss", "gradients" or "weights" (after the optimizer step); "another rank" in a
    # data-parallel pass where a peer saw it first
    nan_source: str | None = None
    grads: dict[str, torch.Tensor] = field(default_factory=dict)  # first step, CPU, unscaled
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)
    scale: list[float] | None = None  # GradScaler scale used at each step
    skipped_at: list[int] = field(default_factory=list)  # steps the GradScaler skipped


def run_training(
    pristine: torch.nn.Module,
    mode: PrecisionMode,
    device: Device,
    batches: list[dict[str, torch.Tensor]],
    gradients: bool = True,
    on_step: Callable[[int, int], None] | None = None,
    layout: Layout | None = None,
) -> TrainingTrace:
    """Train a copy for len(batches) steps, one batch per step; stop at the first NaN/inf.

    A data-parallel `layout` (bench.engine.parallel) wraps the copy as the timed case is
    wrapped: the steps then call what it returns, the gradients compared are the reduced ones,
    and every decision to stop is taken by all ranks together (a rank stopping alone would leave
    its peers' collectives unmatched).

    NaN/inf in the loss, in the gradients (modes without a GradScaler: with one, a non-finite
    gradient is a skipped step, which is the scaler's job) or in the weights after the optimizer
    step ends the pass and is recorded with its step.
    """
    prepared = working_copy(pristine, mode, device, "train")
    model = prepared.model
    model.train()
    layout = layout or SingleDevice()
    module, _ = layout.wrap(model, device)  # before the optimizer: FSDP2 shards in place
    agree = layout.agree
    optimizer = mode.make_optimizer(model, device)
    scaler = mode.make_grad_scaler(device)
    trace = TrainingTrace(names=parameter_names(model))
    device_batches = [_to_device(b, device) for b in batches]
    if gradients:
        trace.grads = first_step_gradients(
            prepared, mode, device, device_batches[0], scaler, module, agree
        )
    grad_flags: list[torch.Tensor] = []

    def check_grad(param: torch.Tensor) -> None:
        # Runs inside backward as each gradient is complete; flags stay on the device (no sync).
        if param.grad is not None:
            grad_flags.append(torch.isfinite(local_tensor(param.grad)).all())

    params = list(model.parameters())
    handles = [p.register_post_accumulate_grad_hook(check_grad) for p in params]
    # train_step_fn closes over this dict: refilling it feeds the next batch to the same step.
    current: dict[str, torch.Tensor] = {}
    step = workloads.train_step_fn(
        module,
        current,
        optimizer,
        lambda: mode.autocast(device, "train"),
        scaler,
        mode.after_optimizer_step(model),
    )
    if scaler is not None:
        trace.scale = []
    try:
        for index, batch in enumerate(device_batches):
            current.clear()
            current.update(batch)
            grad_flags.clear()
            scale_before = float(scaler.get_scale()) if scaler is not None else None
            loss = float(step().float())
            trace.loss.append(loss)
            if scaler is not None and scale_before is not None:
                trace.scale.append(scale_before)
                if float(scaler.get_scale()) < scale_before:
                    trace.skipped_at.append(index)
            source = _nan_source(loss, grad_flags, scaler is None, params)
            if agree is not None and not agree(source is None) and source is None:
                source = "another rank"  # a peer saw a NaN/inf (in its data or its shard)
            if on_step is not None:
                on_step(index + 1, len(device_batches))
            if source is not None:
                trace.first_nan_step, trace.nan_source = index, source
                break
    finally:
        for handle in handles:
            handle.remove()
    return trace


def _nan_source(
    loss: float, grad_flags: list[torch.Tensor], check_grads: bool, params: list[torch.Tensor]
) -> str | None:
    """Where a step first went non-finite, or None."""
    if not math.isfinite(loss):
        return "loss"
    if check_grads and grad_flags and not bool(torch.stack(grad_flags).all()):
        return "gradients"
    if not _all_finite(p.detach() for p in params):
        return "weights"
    return None


def run_inference(
    pristine: torch.nn.Module,
    mode: PrecisionMode,
    device: Device,
    batches: list[dict[str, torch.Tensor]],
    forward_kwargs: dict[str, Any],
) -> torch.Tensor:
    """Logits of every batch (concatenated on the batch dimension), fp32 (fp64 for the fp64
    reference) on the CPU, from a forward under the mode's autocast and inference context;
    `forward_kwargs` are the model family's (as the infer workload passes them)."""
    model = working_copy(pristine, mode, device, "infer").model
    model.eval()
    outputs = []
    with mode.inference_context():
        for batch in batches:
            with mode.autocast(device, "infer"):
                logits = model(**_to_device(batch, device), **forward_kwargs).logits
            dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
            outputs.append(logits.to("cpu", dtype))
    return torch.cat(outputs)


def fp32_activation_ranges(
    pristine: torch.nn.Module,
    device: Device,
    batch: dict[str, torch.Tensor],
    forward_kwargs: dict[str, Any],
) -> list[dict[str, Any]]:
    """The activation range analysis on an fp32 copy (eval mode, fp32 math)."""
    model = working_copy(pristine, BASELINE_MODE, device, "infer").model
    model.eval()
    return activation_ranges(model, _to_device(batch, device), forward_kwargs)

"""Measured matmul rates of this device: what `mpbench selfcheck` compares with the peak table and
what the sweep estimate (bench.engine.estimate) divides FLOPs by.

One square matmul per dtype, sized so one call is long enough to time (doubled from 256 until a
call takes 20 ms, or the size cap is reached), timed by the device's step timer (CUDA events on
a GPU) after a warm-up, median of the timed calls.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from bench.engine.device import Device
from bench.engine.modes import PRECISION_MODES
from bench.engine.runner import measure_steps

MATMUL_DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8")
CALL_TARGET_S = 0.02  # a call this long is timed well by either timer
LARGEST_N = {"cuda": 8192, "cpu": 1024}


@dataclass(frozen=True)
class MatmulRate:
    """n x n x n matmuls in `dtype`: achieved TFLOP/s (None with the reason it cannot run)."""

    dtype: str
    n: int = 0
    tflops: float | None = None
    reason: str | None = None


def unsupported_reason(device: Device, dtype: str) -> str | None:
    """Why this device has no `dtype` matmul (None when it has one)."""
    cc = device.compute_capability()
    if dtype == "tf32" and (cc is None or cc < (8, 0)):
        return "tf32 needs a CUDA GPU with compute capability >= 8.0"
    if dtype == "fp8" and cc is not None and cc < (8, 9):
        return "fp8 matmuls need compute capability >= 8.9"
    return None


def square_matmul(device: Device, n: int, dtype: torch.dtype) -> Callable[[], Any]:
    """A call computing a @ b for two random n x n matrices of `dtype` on the device."""
    a = torch.randn(n, n, device=device.torch_device, dtype=dtype)
    b = torch.randn(n, n, device=device.torch_device, dtype=dtype)
    return lambda: a @ b


def fp8_matmul(device: Device, n: int) -> Callable[[], Any]:
    """An e4m3 x e4m3 -> bf16 torch._scaled_mm (what torchao's float8 layers run)."""
    a = torch.randn(n, n, device=device.torch_device).to(torch.float8_e4m3fn)
    b = torch.randn(n, n, device=device.torch_device).to(torch.float8_e4m3fn).t()
    one = torch.ones((), device=device.torch_device)
    return lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)


def time_per_call_s(step: Callable[[], Any], device: Device, iterations: int = 10) -> float:
    """Median seconds of one call, by the device's step timer after a warm-up."""
    measured = measure_steps(step, 3, iterations, device)
    return statistics.median(measured.step_s)


def calibrated_size(
    make: Callable[[int], Callable[[], Any]],
    device: Device,
    largest: int,
    target_s: float = CALL_TARGET_S,
) -> int:
    """The matrix size for a rate: doubled from 256 until one call takes `target_s` or
    `largest` is reached (a CPU's fp16 matmul is 100x slower than its fp32 one: a fixed size
    would take minutes there, or be too small to time elsewhere)."""
    n = 256
    while n < largest:
        step = make(n)
        step()
        device.synchronize()
        t0 = time.perf_counter()
        step()
        device.synchronize()
        if time.perf_counter() - t0 >= target_s:
            break
        n *= 2
    return n


def measure_matmul(
    device: Device, dtype: str, iterations: int = 10, target_s: float = CALL_TARGET_S
) -> MatmulRate:
    """The achieved TFLOP/s of square matmuls in `dtype` (fp32, tf32, bf16, fp16, fp8); a
    shorter `target_s` (the estimate's) times smaller matrices."""
    reason = unsupported_reason(device, dtype)
    if reason:
        return MatmulRate(dtype, reason=reason)
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)

    def make(size: int) -> Callable[[], Any]:
        if dtype == "fp8":
            return fp8_matmul(device, size)
        return square_matmul(device, size, torch_dtype)

    # TF32 on for tf32 only: every other dtype measured with the fp32 mode's strict flags.
    with PRECISION_MODES["tf32" if dtype == "tf32" else "fp32"].global_state(device):
        n = calibrated_size(make, device, LARGEST_N["cuda" if device.is_cuda else "cpu"], target_s)
        seconds = time_per_call_s(make(n), device, iterations)
    return MatmulRate(dtype, n, 2 * n**3 / seconds / 1e12)

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

from bench.engine.device import Device
from bench.engine.modes import compute_dtypes, mode_for_dtype
from bench.engine.runner import measure_steps

MATMUL_DTYPES = compute_dtypes()  # fp32, tf32, bf16, fp16, fp8: the peak table's keys
CALL_TARGET_S = 0.02  # a call this long is timed well by either timer
SLOW_CALL_FACTOR = 10
LARGEST_N = {"cuda": 8192, "cpu": 1024}


@dataclass(frozen=True)
class MatmulRate:
    """n x n x n matmuls in `dtype`: achieved TFLOP/s (None with the reason it cannot run)."""

    dtype: str
    n: int = 0
    tflops: float | None = None
    reason: str | None = None


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
    return _calibrate(make, device, largest, target_s)[0]


def _calibrate(
    make: Callable[[int], Callable[[], Any]], device: Device, largest: int, target_s: float
) -> tuple[int, float]:
    """calibrated_size, and the seconds of the last call it timed at that size."""
    n = 256
    while True:
        step = make(n)
        step()
        device.synchronize()
        t0 = time.perf_counter()
        step()
        device.synchronize()
        call_s = time.perf_counter() - t0
        if call_s >= target_s or n >= largest:
            return n, call_s
        n *= 2


def measure_matmul(
    device: Device, dtype: str, iterations: int = 10, target_s: float = CALL_TARGET_S
) -> MatmulRate:
    """The achieved TFLOP/s of square matmuls in `dtype` (a mode's compute dtype: fp32, tf32,
    fp16, bf16, fp8), measured through the first mode that computes in it; a shorter `target_s`
    (the estimate's) times smaller matrices."""
    mode = mode_for_dtype(dtype)  # its gate says whether this device has the dtype
    reason = mode.unsupported_reason(device)
    if reason:
        return MatmulRate(dtype, reason=reason)

    def make(size: int) -> Callable[[], Any]:
        return mode.matmul(device, size)

    # Under the mode's own flags: TF32 on for tf32 only, exact fp32 for the rest.
    with mode.global_state(device):
        largest = LARGEST_N["cuda" if device.is_cuda else "cpu"]
        n, seconds = _calibrate(make, device, largest, target_s)
        # A call 10x longer than wanted at the smallest size (a reference kernel: torch's CPU
        # float8 matmul on some CPUs takes 0.6 s at 256^3) is timed well enough already.
        if seconds < SLOW_CALL_FACTOR * target_s:
            seconds = time_per_call_s(make(n), device, iterations)
    return MatmulRate(dtype, n, 2 * n**3 / seconds / 1e12)

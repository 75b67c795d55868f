"""How busy the GPU was in a case's steps: the measurement behind the host-bound flag.

Why: a step the host cannot launch fast enough leaves the GPU idle between kernels, and its time
is the host's, not the precision's (the first H200 run: bf16 eager at batch 8 x 512 kept the
GPU 26-62% busy and showed 2.5x fp32 where the hardware allows about 10x; METHODS rule 27).
The GPU's own clock says how much of a step it worked.

How: after the timed steps, `PROFILE_STEPS` more steps run under torch.profiler with CUDA
activity only (CUPTI's kernel, copy and memset records; no CPU op recording, which would slow
the host and make every case look host-bound). The busy time is the union of those intervals:
kernels that overlap on several streams count once, so the fraction cannot exceed 1. The
fraction is busy time over the window's wall time, from the first step's launch to the
synchronize after the last (on the host's clock; the profiler's own start and stop are
outside it):

    gpu_busy_fraction = |union of GPU activity intervals| / window wall time

The window starts from an idle GPU (the timed steps were synchronized), so the host's work
before the first kernel counts as idle once per window, not once per step: with a few steps of
milliseconds each that is a small bias toward "host-bound", as is CUPTI's own cost per launch.
The same data-parallel profiler approach measures collective time (bench.engine.parallel).

On a CPU there is no such clock: nothing is recorded (None), never a guess. The rule that
turns the fraction into the `host-bound` flag is analysis' (bench.analysis.summary).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from bench.engine.device import Device

# Steps profiled after the timed ones: enough to average over step boundaries, few enough that
# the profiler's buffers stay small.
PROFILE_STEPS = 5


def union_us(intervals_us: Iterable[tuple[float, float]]) -> float:
    """Total length of the union of [start, end) intervals: overlaps counted once, empty or
    reversed intervals ignored."""
    total = 0.0
    open_start = open_end = None
    for start, end in sorted(intervals_us):
        if end <= start:
            continue
        if open_end is None or start > open_end:
            if open_end is not None:
                total += open_end - open_start
            open_start, open_end = start, end
        else:
            open_end = max(open_end, end)
    if open_end is not None:
        total += open_end - open_start
    return total


def busy_fraction(intervals_us: Iterable[tuple[float, float]], wall_us: float) -> float | None:
    """The union of GPU activity over the window's wall time, at most 1; None for an empty
    window."""
    if not wall_us > 0:
        return None
    return min(1.0, union_us(intervals_us) / wall_us)


def device_intervals_us(events: Iterable[Any]) -> list[tuple[float, float]]:
    """(start, end) in microseconds of every GPU-side record among torch.profiler's events
    (`prof.events()`: FunctionEvents whose `device_type` is CUDA, with a `time_range`)."""
    from torch.autograd import DeviceType

    return [
        (float(e.time_range.start), float(e.time_range.end))
        for e in events
        if e.device_type == DeviceType.CUDA
    ]


def gpu_busy_fraction(
    step: Callable[[], Any], device: Device, steps: int = PROFILE_STEPS
) -> float | None:
    """The share of a profiled window of `steps` steps in which the GPU ran anything (module
    docstring); None on a CPU."""
    if not device.is_cuda or steps < 1:
        return None
    from torch.profiler import ProfilerActivity, profile

    device.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start_s = time.perf_counter()
        for _ in range(steps):
            step()
        device.synchronize()
        wall_us = (time.perf_counter() - start_s) * 1e6
    return busy_fraction(device_intervals_us(prof.events() or []), wall_us)

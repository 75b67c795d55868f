"""The host-bound rule: a GPU case whose GPU was busy less than HOST_BOUND_BELOW of its step.

`timing.gpu_busy_fraction` (bench.engine.gpubusy) is the share of a profiled window after the
timed steps in which the GPU ran anything. Below 85% the host (Python launching kernels,
eager dispatch, a host sync) sets the pace for a sixth of the step or more: the step time, and
a speedup made of it, measures the host as much as the precision (the first H200 run: eager
bf16 26-62% busy, 2.5x fp32 where the hardware allows about 10x, 35% apart between days). A
faster precision can only hide behind the host, so a host-bound case's speedup is a floor.

Every view shows the flag (terminal notes, summary tables' speedups, the report's banner,
--json, check); the recommendation and the headline speedups keep host-bound modes and mark
them, rather than skip them: the mode may still be the fastest, and a skipped row would hide
the one figure the run has. A CPU case has no fraction and is never flagged.
"""

from __future__ import annotations

import math

# Below this share of its step the GPU was busy, a case is host-bound (85%: a sixth of the step
# idle; the threshold, documented in the README's "Host-bound flag").
HOST_BOUND_BELOW = 0.85


def is_host_bound(gpu_busy_fraction: float | None) -> bool:
    """True where the GPU was busy less than HOST_BOUND_BELOW of the step; False without a
    figure (a CPU case, an older run)."""
    if gpu_busy_fraction is None or math.isnan(gpu_busy_fraction):
        return False
    return gpu_busy_fraction < HOST_BOUND_BELOW

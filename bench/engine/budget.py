"""How much of a case to time when its precision runs on a reference kernel on this device.

torch's CPU float8 matmul is a reference kernel on some CPUs (an Intel Xeon with AMX: a
256x128x128 `_scaled_mm` in ~150 ms, 1/1000 of fp32's rate), and a tiny fp8 training step then
takes seconds where fp32's takes milliseconds. Such timings say nothing about fp8 hardware, and
timing every fp8 case of a sweep would cost minutes; the numerics of those cases are real and
worth having. So, for a case whose mode reports a slow kernel here
(`PrecisionMode.slow_kernel`):

    step   = its slow-kernel FLOPs / the kernel's measured rate       (a prediction, no step run)
             slow-kernel FLOPs = analytic FLOPs x the layers' share of the matmul weights
    share  = [timing] slow_kernel_budget_s / the number of such cases in the sweep
    timing = the suite's own, when its warm-up cap and steps fit the share;
             else 1 warm-up step and as many timed steps as fit (at least one), recorded in
             `details.timing_budget` and said in the case's caveat;
             else none: the case is `skipped` with the reason, and its numerics pass still runs.

Every case of the sweep gets the same share, so the rule holds the same in every worker process.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from bench.engine.device import Device
from bench.engine.flops import analytic_flops, layer_matmul_share
from bench.engine.modes import PRECISION_MODES
from bench.engine.modes.base import SlowKernel
from bench.engine.suite import Suite, Timing
from bench.results.schema import Case


@dataclass(frozen=True)
class TimingPlan:
    """What to time of a case: the timing to run, and where the budget cut it, why."""

    timing: Timing
    budget: dict[str, Any] | None = None  # details.timing_budget (None: the suite's timing)
    skip_reason: str | None = None  # not timed at all (its numerics pass still runs)

    @property
    def caveat(self) -> str | None:
        """The line a shortened case's views show."""
        if self.budget is None or self.skip_reason is not None:
            return None
        return (
            f"timed {self.timing.iterations} step(s) after 1 warm-up step, within its share of "
            f"the slow-kernel budget ({self.budget['share_s']:.1f} s): {self.budget['reason']}"
        )


def predicted_step_s(suite: Suite, case: Case, kernel: SlowKernel) -> float:
    """Seconds one step of `case` would take on the slow kernel."""
    spec = suite.model(case.model)
    flops = analytic_flops(
        spec, case.workload, case.batch_size, case.seq_len, suite.sweep.generate_new_tokens
    )
    return flops * layer_matmul_share(spec) / kernel.flops_per_s


def slow_case_count(suite: Suite, device: Device) -> int:
    """How many cases of the sweep this device would run on a reference kernel."""
    count = 0
    for case in suite.cases(device.name):
        mode = PRECISION_MODES[case.precision]
        if mode.unsupported_reason(device, case.workload) is None and mode.slow_kernel(device):
            count += 1
    return count


def plan_timing(suite: Suite, device: Device, case: Case, slow_cases: int) -> TimingPlan:
    """The case's timing under the slow-kernel budget (module docstring: the rule)."""
    timing = suite.timing
    kernel = PRECISION_MODES[case.precision].slow_kernel(device)
    if kernel is None:
        return TimingPlan(timing)
    step_s = predicted_step_s(suite, case, kernel)
    share_s = timing.slow_kernel_budget_s / max(slow_cases, 1)
    if (timing.warmup_cap + timing.iterations) * step_s <= share_s:
        return TimingPlan(timing)
    budget = {
        "reason": kernel.reason,
        "predicted_step_s": step_s,
        "share_s": share_s,
        "slow_kernel_budget_s": timing.slow_kernel_budget_s,
        "slow_cases": slow_cases,
    }
    steps = min(int(share_s // step_s) - 1, timing.iterations)
    if steps >= 1:
        shortened = replace(timing, warmup=1, max_warmup=1, iterations=steps)
        return TimingPlan(shortened, {**budget, "iterations": steps})
    reason = (
        f"not timed: {kernel.reason}; a step would take about {step_s:.2g} s and its share of "
        f"[timing] slow_kernel_budget_s ({timing.slow_kernel_budget_s:g} s over {slow_cases} such "
        f"cases) is {share_s:.2g} s. Its numerics pass ran"
    )
    return TimingPlan(timing, budget, reason)

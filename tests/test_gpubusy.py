"""The host-bound check: how busy the GPU was (bench/engine/gpubusy.py) from a fake profiler
trace, the rule that flags a case (bench/analysis/hostbound.py), and the runner recording the
fraction on a GPU and nothing on a CPU."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from fake_gpu import FakeGpu
from torch.autograd import DeviceType

from bench.analysis.hostbound import HOST_BOUND_BELOW, is_host_bound
from bench.engine import gpubusy
from bench.engine.device import Device
from bench.engine.gpubusy import busy_fraction, device_intervals_us, gpu_busy_fraction, union_us


def event(start_us: float, duration_us: float, device: Any = DeviceType.CUDA) -> Any:
    """A torch.profiler FunctionEvent as gpubusy reads it: a device type and a time range."""
    return SimpleNamespace(
        device_type=device, time_range=SimpleNamespace(start=start_us, end=start_us + duration_us)
    )


class FakeProfile:
    """torch.profiler.profile replaced: records its activities, returns the scripted events."""

    events_to_return: list[Any] = []
    activities: list[Any] = []

    def __init__(self, activities: list[Any]) -> None:
        FakeProfile.activities = activities

    def __enter__(self) -> FakeProfile:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def events(self) -> list[Any]:
        return self.events_to_return


def test_overlapping_kernels_count_once_so_busy_never_exceeds_one() -> None:
    two_streams = [(0.0, 60.0), (40.0, 100.0), (10.0, 20.0)]  # summed: 130 us in a 100 us window
    assert union_us(two_streams) == 100.0
    assert busy_fraction(two_streams, 100.0) == 1.0
    assert union_us([(0.0, 30.0), (50.0, 80.0), (80.0, 90.0), (5.0, 5.0)]) == 70.0


def test_gaps_between_kernels_are_idle_time() -> None:
    launches = [(0.0, 30.0), (50.0, 80.0)]  # the GPU waits 20 us on the host twice
    assert busy_fraction(launches, 100.0) == pytest.approx(0.6)
    assert busy_fraction([], 100.0) == 0.0
    assert busy_fraction(launches, 0.0) is None


def test_only_gpu_records_of_the_trace_count() -> None:
    trace = [event(0, 30), event(0, 95, DeviceType.CPU), event(50, 30)]  # the CPU op: a launch
    assert device_intervals_us(trace) == [(0.0, 30.0), (50.0, 80.0)]


def test_the_rule_flags_below_85_percent_and_never_without_a_figure() -> None:
    assert HOST_BOUND_BELOW == 0.85
    assert is_host_bound(0.6) and is_host_bound(0.849)
    assert not is_host_bound(0.85) and not is_host_bound(1.0)
    assert not is_host_bound(None) and not is_host_bound(float("nan"))


@pytest.mark.parametrize(
    ("trace", "expected", "flagged"),
    [
        # host-bound: two steps of 50 us, each 20 us of kernels then 30 us of Python
        ([event(0, 20), event(50, 20)], 0.4, True),
        # GPU-bound: back-to-back kernels on two overlapping streams
        ([event(0, 60), event(30, 40), event(60, 40)], 1.0, False),
    ],
)
def test_a_profiled_window_gives_the_fraction_and_the_flag(
    monkeypatch: pytest.MonkeyPatch, trace: list[Any], expected: float, flagged: bool
) -> None:
    FakeProfile.events_to_return = trace
    monkeypatch.setattr("torch.profiler.profile", FakeProfile)
    clock = iter([0.0, 100e-6])  # the window: 100 us of wall time on the host's clock
    monkeypatch.setattr(gpubusy.time, "perf_counter", lambda: next(clock))
    steps: list[int] = []
    fraction = gpu_busy_fraction(lambda: steps.append(1), FakeGpu(), steps=2)
    assert len(steps) == 2
    assert FakeProfile.activities == [torch.profiler.ProfilerActivity.CUDA]  # no CPU recording
    assert fraction == pytest.approx(expected) and is_host_bound(fraction) is flagged


def test_a_cpu_records_nothing_and_runs_no_step() -> None:
    steps: list[int] = []
    assert gpu_busy_fraction(lambda: steps.append(1), Device(torch.device("cpu"))) is None
    assert steps == []

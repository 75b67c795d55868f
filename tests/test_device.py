"""The device abstraction: timers and the peak-memory window (CPU real, CUDA through fakes)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from bench.engine import device as device_mod
from bench.engine.device import CpuStepTimer, Device, resolve_device
from bench.errors import MpbenchError

CPU = Device(torch.device("cpu"))


def test_cpu_timer_measures_each_step() -> None:
    timer = CPU.step_timer(3)
    assert isinstance(timer, CpuStepTimer)
    for i, pause_s in enumerate((0.01, 0.03, 0.02)):
        timer.start(i)
        time.sleep(pause_s)
        timer.stop(i)
    elapsed = timer.elapsed_s()
    assert [round(e, 2) for e in elapsed] == pytest.approx([0.01, 0.03, 0.02], abs=0.015)
    assert elapsed[1] > elapsed[0]


needs_vmhwm = pytest.mark.skipif(
    not device_mod._reset_vmhwm(),  # containers may refuse /proc/self/clear_refs
    reason="this kernel refuses /proc/self/clear_refs: the window samples RSS instead (tested "
    "below with the sampler)",
)


@needs_vmhwm
def test_cpu_memory_window_sees_a_known_allocation_within_5_percent() -> None:
    size_bytes = 256 * 2**20
    with CPU.memory_window() as reading:
        block = torch.ones(size_bytes // 4, dtype=torch.float32)  # ones: every page is touched
        del block
    assert reading.method == "vmhwm"
    assert reading.peak_bytes == pytest.approx(size_bytes, rel=0.05)


@needs_vmhwm
def test_cpu_memory_window_does_not_count_memory_held_before() -> None:
    held = torch.ones(64 * 2**20 // 4)
    with CPU.memory_window() as reading:
        small = torch.ones(16 * 2**20 // 4)
        del small
    assert reading.peak_bytes == pytest.approx(16 * 2**20, rel=0.1)
    del held


def test_rss_sampler_fallback_when_clear_refs_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(device_mod, "_reset_vmhwm", lambda: False)
    with CPU.memory_window() as reading:
        block = torch.ones(128 * 2**20 // 4)
        time.sleep(0.05)  # the sampler reads every millisecond
        del block
    assert reading.method == "rss-sampled"
    assert reading.peak_bytes == pytest.approx(128 * 2**20, rel=0.1)


class FakeCuda:
    """The narrow torch.cuda surface the Device uses, with a scripted allocator."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.allocated = 1000
        self.peak = 1000

    def synchronize(self, device=None) -> None:
        self.calls.append("synchronize")

    def reset_peak_memory_stats(self, device=None) -> None:
        self.calls.append("reset")
        self.peak = self.allocated

    def memory_allocated(self, device=None) -> int:
        return self.allocated

    def memory_reserved(self, device=None) -> int:
        return 4096

    def max_memory_allocated(self, device=None) -> int:
        return self.peak

    def max_memory_reserved(self, device=None) -> int:
        return 8192

    def empty_cache(self) -> None:
        self.calls.append("empty_cache")

    def current_stream(self, device=None):
        return ("stream", device)

    class Event:
        def __init__(self, enable_timing: bool = False) -> None:
            assert enable_timing
            self.t_ms = 0.0

        def record(self, stream=None) -> None:
            assert stream == ("stream", torch.device("cuda", 1)), (
                "record on the case device's stream"
            )
            self.t_ms = time.perf_counter() * 1000

        def elapsed_time(self, end) -> float:
            return end.t_ms - self.t_ms


def test_cuda_memory_window_resets_peak_and_reports_the_case_peak(monkeypatch) -> None:
    fake = FakeCuda()
    monkeypatch.setattr(torch, "cuda", fake)
    dev = Device(torch.device("cuda", 0))
    with dev.memory_window() as reading:
        fake.peak = 1000 + 5000  # the case allocates 5000 bytes at its peak
    assert fake.calls[:3] == ["empty_cache", "synchronize", "reset"]
    assert fake.calls[-1] == "synchronize"
    assert reading.peak_bytes == 5000
    assert reading.reserved_bytes == 8192 - 4096
    assert reading.method == "cuda-max-allocated"


def test_cuda_timer_records_events_and_synchronizes_once(monkeypatch) -> None:
    fake = FakeCuda()
    monkeypatch.setattr(torch, "cuda", fake)
    # cuda:1, while the process's current device stays cuda:0: the events follow the case device.
    timer = Device(torch.device("cuda", 1)).step_timer(2)
    for i in range(2):
        timer.start(i)
        time.sleep(0.01)
        timer.stop(i)
    assert fake.calls == []  # nothing synchronizes inside the loop
    elapsed = timer.elapsed_s()
    assert fake.calls == ["synchronize"]
    assert elapsed == pytest.approx([0.01, 0.01], abs=0.01)


def test_resolve_device() -> None:
    assert resolve_device("cpu").name == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(MpbenchError, match="--device: 'gpu' is not valid"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(MpbenchError, match="no CUDA GPU is visible"):
            resolve_device("cuda:0")


def test_compute_capability_comes_from_torch(monkeypatch) -> None:
    monkeypatch.setattr(
        torch,
        "cuda",
        SimpleNamespace(get_device_capability=lambda d: (9, 0), get_device_name=lambda d: "H100"),
    )
    dev = Device(torch.device("cuda", 0))
    assert dev.compute_capability() == (9, 0)
    assert dev.product_name() == "H100"

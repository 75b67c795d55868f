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


def test_cpu_timer_measures_each_step(monkeypatch) -> None:
    """Each step's time is its own stop minus its own start on the timer's clock (a scripted
    clock here: a busy machine cannot move it, a timer that mixes steps up still fails)."""
    clock = iter([10.0, 10.01, 11.0, 11.03, 12.5, 12.52])
    monkeypatch.setattr(device_mod.time, "perf_counter", lambda: next(clock))
    timer = CPU.step_timer(3)
    assert isinstance(timer, CpuStepTimer)
    for i in range(3):
        timer.start(i)
        timer.stop(i)
    assert timer.elapsed_s() == pytest.approx([0.01, 0.03, 0.02])


needs_vmhwm = pytest.mark.skipif(
    not device_mod._reset_vmhwm(),  # containers may refuse /proc/self/clear_refs
    reason="this kernel refuses /proc/self/clear_refs: the window samples RSS instead (tested "
    "below with the sampler)",
)


# The window reads this process's own resident set, which another process cannot change; the
# bounds leave room for the allocator's own pages, and still fail a window that misses the
# block, counts it twice, or counts what was held before it.
@needs_vmhwm
def test_cpu_memory_window_sees_a_known_allocation() -> None:
    size_bytes = 256 * 2**20
    with CPU.memory_window() as reading:
        block = torch.ones(size_bytes // 4, dtype=torch.float32)  # ones: every page is touched
        del block
    assert reading.method == "vmhwm"
    assert 0.95 * size_bytes <= reading.peak_bytes <= 1.25 * size_bytes


@needs_vmhwm
def test_cpu_memory_window_does_not_count_memory_held_before() -> None:
    held = torch.ones(64 * 2**20 // 4)
    with CPU.memory_window() as reading:
        small = torch.ones(16 * 2**20 // 4)
        del small
    assert 0.9 * 16 * 2**20 <= reading.peak_bytes <= 32 * 2**20  # not the 64 MiB held
    del held


def test_rss_sampler_fallback_when_clear_refs_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(device_mod, "_reset_vmhwm", lambda: False)
    reads = []
    real_read = device_mod._proc_status_kib

    def counted(key: str) -> int | None:
        reads.append(key)
        return real_read(key)

    monkeypatch.setattr(device_mod, "_proc_status_kib", counted)
    with CPU.memory_window() as reading:
        block = torch.ones(128 * 2**20 // 4)
        seen = len(reads)
        deadline = time.monotonic() + 30
        while len(reads) < seen + 3 and time.monotonic() < deadline:  # the sampler read it
            time.sleep(0.001)
        del block
    assert reading.method == "rss-sampled"
    assert 0.9 * 128 * 2**20 <= reading.peak_bytes <= 1.25 * 128 * 2**20


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

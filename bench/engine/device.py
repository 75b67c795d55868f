"""One device abstraction (synchronize, step timer, peak-memory window) used everywhere.

Nothing else in mpbench branches on CUDA vs CPU for timing or memory: it asks a `Device`.
"""

from __future__ import annotations

import ctypes
import gc
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from bench.errors import MpbenchError


@dataclass
class MemoryReading:
    """Filled in when a memory window closes: the case's peak over what was held before it.

    `restart_peak()` forgets the peak so far (what is held now still counts): torch.compile's
    compiling first call uses memory the case never needs again.
    """

    peak_bytes: int | None = None
    reserved_bytes: int | None = None
    method: str = "unknown"
    restart_peak: Callable[[], None] = lambda: None


# ---------------------------------------------------------------------------------------------
# Step timers: start(i)/stop(i) around step i, then elapsed_s() once after the loop.
# ---------------------------------------------------------------------------------------------


class CpuStepTimer:
    """perf_counter around each step; CPU work is synchronous, so no synchronize is needed."""

    def __init__(self, steps: int) -> None:
        self._start = [0.0] * steps
        self._stop = [0.0] * steps

    def start(self, i: int) -> None:
        """Mark the start of step i."""
        self._start[i] = time.perf_counter()

    def stop(self, i: int) -> None:
        """Mark the end of step i."""
        self._stop[i] = time.perf_counter()

    def elapsed_s(self) -> list[float]:
        """Per-step durations in seconds."""
        return [b - a for a, b in zip(self._start, self._stop)]


class CudaStepTimer:
    """CUDA events recorded around each step and read after one synchronize (METHODS rule 2)."""

    def __init__(self, steps: int, device: torch.device) -> None:
        self._device = device
        # Events and the stream are looked up here, so the timed loop only records. The stream is
        # this device's current one, named: the events time this device's work even where
        # another GPU is the process's current device.
        self._stream = torch.cuda.current_stream(device)
        self._start = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
        self._stop = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]

    def start(self, i: int) -> None:
        """Record the start event of step i."""
        self._start[i].record(self._stream)

    def stop(self, i: int) -> None:
        """Record the end event of step i."""
        self._stop[i].record(self._stream)

    def elapsed_s(self) -> list[float]:
        """Synchronize once, then per-step durations in seconds (events report milliseconds)."""
        torch.cuda.synchronize(self._device)
        return [a.elapsed_time(b) / 1000.0 for a, b in zip(self._start, self._stop)]


# ---------------------------------------------------------------------------------------------
# CPU memory: Linux keeps the resident high-water mark (VmHWM); writing 5 to clear_refs resets it.
# ---------------------------------------------------------------------------------------------

_PROC_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _proc_status_kib(key: str) -> int | None:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM), or None where /proc is missing."""
    try:
        with open(_PROC_STATUS, encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_vmhwm() -> bool:
    """Reset the resident high-water mark to the current RSS; False where the kernel refuses."""
    try:
        with open(_CLEAR_REFS, "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _restart_vmhwm() -> None:
    """Return freed heap to the OS, then start the high-water mark again from the RSS."""
    _malloc_trim()
    _reset_vmhwm()


def _malloc_trim() -> None:
    """Give freed heap pages back to the OS (glibc), so an earlier case's cached heap is not
    counted as "already resident" and hidden from the next case's peak."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _RssSampler:
    """Fallback where clear_refs is not writable: a thread samples RSS every millisecond.
    It can miss spikes shorter than the interval, so its method name says 'sampled'."""

    def __init__(self, interval_s: float = 0.001) -> None:
        self.peak_kib = _proc_status_kib("VmRSS") or 0
        self._interval_s = interval_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.wait(self._interval_s):
            self.peak_kib = max(self.peak_kib, _proc_status_kib("VmRSS") or 0)

    def restart(self) -> None:
        """Forget the peak so far: it starts again from the current RSS."""
        self.peak_kib = _proc_status_kib("VmRSS") or 0

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, _proc_status_kib("VmRSS") or 0)


# ---------------------------------------------------------------------------------------------
# The device
# ---------------------------------------------------------------------------------------------


@dataclass
class Device:
    """A torch device plus the three things a benchmark needs from it: sync, timer, memory."""

    torch_device: torch.device

    @property
    def type(self) -> str:
        """'cuda' or 'cpu'."""
        return self.torch_device.type

    @property
    def name(self) -> str:
        """Canonical device string, e.g. 'cpu' or 'cuda:0'."""
        if self.type == "cuda":
            return f"cuda:{self.torch_device.index or 0}"
        return "cpu"

    @property
    def is_cuda(self) -> bool:
        """True on a CUDA GPU."""
        return self.type == "cuda"

    @property
    def timing_method(self) -> str:
        """How `step_timer` times steps here (recorded as a result's `timing.method`)."""
        return "cuda-events" if self.is_cuda else "perf-counter"

    def compute_capability(self) -> tuple[int, int] | None:
        """(major, minor) on CUDA, None on CPU."""
        if not self.is_cuda:
            return None
        return torch.cuda.get_device_capability(self.torch_device)

    def gpu_name(self) -> str | None:
        """The GPU's name (what the peak table is keyed by); None on a CPU."""
        return self.product_name() if self.is_cuda else None

    def product_name(self) -> str:
        """GPU name on CUDA; the CPU model name otherwise."""
        if self.is_cuda:
            return torch.cuda.get_device_name(self.torch_device)
        return cpu_model_name()

    def activate(self) -> None:
        """Make this the current CUDA device of this process (a no-op on CPU). CUDA events and
        streams follow the current device; set_device also creates a CUDA context, so only the
        process that runs cases calls this, never a parent that hands them to workers."""
        if self.is_cuda:
            torch.cuda.set_device(self.torch_device)

    def synchronize(self) -> None:
        """Wait for all queued work on this device (a no-op on CPU)."""
        if self.is_cuda:
            torch.cuda.synchronize(self.torch_device)

    def step_timer(self, steps: int) -> CpuStepTimer | CudaStepTimer:
        """A timer for `steps` consecutive steps."""
        if self.is_cuda:
            return CudaStepTimer(steps, self.torch_device)
        return CpuStepTimer(steps)

    def free_memory(self) -> None:
        """Collect garbage and return cached memory, so the next case starts clean.

        On CUDA that includes the cuBLAS/cuBLASLt workspaces: they are allocated through the
        caching allocator per (handle, stream) (the autograd backward thread has its own), and
        empty_cache() never frees them. Left alone, the first case in a process pays for them in
        its window and later cases count them as "already held", so the first case's peak is
        overstated. torch's own leak checker clears them the same way.
        """
        gc.collect()
        if self.is_cuda:
            clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
            if clear_workspaces is not None:
                clear_workspaces()
            torch.cuda.empty_cache()
        else:
            _malloc_trim()

    @contextmanager
    def memory_window(self) -> Iterator[MemoryReading]:
        """Measure the peak memory of the enclosed code over what was in use when it began.

        CUDA: reset_peak_memory_stats, then max_memory_allocated/reserved (METHODS rule 7).
        CPU: reset VmHWM via /proc/self/clear_refs, peak = VmHWM - RSS at start (rule 8);
        where that is refused, a 1 ms RSS sampler (method 'rss-sampled', can miss short spikes);
        where there is no /proc at all, no figure (method 'unavailable').
        """
        reading = MemoryReading()
        self.free_memory()
        if self.is_cuda:

            def restart() -> None:
                self.synchronize()
                torch.cuda.reset_peak_memory_stats(self.torch_device)

            reading.restart_peak = restart
            restart()
            before = torch.cuda.memory_allocated(self.torch_device)
            before_reserved = torch.cuda.memory_reserved(self.torch_device)
            try:
                yield reading
            finally:
                self.synchronize()
                reading.peak_bytes = torch.cuda.max_memory_allocated(self.torch_device) - before
                reading.reserved_bytes = (
                    torch.cuda.max_memory_reserved(self.torch_device) - before_reserved
                )
                reading.method = "cuda-max-allocated"
            return
        if _proc_status_kib("VmRSS") is None:
            reading.method = "unavailable"
            yield reading
            return
        if _reset_vmhwm():
            reading.restart_peak = _restart_vmhwm
            before_kib = _proc_status_kib("VmRSS") or 0
            try:
                yield reading
            finally:
                reading.peak_bytes = max(0, (_proc_status_kib("VmHWM") or 0) - before_kib) * 1024
                reading.method = "vmhwm"
            return
        before_kib = _proc_status_kib("VmRSS") or 0
        with _RssSampler() as sampler:
            reading.restart_peak = sampler.restart
            yield reading
        reading.peak_bytes = max(0, sampler.peak_kib - before_kib) * 1024
        reading.method = "rss-sampled"


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else platform.processor()."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def resolve_device(spec: str = "auto") -> Device:
    """'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'; raises MpbenchError."""
    if not _DEVICE_RE.match(spec):
        raise MpbenchError(f"--device: {spec!r} is not valid; use auto, cpu, cuda or cuda:N")
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return Device(torch.device("cpu"))
    if not torch.cuda.is_available():
        raise MpbenchError(
            f"--device {spec}: no CUDA GPU is visible to torch {torch.__version__} "
            f"(CUDA build: {torch.version.cuda or 'no'}); use --device cpu"
        )
    index = int(spec.split(":")[1]) if ":" in spec else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise MpbenchError(
            f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) are visible"
        )
    # No set_device here: it would create a CUDA context in a parent that only hands cases to
    # workers (Device.activate, in the process that runs them).
    return Device(torch.device("cuda", index))

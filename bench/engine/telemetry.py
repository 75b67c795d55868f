"""What the GPU did during a timed window: energy, power, clocks, temperature, clock-event reasons.

Why: a precision mode's speed-up is only the precision's if the GPU ran the same way for both
modes. A case that pulled the GPU into its power cap, or ran on a GPU still hot from the case
before, is slower for reasons that have nothing to do with its dtype; energy per step is a
result in its own right. So each timed window records what NVML saw, and says how it knows.

Energy: NVML's total-energy counter (millijoules since the driver loaded, Volta and newer) is
read before and after the window; the GPU accumulates it itself, so it misses nothing between
samples. Where the counter is not supported, or went backwards (driver reload, reset), the
power samples are integrated instead (trapezoid) and `method` says so: that misses what falls
between samples, and on Ampere and newer (except GA100) NVML's power reading is itself a 1 s
average.

Energy window: NVML's counter updates at the driver's pace, so windows of a fraction of a second
misread it (0.3-0.6 s windows implied powers 30% apart for two GEMM-bound cases on an H200,
METHODS rule 31). A telemetry that measures energy asks for a window of at least
`min_energy_window_s` (MIN_ENERGY_WINDOW_S, 5 s); the runner keeps stepping, untimed, inside
the window until it has lasted that long, and the reading records the window it covered
(`energy_window_s`, with `energy_steps` steps).

Telemetry is a side measurement, so nothing here raises: without nvidia-ml-py, without NVML,
without permission, or under MIG (NVML has no per-instance power, clocks or energy) a window
says "unavailable" and why, and the run goes on. One query that NVML refuses is dropped for the
rest of the window and listed; the others still count.

Overhead: a daemon thread waits on an Event for `interval_s` between samples and makes NVML
calls only (no torch, so nothing that could synchronize or queue work on the timed stream). The
first and last samples are taken on the caller's thread before the sampler starts and after it
has joined, so only one thread calls NVML at a time.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench.engine.device import Device
from bench.results.schema import (  # noqa: F401  (re-exported: the engine's telemetry API)
    ENERGY_COUNTER,
    POWER_INTEGRATED,
    THROTTLING,
    UNAVAILABLE,
    TelemetryReading,
)

# The shortest window an energy figure is read over (see the module docstring).
MIN_ENERGY_WINDOW_S = 5.0

# ---------------------------------------------------------------------------------------------
# Clock-event ("throttle") reasons: the bits of nvmlClocksEventReason* in nvml.h / pynvml.
# The values are the driver's ABI, so they are spelled out here rather than read from whichever
# pynvml is installed (older ones call them nvmlClocksThrottleReason*, same bits).
# ---------------------------------------------------------------------------------------------

CLOCK_EVENT_BITS: tuple[tuple[int, str], ...] = (
    (0x0001, "gpu_idle"),
    (0x0002, "applications_clocks_setting"),
    (0x0004, "sw_power_cap"),
    (0x0008, "hw_slowdown"),
    (0x0010, "sync_boost"),
    (0x0020, "sw_thermal_slowdown"),
    (0x0040, "hw_thermal_slowdown"),
    (0x0080, "hw_power_brake_slowdown"),
    (0x0100, "display_clock_setting"),
    # Only in pynvml's nvmlClocksThrottleReason* list (BoardLimit, Reliability), undocumented
    # in nvml.h's clock-event list: named, but not counted as throttling.
    (0x0200, "board_limit"),
    (0x0400, "reliability"),
)
_KNOWN_MASK = sum(bit for bit, _ in CLOCK_EVENT_BITS)


def decode_clock_events(mask: int) -> list[str]:
    """Names of the bits set in an NVML clock-event reason mask; unknown bits as 'unknown_0x...'."""
    names = [name for bit, name in CLOCK_EVENT_BITS if mask & bit]
    unknown = mask & ~_KNOWN_MASK
    bit = 1
    # One name per unknown bit, so masks with different new bits stay apart.
    while unknown:
        if unknown & bit:
            names.append(f"unknown_{bit:#x}")
            unknown &= ~bit
        bit <<= 1
    return names


# ---------------------------------------------------------------------------------------------
# NVML helpers
# ---------------------------------------------------------------------------------------------


def nvml_fallback(nvml: Any, *names: str) -> Callable[..., Any] | None:
    """Call the first of `names` that both this binding and the driver have; None if the binding
    has none. A binding newer than the driver has the function, but the driver lacks the symbol
    (NVMLError_FunctionNotFound) or rejects it (Deprecated, ArgumentVersionMismatch)."""
    functions = [getattr(nvml, name) for name in names if callable(getattr(nvml, name, None))]
    if not functions:
        return None
    fall_over = tuple(
        cls
        for cls in (
            getattr(nvml, "NVMLError_FunctionNotFound", None),
            getattr(nvml, "NVMLError_Deprecated", None),
            getattr(nvml, "NVMLError_ArgumentVersionMismatch", None),
        )
        if isinstance(cls, type)
    )

    def call(*args: Any) -> Any:
        while True:
            try:
                return functions[0](*args)
            except fall_over:
                if len(functions) == 1:
                    raise
                # Remembered: the next sample goes straight to the one that works.
                del functions[0]

    return call


def nvml_handle_by_uuid(nvml: Any, uuid: str | None) -> tuple[Any, str | None]:
    """(handle, None) for the GPU with this UUID, else (None, why). Never by index: NVML ignores
    CUDA_VISIBLE_DEVICES and counts GPUs in PCI order. A bare UUID (as torch gives it) is tried
    as "GPU-<uuid>", then as a MIG instance's "MIG-<uuid>"."""
    uuid = (uuid or "").strip()
    if not uuid:
        return None, "no GPU UUID to find the NVML device by"
    if uuid.startswith(("GPU-", "MIG-")):
        candidates = [uuid]
    else:
        candidates = [f"GPU-{uuid}", f"MIG-{uuid}"]
    not_found = getattr(nvml, "NVMLError_NotFound", None)
    for candidate in candidates:
        try:
            return nvml.nvmlDeviceGetHandleByUUID(candidate.encode()), None
        except nvml.NVMLError as exc:
            if isinstance(not_found, type) and isinstance(exc, not_found):
                continue
            return None, f"NVML device {candidate}: {exc}"
    return None, f"no NVML device with UUID {' or '.join(candidates)}"


def _mig_enabled(nvml: Any, handle: Any) -> bool:
    """True for a MIG instance's handle, or a GPU whose MIG mode is on now (not merely pending).
    GPUs without MIG answer NotSupported: that is "no"."""
    is_instance = getattr(nvml, "nvmlDeviceIsMigDeviceHandle", None)
    if is_instance is not None:
        try:
            answer = is_instance(handle)
        except nvml.NVMLError:
            answer = 0
        # pynvml returns the ctypes c_uint itself here, not its .value.
        if getattr(answer, "value", answer):
            return True
    query = getattr(nvml, "nvmlDeviceGetMigMode", None)
    if query is None:
        return False
    try:
        current, _pending = query(handle)
    except nvml.NVMLError:
        return False
    return current == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1)


def _error_text(nvml: Any, exc: BaseException) -> str:
    """NVML's own message ("Not Supported"); the exception type too for anything else."""
    if isinstance(exc, nvml.NVMLError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def trapezoid_j(times_s: list[float], power_w: list[float]) -> float:
    """Energy in joules of power samples at the given times, by the trapezoid rule."""
    return sum(
        (t1 - t0) * (p0 + p1) / 2.0
        for t0, t1, p0, p1 in zip(times_s, times_s[1:], power_w, power_w[1:])
    )


# ---------------------------------------------------------------------------------------------
# One window's samples
# ---------------------------------------------------------------------------------------------


class _Sampler:
    """The samples of one window. `sample()` never raises: a query that fails is dropped."""

    def __init__(self, nvml: Any, handle: Any) -> None:
        self._nvml = nvml
        self.unsupported: list[str] = []
        self.count = 0
        self.power_times_s: list[float] = []
        self.power_w: list[float] = []
        self.sm_clock_mhz: list[float] = []
        self.mem_clock_mhz: list[float] = []
        self.temperature_c: list[float] = []
        self.gpu_util_pct: list[float] = []
        self.mem_util_pct: list[float] = []
        self.clock_events_mask = 0
        sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
        temperature = nvml_fallback(nvml, "nvmlDeviceGetTemperatureV", "nvmlDeviceGetTemperature")
        clock_events = nvml_fallback(
            nvml,
            "nvmlDeviceGetCurrentClocksEventReasons",
            "nvmlDeviceGetCurrentClocksThrottleReasons",
        )
        clock_info = getattr(nvml, "nvmlDeviceGetClockInfo", None)
        candidates: dict[str, Callable[[], Any] | None] = {
            "power": _bind(getattr(nvml, "nvmlDeviceGetPowerUsage", None), handle),
            "sm_clock": _bind(clock_info, handle, getattr(nvml, "NVML_CLOCK_SM", 1)),
            "mem_clock": _bind(clock_info, handle, getattr(nvml, "NVML_CLOCK_MEM", 2)),
            "temperature": _bind(temperature, handle, sensor),
            "utilization": _bind(getattr(nvml, "nvmlDeviceGetUtilizationRates", None), handle),
            "clock_events": _bind(clock_events, handle),
        }
        self._queries: dict[str, Callable[[], Any]] = {}
        for name, query in candidates.items():
            if query is None:
                self.unsupported.append(f"{name}: not in this nvidia-ml-py")
            else:
                self._queries[name] = query

    def sample(self) -> None:
        """Ask every query still standing once; drop (and note) any that fails."""
        now_s = time.perf_counter()
        self.count += 1
        for name, query in list(self._queries.items()):
            try:
                self._record(name, now_s, query())
            # Not only NVMLError: nothing may escape into the timed code or kill the sampler.
            except Exception as exc:
                del self._queries[name]
                self.unsupported.append(f"{name}: {_error_text(self._nvml, exc)}")

    def _record(self, name: str, now_s: float, value: Any) -> None:
        if name == "power":
            self.power_times_s.append(now_s)
            self.power_w.append(value / 1000.0)  # milliwatts
        elif name == "sm_clock":
            self.sm_clock_mhz.append(float(value))
        elif name == "mem_clock":
            self.mem_clock_mhz.append(float(value))
        elif name == "temperature":
            self.temperature_c.append(float(value))
        elif name == "utilization":
            # Percent of the driver's own sample period (1/6 s to 1 s) the GPU was busy.
            self.gpu_util_pct.append(float(value.gpu))
            self.mem_util_pct.append(float(value.memory))
        elif name == "clock_events":
            self.clock_events_mask |= int(value)

    def fill(self, reading: TelemetryReading) -> None:
        """Copy the summaries into `reading` (the energy is the window's business)."""
        reading.samples = self.count
        reading.power_mean_w = _mean(self.power_w)
        reading.power_max_w = max(self.power_w, default=None)
        reading.sm_clock_min_mhz = min(self.sm_clock_mhz, default=None)
        reading.sm_clock_median_mhz = _median(self.sm_clock_mhz)
        reading.mem_clock_median_mhz = _median(self.mem_clock_mhz)
        reading.temperature_max_c = max(self.temperature_c, default=None)
        reading.gpu_util_mean_pct = _mean(self.gpu_util_pct)
        reading.mem_util_mean_pct = _mean(self.mem_util_pct)
        reading.throttle_reasons = sorted(decode_clock_events(self.clock_events_mask))


def _bind(function: Callable[..., Any] | None, *args: Any) -> Callable[[], Any] | None:
    """`function(*args)` as a thunk, or None where the binding lacks the function."""
    if function is None:
        return None
    return lambda: function(*args)


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


# ---------------------------------------------------------------------------------------------
# Telemetry over one GPU
# ---------------------------------------------------------------------------------------------


class Telemetry:
    """NVML telemetry for one GPU; without a handle every window is "unavailable" with a reason."""

    def __init__(
        self,
        nvml: Any = None,
        handle: Any = None,
        interval_s: float = 0.1,
        reason: str | None = None,
        min_energy_window_s: float = MIN_ENERGY_WINDOW_S,
    ) -> None:
        self._nvml = nvml
        self._handle = handle
        self.interval_s = interval_s
        self.min_energy_window_s = min_energy_window_s  # what a window must last for energy
        self.reason = reason if handle is None else None
        self._closed = False

    @classmethod
    def unavailable(cls, reason: str, interval_s: float = 0.1) -> Telemetry:
        """A telemetry whose windows all say "unavailable" with this reason."""
        return cls(interval_s=interval_s, reason=reason)

    @property
    def available(self) -> bool:
        """True while NVML is open on a GPU handle."""
        return self._handle is not None and not self._closed

    @contextmanager
    def window(self) -> Iterator[TelemetryReading]:
        """Sample the GPU while the enclosed code runs; the reading is filled in at exit."""
        if not self.available:
            reading = TelemetryReading(
                method=UNAVAILABLE, reason="telemetry closed" if self._closed else self.reason
            )
            start_s = time.perf_counter()
            try:
                yield reading
            finally:
                reading.duration_s = time.perf_counter() - start_s
            return
        sampler = _Sampler(self._nvml, self._handle)
        reading = TelemetryReading(method=UNAVAILABLE)
        # The first sample before the counter and the clock start, the last one after they stop,
        # so the samples bracket the window and the NVML calls stay out of its duration.
        sampler.sample()
        energy_before_mj, counter_error = self._energy_mj()
        start_s = time.perf_counter()
        done = threading.Event()
        thread: threading.Thread | None = threading.Thread(
            target=_sample_until,
            args=(sampler, done, self.interval_s),
            name="mpbench-telemetry",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError:  # no thread to spare: the samples at both ends still count
            thread = None
        try:
            yield reading
        finally:
            end_s = time.perf_counter()
            energy_after_mj = None
            if energy_before_mj is not None:
                energy_after_mj, counter_error = self._energy_mj()
            done.set()
            if thread is not None:
                thread.join()
            sampler.sample()
            reading.duration_s = end_s - start_s
            sampler.fill(reading)
            if counter_error is not None:
                sampler.unsupported.insert(0, f"energy_counter: {counter_error}")
            reading.unsupported = sampler.unsupported
            self._fill_energy(reading, sampler, energy_before_mj, energy_after_mj, counter_error)

    def _energy_mj(self) -> tuple[int | None, str | None]:
        """(total energy in millijoules since driver load, None) or (None, why not)."""
        query = getattr(self._nvml, "nvmlDeviceGetTotalEnergyConsumption", None)
        if query is None:
            return None, "not in this nvidia-ml-py"
        try:
            return int(query(self._handle)), None
        except Exception as exc:  # never into the timed code; see _Sampler.sample
            return None, _error_text(self._nvml, exc)

    @staticmethod
    def _fill_energy(
        reading: TelemetryReading,
        sampler: _Sampler,
        before_mj: int | None,
        after_mj: int | None,
        counter_error: str | None,
    ) -> None:
        """The counter's difference where it is trustworthy, else the integrated power samples."""
        if before_mj is not None and after_mj is not None and after_mj >= before_mj:
            reading.method = ENERGY_COUNTER
            reading.energy_j = (after_mj - before_mj) / 1000.0
            reading.energy_window_s = reading.duration_s
            return
        if counter_error is not None:
            why = f"energy counter: {counter_error}"
        else:
            why = (
                f"energy counter went backwards ({before_mj} -> {after_mj} mJ: "
                "driver reloaded or counter reset)"
            )
        if len(sampler.power_w) >= 2:
            reading.method = POWER_INTEGRATED
            reading.energy_j = trapezoid_j(sampler.power_times_s, sampler.power_w)
            reading.energy_window_s = reading.duration_s
            reading.reason = f"{why}; integrated from {len(sampler.power_w)} power samples"
        else:
            reading.method = UNAVAILABLE
            reading.reason = f"{why}; fewer than 2 power samples to integrate"

    def close(self) -> None:
        """Shut NVML down (once); windows opened afterwards are "unavailable"."""
        if self._closed:
            return
        self._closed = True
        if self._nvml is not None and self._handle is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # shutting down a side measurement must not fail a run
                pass

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sample_until(sampler: _Sampler, done: threading.Event, interval_s: float) -> None:
    """The sampler thread: one sample every interval_s until `done` is set."""
    while not done.wait(interval_s):
        sampler.sample()


def open_telemetry(
    device: Device,
    interval_s: float = 0.1,
    uuid: str | None = None,
    min_energy_window_s: float = MIN_ENERGY_WINDOW_S,
) -> Telemetry:
    """NVML telemetry for `device`, found by its UUID (from torch unless given); never raises."""
    if not device.is_cuda:
        return Telemetry.unavailable("no NVML on CPU", interval_s)
    try:
        import pynvml
    except ImportError:
        return Telemetry.unavailable(
            "nvidia-ml-py not installed (pip install nvidia-ml-py)", interval_s
        )
    if uuid is None:
        try:
            import torch

            uuid = str(torch.cuda.get_device_properties(device.torch_device).uuid)
        except Exception as exc:  # a torch without CUDA raises AssertionError, not RuntimeError
            return Telemetry.unavailable(f"no GPU UUID from torch ({exc})", interval_s)
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        return Telemetry.unavailable(f"nvmlInit: {_error_text(pynvml, exc)}", interval_s)
    # From here NVML is initialised: every way out without a handle shuts it down again.
    try:
        handle, why = nvml_handle_by_uuid(pynvml, uuid)
        if handle is not None and _mig_enabled(pynvml, handle):
            handle = None
            why = (
                "MIG is enabled on this GPU: NVML has no per-instance power, clocks or energy "
                "(they are the whole GPU's, shared by every instance)"
            )
    except Exception as exc:
        handle, why = None, f"NVML: {_error_text(pynvml, exc)}"
    if handle is None:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
        return Telemetry.unavailable(why or "no NVML device", interval_s)
    return Telemetry(pynvml, handle, interval_s, min_energy_window_s=min_energy_window_s)

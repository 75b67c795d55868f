"""GPU telemetry (bench/engine/telemetry.py) and env.nvml_info against a fake pynvml.

The fake mirrors nvidia-ml-py's names and its NVMLError hierarchy (one subclass per error code,
str() giving NVML's message), answers from scripted values, and logs what it returned, so each
summary the reading gives can be checked against exactly the values that were sampled.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import statistics
import sys
import threading
import time
import types
from collections import Counter, defaultdict
from typing import Any

import pytest
import torch

from bench.engine import telemetry as tm
from bench.engine.device import Device
from bench.engine.env import nvml_info
from bench.engine.telemetry import (
    THROTTLING,
    TelemetryReading,
    decode_clock_events,
    open_telemetry,
    trapezoid_j,
)

UUID = "58e8b2b0-1234-5678-9abc-def012345678"
MIG_UUID = "0b1c2d3e-aaaa-bbbb-cccc-0123456789ab"  # a MIG instance as torch reports it
CUDA = Device(torch.device("cuda", 0))  # constructing it touches no CUDA


# ---------------------------------------------------------------------------------------------
# The fake pynvml
# ---------------------------------------------------------------------------------------------


class NVMLError(Exception):
    """pynvml.NVMLError: str() is NVML's message for the code."""

    text = "Unknown Error"

    def __str__(self) -> str:
        return self.text


# One subclass per error code, named as pynvml's _extractNVMLErrorsAsClasses names them.
class NVMLError_NotSupported(NVMLError):
    text = "Not Supported"


class NVMLError_NoPermission(NVMLError):
    text = "Insufficient Permissions"


class NVMLError_NotFound(NVMLError):
    text = "Not Found"


class NVMLError_FunctionNotFound(NVMLError):
    text = "Function Not Found"


class NVMLError_DriverNotLoaded(NVMLError):
    text = "Driver Not Loaded"


class FakeNvml(types.ModuleType):
    """pynvml for one GPU (UUID "GPU-" + UUID). Values cycle through the lists below; the energy
    counter steps through its list and then stays at its last value."""

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_NoPermission = NVMLError_NoPermission
    NVMLError_NotFound = NVMLError_NotFound
    NVMLError_FunctionNotFound = NVMLError_FunctionNotFound
    NVMLError_DriverNotLoaded = NVMLError_DriverNotLoaded
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_DEVICE_MIG_DISABLE = 0
    NVML_DEVICE_MIG_ENABLE = 1

    def __init__(self) -> None:
        super().__init__("pynvml")
        self.missing: set[str] = set()  # functions this "binding" does not have
        self.errors: dict[str, NVMLError] = {}  # function -> what it raises
        self.fail_after: dict[str, int] = {}  # function -> calls that work before NotSupported
        self.calls: Counter[str] = Counter()
        self.returned: defaultdict[str, list[Any]] = defaultdict(list)
        self.energy_mj = [1_000_000, 1_042_500]
        self.power_mw = [200_000, 300_000, 250_000, 410_000]
        self.sm_clock_mhz = [1980, 1755, 1980, 1410, 1830]
        self.mem_clock_mhz = [2619, 2619, 1593]
        self.temperature_c = [61, 74, 66]
        self.utilization = [(90, 40), (100, 55), (70, 31)]
        self.clock_events = [0x1]
        self.mig_mode = 0
        self.driver = "550.54.15"

    def __getattribute__(self, name: str) -> Any:
        if name in object.__getattribute__(self, "missing"):
            raise AttributeError(name)
        return super().__getattribute__(name)

    def _answer(self, function: str, log: str, values: list[Any], cycle: bool = True) -> Any:
        n = self.calls[function]
        self.calls[function] += 1
        if function in self.errors:
            raise self.errors[function]
        if function in self.fail_after and n >= self.fail_after[function]:
            raise NVMLError_NotSupported()
        value = values[n % len(values)] if cycle else values[min(n, len(values) - 1)]
        self.returned[log].append(value)
        return value

    def nvmlInit(self) -> None:
        self._answer("nvmlInit", "init", [None])

    def nvmlShutdown(self) -> None:
        self._answer("nvmlShutdown", "shutdown", [None])

    def nvmlSystemGetDriverVersion(self) -> str:
        return self._answer("nvmlSystemGetDriverVersion", "driver", [self.driver])

    def nvmlDeviceGetHandleByUUID(self, uuid: bytes) -> str:
        self._answer("nvmlDeviceGetHandleByUUID", "uuid", [uuid])
        if uuid == f"GPU-{UUID}".encode():
            return "gpu-handle"
        if uuid == f"MIG-{MIG_UUID}".encode():
            return "mig-handle"
        raise NVMLError_NotFound()

    def nvmlDeviceIsMigDeviceHandle(self, handle: str) -> ctypes.c_uint:
        # pynvml returns the c_uint itself, not its value.
        return ctypes.c_uint(1 if handle == "mig-handle" else 0)

    def nvmlDeviceGetMigMode(self, handle: str) -> list[int]:
        mode = self._answer("nvmlDeviceGetMigMode", "mig", [self.mig_mode])
        return [mode, mode]

    def nvmlDeviceGetName(self, handle: str) -> str:
        return self._answer("nvmlDeviceGetName", "name", ["NVIDIA H100 80GB HBM3"])

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: str) -> int:
        return self._answer("nvmlDeviceGetEnforcedPowerLimit", "power_limit", [700_000])

    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle: str) -> int:
        return self._answer("nvmlDeviceGetPowerManagementDefaultLimit", "power_default", [700_000])

    def nvmlDeviceGetMaxClockInfo(self, handle: str, clock: int) -> int:
        name = "max_sm" if clock == self.NVML_CLOCK_SM else "max_mem"
        return self._answer("nvmlDeviceGetMaxClockInfo", name, [1980 if name == "max_sm" else 2619])

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: str) -> int:
        return self._answer(
            "nvmlDeviceGetTotalEnergyConsumption", "energy", self.energy_mj, cycle=False
        )

    def nvmlDeviceGetPowerUsage(self, handle: str) -> int:
        return self._answer("nvmlDeviceGetPowerUsage", "power", self.power_mw)

    def nvmlDeviceGetClockInfo(self, handle: str, clock: int) -> int:
        if clock == self.NVML_CLOCK_SM:
            return self._answer("nvmlDeviceGetClockInfo(SM)", "sm_clock", self.sm_clock_mhz)
        return self._answer("nvmlDeviceGetClockInfo(MEM)", "mem_clock", self.mem_clock_mhz)

    def nvmlDeviceGetTemperatureV(self, handle: str, sensor: int) -> int:
        return self._answer("nvmlDeviceGetTemperatureV", "temperature", self.temperature_c)

    def nvmlDeviceGetTemperature(self, handle: str, sensor: int) -> int:
        return self._answer("nvmlDeviceGetTemperature", "temperature", self.temperature_c)

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> Any:
        gpu, memory = self._answer("nvmlDeviceGetUtilizationRates", "util", self.utilization)
        return types.SimpleNamespace(gpu=gpu, memory=memory)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: str) -> int:
        return self._answer("nvmlDeviceGetCurrentClocksEventReasons", "events", self.clock_events)

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: str) -> int:
        return self._answer(
            "nvmlDeviceGetCurrentClocksThrottleReasons", "events", self.clock_events
        )


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    """The fake, installed as `pynvml`."""
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


def sampler_threads() -> list[threading.Thread]:
    """Telemetry sampler threads still alive."""
    return [t for t in threading.enumerate() if t.name == "mpbench-telemetry" and t.is_alive()]


def run_window(fake: FakeNvml, seconds: float, interval_s: float = 0.05) -> TelemetryReading:
    """One window of `seconds` on the fake GPU, telemetry closed afterwards."""
    with open_telemetry(CUDA, interval_s=interval_s, uuid=UUID) as telemetry:
        assert telemetry.available, telemetry.reason
        with telemetry.window() as reading:
            time.sleep(seconds)
    return reading


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def test_a_window_samples_and_summarises_what_nvml_returned(nvml: FakeNvml) -> None:
    reading = run_window(nvml, 0.35, interval_s=0.05)
    # A sample at each end plus the sampler's, every 50 ms (a busy 2-core box may lose a few).
    assert reading.samples >= 4
    assert reading.samples == len(nvml.returned["power"]) == len(nvml.returned["sm_clock"])
    assert reading.duration_s is not None and 0.35 <= reading.duration_s < 1.0

    power_w = [mw / 1000.0 for mw in nvml.returned["power"]]
    assert reading.power_mean_w == pytest.approx(statistics.fmean(power_w))
    assert reading.power_max_w == max(power_w) == 410.0
    assert reading.sm_clock_min_mhz == min(nvml.returned["sm_clock"]) == 1410
    assert reading.sm_clock_median_mhz == statistics.median(nvml.returned["sm_clock"])
    assert reading.mem_clock_median_mhz == statistics.median(nvml.returned["mem_clock"])
    assert reading.temperature_max_c == max(nvml.returned["temperature"]) == 74
    assert reading.gpu_util_mean_pct == pytest.approx(
        statistics.fmean(g for g, _ in nvml.returned["util"])
    )
    assert reading.mem_util_mean_pct == pytest.approx(
        statistics.fmean(m for _, m in nvml.returned["util"])
    )
    assert reading.unsupported == []
    # The newer temperature call was used, not the deprecated one.
    assert nvml.calls["nvmlDeviceGetTemperature"] == 0

    # The sampler stopped at exit and NVML was shut down once, even when closed twice.
    calls = nvml.calls["nvmlDeviceGetPowerUsage"]
    time.sleep(0.15)
    assert nvml.calls["nvmlDeviceGetPowerUsage"] == calls
    assert sampler_threads() == []
    assert nvml.calls["nvmlInit"] == nvml.calls["nvmlShutdown"] == 1


def test_a_short_window_still_has_a_sample_at_each_end(nvml: FakeNvml) -> None:
    reading = run_window(nvml, 0.0, interval_s=10.0)
    assert reading.samples == 2
    assert reading.power_mean_w == pytest.approx((200.0 + 300.0) / 2)


def test_close_is_idempotent_and_later_windows_are_unavailable(nvml: FakeNvml) -> None:
    telemetry = open_telemetry(CUDA, uuid=UUID)
    telemetry.close()
    telemetry.close()
    assert nvml.calls["nvmlShutdown"] == 1
    with telemetry.window() as reading:
        pass
    assert reading.method == "unavailable" and reading.reason == "telemetry closed"


def test_the_uuid_comes_from_torch_with_the_gpu_prefix(
    nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(uuid=UUID)
    )
    telemetry = open_telemetry(CUDA)
    assert telemetry.available
    assert nvml.returned["uuid"] == [f"GPU-{UUID}".encode()]
    telemetry.close()


# ---------------------------------------------------------------------------------------------
# Energy
# ---------------------------------------------------------------------------------------------


def test_energy_is_the_counter_difference_in_joules(nvml: FakeNvml) -> None:
    nvml.energy_mj = [1_000_000, 1_042_500]
    reading = run_window(nvml, 0.05)
    assert reading.method == "nvml-energy-counter"
    assert reading.energy_j == pytest.approx(42.5)
    assert reading.reason is None


def test_a_counter_that_went_backwards_falls_back_to_integrated_power(nvml: FakeNvml) -> None:
    nvml.energy_mj = [5_000_000, 1_000]  # a driver reload between the two reads
    nvml.power_mw = [300_000]
    reading = run_window(nvml, 0.2)
    assert reading.method == "nvml-power-integrated"
    assert "went backwards" in (reading.reason or "")
    # 300 W over the samples' span, which brackets the window by a few NVML calls.
    assert reading.duration_s is not None
    assert reading.energy_j == pytest.approx(300.0 * reading.duration_s, rel=0.05)


def test_an_unsupported_counter_falls_back_to_integrated_power(nvml: FakeNvml) -> None:
    nvml.errors["nvmlDeviceGetTotalEnergyConsumption"] = NVMLError_NotSupported()
    nvml.power_mw = [250_000]
    reading = run_window(nvml, 0.2)
    assert reading.method == "nvml-power-integrated"
    assert reading.reason is not None and reading.reason.startswith("energy counter: Not Supported")
    assert reading.unsupported == ["energy_counter: Not Supported"]
    assert reading.duration_s is not None
    assert reading.energy_j == pytest.approx(250.0 * reading.duration_s, rel=0.05)


def test_no_counter_and_no_power_leaves_the_energy_unavailable_but_the_clocks(
    nvml: FakeNvml,
) -> None:
    nvml.errors["nvmlDeviceGetTotalEnergyConsumption"] = NVMLError_NotSupported()
    nvml.errors["nvmlDeviceGetPowerUsage"] = NVMLError_NotSupported()
    reading = run_window(nvml, 0.05)
    assert reading.method == "unavailable" and reading.energy_j is None
    assert "fewer than 2 power samples" in (reading.reason or "")
    assert reading.power_mean_w is None and reading.sm_clock_min_mhz is not None


def test_trapezoid_weights_each_interval_by_its_length() -> None:
    assert trapezoid_j([0.0, 1.0, 3.0], [100.0, 200.0, 200.0]) == pytest.approx(150.0 + 400.0)
    assert trapezoid_j([0.0], [100.0]) == 0.0


# ---------------------------------------------------------------------------------------------
# Clock-event reasons
# ---------------------------------------------------------------------------------------------


def test_clock_event_bits_decode_to_stable_names() -> None:
    assert decode_clock_events(0) == []
    assert decode_clock_events(0x1 | 0x4 | 0x80) == [
        "gpu_idle",
        "sw_power_cap",
        "hw_power_brake_slowdown",
    ]
    assert decode_clock_events(0x8 | 0x1000 | 0x8000) == [
        "hw_slowdown",
        "unknown_0x1000",
        "unknown_0x8000",
    ]


def test_clock_event_bits_match_nvidia_ml_py() -> None:
    """Our table against the installed binding's constants (the real module, not the fake)."""
    spec = importlib.util.find_spec("pynvml")
    if spec is None or spec.loader is None:
        pytest.skip("nvidia-ml-py not installed")
    real = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(real)  # loads no NVML library: that happens in nvmlInit
    for bit, name in tm.CLOCK_EVENT_BITS:
        camel = "".join(part.capitalize() for part in name.split("_"))
        constant = getattr(real, f"nvmlClocksEventReason{camel}", None)
        if constant is None:
            constant = getattr(real, f"nvmlClocksThrottleReason{camel}")
        assert constant == bit, name


def test_throttled_only_for_slowdown_reasons() -> None:
    benign = ["applications_clocks_setting", "display_clock_setting", "gpu_idle", "sync_boost"]
    assert not TelemetryReading(method="x", throttle_reasons=benign).throttled
    assert not TelemetryReading(method="x", throttle_reasons=["unknown_0x1000"]).throttled
    for name in sorted(THROTTLING):
        assert TelemetryReading(method="x", throttle_reasons=[*benign, name]).throttled, name


def test_a_window_collects_reasons_from_every_sample(nvml: FakeNvml) -> None:
    nvml.clock_events = [0x1, 0x4, 0x0]  # idle, then power capped, then nothing
    reading = run_window(nvml, 0.2)
    assert reading.throttle_reasons == ["gpu_idle", "sw_power_cap"]
    assert reading.throttled
    document = json.loads(json.dumps(reading.to_dict()))
    assert (
        document["throttled"] is True and document["throttle_reasons"] == reading.throttle_reasons
    )

    nvml.clock_events = [0x1, 0x10]
    assert not run_window(nvml, 0.2).throttled


@pytest.mark.parametrize("how", ["not in the binding", "not in the driver"])
def test_clock_events_fall_back_to_the_throttle_reasons_call(nvml: FakeNvml, how: str) -> None:
    if how == "not in the binding":
        nvml.missing.add("nvmlDeviceGetCurrentClocksEventReasons")
    else:
        nvml.errors["nvmlDeviceGetCurrentClocksEventReasons"] = NVMLError_FunctionNotFound()
    nvml.clock_events = [0x20]
    reading = run_window(nvml, 0.15)
    assert reading.throttle_reasons == ["sw_thermal_slowdown"] and reading.throttled
    assert reading.unsupported == []
    assert nvml.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == reading.samples
    # The failing call is tried once, not once per sample.
    assert nvml.calls["nvmlDeviceGetCurrentClocksEventReasons"] == (
        0 if how == "not in the binding" else 1
    )


def test_temperature_falls_back_to_the_deprecated_call_on_an_older_driver(nvml: FakeNvml) -> None:
    nvml.errors["nvmlDeviceGetTemperatureV"] = NVMLError_FunctionNotFound()
    reading = run_window(nvml, 0.1)
    assert reading.temperature_max_c == max(nvml.returned["temperature"])
    assert nvml.calls["nvmlDeviceGetTemperature"] == reading.samples
    assert nvml.calls["nvmlDeviceGetTemperatureV"] == 1


# ---------------------------------------------------------------------------------------------
# Failures: "unavailable" with a reason, never an exception
# ---------------------------------------------------------------------------------------------


def _no_pynvml(monkeypatch: pytest.MonkeyPatch, fake: FakeNvml) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError


def _init_fails(monkeypatch: pytest.MonkeyPatch, fake: FakeNvml) -> None:
    fake.errors["nvmlInit"] = NVMLError_DriverNotLoaded()


def _mig(monkeypatch: pytest.MonkeyPatch, fake: FakeNvml) -> None:
    fake.mig_mode = fake.NVML_DEVICE_MIG_ENABLE


def _no_permission(monkeypatch: pytest.MonkeyPatch, fake: FakeNvml) -> None:
    fake.errors["nvmlDeviceGetHandleByUUID"] = NVMLError_NoPermission()


@pytest.mark.parametrize(
    ("setup", "uuid", "reason", "balanced"),
    [
        (_no_pynvml, UUID, "nvidia-ml-py not installed (pip install nvidia-ml-py)", False),
        (_init_fails, UUID, "nvmlInit: Driver Not Loaded", False),
        (None, "0000-not-this-gpu", "no NVML device with UUID GPU-0000-not-this-gpu", True),
        (_mig, UUID, "MIG is enabled on this GPU: NVML has no per-instance power", True),
        (None, MIG_UUID, "MIG is enabled on this GPU: NVML has no per-instance power", True),
        (_no_permission, UUID, f"NVML device GPU-{UUID}: Insufficient Permissions", True),
    ],
    ids=["no-pynvml", "init-error", "uuid-not-found", "mig", "mig-instance", "no-permission"],
)
def test_failures_give_unavailable_windows_with_a_reason(
    nvml: FakeNvml,
    monkeypatch: pytest.MonkeyPatch,
    setup: Any,
    uuid: str,
    reason: str,
    balanced: bool,
) -> None:
    if setup is not None:
        setup(monkeypatch, nvml)
    telemetry = open_telemetry(CUDA, uuid=uuid)
    assert not telemetry.available
    with telemetry.window() as reading:
        time.sleep(0.01)
    telemetry.close()
    assert reading.method == "unavailable"
    assert reading.reason is not None and reading.reason.startswith(reason)
    assert reading.samples == 0 and reading.energy_j is None and not reading.throttled
    assert nvml.calls["nvmlDeviceGetPowerUsage"] == 0
    # Every nvmlInit that worked was shut down again, at once.
    assert nvml.calls["nvmlShutdown"] == (1 if balanced else 0)
    json.dumps(reading.to_dict())


def test_a_cpu_device_has_no_nvml(nvml: FakeNvml) -> None:
    telemetry = open_telemetry(Device(torch.device("cpu")))
    with telemetry.window() as reading:
        pass
    telemetry.close()
    assert (reading.method, reading.reason) == ("unavailable", "no NVML on CPU")
    assert nvml.calls["nvmlInit"] == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a torch without a CUDA device")
def test_no_uuid_from_torch_is_unavailable_too(nvml: FakeNvml) -> None:
    telemetry = open_telemetry(CUDA)
    assert not telemetry.available
    assert (telemetry.reason or "").startswith("no GPU UUID from torch")
    assert nvml.calls["nvmlInit"] == 0


def test_a_query_refused_mid_window_is_listed_once_and_the_rest_still_count(
    nvml: FakeNvml,
) -> None:
    nvml.fail_after["nvmlDeviceGetTemperatureV"] = 2
    nvml.errors["nvmlDeviceGetUtilizationRates"] = NVMLError_NoPermission()
    nvml.utilization = []
    nvml.fail_after["nvmlDeviceGetClockInfo(MEM)"] = 1
    reading = run_window(nvml, 0.3)
    assert reading.samples >= 4
    assert reading.unsupported == [
        "utilization: Insufficient Permissions",
        "mem_clock: Not Supported",
        "temperature: Not Supported",
    ]
    # Asked until it failed, then never again.
    assert nvml.calls["nvmlDeviceGetTemperatureV"] == 3
    assert nvml.calls["nvmlDeviceGetUtilizationRates"] == 1
    assert reading.temperature_max_c == max(nvml.temperature_c[:2])
    assert reading.mem_clock_median_mhz == nvml.mem_clock_mhz[0]
    assert reading.gpu_util_mean_pct is None and reading.mem_util_mean_pct is None
    assert reading.power_mean_w is not None and reading.sm_clock_min_mhz == 1410
    assert reading.method == "nvml-energy-counter" and reading.energy_j == pytest.approx(42.5)


def test_an_unexpected_exception_in_a_query_is_dropped_too(nvml: FakeNvml) -> None:
    nvml.errors["nvmlDeviceGetPowerUsage"] = ValueError("bad struct")  # type: ignore[assignment]
    reading = run_window(nvml, 0.1)
    assert reading.unsupported == ["power: ValueError: bad struct"]
    assert reading.sm_clock_min_mhz is not None


def test_the_body_raising_still_stops_the_sampler(nvml: FakeNvml) -> None:
    telemetry = open_telemetry(CUDA, interval_s=0.01, uuid=UUID)
    with pytest.raises(RuntimeError, match="boom"):
        with telemetry.window() as reading:
            assert sampler_threads() != []  # it is running inside the window
            time.sleep(0.05)
            raise RuntimeError("boom")
    assert sampler_threads() == []
    assert reading.samples >= 2 and reading.method == "nvml-energy-counter"
    telemetry.close()


# ---------------------------------------------------------------------------------------------
# env.nvml_info
# ---------------------------------------------------------------------------------------------


def test_nvml_info_keeps_the_driver_when_the_power_limit_is_not_supported(
    nvml: FakeNvml,
) -> None:
    nvml.errors["nvmlDeviceGetEnforcedPowerLimit"] = NVMLError_NotSupported()
    info = nvml_info(UUID)
    assert info == {
        "driver": "550.54.15",
        "nvml": "ok",
        "nvml_name": "NVIDIA H100 80GB HBM3",
        "power_limit_w": None,
        "power_limit_default_w": 700.0,
        "max_sm_clock_mhz": 1980,
        "max_mem_clock_mhz": 2619,
        "temperature_c": 61,
        "nvml_unsupported": ["power_limit_w: Not Supported"],
    }
    assert nvml.calls["nvmlInit"] == nvml.calls["nvmlShutdown"] == 1


def test_nvml_info_without_the_device_or_the_driver_version(nvml: FakeNvml) -> None:
    info = nvml_info("0000-not-this-gpu")
    assert info["driver"] == "550.54.15" and info["nvml"] == "ok"
    assert "power_limit_w" not in info
    assert info["nvml_unsupported"] == [
        "device: no NVML device with UUID GPU-0000-not-this-gpu or MIG-0000-not-this-gpu"
    ]

    nvml.errors["nvmlSystemGetDriverVersion"] = NVMLError_NotSupported()
    info = nvml_info(UUID)
    assert info["driver"] is None and info["nvml"] == "error (Not Supported)"
    assert info["power_limit_w"] == 700.0


def test_nvml_info_without_nvml(nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    nvml.errors["nvmlInit"] = NVMLError_DriverNotLoaded()
    assert nvml_info(UUID) == {"nvml": "unavailable (Driver Not Loaded)"}
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert nvml_info(UUID) == {"nvml": "nvidia-ml-py not installed"}


# ---------------------------------------------------------------------------------------------
# The energy window (bench.engine.runner stretches it with untimed steps)
# ---------------------------------------------------------------------------------------------


def test_the_energy_window_is_stretched_with_untimed_steps(nvml: FakeNvml) -> None:
    from bench.engine.runner import measure_steps

    calls: list[int] = []

    def step() -> None:
        calls.append(1)
        time.sleep(0.01)

    with open_telemetry(CUDA, interval_s=0.05, uuid=UUID, min_energy_window_s=0.3) as telemetry:
        measured = measure_steps(
            step,
            1,
            3,
            Device(torch.device("cpu")),  # the steps and their timer: the telemetry is NVML's
            timed_window=telemetry.window,
            energy_window_s=telemetry.min_energy_window_s,
        )
    reading = measured.telemetry
    assert len(measured.step_s) == 3  # the timing is the timed steps' alone
    assert measured.energy_steps == len(calls) - 1 > 3  # all but the warm-up step
    assert reading.energy_steps == measured.energy_steps
    assert reading.energy_window_s == reading.duration_s >= 0.3
    assert reading.energy_j == pytest.approx(42.5)  # the counter over the whole window


def test_energy_per_step_divides_by_every_step_of_the_window() -> None:
    from bench.engine.device import MemoryReading
    from bench.engine.runner import MeasuredSteps, Measurement
    from bench.results.schema import Case

    reading = TelemetryReading("nvml-energy-counter", energy_j=10.0, energy_window_s=5.0)
    reading.energy_steps = 20
    steps = MeasuredSteps([0.1] * 4, [], 1, True, reading)
    measurement = Measurement(
        steps, MemoryReading(1, None, "vmhwm"), {}, None, None, None, "cuda-events", 0.1
    )
    case = Case("gpt2-tiny", "gpt2", "infer", "fp32", 2, 16, "cuda:0")
    result = measurement.result(case, 16, None, "2026-12-06T06:00:00+00:00", 1.0)
    assert result.telemetry.energy_per_step_j == pytest.approx(0.5)  # 10 J / 20 steps
    assert result.telemetry.energy_per_sample_j == pytest.approx(0.25)
    again = type(result).from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.telemetry.energy_window_s == 5.0 and again.telemetry.energy_steps == 20


def test_a_cpu_window_is_not_stretched() -> None:
    from bench.engine.runner import measure_steps

    telemetry = open_telemetry(Device(torch.device("cpu")))
    calls: list[int] = []
    energy_window_s = telemetry.min_energy_window_s if telemetry.available else 0.0
    measured = measure_steps(
        lambda: calls.append(1),
        0,
        3,
        Device(torch.device("cpu")),
        timed_window=telemetry.window,
        energy_window_s=energy_window_s,
    )
    assert len(calls) == 3 and measured.energy_steps == 3
    assert measured.telemetry.energy_window_s is None and measured.telemetry.energy_steps is None

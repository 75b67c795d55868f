"""The environment of a run, captured once and written to env.json."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from bench.engine.device import Device, cpu_model_name
from bench.engine.flags import tf32_state
from bench.engine.telemetry import nvml_fallback, nvml_handle_by_uuid


def capture_env(
    device: Device, suite_name: str = "", suite_source: str | None = None
) -> dict[str, Any]:
    """Device, CPU, GPU (torch + NVML), library versions, TF32 flags, git commit of the suite."""
    import transformers

    from bench import __version__

    env: dict[str, Any] = {
        "suite": suite_name,
        "suite_source": suite_source,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device.name,
        "device_name": device.product_name(),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": {
            "model": cpu_model_name(),
            "logical_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "gpu": gpu_info(device) if device.is_cuda else None,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version()
            if torch.backends.cudnn.is_available()
            else None,
            "transformers": transformers.__version__,
            "torchao": _version_of("torchao"),
            "mpbench": __version__,
        },
        # The process defaults; each precision mode sets and restores its own (fp32: both off).
        "tf32": tf32_state(),
        "git_commit": git_commit(Path(suite_source).parent) if suite_source else None,
        "argv": sys.argv,
    }
    return env


def gpu_info(device: Device) -> dict[str, Any]:
    """GPU identity from torch, plus driver/clocks from NVML when nvidia-ml-py is installed."""
    props = torch.cuda.get_device_properties(device.torch_device)
    info: dict[str, Any] = {
        "name": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_total_bytes": int(props.total_memory),
        "multiprocessors": props.multi_processor_count,
        "uuid": str(getattr(props, "uuid", "")) or None,
        "cuda": torch.version.cuda,
        "driver": None,
        "nvml": None,
    }
    info.update(nvml_info(info["uuid"]))
    return info


def nvml_info(uuid: str | None) -> dict[str, Any]:
    """Driver version and clocks from NVML, matched by UUID (NVML ignores CUDA_VISIBLE_DEVICES
    and enumerates in PCI order, METHODS rule 7). Empty-handed where NVML is unavailable.

    Each query stands alone: one that NVML refuses (a power limit on a GPU that has none) is
    None and noted in "nvml_unsupported", and the driver version and the rest are kept."""
    try:
        import pynvml
    except ImportError:
        return {"nvml": "nvidia-ml-py not installed"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return {"nvml": f"unavailable ({exc})"}
    try:
        return _nvml_queries(pynvml, uuid)
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def _nvml_queries(pynvml: Any, uuid: str | None) -> dict[str, Any]:
    """The fields of `nvml_info`, NVML initialised; each query on its own."""
    unsupported: list[str] = []

    def ask(key: str, query: Callable[[], Any]) -> Any:
        try:
            return query()
        except pynvml.NVMLError as exc:
            unsupported.append(f"{key}: {exc}")
            return None

    out: dict[str, Any] = {"driver": None, "nvml": "ok"}
    try:
        out["driver"] = _text(pynvml.nvmlSystemGetDriverVersion())
    except pynvml.NVMLError as exc:
        out["nvml"] = f"error ({exc})"
    handle, why = nvml_handle_by_uuid(pynvml, uuid)
    if handle is None:
        # Noted once for the device, not once per field it would have given.
        unsupported.append(f"device: {why}")
    else:
        temperature = nvml_fallback(pynvml, "nvmlDeviceGetTemperatureV", "nvmlDeviceGetTemperature")
        queries: dict[str, Callable[[], Any]] = {
            "nvml_name": lambda: _text(pynvml.nvmlDeviceGetName(handle)),
            # NVML reports power in milliwatts.
            "power_limit_w": lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0,
            "power_limit_default_w": lambda: (
                pynvml.nvmlDeviceGetPowerManagementDefaultLimit(handle) / 1000.0
            ),
            "max_sm_clock_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(
                handle, pynvml.NVML_CLOCK_SM
            ),
            "max_mem_clock_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(
                handle, pynvml.NVML_CLOCK_MEM
            ),
            "temperature_c": lambda: (
                temperature(handle, pynvml.NVML_TEMPERATURE_GPU) if temperature else None
            ),
        }
        for key, query in queries.items():
            out[key] = ask(key, query)
    if unsupported:
        out["nvml_unsupported"] = unsupported
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def git_commit(directory: Path) -> str | None:
    """HEAD of the git repository holding `directory`, with '+dirty' if it has changes."""
    try:
        head = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(directory), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def _version_of(package: str) -> str | None:
    """An installed package's version, None when it is not installed (torchao is optional)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None

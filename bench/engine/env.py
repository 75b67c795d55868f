"""The environment of a run, captured once and written to env.json."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from bench.engine.device import Device, cpu_model_name


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
            "mpbench": __version__,
        },
        # The process defaults; each precision mode sets and restores its own (fp32: both off).
        "tf32": {
            "matmul": torch.backends.cuda.matmul.allow_tf32,
            "cudnn": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        },
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
    and enumerates in PCI order, METHODS rule 7). Empty-handed where NVML is unavailable."""
    try:
        import pynvml
    except ImportError:
        return {"nvml": "nvidia-ml-py not installed"}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return {"nvml": f"unavailable ({exc})"}
    try:
        out: dict[str, Any] = {"driver": _text(pynvml.nvmlSystemGetDriverVersion()), "nvml": "ok"}
        handle = _nvml_handle(pynvml, uuid)
        if handle is not None:
            out["nvml_name"] = _text(pynvml.nvmlDeviceGetName(handle))
            out["power_limit_w"] = pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0
            out["max_sm_clock_mhz"] = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)
            out["temperature_c"] = pynvml.nvmlDeviceGetTemperature(
                handle, pynvml.NVML_TEMPERATURE_GPU
            )
        return out
    except pynvml.NVMLError as exc:
        return {"nvml": f"error ({exc})"}
    finally:
        pynvml.nvmlShutdown()


def _nvml_handle(pynvml: Any, uuid: str | None) -> Any:
    if not uuid:
        return None
    wanted = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
    try:
        return pynvml.nvmlDeviceGetHandleByUUID(wanted.encode())
    except pynvml.NVMLError:
        return None


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

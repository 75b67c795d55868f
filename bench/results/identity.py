"""What a run ran on, read from its env.json: the device model and the software around it.

Baselines are keyed by it (`slug`), check refuses a baseline from another device model, and every
view labels runs with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _table(env: dict[str, Any], key: str) -> dict[str, Any]:
    value = env.get(key)
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class DeviceIdentity:
    """The identity fields of an env.json (missing fields stay None)."""

    kind: str | None  # "cuda", "cpu" or None (unknown: no env.json)
    name: str | None  # GPU name, or CPU model on CPU runs
    compute_capability: str | None = None
    memory_total_bytes: int | None = None
    driver: str | None = None
    cuda: str | None = None
    torch: str | None = None
    transformers: str | None = None
    torch_threads: int | None = None
    hostname: str | None = None

    @classmethod
    def from_env(cls, env: Any) -> DeviceIdentity:
        """Read the identity of a run from its env.json object."""
        env = env if isinstance(env, dict) else {}
        gpu = _table(env, "gpu")
        cpu = _table(env, "cpu")
        versions = _table(env, "versions")
        device = str(env.get("device") or "")
        if gpu:
            kind, name = "cuda", _text(gpu.get("name")) or _text(env.get("device_name"))
        elif device == "cpu" or cpu.get("model"):
            kind, name = "cpu", _text(cpu.get("model")) or _text(env.get("device_name"))
        else:
            kind, name = None, _text(env.get("device_name"))
        return cls(
            kind=kind,
            name=name,
            compute_capability=_text(gpu.get("compute_capability")),
            memory_total_bytes=_int(gpu.get("memory_total_bytes")),
            driver=_text(gpu.get("driver")),
            cuda=_text(gpu.get("cuda") or versions.get("torch_cuda")) if gpu else None,
            torch=_text(versions.get("torch")),
            transformers=_text(versions.get("transformers")),
            torch_threads=_int(cpu.get("torch_threads")),
            hostname=_text(env.get("hostname")),
        )

    @property
    def known(self) -> bool:
        """True when the run recorded what it ran on."""
        return self.kind is not None and bool(self.name)

    @property
    def label(self) -> str:
        """One line for tables and page headers, e.g. 'NVIDIA H100 (cc 9.0, driver 550, CUDA 12.4,
        torch 2.13)'."""
        if not self.known:
            return "unknown device (no env.json)"
        parts = []
        if self.compute_capability:
            parts.append(f"cc {self.compute_capability}")
        if self.driver:
            parts.append(f"driver {self.driver}")
        if self.cuda:
            parts.append(f"CUDA {self.cuda}")
        if self.kind == "cpu" and self.torch_threads:
            parts.append(f"{self.torch_threads} threads")
        if self.torch:
            parts.append(f"torch {self.torch}")
        prefix = "CPU " if self.kind == "cpu" else ""
        return f"{prefix}{self.name}" + (f" ({', '.join(parts)})" if parts else "")

    @property
    def slug(self) -> str:
        """File-name-safe key of the device model: 'nvidia-h100-80gb-hbm3', 'cpu-amd-epyc-7742'."""
        name = re.sub(r"[^a-z0-9]+", "-", (self.name or "unknown").lower()).strip("-")
        return f"cpu-{name}" if self.kind == "cpu" else (name or "unknown")

"""A CPU that reports a CUDA device's identity: for the code paths that branch on `is_cuda` or
the compute capability, run here with real CPU tensors (no CUDA call is made through it)."""

from __future__ import annotations

import torch

from bench.engine.device import Device


class FakeGpu(Device):
    """is_cuda is True, tensors and autocast stay on the CPU, and nothing touches torch.cuda."""

    def __init__(self, cc: tuple[int, int] = (9, 0), name: str = "NVIDIA Test GPU") -> None:
        super().__init__(torch.device("cpu"))
        self._cc, self._name = cc, name

    @property
    def is_cuda(self) -> bool:
        return True

    @property
    def type(self) -> str:
        return "cpu"  # autocast and tensors stay on the CPU

    def compute_capability(self) -> tuple[int, int]:
        return self._cc

    def product_name(self) -> str:
        return self._name

    def activate(self) -> None:
        """Nothing to make current: the tensors live on the CPU."""

    def synchronize(self) -> None:
        """Nothing queued: CPU work is synchronous."""

    def free_memory(self) -> None:
        """The CPU's own cleanup (torch.cuda is not there to empty)."""
        Device(torch.device("cpu")).free_memory()

"""How a case's steps execute: eagerly, or under torch.compile. One component per execution, like
a precision mode: its gate (`unsupported_reason`), the wrap it puts around the model the steps
call, what its first call costs (compiling, timed apart from the steps) and the cleanup after the
case. The runner applies it last, after the precision mode's `prepare` and the data-parallel
layout's wrap (bench.engine.runner: CaseRunner.prepare).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from bench.engine.device import Device, MemoryReading
from bench.engine.progress import PhaseCallback
from bench.results.schema import Case


class Eager:
    """Steps call the model as it is."""

    compiled = False

    def unsupported_reason(self, workload: str) -> str | None:
        """Every workload runs eagerly."""
        return None

    def wrap(self, module: torch.nn.Module) -> Any:
        """The module itself."""
        return module

    def first_call(
        self, step: Callable[[], Any], device: Device, phase: PhaseCallback, memory: MemoryReading
    ) -> float | None:
        """Nothing to do before the warm-up: no compile time."""
        return None

    def reset(self) -> None:
        """Nothing to clean up."""


class Compiled:
    """Steps call `torch.compile(model)`. The first call compiles: it is timed apart
    (`timing.compile_s`), is neither a warm-up nor a timed step, and the memory window restarts
    after it. The compiler's caches are reset before and after every case: dynamo's caches would
    otherwise fill up across cases and fall back to eager without a word."""

    compiled = True

    def unsupported_reason(self, workload: str) -> str | None:
        """generate: its decode loop changes shapes every token."""
        if workload == "generate":
            return (
                "generate is not compiled: its decode loop changes shapes every token, so "
                "torch.compile would recompile rather than run one graph"
            )
        return None

    def wrap(self, module: torch.nn.Module) -> Any:
        """A fresh compiler state, then the compiled module."""
        torch.compiler.reset()
        return torch.compile(module)

    def first_call(
        self, step: Callable[[], Any], device: Device, phase: PhaseCallback, memory: MemoryReading
    ) -> float | None:
        """Run the compiling first call; its seconds. The memory window restarts after it: what
        the compiler used is not the case's."""
        phase("compiling", None, None)
        started = time.perf_counter()
        step()
        device.synchronize()
        compile_s = time.perf_counter() - started
        memory.restart_peak()
        return compile_s

    def reset(self) -> None:
        """The compiled graphs die with the case."""
        torch.compiler.reset()


Execution = Eager | Compiled


def execution_for(case: Case) -> Execution:
    """The execution a case runs in."""
    return Compiled() if case.compiled else Eager()

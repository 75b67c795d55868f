"""Where cases run: in this process, or in worker subprocesses that may die without taking the
sweep down (`--isolate none|model|case`).

A worker is a spawned Python process that builds its own CaseRunner and answers one case at a
time over a pipe, sending the case's progress phases before its result. When it dies (a signal, a
segfault, a CUDA error that poisons its context) the case is recorded as `crashed`; when it does
not answer within the case timeout it is killed and the case is `timeout`. Either way the next
case gets a fresh worker.

The runner is built by a factory, `default_runner_factory` unless the environment variable
MPBENCH_RUNNER_FACTORY names another as `module:function` (it takes the suite and the device and
returns a CaseRunner; the tests use it to inject crashes and hangs).
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from bench.engine.device import Device, resolve_device
from bench.engine.numerics.analyzer import NumericsAnalyzer
from bench.engine.progress import PhaseCallback, Throttled, no_phase
from bench.engine.runner import CaseRunner, now_utc
from bench.engine.suite import Suite
from bench.errors import MpbenchError
from bench.results.schema import Case, CaseResult

RUNNER_FACTORY_ENV = "MPBENCH_RUNNER_FACTORY"

# Substrings of errors after which a CUDA context cannot be trusted (CUDA docs: sticky errors).
_POISONING_ERRORS = (
    "CUDA error",
    "device-side assert",
    "illegal memory access",
    "CUBLAS_STATUS_EXECUTION_FAILED",
    "cuDNN error: CUDNN_STATUS_EXECUTION_FAILED",
    "unspecified launch failure",
)

RunnerFactory = Callable[[Suite, Device], CaseRunner]


def default_runner_factory(suite: Suite, device: Device) -> CaseRunner:
    """A CaseRunner with the numerics analysis wired in when the suite enables it."""
    runner = CaseRunner(suite, device)
    analyzer = NumericsAnalyzer(suite, device, pristine_model=runner.pristine_model)
    if analyzer.enabled:
        runner.numerics = analyzer.for_case
    return runner


def runner_factory() -> RunnerFactory:
    """The factory named by MPBENCH_RUNNER_FACTORY (`module:function`), else the default."""
    ref = os.environ.get(RUNNER_FACTORY_ENV)
    if not ref:
        return default_runner_factory
    module_name, _, name = ref.partition(":")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise MpbenchError(
            f"{RUNNER_FACTORY_ENV}={ref!r}: cannot load it ({exc}); expected module:function"
        ) from None


def quiet_transformers() -> None:
    """transformers' config and generation notices would break the progress display; mpbench
    owns this process, so keep only its errors. The same for torchao, which transformers may
    import first: on a CPU it logs that its CUDA-only extension libraries cannot load, and torch
    warns about one of its enums (bench.engine.fp8 explains)."""
    import logging

    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def poisons_context(result: CaseResult) -> bool:
    """True for an error after which this process's CUDA context is unusable."""
    return result.status == "error" and any(s in (result.reason or "") for s in _POISONING_ERRORS)


class InProcessExecutor:
    """Runs cases in this process (`--isolate none`): fastest start, no protection from crashes."""

    def __init__(self, suite: Suite, device: Device, factory: RunnerFactory) -> None:
        quiet_transformers()
        self.runner = factory(suite, device)
        self.startup_s: list[float] = []

    def run(self, case: Case, phase: PhaseCallback = no_phase) -> CaseResult:
        """Measure one case."""
        return self.runner.run(case, Throttled(phase))

    def close(self) -> None:
        """Nothing to stop."""

    def abandon(self) -> None:
        """Nothing to kill: the interrupt already left the case."""


def apply_memory_limit(device: Device, limit_bytes: int) -> None:
    """Cap what this (worker) process may allocate, to find OOM behaviour on purpose.

    CUDA: torch's per-process memory fraction, so allocations beyond it raise OutOfMemoryError.
    CPU: RLIMIT_AS set to the address space in use now plus the limit, so a larger allocation
    fails in the allocator ("can't allocate memory") and the case is recorded as `oom`.
    """
    if device.is_cuda:
        import torch

        total = torch.cuda.get_device_properties(device.torch_device).total_memory
        torch.cuda.set_per_process_memory_fraction(
            min(1.0, limit_bytes / total), device.torch_device
        )
        return
    import resource

    with open("/proc/self/status", encoding="ascii") as fh:
        vm_size_kib = next(int(line.split()[1]) for line in fh if line.startswith("VmSize:"))
    cap = vm_size_kib * 1024 + limit_bytes
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def _worker_main(
    conn: Connection,
    suite: Suite,
    device_name: str,
    factory: RunnerFactory,
    memory_limit_bytes: int | None,
) -> None:
    """The worker process: build a runner, then answer case after case until told to stop."""
    # The parent handles Ctrl-C and decides what to abandon; the worker must not die of it first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A SIGTERM to the whole process group (CI cancel, `timeout`) is the parent's to handle: it
    # abandons the case and kills this worker, rather than the case being recorded as crashed.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    quiet_transformers()
    device = resolve_device(device_name)
    runner = factory(suite, device)
    if memory_limit_bytes is not None:
        apply_memory_limit(device, memory_limit_bytes)
    conn.send(("ready", os.getpid()))
    phase = Throttled(lambda name, step, total: conn.send(("phase", (name, step, total))))
    while True:
        message = conn.recv()
        if message is None:
            return
        result = runner.run(Case.from_dict(message), phase)
        if poisons_context(result):
            reason = f"CUDA context poisoned, worker replaced: {result.reason}"
            conn.send(("result", result.replace(status="crashed", reason=reason)))
            return
        conn.send(("result", result))


class WorkerExecutor:
    """Runs cases in a spawned worker; `per_case` replaces the worker after every case, otherwise
    one worker serves all cases of a model (its fp32 weights and references stay cached)."""

    def __init__(
        self,
        suite: Suite,
        device: Device,
        factory: RunnerFactory,
        per_case: bool = False,
        case_timeout_s: float | None = None,
        memory_limit_bytes: int | None = None,
    ) -> None:
        self.suite = suite
        self.memory_limit_bytes = memory_limit_bytes
        self.device_name = device.name
        self.factory = factory
        self.per_case = per_case
        self.case_timeout_s = case_timeout_s
        self._ctx = multiprocessing.get_context("spawn")  # no fork: CUDA cannot be forked
        self._proc: Any = None
        self._conn: Connection | None = None
        self._model: str | None = None
        self.startup_s: list[float] = []  # worker start-up times, for the record

    def _start(self) -> None:
        t0 = time.perf_counter()
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(
            target=_worker_main,
            args=(child, self.suite, self.device_name, self.factory, self.memory_limit_bytes),
            daemon=True,
        )
        self._proc.start()
        child.close()
        self._conn = parent
        if not parent.poll(600):
            raise RuntimeError("worker did not start within 600 s")
        parent.recv()  # ("ready", pid)
        self.startup_s.append(time.perf_counter() - t0)

    def _stop(self, kill: bool = False) -> None:
        if self._proc is None:
            return
        if not kill and self._proc.is_alive():
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(10)
        if self._conn is not None:
            self._conn.close()
        self._proc = self._conn = self._model = None

    def _await_result(self, phase: PhaseCallback) -> CaseResult | None:
        """Forward the case's phases until its result arrives; None when the timeout passes."""
        deadline = None if self.case_timeout_s is None else time.monotonic() + self.case_timeout_s
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._conn.poll(wait):
                return None
            kind, payload = self._conn.recv()
            if kind == "result":
                return payload
            phase(*payload)

    def run(self, case: Case, phase: PhaseCallback = no_phase) -> CaseResult:
        """Measure one case in a worker; a dead or hung worker becomes a status, not an exception."""
        if self._proc is not None and (self._model != case.model or not self._proc.is_alive()):
            self._stop()
        started_at = now_utc()
        if self._proc is None:
            try:
                self._start()
            except (EOFError, OSError, RuntimeError) as exc:
                if self._proc is not None:
                    self._proc.join(5)
                exitcode = self._proc.exitcode if self._proc is not None else None
                self._stop(kill=True)
                reason = f"worker failed to start ({_death_reason(exitcode)}; {type(exc).__name__})"
                return CaseResult(case, "crashed", reason, started_at=started_at, wall_s=0.0)
            self._model = case.model
        t0 = time.perf_counter()
        try:
            self._conn.send(case.to_dict())
            result = self._await_result(phase)
            if result is not None:
                if self.per_case or result.status == "crashed":
                    self._stop()
                return result
            reason = f"no result within --case-timeout {self.case_timeout_s:g} s; worker killed"
            self._stop(kill=True)
            return CaseResult(
                case, "timeout", reason, started_at=started_at, wall_s=time.perf_counter() - t0
            )
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError):
            self._proc.join(5)
            reason = _death_reason(self._proc.exitcode)
            self._stop(kill=True)
            return CaseResult(
                case, "crashed", reason, started_at=started_at, wall_s=time.perf_counter() - t0
            )

    def close(self) -> None:
        """Stop the worker (politely, then by force)."""
        self._stop()

    def abandon(self) -> None:
        """Kill the worker at once (Ctrl-C / SIGTERM): its current case is dropped, not recorded."""
        self._stop(kill=True)


def _death_reason(exitcode: int | None) -> str:
    if exitcode is None:
        return "worker stopped answering during the case"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"worker killed by {name} during the case"
    return f"worker exited with code {exitcode} during the case"


Executor = InProcessExecutor | WorkerExecutor


def make_executor(
    isolate: str,
    suite: Suite,
    device: Device,
    case_timeout_s: float | None = None,
    memory_limit_bytes: int | None = None,
    factory: RunnerFactory | None = None,
) -> Executor:
    """The executor for an --isolate mode."""
    factory = factory or runner_factory()
    if isolate == "none":
        return InProcessExecutor(suite, device, factory)
    return WorkerExecutor(
        suite,
        device,
        factory,
        per_case=isolate == "case",
        case_timeout_s=case_timeout_s,
        memory_limit_bytes=memory_limit_bytes,
    )

"""Where cases run: in this process, or in worker subprocesses that may die without taking the
sweep down (`--isolate none|model|case`).

A worker is a spawned Python process that builds its own CaseRunner and answers one case at a
time over a pipe. When it dies (a signal, a segfault, a CUDA error that poisons its context) the
case is recorded as `crashed`; when it does not answer within the case timeout it is killed and
the case is `timeout`. Either way the next case gets a fresh worker.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from datetime import datetime, timezone
from multiprocessing.connection import Connection
from typing import Any

from bench.engine.device import Device, resolve_device
from bench.engine.runner import CaseRunner
from bench.engine.suite import Suite
from bench.results.schema import Case, CaseResult

ISOLATION_MODES = ("none", "model", "case")

# Substrings of errors after which a CUDA context cannot be trusted (CUDA docs: sticky errors).
_POISONING_ERRORS = (
    "CUDA error",
    "device-side assert",
    "illegal memory access",
    "CUBLAS_STATUS_EXECUTION_FAILED",
    "cuDNN error: CUDNN_STATUS_EXECUTION_FAILED",
    "unspecified launch failure",
)

# Fault injection for the reliability tests: MPBENCH_TEST_FAULT="kill:<case id>" makes the
# worker SIGKILL itself when that case starts, "hang:<case id>" makes it sleep forever.
FAULT_ENV = "MPBENCH_TEST_FAULT"

RunnerFactory = Callable[[Suite, Device], CaseRunner]


def default_runner_factory(suite: Suite, device: Device) -> CaseRunner:
    """A CaseRunner with the numerics analysis wired in when the suite enables it."""
    from bench.engine.numerics import NumericsAnalyzer

    runner = CaseRunner(suite, device)
    analyzer = NumericsAnalyzer(suite, device, pristine_model=runner.pristine_model)
    if analyzer.enabled:
        runner.numerics = analyzer.for_case
    return runner


def quiet_transformers() -> None:
    """transformers' config and generation notices would break the progress display; mpbench
    owns this process, so keep only its errors."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def poisons_context(result: CaseResult) -> bool:
    """True for an error after which this process's CUDA context is unusable."""
    return result.status == "error" and any(s in (result.reason or "") for s in _POISONING_ERRORS)


def _inject_fault(case: Case) -> None:
    fault = os.environ.get(FAULT_ENV, "")
    kind, _, case_id = fault.partition(":")
    if case_id != case.id:
        return
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "hang":
        while True:
            time.sleep(60)


class InProcessExecutor:
    """Runs cases in this process (`--isolate none`): fastest start, no protection from crashes."""

    def __init__(self, suite: Suite, device: Device, factory: RunnerFactory) -> None:
        quiet_transformers()
        self.runner = factory(suite, device)

    def run(self, case: Case) -> CaseResult:
        """Measure one case."""
        _inject_fault(case)
        return self.runner.run(case)

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
    while True:
        message = conn.recv()
        if message is None:
            return
        case = Case.from_dict(message)
        _inject_fault(case)
        result = runner.run(case)
        if poisons_context(result):
            result.status = "crashed"
            result.reason = f"CUDA context poisoned, worker replaced: {result.reason}"
            conn.send(("result", result))
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

    @property
    def worker_pid(self) -> int | None:
        """The live worker's pid (None between workers)."""
        return self._proc.pid if self._proc is not None else None

    def run(self, case: Case) -> CaseResult:
        """Measure one case in a worker; a dead or hung worker becomes a status, not an exception."""
        if self._proc is not None and (self._model != case.model or not self._proc.is_alive()):
            self._stop()
        started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
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
            if self._conn.poll(self.case_timeout_s):
                kind, result = self._conn.recv()
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


def make_executor(
    isolate: str,
    suite: Suite,
    device: Device,
    case_timeout_s: float | None = None,
    memory_limit_bytes: int | None = None,
    factory: RunnerFactory = default_runner_factory,
) -> InProcessExecutor | WorkerExecutor:
    """The executor for an --isolate mode."""
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

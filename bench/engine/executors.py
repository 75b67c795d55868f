"""Where cases run. Every executor has one method that matters, `run(case, phase) -> CaseResult`,
so a sweep (bench.engine.session) is the same loop however its cases run:

  InProcessExecutor   in this process (`--isolate none`): fastest start, no crash protection;
  WorkerExecutor      in a child process that may die without taking the sweep down: a spawned
                      worker (`--isolate model|case`), or a torchrun launch of N ranks whose rank
                      0 answers like a worker (`--nproc N`: data-parallel training);
  RankGroupExecutor   in this process as rank 0 of a process group: each case on every rank,
                      their results combined into one (a torchrun launch, its rank 0 serving a
                      `--nproc` parent, or `--parallel` alone: a one-rank group).

A worker answers one case at a time over a connection, sending the case's progress phases
before its result (`serve`). When it dies (a signal, a segfault, a CUDA error that poisons its
context, a rank lost) the case is `crashed` (or what a failed rank reported); when it does not
answer within the case timeout it is killed and the case is `timeout`. Either way the next case
gets a fresh worker. bench.engine.supervisor holds the processes and the signals.

The runner is built by a factory, `default_runner_factory` unless the environment variable
MPBENCH_RUNNER_FACTORY names another as `module:function` (it takes the suite and the device and
returns a CaseRunner; the tests use it to inject crashes and hangs).
"""

from __future__ import annotations

import importlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.engine.device import Device, resolve_device
from bench.engine.numerics.analyzer import NumericsAnalyzer
from bench.engine.parallel import (
    Launch,
    RankLost,
    combine_ranks,
    control_group,
    gather_results,
)
from bench.engine.progress import PhaseCallback, Throttled, no_phase
from bench.engine.runner import CaseRunner, now_utc
from bench.engine.suite import Suite, parse_suite
from bench.engine.supervisor import Child, SpawnedChild, TorchrunChild, death_reason
from bench.errors import EXIT_RANK_LOST, MpbenchError
from bench.results.rundir import clear_rank_reports, reported_failure, write_rank_report
from bench.results.schema import Case, CaseResult

RUNNER_FACTORY_ENV = "MPBENCH_RUNNER_FACTORY"
# Beyond --case-timeout (the ranks' own collective timeout, after which rank 0 reports the case
# itself), how long a torchrun launch may stay silent before it is stopped.
RANKS_GRACE_S = 60.0

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


@dataclass(frozen=True)
class ExecutionOptions:
    """Where and how a sweep's cases run (the `mpbench run` flags that choose the executor)."""

    isolate: str = "model"  # none | model | case
    case_timeout_s: float | None = None
    memory_limit_bytes: int | None = None  # per worker (apply_memory_limit)
    nproc: int | None = None  # --nproc: a torchrun launch of this many ranks serves the cases
    launch: Launch | None = None  # this process is rank 0 of a process group (torchrun, ddp1)
    backend: str | None = None  # that group's (nccl or gloo)


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
    warns about one of its enums (bench.engine.modes.fp8 explains)."""
    import logging

    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def poisons_context(result: CaseResult) -> bool:
    """True for an error after which this process's CUDA context is unusable."""
    return result.status == "error" and any(s in (result.reason or "") for s in _POISONING_ERRORS)


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


# ---------------------------------------------------------------------------------------------
# In this process
# ---------------------------------------------------------------------------------------------


class InProcessExecutor:
    """Runs cases in this process (`--isolate none`): fastest start, no protection from crashes."""

    broken: str | None = None  # never: nothing here can be lost
    startup_s: tuple[float, ...] = ()

    def __init__(self, suite: Suite, device: Device, factory: RunnerFactory) -> None:
        quiet_transformers()
        self.runner = factory(suite, device)

    def run(self, case: Case, phase: PhaseCallback = no_phase) -> CaseResult:
        """Measure one case."""
        return self.runner.run(case, Throttled(phase))

    def close(self) -> None:
        """Nothing to stop."""

    def abandon(self) -> None:
        """Nothing to kill: the interrupt already left the case."""


# ---------------------------------------------------------------------------------------------
# In a worker: the worker's side, then the supervising side
# ---------------------------------------------------------------------------------------------


def serve(conn: Connection, executor: InProcessExecutor | RankGroupExecutor) -> None:
    """A worker's loop: say it is ready, then answer case after case (its phases, then its
    result) until told to stop (None), or until a case leaves it unable to run another (a
    poisoned CUDA context, a process group that lost a rank): that result says it retires."""
    conn.send(("ready", os.getpid()))

    def phase(name: str, step: int | None = None, total: int | None = None) -> None:
        conn.send(("phase", (name, step, total)))  # the executor throttles them

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if message is None:
            return
        result = executor.run(Case.from_dict(message), phase)
        retire = executor.broken is not None
        if poisons_context(result):
            reason = f"CUDA context poisoned, worker replaced: {result.reason}"
            result, retire = result.replace(status="crashed", reason=reason), True
        conn.send(("result", result, retire))
        if retire:
            return


def _spawned_worker(
    conn: Connection,
    suite: Suite,
    device_name: str,
    factory: RunnerFactory,
    memory_limit_bytes: int | None,
) -> None:
    """A spawned worker process: build a runner, then serve the parent's cases."""
    # The parent handles Ctrl-C and decides what to abandon; the worker must not die of it first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A SIGTERM to the whole process group (CI cancel, `timeout`) is the parent's to handle: it
    # abandons the case and kills this worker, rather than the case being recorded as crashed.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    device = resolve_device(device_name)
    executor = InProcessExecutor(suite, device, factory)
    if memory_limit_bytes is not None:
        apply_memory_limit(device, memory_limit_bytes)
    serve(conn, executor)


class WorkerExecutor:
    """Runs cases in a child process, started by `start()`: one child per model (its fp32 weights
    and references stay cached), or per case with `per_case`. A child that dies is the case's
    `crashed` (or, for a torchrun launch, the status a failed rank reported: `lost_result`), one
    that does not answer within `case_timeout_s` (+ `grace_s`) is killed and the case is
    `timeout`; the next case starts a fresh child."""

    broken: str | None = None  # a lost child is replaced, never the sweep's end

    def __init__(
        self,
        start: Callable[[], Child],
        per_case: bool = False,
        case_timeout_s: float | None = None,
        grace_s: float = 0.0,
        lost_result: Callable[[Case], CaseResult | None] = lambda case: None,
    ) -> None:
        self._start_child = start
        self.per_case = per_case
        self.case_timeout_s = case_timeout_s
        self.grace_s = grace_s
        self.lost_result = lost_result
        self._child: Child | None = None
        self._model: str | None = None
        self.startup_s: list[float] = []  # child start-up times, for the record

    def _start(self) -> None:
        t0 = time.perf_counter()
        self._child = self._start_child()
        if not self._child.conn.poll(600):
            raise RuntimeError("worker did not start within 600 s")
        self._child.conn.recv()  # ("ready", pid)
        self.startup_s.append(time.perf_counter() - t0)

    def _stop(self, kill: bool = False) -> None:
        child, self._child, self._model = self._child, None, None
        if child is None:
            return
        if not kill and child.alive():
            try:
                child.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            child.join(30)
        child.kill()

    def _await_result(self, phase: PhaseCallback) -> tuple[CaseResult, bool] | None:
        """Forward the case's phases until its result arrives; None when the deadline passes."""
        limit = None if self.case_timeout_s is None else self.case_timeout_s + self.grace_s
        deadline = None if limit is None else time.monotonic() + limit
        conn = self._child.conn
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not conn.poll(wait):
                return None
            message = conn.recv()
            if message[0] == "result":
                return message[1], message[2]
            phase(*message[1])

    def run(self, case: Case, phase: PhaseCallback = no_phase) -> CaseResult:
        """Measure one case in a child; a dead or hung child becomes a status, not an exception."""
        if self._child is not None and (self._model != case.model or not self._child.alive()):
            self._stop()
        started_at = now_utc()
        if self._child is None:
            try:
                self._start()
            except (EOFError, OSError, RuntimeError) as exc:
                exitcode = self._child.exitcode() if self._child is not None else None
                self._stop(kill=True)
                reason = f"worker failed to start ({death_reason(exitcode)}; {type(exc).__name__}: {exc})"
                return CaseResult(case, "crashed", reason, started_at=started_at, wall_s=0.0)
            self._model = case.model
        t0 = time.perf_counter()
        try:
            self._child.conn.send(case.to_dict())
            answer = self._await_result(phase)
        except (EOFError, BrokenPipeError, ConnectionResetError, OSError):
            self._child.join(5)
            reason = self._child.death_reason()
            self._stop(kill=True)
            result = self.lost_result(case) or CaseResult(case, "crashed", reason)
            return result.replace(started_at=started_at, wall_s=time.perf_counter() - t0)
        if answer is None:
            self._stop(kill=True)
            reason = f"no result within --case-timeout {self.case_timeout_s:g} s; worker killed"
            result = self.lost_result(case) or CaseResult(case, "timeout", reason)
            return result.replace(started_at=started_at, wall_s=time.perf_counter() - t0)
        result, retire = answer
        if self.per_case or retire or result.status == "crashed":
            self._stop(kill=retire)
        return result

    def close(self) -> None:
        """Stop the child (politely, then by force)."""
        self._stop()

    def abandon(self) -> None:
        """Kill the child at once (Ctrl-C / SIGTERM): its current case is dropped, not recorded."""
        self._stop(kill=True)


# ---------------------------------------------------------------------------------------------
# Rank 0 of a process group
# ---------------------------------------------------------------------------------------------


class RankGroupExecutor:
    """Rank 0's side of a data-parallel sweep: it tells the other ranks which case to run (a
    broadcast), runs its own share, and gathers theirs into the case's one result
    (bench.engine.parallel.combine_ranks). Cases that are not data-parallel (inference) run on
    rank 0 alone while the others wait.

    A rank whose share fails (out of memory on one GPU, an error) cannot tell its peers: they
    may be inside a collective that will never complete. It leaves its result in
    RUN_DIR/inflight-rankN.json and exits; its peers' collectives then fail (or time out), the
    case is recorded with the failed rank's own status and reason, and `broken` says the group
    cannot run another case."""

    startup_s: tuple[float, ...] = ()

    def __init__(
        self, local: InProcessExecutor, suite: Suite, launch: Launch, backend: str, out: Path
    ) -> None:
        import torch.distributed as dist

        self.local = local
        self.suite = suite
        self.launch = launch
        self.backend = backend
        self.out = Path(out)
        self.broken: str | None = None
        # The followers build their runners from the suite rank 0 resolved (flags, resume), and
        # leave a failed share's report in its run directory.
        dist.broadcast_object_list([suite.to_toml(), str(out)], src=0, group=control_group())

    def run(self, case: Case, phase: PhaseCallback = no_phase) -> CaseResult:
        """The case's one result; after a lost rank, `broken` says why the group is done."""
        import torch.distributed as dist

        clear_rank_reports(self.out)
        try:
            dist.broadcast_object_list([case.to_dict()], src=0, group=control_group())
            local = self.local.run(case, phase)
            if shares_collectives(case, self.launch) and failed_share(local):
                # No gather: a peer may be waiting in a collective this rank has left.
                self.broken = f"rank 0: {local.reason}"
                return self._failed(case, local)
            per_rank = gather_results(local)
        except (RankLost, RuntimeError) as exc:
            self.broken = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return self._failed(case, None, self.broken)
        if case.parallel is None:
            return per_rank[0]  # run by rank 0 alone; the others only waited for it
        return combine_ranks(case, per_rank, self.backend, self.suite.timing.unstable_cv)

    def _failed(self, case: Case, local: CaseResult | None, lost: str | None = None) -> CaseResult:
        """The failed case's result: the lowest failed peer's report if one left it (the cause;
        rank 0's own error is then its consequence); else rank 0's own failure, unless it is a
        collective that failed (a peer died: crashed; stopped answering: timeout)."""
        reported = reported_failure(self.out, case)
        if reported is not None:
            return reported
        message = lost if local is None else (local.reason or "")
        if local is not None and not _collective_failure(message):
            return local.replace(reason=f"rank 0: {local.reason}")
        lowered = message.lower()
        status = "timeout" if "timed out" in lowered or "timeout" in lowered else "crashed"
        return CaseResult(case, status, f"a rank was lost during the case: {message}")

    def close(self) -> None:
        """Tell the other ranks the sweep is over (unless the group is broken: they are gone)."""
        import torch.distributed as dist

        if self.broken is None:
            dist.broadcast_object_list([None], src=0, group=control_group())
        clear_rank_reports(self.out)

    def abandon(self) -> None:
        """Nothing to kill: the other ranks end with this process (torchrun stops them)."""


# What the collectives say when a peer died or stopped answering (gloo, NCCL, c10d).
_COLLECTIVE_ERRORS = ("gloo", "nccl", "connection", "timed out", "timeout", "distbackenderror")


def _collective_failure(message: str) -> bool:
    """The error is a collective's that failed because of a peer, not this rank's own."""
    return any(word in message.lower() for word in _COLLECTIVE_ERRORS)


def shares_collectives(case: Case, launch: Launch | None) -> bool:
    """A data-parallel case over more than one rank: its ranks wait on each other."""
    return case.parallel is not None and launch is not None and launch.world_size > 1


def failed_share(result: CaseResult) -> bool:
    """This rank's share of a case ended early (skipped cases skip on every rank alike)."""
    return result.status not in ("ok", "skipped")


def follow_sweep(device: Device, launch: Launch) -> int:
    """A rank other than 0: run each case rank 0 names (its data-parallel cases; for the others
    only wait) until it says stop. Writes nothing but a failed share's report; returns the exit
    code."""
    import torch.distributed as dist

    box: list[Any] = [None, None]
    dist.broadcast_object_list(box, src=0, group=control_group())
    suite = parse_suite(box[0], "<suite from rank 0>")
    out = Path(box[1])
    local = InProcessExecutor(suite, device, runner_factory())
    waiting = CaseResult(Case("-", None, "train", "-", 1, 1, None), "skipped", "rank 0 runs it")
    box = [None]
    while True:
        dist.broadcast_object_list(box, src=0, group=control_group())
        if box[0] is None:
            return 0
        case = Case.from_dict(box[0])
        result = local.run(case) if case.parallel is not None else waiting
        if shares_collectives(case, launch) and failed_share(result):
            write_rank_report(out, launch.rank, result)
            # Leave at once: a clean exit would wait on peers stuck in a collective.
            os._exit(EXIT_RANK_LOST)
        gather_results(result)


# ---------------------------------------------------------------------------------------------
# Choosing one
# ---------------------------------------------------------------------------------------------


Executor = InProcessExecutor | WorkerExecutor | RankGroupExecutor


def make_executor(
    options: ExecutionOptions,
    suite: Suite,
    device: Device,
    out: Path,
    factory: RunnerFactory | None = None,
) -> Executor:
    """The executor the options ask for."""
    factory = factory or runner_factory()
    if options.nproc is not None:  # ranks read the suite from RUN_DIR/suite.toml
        case_timeout_s = options.case_timeout_s or 1800.0

        def start_ranks() -> Child:
            clear_rank_reports(out)
            return TorchrunChild(options.nproc, out, device.type, case_timeout_s)

        return WorkerExecutor(
            start_ranks,
            per_case=options.isolate == "case",
            case_timeout_s=case_timeout_s,
            grace_s=RANKS_GRACE_S,
            lost_result=lambda case: reported_failure(out, case, consume=True),
        )
    if options.launch is not None:
        local = InProcessExecutor(suite, device, factory)
        return RankGroupExecutor(local, suite, options.launch, options.backend or "unknown", out)
    if options.isolate == "none":
        return InProcessExecutor(suite, device, factory)

    def spawn() -> Child:
        args = (suite, device.name, factory, options.memory_limit_bytes)
        return SpawnedChild(_spawned_worker, args)

    return WorkerExecutor(
        spawn, per_case=options.isolate == "case", case_timeout_s=options.case_timeout_s
    )

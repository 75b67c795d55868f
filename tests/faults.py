"""Fault injection for the reliability tests, through mpbench's documented runner-factory hook.

Run mpbench with MPBENCH_RUNNER_FACTORY=faults:faulty_runner (and this folder on PYTHONPATH) and
MPBENCH_TEST_FAULT="kill:<case id>" (the worker SIGKILLs itself when that case starts) or
"hang:<case id>" (it sleeps forever) or "oom:<case id>" (the case's result is an out-of-memory
without running it); "kill-rank1:<case id>" and the like do that only in rank 1 of a torchrun
launch; several faults, each on its own case, are separated by ";". Nothing of this lives in
mpbench itself.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from bench.engine.executors import default_runner_factory
from bench.results.schema import CaseResult

FAULT_ENV = "MPBENCH_TEST_FAULT"


def default_sigint() -> None:
    """A Popen preexec_fn for a child the test will Ctrl-C: SIGINT back to its default action. A
    shell starts its background jobs (`nohup .ci/run &`) with SIGINT ignored, the child inherits
    that, and Python then never raises KeyboardInterrupt: the test would hang, not fail."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def faulty_runner(suite: Any, device: Any) -> Any:
    """The default runner, whose run() kills or hangs its process on one case."""
    runner = default_runner_factory(suite, device)
    faults = {}  # case id -> kind
    for fault in filter(None, os.environ.get(FAULT_ENV, "").split(";")):
        kind, _, victim = fault.partition(":")
        if kind.endswith("-rank1"):  # a data-parallel launch: only rank 1 is hit
            kind = kind.removesuffix("-rank1") if os.environ.get("RANK") == "1" else ""
        faults[victim] = kind
    run = runner.run

    def run_with_fault(case: Any, *args: Any, **kwargs: Any) -> Any:
        kind = faults.get(case.id)
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "oom":
            return CaseResult(case, "oom", "OutOfMemoryError: injected by tests/faults.py")
        if kind == "hang":
            while True:
                time.sleep(60)
        return run(case, *args, **kwargs)

    runner.run = run_with_fault
    return runner


def device_checks_that_die(conn: Any, device_name: str) -> None:
    """A stand-in for selfcheck's device-checks process: one check passes, the next kills the
    process mid-way (what a segfault or a poisoned CUDA context does)."""
    conn.send(("start", "identity"))
    conn.send(("result", {"name": "identity", "status": "PASS", "detail": device_name}))
    conn.send(("start", "mode fp8"))
    os.kill(os.getpid(), signal.SIGKILL)

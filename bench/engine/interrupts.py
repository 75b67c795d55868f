"""Ctrl-C and SIGTERM during a sweep: abandon the case in flight, keep everything finished.

`InterruptibleSweep` holds a sweep's executor. An interrupt (KeyboardInterrupt, or SIGTERM turned
into `Terminated`) inside it is swallowed and becomes an exit code (130 / 143); the executor's
worker is killed and the case it was running is dropped, not recorded. Any other error goes on
up after the executor is closed.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from bench.engine.device import Device
from bench.engine.executors import Executor, make_executor
from bench.engine.suite import Suite
from bench.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED


class Terminated(BaseException):
    """SIGTERM arrived: stop like Ctrl-C, exit 143."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@dataclass(frozen=True)
class ExecutionOptions:
    """Where and how a sweep's cases run (the `mpbench run` flags that shape the executor)."""

    isolate: str = "model"  # none | model | case
    case_timeout_s: float | None = None
    memory_limit_bytes: int | None = None  # per worker (bench.engine.executors.apply_memory_limit)


class InterruptibleSweep:
    """The executor of a sweep, with Ctrl-C and SIGTERM turned into an exit code (130 / 143)."""

    def __init__(self, suite: Suite, device: Device, options: ExecutionOptions) -> None:
        self.executor: Executor = make_executor(
            options.isolate, suite, device, options.case_timeout_s, options.memory_limit_bytes
        )
        self.exit_code = EXIT_OK

    def __enter__(self) -> InterruptibleSweep:
        self._previous_term = signal.signal(signal.SIGTERM, _raise_terminated)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> bool:
        signal.signal(signal.SIGTERM, self._previous_term)
        interrupted = exc_type is not None and issubclass(exc_type, (KeyboardInterrupt, Terminated))
        if interrupted:
            self.exit_code = (
                EXIT_TERMINATED if issubclass(exc_type, Terminated) else EXIT_INTERRUPTED
            )
            self.executor.abandon()
        self.executor.close()
        return interrupted  # swallow only the interrupt; any other error propagates

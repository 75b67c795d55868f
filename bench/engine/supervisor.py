"""Processes and signals: the one supervisor every sweep runs under.

A sweep's cases run in this process, in a spawned worker process, or in a torchrun launch of N
ranks whose rank 0 serves cases to this process like a worker (`mpbench run --nproc N`). Either
way a worker is a `Child`: a process (tree) and a connection to it. The executors
(bench.engine.executors) wait on a child's answer with the case's deadline and, when it dies or
hangs, kill it and record the case as `crashed` or `timeout`; `InterruptibleSweep` turns Ctrl-C
and SIGTERM into an exit code (130 / 143) and kills whatever child is running. No process
outlives the supervisor: a killed child's whole process tree goes with it, and a rank dies with
its torchrun (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED

# torchrun's agent gives its workers 30 s between SIGTERM and SIGKILL.
STOP_WAIT_S = 40.0
# How long a child may take to start and say it is ready (importing torch, a CUDA context,
# torchrun's rendezvous).
START_TIMEOUT_S = 600.0


class Terminated(BaseException):
    """SIGTERM arrived: stop like Ctrl-C, exit 143."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


class InterruptibleSweep:
    """An executor's lifetime, with Ctrl-C and SIGTERM turned into an exit code (130 / 143).

    An interrupt inside it is swallowed: the case in flight is abandoned (its worker killed, its
    result never written) and `exit_code` says which signal came. Any other error goes on up
    after the executor is closed."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor
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


def death_reason(exitcode: int | None, what: str = "worker") -> str:
    """How a child ended, for a case's reason."""
    if exitcode is None:
        return f"{what} stopped answering during the case"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"{what} killed by {name} during the case"
    return f"{what} exited with code {exitcode} during the case"


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies, so a rank never outlives a
    torchrun that was itself killed. A no-op elsewhere."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (Linux /proc): torchrun starts each rank in a session of
    its own, so a signal to torchrun's process group does not reach them."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# ---------------------------------------------------------------------------------------------
# Children: a spawned worker, or a torchrun launch whose rank 0 serves cases
# ---------------------------------------------------------------------------------------------


class SpawnedChild:
    """A worker process started by multiprocessing's spawn (no fork: CUDA cannot be forked),
    talking over a pipe. `target(conn, *args)` runs in it."""

    def __init__(self, target: Callable[..., None], args: tuple[Any, ...]) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self.process = context.Process(target=target, args=(child, *args), daemon=True)
        self.process.start()
        child.close()
        self.conn: Connection = parent

    def alive(self) -> bool:
        """The process is still running."""
        return self.process.is_alive()

    def exitcode(self) -> int | None:
        """Its exit code once ended (negative: the signal that killed it)."""
        return self.process.exitcode

    def death_reason(self) -> str:
        """How it ended, for the case's reason."""
        return death_reason(self.process.exitcode)

    def join(self, timeout_s: float) -> None:
        """Wait for it to end, at most `timeout_s`."""
        self.process.join(timeout_s)

    def kill(self) -> None:
        """Kill it at once."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)
        self.conn.close()


class TorchrunChild:
    """`python -m torch.distributed.run --standalone --nproc-per-node N -m bench.engine.rankworker`:
    N ranks, the process group theirs; rank 0 connects back to this process over a Unix socket
    in a private directory and then answers cases like a spawned worker (bench.engine.rankworker).
    torchrun runs in a session of its own, so Ctrl-C reaches this process only, which then
    stops torchrun and every rank under it."""

    def __init__(
        self,
        nproc: int,
        run_dir: Path,
        device: str,
        case_timeout_s: float,
        env: dict[str, str] | None = None,
    ) -> None:
        self.directory = tempfile.mkdtemp(prefix="mpbench-ranks-")
        address = os.path.join(self.directory, "rank0.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(address)
        self._listener.listen(1)
        self.command = torchrun_command(nproc, run_dir, device, case_timeout_s)
        child_env = {**os.environ, **(env or {}), RANK0_ADDRESS_ENV: address}
        self.process = subprocess.Popen(self.command, env=child_env, start_new_session=True)
        self._known: set[int] = set()
        self.conn = self._accept()

    def _accept(self) -> Connection:
        """Wait for rank 0 to connect, while torchrun lives."""
        self._listener.settimeout(0.5)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            self._known |= set(descendants(self.process.pid))
            try:
                sock, _ = self._listener.accept()
                break
            except TimeoutError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise OSError(
                        f"torchrun exited with code {self.process.returncode} before its rank 0 "
                        "connected; its output above says why"
                    ) from None
        self._listener.close()
        sock.setblocking(True)
        return Connection(sock.detach())

    def alive(self) -> bool:
        """torchrun is still running."""
        self._known |= set(descendants(self.process.pid))
        return self.process.poll() is None

    def exitcode(self) -> int | None:
        """torchrun's exit code once ended."""
        return self.process.poll()

    def death_reason(self) -> str:
        """How the launch ended, for the case's reason (torchrun's log names the rank)."""
        code = self.process.poll()
        if code is None:
            return "torchrun stopped answering during the case"
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        return f"torchrun ended the case ({how}): a rank died; torchrun's log above names it"

    def join(self, timeout_s: float) -> None:
        """Wait for torchrun to end, at most `timeout_s`."""
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass

    def kill(self) -> None:
        """SIGTERM to torchrun (it stops its ranks), then SIGKILL to whatever is still alive
        below it or among the ranks seen under it before (a rank outlives a killed torchrun,
        re-parented): no rank outlives the supervisor."""
        known = self._known | set(descendants(self.process.pid))
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                known |= set(descendants(self.process.pid))
                self.process.kill()
        for pid in known:
            if _is_rank(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self.process.wait()
        try:
            self.conn.close()
        except (AttributeError, OSError):
            pass
        shutil.rmtree(self.directory, ignore_errors=True)


RANK0_ADDRESS_ENV = "MPBENCH_RANK0_ADDRESS"  # where rank 0 of a --nproc launch connects


def torchrun_command(nproc: int, run_dir: Path, device: str, case_timeout_s: float) -> list[str]:
    """The torchrun command line of a --nproc launch: every rank needs its device kind ("cuda":
    each rank takes the GPU of its local rank) and the collectives' timeout before the process
    group exists; rank 0 reads the suite from the run directory and gets its cases from this
    process."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "-m",
        "bench.engine.rankworker",
        "--run-dir",
        str(run_dir),
        "--device",
        device,
        "--case-timeout",
        f"{case_timeout_s:g}",
    ]


def _is_rank(pid: int) -> bool:
    """A live process running mpbench (so a recycled PID is never signalled)."""
    try:
        return _alive(pid) and b"bench" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


Child = SpawnedChild | TorchrunChild

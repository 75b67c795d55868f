"""`mpbench run --nproc N`: start torchrun for a data-parallel run, watch it, keep going.

torchrun (PyTorch's own launcher, `python -m torch.distributed.run --standalone`) starts the N
ranks; its elastic agent ends them all when one dies. This supervisor adds what torchrun cannot
know: which case was in flight (RUN_DIR/inflight, written by rank 0) and that the run should go
on. When torchrun ends before the sweep does, the in-flight case is recorded (unless rank 0
recorded it already): with the status a failed rank reported (RUN_DIR/inflight-rankN.json),
else `timeout` when it ran past --case-timeout, else `crashed`; a fresh torchrun continues the
run with --resume. Ctrl-C or SIGTERM
stops torchrun and every process under it; none is left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, MpbenchError
from bench.results.rundir import (
    INFLIGHT_FILE,
    RESULTS_FILE,
    SUITE_FILE,
    ResultsWriter,
    clear_inflight,
    read_results,
    reported_failure,
)
from bench.results.schema import Case, CaseResult

SUPERVISED_ENV = "MPBENCH_SUPERVISED"  # set for the ranks: the supervisor shows the run at the end
# Beyond --case-timeout (the ranks' own collective timeout), how long a case may stay in flight
# before the watchdog stops torchrun: the ranks should have given up by then.
WATCHDOG_GRACE_S = 60.0
# torchrun's agent gives its workers 30 s between SIGTERM and SIGKILL.
STOP_WAIT_S = 40.0
# Flags the supervisor sets itself on the torchrun command line (each takes a value).
_OWN_FLAGS = ("--nproc", "--out", "--resume")


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent (torchrun) dies, so a rank never
    outlives a torchrun that was itself killed. A no-op elsewhere."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def rank_arguments(argv: list[str]) -> list[str]:
    """`mpbench run` arguments for the ranks: the user's, less --nproc, --out and --resume."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in _OWN_FLAGS:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def torchrun_command(argv: list[str], nproc: int, out: Path, resume: bool) -> list[str]:
    """The torchrun command line that runs `mpbench run` on `nproc` ranks into `out`."""
    target = ["--resume", str(out)] if resume else ["--out", str(out)]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "-m",
        "bench",
        *rank_arguments(argv),
        *target,
        "--no-report",
    ]


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


def _is_rank(pid: int) -> bool:
    """A live process running mpbench (so a recycled PID is never signalled)."""
    try:
        return _alive(pid) and b"bench" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def stop_tree(proc: subprocess.Popen[Any], known: set[int]) -> None:
    """SIGTERM to torchrun (it stops its ranks), then SIGKILL to whatever is still alive below
    it or among the ranks seen under it before (`known`: a rank outlives a torchrun that was
    killed, re-parented): no rank outlives the supervisor."""
    known |= set(descendants(proc.pid))
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        known |= set(descendants(proc.pid))
        proc.kill()
    for pid in known:
        if _is_rank(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    proc.wait()


def _inflight(out: Path) -> str | None:
    try:
        return (out / INFLIGHT_FILE).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _done_ids(out: Path) -> set[str]:
    path = out / RESULTS_FILE
    return {r.case.id for r in read_results(path)[0]} if path.exists() else set()


class _Interrupted(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _raise_interrupted(signum: int, frame: object) -> None:
    raise _Interrupted(EXIT_TERMINATED if signum == signal.SIGTERM else EXIT_INTERRUPTED)


@dataclass
class Launched:
    """How one torchrun launch ended."""

    code: int  # torchrun's exit code
    hung: bool  # the watchdog stopped a case that ran past its timeout
    inflight_s: float  # how long the case in flight (if any) had been running


def watch(cmd: list[str], out: Path, case_timeout_s: float) -> Launched:
    """Run torchrun to its end, stopping it when a case runs past the timeout."""
    env = {**os.environ, SUPERVISED_ENV: "1"}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    known: set[int] = set()  # every process seen under torchrun, to stop even if orphaned
    seen: tuple[str | None, float] = (None, time.monotonic())
    hung = False
    try:
        while proc.poll() is None:
            time.sleep(0.5)
            known |= set(descendants(proc.pid))
            current = _inflight(out)
            if current != seen[0]:
                seen = (current, time.monotonic())
            elif (
                current is not None
                and time.monotonic() - seen[1] > case_timeout_s + WATCHDOG_GRACE_S
            ):
                hung = True
                break
        running_s = time.monotonic() - seen[1] if _inflight(out) is not None else 0.0
        stop_tree(proc, known)  # torchrun has ended (or must); no rank may linger
        return Launched(proc.returncode, hung, running_s)
    except (KeyboardInterrupt, _Interrupted):
        stop_tree(proc, known)
        raise


def supervise(
    argv: list[str], nproc: int, out: Path, case_timeout_s: float, resume: bool, console: Any
) -> int:
    """Run the data-parallel sweep under torchrun until every case has a result; returns the
    exit code (0 done, 130/143 interrupted, else torchrun's when it fails outside a case)."""
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_interrupted)}
    try:
        while True:
            done_before = _done_ids(out) if resume else set()
            if resume:
                clear_inflight(out)  # a stale one from an earlier launch names no live case
            cmd = torchrun_command(argv, nproc, out, resume)
            console.print(f"mpbench: torchrun, {nproc} process(es): {' '.join(cmd[1:])}")
            ended = watch(cmd, out, case_timeout_s)
            if ended.code == EXIT_OK and not ended.hung:
                return EXIT_OK
            if not (out / SUITE_FILE).is_file():
                raise MpbenchError(
                    f"torchrun exited with code {ended.code} before the run started; its output "
                    "above says why"
                )
            case_id = _inflight(out)
            done = _done_ids(out)
            if case_id is not None and case_id not in done:
                _record_lost(out, case_id, ended, case_timeout_s)
                done.add(case_id)
            clear_inflight(out)
            if _all_done(out, done):
                console.print(
                    f"mpbench: torchrun ended with code {ended.code} after the last case; "
                    "every case has its result"
                )
                return EXIT_OK
            if len(done) <= len(done_before):  # nothing new: a failure outside any case
                raise MpbenchError(
                    f"torchrun exited with code {ended.code} before finishing a case; its output "
                    "above says why"
                )
            console.print(
                f"mpbench: torchrun ended with code {ended.code} during the sweep; "
                f"continuing with a fresh launch (`--resume {out}`)"
            )
            resume = True
    except (KeyboardInterrupt, _Interrupted) as exc:
        clear_inflight(out)  # the case in flight is dropped, not recorded, as on one device
        return exc.code if isinstance(exc, _Interrupted) else EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous[signal.SIGTERM])


def _record_lost(out: Path, case_id: str, ended: Launched, case_timeout_s: float) -> None:
    """Append the in-flight case: a failed rank's own report where one was left (say, out of
    memory on one GPU), else timeout (the watchdog stopped it, or it had run past the timeout
    when the ranks gave up: NCCL's watchdog ends a process whose collective timed out), else
    crashed (a rank died)."""
    case = _case_of(out, case_id)
    result = reported_failure(out, case)
    if result is None and (ended.hung or ended.inflight_s >= case_timeout_s):
        reason = (
            f"no result within --case-timeout {case_timeout_s:g} s; torchrun and every rank stopped"
        )
        result = CaseResult(case, "timeout", reason)
    elif result is None:
        how = f"signal {-ended.code}" if ended.code < 0 else f"exit code {ended.code}"
        reason = f"torchrun ended the case ({how}): a rank died; torchrun's log above names it"
        result = CaseResult(case, "crashed", reason)
    ResultsWriter(out).append(result)


def _run_cases(out: Path) -> list[Case]:
    """Every case of the run (its suite, world size and shard)."""
    from bench.engine.suite import parse_shard, parse_suite
    from bench.results.rundir import ENV_FILE, read_env

    suite = parse_suite((out / SUITE_FILE).read_text(encoding="utf-8"), str(out / SUITE_FILE))
    env = read_env(out / ENV_FILE)
    shard = parse_shard(env["shard"]) if env.get("shard") else None
    return suite.cases(env.get("device", "cpu"), shard, env.get("world_size") or 1)


def _all_done(out: Path, done: set[str]) -> bool:
    """Every case of the run has a result."""
    return all(case.id in done for case in _run_cases(out))


def _case_of(out: Path, case_id: str) -> Case:
    """The Case with this id in the run's suite."""
    for case in _run_cases(out):
        if case.id == case_id:
            return case
    raise MpbenchError(f"{out / INFLIGHT_FILE}: case {case_id!r} is not in the run's suite")

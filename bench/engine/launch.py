"""`mpbench run --nproc N`: start torchrun for a data-parallel run, watch it, keep going.

torchrun (PyTorch's own launcher, `python -m torch.distributed.run --standalone`) starts the N
ranks; its elastic agent ends them all when one dies. This supervisor adds what torchrun cannot
know: which case was in flight (RUN_DIR/inflight, written by rank 0) and that the run should go
on. When torchrun ends before the sweep does, the in-flight case is recorded as `crashed` (or
`timeout`, when this watchdog had to stop a case that ran past --case-timeout) unless rank 0
recorded it already, and a fresh torchrun continues the run with --resume. Ctrl-C or SIGTERM
stops torchrun and every process under it; none is left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED, MpbenchError
from bench.results.rundir import INFLIGHT_FILE, RESULTS_FILE, ResultsWriter, read_results
from bench.results.schema import Case, CaseResult

SUPERVISED_ENV = "MPBENCH_SUPERVISED"  # set for the ranks: the supervisor shows the run at the end
# Beyond --case-timeout (the ranks' own collective timeout), how long a case may stay in flight
# before the watchdog stops torchrun: the ranks should have given up by then.
WATCHDOG_GRACE_S = 60.0
# torchrun's agent gives its workers 30 s between SIGTERM and SIGKILL.
STOP_WAIT_S = 40.0
# Flags the supervisor sets itself on the torchrun command line (each takes a value).
_OWN_FLAGS = ("--nproc", "--out", "--resume")


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


def stop_tree(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM to torchrun (it stops its ranks), then SIGKILL to whatever is still alive below
    it: no rank outlives the supervisor."""
    tree = descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            pass
    tree += descendants(proc.pid) if proc.poll() is None else []
    for pid in [proc.pid, *tree]:
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


def watch(cmd: list[str], out: Path, case_timeout_s: float) -> tuple[int, bool]:
    """Run torchrun to its end: (its exit code, True if the watchdog stopped a hung case)."""
    env = {**os.environ, SUPERVISED_ENV: "1"}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    seen: tuple[str | None, float] = (None, time.monotonic())
    try:
        while proc.poll() is None:
            time.sleep(0.5)
            current = _inflight(out)
            if current != seen[0]:
                seen = (current, time.monotonic())
            elif (
                current is not None
                and time.monotonic() - seen[1] > case_timeout_s + WATCHDOG_GRACE_S
            ):
                stop_tree(proc)
                return proc.returncode, True
        stop_tree(proc)  # torchrun has ended; a rank it could not stop must not linger
        return proc.returncode, False
    except (KeyboardInterrupt, _Interrupted):
        stop_tree(proc)
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
            cmd = torchrun_command(argv, nproc, out, resume)
            console.print(f"mpbench: torchrun, {nproc} process(es): {' '.join(cmd[1:])}")
            code, hung = watch(cmd, out, case_timeout_s)
            if code == EXIT_OK and not hung:
                return EXIT_OK
            case_id = _inflight(out)
            done = _done_ids(out)
            if case_id is not None and case_id not in done:
                _record_lost(out, case_id, code, hung, case_timeout_s)
                done.add(case_id)
            (out / INFLIGHT_FILE).unlink(missing_ok=True)
            if len(done) <= len(done_before):  # nothing new: a failure outside any case
                raise MpbenchError(
                    f"torchrun exited with code {code} before finishing a case; its output above "
                    "says why"
                )
            console.print(
                f"mpbench: torchrun ended with code {code} during the sweep; "
                f"continuing with a fresh launch (`--resume {out}`)"
            )
            resume = True
    except (KeyboardInterrupt, _Interrupted) as exc:
        (out / INFLIGHT_FILE).unlink(missing_ok=True)  # dropped, not recorded, as for one device
        return exc.code if isinstance(exc, _Interrupted) else EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous[signal.SIGTERM])


def _record_lost(out: Path, case_id: str, code: int, hung: bool, case_timeout_s: float) -> None:
    """Append the in-flight case as crashed (a rank died) or timeout (the watchdog stopped it)."""
    case = _case_of(out, case_id)
    if hung:
        status = "timeout"
        reason = (
            f"no result within --case-timeout {case_timeout_s:g} s (+{WATCHDOG_GRACE_S:g} s); "
            "torchrun and every rank stopped"
        )
    else:
        status = "crashed"
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        reason = f"torchrun ended the case ({how}): a rank died; torchrun's log above names it"
    ResultsWriter(out).append(CaseResult(case, status, reason))


def _case_of(out: Path, case_id: str) -> Case:
    """The Case with this id in the run's suite."""
    from bench.engine.suite import parse_suite
    from bench.results.rundir import ENV_FILE, SUITE_FILE, read_env

    suite = parse_suite((out / SUITE_FILE).read_text(encoding="utf-8"), str(out / SUITE_FILE))
    env = read_env(out / ENV_FILE)
    for case in suite.cases(env.get("device", "cpu"), None, env.get("world_size") or 1):
        if case.id == case_id:
            return case
    raise MpbenchError(f"{out / INFLIGHT_FILE}: case {case_id!r} is not in the run's suite")

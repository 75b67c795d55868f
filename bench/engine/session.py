"""A whole sweep: the run directory, resume, and every case through the executor into
results.jsonl. Progress goes to a SweepProgress; nothing here prints.

    suite -> cases -> executor (runner) -> ResultsWriter (results.jsonl, one fsynced line a case)

Tables, the report and everything else read results.jsonl afterwards (bench.cli).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.engine.device import Device
from bench.engine.env import capture_env
from bench.engine.interrupts import ExecutionOptions, InterruptibleSweep
from bench.engine.oom import OomLimits
from bench.engine.parallel import Launch, RankLost, combine_ranks, gather_results
from bench.engine.progress import PhaseCallback, SweepProgress
from bench.engine.suite import Shard, Suite, parse_shard, parse_suite
from bench.errors import EXIT_RANK_LOST, MpbenchError, OutputError
from bench.results.rundir import (
    ENV_FILE,
    INFLIGHT_FILE,
    RESULTS_FILE,
    SUITE_FILE,
    ResultsWriter,
    clear_inflight,
    create_run_dir,
    read_env,
    read_results,
    reported_failure,
    write_json,
    write_rank_report,
    write_text_atomic,
)
from bench.results.schema import Case, CaseResult


@dataclass(frozen=True)
class RunOptions:
    """How a sweep runs (the `mpbench run` flags the engine needs)."""

    execution: ExecutionOptions = field(default_factory=ExecutionOptions)
    skip_larger: bool = True  # after an OOM, predict OOM for larger batches of that config
    resume: bool = False
    shard: Shard | None = None  # --shard I/N: only the cases of that shard
    launch: Launch | None = None  # a torchrun launch: this process is one rank of the run
    backend: str | None = None  # its process group's (nccl or gloo)


@dataclass
class SweepOutcome:
    """What a sweep did: its exit code (0, or 130/143 after an interrupt) and counts."""

    exit_code: int
    finished: int  # cases run (and saved) by this invocation
    not_run: int  # cases left after an interrupt
    already_done: int  # cases a resumed run found in results.jsonl
    startup_s: list[float]  # worker start-up times


def start_run_dir(
    suite: Suite,
    device: Device,
    out: Path,
    isolate: str,
    shard: Shard | None = None,
    launch: Launch | None = None,
    backend: str | None = None,
) -> dict:
    """Create the run directory with env.json and the resolved suite.toml; returns the env."""
    create_run_dir(out)
    env = capture_env(device, suite.name, suite.source)
    env["suite_sha256"] = suite.fingerprint()
    env["isolate"] = isolate
    env["shard"] = str(shard) if shard else None
    if launch is not None:
        env["world_size"] = launch.world_size
        env["backend"] = backend
    write_json(out / ENV_FILE, env)
    write_text_atomic(out / SUITE_FILE, suite.to_toml())
    return env


def load_resumable_suite(run_dir: Path) -> Suite:
    """The resolved suite an interrupted run started with."""
    if not (run_dir / SUITE_FILE).is_file() or not (run_dir / ENV_FILE).is_file():
        raise MpbenchError(f"--resume {run_dir}: not an mpbench run directory (no {SUITE_FILE})")
    return parse_suite(
        (run_dir / SUITE_FILE).read_text(encoding="utf-8"), str(run_dir / SUITE_FILE)
    )


def load_resumable(run_dir: Path, suite: Suite | None, device: Device) -> Suite:
    """The suite of an interrupted run; a suite given again must be the same one (by hash), and
    the device the same."""
    stored = load_resumable_suite(run_dir)
    if suite is not None and suite.fingerprint() != stored.fingerprint():
        raise MpbenchError(
            f"--resume {run_dir}: the suite given ({suite.source}, with flags) differs from the one "
            f"this run started with; run `mpbench run --resume {run_dir}` alone to continue it"
        )
    env = read_env(run_dir / ENV_FILE)
    if env.get("device") != device.name:
        raise MpbenchError(
            f"--resume {run_dir}: the run was measured on {env.get('device')}, not {device.name}; "
            f"resume it with --device {env.get('device')}"
        )
    return stored


def check_world_size(run_dir: Path, launch: Launch | None) -> None:
    """A resumed data-parallel run must have as many ranks as it started with (the case ids
    name the world size)."""
    stored = read_env(run_dir / ENV_FILE).get("world_size")
    given = launch.world_size if launch is not None else None
    if stored != given:
        raise MpbenchError(
            f"--resume {run_dir}: the run was started with "
            f"{f'{stored} rank(s)' if stored else 'no torchrun launch'}, this one has "
            f"{f'{given} rank(s)' if given else 'none'}; resume it the way it started"
        )


def resumed_shard(run_dir: Path, given: Shard | None) -> Shard | None:
    """The shard an interrupted run was started with; a --shard given again must match it."""
    stored = read_env(run_dir / ENV_FILE).get("shard")
    shard = parse_shard(stored, f"{run_dir / ENV_FILE}: shard") if stored else None
    if given is not None and given != shard:
        raise MpbenchError(
            f"--resume {run_dir}: the run was started as shard {stored or 'none (the whole suite)'}"
            f", not {given}; run `mpbench run --resume {run_dir}` alone to continue it"
        )
    return shard


def previous_results(out: Path) -> tuple[list[CaseResult], list[str]]:
    """Results already in a run directory (for --resume) and warnings about torn lines."""
    path = out / RESULTS_FILE
    return read_results(path) if path.exists() else ([], [])


def run_suite(
    suite: Suite | None,
    device: Device,
    out: Path,
    options: RunOptions = RunOptions(),
    progress: SweepProgress | None = None,
) -> SweepOutcome:
    """Run every case of `suite` on `device` into `out` (or, with options.resume, continue `out`).

    Each result is appended to results.jsonl and fsynced before the next case starts. Ctrl-C or
    SIGTERM abandons the case in flight and returns exit code 130 / 143; a results file that
    cannot be written raises OutputError (exit 3) with every earlier line intact. Under a
    torchrun launch only rank 0 gets here (the others follow it: `follow_sweep`); a rank lost
    mid-case records that case as crashed and ends the sweep with exit code 4.
    """
    progress = progress or SweepProgress()
    shard = options.shard
    launch = options.launch
    if options.resume:
        suite = load_resumable(out, suite, device)
        shard = resumed_shard(out, shard)
        check_world_size(out, launch)
        previous, problems = previous_results(out)  # before the writer mends a torn line
    else:
        start_run_dir(suite, device, out, options.execution.isolate, shard, launch, options.backend)
        previous, problems = [], []
    writer = ResultsWriter(out)
    done_ids = {r.case.id for r in previous}
    world_size = launch.world_size if launch is not None else 1
    cases = [c for c in suite.cases(device.name, shard, world_size) if c.id not in done_ids]
    for problem in problems:
        progress.notice(problem)
    name = suite.name if shard is None else f"{suite.name}, shard {shard}"
    progress.sweep_started(name, device.name, out, len(cases), len(done_ids))
    oom_limits = OomLimits(enabled=options.skip_larger)
    for result in previous:
        oom_limits.record(result)
    finished = 0
    exit_code = None
    ranks = _Ranks(suite, launch, options.backend, out) if launch is not None else None
    with InterruptibleSweep(suite, device, options.execution) as sweep:
        for case in cases:
            progress.case_started(case)
            result = oom_limits.predict(case)
            lost = None
            if result is None:

                def phase(name: str, step: int | None, total: int | None, c: Case = case) -> None:
                    progress.phase(c, name, step, total)

                if ranks is None:
                    result = sweep.executor.run(case, phase)
                else:
                    _mark_inflight(out, case)
                    result, lost = ranks.run(case, sweep.executor, phase)
            try:
                writer.append(result)  # durable before the next case starts
            except OutputError as exc:
                kept = len(previous) + finished
                raise OutputError(
                    f"{exc}; stopped. The {kept} result(s) before it are intact; free some space "
                    f"and continue with `mpbench run --resume {out}`"
                ) from None
            _mark_inflight(out, None)
            finished += 1
            oom_limits.record(result)
            progress.case_finished(case, result)
            if lost is not None:
                progress.notice(
                    f"the case failed on a rank, or lost one ({lost}); its process group cannot be "
                    f"trusted after that, so the sweep stops here. Continue with `mpbench run --resume {out}` under the "
                    "same launch (`mpbench run --nproc N` does this by itself)"
                )
                exit_code = EXIT_RANK_LOST
                break
        if ranks is not None and exit_code is None:
            ranks.stop()
    return SweepOutcome(
        exit_code=exit_code or sweep.exit_code,
        finished=finished,
        not_run=len(cases) - finished,
        already_done=len(done_ids),
        startup_s=list(sweep.executor.startup_s),
    )


def _mark_inflight(out: Path, case: Case | None) -> None:
    """RUN_DIR/inflight: the id of the case the ranks are running (removed, with any rank's
    report, once its result is written), so `mpbench run --nproc` can record it if torchrun ends
    mid-case."""
    clear_inflight(out)
    if case is not None:
        write_text_atomic(out / INFLIGHT_FILE, case.id + "\n")


class _Ranks:
    """Rank 0's side of a data-parallel sweep: it tells the other ranks which case to run
    (a broadcast), runs its own share, and gathers theirs into the case's one result.

    A rank whose share fails (out of memory on one GPU, an error) cannot tell its peers: they
    may be inside a collective that will never complete. It leaves its result in
    RUN_DIR/inflight-rankN.json and exits; its peers' collectives then fail (or time out), and
    the case is recorded with the failed rank's own status and reason.
    """

    def __init__(self, suite: Suite, launch: Launch, backend: str | None, out: Path) -> None:
        import torch.distributed as dist

        self.suite = suite
        self.launch = launch
        self.backend = backend or "unknown"
        self.out = out
        # The followers build their runners from the suite rank 0 resolved (flags, resume), and
        # leave a failed share's report in its run directory.
        dist.broadcast_object_list([suite.to_toml(), str(out)], src=0)

    def run(self, case: Case, executor: Any, phase: PhaseCallback) -> tuple[CaseResult, str | None]:
        """The case's result, and why the sweep cannot go on (None when it can)."""
        import torch.distributed as dist

        try:
            dist.broadcast_object_list([case.to_dict()], src=0)
            local = executor.run(case, phase)
            if shares_collectives(case, self.launch) and failed_share(local):
                # No gather: a peer may be waiting in a collective this rank has left.
                return self._failed(case, local), f"rank 0: {local.reason}"
            per_rank = gather_results(local)
        except (RankLost, RuntimeError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return self._failed(case, None, message), message
        if case.parallel is None:
            return per_rank[0], None  # run by rank 0 alone; the others only waited for it
        return combine_ranks(case, per_rank, self.backend, self.suite.timing.unstable_cv), None

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

    def stop(self) -> None:
        """Tell the other ranks the sweep is over."""
        import torch.distributed as dist

        dist.broadcast_object_list([None], src=0)


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


def follow_sweep(device: Device, options: RunOptions) -> int:
    """A rank other than 0: run each case rank 0 names (its data-parallel cases; for the others
    only wait) until it says stop. Writes nothing but a failed share's report; returns the exit
    code."""
    import torch.distributed as dist

    from bench.engine.executors import make_executor

    box: list[Any] = [None, None]
    dist.broadcast_object_list(box, src=0)
    suite = parse_suite(box[0], "<suite from rank 0>")
    out = Path(box[1])
    launch = options.launch
    executor = make_executor("none", suite, device)
    waiting = CaseResult(Case("-", None, "train", "fp32", 1, 1, None), "skipped", "rank 0 runs it")
    box = [None]
    try:
        while True:
            dist.broadcast_object_list(box, src=0)
            if box[0] is None:
                return 0
            case = Case.from_dict(box[0])
            local = executor.run(case) if case.parallel is not None else waiting
            if shares_collectives(case, launch) and failed_share(local):
                write_rank_report(out, launch.rank, local)
                # Leave at once: a clean exit would wait on peers stuck in a collective.
                os._exit(EXIT_RANK_LOST)
            gather_results(local)
    finally:
        executor.close()

"""A whole sweep: the run directory, resume, and every case through the executor into
results.jsonl. Progress goes to a SweepProgress; nothing here prints.

    suite -> cases -> executor (runner) -> ResultsWriter (results.jsonl, one fsynced line a case)

The executor (bench.engine.executors) decides where a case runs: here, in a worker process, in a
torchrun launch of N ranks, or as rank 0 of a process group; the loop is the same. Tables, the
report and everything else read the run directory afterwards (bench.cli).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.engine.device import Device
from bench.engine.env import capture_env
from bench.engine.executors import ExecutionOptions, make_executor
from bench.engine.modes import PRECISION_MODES
from bench.engine.oom import OomLimits
from bench.engine.progress import SweepProgress
from bench.engine.suite import Shard, Suite, parse_shard, parse_suite
from bench.engine.supervisor import InterruptibleSweep
from bench.errors import EXIT_RANK_LOST, MpbenchError, OutputError
from bench.results.manifest import ENV_FILE, SUITE_FILE, RunManifest
from bench.results.rundir import RESULTS_FILE, ResultsWriter, create_run_dir, read_results
from bench.results.schema import CaseResult


@dataclass(frozen=True)
class RunOptions:
    """How a sweep runs (the `mpbench run` flags the engine needs)."""

    execution: ExecutionOptions = field(default_factory=ExecutionOptions)
    skip_larger: bool = True  # after an OOM, predict OOM for larger batches of that config
    resume: bool = False
    shard: Shard | None = None  # --shard I/N: only the cases of that shard

    @property
    def world_size(self) -> int | None:
        """Ranks of a data-parallel run (a torchrun launch or --nproc); None on one device."""
        if self.execution.nproc is not None:
            return self.execution.nproc
        launch = self.execution.launch
        return launch.world_size if launch is not None else None


@dataclass
class SweepOutcome:
    """What a sweep did: its exit code (0, or 130/143 after an interrupt, 4 after a lost rank)
    and counts."""

    exit_code: int
    finished: int  # cases run (and saved) by this invocation
    not_run: int  # cases left after an interrupt
    already_done: int  # cases a resumed run found in results.jsonl
    startup_s: list[float]  # worker start-up times


def new_manifest(
    suite: Suite,
    device: Device,
    isolate: str,
    shard: Shard | None = None,
    world_size: int | None = None,
    backend: str | None = None,
) -> RunManifest:
    """The manifest a new run starts with: the environment captured now, the resolved suite,
    the run's shape and every precision mode's display facts."""
    environment = capture_env(device, suite.name, suite.source)
    return RunManifest.from_env(
        {
            **environment,
            "suite_sha256": suite.fingerprint(),
            "isolate": isolate,
            "shard": str(shard) if shard else None,
            "world_size": world_size,
            "backend": backend if world_size is not None else None,
            "precisions": [mode.display().to_dict() for mode in PRECISION_MODES.values()],
        },
        suite.to_toml(),
    )


def start_run_dir(
    suite: Suite,
    device: Device,
    out: Path,
    isolate: str,
    shard: Shard | None = None,
    world_size: int | None = None,
    backend: str | None = None,
) -> RunManifest:
    """Create the run directory with its manifest (env.json and the resolved suite.toml)."""
    create_run_dir(out)
    manifest = new_manifest(suite, device, isolate, shard, world_size, backend)
    manifest.write(out)
    return manifest


def suite_of(manifest: RunManifest, run_dir: Path) -> Suite:
    """The resolved suite a run recorded."""
    return parse_suite(manifest.suite_text or "", str(Path(run_dir) / SUITE_FILE))


def load_resumable(
    run_dir: Path, suite: Suite | None, device: Device, options: RunOptions
) -> tuple[Suite, Shard | None]:
    """The suite and shard of an interrupted run. A suite given again must be the same one (by
    hash), and the device, the shard and the number of ranks the same."""
    manifest = RunManifest.read_complete(run_dir, "--resume")
    stored = suite_of(manifest, run_dir)
    if suite is not None and suite.fingerprint() != stored.fingerprint():
        raise MpbenchError(
            f"--resume {run_dir}: the suite given ({suite.source}, with flags) differs from the one "
            f"this run started with; run `mpbench run --resume {run_dir}` alone to continue it"
        )
    if manifest.device != device.name:
        raise MpbenchError(
            f"--resume {run_dir}: the run was measured on {manifest.device}, not {device.name}; "
            f"resume it with --device {manifest.device}"
        )
    given = options.world_size
    if manifest.world_size != given:
        raise MpbenchError(
            f"--resume {run_dir}: the run was started with "
            f"{f'{manifest.world_size} rank(s)' if manifest.world_size else 'no torchrun launch'}, "
            f"this one has {f'{given} rank(s)' if given else 'none'}; resume it the way it started"
        )
    shard = parse_shard(manifest.shard, f"{run_dir / ENV_FILE}: shard") if manifest.shard else None
    if options.shard is not None and options.shard != shard:
        raise MpbenchError(
            f"--resume {run_dir}: the run was started as shard {manifest.shard or 'none (the whole suite)'}"
            f", not {options.shard}; run `mpbench run --resume {run_dir}` alone to continue it"
        )
    return stored, shard


def resumable_suite(run_dir: Path) -> Suite:
    """The resolved suite of a run directory (to see whether it is a data-parallel one)."""
    return suite_of(RunManifest.read_complete(run_dir, "--resume"), run_dir)


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
    cannot be written raises OutputError (exit 3) with every earlier line intact. As rank 0 of a
    process group, a rank lost mid-case records that case and ends the sweep with exit code 4
    (a `--nproc` launch instead starts a fresh torchrun for the next case).
    """
    progress = progress or SweepProgress()
    execution = options.execution
    if options.resume:
        suite, shard = load_resumable(out, suite, device, options)
        previous, problems = previous_results(out)  # before the writer mends a torn line
    else:
        shard = options.shard
        backend = execution.backend or ("nccl" if device.is_cuda else "gloo")
        start_run_dir(suite, device, out, execution.isolate, shard, options.world_size, backend)
        previous, problems = [], []
    writer = ResultsWriter(out)
    done_ids = {r.case.id for r in previous}
    cases = suite.cases(device.name, shard, options.world_size or 1)
    cases = [c for c in cases if c.id not in done_ids]
    for problem in problems:
        progress.notice(problem)
    name = suite.name if shard is None else f"{suite.name}, shard {shard}"
    progress.sweep_started(name, device.name, out, len(cases), len(done_ids))
    oom_limits = OomLimits(enabled=options.skip_larger)
    for result in previous:
        oom_limits.record(result)
    finished = 0
    exit_code = None
    executor = make_executor(execution, suite, device, out)
    with InterruptibleSweep(executor) as sweep:
        for case in cases:
            progress.case_started(case)
            result = oom_limits.predict(case)
            if result is None:
                result = executor.run(case, lambda *p, c=case: progress.phase(c, *p))
            try:
                writer.append(result)  # durable before the next case starts
            except OutputError as exc:
                kept = len(previous) + finished
                raise OutputError(
                    f"{exc}; stopped. The {kept} result(s) before it are intact; free some space "
                    f"and continue with `mpbench run --resume {out}`"
                ) from None
            finished += 1
            oom_limits.record(result)
            progress.case_finished(case, result)
            if executor.broken is not None:
                progress.notice(
                    f"the case failed on a rank, or lost one ({executor.broken}); its process group "
                    f"cannot be trusted after that, so the sweep stops here. Continue with `mpbench "
                    f"run --resume {out}` under the same launch (`mpbench run --nproc N` goes on by "
                    "itself)"
                )
                exit_code = EXIT_RANK_LOST
                break
    return SweepOutcome(
        exit_code=exit_code or sweep.exit_code,
        finished=finished,
        not_run=len(cases) - finished,
        already_done=len(done_ids),
        startup_s=list(executor.startup_s),
    )

"""A whole `mpbench run`: run directory, env.json, suite.toml, results.jsonl, progress, summary."""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from bench.engine.device import Device
from bench.engine.env import capture_env
from bench.engine.maxbatch import MAX_BATCH_FILE
from bench.engine.suite import Suite
from bench.errors import MpbenchError
from bench.results.schema import (
    ENV_FILE,
    RESULTS_FILE,
    SUITE_FILE,
    Case,
    CaseResult,
    ResultsWriter,
    read_json_file,
)

EXIT_OK = 0


class Terminated(BaseException):
    """SIGTERM arrived: stop like Ctrl-C, exit 143."""


@dataclass(frozen=True)
class RunOptions:
    """How a sweep runs (CLI flags of `mpbench run`)."""

    quiet: bool = False
    render: bool = True
    isolate: str = "model"  # none | model | case
    case_timeout_s: float | None = None
    skip_larger: bool = True  # after an OOM, predict OOM for larger batches of that config
    resume: bool = False
    memory_limit_bytes: int | None = (
        None  # per worker (see bench.engine.executors.apply_memory_limit)
    )


def prepare_run_dir(out: Path) -> None:
    """Create the run directory; refuse one that already holds results (nothing is overwritten)."""
    for name in (RESULTS_FILE, ENV_FILE, MAX_BATCH_FILE):
        if (out / name).exists():
            raise MpbenchError(
                f"--out {out}: already holds {name}; choose a new directory (or continue an "
                f"interrupted run with `mpbench run --resume {out}`)"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MpbenchError(
            f"--out {out}: cannot create the run directory ({exc.strerror})"
        ) from None


def start_run_dir(suite: Suite, device: Device, out: Path, options: RunOptions) -> dict:
    """Create the run directory with env.json and the resolved suite.toml; returns the env."""
    prepare_run_dir(out)
    env = capture_env(device, suite.name, suite.source)
    env["suite_sha256"] = suite.fingerprint()
    env["isolate"] = options.isolate
    (out / ENV_FILE).write_text(json.dumps(env, indent=2) + "\n", encoding="utf-8")
    (out / SUITE_FILE).write_text(suite.to_toml(), encoding="utf-8")
    return env


def find_max_batch_sizes(
    suite: Suite, device: Device, out: Path, options: RunOptions, cap: int
) -> int:
    """`mpbench run --find-max-batch`: search each config's largest batch; write max_batch.json."""
    from bench.engine.maxbatch import probe_suite, search_all, with_ratios, write_max_batch

    start_run_dir(suite, device, out, options)
    probes = probe_suite(suite)
    console = Console(stderr=True, quiet=options.quiet, width=None if _is_tty() else 160)
    console.print(f"mpbench: largest batch size per config (cap {cap}) on {device.name} -> {out}")
    found: list = []  # filled as each search ends, so an interrupt keeps the finished ones
    with InterruptibleSweep(probes, device, options) as sweep:
        search_all(
            probes,
            device.name,
            sweep.executor.run,
            cap,
            found,
            lambda m: console.print(
                f"{m.model}/{m.workload}/{m.precision}/seq{m.seq_len}: max batch "
                f"{m.max_batch_size if m.max_batch_size else '-'}"
                f"{' (cap reached)' if m.limit_reached else ''}{f' ({m.reason})' if m.reason else ''}"
            ),
        )
    if sweep.exit_code != EXIT_OK:
        console.print("[yellow]interrupted[/]: the search was not finished")
    path = write_max_batch(out, found, cap)
    table = Table(
        "model",
        "workload",
        "precision",
        "seq",
        "max batch",
        "vs fp32",
        title="Largest batch that fits",
    )
    for row in with_ratios(found):
        size = row["max_batch_size"]
        shown = "-" if size is None else f"{size}{'+' if row['limit_reached'] else ''}"
        ratio = f"{row['vs_fp32']:.2f}x" if row["vs_fp32"] else ""
        table.add_row(
            row["model"], row["workload"], row["precision"], str(row["seq_len"]), shown, ratio
        )
    console.print(table)
    console.print(f"max batch sizes: {path}")
    return sweep.exit_code


def load_resumable(run_dir: Path, suite: Suite | None) -> Suite:
    """The suite of an interrupted run; a suite given again must be the same one (by hash)."""
    from bench.engine.suite import parse_suite

    if not (run_dir / SUITE_FILE).is_file() or not (run_dir / ENV_FILE).is_file():
        raise MpbenchError(f"--resume {run_dir}: not an mpbench run directory (no {SUITE_FILE})")
    stored = parse_suite(
        (run_dir / SUITE_FILE).read_text(encoding="utf-8"), str(run_dir / SUITE_FILE)
    )
    if suite is not None and suite.fingerprint() != stored.fingerprint():
        raise MpbenchError(
            f"--resume {run_dir}: the suite given ({suite.source}, with flags) differs from the one "
            f"this run started with; run `mpbench run --resume {run_dir}` alone to continue it"
        )
    return stored


def run_suite(
    suite: Suite | None, device: Device, out: Path, options: RunOptions = RunOptions()
) -> int:
    """Run every case of `suite` on `device` into `out` (or continue `out`); returns the exit code:
    0 done, 130 after Ctrl-C, 143 after SIGTERM (finished cases are kept either way)."""
    if options.resume:
        suite = load_resumable(out, suite)
        env = read_json_file(out / ENV_FILE, "env.json")
        if not isinstance(env, dict):
            raise MpbenchError(f"--resume {out}: {ENV_FILE} is not a JSON object")
        if env.get("device") != device.name:
            raise MpbenchError(
                f"--resume {out}: the run was measured on {env.get('device')}, not {device.name}; "
                f"resume it with --device {env.get('device')}"
            )
    else:
        env = start_run_dir(suite, device, out, options)
    previous = (
        _previous_results(out) if options.resume else []
    )  # before the writer mends a torn line
    writer = ResultsWriter(out)
    done_ids = {r.case.id for r in previous}
    cases = [c for c in suite.cases(device.name) if c.id not in done_ids]
    console = Console(stderr=True, quiet=options.quiet, width=None if _is_tty() else 160)
    verb = (
        f"resuming ({len(done_ids)} done, {len(cases)} to go)"
        if options.resume
        else f"{len(cases)} cases"
    )
    console.print(
        f"mpbench: suite [bold]{suite.name}[/] ({verb}) on {device.name} "
        f"({env.get('device_name')}) -> {out}"
    )
    oom_limits = OomLimits(enabled=options.skip_larger)
    for result in previous:
        oom_limits.record(result)
    new_results: list[CaseResult] = []
    with (
        InterruptibleSweep(suite, device, options) as sweep,
        _progress(console, len(cases)) as progress,
    ):
        for case in cases:
            progress(case, None)
            result = oom_limits.predict(case) or sweep.executor.run(case)
            writer.append(result)  # durable before the next case starts
            oom_limits.record(result)
            new_results.append(result)
            progress(case, result)
    if sweep.exit_code != EXIT_OK:
        left = len(cases) - len(new_results)
        console.print(
            f"[yellow]interrupted[/]: {len(new_results)} case(s) finished and saved, {left} not run; "
            f"continue with `mpbench run --resume {out}`"
        )
    startup_s = getattr(sweep.executor, "startup_s", [])
    if startup_s:
        console.print(
            f"{len(startup_s)} worker process(es) started, {sum(startup_s) / len(startup_s):.1f} s "
            "each on average (--isolate none skips this cost, and the crash protection)"
        )
    results = previous + new_results
    console.print(summary_table(results))
    if any(r.numerics for r in results):
        from bench.engine.numerics import verdict_table  # speed vs numerics, per model and workload

        console.print(verdict_table(results))
    if options.render:
        _render_report(out, console)
    console.print(f"results: {out / RESULTS_FILE}")
    return sweep.exit_code


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


class InterruptibleSweep:
    """The executor of a sweep, with Ctrl-C and SIGTERM turned into an exit code (130 / 143):
    the case in flight is abandoned (its worker killed), everything finished stays."""

    def __init__(self, suite: Suite, device: Device, options: RunOptions) -> None:
        from bench.engine.executors import make_executor

        self.executor = make_executor(
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
            self.exit_code = 143 if issubclass(exc_type, Terminated) else 130
            self.executor.abandon()
        self.executor.close()
        return interrupted  # swallow only the interrupt; any other error propagates


def _is_tty() -> bool:
    return sys.stderr.isatty()


def _previous_results(out: Path) -> list[CaseResult]:
    """Results already in a run directory (for --resume), as CaseResult objects."""
    from bench.results.schema import read_results_file

    rows, problems = (
        read_results_file(out / RESULTS_FILE) if (out / RESULTS_FILE).exists() else ([], [])
    )
    for problem in problems:
        print(f"mpbench: warning: {problem}", file=sys.stderr)
    return [CaseResult.from_dict(row) for row in rows]


class OomLimits:
    """After a batch size runs out of memory, larger batches of the same model, workload,
    precision and sequence length are recorded as `oom` without running (predicted, and said so)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._smallest_oom: dict[tuple[str, str, str, int], int] = {}

    @staticmethod
    def _key(case: Case) -> tuple[str, str, str, int]:
        return (case.model, case.workload, case.precision, case.seq_len)

    def record(self, result: CaseResult) -> None:
        """Remember a measured OOM."""
        if result.status == "oom" and not result.details.get("predicted"):
            key = self._key(result.case)
            known = self._smallest_oom.get(key)
            self._smallest_oom[key] = (
                min(known, result.case.batch_size) if known else result.case.batch_size
            )

    def predict(self, case: Case) -> CaseResult | None:
        """A predicted-OOM result for `case`, or None to run it."""
        limit = self._smallest_oom.get(self._key(case))
        if not self.enabled or limit is None or case.batch_size <= limit:
            return None
        reason = (
            f"predicted, not run: batch size {limit} already ran out of memory for this model, "
            "workload, precision and sequence length (--no-skip-larger runs it anyway)"
        )
        return CaseResult(case, "oom", reason, details={"predicted": True}, wall_s=0.0)


class _progress:
    """Progress over cases: a rich bar with case id and ETA on a terminal, a line per case in logs."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.total = total
        self.done = 0
        self.live = console.is_terminal and not console.quiet
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task = self.bar.add_task("starting", total=total)

    def __enter__(self) -> _progress:
        if self.live:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.bar.stop()

    def __call__(self, case: Case, result: CaseResult | None) -> None:
        if result is None:
            self.bar.update(self.task, description=case.id)
            return
        self.done += 1
        self.bar.advance(self.task)
        line = f"[{self.done}/{self.total}] {case.id}: {_describe(result)}"
        if self.live:
            # Above the bar, every finished case, so a long sweep's history stays on screen.
            self.bar.console.print(line, markup=False, highlight=False)
        elif not self.console.quiet:
            print(line, file=sys.stderr, flush=True)


def _describe(result: CaseResult) -> str:
    if result.status == "ok" and result.timing and result.throughput:
        return (
            f"ok, median {result.timing['median_s'] * 1e3:.2f} ms, "
            f"{result.throughput['samples_per_s']:.1f} samples/s"
        )
    return f"{result.status}: {result.reason}"


def summary_table(results: list[CaseResult]) -> Table:
    """Per case: median step, throughput, peak memory, speedup vs fp32 at the same shape."""
    fp32 = {
        (r.case.model, r.case.workload, r.case.batch_size, r.case.seq_len): r.timing["median_s"]
        for r in results
        if r.case.precision == "fp32" and r.status == "ok" and r.timing
    }
    table = Table(
        "case", "status", "median ms", "samples/s", "peak MiB", "vs fp32", title="mpbench results"
    )
    for r in results:
        if r.status != "ok" or not r.timing:
            table.add_row(r.case.id, r.status, "", "", "", "")
            continue
        base = fp32.get((r.case.model, r.case.workload, r.case.batch_size, r.case.seq_len))
        peak = r.memory.get("peak_bytes") if r.memory else None
        table.add_row(
            r.case.id,
            r.status,
            f"{r.timing['median_s'] * 1e3:.2f}",
            f"{r.throughput['samples_per_s']:.1f}" if r.throughput else "",
            f"{peak / 2**20:.1f}" if peak is not None else "",
            f"{base / r.timing['median_s']:.2f}x" if base else "",
        )
    return table


def _render_report(out: Path, console: Console) -> None:
    """Render index.html if the report module is present; a report failure never loses results."""
    try:
        from bench.views.report import render_report
    except ImportError:
        return
    try:
        path = render_report(out)
    except Exception as exc:  # the results are safe on disk; say what failed and go on
        console.print(f"[red]report failed[/]: {type(exc).__name__}: {exc}")
        return
    console.print(f"report: {path}")

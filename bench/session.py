"""A whole `mpbench run`: run directory, env.json, suite.toml, results.jsonl, progress, summary."""

from __future__ import annotations

import json
import sys
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

from bench.device import Device
from bench.env import capture_env
from bench.errors import MpbenchError
from bench.results import ENV_FILE, RESULTS_FILE, SUITE_FILE, Case, CaseResult, ResultsWriter
from bench.runner import CaseRunner, run_cases
from bench.suite import Suite

EXIT_OK = 0


def prepare_run_dir(out: Path) -> None:
    """Create the run directory; refuse one that already holds results (nothing is overwritten)."""
    if (out / RESULTS_FILE).exists():
        raise MpbenchError(f"--out {out}: already holds {RESULTS_FILE}; choose a new directory")
    out.mkdir(parents=True, exist_ok=True)


def run_suite(
    suite: Suite, device: Device, out: Path, quiet: bool = False, render: bool = True
) -> int:
    """Run every case of `suite` on `device` into `out`; returns the exit code."""
    prepare_run_dir(out)
    env = capture_env(device, suite.name, suite.source)
    (out / ENV_FILE).write_text(json.dumps(env, indent=2) + "\n", encoding="utf-8")
    (out / SUITE_FILE).write_text(suite.to_toml(), encoding="utf-8")
    cases = suite.cases(device.name)
    console = Console(stderr=True, quiet=quiet)
    console.print(
        f"mpbench: suite [bold]{suite.name}[/] ({len(cases)} cases) on {device.name} "
        f"({env['device_name']}) -> {out}"
    )
    writer = ResultsWriter(out)
    runner = CaseRunner(suite, device)
    with _progress(console, len(cases)) as progress:
        results = run_cases(runner, cases, writer.append, progress)
    console.print(summary_table(results))
    if render:
        _render_report(out, console)
    console.print(f"results: {out / RESULTS_FILE}")
    return EXIT_OK


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
            self.bar.console.log(line, markup=False) if result.status != "ok" else None
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
        from bench.report import render_report
    except ImportError:
        return
    try:
        path = render_report(out)
    except Exception as exc:  # the results are safe on disk; say what failed and go on
        console.print(f"[red]report failed[/]: {type(exc).__name__}: {exc}")
        return
    console.print(f"report: {path}")

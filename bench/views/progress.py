"""The progress of a sweep on the terminal (a SweepProgress for bench.engine.session.run_suite).

On a terminal: a rich bar whose line names the case and its phase (building, warm-up k/N, timed
k/N, numerics passes with their steps), with the time elapsed and an ETA from the cases already
finished; every finished case is printed above the bar. In a log (not a terminal): one line per
finished case, and a line when a long case enters a new phase, at most every LOG_EVERY_S.
"""

from __future__ import annotations

import sys
import time
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

from bench.results.schema import Case, CaseResult
from bench.views.terminal import describe_result

LOG_EVERY_S = 15.0  # a log line for a new phase at most this often


def stderr_console(quiet: bool = False) -> Console:
    """The console progress and tables go to: stderr; when it is not a terminal (a log), tables
    160 columns wide and lines never wrapped (a path in a hint stays one piece to copy)."""
    terminal = sys.stderr.isatty()
    return Console(
        stderr=True, quiet=quiet, width=None if terminal else 160, soft_wrap=not terminal
    )


def phase_text(name: str, step: int | None, total: int | None) -> str:
    """'timed 7/30', 'numerics: fp32 reference 12/30', 'building'."""
    if step is not None and total:
        return f"{name} {step}/{total}"
    # An open-ended count: the warm-up goes on until the step time is steady.
    return f"{name} {step} (until steady)" if step is not None else name


class RichProgress:
    """Shows a sweep's progress; use as a context manager around run_suite."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal and not console.quiet
        self.total = 0
        self.done = 0
        self._case_started = 0.0
        self._last_log = 0.0
        self._phase = ""
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
        self.task = self.bar.add_task("starting", total=None)

    def __enter__(self) -> RichProgress:
        if self.live:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.bar.stop()

    def _print(self, line: str) -> None:
        if self.live:
            self.bar.console.print(line, markup=False, highlight=False)
        elif not self.console.quiet:
            print(line, file=sys.stderr, flush=True)
        self._last_log = time.monotonic()

    def sweep_started(
        self, suite: str, device: str, out: Path, to_run: int, already_done: int
    ) -> None:
        """The header line, and the bar's total."""
        self.total = to_run
        self.bar.update(self.task, total=to_run)
        what = (
            f"resuming ({already_done} done, {to_run} to go)" if already_done else f"{to_run} cases"
        )
        self._print(f"mpbench: suite {suite} ({what}) on {device} -> {out}")

    def notice(self, text: str) -> None:
        """A warning line."""
        self._print(f"mpbench: warning: {text}")

    def case_started(self, case: Case) -> None:
        """The bar names the case."""
        self._case_started = time.monotonic()
        self._phase = ""
        self.bar.update(self.task, description=case.id)

    def phase(self, case: Case, name: str, step: int | None, total: int | None) -> None:
        """The bar names the case's phase; a log gets a line for a long case's new phase."""
        text = phase_text(name, step, total)
        self.bar.update(self.task, description=f"{case.id} · {text}")
        if self.live or self.console.quiet or name == self._phase:
            return
        self._phase = name
        now = time.monotonic()
        if now - self._case_started >= LOG_EVERY_S and now - self._last_log >= LOG_EVERY_S:
            elapsed = now - self._case_started
            self._print(f"  {case.id}: {text} ({elapsed:.0f} s into the case)")

    def case_finished(self, case: Case, result: CaseResult) -> None:
        """A line above the bar (or in the log) for every finished case."""
        self.done += 1
        self.bar.advance(self.task)
        self._print(f"[{self.done}/{self.total}] {case.id}: {describe_result(result)}")

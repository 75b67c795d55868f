"""Progress of a sweep, as events: the engine reports, a view (bench.views.progress) shows.

A case reports its phase as it goes: "building", "warm-up" (step k of N), "timed" (step k of
N), then the numerics passes ("numerics: fp32 reference", "numerics: amp_bf16", ... with their
steps). Phases are reported between steps, never inside a timed one. A worker process sends
them over its pipe; `Throttled` keeps a long loop of tiny steps from flooding the pipe or the
screen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from bench.results.schema import Case, CaseResult

# phase(name, step, total): step and total are None for a phase without steps.
PhaseCallback = Callable[[str, "int | None", "int | None"], None]


def no_phase(name: str, step: int | None = None, total: int | None = None) -> None:
    """A PhaseCallback that shows nothing."""


class SweepProgress:
    """What a sweep tells whoever shows its progress. This base shows nothing (library use,
    tests); bench.views.progress.RichProgress has the same methods and shows them."""

    def sweep_started(
        self, suite: str, device: str, out: Path, to_run: int, already_done: int
    ) -> None:
        """Before the first case: what runs, where, and how much of it resume already has."""

    def notice(self, text: str) -> None:
        """Something the user should know before the sweep goes on (a torn results line)."""

    def case_started(self, case: Case) -> None:
        """A case begins."""

    def phase(self, case: Case, name: str, step: int | None, total: int | None) -> None:
        """The case moved to a phase, or a step of it."""

    def case_finished(self, case: Case, result: CaseResult) -> None:
        """A case ended (its result is already on disk)."""


class Throttled:
    """A PhaseCallback that passes a new phase on at once and its steps at most every
    `interval_s` (the last step of a phase always), so reporting costs nothing measurable."""

    def __init__(self, forward: PhaseCallback, interval_s: float = 0.25) -> None:
        self._forward = forward
        self._interval_s = interval_s
        self._name: str | None = None
        self._sent_at = 0.0

    def __call__(self, name: str, step: int | None = None, total: int | None = None) -> None:
        now = time.monotonic()
        new = name != self._name
        last = step is not None and step == total
        if new or last or now - self._sent_at >= self._interval_s:
            self._name, self._sent_at = name, now
            self._forward(name, step, total)

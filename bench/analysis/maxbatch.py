"""The largest-batch table (`mpbench run --find-max-batch`): each search's largest batch with
its ratio to fp32's at the same model, workload and sequence length ("bf16 fits 2.3x the batch
of fp32"), as the terminal prints it and RUN_DIR/max_batch.json records it.

The searches themselves are the engine's (bench.engine.maxbatch); this reads any object with
their fields (MaxBatchSearch), so the analysis needs nothing from the engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from bench.results.schema import BASELINE_PRECISION


class MaxBatchSearch(Protocol):
    """What one search found (bench.engine.maxbatch.MaxBatch has these fields)."""

    @property
    def model(self) -> str: ...
    @property
    def workload(self) -> str: ...
    @property
    def precision(self) -> str: ...
    @property
    def seq_len(self) -> int: ...
    @property
    def max_batch_size(self) -> int | None: ...
    @property
    def limit_reached(self) -> bool: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def probes(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class MaxBatchRow:
    """One search's result with its ratio to fp32's largest batch."""

    model: str
    workload: str
    precision: str
    seq_len: int
    max_batch_size: int | None  # None: not even batch 1 fits (or the mode is skipped)
    limit_reached: bool  # the cap was reached without running out of memory
    reason: str | None  # why there is no figure (skipped mode, error)
    probes: tuple[dict[str, Any], ...]  # batch_size, status, median_s of each probe, in order
    vs_fp32: float | None  # max batch / fp32's; None without both figures

    def to_dict(self) -> dict[str, Any]:
        """The row as max_batch.json lists it."""
        return {
            "model": self.model,
            "workload": self.workload,
            "precision": self.precision,
            "seq_len": self.seq_len,
            "max_batch_size": self.max_batch_size,
            "limit_reached": self.limit_reached,
            "reason": self.reason,
            "probes": [dict(p) for p in self.probes],
            "vs_fp32": self.vs_fp32,
        }


@dataclass(frozen=True)
class MaxBatchReport:
    """Every search of a run, with its ratio; `finished` is False after an interrupt (the
    searches that ended are kept)."""

    cap: int
    finished: bool
    rows: tuple[MaxBatchRow, ...]

    def to_dict(self) -> dict[str, Any]:
        """The content of max_batch.json."""
        return {
            "cap": self.cap,
            "finished": self.finished,
            "results": [r.to_dict() for r in self.rows],
        }


def max_batch_rows(found: Iterable[MaxBatchSearch]) -> tuple[MaxBatchRow, ...]:
    """Each search with its largest batch over fp32's at the same model, workload and sequence
    length."""
    found = list(found)
    fp32 = {
        (m.model, m.workload, m.seq_len): m.max_batch_size
        for m in found
        if m.precision == BASELINE_PRECISION
    }
    rows = []
    for m in found:
        base = fp32.get((m.model, m.workload, m.seq_len))
        rows.append(
            MaxBatchRow(
                model=m.model,
                workload=m.workload,
                precision=m.precision,
                seq_len=m.seq_len,
                max_batch_size=m.max_batch_size,
                limit_reached=m.limit_reached,
                reason=m.reason,
                probes=tuple(dict(p) for p in m.probes),
                vs_fp32=m.max_batch_size / base if base and m.max_batch_size else None,
            )
        )
    return tuple(rows)


def max_batch_report(found: Iterable[MaxBatchSearch], cap: int, finished: bool) -> MaxBatchReport:
    """The report of a search (`cap` the largest batch tried; `finished` False after an
    interrupt)."""
    return MaxBatchReport(cap, finished, max_batch_rows(found))

"""How numbers read, in every view (terminal, Markdown, HTML, compare page, JUnit): one set of
formatters, so the same figure is printed the same way everywhere."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from bench.analysis.hostbound import HOST_BOUND_BELOW
from bench.analysis.rows import CaseRow
from bench.analysis.summary import ExecutionGain, GroupSummary, ModeSummary, RunAnalysis

MISSING = "–"  # a value that is absent or undefined
VERDICT_LABELS = {
    "ok": "ok",
    "warn": "warn",
    "diverged": "diverged",
    "nan": "NaN/inf",
    "baseline": "baseline",
    "error": "error",
    None: "no numerics",
}
METRIC_LABELS = {
    "max_rel_div": "max rel. loss divergence",
    "rel_rmse": "rel. RMSE of outputs",
    "kl_mean": "mean KL divergence",
}


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _sig3(value: float) -> str:
    """3 significant figures, trailing zeros kept (4.70), whole numbers from 100 up (1,234)."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:#.3g}".rstrip(".")


def fmt_number(value: float | None) -> str:
    """3 significant figures, thousands separated: 12.3, 4,567."""
    if value is None:
        return MISSING
    if not math.isfinite(value):
        return str(value)
    return _sig3(value)


def fmt_count(value: int) -> str:
    """A parameter count: 124.4M, 1.24B, 0.21M."""
    if value >= 1e9:
        return f"{value / 1e9:.2f}B"
    return f"{value / 1e6:.1f}M"


def fmt_bytes(value: float | None) -> str:
    """Binary units: 512 B, 12.0 KiB, 345 MiB, 1.50 GiB."""
    if not _finite(value):
        return MISSING
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{_sig3(value / size)} {unit}"
    return f"{value:.0f} B"


def _milli_micro(value: float | None, unit: str) -> str:
    """A value in `unit`, or milli- or micro-`unit` below 1 and 1e-3, three significant digits."""
    if not _finite(value):
        return MISSING
    if value >= 1:
        return f"{_sig3(value)} {unit}"
    if value >= 1e-3:
        return f"{_sig3(value * 1e3)} m{unit}"
    return f"{_sig3(value * 1e6)} µ{unit}"


def fmt_seconds(value: float | None) -> str:
    """Step time in a readable unit: 850 µs, 12.3 ms, 1.20 s."""
    return _milli_micro(value, "s")


def fmt_duration(seconds: float) -> str:
    """A wall time for people: '45 s', '12 min', '3.4 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def fmt_speedup(value: float | None, host_bound: bool = False) -> str:
    """1.84×; '1.84× (host-bound)' for a case whose GPU waited on the host (the speedup is a
    floor: bench.analysis.hostbound)."""
    if not _finite(value):
        return MISSING
    return f"{value:.2f}×" + (" (host-bound)" if host_bound else "")


def fmt_saving(value: float | None) -> str:
    """Memory saved vs fp32 as a percentage; negative means more memory than fp32."""
    if not _finite(value):
        return MISSING
    return f"{value * 100:.0f} %".replace("-", "−")


def fmt_divergence(value: float | None) -> str:
    """Divergence in scientific notation, 2 significant figures: 3.1e-03 (0 stays 0)."""
    if value is None:
        return MISSING
    if not math.isfinite(value):
        return str(value)
    return "0" if value == 0 else f"{value:.1e}"


def case_verdict_key(verdict: str | None, numerics_error: str | None) -> str | None:
    """The verdict to show for one case: 'error' for a failed numerics pass, else its verdict."""
    return "error" if numerics_error else verdict


def verdict_key(mode: ModeSummary) -> str | None:
    """The verdict to show for a mode: 'baseline' for fp32 against itself, 'error' for a failed
    numerics pass, else its verdict (None: no numerics)."""
    if mode.is_baseline and mode.verdict in (None, "ok") and not mode.numerics_error:
        return "baseline"
    return case_verdict_key(mode.verdict, mode.numerics_error)


def fmt_verdict(mode: ModeSummary) -> str:
    """The numerics verdict of a mode as a word."""
    return VERDICT_LABELS.get(verdict_key(mode), str(verdict_key(mode)))


def fmt_divergence_with_floor(mode: ModeSummary) -> str:
    """'4.4e-05 (floor 1.1e-07)': the headline divergence next to fp32's own error."""
    text = fmt_divergence(mode.divergence)
    if mode.divergence is not None and mode.divergence_floor is not None:
        text += f" (floor {fmt_divergence(mode.divergence_floor)})"
    return text


def caveat_lines(group: GroupSummary) -> list[str]:
    """'fp8, fp8_rowwise: fp8 on a CPU: ...': each caveat once, with the modes it concerns."""
    by_text: dict[str, list[str]] = {}
    for mode in group.modes:
        if mode.caveat:
            by_text.setdefault(mode.caveat, []).append(mode.label)
    return [f"{', '.join(labels)}: {text}" for text, labels in by_text.items()]


def quality_lines(group: GroupSummary) -> list[str]:
    """Notes on modes whose figure is shaky: unstable timing, a GPU that throttled."""
    lines = []
    unstable = [m.label for m in group.modes if m.unstable]
    if unstable:
        lines.append(
            f"{', '.join(unstable)}: unstable timing (the timed steps spread more than the "
            "suite's limit); treat their speed as approximate"
        )
    host_bound = [
        f"{m.label} {fmt_fraction(m.gpu_busy_fraction)}" for m in group.modes if m.host_bound
    ]
    if host_bound:
        lines.append(
            f"host-bound, GPU busy below {HOST_BOUND_BELOW:.0%} of the step: "
            f"{', '.join(host_bound)}; the host's kernel launches, not the precision, set their "
            "pace, so their speedups are floors"
        )
    throttled = [m.label for m in group.modes if m.throttled]
    if throttled:
        lines.append(f"{', '.join(throttled)}: the GPU throttled (power or thermal) while timed")
    drops = [
        f"{m.label} {m.long_position_drop_db:+.1f} dB"
        for m in group.modes
        if m.long_position_drop_db is not None and not m.is_baseline
    ]
    if drops:
        lines.append(
            "rotary positions 2048+ vs the first 512, logits SQNR lost: " + ", ".join(drops)
        )
    by_note: dict[str, list[str]] = {}
    for mode in group.modes:
        if mode.speedup_note:
            by_note.setdefault(mode.speedup_note, []).append(mode.label)
    lines += [f"{', '.join(labels)}: {note}" for note, labels in by_note.items()]
    return lines


# The execution-gain table (terminal, summary.md, HTML): its headers and one row's cells.
GAIN_HEADERS = (
    "model",
    "workload",
    "shape",
    "mode",
    "vs eager",
    "eager step",
    "step",
    "first call",
)
GAIN_CAPTION = (
    "vs eager: median step of the same precision run eagerly / this mode's, at the group's "
    "headline point; first call: compiling (torch.compile) or warming up and capturing (CUDA "
    "graphs), timed apart from the steps"
)


def gain_cells(gain: ExecutionGain) -> list[str]:
    """One row of the execution-gain table: the gain, or the mode's status where it did not
    run ok."""
    shape = f"bs{gain.batch_size} seq{gain.seq_len}" if gain.batch_size else ""
    versus = fmt_speedup(gain.gain) if gain.status == "ok" else gain.status
    return [
        gain.model,
        gain.workload,
        shape,
        gain.mode,
        versus,
        fmt_seconds(gain.eager_median_s),
        fmt_seconds(gain.median_s),
        fmt_seconds(gain.compile_s),
    ]


def fmt_tflops(value: float | None) -> str:
    """Achieved TFLOP/s: 3 significant figures (0.0226, 12.3, 456)."""
    if not _finite(value):
        return MISSING
    return _sig3(value) if value >= 0.01 else f"{value:.1e}"


def fmt_mfu(value: float | None) -> str:
    """MFU as a percentage: 41.2 %."""
    return f"{value * 100:.1f} %" if _finite(value) else MISSING


def fmt_energy(value: float | None) -> str:
    """Energy in a readable unit: 1.23 J, 45.6 mJ, 789 µJ."""
    return _milli_micro(value, "J")


def fmt_fraction(value: float | None) -> str:
    """A fraction as a percentage with one decimal: 12.3 %."""
    return f"{value * 100:.1f} %" if _finite(value) else MISSING


@dataclass(frozen=True)
class ExtraColumn:
    """An optional column of every table that has them: its header, the figure it shows (the
    same attribute of a ModeSummary and of a CaseRow), how that reads, and whether a run's case
    table shows it. A summary table shows it where some mode of the group has the figure (MFU
    needs a peak, energy needs a GPU)."""

    header: str
    value: Callable[[ModeSummary | CaseRow], float | None]
    formatter: Callable[[float | None], str]
    in_run: Callable[[RunAnalysis], bool]


EXTRA_COLUMNS: tuple[ExtraColumn, ...] = (
    ExtraColumn("TFLOP/s", lambda f: f.achieved_tflops, fmt_tflops, lambda a: True),
    ExtraColumn("MFU", lambda f: f.mfu, fmt_mfu, lambda a: a.has_mfu),
    ExtraColumn("J/sample", lambda f: f.energy_per_sample_j, fmt_energy, lambda a: a.has_energy),
    ExtraColumn("GPU busy", lambda f: f.gpu_busy_fraction, fmt_fraction, lambda a: a.has_gpu_busy),
    ExtraColumn("comm/step", lambda f: f.comm_s_per_step, fmt_seconds, lambda a: a.has_parallel),
    ExtraColumn("scaling", lambda f: f.scaling_efficiency, fmt_fraction, lambda a: a.has_scaling),
)


def extra_columns(group: GroupSummary) -> list[ExtraColumn]:
    """The optional columns this group's summary table shows."""
    return [c for c in EXTRA_COLUMNS if any(c.value(m) is not None for m in group.modes)]


def run_extra_columns(analysis: RunAnalysis) -> list[ExtraColumn]:
    """The optional columns a run's case table shows: TFLOP/s always, MFU, J/sample and
    scaling efficiency where some case has one, collective time per step in a data-parallel
    run."""
    return [c for c in EXTRA_COLUMNS if c.in_run(analysis)]


def extra_cells(mode: ModeSummary, columns: list[ExtraColumn]) -> list[str]:
    """A mode's cells for the optional columns (empty where it did not run ok)."""
    if not mode.ok:
        return ["" for _ in columns]
    return [c.formatter(c.value(mode)) for c in columns]


def point_label(group: GroupSummary) -> str:
    """Where precisions were compared: 'batch 8, seq 512'."""
    if group.batch_size is None:
        return "no successful case"
    return f"batch {group.batch_size}, seq {group.seq_len}"


def recommendation_text(group: GroupSummary) -> str:
    """One line saying which mode to use, and on what grounds."""
    if group.recommended:
        text = f"Recommended: {group.recommended} (fastest mode that passes the numerics check)"
        chosen = group.mode(group.recommended)
        if chosen is not None and chosen.host_bound:
            text += "; host-bound here: its speed is the host's pace, a floor"
        return text
    if group.speed_only:
        return f"Fastest: {group.speed_only} (speed only: no numerics, so not a recommendation)"
    if group.has_numerics:
        return "No recommendation: no measured mode passes the numerics check"
    return "No recommendation: no successful case"

"""The CI gate's configuration: built-in defaults < the suite's [check] table < --threshold flags.

The gate is split in three: this module (what the thresholds are), bench.analysis.compatibility
(whether the two devices may be compared) and bench.analysis.assessment (judging a comparison
against the thresholds).

[check] table of a suite (percent thresholds; a sign is optional, e.g. throughput = -5 or 5):
    throughput  = -10    # fail when throughput drops more than 10 % (significantly); CPU: -30
    step_time   = false  # median step time; off by default (the inverse of throughput)
    peak_memory = 10     # fail when peak memory grows more than 10 %; CPU: not gated
    divergence  = 50     # fail when divergence from fp32 grows more than 50 %
    alpha = 0.002        # p-value below which a timing change is significant
    memory_floor_mib = 1 # peak-memory changes smaller than this are measurement noise
    divergence_floor = 1e-6
    fail_on_improvement = false
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bench.analysis.compare import METRICS, CompareOptions
from bench.errors import SuiteError
from bench.results.rundir import SUITE_FILE, Run
from bench.results.schema import finite_or_none

# Percent beyond which a significant change counts; None = the metric is not gated.
# Throughput is the gate for timing (step time is its inverse: gating both would double count).
DEFAULT_THRESHOLDS_PCT: dict[str, float | None] = {
    "throughput": 10.0,  # asv's default factor; TorchBench flags 7%; tighten per suite on GPUs
    "step_time": None,
    "peak_memory": 10.0,
    "divergence": 50.0,
    "energy": None,  # GPU energy per sample: off by default (enable with energy = 10)
}
# CPU runs on a shared machine: whole cases run 10-25% faster or slower from one run to the next,
# every sample alike (measured on a 2-core box: two back-to-back smoke runs differed by up to 24%
# at p < 0.001), which no test on one run's samples can tell from a regression; and resident-set
# peaks move by up to 80% with allocator state. GPUs on a dedicated runner hold within a few %.
CPU_DEFAULT_THRESHOLDS_PCT: dict[str, float | None] = {"throughput": 30.0, "peak_memory": None}
OPTION_KEYS = ("alpha", "memory_floor_mib", "divergence_floor", "fail_on_improvement")
TABLE_KEYS = tuple(DEFAULT_THRESHOLDS_PCT) + OPTION_KEYS


@dataclass(frozen=True)
class CheckConfig:
    """Thresholds (percent magnitudes, None = not gated) and the statistics options."""

    thresholds_pct: dict[str, float | None] = field(
        default_factory=lambda: dict(DEFAULT_THRESHOLDS_PCT)
    )
    options: CompareOptions = field(default_factory=CompareOptions)
    fail_on_improvement: bool = False
    origin: dict[str, str] = field(default_factory=dict)  # key -> where its value came from
    gate_numerics: bool = True  # False only with `check --ignore-numerics`

    def threshold(self, metric: str) -> float | None:
        """The metric's threshold in percent, or None when it is not gated."""
        return self.thresholds_pct.get(metric)

    def describe(self) -> str:
        """'throughput -5% (suite), peak_memory +10% (default), ...' for output headers."""
        parts = []
        for metric, pct in self.thresholds_pct.items():
            if pct is None:
                continue
            sign = "-" if METRICS[metric].higher_is_better else "+"
            parts.append(f"{metric} {sign}{pct:g}% ({self.origin.get(metric, 'default')})")
        parts.append(f"p < {self.options.alpha:g}")
        return ", ".join(parts)


def threshold_value(metric: str, value: Any) -> float | None:
    """A threshold's magnitude in percent, or None for `false`; raises ValueError.

    The sign is optional: 5 and -5 both mean "a 5% drop" for throughput. A negative threshold
    for a lower-is-better metric (peak_memory = -5) reads as "a drop is bad", which is a mistake
    worth a message rather than a silent abs().
    """
    if value is False:
        return None
    if not finite_or_none(value) is not None:
        raise ValueError(
            f"must be a percentage (e.g. {'-' if METRICS[metric].higher_is_better else ''}5) "
            f"or false to turn the check off; got {value!r}"
        )
    if value < 0 and not METRICS[metric].higher_is_better:
        raise ValueError(
            f"{value:g}: a {metric} regression is a rise, so the threshold is {abs(value):g}"
        )
    if abs(value) > 1000:
        raise ValueError(f"{value:g}% is not a sensible threshold; use at most 1000")
    return float(abs(value))


def _option_value(key: str, value: Any) -> Any:
    """Validate one non-threshold key of [check]; raises ValueError."""
    if key == "alpha":
        if not finite_or_none(value) is not None or not 0 < value < 1:
            raise ValueError(f"must be a p-value between 0 and 1 (e.g. 0.002); got {value!r}")
        return float(value)
    if key in ("memory_floor_mib", "divergence_floor"):
        if not finite_or_none(value) is not None or value < 0:
            raise ValueError(f"must be a non-negative number; got {value!r}")
        return float(value)
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false; got {value!r}")
    return value


def validate_table(table: dict, source: str) -> None:
    """Validate a suite's [check] table; raises SuiteError naming `{source}: check.KEY`."""
    config_from_table(table, source)


def config_from_table(
    table: dict[str, Any], source: str, base: CheckConfig | None = None
) -> CheckConfig:
    """Apply a [check] table over `base` (default: built-in defaults)."""
    config = base or CheckConfig()
    thresholds = dict(config.thresholds_pct)
    origin = dict(config.origin)
    options = config.options
    fail_on_improvement = config.fail_on_improvement
    for key, value in table.items():
        if key not in TABLE_KEYS:
            close = difflib.get_close_matches(key, TABLE_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SuiteError(
                f"{source}: check.{key}: unknown key{hint}; allowed: {', '.join(TABLE_KEYS)}"
            )
        try:
            if key in DEFAULT_THRESHOLDS_PCT:
                thresholds[key] = threshold_value(key, value)
            elif key == "alpha":
                options = replace(options, alpha=_option_value(key, value))
            elif key == "memory_floor_mib":
                options = replace(options, memory_floor_bytes=_option_value(key, value) * 2**20)
            elif key == "divergence_floor":
                options = replace(options, divergence_floor=_option_value(key, value))
            else:
                fail_on_improvement = _option_value(key, value)
        except ValueError as exc:
            raise SuiteError(f"{source}: check.{key}: {exc}") from None
        origin[key] = "suite"
    return CheckConfig(thresholds, options, fail_on_improvement, origin)


def parse_threshold_flag(text: str) -> tuple[str, float | None]:
    """'throughput=-5', 'peak_memory=10' or 'divergence=off' -> (metric, magnitude or None)."""
    metric, sep, raw = text.partition("=")
    metric = metric.strip().replace("-", "_")
    if not sep or metric not in DEFAULT_THRESHOLDS_PCT:
        raise ValueError(
            f"expected METRIC=PERCENT with METRIC one of {', '.join(DEFAULT_THRESHOLDS_PCT)} "
            f"(e.g. throughput=-5, peak_memory=off); got {text!r}"
        )
    raw = raw.strip().rstrip("%")
    if raw.lower() in ("off", "false", "none"):
        return metric, None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{metric}: {raw!r} is not a number (or 'off')") from None
    return metric, threshold_value(metric, value)


def suite_check_table(run: Run, label: str) -> tuple[dict[str, Any], str] | None:
    """The [check] table of the suite a run recorded, with a source name for messages."""
    table = run.suite_table("check")
    if table is None:
        return None
    source = f"{label} (suite)" if label.endswith(".json") else str(run.path / SUITE_FILE)
    return table, source


def default_config(device_kind: str | None = None) -> CheckConfig:
    """The built-in defaults; CPU runs get a wider timing threshold (CPU_DEFAULT_THRESHOLDS_PCT)."""
    if device_kind != "cpu":
        return CheckConfig()
    thresholds = {**DEFAULT_THRESHOLDS_PCT, **CPU_DEFAULT_THRESHOLDS_PCT}
    origin = {k: "default for CPU runs" for k in CPU_DEFAULT_THRESHOLDS_PCT}
    return CheckConfig(thresholds, origin=origin)


def resolve_config(
    tables: list[tuple[dict[str, Any], str] | None],
    flags: Sequence[tuple[str, float | None]] = (),
    fail_on_improvement: bool = False,
    alpha: float | None = None,
    device_kind: str | None = None,
    gate_numerics: bool = True,
) -> CheckConfig:
    """Defaults (for the device kind), then the first [check] table found, then flags."""
    config = default_config(device_kind)
    found = next((t for t in tables if t is not None), None)
    if found is not None:
        config = config_from_table(found[0], found[1], config)
    thresholds, origin = dict(config.thresholds_pct), dict(config.origin)
    for metric, value in flags:
        thresholds[metric] = value
        origin[metric] = "--threshold"
    options = config.options if alpha is None else replace(config.options, alpha=alpha)
    return CheckConfig(
        thresholds,
        options,
        config.fail_on_improvement or fail_on_improvement,
        origin,
        gate_numerics,
    )

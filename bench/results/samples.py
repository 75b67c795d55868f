"""Summary statistics of per-step samples (pure Python, no torch)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default method) of already-sorted values."""
    if not sorted_values:
        raise ValueError("quantile of an empty sequence")
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize_seconds(step_s: Sequence[float]) -> dict[str, float]:
    """Median, mean, stdev, IQR, p10/p90, min and max of step times in seconds."""
    values = sorted(step_s)
    q1, q3 = quantile(values, 0.25), quantile(values, 0.75)
    return {
        "median_s": statistics.median(values),
        "mean_s": statistics.fmean(values),
        "stdev_s": statistics.stdev(values) if len(values) > 1 else 0.0,
        "iqr_s": q3 - q1,
        "p10_s": quantile(values, 0.10),
        "p90_s": quantile(values, 0.90),
        "min_s": values[0],
        "max_s": values[-1],
    }

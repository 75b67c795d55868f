"""Significance of a change between two sets of per-step samples (no I/O, no formatting).

A timing change is tested on the per-step samples of both runs with a two-sided Mann-Whitney U
test (rank based, so it holds for the skewed, outlier-prone distributions of step times, and is
the same for step time and throughput, which are monotone in each other), as asv does. A
percentile bootstrap gives a 95% interval of the ratio of medians for display.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def mann_whitney_p(base: Sequence[float], current: Sequence[float]) -> float | None:
    """Two-sided Mann-Whitney U p-value of two samples; None with fewer than 2 per side."""
    if len(base) < 2 or len(current) < 2:
        return None
    from scipy.stats import mannwhitneyu

    if len(set(base) | set(current)) == 1:  # all equal: no evidence of any difference
        return 1.0
    p = float(mannwhitneyu(current, base, alternative="two-sided").pvalue)
    return 1.0 if math.isnan(p) else p


def smallest_p_value(n_base: int, n_current: int) -> float:
    """The smallest two-sided p the exact Mann-Whitney test can give for these sample sizes
    (all of one side below all of the other): 2 / C(n_base + n_current, n_base), computed in log
    space (the binomial overflows a float past about 500 samples a side)."""
    log_comb = (
        math.lgamma(n_base + n_current + 1) - math.lgamma(n_base + 1) - math.lgamma(n_current + 1)
    )
    return min(1.0, math.exp(math.log(2.0) - log_comb))


def bootstrap_median_ratio_ci(
    base: Sequence[float], current: Sequence[float], resamples: int, seed: int = 0
) -> tuple[float, float] | None:
    """95% percentile-bootstrap interval of median(current) / median(base); seeded, so stable."""
    if len(base) < 2 or len(current) < 2 or resamples < 1:
        return None
    rng = np.random.default_rng(seed)
    b = np.asarray(base, dtype=float)
    c = np.asarray(current, dtype=float)
    b_med = np.median(b[rng.integers(0, len(b), (resamples, len(b)))], axis=1)
    c_med = np.median(c[rng.integers(0, len(c), (resamples, len(c)))], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = c_med / b_med
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size == 0:
        return None
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)

"""Change points of a metric's series over runs, and the history gate's test of one new value.

No I/O and no formatting: plain sequences of numbers in, typed findings out
(bench.analysis.history applies them to the history store's series).

Change points (Apache Otava's method, after MongoDB's E-divisive work, with a least-squares
step fit for the candidates as asv does):
  1. the values go on a log scale where they are ratios (throughput, step time, memory, energy,
     MFU: a 10% step is then the same size at any level), and are divided by the series' robust
     run-to-run noise: the median absolute difference of consecutive values / (0.6745 * sqrt 2),
     which a few steps do not inflate (a plain standard deviation would count every step as
     noise);
  2. candidates: ruptures' PELT (exact optimal partitioning, pruned) with the least-squares
     cost (a step in the mean), segments of at least MIN_SEGMENT_RUNS runs and a BIC-like penalty
     of 2 ln n, which proposes more steps than are real;
  3. significance: each candidate is tested with Student's t-test (pooled variance: a step
     moves the level, not the noise) between the segment before it and the one after it
     (bounded by its neighbours); the weakest candidate with p >= ALPHA is
     dropped and the rest re-tested, until every one left has p < ALPHA = 0.01 (Otava's pruning
     of weak change points, at its p). There is no per-metric threshold: a step is as big as the
     series' own noise makes it. A series without noise (numerics on one software stack) steps
     where its value changes by RESOLUTION (0.1%) or more.
  A step at the latest value (one value after it) is tested against the spread of the segment
  before it (below) at the stricter p < LATEST_ALPHA = 0.002 (one run is weaker evidence than
  several; asv's p for a timing change), and marked provisional.
  Measured by benchmarks/history_gate_sim.py on A/A series (no step) of 50 runs with Gaussian
  between-run noise: 0.44 false change points per 100 runs at 2% noise, 0.38 at 10% (the test
  is scale-free); README, "History and trends", has the table.

The test of one new value against the runs before it (`spread_test`): a Student-t prediction
interval for one more draw from their distribution (log scale for ratio metrics): outside when
|x - mean| > t(n-1, 1 - alpha/2) * s * sqrt(1 + 1/n), i.e. a two-sided p < alpha that the value
comes from the same between-run noise.

Why ruptures: a maintained, widely used change-point library (BSD; 1.1.10, 2025-09; wheels for
every platform, only numpy and scipy below it) whose PELT is exact for the least-squares cost;
the significance test is scipy's. signal-processing-algorithms (MongoDB's E-divisive) was
weighed: fewer users and an older last release (2.1.6, 2024-12), and its significance is a
permutation test, which Otava itself replaced by the t-test used here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ALPHA = 0.01  # Otava's p for a change point seen over two runs or more
# A step at the latest value rests on that one run: it needs the stricter p that `check
# --baseline` asks of a timing change (asv's), so one unlucky run rarely passes for a step.
LATEST_ALPHA = 0.002
MIN_SEGMENT_RUNS = 2  # a t-test needs two values a side
# Consecutive values closer than this (relative, on the standardised scale's input) are equal:
# deterministic metrics (numerics on one software stack) repeat to the last bit, or nearly.
_EXACT = 1e-12
# A series without noise (numerics on one software stack) steps where its value changes; a
# change under this (0.1% of a ratio metric: a log difference; 0.1% of a dB figure) is the
# summation order of another thread count or kernel, not a change worth a mark.
RESOLUTION = 1e-3


@dataclass(frozen=True)
class ChangePoint:
    """A step in a series: values from `index` on differ from those before it."""

    index: int  # the first value after the step
    p_value: float  # Student's t-test, the segment before against the one after
    before: float  # the level before (geometric mean on a log scale, else the mean)
    after: float  # the level after
    provisional: bool = False  # only the latest value is after it (tested as the gate tests)

    @property
    def change_pct(self) -> float:
        """Signed change of the level, in percent (inf from a zero level)."""
        if self.before == 0:
            return 0.0 if self.after == 0 else math.copysign(math.inf, self.after)
        return (self.after / self.before - 1.0) * 100.0


@dataclass(frozen=True)
class SpreadTest:
    """A new value against the between-run spread of a window of earlier values."""

    center: float  # the window's level (geometric mean on a log scale, else the mean)
    n: int  # values in the window
    spread: float  # their sample standard deviation (of logs on a log scale)
    z: float  # (new - mean) / spread; inf when the window has no spread and the value moved
    p_value: float  # two-sided, from the t prediction interval
    outside: bool  # p < alpha: not the window's between-run noise


def _scale(values: Sequence[float], log: bool) -> np.ndarray:
    """The values as a float array, on a log scale when asked (all must then be positive)."""
    array = np.asarray(values, dtype=float)
    return np.log(array) if log else array


def _level(values: np.ndarray, log: bool) -> float:
    mean = float(np.mean(values))
    return math.exp(mean) if log else mean


def robust_noise(values: np.ndarray) -> float:
    """Run-to-run noise of a series that may hold steps: the median absolute difference of
    consecutive values / (0.6745 sqrt 2) (a standard deviation for Gaussian noise); the plain
    standard deviation of the differences where most of them are zero; 0 for a constant series."""
    diffs = np.abs(np.diff(values))
    if diffs.size == 0:
        return 0.0
    mad = float(np.median(diffs)) / (0.6745 * math.sqrt(2.0))
    if mad > _EXACT * max(1.0, float(np.max(np.abs(values)))):
        return mad
    return float(np.std(diffs))


def _same(a: float, b: float) -> bool:
    """Equal within RESOLUTION (the values of a series without noise)."""
    return abs(a - b) <= RESOLUTION * max(1.0, abs(a))


def student_p(before: np.ndarray, after: np.ndarray) -> float:
    """Two-sided p of Student's t-test (pooled variance: a step moves the level, not the noise);
    two constant sides are equal (1) or different (0)."""
    from scipy.stats import ttest_ind

    if float(np.std(before)) == 0.0 and float(np.std(after)) == 0.0:
        return 1.0 if _same(float(before[0]), float(after[0])) else 0.0
    p = float(ttest_ind(before, after, equal_var=True).pvalue)
    return 1.0 if math.isnan(p) else p


def _candidates(values: np.ndarray) -> list[int]:
    """Step positions PELT proposes on the standardised series (more than are real)."""
    import ruptures

    noise = robust_noise(values)
    if noise == 0.0 or len(values) < 2 * MIN_SEGMENT_RUNS:
        return []
    standardised = (values - float(np.median(values))) / noise
    algo = ruptures.Pelt(model="l2", min_size=MIN_SEGMENT_RUNS, jump=1)
    ends = algo.fit(standardised.reshape(-1, 1)).predict(pen=2.0 * math.log(len(values)))
    return [int(i) for i in ends[:-1]]  # ruptures ends the list with len(values)


def _segment_p(values: np.ndarray, bounds: list[int], i: int) -> float:
    """p of candidate bounds[i] against its neighbours bounds[i-1] and bounds[i+1]."""
    return student_p(values[bounds[i - 1] : bounds[i]], values[bounds[i] : bounds[i + 1]])


def change_points(
    values: Sequence[float],
    log: bool = True,
    alpha: float = ALPHA,
    latest_alpha: float = LATEST_ALPHA,
) -> list[ChangePoint]:
    """The significant steps of a series, oldest first (module docstring: the method); a step at
    the latest value alone needs p < `latest_alpha`. `log` compares ratios (every value must
    then be positive); non-finite values are the caller's to leave out."""
    series = _scale(values, log)
    if len(series) < 2 * MIN_SEGMENT_RUNS:
        return []
    kept = _candidates(series)
    while kept:
        bounds = [0, *kept, len(series)]
        p_values = [_segment_p(series, bounds, i) for i in range(1, len(bounds) - 1)]
        weakest = int(np.argmax(p_values))
        if p_values[weakest] < alpha:
            break
        del kept[weakest]
    bounds = [0, *kept, len(series)]
    found = []
    for i in range(1, len(bounds) - 1):
        before = series[bounds[i - 1] : bounds[i]]
        after = series[bounds[i] : bounds[i + 1]]
        found.append(
            ChangePoint(
                bounds[i], _segment_p(series, bounds, i), _level(before, log), _level(after, log)
            )
        )
    # A step at the latest value has one value after it, too few for the t-test: it is tested
    # as the history gate tests a new run, against the spread of the segment before it.
    last = series[bounds[-2] : -1]
    if len(last) >= MIN_SEGMENT_RUNS + 1:
        test = spread_test(last, float(series[-1]), log=False, alpha=latest_alpha)
        if test.outside:
            after = float(np.exp(series[-1])) if log else float(series[-1])
            found.append(ChangePoint(len(series) - 1, test.p_value, _level(last, log), after, True))
    return found


def segments(length: int, points: Sequence[ChangePoint]) -> list[range]:
    """The index ranges between change points, oldest first."""
    bounds = [0, *(p.index for p in points), length]
    return [range(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def step_at(values: Sequence[float], index: int, log: bool = True) -> ChangePoint:
    """A step at `index` whether or not it is significant: the values before it against those
    from it on, Student's t-test (each side needs MIN_SEGMENT_RUNS values)."""
    series = _scale(values, log)
    before, after = series[:index], series[index:]
    if min(len(before), len(after)) < MIN_SEGMENT_RUNS:
        raise ValueError(f"a step test needs {MIN_SEGMENT_RUNS} values on each side")
    return ChangePoint(index, student_p(before, after), _level(before, log), _level(after, log))


def adjusted_p_values(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values of a family of tests, in their order (one test: its
    own p). The tests whose adjusted p is below q are the family's discoveries at a false
    discovery rate of q; where no test has an effect, the chance of any discovery is at most q,
    however many tests the family holds (Benjamini and Hochberg 1995; scipy's implementation)."""
    if len(p_values) <= 1:
        return [float(p) for p in p_values]
    from scipy.stats import false_discovery_control

    return [float(p) for p in false_discovery_control(np.asarray(p_values, dtype=float))]


def spread_test(
    window: Sequence[float], value: float, log: bool = True, alpha: float = ALPHA
) -> SpreadTest:
    """Is `value` outside the between-run spread of `window` (at least two values)? A Student-t
    prediction interval for one more draw: two-sided p < alpha."""
    from scipy.stats import t as student_t

    earlier = _scale(window, log)
    new = float(_scale([value], log)[0])
    n = len(earlier)
    if n < 2:
        raise ValueError("the spread of a window needs at least two values")
    mean = float(np.mean(earlier))
    spread = float(np.std(earlier, ddof=1))
    center = math.exp(mean) if log else mean
    if spread <= _EXACT * max(1.0, abs(mean)):
        moved = not _same(mean, new)
        z = math.copysign(math.inf, new - mean) if moved else 0.0
        return SpreadTest(center, n, 0.0, z, 0.0 if moved else 1.0, moved)
    z = (new - mean) / spread
    statistic = z / math.sqrt(1.0 + 1.0 / n)
    p = float(2.0 * student_t.sf(abs(statistic), df=n - 1))
    return SpreadTest(center, n, spread, z, p, p < alpha)

"""Runs over time: the series of each metric per device model, suite and case, their change points
annotated with what changed in the environment, and the CI gate against history.

Reads the history store (bench.results.history); change points and the spread test are
bench.analysis.changepoints; the gate's status and numerics rules and its Finding type are
bench.analysis.assessment's, unchanged.

A series is keyed by (device model, suite name, case id, metric): runs of another GPU model or
another suite never enter it, so two suites in one database stay apart. A changed suite.toml
under the same name is an environment change ("suite.toml"), shown where it moved a series.

The history gate (`check_history`), for CURRENT against the last N runs (default 20) of the same
device model and suite in the store, started before CURRENT (CURRENT itself is left out, so it
may be added before or after the check):
  * throughput, step time and energy per sample (the metrics that move between runs) regress
    when a change is beyond the metric's threshold *and* a step, not between-run noise. Of the
    window's series with CURRENT appended only the runs since its latest settled step count (a
    change point, bench.analysis.changepoints, at p < 0.001, among the runs before the last 4:
    a step with NEW_NORMAL_RUNS (5) runs behind it is the new normal). Two tests, either
    suffices:
      - CURRENT alone outside the spread of the runs before it (a Student-t prediction interval,
        p < 0.002, `--alpha`): a change larger than one run's noise fails at its first run, and
        the change is CURRENT's against their level;
      - the level of the last LEVEL_RUNS (4) runs, CURRENT included, a step from the runs
        before them (Student's t-test, p < 0.01): a step smaller than one run's noise fails
        once a few runs are behind it (the delay the simulation measures), and the change
        judged against the threshold is that level's, so one unlucky run in a real step does
        not decide it either way;
    A run's cases are judged together (`history_deltas`), since a gate fails a run when any
    case fails (judged one by one, a run of 24 cases fails an A/A check about 24 times as often
    as one case does):
      - for each metric and each of the two tests, the p-values of every case with a history
        are adjusted for how many there are (Benjamini-Hochberg), and a test counts where the
        adjusted p is below its alpha: a change confined to one case of m needs about m times
        the evidence;
      - the whole run is one more series: per run, the median over the cases of each case's
        deviation from its level. Where CURRENT's is outside the spread of the earlier runs'
        (the first test, same p), every case that moved the same way counts as outside its
        spread: a change that moves every case (a driver, CUDA or torch upgrade) is judged on
        the run's evidence, in which the cases' own noise averages out;
    benchmarks/history_run_sim.py measures both against each case judged alone;
  * status, numerics (verdict, errored or missing pass), peak memory, divergence and missing
    cases are judged by today's rules (bench.analysis.assessment) against the latest run of the
    window, whose samples the store keeps;
  * with fewer than MIN_HISTORY_RUNS (5) earlier runs (or, for one case, fewer than that many
    ok values) the output says so and the one-baseline rule of `check --baseline` applies
    against the latest earlier run, a timing regression failing only where it is one against
    each of those runs (a change that one earlier run shows and another does not is inside the
    spread they already show: on a shared CPU, whole runs move 10-25%); with none, nothing is
    judged (exit 0, said loudly: the run starts its series). Why not the history rule from two
    runs: its prediction interval, t with n - 1 degrees of freedom, is 390 standard deviations
    of the noise wide at 2 runs, 26 at 3 and 11 at 4 (7.9 at 5, 4.5 at 10), so before 5 runs
    it would pass a run at half the speed.
  The throughput threshold is the metric's threshold (the suite's [check], flags), except that
  CPU runs drop the wide CPU default (30%) for the general one (10%): that default stands in for
  the between-run noise one baseline cannot show, which the spread test now measures.
  For every failing case the gate names the last good run in the window and what changed in the
  environment since (driver, CUDA, torch, torchao, torch threads, commit, suite.toml, ...).

Measured on synthetic series (benchmarks/history_gate_sim.py; README "History and trends",
which has the figures): at equal detection of 10% steps under 10% between-run noise this gate
raises 0.23 of the one-baseline gate's false alarms (95% interval 0.18-0.26; 0.64 against 2.81
per 100 runs), at 2% noise almost none (0.10 against 3.99 per 100 runs at a 5% threshold).
On whole runs of 24 cases (benchmarks/history_run_sim.py) at 10% noise it fails 0.9% of A/A
runs, where the same rule with each case judged alone fails 13.9%.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from bench.analysis.assessment import Assessment, assess, run_check
from bench.analysis.changepoints import (
    ALPHA,
    LATEST_ALPHA,
    MIN_SEGMENT_RUNS,
    ChangePoint,
    SpreadTest,
    adjusted_p_values,
    change_points,
    spread_test,
    step_at,
)
from bench.analysis.compare import METRICS, CaseComparison, Comparison, MetricDelta, compare_runs
from bench.analysis.thresholds import DEFAULT_THRESHOLDS_PCT, CheckConfig
from bench.errors import ResultsError
from bench.results.history import (
    ENVIRONMENT_FIELDS,
    HistoryStore,
    StoredCase,
    StoredRun,
    run_environment,
    run_key,
    utc_time,
)
from bench.results.rundir import Run
from bench.results.schema import verdict_rank

MIN_HISTORY_RUNS = 5  # earlier runs the history gate needs; fewer: the one-baseline rule
MIN_RUN_CASES = 3  # cases whose median makes the whole-run series (fewer: each case alone)
NEW_NORMAL_RUNS = 5  # runs (CURRENT included) from which on a step is the new normal
# The step test judges the level of the last runs, CURRENT included: as many as a step can have
# behind it before it is the new normal, so a recent step's whole level is judged.
LEVEL_RUNS = NEW_NORMAL_RUNS - 1
# A step is the new normal where the change-point test is sure of it: a false one would cut the
# reference where noise happened to raise the level, and the runs after it, back at the true
# level, would look like a drop (the simulation's A/A false alarms rise with this p).
SETTLED_ALPHA = 0.001
DEFAULT_WINDOW_RUNS = 20


@dataclass(frozen=True)
class HistoryMetric:
    """A metric of the history: how it reads and how it is judged."""

    name: str  # column of the store (bench.results.history.HISTORY_METRICS)
    label: str
    unit: str
    higher_is_better: bool
    log_scale: bool  # compared as ratios (where every value is positive)
    gated_as: str | None = None  # the comparison metric the spread test judges, if any


HISTORY_METRIC_SPECS: dict[str, HistoryMetric] = {
    m.name: m
    for m in (
        HistoryMetric("throughput", "throughput", "samples/s", True, True, "throughput"),
        HistoryMetric("step_time", "median step time", "s", False, True, "step_time"),
        HistoryMetric("peak_memory", "peak memory", "bytes", False, True),
        HistoryMetric("energy_per_sample", "energy per sample", "J", False, True, "energy"),
        HistoryMetric("mfu", "MFU", "", True, True),
        HistoryMetric("max_rel_loss_div", "max relative loss divergence", "", False, True),
        HistoryMetric("logits_sqnr_db", "logits SQNR", "dB", True, False),
        HistoryMetric("grad_sqnr_db", "gradient SQNR", "dB", True, False),
    )
}
SPREAD_GATED = {m.gated_as: m for m in HISTORY_METRIC_SPECS.values() if m.gated_as}


# ---------------------------------------------------------------------------------------------
# Environment changes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvChange:
    """One environment field that differs between two runs."""

    field: str
    label: str
    before: Any
    after: Any

    def __str__(self) -> str:
        def short(value: Any) -> str:
            if value is None:
                return "none"
            text = str(value)
            return text[:12] if self.field in ("git_commit", "suite_sha256") else text

        return f"{self.label} {short(self.before)} -> {short(self.after)}"


def env_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[EnvChange]:
    """What changed between two runs' environments (ENVIRONMENT_FIELDS, in their order); a field
    neither recorded is not a change."""
    return [
        EnvChange(name, label, before.get(name), after.get(name))
        for name, label in ENVIRONMENT_FIELDS
        if before.get(name) != after.get(name)
    ]


# ---------------------------------------------------------------------------------------------
# Series and change points
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One run's value of a series."""

    run: StoredRun
    value: float


@dataclass(frozen=True)
class Change:
    """A change point of a series, with the runs on either side and what changed between them."""

    metric: str
    case_id: str
    point: ChangePoint
    before: StoredRun  # the last run before the step
    after: StoredRun  # the first run after it
    changes: tuple[EnvChange, ...]

    @property
    def spec(self) -> HistoryMetric:
        """The metric's description."""
        return HISTORY_METRIC_SPECS[self.metric]

    @property
    def worse(self) -> bool:
        """True when the step went the bad way for the metric."""
        up = self.point.after > self.point.before
        return up != self.spec.higher_is_better


@dataclass(frozen=True)
class Series:
    """One metric of one case over the runs of one device model and suite, oldest first."""

    device_model: str
    device_slug: str
    suite: str
    case_id: str
    metric: str
    points: tuple[Point, ...]
    changes: tuple[Change, ...] = ()

    @property
    def spec(self) -> HistoryMetric:
        """The metric's description."""
        return HISTORY_METRIC_SPECS[self.metric]

    @property
    def values(self) -> list[float]:
        """The values, oldest first."""
        return [p.value for p in self.points]


def uses_log(spec: HistoryMetric, values: Sequence[float]) -> bool:
    """Ratios on a log scale, where the metric is one and every value is positive."""
    return spec.log_scale and all(v > 0 for v in values)


def series_changes(
    metric: str, case_id: str, points: Sequence[Point], alpha: float = ALPHA
) -> tuple[Change, ...]:
    """The change points of a series, each with the runs around it and their environment diff."""
    spec = HISTORY_METRIC_SPECS[metric]
    values = [p.value for p in points]
    found = change_points(values, uses_log(spec, values), alpha)
    return tuple(
        Change(
            metric,
            case_id,
            cp,
            points[cp.index - 1].run,
            points[cp.index].run,
            tuple(
                env_changes(points[cp.index - 1].run.environment, points[cp.index].run.environment)
            ),
        )
        for cp in found
    )


def _values_by_case(rows: Sequence[StoredCase]) -> dict[tuple[int, str], StoredCase]:
    return {(row.run_id, row.case_id): row for row in rows}


def build_series(
    runs: Sequence[StoredRun],
    rows: Sequence[StoredCase],
    metrics: Sequence[str] = tuple(HISTORY_METRIC_SPECS),
    with_changes: bool = True,
) -> list[Series]:
    """Every (device model, suite, case, metric) series of these runs (oldest first), from the
    values of cases that ran ok (numerics from any case that has them)."""
    by_key = _values_by_case(rows)
    groups: dict[tuple[str, str], list[StoredRun]] = {}
    for run in runs:
        groups.setdefault((run.device_slug, run.suite), []).append(run)
    case_ids = sorted({row.case_id for row in rows})
    out = []
    for (slug, suite), group in groups.items():
        for case_id in case_ids:
            for metric in metrics:
                points = []
                for run in group:
                    row = by_key.get((run.id, case_id))
                    value = row.metrics.get(metric) if row is not None else None
                    if value is not None and math.isfinite(value):
                        points.append(Point(run, value))
                if not points:
                    continue
                changes = series_changes(metric, case_id, points) if with_changes else ()
                out.append(
                    Series(
                        group[0].device_model, slug, suite, case_id, metric, tuple(points), changes
                    )
                )
    return out


def load_series(
    store: HistoryStore,
    device_slug: str | None = None,
    suite: str | None = None,
    case_id: str | None = None,
    metrics: Sequence[str] = tuple(HISTORY_METRIC_SPECS),
) -> list[Series]:
    """The series of the store (of one device model, suite or case where given)."""
    runs = store.runs(device_slug, suite)
    return build_series(runs, store.cases([r.id for r in runs], case_id), metrics)


def latest_changes(series: Sequence[Series]) -> list[Change]:
    """Every change point, the most recent first (by the run after the step), worse first."""
    changes = [c for s in series for c in s.changes]
    return sorted(
        changes,
        key=lambda c: (c.after.started_at, c.after.id, c.worse, c.case_id, c.metric),
        reverse=True,
    )


# ---------------------------------------------------------------------------------------------
# The gate against history
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LastGood:
    """For a failing case: the latest window run where it was good, and what changed since."""

    case_id: str
    run: StoredRun | None  # None: no run of the window was good
    changes: tuple[EnvChange, ...]


@dataclass
class HistoryCheck:
    """What `check --history` decided: the rule it applied, the window, the assessment (None
    when there was nothing to judge against) and, per failing case, the last good run."""

    rule: str  # "history", "one-baseline" or "none"
    window: list[StoredRun]
    assessment: Assessment | None
    notes: list[str] = field(default_factory=list)
    last_good: dict[str, LastGood] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 pass (or nothing to judge), 1 regression."""
        return self.assessment.exit_code if self.assessment is not None else 0


def history_config(config: CheckConfig) -> CheckConfig:
    """The thresholds for the history rule: the CPU runs' wide throughput default (there for the
    between-run noise one baseline cannot show) gives way to the general one."""
    if config.origin.get("throughput") != "default for CPU runs":
        return config
    thresholds = {**config.thresholds_pct, "throughput": DEFAULT_THRESHOLDS_PCT["throughput"]}
    origin = {**config.origin, "throughput": "default, history gate"}
    return replace(config, thresholds_pct=thresholds, origin=origin)


@dataclass(frozen=True)
class SeriesTests:
    """The history gate's two tests of CURRENT against one case's series (`history_tests`), their
    p-values not yet judged: a run's cases are judged together (`history_deltas`)."""

    metric: str  # the comparison metric (throughput, step_time, energy)
    current: float  # CURRENT's value
    runs: int  # earlier runs in the window
    since: str  # where the reference starts: "" or " since the step at run K of the window"
    spread: SpreadTest  # CURRENT against the runs before it since the latest settled step
    level: ChangePoint | None  # the last LEVEL_RUNS runs against the runs before them, if enough
    level_before_runs: int  # runs before the last LEVEL_RUNS (the level test's reference)


def history_tests(comparison_metric: str, window: Sequence[float], current: float) -> SeriesTests:
    """CURRENT's metric tested against the window's series (history_delta: the rule)."""
    spec = SPREAD_GATED[comparison_metric]
    values = [*window, current]
    log = uses_log(spec, values)
    # Settled steps are those the runs before the last LEVEL_RUNS already show: each has at least
    # NEW_NORMAL_RUNS runs behind it. (Found on the whole series, a step of the last few runs
    # could be placed a run or two early, where those runs happened to be low, and settle
    # before it was ever judged.)
    settled = change_points(values[:-LEVEL_RUNS], log, SETTLED_ALPHA, SETTLED_ALPHA)
    segment = values[settled[-1].index :] if settled else values
    since = f" since the step at run {settled[-1].index + 1} of the window" if settled else ""
    level = None
    if len(segment) - LEVEL_RUNS >= MIN_SEGMENT_RUNS + 1:
        level = step_at(segment, len(segment) - LEVEL_RUNS, log)
    return SeriesTests(
        comparison_metric,
        current,
        len(window),
        since,
        spread_test(segment[:-1], current, log),
        level,
        len(segment) - LEVEL_RUNS,
    )


def series_delta(
    tests: SeriesTests,
    spread_p: float,
    level_p: float | None,
    alpha: float = ALPHA,
    latest_alpha: float = LATEST_ALPHA,
    spread_note: str = "",
    level_note: str = "",
) -> MetricDelta:
    """The MetricDelta of a case's tests judged at these p-values (adjusted for the run's other
    cases, or the whole run's, as the notes say): significant where a test's p is below its
    alpha; the significant test whose change is worst is the delta; with neither, the change is
    CURRENT's against the reference level, not significant."""
    sign = 1.0 if METRICS[tests.metric].higher_is_better else -1.0
    earlier, current = tests.spread.n, tests.current

    def delta(base: float, now: float, significant: bool, test: str, p: float) -> MetricDelta:
        ratio = now / base if base else None
        change = (ratio - 1.0) * 100.0 if ratio is not None else math.inf
        return MetricDelta(
            tests.metric,
            base,
            now,
            ratio,
            change,
            -sign * change,
            significant,
            test,
            p_value=p,
            base_n=tests.runs,
            current_n=1,
        )

    steps = []
    if spread_p < latest_alpha:
        steps.append(
            delta(
                tests.spread.center,
                current,
                True,
                f"CURRENT outside the between-run spread of the {earlier} runs before it"
                f"{tests.since} (t prediction interval, p < {latest_alpha:g}{spread_note})",
                spread_p,
            )
        )
    if tests.level is not None and level_p is not None and level_p < alpha:
        steps.append(
            delta(
                tests.level.before,
                tests.level.after,
                True,
                f"the level of the last {LEVEL_RUNS} runs (CURRENT included) against the "
                f"{tests.level_before_runs} runs before them{tests.since} (Student's t-test, "
                f"p < {alpha:g}{level_note})",
                level_p,
            )
        )
    if steps:
        return max(steps, key=lambda d: d.worse_pct)
    return delta(
        tests.spread.center,
        current,
        False,
        f"inside the between-run spread of {earlier} earlier runs{tests.since} "
        f"(no step{spread_note})",
        spread_p,
    )


def history_delta(
    comparison_metric: str,
    window: Sequence[float],
    current: float,
    alpha: float = ALPHA,
    latest_alpha: float = LATEST_ALPHA,
) -> MetricDelta:
    """One case's metric judged against the window's series, as a MetricDelta whose `significant`
    means "a step, not between-run noise" (so assessment's rule, threshold *and* significant,
    applies as it does to a baseline).

    A step with NEW_NORMAL_RUNS runs behind it (a change point of the runs before the last
    LEVEL_RUNS, at p < SETTLED_ALPHA) is the new normal: only the runs since it count. Of those,
    two tests:
      * CURRENT alone outside the between-run spread of the runs before it (t prediction
        interval, p < `latest_alpha`): a change big enough to show in one run, caught at once;
        the change is CURRENT's against their level;
      * the level of the last LEVEL_RUNS runs (CURRENT included) a step from the runs before
        them (Student's t-test, p < `alpha`): a step smaller than one run's noise shows once a
        few runs are behind it, and the change is that level's, not one noisy run's.
    A run's cases are judged together by `history_deltas`, which is this for one case."""
    return history_deltas(comparison_metric, {"": (window, current)}, alpha, latest_alpha)[""]


def history_deltas(
    comparison_metric: str,
    series: Mapping[str, tuple[Sequence[float | None], float]],
    alpha: float = ALPHA,
    latest_alpha: float = LATEST_ALPHA,
) -> dict[str, MetricDelta]:
    """Every case of a run (case id -> (its values in the window's runs, None where it has none;
    CURRENT)) judged against its series by history_delta's rule, as one family:
      * each test's p-values are adjusted across the cases (Benjamini-Hochberg), so an A/A run's
        chance of a false step is about one case's, not that times the cases;
      * the whole run is tested as one series too (`whole_run_tests`: per run, the median case's
        deviation from its level): where CURRENT's median case is outside the spread of the
        runs' medians, a change that moved every case (a driver, CUDA or torch upgrade) is
        judged on the run's evidence, not on each case's alone, and a case moved the same way
        counts as outside its spread.
    An A/A run then fails about as often as one case would (a little more: the whole run is one
    more test); a change confined to one case of m needs about m times the evidence."""
    tests = {
        case: history_tests(comparison_metric, [v for v in w if v is not None], c)
        for case, (w, c) in series.items()
    }
    return judge_together(tests, alpha, latest_alpha, whole_run_tests(comparison_metric, series))


def whole_run_tests(
    comparison_metric: str, series: Mapping[str, tuple[Sequence[float | None], float]]
) -> SeriesTests | None:
    """The history tests of the whole run: per window run and for CURRENT, the median over the
    cases of each case's log deviation from its mean over the window (a run that moved every case
    by 10% moves this by 10%, and the cases' own noise mostly averages out); None with fewer than
    MIN_RUN_CASES cases or MIN_HISTORY_RUNS runs that have that many."""
    cases = [  # (the case's mean log value over the window, its window, CURRENT)
        (float(np.mean(np.log([v for v in window if v is not None]))), window, current)
        for window, current in series.values()
        if current > 0 and all(v is None or v > 0 for v in window)
    ]
    if len(cases) < MIN_RUN_CASES:
        return None
    factors = []
    for run in range(max(len(window) for _, window, _ in cases)):
        deviations = [
            math.log(window[run]) - level
            for level, window, _ in cases
            if run < len(window) and window[run] is not None
        ]
        if len(deviations) >= MIN_RUN_CASES:
            factors.append(math.exp(float(np.median(deviations))))
    if len(factors) < MIN_HISTORY_RUNS:
        return None
    current = math.exp(float(np.median([math.log(c) - level for level, _, c in cases])))
    return history_tests(comparison_metric, factors, current)


def _moved_with(case: float, run: float) -> bool:
    """Did a case move the way the whole run did (both ratios on the same side of 1)?"""
    return (case - 1.0) * (run - 1.0) > 0


def judge_together(
    tests: Mapping[str, SeriesTests],
    alpha: float = ALPHA,
    latest_alpha: float = LATEST_ALPHA,
    whole_run: SeriesTests | None = None,
) -> dict[str, MetricDelta]:
    """The cases' tests of one metric judged as one family (history_deltas): each test's
    p-values adjusted across the cases (Benjamini-Hochberg); for CURRENT alone, the whole run's
    p where that is smaller and the case moved the way the run did. (Not for the level of the
    last runs: the level of a shared machine's speed drifts, and its median case, where the
    cases' own noise averages out, shows such a drift as a step: on this project's CPU the
    median case went from +11% in runs 1-3 to -10% in runs 4-7 of an A/A sequence.)"""
    spread_p = dict(zip(tests, adjusted_p_values([t.spread.p_value for t in tests.values()])))
    leveled = {case: t.level.p_value for case, t in tests.items() if t.level is not None}
    level_p = dict(zip(leveled, adjusted_p_values(list(leveled.values()))))
    family = (
        f"; Benjamini-Hochberg adjusted across the run's {len(tests)} cases"
        if len(tests) > 1
        else ""
    )
    judged = {}
    for case, t in tests.items():
        p, note = spread_p[case], family
        if whole_run is not None:
            run_move = whole_run.current / whole_run.spread.center
            if whole_run.spread.p_value < p and _moved_with(t.current / t.spread.center, run_move):
                p = whole_run.spread.p_value
                note = (
                    f"; as the whole run is: its median case {(run_move - 1) * 100:+.1f}% "
                    f"against the runs before it"
                )
        judged[case] = series_delta(t, p, level_p.get(case), alpha, latest_alpha, note, family)
    return judged


def _current_value(case: CaseComparison, metric: str) -> float | None:
    delta = case.metrics.get(metric)
    return delta.current if delta is not None else None


def _judge_against_window(
    comparison: Comparison,
    rows: Sequence[StoredCase],
    window: Sequence[StoredRun],
    latest_alpha: float,
) -> tuple[Comparison, list[str], list[str]]:
    """The comparison with its between-run metrics replaced by the history rule's deltas
    (history_deltas, all cases of a metric together) where a case has MIN_HISTORY_RUNS ok values
    in the window; the ids of the cases that have fewer; notes for the reader."""
    by_key = _values_by_case(rows)
    short: list[str] = []
    notes: list[str] = []
    judged: dict[str, dict[str, MetricDelta]] = {}
    for metric, spec in SPREAD_GATED.items():
        series = {}
        for case in comparison.cases:
            current = _current_value(case, metric)
            if current is None:
                continue
            # aligned with the window's runs (None: not an ok value there), so the whole-run
            # series can take each run's median over the cases
            values = [
                row.metrics.get(spec.name)
                if (row := by_key.get((run.id, case.case_id))) is not None and row.status == "ok"
                else None
                for run in window
            ]
            if sum(v is not None for v in values) >= MIN_HISTORY_RUNS:
                series[case.case_id] = (values, current)
            elif metric == "throughput":
                short.append(case.case_id)
        judged[metric] = history_deltas(metric, series, ALPHA, latest_alpha)
        if metric == "throughput" and (whole_run := whole_run_tests(metric, series)):
            notes.append(describe_whole_run(whole_run, len(series), latest_alpha))
    cases = [
        replace(
            case,
            metrics={
                **case.metrics,
                **{m: d[case.case_id] for m, d in judged.items() if case.case_id in d},
            },
        )
        for case in comparison.cases
    ]
    return replace(comparison, cases=cases), short, notes


def describe_whole_run(whole_run: SeriesTests, cases: int, latest_alpha: float) -> str:
    """One line on the whole run's throughput against the earlier runs' (whole_run_tests)."""
    move = (whole_run.current / whole_run.spread.center - 1.0) * 100.0
    verdict = "outside" if whole_run.spread.p_value < latest_alpha else "inside"
    return (
        f"whole run: the median of the {cases} cases' throughput {move:+.1f}% against the "
        f"{whole_run.spread.n} runs before it{whole_run.since} (p = "
        f"{whole_run.spread.p_value:.2g}): {verdict} the spread of their medians"
    )


# Comparison metrics judged by today's single-number rule, as store columns (divergence is not:
# its key differs by workload, and the verdict speaks for it).
_STORED_AS = {"peak_memory": "peak_memory", **{m: spec.name for m, spec in SPREAD_GATED.items()}}


def _good(
    row: StoredCase | None, findings: Sequence[Any], current_verdict: str | None, config: Any
) -> bool:
    """Was the case good in this run, for each reason it fails now?"""
    if row is None or row.status != "ok":
        return False
    for finding in findings:
        if finding.what in ("verdict", "numerics"):
            now, then = verdict_rank(current_verdict), verdict_rank(row.verdict)
            if then is None or (now is not None and then >= now):
                return False
        elif finding.delta is not None and finding.delta.metric in _STORED_AS:
            delta = finding.delta
            then_value = row.metrics.get(_STORED_AS[delta.metric])
            if then_value is None or not delta.base:
                continue
            change = (then_value / delta.base - 1.0) * 100.0
            worse = -change if METRICS[delta.metric].higher_is_better else change
            if worse > (config.threshold(delta.metric) or 0.0):
                return False
    return True


def last_good_runs(
    check: Assessment,
    window: Sequence[StoredRun],
    rows: Sequence[StoredCase],
    current_env: Mapping[str, Any],
) -> dict[str, LastGood]:
    """For every failing case: the latest run of the window where it was good, and what changed
    in the environment between that run and CURRENT."""
    by_key = _values_by_case(rows)
    failing: dict[str, list[Any]] = {}
    for finding in check.findings:
        if finding.fails:
            failing.setdefault(finding.case_id, []).append(finding)
    verdicts = {case.case_id: case.current_verdict for case in check.comparison.cases}
    found = {}
    for case_id, findings in failing.items():
        good = next(
            (
                run
                for run in reversed(window)
                if _good(
                    by_key.get((run.id, case_id)), findings, verdicts.get(case_id), check.config
                )
            ),
            None,
        )
        changes = tuple(env_changes(good.environment, current_env)) if good else ()
        found[case_id] = LastGood(case_id, good, changes)
    return found


def describe_last_good(last_good: Mapping[str, LastGood], listed: int = 3) -> list[str]:
    """One line per group of failing cases that share their last good run and its changes."""
    groups: dict[tuple[int | None, tuple[str, ...]], list[LastGood]] = {}
    for item in last_good.values():
        key = (item.run.id if item.run else None, tuple(str(c) for c in item.changes))
        groups.setdefault(key, []).append(item)
    lines = []
    for (_, changes), items in groups.items():
        ids = sorted(i.case_id for i in items)
        who = ", ".join(ids[:listed]) + (
            f" and {len(ids) - listed} more" if len(ids) > listed else ""
        )
        run = items[0].run
        if run is None:
            lines.append(f"{who}: no run of the window was good")
            continue
        since = "; ".join(changes) if changes else "nothing the runs record (the code under test?)"
        lines.append(f"{who}: last good run {run.label}; changed since: {since}")
    return lines


def within_earlier_spread(
    assessment: Assessment, against_other: Assessment, other: StoredRun
) -> Assessment:
    """The fallback with a few earlier runs: a failing timing finding (throughput, step time,
    energy) against the latest run stands only where it also fails against `other`, an earlier
    one; otherwise CURRENT is within the spread those runs already show, and it is a regression
    that does not fail. Status, numerics, memory and missing cases stay the latest run's."""
    failing_there = {(f.case_id, f.what) for f in against_other.findings if f.fails}
    findings = [
        replace(
            f,
            fails=False,
            message=f"{f.message}; not against run {other.label}: within the earlier runs' spread",
        )
        if f.fails and f.what in SPREAD_GATED and (f.case_id, f.what) not in failing_there
        else f
        for f in assessment.findings
    ]
    return Assessment(
        assessment.comparison,
        assessment.config,
        assessment.compatibility,
        findings,
        assessment.notes,
    )


def _window(
    store: HistoryStore, current: Run, key: str, window_runs: int
) -> tuple[list[StoredRun], list[StoredRun]]:
    """(the window, every earlier run of CURRENT's device model and suite)."""
    identity = current.identity
    if not identity.known:
        raise ResultsError(f"{current.path}: env.json does not say which device the run used")
    suite = current.manifest.suite_name
    if not suite:
        raise ResultsError(f"{current.path}: records no suite name (env.json suite)")
    started = utc_time(current.env.get("started_at"))
    earlier = [
        run
        for run in store.runs(identity.slug, suite, before=started)
        if run.run_key != key
        and run.device_model == identity.name
        and run.compute_capability == identity.compute_capability
    ]
    return earlier[-window_runs:], earlier


def check_history(
    current: Run,
    store: HistoryStore,
    config: CheckConfig,
    window_runs: int = DEFAULT_WINDOW_RUNS,
    current_label: str | None = None,
    commit: str | None = None,
) -> HistoryCheck:
    """The gate against history (module docstring: the rule)."""
    key = run_key(current)
    window, _ = _window(store, current, key, window_runs)
    suite, device = current.manifest.suite_name, current.identity.name
    if not window:
        return HistoryCheck(
            "none",
            [],
            None,
            [
                f"not judged: no earlier run of suite {suite} on {current.identity.name} in "
                f"{store.where}; this run starts its series (add it: mpbench history add)"
            ],
        )
    latest = window[-1]
    base = store.as_run(latest)
    label = current_label or str(current.path)
    notes = []
    current_env = run_environment(current.manifest, commit)
    edited = [r for r in window if r.suite_sha256 != current.manifest.suite_sha256]
    if edited:
        notes.append(
            f"suite.toml of {suite} differs from CURRENT's in {len(edited)} of the {len(window)} "
            f"window runs (first {edited[0].label}): a change there may be the suite's"
        )
    rows = store.cases([r.id for r in window])
    if len(window) < MIN_HISTORY_RUNS:
        base_label = f"{store.where} run {latest.label}"
        comparison = compare_runs(base, current, config.options, base_label, label)
        notes.insert(
            0,
            f"only {len(window)} earlier run(s) of suite {suite} on this device in {store.where} "
            f"(the history gate needs {MIN_HISTORY_RUNS}): judged by the one-baseline rule "
            f"against run {latest.label}"
            + (
                f", a timing regression only where it is one against each of the {len(window)} runs"
                if len(window) > 1
                else ""
            ),
        )
        assessment = run_check(comparison, config)
        for run in window[:-1]:
            other = compare_runs(store.as_run(run), current, config.options, run.label, label)
            # assess, not run_check: the latest run passed the device policy; an earlier one
            # only narrows which timing findings fail
            assessment = within_earlier_spread(assessment, assess(other, config), run)
        rule = "one-baseline"
    else:
        config = history_config(config)
        base_label = (
            f"the last {len(window)} runs of suite {suite} on this device in {store.where} "
            f"(#{window[0].id}..#{latest.id}; status and numerics against {latest.label})"
        )
        comparison = compare_runs(base, current, config.options, base_label, label)
        comparison, short, judged_notes = _judge_against_window(
            comparison, rows, window, config.options.alpha
        )
        notes.insert(
            0,
            f"history gate: each case against the last {len(window)} runs of suite {suite} on "
            f"{device}: a change counts beyond its threshold and as a step, not between-run "
            f"noise (CURRENT outside their spread, p < {config.options.alpha:g}; or the level "
            f"of the last {LEVEL_RUNS} runs a step from the runs before them, t-test "
            f"p < {ALPHA:g}; each test's p adjusted across the run's cases, Benjamini-Hochberg; "
            f"a case moved as the whole run is, where that is outside the earlier runs' spread)",
        )
        notes.extend(judged_notes)
        if short:
            notes.append(
                f"{len(short)} case(s) have fewer than {MIN_HISTORY_RUNS} ok runs in the window "
                f"(e.g. {short[0]}): judged by the one-baseline rule against {latest.label}"
            )
        assessment = run_check(comparison, config)
        rule = "history"
    assessment.notes.extend(notes)
    last_good = last_good_runs(assessment, window, rows, current_env)
    assessment.notes.extend(describe_last_good(last_good))
    return HistoryCheck(rule, window, assessment, notes, last_good)

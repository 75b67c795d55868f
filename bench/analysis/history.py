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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bench.analysis.assessment import Assessment, assess, run_check
from bench.analysis.changepoints import (
    ALPHA,
    LATEST_ALPHA,
    MIN_SEGMENT_RUNS,
    ChangePoint,
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


def history_delta(
    comparison_metric: str,
    window: Sequence[float],
    current: float,
    alpha: float = ALPHA,
    latest_alpha: float = LATEST_ALPHA,
) -> MetricDelta:
    """CURRENT's metric judged against the window's series, as a MetricDelta whose `significant`
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
    The significant test whose change is worst is the delta; with neither, CURRENT is inside the
    spread and the change is CURRENT's against the segment's level, not significant."""
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
    sign = 1.0 if METRICS[comparison_metric].higher_is_better else -1.0

    def delta(base: float, now: float, significant: bool, test: str, p: float) -> MetricDelta:
        ratio = now / base if base else None
        change = (ratio - 1.0) * 100.0 if ratio is not None else math.inf
        return MetricDelta(
            comparison_metric,
            base,
            now,
            ratio,
            change,
            -sign * change,
            significant,
            test,
            p_value=p,
            base_n=len(values) - 1,
            current_n=1,
        )

    earlier = segment[:-1]
    spread = spread_test(earlier, current, log, latest_alpha)
    steps = []
    if spread.outside:
        steps.append(
            delta(
                spread.center,
                current,
                True,
                f"CURRENT outside the between-run spread of the {len(earlier)} runs before it"
                f"{since} (t prediction interval, p < {latest_alpha:g})",
                spread.p_value,
            )
        )
    if len(segment) - LEVEL_RUNS >= MIN_SEGMENT_RUNS + 1:
        level = step_at(segment, len(segment) - LEVEL_RUNS, log)
        if level.p_value < alpha:
            steps.append(
                delta(
                    level.before,
                    level.after,
                    True,
                    f"the level of the last {LEVEL_RUNS} runs (CURRENT included) against the "
                    f"{len(segment) - LEVEL_RUNS} runs before them{since} (Student's t-test, "
                    f"p < {alpha:g})",
                    level.p_value,
                )
            )
    if steps:
        return max(steps, key=lambda d: d.worse_pct)
    return delta(
        spread.center,
        current,
        False,
        f"inside the between-run spread of {len(earlier)} earlier runs{since} (no step)",
        spread.p_value,
    )


def _current_value(case: CaseComparison, metric: str) -> float | None:
    delta = case.metrics.get(metric)
    return delta.current if delta is not None else None


def _judge_against_window(
    comparison: Comparison,
    rows: Sequence[StoredCase],
    window: Sequence[StoredRun],
    latest_alpha: float,
) -> tuple[Comparison, list[str]]:
    """The comparison with its between-run metrics replaced by spread deltas where a case has
    MIN_HISTORY_RUNS ok values in the window; the ids of the cases that have fewer."""
    by_key = _values_by_case(rows)
    short = []
    cases = []
    for case in comparison.cases:
        metrics = dict(case.metrics)
        for metric, spec in SPREAD_GATED.items():
            current = _current_value(case, metric)
            if current is None:
                continue
            values = [
                row.metrics[spec.name]
                for run in window
                if (row := by_key.get((run.id, case.case_id))) is not None
                and row.status == "ok"
                and row.metrics.get(spec.name) is not None
            ]
            if len(values) >= MIN_HISTORY_RUNS:
                metrics[metric] = history_delta(metric, values, current, ALPHA, latest_alpha)
            elif metric == "throughput":
                short.append(case.case_id)
        cases.append(replace(case, metrics=metrics))
    return replace(comparison, cases=cases), short


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
        comparison, short = _judge_against_window(comparison, rows, window, config.options.alpha)
        notes.insert(
            0,
            f"history gate: each case against the last {len(window)} runs of suite {suite} on "
            f"{device}: a change counts beyond its threshold and as a step, not between-run "
            f"noise (CURRENT outside their spread, p < {config.options.alpha:g}; or the level "
            f"of the last {LEVEL_RUNS} runs a step from the runs before them, t-test "
            f"p < {ALPHA:g})",
        )
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

"""The history gate on whole runs: many cases judged at once, each case alone or as one family.

    python benchmarks/history_run_sim.py [--series N] [--cases M] [--seed S] [--workers W]

A gate fails a run when any of its cases fails, so a per-case false-alarm rate p becomes about
M * p for a run of M cases: 24 cases at 0.65 per 100 case checks (history_gate_sim.py's figure
at 10% noise) fail an A/A run about one time in seven. The gate therefore judges a run's cases
of one metric as one family (bench.analysis.history.history_deltas: each test's p-values
adjusted across the cases, Benjamini-Hochberg, and the whole run's median case tested as one
more series, whose evidence counts for the cases that moved its way). This script measures,
side by side on the same series, the rule applied to each case alone (the p-values unadjusted,
the rule before) and the rule as the gate applies it:
  * A/A runs: the share of runs with any failing case, and false alarms per 100 case checks;
  * a step of 5% or 10% in every case (a driver or torch change moves them all): the share of
    series whose run fails within DETECT_WITHIN runs of the step, and the median delay;
  * a step of 5%, 10% or 20% in one case of M (a change confined to one model or mode): the
    share of series in which that case fails within DETECT_WITHIN runs.
Each series is WINDOW earlier runs and then the checked runs of M cases, throughput only (what
the gate's history rule reads). Case c's speed in run r is exp(a_r + e_rc) times its level:
a_r ~ N(0, common) is the whole run's move (a shared machine's load, a clock), e_rc ~ N(0, own)
the case's own noise. Three settings: independent cases at 2% (a dedicated GPU runner) and at
10%, and correlated ones at about 10% in all (common 7%, own 7%), as on this CPU, where whole
runs move together. The threshold is suites/ci.toml's 5%. The default (200 series, 24 cases)
takes about 11 minutes on 2 cores; the figures are estimates with a binomial standard error of
up to 3.5 points at 200 series.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from bench.analysis.changepoints import ALPHA, LATEST_ALPHA
from bench.analysis.compare import MetricDelta
from bench.analysis.history import history_tests, judge_together, whole_run_tests

WINDOW = 20
AA_CHECKS = 5  # A/A runs checked per series, once the window is full
DETECT_WITHIN = 5
THRESHOLD_PCT = 5.0
SETTINGS = {
    "independent 2%": (0.0, 0.02),
    "independent 10%": (0.0, 0.10),
    "correlated 7% + 7%": (0.07, 0.07),
}
STEPS = (
    "A/A",
    "5% in every case",
    "10% in every case",
    "5% in one case",
    "10% in one case",
    "20% in one case",
)


def make_speeds(rng: np.random.Generator, common: float, own: float, cases: int) -> np.ndarray:
    """[runs, cases] speeds of an A/A series (level 1)."""
    runs = WINDOW + max(AA_CHECKS, DETECT_WITHIN)
    return np.exp(rng.normal(0.0, common, (runs, 1)) + rng.normal(0.0, own, (runs, cases)))


def failing(speeds: np.ndarray, run: int) -> tuple[np.ndarray, np.ndarray]:
    """(each case failing judged alone, each failing judged with the run's other cases) for one
    checked run against the WINDOW runs before it."""
    window = speeds[run - WINDOW : run]
    ids = [str(c) for c in range(speeds.shape[1])]
    series = {c: (window[:, i].tolist(), float(speeds[run, i])) for i, c in enumerate(ids)}
    tests = {c: history_tests("throughput", w, current) for c, (w, current) in series.items()}
    alone = [judge_together({c: tests[c]}, ALPHA, LATEST_ALPHA)[c] for c in ids]
    whole_run = whole_run_tests("throughput", series)
    together = judge_together(tests, ALPHA, LATEST_ALPHA, whole_run)

    def fails(delta: MetricDelta) -> bool:
        """assessment's rule: beyond the threshold and significant."""
        return bool(delta.significant) and delta.worse_pct > THRESHOLD_PCT

    return np.array([fails(d) for d in alone]), np.array([fails(together[c]) for c in ids])


def simulate(task: tuple[str, str, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One series of one setting and step: [checked runs, cases] failing, alone and together."""
    setting, step, cases, seed = task
    common, own = SETTINGS[setting]
    speeds = make_speeds(np.random.default_rng(seed), common, own, cases)
    if step != "A/A":
        stepped = speeds[WINDOW:] if step.endswith("every case") else speeds[WINDOW:, :1]
        stepped *= 1.0 - float(step.split("%")[0]) / 100.0
    checked = range(WINDOW, WINDOW + (AA_CHECKS if step == "A/A" else DETECT_WITHIN))
    alone, together = zip(*(failing(speeds, run) for run in checked))
    return np.array(alone), np.array(together)


def summary(step: str, fails: np.ndarray) -> str:
    """One gate's cell for a [series, checked runs, cases] array of failures."""
    if step == "A/A":
        runs_failing = 100.0 * fails.any(axis=2).mean()
        per_case = 100.0 * fails.mean()
        return f"{runs_failing:5.1f}% of runs fail, {per_case:4.2f} per 100 case checks"
    flagged = fails[:, :, 0] if "one case" in step else fails.any(axis=2)
    hit = flagged.any(axis=1)
    delay = np.argmax(flagged, axis=1)[hit]
    delay_text = f"{np.median(delay):g}" if delay.size else "-"
    return f"{100.0 * hit.mean():5.1f}% detected, median delay {delay_text} runs"


def main(argv: list[str] | None = None) -> int:
    """Simulate every setting and step, then print the side-by-side table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=200, help="series per setting and step")
    parser.add_argument("--cases", type=int, default=24, help="cases per run (smoke: 24)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--setting",
        choices=list(SETTINGS),
        action="append",
        help="noise setting (repeat for several; default all)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    print(
        f"{args.series} series per setting and step, {args.cases} cases a run, window {WINDOW}, "
        f"threshold {THRESHOLD_PCT:g}%, p < {LATEST_ALPHA:g} (CURRENT alone) and p < {ALPHA:g} "
        f"(level of the last runs); detection within {DETECT_WITHIN} runs\n"
    )
    print(f"{'setting':<19} {'step':<18} | {'each case alone':<44} | as one family (the gate)")
    with ProcessPoolExecutor(args.workers) as pool:
        for setting in args.setting or SETTINGS:
            for step in STEPS:
                # from the setting's noise and the step: a row repeats whichever others run
                common, own = SETTINGS[setting]
                seq = np.random.SeedSequence(
                    [args.seed, round(common * 1e4), round(own * 1e4), STEPS.index(step)]
                )
                tasks = [
                    (setting, step, args.cases, int(s)) for s in seq.generate_state(args.series)
                ]
                results = list(pool.map(simulate, tasks, chunksize=4))
                alone = np.array([r[0] for r in results])
                together = np.array([r[1] for r in results])
                print(
                    f"{setting:<19} {step:<18} | {summary(step, alone):<44} | "
                    f"{summary(step, together)}",
                    flush=True,
                )
    print(f"\ntook {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

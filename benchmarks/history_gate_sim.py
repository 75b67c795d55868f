"""The history gate against today's one-baseline gate on synthetic series with known steps.

    python benchmarks/history_gate_sim.py [--series N] [--noise F ...] [--seed S] [--workers W]

Each series is RUNS runs of one case. A run's speed is the case's level times a between-run
factor exp(N(0, sigma)) (sigma 2%: a dedicated GPU runner; 10%: a shared CPU or a host-bound
GPU case, docs/ci.md), and its STEPS per-step times scatter 2% around that (steps inside a run
are tight, as on the H200). Stepped series lose `step` of their throughput from run STEP_AT
on; A/A series never change. Both gates use the real code and the same throughput threshold:
  * one-baseline (`check --baseline`): every run against the first run of the series (a saved
    baseline), Mann-Whitney U on the per-step samples (p < 0.002) and the threshold
    (bench.analysis.compare.timing_deltas);
  * history (`check --history`): every run against the last WINDOW earlier runs
    (bench.analysis.history.history_delta: CURRENT outside their spread, or the level of the
    last 4 runs a step) and the threshold; with fewer than 5 earlier runs the one-baseline rule
    against the latest, as the gate does.
Reported per noise level: false positives per 100 runs (A/A series, runs once the window is
full), detection rate (a step flagged within DETECT_WITHIN runs from its first run) and the
median delay in runs (0: the first run after the step is flagged), and the false change points
per 100 runs the trend page would mark on A/A series. Then the comparison at equal detection of
10% steps: the history gate's detection rate at the configured threshold is the target, and
each gate is shown at the threshold that reaches it with the fewest false positives; the ratio
of their false positives comes with a 95% bootstrap interval over series (the one-baseline
gate's false alarms cluster, every run after a lucky baseline, so the ratio needs thousands of
series: with 1,000 its interval spans 0.2-0.5).

Each configuration's series come from (seed, noise, step), so a run of one noise level repeats
that level of a full run. The default (3,000 series) takes about 11 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from bench.analysis.changepoints import ALPHA, LATEST_ALPHA, change_points
from bench.analysis.compare import CompareOptions, timing_deltas
from bench.analysis.history import MIN_HISTORY_RUNS, history_delta
from bench.results.schema import Case, CaseResult, Throughput, Timing

RUNS = 50
STEP_AT = 30
WINDOW = 20
STEPS = 30  # timed steps per run
WITHIN_RUN_CV = 0.02
DETECT_WITHIN = 5
THRESHOLD_PCT = 5.0  # suites/ci.toml's throughput threshold
NOISES = (0.02, 0.10)
STEP_SIZES = (0.03, 0.05, 0.10, 0.20)
OPTIONS = CompareOptions(bootstrap_resamples=0)
GATE_ALPHA = {"alpha": ALPHA, "latest": LATEST_ALPHA}  # the gate's defaults; flags override
CASE = Case("gpt2-124m", "gpt2", "train", "bf16", 8, 512, "cuda:0")


@dataclass
class Checks:
    """One gate's checks of some runs of many series: how much worse (percent) each run was
    judged, -inf where the gate found it not significant (so a run fails at threshold T where
    its value exceeds T: assessment's rule, beyond the threshold and significant or untested)."""

    worse_pct: np.ndarray  # [series, runs]

    def fails(self, threshold_pct: float) -> np.ndarray:
        return self.worse_pct > threshold_pct

    def take(self, rows: np.ndarray) -> Checks:
        return Checks(self.worse_pct[rows])


def failing_worse(worse_pct: float, significant: bool | None) -> float:
    """A check as the number Checks keeps."""
    return -math.inf if significant is False else worse_pct


def make_series(rng: np.random.Generator, sigma: float, step: float) -> list[CaseResult]:
    """RUNS results of one case: between-run noise, tight steps, a step at STEP_AT."""
    results = []
    for run in range(RUNS):
        speed = math.exp(rng.normal(0.0, sigma)) * ((1.0 - step) if run >= STEP_AT else 1.0)
        step_s = 0.05 / speed * np.exp(rng.normal(0.0, WITHIN_RUN_CV, STEPS))
        timing = Timing.from_samples(step_s.tolist(), 10, "cuda-events")
        throughput = Throughput.from_median(8, 512, timing.median_s)
        results.append(CaseResult(CASE, "ok", timing=timing, throughput=throughput))
    return results


def one_baseline(base: CaseResult, current: CaseResult) -> float:
    delta = timing_deltas(base, current, OPTIONS)["throughput"]
    return failing_worse(delta.worse_pct, delta.significant)


def history(series: list[CaseResult], run: int) -> float:
    earlier = series[max(0, run - WINDOW) : run]
    if len(earlier) < MIN_HISTORY_RUNS:
        return one_baseline(earlier[-1], series[run])
    values = [r.samples_per_s for r in earlier]
    delta = history_delta(
        "throughput", values, series[run].samples_per_s, GATE_ALPHA["alpha"], GATE_ALPHA["latest"]
    )
    return failing_worse(delta.worse_pct, delta.significant)


def judge(series: list[CaseResult], runs: range) -> dict[str, list[float]]:
    """Both gates' checks of the given runs of one series."""
    return {
        "one-baseline": [one_baseline(series[0], series[r]) for r in runs],
        "history": [history(series, r) for r in runs],
    }


def false_positives(checks: Checks, threshold: float) -> float:
    """Failing runs per 100 checked (A/A: every failure is false)."""
    return 100.0 * float(checks.fails(threshold).mean())


def detection(checks: Checks, threshold: float) -> tuple[float, float | None]:
    """(share of series flagged within DETECT_WITHIN runs of the step, median delay in runs)."""
    fails = checks.fails(threshold)
    flagged = fails.any(axis=1)
    delays = np.argmax(fails, axis=1)[flagged]
    return float(flagged.mean()), (float(np.median(delays)) if delays.size else None)


THRESHOLDS_PCT = np.arange(1.0, 80.0, 0.5)


def best_at_detection(
    stepped: Checks, aa: Checks, target_rate: float
) -> tuple[float, float, float] | None:
    """The gate's fewest false positives per 100 runs among the thresholds (1% to 80%, by 0.5)
    at which it still detects at least `target_rate` of the steps: (false positives, threshold,
    detection rate); None where no threshold detects that many."""
    worse = stepped.worse_pct[..., None]
    rates = (worse > THRESHOLDS_PCT).any(axis=1).mean(axis=0)
    fps = 100.0 * (aa.worse_pct[..., None] > THRESHOLDS_PCT).mean(axis=(0, 1))
    ok = np.flatnonzero(rates + 1e-12 >= target_rate)
    if ok.size == 0:
        return None
    # fewest false positives; of equals, the highest threshold
    best = ok[np.lexsort((-THRESHOLDS_PCT[ok], fps[ok]))[0]]
    return float(fps[best]), float(THRESHOLDS_PCT[best]), float(rates[best])


def equal_detection_ratio(
    stepped: dict[str, Checks], aa: dict[str, Checks]
) -> tuple[float, dict[str, tuple[float, float, float] | None], float]:
    """(the history gate's false positives over the one-baseline gate's at equal detection of
    the steps, each gate's (false positives, threshold, detection), the target detection): the
    target is the history gate's detection at the configured threshold."""
    target, _ = detection(stepped["history"], THRESHOLD_PCT)
    at = {gate: best_at_detection(stepped[gate], aa[gate], target) for gate in aa}
    if at["history"] is None or at["one-baseline"] is None or not at["one-baseline"][0]:
        return math.nan, at, target
    return at["history"][0] / at["one-baseline"][0], at, target


def bootstrap_ratio(
    rng: np.random.Generator, stepped: dict[str, Checks], aa: dict[str, Checks], resamples: int
) -> tuple[float, float]:
    """95% percentile interval of the equal-detection ratio, resampling whole series (a
    series' runs are not independent: the one-baseline gate's alarms share their baseline)."""
    ratios = []
    n_aa, n_step = len(aa["history"].worse_pct), len(stepped["history"].worse_pct)
    for _ in range(resamples):
        rows_aa, rows_step = rng.integers(0, n_aa, n_aa), rng.integers(0, n_step, n_step)
        ratio, _, _ = equal_detection_ratio(
            {g: c.take(rows_step) for g, c in stepped.items()},
            {g: c.take(rows_aa) for g, c in aa.items()},
        )
        ratios.append(ratio)
    low, high = np.nanpercentile(ratios, [2.5, 97.5])
    return float(low), float(high)


def simulate_series(task: tuple[float, float, int]) -> tuple[dict[str, list[float]], int]:
    """One series (noise, step, seed) judged by both gates: A/A series on every run once the
    window is full, stepped ones on the DETECT_WITHIN runs from the step; and, for A/A series,
    the change points the trend page would mark."""
    sigma, step, seed = task
    series = make_series(np.random.default_rng(seed), sigma, step)
    if step == 0.0:
        checks = judge(series, range(WINDOW, RUNS))
        return checks, len(change_points([r.samples_per_s for r in series]))
    return judge(series, range(STEP_AT, STEP_AT + DETECT_WITHIN)), 0


def run_configuration(
    pool: ProcessPoolExecutor, sigma: float, step: float, seeds: list[int]
) -> tuple[dict[str, Checks], int]:
    """Every series of one (noise, step) configuration, through the pool."""
    tasks = [(sigma, step, seed) for seed in seeds]
    per_gate: dict[str, list[list[float]]] = {"one-baseline": [], "history": []}
    false_cps = 0
    for checks, cps in pool.map(simulate_series, tasks, chunksize=8):
        for gate, values in checks.items():
            per_gate[gate].append(values)
        false_cps += cps
    return {g: Checks(np.array(v)) for g, v in per_gate.items()}, false_cps


def seeds(args: argparse.Namespace, sigma: float, step: float) -> list[int]:
    """The series' seeds of one configuration: the same for it whichever others run."""
    sequence = np.random.SeedSequence([args.seed, round(sigma * 1e4), round(step * 1e4)])
    return [int(s) for s in sequence.generate_state(args.series)]


def main(argv: list[str] | None = None) -> int:
    """Simulate, then print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=3000, help="series per configuration")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--alpha", type=float, default=ALPHA, help="the gate's p for the level of the last runs"
    )
    parser.add_argument(
        "--latest-alpha", type=float, default=LATEST_ALPHA, help="the gate's p for CURRENT alone"
    )
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap of the ratio")
    parser.add_argument(
        "--noise",
        type=float,
        action="append",
        help=f"between-run noise (fraction; repeat for several; default {NOISES})",
    )
    args = parser.parse_args(argv)
    GATE_ALPHA.update(alpha=args.alpha, latest=args.latest_alpha)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    print(
        f"{args.series} series of {RUNS} runs per configuration; step at run {STEP_AT}; window "
        f"{WINDOW}; {STEPS} steps per run at {WITHIN_RUN_CV:.0%} CV; threshold "
        f"{THRESHOLD_PCT:g}% for both gates (history: p < {args.latest_alpha:g} for CURRENT "
        f"alone, p < {args.alpha:g} for the level of the last runs); detection within "
        f"{DETECT_WITHIN} runs\n"
    )
    header = (
        f"{'noise':>5} {'step':>5} | {'one-baseline: detect':>20} {'delay':>5} {'FP/100':>7} | "
        f"{'history: detect':>15} {'delay':>5} {'FP/100':>7}"
    )
    with ProcessPoolExecutor(args.workers) as pool:
        for sigma in args.noise or NOISES:
            print(header)
            aa, false_cps = run_configuration(pool, sigma, 0.0, seeds(args, sigma, 0.0))
            fp = {gate: false_positives(c, THRESHOLD_PCT) for gate, c in aa.items()}
            print(
                f"{sigma:5.0%} {'A/A':>5} | {'':>20} {'':>5} {fp['one-baseline']:7.2f} | "
                f"{'':>15} {'':>5} {fp['history']:7.2f}",
                flush=True,
            )
            ten_pct: dict[str, Checks] = {}
            for step in STEP_SIZES:
                stepped, _ = run_configuration(pool, sigma, step, seeds(args, sigma, step))
                cells = []
                for gate in ("one-baseline", "history"):
                    rate, delay = detection(stepped[gate], THRESHOLD_PCT)
                    width = 20 if gate == "one-baseline" else 15
                    delay_text = "-" if delay is None else f"{delay:g}"
                    cells.append(f"{rate:{width}.0%} {delay_text:>5} {fp[gate]:7.2f}")
                print(f"{sigma:5.0%} {step:5.0%} | {cells[0]} | {cells[1]}", flush=True)
                if step == 0.10:
                    ten_pct = stepped
            # Equal detection: the history gate's rate at the configured threshold; each gate
            # at the threshold that reaches it with the fewest false positives.
            ratio, at, target = equal_detection_ratio(ten_pct, aa)
            if at["history"] and at["one-baseline"]:
                (fp_h, t_h, d_h), (fp_b, t_b, d_b) = at["history"], at["one-baseline"]
                low, high = bootstrap_ratio(rng, ten_pct, aa, args.resamples)
                print(
                    f"  at equal detection of 10% steps (>= {target:.1%}): history {fp_h:.2f} "
                    f"false positives per 100 runs (threshold {t_h:g}%, detects {d_h:.1%}), "
                    f"one-baseline {fp_b:.2f} (threshold {t_b:g}%, detects {d_b:.1%}): ratio "
                    f"{ratio:.2f} (95% bootstrap interval over series {low:.2f}-{high:.2f})"
                )
            print(
                f"  change points the trend page marks on A/A series: "
                f"{100.0 * false_cps / (args.series * RUNS):.2f} per 100 runs\n",
                flush=True,
            )
    print(f"took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The history gate against today's one-baseline gate on synthetic series with known steps.

    python benchmarks/history_gate_sim.py [--series N] [--seed S]

Each series is RUNS runs of one case. A run's speed is the case's level times a between-run
factor exp(N(0, sigma)) (sigma 2%: a dedicated GPU runner; 10%: a shared CPU or a host-bound
GPU case, docs/ci.md), and its STEPS per-step times scatter 2% around that (steps inside a run
are tight, as on the H200). Stepped series lose `step` of their throughput from run STEP_AT
on; A/A series never change. Both gates use the real code and the same throughput threshold:
  * one-baseline (`check --baseline`): every run against the first run of the series (a saved
    baseline), Mann-Whitney U on the per-step samples (p < 0.002) and the threshold
    (bench.analysis.compare.timing_deltas);
  * history (`check --history`): every run against the last WINDOW earlier runs, the spread test
    and the threshold (bench.analysis.history.history_delta); with fewer than 5 earlier runs the
    one-baseline rule against the latest, as the gate does.
Reported per noise level: false positives per 100 runs (A/A series, runs once the window is
full), detection rate (a step flagged within DETECT_WITHIN runs from its first run) and the
median delay in runs (0: the first run after the step is flagged), and the false change points
per 100 runs the trend page would mark on A/A series. Then the comparison at equal detection of
10% steps: the history gate's detection rate at the configured threshold is the target, and
each gate is shown at the threshold that reaches it with the fewest false positives.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
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
class Check:
    """One run judged by one gate: how much worse (percent) and whether significant."""

    worse_pct: float
    significant: bool | None

    def fails(self, threshold_pct: float) -> bool:
        return self.worse_pct > threshold_pct and self.significant is not False


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


def one_baseline(base: CaseResult, current: CaseResult) -> Check:
    delta = timing_deltas(base, current, OPTIONS)["throughput"]
    return Check(delta.worse_pct, delta.significant)


def history(series: list[CaseResult], run: int) -> Check:
    earlier = series[max(0, run - WINDOW) : run]
    if len(earlier) < MIN_HISTORY_RUNS:
        return one_baseline(earlier[-1], series[run])
    values = [r.samples_per_s for r in earlier]
    delta = history_delta(
        "throughput", values, series[run].samples_per_s, GATE_ALPHA["alpha"], GATE_ALPHA["latest"]
    )
    return Check(delta.worse_pct, delta.significant)


def judge(series: list[CaseResult], runs: range) -> dict[str, list[Check]]:
    """Both gates' checks of the given runs of one series."""
    return {
        "one-baseline": [one_baseline(series[0], series[r]) for r in runs],
        "history": [history(series, r) for r in runs],
    }


def false_positives(checks: list[list[Check]], threshold: float) -> float:
    """Failing runs per 100 checked (A/A: every failure is false)."""
    flat = [c for series in checks for c in series]
    return 100.0 * sum(c.fails(threshold) for c in flat) / len(flat)


def detection(checks: list[list[Check]], threshold: float) -> tuple[float, float | None]:
    """(share of series flagged within DETECT_WITHIN runs of the step, median delay in runs)."""
    delays = []
    for series in checks:
        delay = next((i for i, c in enumerate(series) if c.fails(threshold)), None)
        if delay is not None:
            delays.append(delay)
    rate = len(delays) / len(checks)
    return rate, (statistics.median(delays) if delays else None)


def best_at_detection(
    stepped: list[list[Check]], aa: list[list[Check]], target_rate: float
) -> tuple[float, float, float] | None:
    """The gate's fewest false positives per 100 runs among the thresholds (1% to 80%, by 0.5)
    at which it still detects at least `target_rate` of the steps: (false positives, threshold,
    detection rate); None where no threshold detects that many."""
    best = None
    for threshold in np.arange(1.0, 80.0, 0.5):
        rate, _ = detection(stepped, float(threshold))
        if rate + 1e-12 < target_rate:
            continue
        fp = false_positives(aa, float(threshold))
        if best is None or fp < best[0] or (fp == best[0] and threshold > best[1]):
            best = (fp, float(threshold), rate)
    return best


def main(argv: list[str] | None = None) -> int:
    """Simulate, then print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=200, help="series per configuration")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument(
        "--alpha", type=float, default=ALPHA, help="the gate's p for a step of 2+ runs"
    )
    parser.add_argument(
        "--latest-alpha", type=float, default=LATEST_ALPHA, help="the gate's p for CURRENT alone"
    )
    args = parser.parse_args(argv)
    GATE_ALPHA.update(alpha=args.alpha, latest=args.latest_alpha)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    print(
        f"{args.series} series of {RUNS} runs per configuration; step at run {STEP_AT}; window "
        f"{WINDOW}; {STEPS} steps per run at {WITHIN_RUN_CV:.0%} CV; threshold "
        f"{THRESHOLD_PCT:g}% for both gates; detection within {DETECT_WITHIN} runs\n"
    )
    header = (
        f"{'noise':>5} {'step':>5} | {'one-baseline: detect':>20} {'delay':>5} {'FP/100':>7} | "
        f"{'history: detect':>15} {'delay':>5} {'FP/100':>7}"
    )
    for sigma in NOISES:
        print(header)
        aa_checks: dict[str, list[list[Check]]] = {"one-baseline": [], "history": []}
        false_cps = 0
        for _ in range(args.series):
            series = make_series(rng, sigma, 0.0)
            for gate, checks in judge(series, range(WINDOW, RUNS)).items():
                aa_checks[gate].append(checks)
            false_cps += len(change_points([r.samples_per_s for r in series]))
        fp = {gate: false_positives(c, THRESHOLD_PCT) for gate, c in aa_checks.items()}
        print(
            f"{sigma:5.0%} {'A/A':>5} | {'':>20} {'':>5} {fp['one-baseline']:7.2f} | "
            f"{'':>15} {'':>5} {fp['history']:7.2f}"
        )
        ten_pct: dict[str, list[list[Check]]] = {}
        for step in STEP_SIZES:
            stepped: dict[str, list[list[Check]]] = {"one-baseline": [], "history": []}
            for _ in range(args.series):
                series = make_series(rng, sigma, step)
                window = range(STEP_AT, STEP_AT + DETECT_WITHIN)
                for gate, checks in judge(series, window).items():
                    stepped[gate].append(checks)
            cells = []
            for gate in ("one-baseline", "history"):
                rate, delay = detection(stepped[gate], THRESHOLD_PCT)
                width = 20 if gate == "one-baseline" else 15
                delay_text = "-" if delay is None else f"{delay:g}"
                cells.append(f"{rate:{width}.0%} {delay_text:>5} {fp[gate]:7.2f}")
            print(f"{sigma:5.0%} {step:5.0%} | {cells[0]} | {cells[1]}")
            if step == 0.10:
                ten_pct = stepped
        # Equal detection: the history gate's rate at the configured threshold; each gate at
        # the threshold that reaches it with the fewest false positives.
        target, _ = detection(ten_pct["history"], THRESHOLD_PCT)
        at = {g: best_at_detection(ten_pct[g], aa_checks[g], target) for g in aa_checks}
        if at["history"] and at["one-baseline"]:
            (fp_h, t_h, d_h), (fp_b, t_b, d_b) = at["history"], at["one-baseline"]
            ratio = fp_h / fp_b if fp_b else math.nan
            print(
                f"  at equal detection of 10% steps (>= {target:.0%}): history {fp_h:.2f} false "
                f"positives per 100 runs (threshold {t_h:g}%, detects {d_h:.0%}), one-baseline "
                f"{fp_b:.2f} (threshold {t_b:g}%, detects {d_b:.0%}): ratio {ratio:.2f}"
            )
        print(
            f"  change points the trend page marks on A/A series: "
            f"{100.0 * false_cps / (args.series * RUNS):.2f} per 100 runs\n"
        )
    print(f"took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

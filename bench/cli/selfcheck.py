"""`mpbench selfcheck`: prove mpbench's measurement on this machine, the first thing to run on
a new one. Also `mpbench selfcheck overhead`, the timed-loop check alone with more rounds.

    mpbench selfcheck [--device D] [--suite SUITE | --no-suite] [--out DIR]
    mpbench selfcheck overhead [--model gpt2-tiny] [--workload train] [--rounds 16] ...

The device checks (bench.engine.selfcheck), in a process of their own, print PASS, FAIL or
SKIP each as they finish: identity, timer against the host clock, memory window against a known
allocation, every precision mode (GPT-2 training, GPT-2 and BERT inference under CUDA's
sync-debug "error" mode, and proof the mode took effect), the same for two compiled steps,
matmul TFLOP/s per dtype between half the peak table's figure and the peak, copy bandwidth, the
telemetry sampler's and the timed loop's overhead. GPU-only checks are SKIPs on a CPU, with the reason.
Then a suite runs with its report (`ci` on a GPU, `smoke` on a CPU, where `ci` would take
an hour), shortened to at most 10 timed steps and a 5-step numerics pass per case unless
--full-suite, and two checks read it back: every case ran (or was skipped with a reason), and fp32
against itself diverges by exactly 0 (the numerics pass is deterministic here).

Everything goes to DIR/selfcheck.json (default reports/selfcheck-<timestamp>/), the suite's run
to DIR/run. Exit 1 when any check FAILs, else 0.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from bench.errors import EXIT_OK, EXIT_REGRESSION
from bench.results.files import write_json
from bench.results.rundir import load_run
from bench.views.format import fmt_duration
from bench.views.progress import stderr_console

STYLES = {"PASS": "bold green", "FAIL": "bold red", "SKIP": "yellow"}
SELFCHECK_FILE = "selfcheck.json"


def print_check(console: Console, result: Any) -> None:
    """'PASS  timer  perf-counter: ...' in the status colour."""
    line = Text(f"{result.status:4}  ", style=STYLES.get(result.status, ""))
    line.append(f"{result.name:20} ", style="bold")
    line.append(result.detail)
    console.print(line, highlight=False)


def cmd_selfcheck(args: argparse.Namespace) -> int:
    """`mpbench selfcheck`: the device checks, then a suite and its report."""
    from bench.cli.run import _estimate, _sweep
    from bench.engine.device import resolve_device
    from bench.engine.executors import ExecutionOptions, quiet_transformers
    from bench.engine.selfcheck import (
        measured_rates,
        run_device_checks_in_child,
        shortened,
        suite_checks,
        tally,
    )
    from bench.engine.session import RunOptions
    from bench.engine.suite import default_suite_name, load_suite

    quiet_transformers()
    device = resolve_device(args.device)
    # Nothing here makes the GPU current: the device checks run in a process of their own and
    # the suite's cases in workers, so this process holds no CUDA context (and no GPU memory)
    # while they run.
    suite = None
    if not args.no_suite:  # checked before anything runs
        suite = load_suite(args.suite or ("ci" if device.is_cuda else "smoke"))
        if not args.full_suite:
            suite = shortened(suite)
    out = args.out or Path("reports") / f"selfcheck-{datetime.now():%Y%m%d-%H%M%S}"
    console = stderr_console()
    console.print(f"mpbench selfcheck on {device.name} ({device.product_name()}) -> {out}")
    results = run_device_checks_in_child(device.name, lambda r: print_check(console, r))
    run_dir = None
    if suite is not None:
        run_dir = out / "run"
        timing = suite.timing
        console.print(
            f"suite {suite.name} ({default_suite_name(device.type)} is this device's default): "
            f"{timing.iterations} timed steps per case"
            + (
                ""
                if args.full_suite
                else " (at most; shortened for selfcheck, --full-suite for the suite's own)"
            )
        )
        options = RunOptions(ExecutionOptions(isolate="model"))
        estimate = _estimate(suite, device, "model", rates=measured_rates(results))
        console.print(
            f"estimated {fmt_duration(estimate.total_s)} ({estimate.rates_line()})",
            highlight=False,
        )
        code = _sweep(suite, device, run_dir, options, console, True, estimate)
        for result in suite_checks(load_run(run_dir), code):
            results.append(result)
            print_check(console, result)
    counts = tally(results)
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / SELFCHECK_FILE,
        {
            "device": device.name,
            "device_name": device.product_name(),
            "passed": not counts.failed,
            "checks": [r.to_dict() for r in results],
            "run": str(run_dir) if run_dir else None,
        },
    )
    console.print(
        Text(
            f"selfcheck {counts.verdict}: {counts.line()}; {out / SELFCHECK_FILE}",
            style=STYLES[counts.verdict],
        )
    )
    return EXIT_REGRESSION if counts.failed else EXIT_OK


def cmd_overhead(args: argparse.Namespace) -> int:
    """`mpbench selfcheck overhead`: print the ratio and its spread."""
    from bench.engine.device import resolve_device
    from bench.engine.executors import quiet_transformers
    from bench.engine.selfcheck import OVERHEAD_LIMIT, loop_overhead, overhead_suite

    quiet_transformers()
    device = resolve_device(args.device)
    device.activate()
    suite = overhead_suite(args.model, args.workload, args.precision, args.batch_size, args.seq_len)
    result = loop_overhead(device, suite, args.rounds, args.steps, args.warmup)
    q1, q3 = result.iqr
    print(f"case: {result.case_id} on {device.name}; {args.rounds} rounds x {args.steps} steps")
    print(f"mpbench median step:      {result.mpbench_median_s * 1e3:9.3f} ms")
    print(f"hand-written median step: {result.hand_median_s * 1e3:9.3f} ms")
    print(
        f"median per-round ratio mpbench / hand-written: {result.ratio:.4f} "
        f"(IQR {q1:.4f}-{q3:.4f}; target <= {OVERHEAD_LIMIT})"
    )
    if args.json:
        print(json.dumps({"ratio": result.ratio, "round_ratios": result.round_ratios}))
    return EXIT_OK


def register(sub: Any) -> None:
    """Add `mpbench selfcheck` (and `selfcheck overhead`) to the parser."""
    parser = sub.add_parser(
        "selfcheck",
        help="prove mpbench's measurement on this machine: PASS/FAIL per check, then a suite",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--suite", help="the suite to run after the checks (default: ci on a GPU, smoke on a CPU)"
    )
    which.add_argument("--no-suite", action="store_true", help="the device checks only")
    parser.add_argument("--out", type=Path, help="where selfcheck.json and the run go")
    parser.add_argument(
        "--full-suite",
        action="store_true",
        help="run the suite with its own [timing] and numerics steps (default: at most 10 timed steps "
        "and a 5-step numerics pass per case, no fp64 reference: enough to prove the pipeline)",
    )
    parser.set_defaults(handler=cmd_selfcheck)
    checks = parser.add_subparsers(dest="check", metavar="CHECK")
    ov = checks.add_parser("overhead", help="mpbench's timed loop vs a hand-written loop, alone")
    ov.add_argument("--model", default="gpt2-tiny")
    ov.add_argument("--workload", default="train", choices=["train", "infer"])
    ov.add_argument("--precision", default="fp32")
    ov.add_argument("--batch-size", type=int, default=8)
    ov.add_argument("--seq-len", type=int, default=64)
    ov.add_argument("--device", default="auto")
    ov.add_argument("--rounds", type=int, default=16)
    ov.add_argument("--steps", type=int, default=6)
    ov.add_argument("--warmup", type=int, default=3)
    ov.add_argument("--json", action="store_true", help="also print the ratios as JSON")
    ov.set_defaults(handler=cmd_overhead)

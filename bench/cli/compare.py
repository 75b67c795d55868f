"""`mpbench compare`, `mpbench check` and `mpbench baseline`: argparse registration and handlers.

bench.cli calls `register(subparsers)`; each parser sets `handler`, which takes the parsed
arguments and returns the exit code. Inputs are read by bench.results.inputs, judged by
bench.analysis.assessment, and shown by bench.views (terminal, Markdown, JSON, HTML page, JUnit).
Bad input raises MpbenchError (one line, exit 2).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from bench.analysis.assessment import Assessment, assess, run_check
from bench.analysis.compare import Comparison, compare_runs
from bench.analysis.history import DEFAULT_WINDOW_RUNS, MIN_HISTORY_RUNS, check_history
from bench.analysis.thresholds import (
    CheckConfig,
    parse_threshold_flag,
    resolve_config,
    suite_check_table,
)
from bench.cli.output import write_file, write_output
from bench.errors import MpbenchError, ResultsError
from bench.results.baseline import DEFAULT_DIR, is_baseline_dir, save_baseline
from bench.results.history import HistoryStore
from bench.results.inputs import INPUT_HELP, load_input, load_json_input
from bench.results.rundir import Run
from bench.views.compare_page import render_page
from bench.views.junit import write_junit
from bench.views.markdown import comparison_markdown
from bench.views.terminal import print_comparison

CHECK_EPILOG = """\
exit status:
  0  no regression
  1  regression: a gated metric worse than its threshold and significant (Mann-Whitney U on
     the per-step samples), a status change for the worse, worse numerics (a worse verdict, a
     numerics pass that errored or is missing where the baseline had one), or a case that was
     ok in the baseline and is missing now; with --fail-on-improvement, also improvements
  2  usage or input error: unreadable or corrupt files, a baseline recorded on a different
     device model (see --allow-device-mismatch), runs with no case in common, timings taken by
     different methods (CUDA events vs a plain pytest-benchmark timer)
  3  an output file (--junit, --markdown, --json, --html) could not be written

thresholds come from --threshold, else the [check] table of CURRENT's suite.toml (else the
baseline's), else the defaults: throughput=-10 peak_memory=10 divergence=50 (percent;
step_time is off); on CPU runs throughput=-30 and peak memory is not gated (when it is, a
resident-set peak must also at least double or halve to count).

with --history, throughput, step time and energy regress when worse than their threshold and
a step, not between-run noise, in the series of the last --window runs with CURRENT appended:
CURRENT outside their spread (t prediction interval, p < --alpha), or the level of the last 4
runs a step from the runs before them (Student's t-test, p < 0.01; the change judged is that
level's); a step 5 runs old is the new normal. A run's cases are judged together: each test's
p-values are adjusted across them (Benjamini-Hochberg), and where the run's median case is
outside the spread of the earlier runs' medians, every case that moved that way is too. On CPU
runs the throughput default is then -10 (the spread test measures the noise the -30 was for).
Status, numerics and peak memory are judged against the latest of them as with --baseline.
Each failing case names its last good run and what changed since.
"""


# ---------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------


def _threshold_arg(text: str) -> tuple[str, float | None]:
    """argparse type for --threshold METRIC=PCT."""
    try:
        return parse_threshold_flag(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _alpha_arg(text: str) -> float:
    """argparse type for --alpha: a p-value in (0, 1)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a p-value between 0 and 1, got {text!r}")
    return value


def _add_gate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threshold",
        action="append",
        type=_threshold_arg,
        default=[],
        metavar="METRIC=PCT",
        help="percent change that counts, per metric: throughput, step_time, peak_memory, "
        "divergence (e.g. throughput=-5, peak_memory=10, divergence=off); repeatable",
    )
    parser.add_argument(
        "--alpha",
        type=_alpha_arg,
        help="p-value below which a timing change is significant (default 0.002)",
    )


def _add_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--markdown",
        nargs="?",
        const="-",
        metavar="FILE",
        help="write a Markdown summary (for CI job summaries and PR comments) to FILE, or to "
        "stdout without FILE",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="write the full comparison as JSON to FILE, or to stdout without FILE",
    )
    parser.add_argument(
        "--html", type=Path, metavar="FILE", help="write a self-contained comparison page"
    )


def register(subparsers: Any) -> None:
    """Add the compare, check and baseline subcommands to the `mpbench` parser."""
    compare = subparsers.add_parser(
        "compare",
        help="compare two runs case by case (ratios, significance)",
        description="Compare two runs: cases are matched by id; every metric gets a ratio "
        "CURRENT/BASE, its direction, and whether the change is significant (Mann-Whitney U "
        "on the per-step samples). Cases found in one run only are listed. Runs on different "
        "devices (A100 vs H100) can be compared. Always exits 0 unless the input is bad (2) or an "
        "output file cannot be written (3).",
    )
    compare.add_argument("base", metavar="BASE", help=INPUT_HELP)
    compare.add_argument("current", metavar="CURRENT", help=INPUT_HELP)
    _add_gate_args(compare)
    _add_output_args(compare)
    compare.set_defaults(handler=cmd_compare)

    check = subparsers.add_parser(
        "check",
        help="CI gate: fail (exit 1) when CURRENT regressed against a baseline",
        description="Check a run against a baseline recorded on the same device model, or "
        "against the history of earlier runs of its device model and suite (--history).",
        epilog=CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("current", metavar="CURRENT", help=INPUT_HELP)
    against = check.add_mutually_exclusive_group(required=True)
    against.add_argument(
        "--baseline",
        metavar="BASE",
        help=INPUT_HELP + "; or a directory of baselines, from which the one for CURRENT's "
        "device is picked",
    )
    against.add_argument(
        "--history",
        nargs="?",
        const="",
        metavar="URL",
        help="judge CURRENT against the last --window runs of its device model and suite in "
        "the history store (an SQLite file or postgresql://...; without URL: $MPBENCH_DB, else "
        "reports/history.db): a change counts beyond its threshold and as a step, not "
        "between-run noise; with fewer than 5 earlier runs, the one-baseline rule against the "
        "latest",
    )
    check.add_argument(
        "--window",
        type=_window_arg,
        default=DEFAULT_WINDOW_RUNS,
        metavar="N",
        help=f"with --history: how many earlier runs to judge against (default "
        f"{DEFAULT_WINDOW_RUNS}; the history gate needs {MIN_HISTORY_RUNS})",
    )
    check.add_argument(
        "--commit",
        metavar="SHA",
        help="with --history: CURRENT's git commit, for what changed since the last good run",
    )
    _add_gate_args(check)
    check.add_argument(
        "--fail-on-improvement",
        action="store_true",
        help="also fail on improvements beyond a threshold (the baseline is stale)",
    )
    check.add_argument(
        "--allow-device-mismatch",
        action="store_true",
        help="check against a baseline from a different GPU (or CPU) model instead of refusing",
    )
    check.add_argument(
        "--ignore-numerics",
        action="store_true",
        help="do not gate numerics (verdicts, errored or missing numerics passes); the output "
        "says so. A suite with [numerics] enabled = false is not gated either",
    )
    check.add_argument(
        "--junit", type=Path, metavar="FILE", help="write JUnit XML: one test case per case"
    )
    _add_output_args(check)
    check.set_defaults(handler=cmd_check)

    baseline = subparsers.add_parser(
        "baseline",
        help="save and list baselines for `check` (one file per device model)",
        description="Baselines are run results frozen for `mpbench check`, one JSON file per "
        "device model (e.g. baselines/nvidia-h100-80gb-hbm3.json).",
    )
    actions = baseline.add_subparsers(dest="baseline_action", metavar="ACTION", required=True)
    save = actions.add_parser(
        "save",
        help="store a run as the baseline for its device",
        description="Store RUN_DIR as the baseline for the device it ran on, as "
        "DIR/<device>.json (replacing the previous one). Commit the file.",
    )
    save.add_argument("run", metavar="RUN_DIR", help=INPUT_HELP)
    save.add_argument(
        "--to",
        type=Path,
        default=Path(DEFAULT_DIR),
        metavar="DIR",
        help=f"baselines directory (default: {DEFAULT_DIR})",
    )
    save.set_defaults(handler=cmd_baseline_save)
    lst = actions.add_parser("list", help="list the baselines in a directory")
    lst.add_argument(
        "dir",
        nargs="?",
        type=Path,
        default=Path(DEFAULT_DIR),
        metavar="DIR",
        help="(default: baselines)",
    )
    lst.set_defaults(handler=cmd_baseline_list)


# ---------------------------------------------------------------------------------------------
# Handlers
# ---------------------------------------------------------------------------------------------


def _config(
    args: argparse.Namespace, current: Run, base: Run, current_ref: str, base_ref: str
) -> CheckConfig:
    """Thresholds: flags, else CURRENT's [check] table, else the baseline's, else defaults."""
    tables = [suite_check_table(current, current_ref), suite_check_table(base, base_ref)]
    return resolve_config(
        tables,
        args.threshold,
        getattr(args, "fail_on_improvement", False),
        args.alpha,
        current.identity.kind,
        gate_numerics=not getattr(args, "ignore_numerics", False),
    )


def _baseline_label(ref: str, run: Run) -> str:
    """A picked baseline is named by its file, anything else by what the user typed."""
    if is_baseline_dir(ref) and run.source == "baseline":
        return str(Path(ref) / f"{run.identity.slug}.json")
    return ref


def _compare(
    args: argparse.Namespace, base_ref: str, base_role: str
) -> tuple[Comparison, CheckConfig]:
    """Read CURRENT and the baseline, resolve the thresholds, and compare them."""
    current = load_input(args.current, "CURRENT")
    base = load_input(base_ref, base_role, current.env)
    base_label = _baseline_label(base_ref, base)
    config = _config(args, current, base, args.current, base_label)
    return compare_runs(base, current, config.options, base_label, args.current), config


def cmd_compare(args: argparse.Namespace) -> int:
    """`mpbench compare BASE CURRENT`: always 0 (2 for bad input)."""
    comparison, config = _compare(args, args.base, "BASE")
    if not comparison.matched:
        raise MpbenchError(
            f"{args.base} and {args.current} have no case in common (different suites?)"
        )
    _emit(args, assess(comparison, config), gate=False)
    return 0


def _window_arg(text: str) -> int:
    """argparse type for --window: a positive number of runs."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of runs, got {text!r}")
    return value


def cmd_check_history(args: argparse.Namespace) -> int:
    """`mpbench check CURRENT --history [URL]`: the gate against the stored runs."""
    current = load_input(args.current, "CURRENT")
    config = resolve_config(
        [suite_check_table(current, args.current)],
        args.threshold,
        args.fail_on_improvement,
        args.alpha,
        current.identity.kind,
        gate_numerics=not args.ignore_numerics,
    )
    with HistoryStore(args.history or None, create=False) as store:
        checked = check_history(current, store, config, args.window, args.current, args.commit)
    if checked.assessment is None:
        for note in checked.notes:
            print(f"mpbench check: {note}")
        return checked.exit_code
    if args.junit is not None:
        write_file(args.junit, lambda p: write_junit(checked.assessment, p))
    _emit(args, checked.assessment, gate=True)
    return checked.exit_code


def cmd_check(args: argparse.Namespace) -> int:
    """`mpbench check CURRENT --baseline BASE`: 0 pass, 1 regression, 2 bad input."""
    if args.history is not None:
        return cmd_check_history(args)
    comparison, config = _compare(args, args.baseline, "--baseline")
    assessment = run_check(comparison, config, args.allow_device_mismatch)
    if args.junit is not None:
        write_file(args.junit, lambda p: write_junit(assessment, p))
    _emit(args, assessment, gate=True)
    return assessment.exit_code


def cmd_baseline_save(args: argparse.Namespace) -> int:
    """`mpbench baseline save RUN_DIR [--to DIR]`."""
    run = load_input(args.run, "RUN_DIR")
    path = save_baseline(run, args.to)
    cases = run.latest()
    ok = sum(r.ok for r in cases)
    print(f"baseline for {run.identity.label}: {path} ({len(cases)} cases, {ok} ok)")
    return 0


def cmd_baseline_list(args: argparse.Namespace) -> int:
    """`mpbench baseline list [DIR]`: one line per baseline file."""
    directory = Path(args.dir)
    if not directory.is_dir():
        raise ResultsError(f"{directory}: no such baselines directory")
    files = sorted(directory.glob("*.json"))
    if not files:
        print(f"{directory}: no baselines")
    for path in files:
        try:
            run = load_json_input(path)
        except MpbenchError as exc:
            print(f"{path.name}: unreadable ({exc})")
            continue
        started = run.env.get("started_at") or "?"
        print(f"{path.name}: {run.identity.label}; {len(run.results)} cases; run {started}")
    return 0


def _emit(args: argparse.Namespace, assessment: Assessment, gate: bool) -> None:
    """Terminal table, then each requested file; '-' means stdout (the table then goes to stderr)."""
    to_stdout = "-" in (args.markdown, args.json)
    print_comparison(assessment, gate, sys.stderr if to_stdout else sys.stdout)
    if args.markdown is not None:
        write_output(args.markdown, comparison_markdown(assessment, gate))
    if args.json is not None:
        data = {"command": "check" if gate else "compare", **assessment.to_dict()}
        write_output(args.json, json.dumps(data, indent=2, allow_nan=False, default=str) + "\n")
    if args.html is not None:
        html = render_page(assessment, gate)
        write_file(args.html, lambda p: p.write_text(html, encoding="utf-8"))

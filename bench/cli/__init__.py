"""The `mpbench` command line: run, list, env (report/compare/check build on the results files).

Bad input (suite files, flags, results files) raises MpbenchError: printed as one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.errors import MpbenchError

EXIT_OK = 0
EXIT_USAGE = 2

LIST_FLAGS = ("models", "workloads", "precisions", "batch_sizes", "seq_lens")


def _comma_list(kind: type) -> Any:
    """argparse type for comma-separated values of `kind` (int or str)."""

    def parse(text: str) -> list[Any]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list, got nothing")
        if kind is int:
            try:
                return [int(item) for item in items]
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"expected comma-separated integers, got {text!r}"
                ) from None
        return items

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="mpbench",
        description="Benchmark GPT- and BERT-style transformers across precision modes: speed, "
        "memory and numerical divergence against fp32.",
    )
    from bench import __version__

    parser.add_argument("--version", action="version", version=f"mpbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a suite and write results (and a report) to a run directory",
        description="Run a suite: every case of models x workloads x precisions x batch sizes x "
        "sequence lengths. Writes env.json, suite.toml and results.jsonl (one line per case, "
        "flushed as each finishes) to the run directory.",
    )
    run.add_argument(
        "suite",
        nargs="?",
        help="suite file (TOML) or built-in name: smoke, standard, ci "
        "(default: smoke on CPU, standard on a GPU)",
    )
    run.add_argument(
        "--out", type=Path, help="run directory (default: reports/<suite>-<timestamp>)"
    )
    run.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    run.add_argument(
        "--models",
        type=_comma_list(str),
        help="replace the suite's models (presets or checkpoint dirs)",
    )
    run.add_argument(
        "--workloads",
        type=_comma_list(str),
        help="replace the suite's workloads (train, infer, generate)",
    )
    run.add_argument(
        "--precisions",
        type=_comma_list(str),
        help="replace the suite's precisions, e.g. fp32,amp_bf16",
    )
    run.add_argument(
        "--batch-sizes", type=_comma_list(int), help="replace the suite's batch sizes, e.g. 1,8,32"
    )
    run.add_argument(
        "--seq-lens", type=_comma_list(int), help="replace the suite's sequence lengths"
    )
    run.add_argument("--data", help='data for the numerics passes: "random" or "text:PATH"')
    run.add_argument("--warmup", type=int, help="warm-up steps per case (excluded from timing)")
    run.add_argument("--iterations", type=int, help="timed steps per case")
    run.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue an interrupted run: run only the cases not yet in RUN_DIR/results.jsonl "
        "(same suite, checked by hash)",
    )
    run.add_argument(
        "--isolate",
        choices=("none", "model", "case"),
        default="model",
        help="where cases run: 'model' (default) one worker process per model, replaced if it "
        "dies; 'case' a fresh worker per case; 'none' in this process (no crash protection)",
    )
    run.add_argument(
        "--case-timeout",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="a case that takes longer is killed and recorded as 'timeout' (default 1800; "
        "needs --isolate model or case)",
    )
    run.add_argument(
        "--no-skip-larger",
        action="store_true",
        help="after an OOM, still run larger batch sizes of the same model/workload/precision "
        "(default: record them as predicted 'oom')",
    )
    run.add_argument(
        "--memory-limit",
        type=float,
        metavar="GIB",
        help="cap each worker's memory (CUDA: per-process fraction of the GPU; CPU: address "
        "space over the worker's start-up size), e.g. to see where a smaller GPU would run out",
    )
    run.add_argument(
        "--find-max-batch",
        action="store_true",
        help="instead of the batch-size sweep, find the largest batch that fits per model, "
        "workload, precision and sequence length (doubling, then bisection); writes "
        "RUN_DIR/max_batch.json. On CPU pair it with --memory-limit",
    )
    run.add_argument(
        "--max-batch-cap",
        type=int,
        default=1024,
        metavar="N",
        help="largest batch size --find-max-batch tries (default 1024)",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no progress display (for CI logs)")
    run.add_argument("--no-report", action="store_true", help="do not render index.html at the end")

    report = sub.add_parser(
        "report",
        help="render the HTML report of a run directory (no re-running)",
        description="Render RUN_DIR/index.html (plus results.csv and summary.md) from "
        "results.jsonl and env.json alone. Also accepts a pytest-benchmark JSON file.",
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (or results file)")
    report.add_argument("--out", type=Path, help="HTML file to write (default RUN_DIR/index.html)")

    from bench.cli.compare import register

    register(sub)  # compare, check, baseline

    lst = sub.add_parser(
        "list", help="models, workloads and precision modes, and what this device supports"
    )
    lst.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")

    env = sub.add_parser("env", help="print the environment that a run records (JSON)")
    env.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")

    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mpbench` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        handler = getattr(args, "handler", None) or COMMANDS[args.command]
        return handler(args)
    except MpbenchError as exc:
        print(f"mpbench: error: {exc}", file=sys.stderr)
        return exc.exit_code


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """`mpbench run`: load the suite, run every case, write results and the report."""
    from bench.engine.device import resolve_device
    from bench.engine.session import RunOptions, find_max_batch_sizes, run_suite
    from bench.engine.suite import default_suite_name, load_suite

    device = resolve_device(args.device)
    if not math.isfinite(args.case_timeout) or args.case_timeout <= 0:
        raise MpbenchError(
            f"--case-timeout: must be a positive number of seconds; got {args.case_timeout:g}"
        )
    if args.memory_limit is not None and (
        not math.isfinite(args.memory_limit) or args.memory_limit <= 0 or args.isolate == "none"
    ):
        raise MpbenchError(
            "--memory-limit: needs a positive GiB figure and --isolate model or case"
        )
    overrides = {k: getattr(args, k) for k in LIST_FLAGS if getattr(args, k) is not None}
    timing = {
        k: v for k, v in (("warmup", args.warmup), ("iterations", args.iterations)) if v is not None
    }
    options = RunOptions(
        quiet=args.quiet,
        render=not args.no_report,
        isolate=args.isolate,
        case_timeout_s=args.case_timeout,
        skip_larger=not args.no_skip_larger,
        resume=args.resume is not None,
        memory_limit_bytes=int(args.memory_limit * 2**30) if args.memory_limit else None,
    )
    if args.resume is not None:
        if args.out is not None and args.out != args.resume:
            raise MpbenchError("--out: not used with --resume (results go to RUN_DIR)")
        given = args.suite or overrides or timing or args.data
        suite = None
        if given:
            name = args.suite or default_suite_name(device.type)
            suite = load_suite(name, overrides, args.data).with_timing(timing)
        return run_suite(suite, device, args.resume, options)
    suite = load_suite(args.suite or default_suite_name(device.type), overrides, args.data)
    suite = suite.with_timing(timing)
    out = args.out or Path("reports") / f"{suite.name}-{datetime.now():%Y%m%d-%H%M%S}"
    if args.find_max_batch:
        if args.max_batch_cap < 1:
            raise MpbenchError(
                f"--max-batch-cap: must be a positive integer; got {args.max_batch_cap}"
            )
        return find_max_batch_sizes(suite, device, out, options, args.max_batch_cap)
    return run_suite(suite, device, out, options)


def cmd_list(args: argparse.Namespace) -> int:
    """`mpbench list`: what can run here, and why not where it cannot."""
    from rich.console import Console
    from rich.table import Table

    from bench.engine.device import resolve_device
    from bench.engine.models import PRESETS
    from bench.engine.precision import PRECISION_MODES
    from bench.engine.workloads import WORKLOADS

    device = resolve_device(args.device)
    console = Console()
    console.print(f"Device: [bold]{device.name}[/] ({device.product_name()})")
    modes = Table("precision", "on this device", "what it does", title="Precision modes")
    for mode in PRECISION_MODES.values():
        reason = mode.unsupported_reason(device)
        modes.add_row(
            mode.name,
            "[green]supported[/]" if reason is None else f"[yellow]skipped[/]: {reason}",
            mode.summary,
        )
    console.print(modes)
    models = Table("model", "family", "max positions", "shape", title="Model presets")
    for spec in PRESETS.values():
        models.add_row(spec.name, spec.family, str(spec.max_positions), spec.summary)
    console.print(models)
    table = Table("workload", "what is timed", title="Workloads")
    for name, summary in WORKLOADS.items():
        table.add_row(name, summary)
    console.print(table)
    console.print("A local checkpoint directory (safetensors, gpt2 or bert) also works as a model.")
    return EXIT_OK


def cmd_env(args: argparse.Namespace) -> int:
    """`mpbench env`: the environment a run records, as JSON."""
    from bench.engine.device import resolve_device
    from bench.engine.env import capture_env

    print(json.dumps(capture_env(resolve_device(args.device)), indent=2))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """`mpbench report`: render the report of an existing run."""
    from bench.views.report import render_report

    path = render_report(args.run_dir, args.out)
    print(f"report: {path}")
    return EXIT_OK


COMMANDS = {"run": cmd_run, "report": cmd_report, "list": cmd_list, "env": cmd_env}

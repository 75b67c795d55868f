"""`mpbench run`: validate every input, run the sweep (bench.engine), then read the run directory
back and show it: the results and verdict tables (bench.views.terminal) and the report.

The engine (and so torch) is imported only when a run starts, so `mpbench --help`, compare and
check stay fast.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.analysis.summary import analyze
from bench.analysis.thresholds import validate_table as validate_check_table
from bench.errors import EXIT_OK, EXIT_OUTPUT, EXIT_RANK_LOST, MpbenchError, OutputError
from bench.results.rundir import RESULTS_FILE, load_run
from bench.views import terminal
from bench.views.format import fmt_duration
from bench.views.progress import RichProgress, stderr_console
from bench.views.report import render_report

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


def register(sub: Any) -> None:
    """Add `mpbench run` to the parser."""
    run = sub.add_parser(
        "run",
        help="run a suite and write results (and a report) to a run directory",
        description="Run a suite: every case of models x workloads x precisions x batch sizes x "
        "sequence lengths. Writes env.json, suite.toml and results.jsonl (one line per case, "
        "flushed as each finishes) to the run directory, then the report. Every input is "
        "checked before anything runs.",
        epilog="exit codes: 0 done, 2 bad input (nothing ran), 3 results or report could not be "
        "written (disk full: earlier results are intact; continue with --resume), 130 Ctrl-C, "
        "143 SIGTERM (finished cases are kept and the report is written)",
    )
    run.add_argument(
        "suite",
        nargs="?",
        help="suite file (TOML) or built-in name: smoke, standard, ci, full, modern "
        "(default: smoke on CPU, standard on a GPU)",
    )
    run.add_argument(
        "--out",
        type=Path,
        help="run directory (default: reports/<suite>-<timestamp>, with -shardIofN after the "
        "suite for --shard)",
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
    run.add_argument(
        "--execution",
        type=_comma_list(str),
        help="how the steps execute, any of eager,compiled,graphs side by side: eagerly, under "
        "torch.compile (ids end in /compiled; the compiling first call is timed apart), or the "
        "whole step captured once as a CUDA graph and replayed (ids end in /graphs; GPU only) "
        "(default: the suite's [sweep] execution, else eager)",
    )
    run.add_argument(
        "--compile",
        choices=("eager", "compiled", "both"),
        help="deprecated: use --execution (both = eager,compiled)",
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
    run.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only errors: no progress, tables or hints (results and report are written "
        "as usual; for CI logs)",
    )
    run.add_argument(
        "--peak-tflops",
        metavar="TFLOPS",
        help="the device's dense peak TFLOP/s for MFU: one number for every dtype, or "
        "DTYPE=N,... (fp32, tf32, bf16, fp16, fp8); overrides the built-in GPU table, and is "
        "the only way to an MFU on a CPU or an unknown GPU",
    )
    run.add_argument(
        "--shard",
        metavar="I/N",
        help="run only shard I of N: every N-th comparison group (a model, workload, seq len and "
        "batch size with all its precisions) from the I-th, in the suite's order, so N machines "
        "or jobs split a sweep; join their run directories with `mpbench merge`",
    )
    run.add_argument(
        "--parallel",
        choices=("none", "ddp", "fsdp"),
        help="train data-parallel on every rank of a torchrun launch (or of --nproc): 'ddp' "
        "(DistributedDataParallel) or 'fsdp' (FSDP2 fully_shard); ids gain /ddpN. Inference "
        "cases run on rank 0 alone. Without torchrun: one rank (ddp1, a scaling baseline). "
        "Default: the suite's [parallel] strategy, else none",
    )
    run.add_argument(
        "--reduce-dtypes",
        type=_comma_list(str),
        help="dtypes data-parallel gradients are reduced in, each its own case: fp32, bf16, fp16 "
        "(DDP communication hooks / FSDP2 MixedPrecisionPolicy.reduce_dtype; default: the "
        "suite's [parallel] reduce_dtypes, else fp32)",
    )
    run.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="start torchrun with N processes on this machine for a data-parallel run (needs "
        "--parallel or a suite [parallel] table); a rank that dies or hangs is recorded as "
        "crashed/timeout for its case and the run continues in a fresh launch",
    )
    run.add_argument("--no-report", action="store_true", help="do not render index.html at the end")
    run.add_argument(
        "--history",
        metavar="URL",
        help="when the run finishes, add it to this history store (an SQLite file or "
        "postgresql://...; see `mpbench history`); checked before the sweep starts",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="check every input, print the number of cases and the estimated wall time per "
        "model (FLOPs / matmul rates measured here, in a few seconds), and run nothing",
    )
    run.set_defaults(handler=cmd_run)


def _check_flags(args: argparse.Namespace) -> None:
    if args.execution is not None and args.compile is not None:
        raise MpbenchError("--compile: give --execution only (--compile is its old name)")
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
    if args.find_max_batch and args.max_batch_cap < 1:
        raise MpbenchError(f"--max-batch-cap: must be a positive integer; got {args.max_batch_cap}")
    if args.resume is not None and args.out is not None and args.out != args.resume:
        raise MpbenchError("--out: not used with --resume (results go to RUN_DIR)")
    if args.dry_run and (args.resume is not None or args.find_max_batch):
        raise MpbenchError(
            "--dry-run: estimates a sweep; not used with --resume or --find-max-batch"
        )
    if args.nproc is not None and args.nproc < 1:
        raise MpbenchError(f"--nproc: must be a positive number of processes; got {args.nproc}")


def cmd_run(args: argparse.Namespace) -> int:
    """`mpbench run`: load and validate the suite, run every case, show and report the run."""
    from bench.engine.device import resolve_device
    from bench.engine.executors import ExecutionOptions
    from bench.engine.parallel import Launch
    from bench.engine.session import RunOptions
    from bench.engine.suite import default_suite_name, load_suite, parse_shard

    _check_flags(args)
    device = resolve_device(args.device)
    overrides = {k: getattr(args, k) for k in LIST_FLAGS if getattr(args, k) is not None}
    if args.execution is not None:
        overrides["execution"] = args.execution
    elif args.compile is not None:
        print(
            "--compile is deprecated; use --execution eager,compiled,graphs (any of them)",
            file=sys.stderr,
        )
        overrides["execution"] = ["eager", "compiled"] if args.compile == "both" else [args.compile]
    timing = {
        k: v for k, v in (("warmup", args.warmup), ("iterations", args.iterations)) if v is not None
    }
    suite = None
    parallel_flags = args.parallel is not None or args.reduce_dtypes is not None
    if (
        args.resume is None
        or args.suite
        or overrides
        or timing
        or args.data
        or args.peak_tflops
        or parallel_flags
    ):
        name = args.suite or default_suite_name(device.type)
        suite = load_suite(name, overrides, args.data).with_timing(timing)
        suite = suite.with_parallel(args.parallel, args.reduce_dtypes)
        validate_check_table(suite.tables.get("check", {}), suite.source)
        if args.peak_tflops is not None:
            suite = suite.with_peak_tflops(args.peak_tflops)
    launch = Launch.from_env()
    execution = ExecutionOptions(
        isolate=args.isolate,
        case_timeout_s=args.case_timeout,
        memory_limit_bytes=int(args.memory_limit * 2**30) if args.memory_limit else None,
    )
    shard = parse_shard(args.shard) if args.shard is not None else None
    console = stderr_console(args.quiet or not launch.leader)
    if args.dry_run:  # (of a data-parallel suite: one rank's share)
        return _dry_run(suite, device, args.isolate, console, shard)
    data_parallel = args.nproc is not None or launch.launched
    if data_parallel or _data_parallel_suite(suite, args.resume):
        _check_data_parallel(args, suite, launch)
        if args.nproc is None:  # a rank of a torchrun launch, or a one-rank group here
            return _as_rank(args, suite, launch, shard, console)
        execution = replace(execution, nproc=args.nproc)  # ranks serve this process's cases
    options = RunOptions(
        execution, skip_larger=not args.no_skip_larger, resume=args.resume is not None, shard=shard
    )
    _open_history(args)
    if args.resume is not None:
        code = _sweep(suite, device, args.resume, options, console, not args.no_report)
        return _add_to_history(args, args.resume, code, console)
    out = args.out or _default_out(suite, shard)
    if args.find_max_batch:
        if shard is not None:
            raise MpbenchError("--shard: splits a sweep; not used with --find-max-batch")
        return _find_max_batch(suite, device, out, execution, args.max_batch_cap, console)
    estimate = None if args.quiet else _estimate(suite, device, args.isolate, shard)
    if estimate is not None:
        console.print(
            f"mpbench: estimated {fmt_duration(estimate.total_s)} for the {estimate.cases} cases "
            "this device runs "
            f"({estimate.rates_line()}; `--dry-run` shows it per model)",
            highlight=False,
        )
    code = _sweep(suite, device, out, options, console, not args.no_report, estimate)
    return _add_to_history(args, out, code, console)


def _open_history(args: argparse.Namespace) -> None:
    """`--history URL`: open the store before the sweep, so a bad URL costs no run (exit 2)."""
    if args.history is not None:
        from bench.cli.history import check_history_url

        check_history_url(args.history)


def _add_to_history(args: argparse.Namespace, out: Path, code: int, console: Any) -> int:
    """`--history URL`: add the finished, shown run to the store (bench.cli.history)."""
    if args.history is None:
        return code
    from bench.cli.history import add_run_to_history

    return add_run_to_history(args.history, out, code, console)


def _default_out(suite: Any, shard: Any) -> Path:
    """reports/<suite>-<timestamp>, with -shardIofN after the suite for --shard."""
    stem = suite.name if shard is None else f"{suite.name}-shard{shard.index}of{shard.count}"
    return Path("reports") / f"{stem}-{datetime.now():%Y%m%d-%H%M%S}"


def _data_parallel_suite(suite: Any, resume: Path | None) -> bool:
    """The suite (given, or that of the run being resumed) has a [parallel] strategy."""
    if suite is None and resume is not None:
        from bench.engine.session import resumable_suite

        suite = resumable_suite(resume)
    return suite is not None and suite.parallel.enabled


def _check_data_parallel(args: argparse.Namespace, suite: Any, launch: Any) -> None:
    """What a data-parallel run refuses (exit 2, before anything runs)."""
    if args.find_max_batch or args.memory_limit is not None:
        flag = "--find-max-batch" if args.find_max_batch else "--memory-limit"
        raise MpbenchError(f"{flag}: not used with a data-parallel run (torchrun or --nproc)")
    if suite is not None and not suite.parallel.enabled:
        raise MpbenchError(
            f"{'--nproc' if args.nproc is not None else 'torchrun'}: a data-parallel run needs "
            "--parallel ddp|fsdp (or a [parallel] strategy in the suite); without one every "
            "rank would run the whole sweep on its own"
        )
    if args.nproc is not None and launch.launched:
        raise MpbenchError("--nproc: this process was already started by torchrun; drop --nproc")


def _as_rank(args: argparse.Namespace, suite: Any, launch: Any, shard: Any, console: Any) -> int:
    """This process is a rank of a process group (torchrun's, or a one-rank group when
    `--parallel` runs without torchrun): every rank joins it; rank 0 runs the sweep, its cases on
    every rank, and writes the run directory; the others follow it."""
    from bench.engine import parallel
    from bench.engine.device import resolve_device
    from bench.engine.executors import ExecutionOptions, follow_sweep
    from bench.engine.session import RunOptions

    device = resolve_device(parallel.rank_device(args.device, launch))
    device.activate()
    backend = parallel.init_process_group(device, launch, args.case_timeout)
    execution = ExecutionOptions(
        isolate="none", case_timeout_s=args.case_timeout, launch=launch, backend=backend
    )
    code = EXIT_RANK_LOST
    try:
        if launch.leader:
            out = args.resume or args.out or _default_out(suite, shard)
            options = RunOptions(
                execution,
                skip_larger=not args.no_skip_larger,
                resume=args.resume is not None,
                shard=shard,
            )
            code = _sweep(suite, device, out, options, console, not args.no_report)
        else:
            code = follow_sweep(device, launch)
    finally:
        # After a lost rank the group's teardown could wait on collectives that never end: the
        # process exit cleans up instead.
        if code != EXIT_RANK_LOST:
            parallel.destroy_process_group()
    if launch.launched:
        parallel.exit_rank(code)
    return code


def _estimate(
    suite: Any, device: Any, isolate: str, shard: Any = None, rates: dict | None = None
) -> Any:
    """The sweep's estimated wall time (bench.engine.estimate), of one shard when given, from
    `rates` where the caller measured them already, else from rates measured now."""
    from bench.engine.estimate import estimate_sweep, measure_rates, needed_dtypes
    from bench.engine.runner import skip_reason

    # Cases this device skips (a mode it lacks) take no time.
    cases = [c for c in suite.cases(device.name, shard) if skip_reason(suite, device, c) is None]
    if rates is None:
        rates = measure_rates(device, needed_dtypes(cases))
    return estimate_sweep(suite, cases, device.type, rates, isolate, device)


def _dry_run(suite: Any, device: Any, isolate: str, console: Any, shard: Any = None) -> int:
    """`--dry-run`: the cases per model and their estimated wall time; nothing runs."""
    estimate = _estimate(suite, device, isolate, shard)
    cases = suite.cases(device.name, shard)
    skipped = len(cases) - estimate.cases
    name = suite.name if shard is None else f"{suite.name} shard {shard}"
    console.print(
        f"mpbench: suite {name}, {len(cases)} cases on {device.name} ({device.product_name()})"
        f"{f', {skipped} of them skipped here (a mode this device lacks)' if skipped else ''}; "
        "dry run, nothing runs"
    )
    for model, seconds in estimate.per_model_s.items():
        count = sum(c.model == model for c in cases)
        console.print(f"  {model:24} {count:5} cases  {fmt_duration(seconds):>8}", highlight=False)
    console.print(
        f"  {'total':24} {len(cases):5} cases  {fmt_duration(estimate.total_s):>8}",
        style="bold",
        highlight=False,
    )
    console.print(
        f"  {estimate.rates_line()}; the estimate's model: README, 'How long a sweep takes'"
    )
    for note in estimate.notes:
        console.print(f"  note: {note}")
    return EXIT_OK


def _sweep(
    suite: Any,
    device: Any,
    out: Path,
    options: Any,
    console: Any,
    render: bool,
    estimate: Any = None,
) -> int:
    """Run the sweep with a progress display, then the tables and the report."""
    from bench.engine.session import run_suite

    started = time.perf_counter()
    with RichProgress(console) as progress:
        outcome = run_suite(suite, device, out, options, progress)
    if estimate is not None and outcome.exit_code == EXIT_OK:
        console.print(
            f"mpbench: the sweep took {fmt_duration(time.perf_counter() - started)} "
            f"(estimated {fmt_duration(estimate.total_s)})",
            highlight=False,
        )
    if outcome.exit_code != EXIT_OK:
        console.print(
            f"[yellow]interrupted[/]: {outcome.finished} case(s) finished and saved, "
            f"{outcome.not_run} not run; continue with `mpbench run --resume {out}`"
        )
    if outcome.startup_s:
        mean = sum(outcome.startup_s) / len(outcome.startup_s)
        if options.execution.nproc is not None:
            what, hint = "torchrun launch(es)", ""
        else:
            what, hint = (
                "worker process(es)",
                " (--isolate none skips this cost, and the crash protection)",
            )
        console.print(
            f"{len(outcome.startup_s)} {what} started, {mean:.1f} s each on average{hint}"
        )
    return show_run(out, console, render, outcome.exit_code)


def show_run(out: Path, console: Any, render: bool, exit_code: int) -> int:
    """Read the run directory back and show it: tables, then the report (exit 3 if it fails)."""
    run = load_run(out)
    for warning in run.warnings:
        console.print(f"[yellow]warning[/]: {warning}", markup=True, highlight=False)
    if not run.results:
        console.print("no case finished: no tables and no report")
        return exit_code
    with run.manifest.styles().shown():  # the run's own order and colours for its modes
        return _show(run, out, console, render, exit_code)


def _show(run: Any, out: Path, console: Any, render: bool, exit_code: int) -> int:
    analysis = analyze(run.results)
    console.print(terminal.results_table(analysis))
    if analysis.groups:
        console.print(terminal.verdict_table(analysis))
        gains = terminal.execution_table(analysis)
        if gains is not None:
            console.print(gains)
    if render:
        try:
            console.print(f"report: {render_report(run, analysis=analysis)}")
        except OutputError as exc:
            console.print(f"[red]report not written[/]: {exc}", highlight=False)
            exit_code = exit_code or EXIT_OUTPUT
        except Exception as exc:  # the results are safe on disk; say what failed, exit non-zero
            console.print(f"[red]report failed[/]: {type(exc).__name__}: {exc}", highlight=False)
            exit_code = exit_code or EXIT_OUTPUT
    console.print(f"results: {out / RESULTS_FILE}")
    return exit_code


def _find_max_batch(
    suite: Any, device: Any, out: Path, execution: Any, cap: int, console: Any
) -> int:
    """`--find-max-batch`: search, print each result as it is found, then the table; write
    RUN_DIR/max_batch.json with each mode's ratio to fp32 (also after an interrupt, with the
    searches that ended and "finished": false)."""
    from bench.analysis.maxbatch import max_batch_report
    from bench.engine.maxbatch import search_max_batch
    from bench.results.files import write_json
    from bench.results.rundir import MAX_BATCH_FILE

    console.print(f"mpbench: largest batch size per config (cap {cap}) on {device.name} -> {out}")

    def found(m: Any) -> None:
        size = m.max_batch_size if m.max_batch_size else "-"
        note = (" (cap reached)" if m.limit_reached else "") + (
            f" ({m.reason})" if m.reason else ""
        )
        console.print(
            f"{m.model}/{m.workload}/{m.precision}/seq{m.seq_len}: max batch {size}{note}"
        )

    outcome = search_max_batch(suite, device, out, execution, cap, found)
    report = max_batch_report(outcome.found, cap, finished=outcome.exit_code == EXIT_OK)
    path = out / MAX_BATCH_FILE
    write_json(path, report.to_dict())
    if outcome.exit_code != EXIT_OK:
        console.print("[yellow]interrupted[/]: the search was not finished")
    console.print(terminal.max_batch_table(report.rows))
    console.print(f"max batch sizes: {path}")
    return outcome.exit_code

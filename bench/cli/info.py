"""`mpbench report`, `mpbench list`, `mpbench env` and `mpbench selfcheck`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.analysis.summary import analyze
from bench.cli.output import write_output
from bench.errors import EXIT_OK, MpbenchError
from bench.results.inputs import INPUT_HELP, load_input
from bench.views.format import fmt_count
from bench.views.report import render_report, report_json


def register_report(sub: Any) -> None:
    """Add `mpbench report` to the parser."""
    report = sub.add_parser(
        "report",
        help="render the HTML report of a run directory (no re-running)",
        description="Render RUN_DIR/index.html (plus results.csv and summary.md) from "
        "results.jsonl and env.json alone. The summary's figures (speedups, memory savings, "
        "verdicts, the recommended mode) are the same in every view; --json writes them.",
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help=INPUT_HELP)
    report.add_argument(
        "--out",
        type=Path,
        help="HTML file to write (default RUN_DIR/index.html; required for a baseline or "
        "pytest-benchmark file)",
    )
    report.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="also write the run's analysis (per-case speedups and savings, the headline point, "
        "verdicts and recommendation per model and workload) as JSON to FILE, or stdout",
    )
    report.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """`mpbench report`: render the report of an existing run (exit 2 if it holds no result)."""
    run = load_input(args.run_dir, "RUN_DIR")
    if args.out is None and run.source != "run directory":
        raise MpbenchError(
            f"--out: {args.run_dir} is a {run.source} file, not a run directory; name the HTML "
            "file to write (results.csv and summary.md go beside it)"
        )
    with run.manifest.styles().shown():  # the run's own order and colours for its modes
        analysis = analyze(run.results)
        path = render_report(run, args.out, analysis)
    if args.json is not None:
        write_output(args.json, report_json(analysis))
    print(f"report: {path}", file=sys.stderr if args.json == "-" else sys.stdout)
    return EXIT_OK


def register(sub: Any) -> None:
    """Add `mpbench list`, `env` and `selfcheck` to the parser."""
    lst = sub.add_parser(
        "list", help="models, workloads and precision modes, and what this device supports"
    )
    lst.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    lst.set_defaults(handler=cmd_list)

    env = sub.add_parser("env", help="print the environment that a run records (JSON)")
    env.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    env.set_defaults(handler=cmd_env)

    from bench.cli.selfcheck import register as register_selfcheck

    register_selfcheck(sub)


def cmd_list(args: argparse.Namespace) -> int:
    """`mpbench list`: what can run here, and why not where it cannot."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from bench.engine.device import resolve_device
    from bench.engine.models import PRESETS
    from bench.engine.modes import PRECISION_MODES
    from bench.engine.workloads import WORKLOADS

    device = resolve_device(args.device)
    console = Console(width=None if sys.stdout.isatty() else 200)  # a pipe gets whole rows
    console.print(f"Device: [bold]{device.name}[/] ({device.product_name()})")
    modes = Table("precision", "on this device", "what it does", title="Precision modes")
    for mode in PRECISION_MODES.values():
        reason = mode.unsupported_reason(device)
        if reason is not None:
            status = f"[yellow]skipped[/]: {escape(reason)}"
        else:
            caveat = mode.caveat(device, compiled=False)
            status = "[green]supported[/]" + (f" [dim]({escape(caveat)})[/]" if caveat else "")
        modes.add_row(mode.name, status, mode.summary)
    console.print(modes)
    models = Table(
        "model", "family", "architecture", "parameters", "max positions", "shape", "copies",
        title="Model presets (seeded random weights; no download)",
    )  # fmt: skip
    for spec in PRESETS.values():
        models.add_row(
            spec.name,
            spec.family.name,
            spec.model_type,
            fmt_count(spec.parameters()),
            str(spec.max_positions),
            spec.summary,
            spec.source or "-",
        )
    console.print(models)
    table = Table("workload", "what is timed", title="Workloads")
    for name, summary in WORKLOADS.items():
        table.add_row(name, summary)
    console.print(table)
    console.print(
        "A local checkpoint directory (safetensors) of any causal or masked LM also works as a "
        "model, as does a hub id already in the local Hugging Face cache."
    )
    return EXIT_OK


def cmd_env(args: argparse.Namespace) -> int:
    """`mpbench env`: the environment a run records, as JSON."""
    from bench.engine.device import resolve_device
    from bench.engine.env import capture_env

    print(json.dumps(capture_env(resolve_device(args.device)), indent=2))
    return EXIT_OK

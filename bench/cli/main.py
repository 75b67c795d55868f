"""`mpbench` (also `python -m bench`): the parser and the entry point.

Subcommands: run (bench.cli.run), report, list, env, selfcheck (bench.cli.info), compare, check
and baseline (bench.cli.compare), merge (bench.cli.merge), history (bench.cli.history). The CLI
is the top of the import graph: it drives the engine, then reads the run back through
bench.results and shows it with bench.views.

Bad input (suite files, flags, results files) raises MpbenchError: printed as one line, exit 2.
"""

from __future__ import annotations

import argparse
import sys

from bench import __version__
from bench.errors import EXIT_INTERRUPTED, EXIT_USAGE, MpbenchError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    from bench.cli import compare, history, info, merge, run

    parser = argparse.ArgumentParser(
        prog="mpbench",
        description="Benchmark GPT- and BERT-style transformers across precision modes: speed, "
        "memory and numerical divergence against fp32.",
        epilog="exit codes: 0 done, 1 regression (check only), 2 bad input (one line naming the "
        "file, key or flag), 3 an output file could not be written (disk full; finished results "
        "are kept), 130 Ctrl-C and 143 SIGTERM (finished cases are kept)",
    )
    parser.add_argument("--version", action="version", version=f"mpbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run.register(sub)
    info.register_report(sub)
    compare.register(sub)
    merge.register(sub)
    history.register(sub)
    info.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mpbench` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.handler(args)
    except MpbenchError as exc:
        print(f"mpbench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # outside a sweep (a sweep turns Ctrl-C into its own exit code)
        print("mpbench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

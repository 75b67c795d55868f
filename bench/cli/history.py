"""`mpbench history`: add runs to the history store, list them, show a case's series, write the
trend page; and `add_run_to_history`, which `mpbench run --history URL` calls at its end.

The store is bench.results.history, the series and change points bench.analysis.history, the
tables and the page bench.views.trend_page. Bad input (a URL that does not connect, a database
of a newer schema, a half-written run directory) raises MpbenchError: one line, exit 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Collection
from pathlib import Path
from typing import Any

from rich.console import Console

from bench.analysis.history import HISTORY_METRIC_SPECS, latest_changes, load_series
from bench.cli.output import write_file
from bench.errors import EXIT_OK, EXIT_USAGE, MpbenchError, ResultsError
from bench.results.history import DB_ENV_VAR, DEFAULT_DB_PATH, AddOutcome, HistoryStore
from bench.results.rundir import Run, load_run
from bench.views.trend_page import case_table, changes_table, render_trend_page, runs_table

DB_HELP = (
    f"the history database: an SQLite file path or sqlite:///PATH, or postgresql://USER@HOST/DB "
    f"(default: ${DB_ENV_VAR}, else {DEFAULT_DB_PATH})"
)


def register(subparsers: Any) -> None:
    """Add `mpbench history` and its actions to the parser."""
    history = subparsers.add_parser(
        "history",
        help="the history store: add runs, list them, show a case over time, the trend page",
        description="Every run added to a database (SQLite by default, PostgreSQL for a team), "
        "so `mpbench check --history` can judge a run against the between-run spread of many, "
        "and the trend page can show each metric over time with its change points.",
    )
    actions = history.add_subparsers(dest="history_action", metavar="ACTION", required=True)

    add = actions.add_parser(
        "add",
        help="record run directories in the history (adding one twice is a no-op)",
        description="Record each run directory: every case's metrics, numerics and status, and "
        "the environment (device model and UUID, driver, CUDA, torch, transformers, torchao, "
        "suite hash, commit, date). Each run is one transaction: stored whole or not at all. "
        "A half-written run (interrupted, torn results file) is refused: finish it with "
        "`mpbench run --resume` first.",
    )
    add.add_argument("runs", nargs="+", metavar="RUN_DIR", help="an mpbench run directory")
    add.add_argument("--db", metavar="URL", help=DB_HELP)
    add.add_argument(
        "--commit", metavar="SHA", help="git commit of the code under test (default: env.json's)"
    )
    add.set_defaults(handler=cmd_history_add)

    lst = actions.add_parser("list", help="the stored runs, oldest first")
    lst.add_argument("--db", metavar="URL", help=DB_HELP)
    _add_filters(lst)
    lst.set_defaults(handler=cmd_history_list)

    show = actions.add_parser(
        "show",
        help="one case over time: every metric per run, change points marked",
        description="One case's metrics per stored run (per device model and suite), with the "
        "change points found in each series and what changed in the environment there.",
    )
    show.add_argument("case", metavar="CASE", help="a case id, e.g. gpt2-tiny/train/fp32/bs2/seq64")
    show.add_argument("--db", metavar="URL", help=DB_HELP)
    _add_filters(show)
    show.set_defaults(handler=cmd_history_show)

    report = actions.add_parser(
        "report",
        help="write the trend page: each metric over time, change points and what changed",
        description="One self-contained HTML page: per device model and suite, the latest change "
        "points first, then small multiples of each metric of each case over time with change "
        "points marked and environment changes annotated.",
    )
    report.add_argument("--db", metavar="URL", help=DB_HELP)
    report.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="the HTML file to write"
    )
    _add_filters(report)
    report.set_defaults(handler=cmd_history_report)


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", metavar="SLUG", help="one device model, by its slug (e.g. nvidia-h200)"
    )
    parser.add_argument("--suite", metavar="NAME", help="one suite, by name")


# ---------------------------------------------------------------------------------------------
# Adding
# ---------------------------------------------------------------------------------------------


def expected_case_ids(run: Run) -> Collection[str] | None:
    """The case ids the run's recorded suite expands to on its device and shard, or None where
    the suite cannot be read back here (a data file or checkpoint of another machine)."""
    from bench.engine.suite import parse_shard, parse_suite

    manifest = run.manifest
    try:
        suite = parse_suite(manifest.suite_text or "", str(run.path / "suite.toml"), run.path)
        shard = parse_shard(manifest.shard) if manifest.shard else None
    except MpbenchError:
        return None
    return {c.id for c in suite.cases(manifest.device or "cpu", shard, manifest.world_size or 1)}


def describe_add(outcome: AddOutcome, where: str, source: str) -> str:
    """One line: what `add` did with a run."""
    run = outcome.run
    what = f"suite {run.suite} on {run.device_model}, {run.cases} cases, started {run.started_at}"
    if outcome.added:
        return f"history: added {source} as run #{run.id} ({what}) to {where}"
    return (
        f"history: {source} is already stored as run #{run.id} (added {run.added_at}); "
        "nothing changed"
    )


def add_runs(paths: list[str], url: str | None, commit: str | None = None) -> list[str]:
    """Add each run directory; the lines to print. Stops at the first bad one (those before it
    are stored: each run is its own transaction)."""
    lines = []
    with HistoryStore(url) as store:
        for ref in paths:
            run = load_run(ref)
            expected = expected_case_ids(run) if run.manifest.suite_text else None
            outcome = store.add(run, commit, ref, expected)
            lines.append(describe_add(outcome, store.where, ref))
    return lines


def cmd_history_add(args: argparse.Namespace) -> int:
    """`mpbench history add RUN_DIR... [--db URL] [--commit SHA]`."""
    for line in add_runs(args.runs, args.db, args.commit):
        print(line)
    return EXIT_OK


def check_history_url(url: str) -> None:
    """Open (create or migrate) the database before a run starts, so a bad URL costs no sweep."""
    HistoryStore(url).close()


def add_run_to_history(url: str, out: Path, exit_code: int, console: Any) -> int:
    """The end of `mpbench run --history URL`: add the finished run and print one line. A run
    that did not finish is not added; a store that refuses it makes the exit code 2 (the run
    is safe on disk: add it later with `mpbench history add`)."""
    if exit_code != EXIT_OK:
        console.print(f"history: {out} not added: the run did not finish (exit {exit_code})")
        return exit_code
    try:
        for line in add_runs([str(out)], url):
            console.print(line, highlight=False, markup=False)
    except MpbenchError as exc:
        console.print(f"history: {out} not added: {exc}", highlight=False, markup=False)
        return EXIT_USAGE
    return exit_code


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False, width=200)


def cmd_history_list(args: argparse.Namespace) -> int:
    """`mpbench history list`: the stored runs, oldest first."""
    with HistoryStore(args.db, create=False) as store:
        runs = store.runs(args.device, args.suite)
        where = store.where
    if not runs:
        print(f"{where}: no runs" + (" matching the filters" if args.device or args.suite else ""))
        return EXIT_OK
    _console().print(runs_table(runs, where))
    return EXIT_OK


def cmd_history_show(args: argparse.Namespace) -> int:
    """`mpbench history show CASE`: the case's metrics per run, change points marked."""
    with HistoryStore(args.db, create=False) as store:
        series = load_series(store, args.device, args.suite, args.case)
        where = store.where
    if not series:
        raise ResultsError(f"{where}: no stored run has case {args.case!r}")
    console = _console()
    for table in case_table(series, tuple(HISTORY_METRIC_SPECS)):
        console.print(table)
    changes = latest_changes(series)
    if changes:
        console.print(changes_table(changes, f"change points of {args.case}"))
    else:
        console.print(f"no change point in any metric of {args.case}")
    return EXIT_OK


def cmd_history_report(args: argparse.Namespace) -> int:
    """`mpbench history report --out FILE`: the trend page."""
    with HistoryStore(args.db, create=False) as store:
        runs = store.runs(args.device, args.suite)
        if not runs:
            raise ResultsError(f"{store.where}: no runs to report")
        series = load_series(store, args.device, args.suite)
        where = store.where
    html = render_trend_page(runs, series, where)
    write_file(args.out, lambda p: p.write_text(html, encoding="utf-8"))
    print(f"trend page: {args.out} ({len(runs)} runs, {len(latest_changes(series))} change points)")
    return EXIT_OK

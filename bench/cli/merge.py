"""`mpbench merge RUN_DIR... --out DIR`: join the run directories of a sharded sweep
(`mpbench run SUITE --shard I/N` on N machines or jobs) into one run with one report, which
`report`, `compare` and `check` read like any other run.

Refused (exit 2, naming the runs): fewer than two runs, runs of different suites (env.json's
suite_sha256) or device models, and a case id in two runs (overlapping shards, or one shard
given twice). Shards that are missing are listed with the number of cases they would hold.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.errors import EXIT_OK
from bench.results.merge import merge_runs, write_merged
from bench.results.rundir import load_run
from bench.views.progress import stderr_console


def register(sub: Any) -> None:
    """Add `mpbench merge` to the parser."""
    parser = sub.add_parser(
        "merge",
        help="join the run directories of a sharded sweep (--shard I/N) into one run and report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a shard's run directory")
    parser.add_argument("--out", type=Path, required=True, help="the merged run directory (new)")
    parser.add_argument("--no-report", action="store_true", help="do not render index.html")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    parser.set_defaults(handler=cmd_merge)


def cmd_merge(args: argparse.Namespace) -> int:
    """Check the runs belong together, write the merged run, then show it like `mpbench run`."""
    from bench.cli.run import show_run

    merged = merge_runs([load_run(path) for path in args.run_dirs])
    console = stderr_console(args.quiet)
    order, lines = suite_order(merged.manifest, merged.results)
    merged.results.sort(key=lambda r: order.get(r.case.id, len(order)))  # stable: file order
    for line in merged.warnings + lines:
        console.print(f"[yellow]warning[/]: {line}", highlight=False)
    write_merged(merged, args.out)
    shards = ", ".join(s or "whole suite" for s in merged.shards)
    console.print(
        f"mpbench: merged {len(merged.results)} cases from {len(merged.shards)} runs "
        f"({shards}) -> {args.out}",
        highlight=False,
    )
    return show_run(args.out, console, not args.no_report, EXIT_OK)


def suite_order(manifest: Any, results: list[Any]) -> tuple[dict[str, int], list[str]]:
    """Each case id's position in the suite's order, and which of its cases no merged run
    holds (by the shard they belong to). A suite that does not resolve on this machine (a data
    file or checkpoint elsewhere) leaves the file order and says so."""
    from bench.engine.suite import parse_shard, parse_suite
    from bench.errors import MpbenchError

    try:
        suite = parse_suite(manifest.suite_text, "suite.toml of the merged runs")
        cases = suite.cases(manifest.device or "cpu", None, manifest.world_size or 1)
        merged_from = manifest.environment["merged_from"]
        shard_counts = {str(m["shard"]).partition("/")[2] for m in merged_from if m["shard"]}
        shards = [parse_shard(f"{i}/{n}") for n in shard_counts for i in range(1, int(n) + 1)]
    except (MpbenchError, ValueError) as exc:
        return {}, [f"cases kept in file order, missing ones not listed: {exc}"]
    order = {c.id: i for i, c in enumerate(cases)}
    have = {r.case.id for r in results}
    missing = [c for c in cases if c.id not in have]
    if not missing:
        return order, []
    lines = []
    for shard in shards:
        owned = [c for c in shard.select(cases) if c.id not in have]
        if owned:
            lines.append(f"shard {shard}: {len(owned)} case(s) of the suite have no result")
    return order, lines or [f"{len(missing)} case(s) of the suite have no result"]

"""`mpbench compare`, `mpbench check` and `mpbench baseline`: argparse registration, handlers, and
the terminal and Markdown views of a comparison (the HTML page is bench.views.compare_page).

bench.cli calls `register(subparsers)`; each parser sets `handler`, which takes the parsed
arguments and returns the exit code. Bad input raises MpbenchError (one line, exit 2).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from bench.analysis.check import (
    Assessment,
    CheckConfig,
    assess,
    parse_threshold_flag,
    resolve_config,
    run_check,
    suite_check_table,
)
from bench.analysis.compare import CaseComparison, DeviceIdentity, MetricDelta, compare_runs
from bench.errors import MpbenchError, ResultsError
from bench.results.baseline import (
    DEFAULT_DIR,
    is_baseline_dir,
    load_baseline,
    pick_baseline,
    save_baseline,
)
from bench.results.schema import Run

INPUT_HELP = (
    "a run directory, its results.jsonl, a baseline file (baselines/<device>.json) or a "
    "pytest-benchmark JSON file"
)
CHECK_EPILOG = """\
exit status:
  0  no regression
  1  regression: a gated metric worse than its threshold and significant (Mann-Whitney U on
     the per-step samples), a status or numerics verdict change for the worse, or a case that
     was ok in the baseline and is missing now; with --fail-on-improvement, also improvements
  2  usage or input error: unreadable or corrupt files, a baseline recorded on a different
     device model (see --allow-device-mismatch), runs with no case in common

thresholds come from --threshold, else the [check] table of CURRENT's suite.toml (else the
baseline's), else the defaults: throughput=-10 peak_memory=10 divergence=50 (percent;
step_time is off); on CPU runs throughput=-30 and peak memory is not gated (when it is, a
resident-set peak must also at least double or halve to count).
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
        "devices (A100 vs H100) can be compared. Always exits 0 unless the input is bad (2).",
    )
    compare.add_argument("base", metavar="BASE", help=INPUT_HELP)
    compare.add_argument("current", metavar="CURRENT", help=INPUT_HELP)
    _add_gate_args(compare)
    _add_output_args(compare)
    compare.set_defaults(handler=cmd_compare)

    check = subparsers.add_parser(
        "check",
        help="CI gate: fail (exit 1) when CURRENT regressed against a baseline",
        description="Check a run against a baseline recorded on the same device model.",
        epilog=CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("current", metavar="CURRENT", help=INPUT_HELP)
    check.add_argument(
        "--baseline",
        required=True,
        metavar="BASE",
        help=INPUT_HELP + "; or a directory of baselines, from which the one for CURRENT's "
        "device is picked",
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
# Inputs
# ---------------------------------------------------------------------------------------------


def load_input(ref: str | Path, role: str, current_env: dict[str, Any] | None = None) -> Run:
    """A run from any accepted input; a baselines directory needs the current run's env."""
    from bench.results.pytest_benchmark import load_pytest_benchmark
    from bench.results.schema import load_run

    path = Path(ref)
    if not path.exists():
        raise ResultsError(f"{role} {ref}: no such run directory or file")
    if is_baseline_dir(path):
        if not any(path.glob("*.json")):
            raise ResultsError(
                f"{role} {ref}: not a run directory (no results.jsonl) and holds no baselines"
            )
        if current_env is None:
            raise ResultsError(
                f"{role} {ref}: is a directory of baselines; name a file in it, or use it as "
                "`check --baseline DIR`"
            )
        path = pick_baseline(path, current_env)
        run = load_baseline(path)
    elif path.suffix == ".json":
        run = load_pytest_benchmark(path)  # also reads mpbench baseline files
    else:
        with warnings.catch_warnings():  # load_run warns per torn line; they are in run.warnings
            warnings.simplefilter("ignore")
            run = load_run(path)
    if not run.results:
        detail = f" ({run.warnings[0]})" if run.warnings else ""
        raise ResultsError(f"{role} {ref}: holds no readable case result{detail}")
    return run


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
        DeviceIdentity.from_env(current.env).kind,
    )


# ---------------------------------------------------------------------------------------------
# Handlers
# ---------------------------------------------------------------------------------------------


def cmd_compare(args: argparse.Namespace) -> int:
    """`mpbench compare BASE CURRENT`: always 0 (2 for bad input)."""
    current = load_input(args.current, "CURRENT")
    base = load_input(args.base, "BASE", current.env)
    base_label = _baseline_label(args.base, base)
    config = _config(args, current, base, args.current, base_label)
    comparison = compare_runs(base, current, config.options, base_label, args.current)
    if not comparison.matched:
        raise MpbenchError(
            f"{args.base} and {args.current} have no case in common (different suites?)"
        )
    assessment = assess(comparison, config)
    _emit(args, assessment, gate=False)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """`mpbench check CURRENT --baseline BASE`: 0 pass, 1 regression, 2 bad input."""
    current = load_input(args.current, "CURRENT")
    base = load_input(args.baseline, "--baseline", current.env)
    base_label = _baseline_label(args.baseline, base)
    config = _config(args, current, base, args.current, base_label)
    comparison = compare_runs(base, current, config.options, base_label, args.current)
    assessment = run_check(comparison, config, args.allow_device_mismatch)
    if args.junit is not None:
        from bench.views.junit import write_junit

        _write_file(args.junit, lambda p: write_junit(assessment, p))
    _emit(args, assessment, gate=True)
    return assessment.exit_code


def cmd_baseline_save(args: argparse.Namespace) -> int:
    """`mpbench baseline save RUN_DIR [--to DIR]`."""
    run = load_input(args.run, "RUN_DIR")
    try:
        path = save_baseline(run, args.to)
    except OSError as exc:
        raise ResultsError(
            f"--to {args.to}: cannot write baseline ({exc.strerror or exc})"
        ) from None
    identity = DeviceIdentity.from_env(run.env)
    ok = sum(r.get("status") == "ok" for r in run.by_id().values())
    print(f"baseline for {identity.label}: {path} ({len(run.by_id())} cases, {ok} ok)")
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
            run = load_baseline(path)
        except MpbenchError as exc:
            print(f"{path.name}: unreadable ({exc})")
            continue
        started = run.env.get("started_at") or "?"
        print(
            f"{path.name}: {DeviceIdentity.from_env(run.env).label}; {len(run.results)} cases; "
            f"run {started}"
        )
    return 0


def _baseline_label(ref: str, run: Run) -> str:
    """A picked baseline is named by its file, anything else by what the user typed."""
    if is_baseline_dir(ref):
        slug = DeviceIdentity.from_env(run.env).slug
        return str(Path(ref) / f"{slug}.json")
    return ref


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def _write_file(path: Path, write: Callable[[Path], None]) -> None:
    """Write an output file, turning OS errors into one-line input errors."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
    except OSError as exc:
        raise MpbenchError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _emit(args: argparse.Namespace, assessment: Assessment, gate: bool) -> None:
    """Terminal table, then each requested file; '-' means stdout (the table then goes to stderr)."""
    to_stdout = "-" in (args.markdown, args.json)
    print_terminal(assessment, gate, sys.stderr if to_stdout else sys.stdout)
    if args.markdown is not None:
        text = markdown_summary(assessment, gate)
        _output(args.markdown, text)
    if args.json is not None:
        data = {"command": "check" if gate else "compare", **assessment.to_dict()}
        _output(args.json, json.dumps(data, indent=2, allow_nan=False, default=str) + "\n")
    if args.html is not None:
        from bench.views.compare_page import render_page

        html = render_page(assessment, gate)
        _write_file(args.html, lambda p: p.write_text(html, encoding="utf-8"))


def _output(target: str, text: str) -> None:
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        _write_file(Path(target), lambda p: p.write_text(text, encoding="utf-8"))


def headline(assessment: Assessment, gate: bool) -> str:
    """One line: the verdict and the counts."""
    counts = assessment.counts()
    n_reg, n_imp = len(assessment.regressions), len(assessment.improvements)
    tail = f"{counts['compared']} cases compared, {counts['missing']} missing, {counts['new']} new"
    if not gate:
        return (
            f"{n_reg} regression(s) in {counts['regressed']} case(s), {n_imp} improvement(s) "
            f"beyond thresholds; {tail}"
        )
    if assessment.failed:
        failing = counts["failing"]
        return f"FAIL: {failing} case(s) regressed ({n_reg} regression(s), {n_imp} improvement(s)); {tail}"
    extra = f", {n_imp} improvement(s)" if n_imp else ""
    return f"PASS: no regression{extra}; {tail}"


def _status_text(case: CaseComparison) -> str:
    if case.presence == "only_base":
        return f"{case.base_status} -> missing"
    if case.presence == "only_current":
        return f"new ({case.current_status})"
    if case.base_status != case.current_status:
        return f"{case.base_status} -> {case.current_status}"
    return str(case.current_status)


def _pct(delta: MetricDelta | None) -> str:
    """'+12.3%', marked '*' when significant and '?' when untested."""
    if delta is None:
        return ""
    if delta.ratio is None:
        return "from 0"
    mark = {True: "*", False: "", None: "?"}[delta.significant]
    return f"{delta.change_pct:+.1f}%{mark}"


def _p(delta: MetricDelta | None) -> str:
    return f"{delta.p_value:.2g}" if delta is not None and delta.p_value is not None else ""


def _throughput_values(delta: MetricDelta | None) -> str:
    if delta is None:
        return ""
    return f"{delta.base:.4g} -> {delta.current:.4g}"


def _verdict_text(case: CaseComparison) -> str:
    if case.base_verdict == case.current_verdict or case.verdict_change == "n/a":
        return case.current_verdict or ""
    return f"{case.base_verdict or '-'} -> {case.current_verdict or '-'}"


def _findings_text(assessment: Assessment, case_id: str) -> str:
    parts = []
    for f in assessment.findings_for(case_id):
        tag = {"regression": "REGRESSION", "improvement": "improved", "note": "note"}[f.kind]
        parts.append(f"{tag}: {f.what}")
    return "; ".join(parts)


TABLE_HEADERS = (
    "case",
    "status",
    "samples/s BASE -> CURRENT",
    "throughput",
    "p",
    "peak memory",
    "divergence",
    "verdict",
    "finding",
)


def table_rows(assessment: Assessment) -> list[list[str]]:
    """One row of TABLE_HEADERS per case, worst first."""
    rows = []
    for case in assessment.ordered_cases():
        m = case.metrics
        rows.append(
            [
                case.case_id,
                _status_text(case),
                _throughput_values(m.get("throughput")),
                _pct(m.get("throughput")),
                _p(m.get("throughput")),
                _pct(m.get("peak_memory")),
                _pct(m.get("divergence")),
                _verdict_text(case),
                _findings_text(assessment, case.case_id),
            ]
        )
    return rows


def device_lines(assessment: Assessment, gate: bool = True) -> list[tuple[str, str]]:
    """(level, text) lines about the two devices: 'info', 'warn' or 'error'. Two device models
    are an error for the gate (allowed by a flag) and the point of the comparison otherwise."""
    comp, compat = assessment.comparison, assessment.compatibility
    lines = [
        ("info", f"BASE:    {comp.base_label} on {comp.base_device.label}"),
        ("info", f"CURRENT: {comp.current_label} on {comp.current_device.label}"),
    ]
    if gate:
        lines += [("error", f"device mismatch: {m}") for m in compat.mismatches]
    else:
        lines += [("warn", f"comparing two devices: {m}") for m in compat.mismatches]
    lines += [("warn", f"{d}") for d in compat.differences]
    lines += [("warn", w) for w in comp.warnings]
    return lines


def print_terminal(assessment: Assessment, gate: bool, stream: TextIO) -> None:
    """The rich table, worst first, with the devices and the verdict."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(file=stream, width=None if stream.isatty() else 200, highlight=False)
    styles = {"info": "", "warn": "bold yellow", "error": "bold red"}
    for level, text in device_lines(assessment, gate):
        console.print(Text(text, style=styles[level]))
    console.print(Text(f"thresholds: {assessment.config.describe()}", style="dim"))
    table = Table(*TABLE_HEADERS, title="mpbench check" if gate else "mpbench compare")
    row_style = {"fail": "red", "regression": "red", "improvement": "green", "note": "yellow"}
    for case, row in zip(assessment.ordered_cases(), table_rows(assessment)):
        table.add_row(*row, style=row_style.get(assessment.outcome(case.case_id), ""))
    console.print(table)
    console.print(
        Text("* significant (p < alpha or above the noise floor); ? not testable", style="dim")
    )
    style = "bold red" if assessment.failed and gate else "bold green" if gate else "bold"
    console.print(Text(headline(assessment, gate), style=style))


def _md(text: Any) -> str:
    """A Markdown table cell: pipes escaped, one line."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(headers: list[str] | tuple[str, ...], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    return lines


def markdown_summary(assessment: Assessment, gate: bool) -> str:
    """The comparison as Markdown: verdict, devices, regressions, improvements, all cases."""
    comp = assessment.comparison
    title = "mpbench check" if gate else "mpbench compare"
    icon = ("❌" if assessment.failed else "✅") if gate else "📊"
    out = [f"## {icon} {title}: {_md(headline(assessment, gate))}", ""]
    out += _md_table(
        ["", "BASE", "CURRENT"],
        [
            ["run", f"`{comp.base_label}`", f"`{comp.current_label}`"],
            ["device", comp.base_device.label, comp.current_device.label],
        ],
    )
    out.append("")
    for level, text in device_lines(assessment, gate)[2:]:
        out.append(
            f"> {'**' if level == 'error' else ''}⚠️ {_md(text)}{'**' if level == 'error' else ''}"
        )
    out += [f"Thresholds: {assessment.config.describe()}", ""]
    for kind, heading in (("regression", "Regressions"), ("improvement", "Improvements")):
        found = [f for f in assessment.findings if f.kind == kind]
        if found:
            out += [f"### {heading}", ""]
            out += _md_table(
                ["case", "what", "detail"], [[f.case_id, f.what, f.message] for f in found]
            )
            out.append("")
    out += [f"<details><summary>All {len(comp.cases)} cases (worst first)</summary>", ""]
    out += _md_table(list(TABLE_HEADERS), table_rows(assessment))
    out += ["", "`*` significant, `?` not testable (too few samples).", "", "</details>", ""]
    return "\n".join(out)

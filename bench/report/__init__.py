"""The HTML report of a run directory, built from results.jsonl and env.json alone.

    render_report(run_dir, out=None) -> Path   # index.html + results.csv + summary.md
    summary_markdown(run) -> str                # the summary tables, for CI summaries and PRs

Modules: `analysis` (statistics), `tables` (formatting, Markdown, CSV), `plots` (matplotlib
figures as inline SVG), `render` (assembly and the jinja2 template in templates/).
"""

from __future__ import annotations

from bench.report.render import (
    CSV_FILE,
    REPORT_FILE,
    SUMMARY_FILE,
    build_context,
    render_html,
    render_report,
    summary_markdown,
)
from bench.report.tables import results_frame, write_results_csv

__all__ = [
    "CSV_FILE",
    "REPORT_FILE",
    "SUMMARY_FILE",
    "build_context",
    "render_html",
    "render_report",
    "results_frame",
    "summary_markdown",
    "write_results_csv",
]

"""bench.analysis.summary: the one place a run's figures are computed (speedups, savings, the
headline point, verdicts, the recommendation), and the formatters every view shares."""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from report_fixtures import FIXTURE_RUN
from rich.console import Console
from runs import edit_results

from bench.analysis import series
from bench.analysis.rows import CaseRow
from bench.analysis.summary import analyze, headline_point
from bench.results.rundir import load_run
from bench.results.schema import (
    Case,
    CaseResult,
    Memory,
    TelemetryReading,
    Throughput,
    Timing,
)
from bench.views import format as fmt
from bench.views import terminal
from bench.views.markdown import md_text, summary_markdown
from bench.views.report import render_html


def result(
    precision: str,
    batch_size: int,
    status: str = "ok",
    median_s: float = 1.0,
    peak: int | None = 100,
    verdict: str | None = None,
    error: str | None = None,
    model: str = "m",
    workload: str = "train",
    seq_len: int = 16,
) -> CaseResult:
    """A typed result as the engine writes it."""
    case = Case(model, "gpt2", workload, precision, batch_size, seq_len, "cpu")
    if status != "ok":
        return CaseResult(case, status, f"{status} for the test")
    numerics = None
    if verdict is not None or error is not None:
        numerics = {"verdict": verdict, "max_rel_div": 0.001}
        if error:
            numerics = {"verdict": None, "error": error}
    timing = Timing.from_samples([median_s] * 3, 1, "perf-counter")
    return CaseResult(
        case,
        "ok",
        timing=timing,
        throughput=Throughput.from_median(batch_size, seq_len, median_s),
        memory=Memory(peak, None, "vmhwm"),
        numerics=numerics,
    )


def test_speedup_and_saving_are_per_shape_against_fp32() -> None:
    analysis = analyze(
        [
            result("fp32", 2, median_s=1.0, peak=100),
            result("bf16", 2, median_s=0.5, peak=60),
            result("fp32", 8, median_s=4.0, peak=400),
            result("bf16", 8, median_s=1.0, peak=100),
        ]
    )
    rows = {row.id: row for row in analysis.rows}
    assert rows["m/train/bf16/bs2/seq16"].speedup == pytest.approx(2.0)
    assert rows["m/train/bf16/bs2/seq16"].memory_saving == pytest.approx(0.4)
    assert rows["m/train/bf16/bs8/seq16"].speedup == pytest.approx(4.0)
    assert rows["m/train/bf16/bs8/seq16"].memory_saving == pytest.approx(0.75)
    assert rows["m/train/fp32/bs8/seq16"].speedup == pytest.approx(1.0)


def test_views_get_typed_rows_without_nan() -> None:
    benchmark = Case("test_0", None, "benchmark", "unknown", None, None, None, "t.py::test_0")
    no_nvml = TelemetryReading("unavailable", "no NVML on CPU")
    analysis = analyze(
        [
            replace(result("fp32", 2, peak=100), telemetry=no_nvml),
            result("bf16", 2, status="skipped"),
            result("fp16", 2, status="skipped"),
            result("bf16", 4, status="skipped"),
            replace(result("fp32", 4, peak=None), telemetry=no_nvml),
            CaseResult(benchmark, "ok", timing=Timing.from_samples([0.01] * 3, None, "x")),
        ]
    )
    fp32, skipped, *_, no_peak, labelled = analysis.rows
    assert all(isinstance(row, CaseRow) for row in analysis.rows)
    assert (fp32.batch_size, fp32.peak_bytes, fp32.speedup) == (2, 100, 1.0)
    assert isinstance(fp32.peak_bytes, int) and fp32.headline is False and no_peak.headline
    assert (no_peak.peak_bytes, no_peak.memory_saving, skipped.median_s) == (None, None, None)
    assert (labelled.sweep, labelled.batch_size, labelled.speedup) == (False, None, None)
    assert analysis.benchmark_rows == [labelled]
    assert analysis.skipped_precisions == {"bf16": 2, "fp16": 1}  # precision order
    assert analysis.telemetry_reasons == ["no NVML on CPU"]
    assert [row.id for row in analysis.group_rows(analysis.groups[0])] == [
        row.id for row in analysis.rows[:-1]
    ]


def test_views_read_rows_not_the_frame() -> None:
    """No view indexes the analysis' pandas frame; only report.py imports pandas, to flatten
    raw results into results.csv."""
    views = Path(fmt.__file__).parent
    for path in views.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\.frame\b|\.records\(", text), path.name
        if path.name != "report.py":
            assert "pandas" not in text, path.name


def test_headline_point_is_where_fp32_and_most_modes_ran() -> None:
    both = [result(p, b) for p in ("fp32", "bf16", "fp16") for b in (2, 4)]
    assert headline_point(analyze(both).frame) == (4, 16)  # all ran everywhere: the largest
    # fp16 ran out of memory at 4: batch 2 has all three, 4 has only two.
    oom = [r for r in both if r.case.id != "m/train/fp16/bs4/seq16"]
    oom.append(result("fp16", 4, status="oom"))
    assert headline_point(analyze(oom).frame) == (2, 16)
    # fp32 itself OOMs at 8 where bf16 ran: the point must have fp32.
    bigger = [*both, result("bf16", 8), result("fp16", 8), result("fp32", 8, status="oom")]
    assert headline_point(analyze(bigger).frame) == (4, 16)
    # No fp32 anywhere: the shape most precisions ran at, no speedups.
    no_fp32 = analyze([result("bf16", 2), result("fp16", 2), result("bf16", 4)])
    assert (no_fp32.groups[0].batch_size, no_fp32.groups[0].has_baseline) == (2, False)
    assert all(m.speedup is None for m in no_fp32.groups[0].modes)
    assert headline_point(analyze([result("fp32", 2, status="skipped")]).frame) is None


def test_recommendation_rules() -> None:
    """Fastest passing mode; fp32 passes as the reference; speed-only without any numerics."""
    rows = [
        result("fp32", 4, median_s=1.0, verdict="ok"),
        result("amp_bf16", 4, median_s=0.5, verdict="ok"),
        result("bf16", 4, median_s=0.4, verdict="warn"),
        result("fp16", 4, median_s=0.3, verdict="diverged"),
    ]
    group = analyze(rows).groups[0]
    assert (group.recommended, group.speed_only) == ("amp_bf16", None)
    assert [m.speedup for m in group.modes] == pytest.approx([1.0, 2.0, 2.5, 1 / 0.3])
    only_failing = analyze([rows[0], rows[3]]).groups[0]
    assert only_failing.recommended == "fp32"  # the reference passes against itself
    errored = analyze([rows[0], result("bf16", 4, median_s=0.5, error="RuntimeError: x")])
    assert errored.groups[0].recommended == "fp32"  # an errored pass vouches for nothing
    assert fmt.fmt_verdict(errored.groups[0].mode("bf16")) == "error"
    no_numerics = analyze([result("fp32", 4), result("bf16", 4, median_s=0.5)]).groups[0]
    assert (no_numerics.recommended, no_numerics.speed_only) == (None, "bf16")
    assert "speed only" in fmt.recommendation_text(no_numerics)


def test_a_later_result_for_the_same_case_wins() -> None:
    first = result("fp32", 1, status="oom")
    second = result("fp32", 1)
    analysis = analyze([first, second])
    assert [r.status for r in analysis.rows] == ["ok"] and analysis.status_counts == {"ok": 1}


def test_one_answer_when_larger_batches_run_out_of_memory(tmp_path: Path) -> None:
    """The issue's reproduction: a smoke run with gpt2-tiny/train fp16 and amp_fp16 out of
    memory at batch 4. Every view now headlines the group at batch 2 with the same figures."""
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE_RUN, run_dir)
    victims = {"gpt2-tiny/train/fp16/bs4/seq64", "gpt2-tiny/train/amp_fp16/bs4/seq64"}

    def oom(r: dict) -> dict:
        if r["case"]["id"] not in victims:
            return r
        return {
            **r,
            "status": "oom",
            "reason": "out of memory",
            "timing": None,
            "throughput": None,
            "memory": None,
            "losses": None,
            "numerics": None,
        }

    edit_results(run_dir, oom)
    run = load_run(run_dir)
    analysis = analyze(run.results)
    group = analysis.group("gpt2-tiny", "train")
    assert (group.batch_size, group.seq_len) == (2, 64)
    amp = group.mode("amp_bf16")
    rows = {row.id: row for row in analysis.rows}
    assert amp.speedup == pytest.approx(rows["gpt2-tiny/train/amp_bf16/bs2/seq64"].speedup)
    expected = fmt.fmt_speedup(amp.speedup)
    # The terminal's verdict table, summary.md and the HTML summary all show this figure.
    console = Console(record=True, width=250)
    console.print(terminal.verdict_table(analysis))
    verdict_row = next(
        line
        for line in console.export_text().splitlines()
        if "gpt2-tiny" in line and "train" in line and "amp_bf16" in line
    )
    assert "bs2 seq64" in verdict_row and expected in verdict_row
    markdown = summary_markdown(analysis)
    assert "### gpt2-tiny / train (batch 2, seq 64)" in markdown
    assert re.search(rf"\| amp_bf16[^|]*\| [^|]+ \| {re.escape(expected)} \|", markdown)
    html = render_html(run, analysis)
    assert f'data-col="speedup">{expected}<' in html.split('data-group="gpt2-tiny/train"')[1]
    assert analysis.to_dict()["groups"][0]["modes"][3]["speedup"] == amp.speedup


def test_series_follow_the_headline_point() -> None:
    rows = [result(p, b, median_s=b / 10, verdict="ok") for p in ("fp32", "bf16") for b in (1, 2)]
    analysis = analyze(rows)
    group = analysis.groups[0]
    data = series.series_vs_batch(analysis, group, lambda row: row.rate)
    assert data["fp32"][0] == [1, 2] and data["bf16"][1] == pytest.approx([10.0, 10.0])  # samples/s
    assert set(series.step_samples(analysis, group)) == {"fp32", "bf16"}


def test_pareto_front() -> None:
    """Faster and closer points survive; dominated ones do not; ties are kept."""
    points = [(2.0, 1e-3), (1.5, 1e-2), (3.0, 1e-1), (2.5, 1e-1), (2.0, 1e-3)]
    assert series.pareto_front(points) == [0, 2, 4]
    assert series.pareto_front([]) == []


def test_relative_divergence() -> None:
    assert series.relative_divergence([1.1, 2.0], [1.0, 0.0])[0] == pytest.approx(0.1)
    assert math.isnan(series.relative_divergence([1.0], [0.0])[0])


def test_formatting() -> None:
    """Units and significant figures as every view shows them."""
    assert fmt.fmt_bytes(1.5 * 2**30) == "1.50 GiB"
    assert fmt.fmt_bytes(819 * 2**20) == "819 MiB"
    assert fmt.fmt_seconds(0.0047) == "4.70 ms"
    assert fmt.fmt_seconds(2.5e-5) == "25.0 µs"
    assert fmt.fmt_number(12345.6) == "12,346"
    assert fmt.fmt_speedup(2.186) == "2.19×"
    assert fmt.fmt_saving(-0.1) == "−10 %"
    assert fmt.fmt_divergence(0.00025) == "2.5e-04" and fmt.fmt_divergence(0.0) == "0"
    assert fmt.fmt_number(None) == fmt.MISSING


def test_markdown_escaping_is_markdown_not_html() -> None:
    assert md_text("a|b <c> >= 8") == "a\\|b \\<c\\> \\>= 8"
    assert md_text("two\nlines") == "two lines"

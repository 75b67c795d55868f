"""The HTML report (bench.views.report): content, escaping, self-containment, degenerate runs."""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from pathlib import Path

import matplotlib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from report_fixtures import (
    GPU_MEMORY_BYTES,
    case_results,
    environment,
    extra_failures,
    realistic_run,
    write_run,
)

from bench.analysis import summary as analysis
from bench.results.schema import ENV_FILE, RESULTS_FILE, Case, CaseResult, Run, load_run
from bench.views import tables
from bench.views.report import render_html, render_report, summary_markdown
from bench.views.tables import results_frame

PLOT_SECTIONS = ("throughput", "memory", "speedup", "loss", "tradeoff", "step-times", "activations")
HOSTILE = '<script>alert(1)</script>" onmouseover="alert(2)'


def sections(html: str) -> dict[str, str]:
    """The HTML of each <section>, by its data-section name."""
    found = re.findall(r'<section id="[^"]*" data-section="([^"]+)">(.*?)</section>', html, re.S)
    return dict(found)


def figures(section_html: str) -> int:
    """Number of figures in a section that hold an inline SVG."""
    blocks = re.findall(r'<figure class="plot".*?</figure>', section_html, re.S)
    return sum("<svg" in block for block in blocks)


@pytest.fixture(scope="module")
def realistic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The realistic fixture run, rendered once for the module."""
    run_dir = realistic_run(tmp_path_factory.mktemp("realistic"))
    path = render_report(run_dir)
    return path, path.read_text(encoding="utf-8")


# --- the realistic report ---------------------------------------------------------------------


def test_default_output_and_side_files(realistic: tuple[Path, str]) -> None:
    """index.html, results.csv and summary.md land in the run directory."""
    path, html = realistic
    assert path.name == "index.html"
    assert (path.parent / "results.csv").is_file()
    assert (path.parent / "summary.md").is_file()
    assert html.startswith("<!DOCTYPE html>")
    assert not list(path.parent.glob("*.tmp"))


def test_every_section_has_its_plots(realistic: tuple[Path, str]) -> None:
    """One figure per model x workload (or per workload / model) in each plot section."""
    found = sections(realistic[1])
    expected = {
        "throughput": 4,  # 2 models x 2 workloads
        "memory": 4,
        "speedup": 4,
        "loss": 2,  # training only, per model
        "tradeoff": 2,  # per workload, a panel per model
        "step-times": 4,
        "activations": 2,  # per model
    }
    assert {name: figures(found[name]) for name in PLOT_SECTIONS} == expected
    for name in PLOT_SECTIONS:
        assert 'class="empty"' not in found[name], name
    assert {"summary", "problems", "raw"} <= found.keys()


def test_header_shows_environment_and_warnings(realistic: tuple[Path, str]) -> None:
    """Suite, date, GPU, driver, CUDA, versions, TF32 flags and the warnings are in the header."""
    header = realistic[1].split("<main>")[0]
    for text in (
        "tiny-sweep",
        "2026-11-29T12:00:00+00:00",
        "NVIDIA A100-SXM4-40GB",
        "550.54.15",
        "12.4",
        "2.13.0",
        "5.24.0",
        "matmul: off, cudnn: on",
        "GPU clock throttled during 2 cases (thermal)",
        "1 case(s) failed (1 crashed).",
        "1 case(s) ran out of memory.",
        "Skipped modes: tf32 (8), fp8 (8).",
    ):
        assert text in header, text


def test_summary_marks_the_recommended_mode(realistic: tuple[Path, str]) -> None:
    """Training recommends amp_fp16 (bf16/fp16 are faster but fail numerics); inference bf16."""
    summary = sections(realistic[1])["summary"]
    recommended = re.findall(
        r'<tr class="rec">\s*<td>([^<]+)<span class="badge rec">★ recommended', summary
    )
    assert recommended == ["amp_fp16", "bf16", "amp_fp16", "bf16"]
    assert "(batch 4, seq 32)" in summary  # the largest size common to every precision
    assert "2.19×" in summary and "50 %" in summary  # speedup and memory saving vs fp32
    assert 'class="v-diverged">diverged' in summary
    assert "skipped: tf32 needs a CUDA GPU" in summary


def test_problems_and_raw_table(realistic: tuple[Path, str]) -> None:
    """Skipped/OOM/crashed cases with reasons; every case in the sortable raw table."""
    found = sections(realistic[1])
    problems = found["problems"]
    assert "CUDA out of memory. Tried to allocate 2.00 GiB" in problems
    assert "worker exited with signal 11 (SIGSEGV)" in problems
    assert problems.index("crashed") < problems.index("oom") < problems.index("skipped")
    raw = found["raw"]
    assert raw.count("<tr>") == 2 * 2 * 7 * 2 + 2 + 1  # cases + header row
    assert '<a href="results.csv" download>results.csv</a>' in raw
    assert 'data-v="' in raw and 'table class="sortable"' in raw
    assert realistic[1].count("<script") == 1  # the inline sort script, nothing else


def test_memory_plot_draws_device_memory(realistic: tuple[Path, str]) -> None:
    """On a GPU run the memory figures carry the device-memory reference line."""
    memory = sections(realistic[1])["memory"]
    assert memory.count("device memory") >= 4


def test_no_external_references(realistic: tuple[Path, str]) -> None:
    """Nothing is loaded from outside: only SVG namespace declarations mention http(s)."""
    html = realistic[1]
    assert not re.search(r"""(src|href|action)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert not re.search(r"""url\(\s*["']?\s*(https?:)?//""", html, re.I)
    assert not re.search(r"@import|<link\b|<iframe\b|<object\b|<embed\b", html, re.I)
    for match in re.finditer(r"https?://", html):
        before = html[max(0, match.start() - 20) : match.start()]
        assert re.search(r'xmlns(:\w+)?="$', before), html[match.start() - 60 : match.end() + 40]
    assert "<!DOCTYPE svg" not in html and "<?xml" not in html


def test_svg_ids_are_unique(realistic: tuple[Path, str]) -> None:
    """Many inline SVGs share one id space: every id must be unique and every reference resolve."""
    html = realistic[1]
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))
    refs = set(re.findall(r'url\(#([^)]+)\)|href="#([^"]+)"', html))
    missing = {r for pair in refs for r in pair if r and r not in set(ids)}
    assert missing == set()


def test_results_csv_is_flat(realistic: tuple[Path, str]) -> None:
    """One row per case, dotted scalar columns, per-step lists left out."""
    with open(realistic[0].parent / "results.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2 * 7 * 2 + 2
    columns = rows[0].keys()
    assert list(columns)[:3] == ["case.id", "status", "reason"]
    assert {"timing.median_s", "throughput.samples_per_s", "memory.peak_bytes"} <= columns
    assert "numerics.max_rel_div" in columns and "numerics.verdict" in columns
    assert not {"timing.step_s", "losses", "numerics.loss", "numerics.activations"} & columns
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(float(r["timing.median_s"]) > 0 for r in ok)


def test_summary_markdown(realistic: tuple[Path, str]) -> None:
    """summary.md has a table per model x workload with the recommendation marked."""
    text = (realistic[0].parent / "summary.md").read_text(encoding="utf-8")
    assert text == summary_markdown(realistic[0].parent)
    assert text.count("| precision |") == 4
    assert "### gpt2-tiny / train (batch 4, seq 32)" in text
    assert "| **amp_fp16** ★ | " in text
    assert "Recommended: bf16" in text
    assert "&gt;= 8.0" in text  # angle brackets escaped for PR comments


def test_render_is_deterministic_and_leaves_matplotlib_alone(tmp_path: Path) -> None:
    """The same run renders to the same bytes; global rcParams and pyplot are untouched."""
    results = case_results(models=[("gpt2-tiny", "gpt2")], workloads=["train"])
    run_dir = write_run(tmp_path / "run", results, environment())
    before = dict(matplotlib.rcParams)
    first = render_report(run_dir, tmp_path / "a.html").read_text(encoding="utf-8")
    second = render_report(run_dir, tmp_path / "b.html").read_text(encoding="utf-8")
    assert first == second
    assert dict(matplotlib.rcParams) == before
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or pyplot.get_fignums() == []


# --- escaping ---------------------------------------------------------------------------------


def test_untrusted_strings_are_escaped(tmp_path: Path) -> None:
    """A hostile model name, error message, suite name and env value never reach the page raw."""
    model = f"gpt2 {HOSTILE} $x^2$"
    results = case_results(models=[(model, "gpt2")])
    results.append(
        CaseResult(Case(model, "gpt2", "train", "fp16", 64, 32, "cuda:0"), "error", reason=HOSTILE)
    )
    env = environment(suite=HOSTILE, device_name=HOSTILE, warnings=[HOSTILE])
    run_dir = write_run(tmp_path / "run", results, env)
    html = render_report(run_dir).read_text(encoding="utf-8")
    assert "<script>alert" not in html
    # '<' is escaped everywhere, so every '<...>' is a real tag: none may carry the handler as
    # an attribute (inside attribute values the quotes are escaped as &#34;).
    tags = re.findall(r"<[^>]*>", html)
    assert not [t for t in tags if re.search(r"""\sonmouseover\s*=\s*["']""", t)]
    assert any("onmouseover=&#34;alert(2)" in t for t in tags)  # escaped, and so still there
    assert html.count("<script") == 1
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    found = sections(html)
    assert escaped in html.split("<main>")[0]  # suite, device name, warning
    assert escaped in found["problems"]  # the error message
    assert escaped in found["summary"] and escaped in found["raw"]
    # matplotlib escapes text in the SVG figures too (titles carry the model name).
    svg_text = "".join(re.findall(r"<svg.*?</svg>", found["throughput"], re.S))
    assert escaped in svg_text
    assert "$x^2$" in svg_text  # drawn as text, not parsed as mathtext
    assert "\\mathdefault" not in html  # ...while log axes still typeset their own tick labels
    md = (run_dir / "summary.md").read_text(encoding="utf-8")
    assert "<script" not in md and "&lt;script&gt;" in md


# --- degenerate and partial runs --------------------------------------------------------------


def _empty_sections(html: str) -> set[str]:
    """Plot sections that show their 'no data' note."""
    return {name for name, body in sections(html).items() if 'class="empty"' in body}


def test_empty_results_file(tmp_path: Path) -> None:
    """A run with an empty results.jsonl renders, says so, and draws nothing."""
    run_dir = write_run(tmp_path / "run", [], environment())
    html = render_report(run_dir).read_text(encoding="utf-8")
    assert "This run has no results yet." in html
    assert "<svg" not in html
    assert set(PLOT_SECTIONS) <= _empty_sections(html)
    assert "No results." in (run_dir / "summary.md").read_text(encoding="utf-8")


def test_run_stopped_before_first_result(tmp_path: Path) -> None:
    """env.json but no results.jsonl (cut short at once) still renders an empty report."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ENV_FILE).write_text(json.dumps(environment()), encoding="utf-8")
    html = render_report(run_dir).read_text(encoding="utf-8")
    assert "results.jsonl is missing" in html


def test_not_a_run_directory(tmp_path: Path) -> None:
    """A directory that is no run at all is an error, not an empty report."""
    from bench.errors import ResultsError

    with pytest.raises(ResultsError):
        render_report(tmp_path)


def test_only_skipped_cases_without_env(tmp_path: Path) -> None:
    """All skipped, no env.json: the report lists the reasons and draws nothing."""
    results = [r for r in case_results() if r.status == "skipped"]
    run_dir = write_run(tmp_path / "run", results, env=None)
    html = render_report(run_dir).read_text(encoding="utf-8")
    assert "<svg" not in html
    assert "No case completed successfully." in html
    assert "No environment recorded" in html
    assert "No recommendation: no successful case" in html
    assert "tf32 needs a CUDA GPU" in sections(html)["problems"]


def test_without_numerics_marks_speed_only(tmp_path: Path) -> None:
    """No numerics: fastest mode marked speed-only, not recommended; losses from timed steps."""
    run_dir = write_run(tmp_path / "run", case_results(numerics=False), environment())
    html = render_report(run_dir).read_text(encoding="utf-8")
    found = sections(html)
    assert "★ recommended" not in found["summary"]
    assert found["summary"].count("fastest · speed only") == 4
    assert "Fastest: fp16 (speed only: no numerics, so not a recommendation)" in found["summary"]
    assert "no numerics" in found["summary"]
    assert figures(found["loss"]) == 2 and "losses from timed steps" in found["loss"]
    assert {"tradeoff", "activations"} <= _empty_sections(html)
    assert "speed only" in (run_dir / "summary.md").read_text(encoding="utf-8")


def test_nulls_nans_and_torn_lines(tmp_path: Path) -> None:
    """Missing fields, null blocks, NaN losses and a torn last line degrade, never crash."""
    results = case_results(models=[("gpt2-tiny", "gpt2")], workloads=["train"])
    nan_case = next(r for r in results if r.case.precision == "fp16" and r.case.batch_size == 4)
    nan_case.numerics = {**(nan_case.numerics or {}), "verdict": "nan", "max_rel_div": math.nan}
    nan_case.numerics["loss"] = [1.0, math.nan, math.inf]
    bare = CaseResult(Case("bare", "gpt2", "infer", "fp32", 1, 8, "cpu"), "ok")  # every block null
    run_dir = write_run(tmp_path / "run", [*results, bare], {"versions": None, "gpu": "odd"})
    with open(run_dir / RESULTS_FILE, "a", encoding="utf-8") as fh:
        fh.write('{"schema": 1, "case": {"id": "x"}, "status": "ok"}\n')  # case fields missing
        fh.write('{"schema": 1, "case": {"id": "torn"')  # interrupted write
    with pytest.warns(UserWarning, match="truncated last line"):
        html = render_report(run_dir).read_text(encoding="utf-8")
    assert "truncated last line" in html
    assert "NaN/inf" in sections(html)["summary"]
    assert "Could not draw" not in html
    assert figures(sections(html)["loss"]) == 1


def test_out_elsewhere_writes_side_files_next_to_it(tmp_path: Path) -> None:
    """--out puts results.csv and summary.md beside the chosen HTML; the run dir is untouched."""
    run_dir = write_run(tmp_path / "run", extra_failures(), environment())
    out = render_report(run_dir, tmp_path / "site" / "report.html")
    assert out == tmp_path / "site" / "report.html" and out.is_file()
    assert (out.parent / "results.csv").is_file() and (out.parent / "summary.md").is_file()
    assert not (run_dir / "index.html").exists()


def test_a_failing_plot_is_reported_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plotting error costs one figure (with a note), not the report."""
    from bench.views import plots

    def broken(*args: object, **kwargs: object) -> str:
        raise ValueError("boom")

    monkeypatch.setattr(plots, "step_time_boxes", broken)
    run_dir = write_run(tmp_path / "run", case_results(models=[("m", "gpt2")]), environment())
    html = render_report(run_dir).read_text(encoding="utf-8")
    assert "Could not draw this figure: ValueError: boom" in sections(html)["step-times"]
    assert figures(sections(html)["throughput"]) == 2


# --- statistics -------------------------------------------------------------------------------


def _row(
    precision: str, batch_size: int, status: str = "ok", tp: float = 1.0, verdict: str | None = None
) -> analysis.CaseRow:
    """A CaseRow built through the real flattening."""
    result = CaseResult(
        Case("m", "gpt2", "train", precision, batch_size, 16, "cpu"),
        status,
        throughput={"samples_per_s": tp} if status == "ok" else None,
        numerics={"verdict": verdict, "max_rel_div": 0.01} if verdict else None,
    ).to_dict()
    return analysis.case_row(0, result)


def test_comparison_point_is_largest_common_size() -> None:
    """Largest size every precision ran at; where fp32 OOMs at the largest, one it ran at."""
    rows = [_row(p, b) for p in ("fp32", "bf16") for b in (2, 4)] + [_row("bf16", 8)]
    assert analysis.comparison_point(rows) == (4, 16)
    rows.append(_row("fp32", 8, status="oom"))
    assert analysis.comparison_point(rows) == (4, 16)
    assert analysis.comparison_point([_row("fp32", 2, status="skipped")]) is None


def test_recommendation_rules() -> None:
    """Fastest passing mode; nothing when none passes; speed-only without any numerics."""
    rows = [
        _row("fp32", 4, tp=1.0),
        _row("amp_bf16", 4, tp=2.0, verdict="ok"),
        _row("fp16", 4, tp=3.0, verdict="diverged"),
    ]
    summary = analysis.summarize_group("m", "train", rows)
    assert (summary.recommended, summary.speed_only) == ("amp_bf16", None)
    assert [s.speedup for s in summary.precisions] == [1.0, 2.0, 3.0]
    failing = analysis.summarize_group("m", "train", [rows[0], rows[2]])
    assert failing.recommended == "fp32"  # the baseline always passes against itself
    no_numerics = analysis.summarize_group("m", "train", [_row("fp32", 4), _row("bf16", 4, tp=2)])
    assert (no_numerics.recommended, no_numerics.speed_only) == (None, "bf16")
    assert "speed only" in tables.recommendation_text(no_numerics)


def test_pareto_front() -> None:
    """Faster and closer points survive; dominated ones do not; ties are kept."""
    points = [(2.0, 1e-3), (1.5, 1e-2), (3.0, 1e-1), (2.5, 1e-1), (2.0, 1e-3)]
    assert analysis.pareto_front(points) == [0, 2, 4]
    assert analysis.pareto_front([]) == []


def test_relative_divergence_and_duplicates() -> None:
    """|l - b| / |b| per step; a later result line for the same case wins."""
    assert analysis.relative_divergence([1.1, 2.0], [1.0, 0.0])[0] == pytest.approx(0.1)
    assert math.isnan(analysis.relative_divergence([1.0], [0.0])[0])
    first = CaseResult(Case("m", "gpt2", "train", "fp32", 1, 8, "cpu"), "oom").to_dict()
    second = CaseResult(Case("m", "gpt2", "train", "fp32", 1, 8, "cpu"), "ok").to_dict()
    assert [r["status"] for r in analysis.dedupe([first, second])] == ["ok"]
    assert len(results_frame([first, second])) == 1


def test_formatting() -> None:
    """Units and significant figures as the tables show them."""
    assert tables.fmt_bytes(1.5 * 2**30) == "1.50 GiB"
    assert tables.fmt_bytes(819 * 2**20) == "819 MiB"
    assert tables.fmt_seconds(0.0047) == "4.70 ms"
    assert tables.fmt_seconds(2.5e-5) == "25.0 µs"
    assert tables.fmt_number(12345.6) == "12,346"
    assert tables.fmt_speedup(2.186) == "2.19×"
    assert tables.fmt_saving(-0.1) == "−10 %"
    assert tables.fmt_number(None) == tables.MISSING
    assert tables._md("a|b<c>") == "a\\|b&lt;c&gt;"


def test_load_run_roundtrip_of_fixture(tmp_path: Path) -> None:
    """The fixture goes through the real results contract (guards the fixture itself)."""
    run = load_run(realistic_run(tmp_path / "run"))
    assert len(run.results) == 58 and run.env["gpu"]["memory_total_bytes"] == GPU_MEMORY_BYTES


# --- any shape of data ------------------------------------------------------------------------

_numbers = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.integers(-5, 10**12),
    st.booleans(),
    st.just("12"),
)
_lists = st.one_of(st.none(), st.lists(_numbers, max_size=6), st.just("not a list"))


def _maybe(**fields: st.SearchStrategy) -> st.SearchStrategy:
    """A dict with any subset of the fields, or None."""
    return st.one_of(st.none(), st.fixed_dictionaries({}, optional=fields))


_results = st.lists(
    st.fixed_dictionaries(
        {
            "case": st.fixed_dictionaries(
                {"id": st.text(max_size=8)},
                optional={
                    "model": st.one_of(st.none(), st.sampled_from(["m1", "m$2$", "<b>"])),
                    "workload": st.sampled_from(["train", "infer", "generate", "other"]),
                    "precision": st.sampled_from(["fp32", "bf16", "fp16", "odd"]),
                    "batch_size": st.one_of(st.none(), st.sampled_from([1, 2, 0, -1, 2.5])),
                    "seq_len": st.one_of(st.none(), st.sampled_from([8, 16])),
                    "device": st.sampled_from(["cpu", "cuda:0", None]),
                },
            ),
            "status": st.sampled_from(["ok", "ok", "skipped", "oom", "error", "weird"]),
        },
        optional={
            "reason": st.one_of(st.none(), st.text(max_size=10)),
            "timing": _maybe(median_s=_numbers, p10_s=_numbers, step_s=_lists),
            "throughput": _maybe(samples_per_s=_numbers, tokens_per_s=_numbers),
            "memory": _maybe(peak_bytes=_numbers),
            "losses": _lists,
            "numerics": _maybe(
                verdict=st.sampled_from(["ok", "warn", "diverged", "nan", None, 3]),
                loss=_lists,
                baseline_loss=_lists,
                rel_div=_lists,
                max_rel_div=_numbers,
                rel_rmse=_numbers,
                tolerance=_numbers,
                activations=st.one_of(
                    st.none(),
                    st.lists(
                        _maybe(
                            module=st.text(max_size=5),
                            max_abs=_numbers,
                            fp16_headroom_log2=_numbers,
                        ),
                        max_size=4,
                    ),
                ),
            ),
        },
    ),
    max_size=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(results=_results, env=st.one_of(st.just({}), st.just({"gpu": None, "warnings": None})))
def test_statistics_and_tables_accept_any_shape(results: list[dict], env: dict) -> None:
    """Every step before drawing copes with missing, null, mistyped and non-finite values."""
    rows = analysis.case_rows(results)
    summaries = analysis.summarize(rows)
    groups = analysis.group_rows(rows)
    for summary in summaries:
        analysis.loss_data(summary, groups[(summary.model, summary.workload)])
        analysis.step_samples(summary)
        tables.summary_cells(summary)
        for field in ("throughput", "peak_bytes"):
            analysis.series_vs_batch(
                groups[(summary.model, summary.workload)], summary.seq_len, field
            )
    analysis.tradeoff_points(summaries)
    analysis.activation_profiles(rows)
    analysis.problem_groups(rows)
    analysis.run_warnings(env, [], rows)
    tables.summary_markdown_text(summaries)
    tables.raw_table(rows)
    tables.results_frame(results)
    tables.environment_items(env)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(results=_results)
def test_rendering_accepts_any_shape(results: list[dict]) -> None:
    """The whole page, figures included, renders from malformed results without a failed figure."""
    run = Run(
        path=Path("run"), env={"gpu": {"memory_total_bytes": 2**30}}, results=results, warnings=[]
    )
    html = render_html(run)
    assert "Could not draw" not in html
    assert html.rstrip().endswith("</html>")

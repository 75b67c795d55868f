"""The HTML report (bench.views.report): rendered from a real smoke run (tests/fixtures/smoke-run)
and from a synthetic GPU run; content, escaping, self-containment, degenerate runs."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest
from report_fixtures import (
    FIXTURE_RUN,
    GPU_MEMORY_BYTES,
    case_results,
    environment,
    extra_failures,
    realistic_run,
    write_run,
)
from runs import mpbench

from bench.analysis.summary import analyze
from bench.results.rundir import ENV_FILE, RESULTS_FILE, load_run
from bench.results.schema import Case, CaseResult
from bench.views import format as fmt
from bench.views.report import render_report

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


def summary_cells(html: str) -> dict[tuple[str, str], dict[str, str]]:
    """(group, precision) -> {speedup, saving} as the page's summary tables show them."""
    out = {}
    for group, body in re.findall(
        r'<table class="summary" data-group="([^"]+)">(.*?)</table>', html, re.S
    ):
        for precision, row in re.findall(r'data-precision="([^"]+)">(.*?)</tr>', body, re.S):
            cells = dict(re.findall(r'data-col="(\w+)">([^<]*)<', row))
            out[(group, precision)] = cells
    return out


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The committed real smoke run, rendered once for the module."""
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    shutil.copytree(FIXTURE_RUN, run_dir)
    path = render_report(run_dir)
    return path, path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def realistic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The synthetic GPU run, rendered once for the module."""
    run_dir = realistic_run(tmp_path_factory.mktemp("realistic"))
    path = render_report(run_dir)
    return path, path.read_text(encoding="utf-8")


# --- the real smoke run -----------------------------------------------------------------------


def test_the_fixture_is_a_real_run_that_reads_back() -> None:
    """Every line validates through the one reader; it is what the engine wrote on a CPU."""
    run = load_run(FIXTURE_RUN)
    assert len(run.results) == 72 and not run.warnings
    assert {r.status for r in run.results} == {"ok", "skipped"}
    ok = [r for r in run.results if r.ok]
    assert {r.timing.method for r in ok} == {"perf-counter"}
    assert {r.memory.method for r in ok} <= {"vmhwm", "rss-sampled"}
    assert all(r.verdict is not None for r in ok)  # the numerics pass ran for every triple
    assert run.identity.kind == "cpu" and run.numerics_enabled


def test_default_output_and_side_files(smoke: tuple[Path, str]) -> None:
    """index.html, results.csv and summary.md land in the run directory; no temp file stays."""
    path, html = smoke
    assert path.name == "index.html"
    assert (path.parent / "results.csv").is_file()
    assert (path.parent / "summary.md").is_file()
    assert html.startswith("<!DOCTYPE html>")
    assert not list(path.parent.glob("*.tmp"))


def test_every_section_has_its_plots(smoke: tuple[Path, str]) -> None:
    """One figure per model x workload (or per workload / model) in each plot section."""
    found = sections(smoke[1])
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


def test_header_shows_the_cpu_environment(smoke: tuple[Path, str]) -> None:
    header = smoke[1].split("<main>")[0]
    env = json.loads((FIXTURE_RUN / ENV_FILE).read_text())
    for text in (env["suite"], env["started_at"], env["cpu"]["model"], env["versions"]["torch"]):
        assert text in header, text
    assert "Skipped modes: tf32 (8), mxfp8 (8)." in header


def test_summary_shows_the_analysis(smoke: tuple[Path, str]) -> None:
    """Every speedup, saving and recommendation on the page is the analysis' own figure."""
    analysis = analyze(load_run(FIXTURE_RUN).results)
    cells = summary_cells(smoke[1])
    summary = sections(smoke[1])["summary"]
    for group in analysis.groups:
        key = f"{group.model}/{group.workload}"
        assert f"({fmt.point_label(group)})" in summary
        for mode in group.modes:
            if mode.ok:
                assert cells[(key, mode.precision)] == {
                    "speedup": fmt.fmt_speedup(mode.speedup),
                    "saving": fmt.fmt_saving(mode.memory_saving),
                }
    recommended = re.findall(r'data-recommended="([^"]*)"', summary)
    assert recommended == [g.recommended or "" for g in analysis.groups]
    assert "skipped: tf32 needs a CUDA GPU" in summary


def test_results_csv_is_flat(smoke: tuple[Path, str]) -> None:
    """One row per case, dotted scalar columns, per-step lists left out."""
    with open(smoke[0].parent / "results.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 72
    columns = rows[0].keys()
    assert list(columns)[:3] == ["case.id", "status", "reason"]
    assert {"timing.median_s", "timing.method", "throughput.samples_per_s"} <= columns
    assert {"memory.peak_bytes", "numerics.verdict"} <= columns
    assert not {"timing.step_s", "losses", "numerics.loss", "numerics.activations"} & columns
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(float(r["timing.median_s"]) > 0 for r in ok)


def test_summary_markdown_is_plain_markdown(smoke: tuple[Path, str]) -> None:
    """summary.md: a table per model x workload, reasons escaped the Markdown way, no HTML."""
    text = (smoke[0].parent / "summary.md").read_text(encoding="utf-8")
    assert text.count("| precision |") == 4
    assert "### gpt2-tiny / train (batch 4, seq 64)" in text
    assert "\\>= 8.0" in text  # "compute capability >= 8.0", escaped for Markdown, not HTML
    assert "&gt;" not in text and "&lt;" not in text and "&amp;" not in text


def test_no_external_references(smoke: tuple[Path, str], realistic: tuple[Path, str]) -> None:
    """Nothing is loaded from outside, and no URL appears at all (SVG namespaces included)."""
    for _, html in (smoke, realistic):
        assert not re.search(r"https?://", html)
        assert not re.search(r"@import|<link\b|<iframe\b|<object\b|<embed\b", html, re.I)
        assert "<!DOCTYPE svg" not in html and "<?xml" not in html


def test_svg_ids_are_unique(smoke: tuple[Path, str]) -> None:
    """Many inline SVGs share one id space: every id must be unique and every reference resolve."""
    html = smoke[1]
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))
    refs = set(re.findall(r'url\(#([^)]+)\)|href="#([^"]+)"', html))
    missing = {r for pair in refs for r in pair if r and r not in set(ids)}
    assert missing == set()


def test_render_is_deterministic_and_leaves_matplotlib_alone(tmp_path: Path) -> None:
    """The same run renders to the same bytes; global rcParams and pyplot are untouched."""
    before = dict(matplotlib.rcParams)
    first = render_report(FIXTURE_RUN, tmp_path / "a" / "index.html").read_text(encoding="utf-8")
    second = render_report(FIXTURE_RUN, tmp_path / "b" / "index.html").read_text(encoding="utf-8")
    assert first == second
    assert dict(matplotlib.rcParams) == before
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or pyplot.get_fignums() == []


def test_report_json_is_the_analysis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(FIXTURE_RUN, run_dir)
    assert mpbench("report", str(run_dir), "--json", str(tmp_path / "a.json")) == 0
    data = json.loads((tmp_path / "a.json").read_text())
    assert data == json.loads(json.dumps(analyze(load_run(run_dir).results).to_dict()))
    assert {g["recommended"] for g in data["groups"]} <= {"amp_bf16", "bf16", "fp32", None}


# --- the synthetic GPU run --------------------------------------------------------------------


def test_gpu_header_warnings_and_device_memory(realistic: tuple[Path, str]) -> None:
    html = realistic[1]
    header = html.split("<main>")[0]
    for text in (
        "tiny-sweep",
        "NVIDIA A100-SXM4-40GB",
        "550.54.15",
        "matmul: off, cudnn: on",
        "1 case(s) failed (1 crashed).",
        "1 case(s) ran out of memory.",
        "Skipped modes: fp8 (8).",
    ):
        assert text in header, text
    assert sections(html)["memory"].count("device memory") >= 4


def test_summary_marks_the_recommended_mode(realistic: tuple[Path, str]) -> None:
    """Training recommends amp_fp16 (bf16/fp16 are faster but fail numerics); inference bf16."""
    summary = sections(realistic[1])["summary"]
    assert re.findall(r'data-recommended="([^"]*)"', summary) == [
        "amp_fp16",
        "bf16",
        "amp_fp16",
        "bf16",
    ]
    assert "(batch 4, seq 32)" in summary  # the headline point: fp32 and every mode ran there
    assert 'class="v-diverged">diverged' in summary
    assert 'class="v-baseline">baseline' in summary


def test_problems_and_raw_table(realistic: tuple[Path, str]) -> None:
    """Skipped/OOM/crashed cases with reasons; every case in the sortable raw table."""
    found = sections(realistic[1])
    problems = found["problems"]
    assert "CUDA out of memory. Tried to allocate 2.00 GiB" in problems
    assert "worker killed by SIGSEGV during the case" in problems
    assert problems.index("crashed") < problems.index("oom") < problems.index("skipped")
    raw = found["raw"]
    assert raw.count("<tr>") == 2 * 2 * 7 * 2 + 2 + 1  # cases + header row
    assert '<a href="results.csv" download>results.csv</a>' in raw
    assert 'data-v="' in raw and 'table class="sortable"' in raw
    assert realistic[1].count("<script") == 1  # the inline sort script, nothing else


def test_fixture_reads_back(tmp_path: Path) -> None:
    """The synthetic fixture goes through the real results contract (guards the fixture)."""
    run = load_run(realistic_run(tmp_path / "run"))
    assert len(run.results) == 58 and run.env["gpu"]["memory_total_bytes"] == GPU_MEMORY_BYTES


# --- escaping ---------------------------------------------------------------------------------


def test_untrusted_strings_are_escaped(tmp_path: Path) -> None:
    """A hostile model name, error message, suite name and env value never reach the page raw."""
    model = f"gpt2 {HOSTILE} $x^2$"
    results = case_results(models=[(model, "gpt2")])
    results.append(
        CaseResult(Case(model, "gpt2", "train", "fp16", 64, 32, "cuda:0"), "error", reason=HOSTILE)
    )
    env = environment(suite=HOSTILE, device_name=HOSTILE)
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
    assert escaped in html.split("<main>")[0]  # suite, device name
    assert escaped in found["problems"]  # the error message
    assert escaped in found["summary"] and escaped in found["raw"]
    # matplotlib escapes text in the SVG figures too (titles carry the model name).
    svg_text = "".join(re.findall(r"<svg.*?</svg>", found["throughput"], re.S))
    assert escaped in svg_text
    assert "$x^2$" in svg_text  # drawn as text, not parsed as mathtext
    assert "\\mathdefault" not in html  # ...while log axes still typeset their own tick labels
    md = (run_dir / "summary.md").read_text(encoding="utf-8")
    assert "\\<script\\>" in md and not re.search(r"(?<!\\)<", md)  # every < escaped


# --- degenerate and partial runs --------------------------------------------------------------


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *argv], capture_output=True, text=True, timeout=120
    )


def test_empty_or_foreign_results_exit_2(tmp_path: Path) -> None:
    """A run with no result, or one another schema wrote, is an input error, not a page."""
    empty = write_run(tmp_path / "empty", [], environment())
    proc = run_cli("report", str(empty))
    assert proc.returncode == 2 and "holds no case result" in proc.stderr
    assert not (empty / "index.html").exists()
    future = write_run(tmp_path / "future", case_results()[:1], environment())
    line = json.loads((future / RESULTS_FILE).read_text())
    (future / RESULTS_FILE).write_text(json.dumps({**line, "schema": 99}) + "\n")
    proc = run_cli("report", str(future))
    assert proc.returncode == 2 and "schema 99 was written by a newer mpbench" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


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
    assert "compute capability &gt;= 8.9" in sections(html)["problems"]


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
    empty = {name for name, body in found.items() if 'class="empty"' in body}
    assert {"tradeoff", "activations"} <= empty
    assert "speed only" in (run_dir / "summary.md").read_text(encoding="utf-8")


def test_nan_numerics_and_a_torn_line_degrade(tmp_path: Path) -> None:
    """NaN divergence and losses, and a torn last line, show as such; nothing fails to draw."""
    results = case_results(models=[("gpt2-tiny", "gpt2")], workloads=["train"])
    for i, result in enumerate(results):  # the pass is shared by every case of the triple
        if result.case.precision == "fp16":
            numerics = {
                **result.numerics,
                "verdict": "nan",
                "max_rel_div": float("nan"),
                "loss": [1.0, float("nan"), float("inf")],
                "first_nan_step": 1,
            }
            results[i] = result.replace(numerics=numerics)
    run_dir = write_run(tmp_path / "run", results, environment())
    with open(run_dir / RESULTS_FILE, "a", encoding="utf-8") as fh:
        fh.write('{"schema": 2, "case": {"id": "torn"')  # interrupted write
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


def plain_pytest_benchmark(path: Path) -> Path:
    """A pytest-benchmark file of plain tests (no sweep point), two of one parametrised test."""

    def bench(name: str, median: float) -> dict:
        data = [median * f for f in (0.98, 1.0, 1.03)]
        return {
            "name": name,
            "fullname": f"tests/test_x.py::{name}",
            "extra_info": {},
            "stats": {"data": data, "median": median, "mean": median, "rounds": 3},
        }

    doc = {
        "machine_info": {"node": "laptop", "cpu": {"brand_raw": "Intel Core i7"}},
        "benchmarks": [
            bench("test_sum[1000]", 0.01),
            bench("test_sum[2000]", 0.02),
            bench("test_other", 0.5),
        ],
        "datetime": "2026-11-29T12:00:00+00:00",
    }
    path.write_text(json.dumps(doc))
    return path


def test_plain_pytest_benchmarks_are_listed_not_summarised(tmp_path: Path) -> None:
    """Tests that are no sweep point have no fp32 to compare with: each is listed on its own,
    and the report of a file (not a run directory) needs --out."""
    source = plain_pytest_benchmark(tmp_path / "plain.json")
    proc = run_cli("report", str(source))
    assert (
        proc.returncode == 2 and "--out" in proc.stderr and "pytest-benchmark file" in proc.stderr
    )
    assert not (tmp_path / "index.html").exists()
    out = tmp_path / "site" / "index.html"
    assert mpbench("report", str(source), "--out", str(out)) == 0
    html = out.read_text(encoding="utf-8")
    others = html.split("Other benchmarks")[1].split("</table>")[0]
    for name in ("test_sum[1000]", "test_sum[2000]", "test_other"):
        assert f"tests/test_x.py::{name}" in others
    assert "no successful case" not in html and 'table class="summary"' not in html
    md = (out.parent / "summary.md").read_text(encoding="utf-8")
    assert "### Other benchmarks" in md and "test_sum\\[2000\\]" in md

"""One answer everywhere: for any set of results, the terminal results table, the verdict table,
summary.md, the HTML page's summary and `mpbench report --json` show the same speedups, memory
savings and recommended mode (they all read one RunAnalysis)."""

from __future__ import annotations

import json
import math
import re
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from bench.analysis.summary import analyze
from bench.results.manifest import RunManifest
from bench.results.rundir import Run
from bench.results.schema import (
    Case,
    CaseResult,
    Flops,
    Memory,
    TelemetryReading,
    Throughput,
    Timing,
)
from bench.views import format as fmt
from bench.views import plots, terminal
from bench.views.markdown import summary_markdown
from bench.views.report import render_html, report_json

MODELS = {"gpt2-tiny": "gpt2", "bert-tiny": "bert"}
PRECISIONS = ("fp32", "amp_bf16", "bf16", "fp16")
STATUSES = ("ok", "ok", "ok", "oom", "skipped", "error")


@st.composite
def result_sets(draw: Any) -> list[CaseResult]:
    """Results of a sweep with holes (fp32 may be missing altogether): any statuses, numerics
    present, absent, failed or NaN (shared by every case of a model, workload and precision, as
    the engine does), and maybe a few plain pytest-benchmark tests that are no sweep point."""
    models = draw(st.lists(st.sampled_from(sorted(MODELS)), min_size=1, max_size=2, unique=True))
    workloads = draw(
        st.lists(st.sampled_from(["train", "infer"]), min_size=1, max_size=2, unique=True)
    )
    precisions = draw(st.lists(st.sampled_from(PRECISIONS), min_size=1, max_size=4, unique=True))
    batch_sizes = draw(st.lists(st.sampled_from([1, 2, 4]), min_size=1, max_size=3, unique=True))
    seq_lens = draw(st.lists(st.sampled_from([16, 32]), min_size=1, max_size=2, unique=True))
    numerics_kind = st.sampled_from(["none", "ok", "warn", "diverged", "nan", "error"])
    # --execution: a precision ran eager, compiled, graphed, or several side by side (each
    # execution's cases are their own modes; fp32 may be missing in one execution only).
    variants = st.sampled_from(
        [("eager",), ("eager",), ("eager", "compiled"), ("compiled",), ("eager", "graphs")]
    )
    out = []
    shapes = [(b, s) for b in batch_sizes for s in seq_lens]
    modes = [(p, c) for p in precisions for c in draw(variants)]
    for model in models:
        for workload in workloads:
            for precision, execution in modes:
                kind = draw(numerics_kind)
                for batch_size, seq_len in shapes:
                    if draw(st.integers(0, 9)) == 0:
                        continue  # a case the sweep never ran
                    case = Case(
                        model,
                        MODELS[model],
                        workload,
                        precision,
                        batch_size,
                        seq_len,
                        "cpu",
                        execution=execution,
                    )
                    status = draw(st.sampled_from(STATUSES))
                    if status != "ok":
                        out.append(CaseResult(case, status, f"{status} <reason> | here"))
                        continue
                    median = draw(st.floats(1e-4, 1.0))
                    peak = draw(st.one_of(st.none(), st.integers(1, 2**34)))
                    compile_s = None if execution == "eager" else draw(st.floats(0.1, 60.0))
                    # A GPU case's GPU-busy fraction, host-bound below 0.85; none on a CPU.
                    busy = draw(st.one_of(st.none(), st.floats(0.2, 1.0)))
                    out.append(
                        CaseResult(
                            case,
                            "ok",
                            timing=Timing.from_samples(
                                [median] * 3,
                                1,
                                "perf-counter",
                                compile_s=compile_s,
                                gpu_busy_fraction=busy,
                            ),
                            throughput=Throughput.from_median(batch_size, seq_len, median),
                            memory=Memory(peak, None, "vmhwm" if peak else "unavailable"),
                            numerics=_numerics(kind, workload),
                            flops=draw(_flops()),
                            telemetry=draw(_telemetry()),
                        )
                    )
    for i in range(draw(st.integers(0, 2))):  # plain pytest-benchmark tests
        case = Case(f"test_{i}", None, "benchmark", "unknown", None, None, None, f"t.py::test_{i}")
        timing = Timing.from_samples([0.01] * 3, None, "pytest-benchmark")
        out.append(CaseResult(case, "ok", timing=timing))
    return out


def _flops() -> Any:
    """No count, a count without a peak (a CPU), or a count and a peak (a known GPU)."""
    count = st.integers(10**6, 10**13)
    return st.one_of(
        st.none(),
        st.builds(Flops, count, st.just("torch FlopCounterMode"), peak_reason=st.just("CPU")),
        st.builds(
            Flops, count, st.just("torch FlopCounterMode"), peak_tflops=st.floats(10.0, 2000.0)
        ),
    )


def _telemetry() -> Any:
    """No telemetry, NVML unavailable (a CPU), or an energy figure."""
    return st.one_of(
        st.none(),
        st.just(TelemetryReading("unavailable", "no NVML on CPU")),
        st.builds(
            TelemetryReading,
            st.just("nvml-energy-counter"),
            energy_per_sample_j=st.floats(1e-5, 50.0),
        ),
    )


def _numerics(kind: str, workload: str) -> dict[str, Any] | None:
    if kind == "none":
        return None
    if kind == "error":
        return {"verdict": None, "error": "RuntimeError: boom"}
    key = "max_rel_div" if workload == "train" else "rel_rmse"
    return {"verdict": kind, key: math.nan if kind == "nan" else 0.003}


def rich_rows(table: Any) -> list[list[str]]:
    """The body rows of a rich table, as text cells."""
    console = Console(record=True, width=500)
    console.print(table)
    rows = []
    for line in console.export_text().splitlines():
        if line.startswith("│"):
            rows.append([cell.strip() for cell in line.strip("│").split("│")])
    return rows


def markdown_tables(text: str) -> dict[str, dict[str, list[str]]]:
    """'model/workload' -> precision (recommended mark stripped) -> cells, from summary.md; the
    header row of each table under the key "| precision"."""
    out: dict[str, dict[str, list[str]]] = {}
    for block in text.split("### ")[1:]:
        title = block.splitlines()[0]
        if title.startswith(("Other benchmarks", "Execution gains")):
            continue
        model, workload = title.split(" (")[0].split(" / ")
        rows = {}
        for line in block.splitlines():
            if line.startswith("| "):
                cells = [c.strip() for c in line.strip("|").split(" | ")]
                rows["| precision" if line.startswith("| precision") else cells[0]] = cells
        out[f"{model}/{workload}"] = rows
    return out


def markdown_gains(text: str) -> list[list[str]]:
    """The body rows of summary.md's execution-gain table, unescaped."""
    if "### Execution gains" not in text:
        return []
    block = text.split("### Execution gains")[1].split("### ")[0]
    rows = [line for line in block.splitlines() if line.startswith("| ")][1:]  # no header
    return [
        [cell.strip().replace("\\", "") for cell in line.strip("|").split(" | ")] for line in rows
    ]


def html_summary(html: str) -> tuple[dict[tuple[str, str], dict[str, str]], list[str]]:
    """(group, precision) -> speedup, saving and optional cells by header, and the recommended
    mode per group."""
    cells = {}
    for group, body in re.findall(
        r'<table class="summary" data-group="([^"]+)">(.*?)</table>', html, re.S
    ):
        extra_headers = re.findall(r'<th class="num">([^<]*)</th>', body)[5:]
        for precision, row in re.findall(r'data-precision="([^"]+)">(.*?)</tr>', body, re.S):
            found = dict(re.findall(r'data-col="(\w+)">([^<]*)<', row))
            for i, header in enumerate(extra_headers, start=1):
                if f"extra{i}" in found:
                    found[header] = found.pop(f"extra{i}")
            cells[(group, precision)] = found
    return cells, re.findall(r'data-recommended="([^"]*)"', html)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(results=result_sets())
def test_every_view_shows_the_same_figures(results: list[CaseResult]) -> None:
    analysis = analyze(results)
    data = json.loads(report_json(analysis))  # strict JSON: no NaN
    results_rows = {row[0]: row for row in rich_rows(terminal.results_table(analysis))}
    verdict_rows = rich_rows(terminal.verdict_table(analysis))
    markdown = markdown_tables(summary_markdown(analysis))
    md_headers = {key: rows.pop("| precision") for key, rows in markdown.items()}
    with pytest.MonkeyPatch.context() as mp:  # figures are not under test here: keep it fast
        for name in (
            "throughput_vs_batch",
            "memory_vs_batch",
            "speedup_bars",
            "loss_curves",
            "tradeoff_scatter",
            "step_time_boxes",
            "execution_gain_bars",
            "activation_headroom",
        ):
            mp.setattr(plots, name, lambda *a, **k: "<svg></svg>")
        html = render_html(Run(Path("run"), RunManifest(), results), analysis)
        html_cells, html_recommended = html_summary(html)
        html_gains = [
            [unescape(cell) for cell in re.findall(r'<td data-col="\d+">([^<]*)</td>', row)]
            for row in re.findall(r'<tr data-row="execution">(.*?)</tr>', html, re.S)
        ]
    # Host-bound cases: named in the report's banner, with its one-line explanation.
    host_bound = [case["id"] for case in data["cases"] if case["host_bound"]]
    assert ("case(s) host-bound: the GPU was busy less than 85%" in html) == bool(host_bound)

    assert [g["recommended"] or "" for g in data["groups"]] == html_recommended
    for group, group_json in zip(analysis.groups, data["groups"], strict=True):
        key = f"{group.model}/{group.workload}"
        assert group_json["recommended"] == group.recommended
        shape = f"bs{group.batch_size} seq{group.seq_len}" if group.batch_size else ""
        rows = [r for r in verdict_rows if r[0] == group.model and r[1] == group.workload]
        starred = [r[2].removesuffix(" ★") for r in rows if r[2].endswith("★")]
        assert starred == ([group.recommended] if group.recommended else [])
        speed_only = " (fastest, speed only)"
        fastest = [r[2].removesuffix(speed_only) for r in rows if r[2].endswith(speed_only)]
        assert fastest == ([group.speed_only] if group.speed_only else [])
        md_rows = markdown[key]
        md_recommended = [p.split(" (")[0] for p in md_rows if p.endswith("(recommended)")]
        assert md_recommended == starred
        for mode, mode_json, row in zip(group.modes, group_json["modes"], rows, strict=True):
            assert mode_json["speedup"] == mode.speedup
            assert mode_json["memory_saving"] == mode.memory_saving
            assert row[2].removesuffix(" ★").removesuffix(speed_only) == mode.label
            assert row[3] == shape
            md = next(c for p, c in md_rows.items() if p.split(" (")[0] == mode.label)
            if not mode.ok:
                assert row[4] == mode.status and md[1].startswith(mode.status)
                continue
            speedup = fmt.fmt_speedup(mode.speedup, mode.host_bound)  # marked where host-bound
            saving = fmt.fmt_saving(mode.memory_saving)
            assert row[4] == speedup and md[2] == speedup
            assert (row[5] or fmt.MISSING) == saving and md[4] == saving
            extras = dict(
                zip(
                    [column.header for column in fmt.extra_columns(group)],
                    fmt.extra_cells(mode, fmt.extra_columns(group)),
                    strict=True,
                )
            )
            assert html_cells[(key, mode.label)] == {"speedup": speedup, "saving": saving, **extras}
            md_extras = dict(zip(md_headers[key][7:], md[7:], strict=True))
            assert md_extras == extras
            # TFLOP/s, MFU and energy: the terminal shows the analysis' own figures too.
            assert extras.get("TFLOP/s", fmt.MISSING) == fmt.fmt_tflops(mode.achieved_tflops)
            # The per-case results table shows the same figure for the headline case.
            assert results_rows[mode.case_id][5] == speedup
    # The typed rows the views read are the cases of the JSON: missing figures None, never NaN.
    assert [row.id for row in analysis.rows] == [case["id"] for case in data["cases"]]
    for row, case in zip(analysis.rows, data["cases"], strict=True):
        values = vars(row).values()
        assert not any(isinstance(v, float) and math.isnan(v) for v in values)
        assert (row.speedup, row.memory_saving) == (case["speedup"], case["memory_saving"])
    # Every per-case speedup in the results table is the analysis' own, and the analysis' own is
    # right: eager fp32's median over the case's, at the same model, workload and shape.
    by_id = {r.case.id: r for r in results}
    for case in data["cases"]:
        if case["status"] != "ok":
            continue
        assert results_rows[case["id"]][5] == fmt.fmt_speedup(case["speedup"], case["host_bound"])
        busy = case["gpu_busy_fraction"]
        assert case["host_bound"] is (busy is not None and busy < 0.85)
        assert ("host-bound" in results_rows[case["id"]][-1]) is case["host_bound"]
        assert results_rows[case["id"]][6] == fmt.fmt_tflops(case["achieved_tflops"])
        result = by_id[case["id"]]
        if result.flops is not None:  # achieved TFLOP/s and MFU: counted FLOPs / median step
            tflops = result.flops.per_step / result.median_s / 1e12
            assert case["achieved_tflops"] == pytest.approx(tflops)
            peak = result.flops.peak_tflops
            assert case["mfu"] == (pytest.approx(tflops / peak) if peak else None)
        else:
            assert case["achieved_tflops"] is None and case["mfu"] is None
        # Like with like: fp32 of the same execution (compiled vs compiled, graphs vs graphs).
        fp32_id = result.case.id.replace(f"/{result.case.precision}/", "/fp32/", 1)
        fp32 = by_id.get(fp32_id)
        if result.case.label is None and fp32 is not None and fp32.ok:
            assert case["speedup"] == pytest.approx(fp32.median_s / result.median_s)
        else:
            assert case["speedup"] is None
        # The execution gain: the same precision run eagerly over this case.
        eager = by_id.get(result.case.id.removesuffix(f"/{result.case.execution}"))
        if result.case.execution != "eager" and result.case.label is None and eager and eager.ok:
            assert case["execution_gain"] == pytest.approx(eager.median_s / result.median_s)
        else:
            assert case["execution_gain"] is None
    # The execution gains: one table in the terminal, summary.md, the HTML page and --json.
    gain_rows = [fmt.gain_cells(gain) for gain in analysis.execution_gains]
    assert [g["gain"] for g in data["execution_gains"]] == [
        g.gain for g in analysis.execution_gains
    ]
    table = terminal.execution_table(analysis)
    assert (rich_rows(table) if table is not None else []) == gain_rows
    assert markdown_gains(summary_markdown(analysis)) == gain_rows
    assert html_gains == gain_rows
    for gain, cells in zip(analysis.execution_gains, gain_rows, strict=True):
        if gain.gain is not None:
            assert cells[4] == fmt.fmt_speedup(gain.eager_median_s / gain.median_s)

"""bench.analysis.compare (statistics, matching), bench.results.pytest_benchmark, the compare
CLI views and the HTML page. Run directories come from tests/runs.py."""

from __future__ import annotations

import json
import math
import random
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from runs import (
    A100,
    CPU_MODEL,
    H100,
    edit_results,
    fixture_cases,
    load,
    make_env,
    mpbench,
    scale_timing,
    write_run,
)

from bench.analysis.compare import CompareOptions, compare_runs
from bench.analysis.stats import bootstrap_median_ratio_ci, mann_whitney_p, smallest_p_value
from bench.results.identity import DeviceIdentity
from bench.results.inputs import load_input
from bench.results.manifest import RunManifest
from bench.results.rundir import Run
from bench.results.schema import Case, CaseResult, Memory, Throughput, Timing

# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def test_mann_whitney_separates_shifted_samples_and_not_noise() -> None:
    rng = random.Random(1)
    base = [1.0 + rng.gauss(0, 0.02) for _ in range(10)]
    same = [1.0 + rng.gauss(0, 0.02) for _ in range(10)]
    slower = [1.2 + rng.gauss(0, 0.02) for _ in range(10)]
    assert mann_whitney_p(base, slower) < 0.002
    assert mann_whitney_p(base, same) > 0.01
    assert mann_whitney_p([1.0] * 5, [1.0] * 5) == 1.0
    assert mann_whitney_p([1.0], [2.0, 3.0]) is None


def test_smallest_p_value_is_the_exact_bound() -> None:
    assert smallest_p_value(10, 10) == pytest.approx(2 / math.comb(20, 10))
    # Thousands of rounds (plain pytest-benchmark files) must not overflow a float.
    assert smallest_p_value(600, 600) == 0.0 or smallest_p_value(600, 600) < 1e-300
    assert smallest_p_value(8000, 3500) >= 0.0
    assert smallest_p_value(5, 5) == pytest.approx(2 / 252)
    # Complete separation reaches exactly the bound.
    assert mann_whitney_p([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(2 / 252)


def test_bootstrap_interval_brackets_the_ratio_and_is_reproducible() -> None:
    rng = random.Random(2)
    base = [1.0 + rng.gauss(0, 0.03) for _ in range(20)]
    current = [x * 1.5 for x in base]
    low, high = bootstrap_median_ratio_ci(base, current, 1000)
    assert low < 1.5 < high
    assert bootstrap_median_ratio_ci(base, current, 1000) == (low, high)
    assert bootstrap_median_ratio_ci([1.0], current, 1000) is None


@settings(max_examples=40, deadline=None)
@given(
    factor=st.floats(min_value=1.05, max_value=5.0),
    samples=st.lists(st.floats(min_value=1e-4, max_value=1.0), min_size=8, max_size=15),
)
def test_slower_steps_are_worse_in_both_timing_metrics(factor: float, samples: list[float]) -> None:
    """Direction: longer steps are worse step time and worse (lower) throughput, by the same
    ratio, with the same p-value."""
    case = Case("m", "gpt2", "train", "fp32", 4, 16, "cpu")

    def result(step_s: list[float]) -> CaseResult:
        timing = Timing.from_samples(step_s, 1, "perf-counter")
        throughput = Throughput.from_median(4, 16, timing.median_s)
        return CaseResult(case, "ok", timing=timing, throughput=throughput, memory=Memory(1))

    slow = [s * factor for s in samples]
    comp = compare_runs(
        Run(Path("b"), RunManifest(), [result(samples)]),
        Run(Path("c"), RunManifest(), [result(slow)]),
        CompareOptions(),
    )
    m = comp.cases[0].metrics
    assert m["step_time"].worse_pct > 0 and m["step_time"].direction == "worse"
    assert m["throughput"].worse_pct > 0 and m["throughput"].change_pct < 0
    assert m["throughput"].ratio == pytest.approx(1 / m["step_time"].ratio)
    assert m["throughput"].p_value == m["step_time"].p_value
    if min(slow) > max(samples):  # complete separation: as significant as 8+ samples allow
        assert m["step_time"].significant is True


# ---------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------


def test_cases_are_matched_by_id_and_one_sided_cases_listed(tmp_path: Path) -> None:
    cases = fixture_cases()
    base = write_run(tmp_path / "base", cases[:-1])
    current = write_run(tmp_path / "cur", cases[1:], seed=1)
    comp = compare_runs(load(base), load(current))
    presence = {c.case_id: c.presence for c in comp.cases}
    assert presence[cases[0].id] == "only_base"
    assert presence[cases[-1].id] == "only_current"
    assert sum(p == "both" for p in presence.values()) == len(cases) - 2
    assert len(comp.cases) == len(cases)


def test_metrics_have_ratios_and_directions(tmp_path: Path) -> None:
    case = fixture_cases()[1]  # amp_bf16, has numerics
    base = write_run(tmp_path / "base", [case])
    current = write_run(tmp_path / "cur", [case])

    def worse(r: dict[str, Any]) -> dict[str, Any]:
        r["memory"]["peak_bytes"] *= 2
        r["numerics"]["max_rel_div"] *= 3
        return scale_timing(r, 1.25)

    edit_results(current, worse)
    m = compare_runs(load(base), load(current)).cases[0].metrics
    assert m["throughput"].ratio == pytest.approx(0.8)
    assert m["throughput"].change_pct == pytest.approx(-20)
    assert m["throughput"].worse_pct == pytest.approx(20)
    assert m["step_time"].ratio == pytest.approx(1.25)
    assert m["peak_memory"].ratio == pytest.approx(2.0) and m["peak_memory"].significant
    assert m["divergence"].ratio == pytest.approx(3.0) and m["divergence"].worse_pct > 0
    assert m["throughput"].significant is True and m["throughput"].p_value < 1e-4
    assert m["step_time"].ci_low < 1.25 < m["step_time"].ci_high


def test_status_and_verdict_changes(tmp_path: Path) -> None:
    cases = fixture_cases()
    base = write_run(tmp_path / "base", cases, status={cases[3].id: "oom"})
    current = write_run(tmp_path / "cur", cases, status={cases[0].id: "oom"})

    def diverge(r: dict[str, Any]) -> dict[str, Any]:
        if r["case"]["id"] == cases[1].id:
            r["numerics"]["verdict"] = "diverged"
        if r["case"]["id"] == cases[2].id:
            r["numerics"]["verdict"] = "ok"
        return r

    edit_results(
        base,
        lambda r: (
            r
            if r["case"]["id"] != cases[2].id
            else {**r, "numerics": {**r["numerics"], "verdict": "warn"}}
        ),
    )
    edit_results(current, diverge)
    by_id = {c.case_id: c for c in compare_runs(load(base), load(current)).cases}
    assert by_id[cases[0].id].status_change == "worse"
    assert by_id[cases[0].id].metrics == {}
    assert by_id[cases[3].id].status_change == "better"
    assert by_id[cases[1].id].verdict_change == "worse"
    assert by_id[cases[2].id].verdict_change == "better"
    assert by_id[cases[4].id].status_change == "same"


def test_too_few_samples_cannot_be_significant(tmp_path: Path) -> None:
    case = fixture_cases()[0]
    base = write_run(tmp_path / "base", [case], steps=5)
    current = write_run(tmp_path / "cur", [case], steps=5)
    edit_results(current, lambda r: scale_timing(r, 2.0))
    delta = compare_runs(load(base), load(current)).cases[0].metrics["throughput"]
    assert delta.significant is None and "too few samples" in delta.test


def test_divergence_from_zero_has_no_ratio(tmp_path: Path) -> None:
    case = fixture_cases()[1]
    base = write_run(tmp_path / "base", [case])
    current = write_run(tmp_path / "cur", [case])
    edit_results(base, lambda r: {**r, "numerics": {**r["numerics"], "max_rel_div": 0.0}})
    delta = compare_runs(load(base), load(current)).cases[0].metrics["divergence"]
    assert delta.ratio is None and delta.worse_pct == math.inf and delta.significant


def test_device_identity_from_env() -> None:
    gpu = DeviceIdentity.from_env(make_env(H100))
    assert gpu.kind == "cuda" and gpu.name == H100["name"] and gpu.compute_capability == "9.0"
    assert gpu.slug == "nvidia-h100-80gb-hbm3"
    assert "NVIDIA H100" in gpu.label and "driver 550.54.15" in gpu.label
    cpu = DeviceIdentity.from_env(make_env(None))
    assert cpu.kind == "cpu" and cpu.slug == "cpu-amd-epyc-7742-64-core-processor"
    assert not DeviceIdentity.from_env({}).known


# ---------------------------------------------------------------------------------------------
# pytest-benchmark JSON
# ---------------------------------------------------------------------------------------------


def pytest_benchmark_json(with_extra: bool = True, with_data: bool = True) -> dict[str, Any]:
    """A pytest-benchmark JSON document as the plugin writes it."""
    data = [0.010, 0.011, 0.0105, 0.0102, 0.0099, 0.0101]
    bench: dict[str, Any] = {
        "group": "gpt2-tiny/train/bs2/seq16",
        "name": "case[gpt2-tiny/train/fp32/bs2/seq16]",
        "fullname": "suite.toml::case[gpt2-tiny/train/fp32/bs2/seq16]",
        "params": {"mpbench_case_id": "gpt2-tiny/train/fp32/bs2/seq16"},
        "param": "gpt2-tiny/train/fp32/bs2/seq16",
        "extra_info": {},
        "options": {},
        "stats": {
            "min": min(data),
            "max": max(data),
            "mean": sum(data) / len(data),
            "stddev": 0.0004,
            "rounds": len(data),
            "median": 0.01015,
            "iqr": 0.0005,
            "ops": 98.0,
        },
    }
    if with_data:
        bench["stats"]["data"] = data
    if with_extra:
        bench["extra_info"] = {
            "case_id": "gpt2-tiny/train/fp32/bs2/seq16",
            "device": "cuda:0",
            "model": "gpt2-tiny",
            "family": "gpt2",
            "workload": "train",
            "precision": "fp32",
            "batch_size": 2,
            "seq_len": 16,
            "warmup": 1,
            "tokens_per_sample": 16,
            "samples_per_s": 197.0,
            "peak_bytes": 123456789,
            "reserved_bytes": None,
            "memory_method": "cuda-max-allocated",
            "numerics": {"verdict": "ok", "max_rel_div": 0.0},
        }
    return {
        "machine_info": {
            "node": "gpu-host",
            "python_version": "3.11.7",
            "cpu": {"brand_raw": CPU_MODEL, "count": 16},
            "mpbench": {
                "device": "cuda:0",
                "device_name": A100["name"],
                "gpu": {k: A100[k] for k in ("name", "compute_capability", "driver", "cuda")},
                "cpu_model": CPU_MODEL,
                "torch": "2.13.0",
                "transformers": "5.24.0",
                "mpbench": "0.1.0",
                "suite": "ci",
            },
        }
        if with_extra
        else {"node": "laptop", "cpu": {"brand_raw": "Intel Core i7"}},
        "commit_info": {},
        "benchmarks": [bench],
        "datetime": "2026-11-29T12:00:00+00:00",
        "version": "5.3.1",
    }


def test_legacy_plugin_json_becomes_a_run(tmp_path: Path) -> None:
    """A file written by mpbench 0.1's plugin (case fields in extra_info) still reads."""
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(pytest_benchmark_json()))
    run = load_input(path, "BASE")
    (result,) = run.results
    assert result.case.id == "gpt2-tiny/train/fp32/bs2/seq16"
    assert result.case.batch_size == 2 and result.status == "ok"
    assert list(result.step_s) == pytest_benchmark_json()["benchmarks"][0]["stats"]["data"]
    assert result.timing.method == "pytest-benchmark"  # its own timer: not comparable to events
    assert result.samples_per_s == pytest.approx(2 / 0.01015)
    assert result.throughput.tokens_per_s == pytest.approx(32 / 0.01015)
    assert result.peak_bytes == 123456789
    assert result.verdict == "ok"
    assert run.identity.name == A100["name"] and run.identity.driver == A100["driver"]


def test_plain_pytest_benchmark_json_uses_the_test_name(tmp_path: Path) -> None:
    path = tmp_path / "plain.json"
    path.write_text(json.dumps(pytest_benchmark_json(with_extra=False, with_data=False)))
    run = load_input(path, "BASE")
    (result,) = run.results
    assert result.case.id == "suite.toml::case[gpt2-tiny/train/fp32/bs2/seq16]"
    assert result.step_s == () and result.median_s == 0.01015
    assert result.samples_per_s is None  # no batch size: nothing to derive it from
    assert run.env["cpu"]["model"] == "Intel Core i7"


def test_json_that_is_not_pytest_benchmark_is_an_input_error(tmp_path: Path) -> None:
    from bench.errors import ResultsError

    path = tmp_path / "other.json"
    path.write_text('{"hello": 1}')
    with pytest.raises(ResultsError, match="not a pytest-benchmark JSON file"):
        load_input(path, "BASE")
    path.write_text("{not json")
    with pytest.raises(ResultsError, match="not valid JSON"):
        load_input(path, "BASE")


def test_mixing_timing_methods_is_flagged(tmp_path: Path) -> None:
    """A plain pytest-benchmark timing is not compared with CUDA events: the comparison keeps
    memory and numerics, drops the timing metrics and says why."""
    case = fixture_cases()[0]
    base = write_run(tmp_path / "base", [case])
    current = write_run(tmp_path / "cur", [case])
    edit_results(current, lambda r: {**r, "timing": {**r["timing"], "method": "pytest-benchmark"}})
    comp = compare_runs(load(base), load(current))
    (matched,) = comp.cases
    assert matched.timing_methods == ("cuda-events", "pytest-benchmark")
    assert "throughput" not in matched.metrics and "peak_memory" in matched.metrics
    assert any("timed by different methods" in w for w in comp.warnings)


# ---------------------------------------------------------------------------------------------
# CLI views and the HTML page
# ---------------------------------------------------------------------------------------------


def test_compare_two_gpus_says_which_is_which(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A100 vs H100 is a first-class comparison: exit 0, both devices named everywhere."""
    base = write_run(tmp_path / "a100", env=make_env(A100))
    current = write_run(tmp_path / "h100", env=make_env(H100), seed=3)
    edit_results(current, lambda r: scale_timing(r, 0.5))
    page = tmp_path / "out" / "compare.html"
    md = tmp_path / "compare.md"
    assert (
        mpbench("compare", str(base), str(current), "--html", str(page), "--markdown", str(md)) == 0
    )
    out = capsys.readouterr().out
    assert "A100-SXM4-40GB" in out and "H100 80GB HBM3" in out
    assert "different GPU model" in out
    text = md.read_text()
    assert "| device | NVIDIA A100-SXM4-40GB" in text and "NVIDIA H100 80GB HBM3" in text
    assert "### Improvements" in text  # twice as fast everywhere
    html = page.read_text()
    assert "NVIDIA H100 80GB HBM3" in html and "<svg" in html


def test_compare_json_and_markdown_to_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = write_run(tmp_path / "base")
    current = write_run(tmp_path / "cur", seed=5)
    assert mpbench("compare", str(base), str(current), "--json") == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)  # stdout holds only the JSON; the table went to stderr
    assert data["command"] == "compare" and len(data["comparison"]["cases"]) == 12
    assert "mpbench compare" in captured.err
    metrics = data["comparison"]["cases"][0]["metrics"]
    assert {"throughput", "step_time", "peak_memory"} <= set(metrics)
    assert mpbench("compare", str(base), str(current), "--markdown") == 0
    assert capsys.readouterr().out.startswith("## 📊 mpbench compare")


def test_html_page_is_self_contained_and_escaped(tmp_path: Path) -> None:
    from bench.analysis.assessment import assess
    from bench.analysis.thresholds import CheckConfig
    from bench.views.compare_page import render_page

    cases = fixture_cases()
    base = write_run(tmp_path / "base", cases)
    current = write_run(tmp_path / "cur", cases, seed=2, status={cases[0].id: "error"})
    edit_results(
        current,
        lambda r: (
            {**r, "reason": "<script>alert(1)</script> | boom"}
            if r["status"] == "error"
            else scale_timing(r, 1.3)
        ),
    )
    html = render_page(assess(compare_runs(load(base), load(current)), CheckConfig()), gate=True)
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert not re.search(r"https?://", html), "the page must not reference external URLs"
    assert html.count("<svg") >= 2  # throughput and peak memory, per model
    assert "Regressions" in html and 'class="banner fail"' in html


def test_resident_set_peaks_count_only_when_they_double(tmp_path: Path) -> None:
    """CPU peaks (vmhwm) wobble by tens of percent between identical runs; CUDA's are exact."""
    case = fixture_cases()[0]
    base = write_run(tmp_path / "base", [case])

    def peak(path: Path, factor: float, method: str) -> Any:
        out = tmp_path / f"{path.name}-{factor}-{method}"
        shutil.copytree(path, out)

        def edit(r: dict[str, Any]) -> dict[str, Any]:
            r["memory"] = {"peak_bytes": int(r["memory"]["peak_bytes"] * factor), "method": method}
            return r

        edit_results(out, edit)
        return out

    vm_base = peak(base, 1.0, "vmhwm")
    for factor, method, significant in (
        (1.5, "vmhwm", False),
        (2.5, "vmhwm", True),
        (0.4, "vmhwm", True),
        (1.5, "cuda-max-allocated", True),
    ):
        base_run = load(vm_base if method == "vmhwm" else peak(base, 1.0, method))
        delta = compare_runs(base_run, load(peak(base, factor, method))).cases[0].metrics
        assert delta["peak_memory"].significant is significant, (factor, method)

"""The results model: CaseResult.from_dict validates every line it reads, upgrades older schema
versions, refuses newer ones, and is the only reader (run directories, baselines, resume)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from runs import fixture_cases, make_env, write_run

from bench.errors import ResultsError
from bench.results.rundir import RESULTS_FILE, load_run, read_results
from bench.results.schema import (
    SCHEMA_VERSION,
    Case,
    CaseResult,
    Memory,
    Throughput,
    Timing,
)


def line(tmp_path: Path) -> dict[str, Any]:
    """One valid results line (an ok training case on a GPU), as JSON data."""
    run = write_run(tmp_path / "run", fixture_cases()[:1], make_env())
    return json.loads((run / RESULTS_FILE).read_text().splitlines()[0])


def test_a_line_round_trips(tmp_path: Path) -> None:
    data = line(tmp_path)
    result = CaseResult.from_dict(data)
    assert result.to_dict() == data
    assert data["schema"] == SCHEMA_VERSION
    assert result.timing.method == "cuda-events" and result.memory.exact


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(status="fine"), "status: must be one of ok, skipped, oom"),
        (lambda d: d.update(status="oom", reason=None), "reason: a 'oom' result must say why"),
        (lambda d: d.update(timing=None), "timing: an 'ok' result must have its timing"),
        (lambda d: d.update(memory=None), "memory: an 'ok' result must have it"),
        (lambda d: d["timing"].update(median_s=-1.0), "timing.median_s: must be positive"),
        (lambda d: d["timing"].update(method="stopwatch"), "timing.method: must be one of"),
        (lambda d: d["timing"].update(step_s=["x"]), "timing.step_s: must be a list of numbers"),
        (lambda d: d["timing"].pop("method"), "method: missing"),
        (lambda d: d["case"].update(batch_size="8"), "batch_size: must be an integer"),
        (lambda d: d["case"].pop("precision"), "precision: missing"),
        (lambda d: d["case"].update(id="other/id"), "case.id: 'other/id' does not match"),
        (lambda d: d.update(numerics=[1, 2]), "numerics: must be an object"),
        (lambda d: d.update(losses="none"), "losses: must be a list of numbers or null"),
        (lambda d: d.update(schema="2"), "schema: '2' is not an mpbench results schema"),
        (lambda d: d["case"].update(batch_size=float("inf")), "batch_size: must be an integer"),
        (lambda d: d["memory"].update(peak_bytes=float("nan")), "peak_bytes: must be an integer"),
        (lambda d: d.update(numerics={"verdict": "bogus"}), "numerics.verdict: must be one of"),
        (
            lambda d: d["timing"].update(gpu_busy_fraction=1.5),
            "timing.gpu_busy_fraction: must be between 0 and 1",
        ),
        (
            lambda d: d.update(flops={"per_step": 9, "counter": "x", "by_dtype": {"fp8": 1.5}}),
            "flops.by_dtype.fp8: must be a whole number >= 0",
        ),
        (
            lambda d: d.update(flops={"per_step": 9, "counter": "x", "peaks_tflops": {"x": 0}}),
            "flops.peaks_tflops.x: must be a positive number",
        ),
    ],
)
def test_invalid_lines_name_the_field(tmp_path: Path, edit: Any, message: str) -> None:
    data = line(tmp_path)
    edit(data)
    with pytest.raises(ResultsError) as info:
        CaseResult.from_dict(data, "results.jsonl:7")
    assert str(info.value).startswith("results.jsonl:7: ") and message in str(info.value)


def test_a_newer_schema_is_refused_with_what_to_do(tmp_path: Path) -> None:
    data = {**line(tmp_path), "schema": SCHEMA_VERSION + 1}
    with pytest.raises(ResultsError, match=r"written by a newer mpbench.*Upgrade mpbench"):
        CaseResult.from_dict(data, "x")


def test_version_1_lines_are_upgraded(tmp_path: Path) -> None:
    """Schema 1 had no timing.method: CUDA memory means CUDA events, else perf_counter."""
    data = line(tmp_path)
    data["schema"] = 1
    del data["timing"]["method"]
    assert CaseResult.from_dict(data).timing.method == "cuda-events"
    data["memory"]["method"] = "vmhwm"
    assert CaseResult.from_dict(data).timing.method == "perf-counter"
    data["details"] = {"pytest_benchmark": {"name": "x"}}
    assert CaseResult.from_dict(data).timing.method == "pytest-benchmark"


def test_a_run_directory_with_a_bad_line_is_an_error_naming_it(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", fixture_cases()[:3], make_env())
    lines = (run / RESULTS_FILE).read_text().splitlines()
    bad = json.loads(lines[1])
    bad["status"] = "weird"
    lines[1] = json.dumps(bad)
    (run / RESULTS_FILE).write_text("\n".join(lines) + "\n")
    with pytest.raises(ResultsError, match=r"results.jsonl:2: status: must be one of"):
        load_run(run)


def test_torn_lines_are_skipped_with_a_warning(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", fixture_cases()[:2], make_env())
    path = run / RESULTS_FILE
    path.write_text(path.read_text() + '{"schema": 2, "case": {"id"')
    results, warnings = read_results(path)
    assert len(results) == 2 and warnings == [
        f"{path}:3: truncated last line (interrupted write?); skipped"
    ]


def test_constructing_an_invalid_result_fails_early() -> None:
    case = Case("m", "gpt2", "train", "fp32", 1, 8, "cpu")
    with pytest.raises(ValueError, match="needs a reason"):
        CaseResult(case, "error")
    with pytest.raises(ValueError, match="needs its timing"):
        CaseResult(case, "ok")
    with pytest.raises(ValueError, match="unknown status"):
        CaseResult(case, "done", "x")


def test_throughput_is_derived_in_one_place() -> None:
    timing = Timing.from_samples([0.2, 0.1, 0.3], 1, "perf-counter")
    assert timing.median_s == 0.2 and timing.min_s == 0.1 and timing.iterations == 3
    throughput = Throughput.from_median(8, 512, timing.median_s)
    assert throughput.samples_per_s == pytest.approx(
        40
    ) and throughput.tokens_per_s == pytest.approx(20480)
    generate = Case("m", "gpt2", "generate", "fp32", 8, 512, "cpu")
    result = CaseResult(
        generate,
        "ok",
        timing=timing,
        throughput=Throughput.from_median(8, 16, timing.median_s),  # 16 new tokens a sample
        memory=Memory(1),
    )
    assert result.rate == pytest.approx(640) and result.rate_unit == "tokens/s"


def test_version_5_lines_read_with_the_robust_spread_derived_and_no_new_figures(
    tmp_path: Path,
) -> None:
    """Schema 6 adds timing.robust_cv and gpu_busy_fraction, telemetry.energy_window_s and
    energy_steps, flops.by_dtype and peaks_tflops: a version-5 line has none of them."""
    data = line(tmp_path)
    data["schema"] = 5
    for key in ("robust_cv", "gpu_busy_fraction"):
        data["timing"].pop(key, None)
    data["timing"].update(unstable=True, cv=0.2)  # judged on stdev / mean then: kept as recorded
    if data.get("flops"):
        data["flops"].pop("by_dtype", None)
        data["flops"].pop("peaks_tflops", None)
    result = CaseResult.from_dict(data)
    timing = result.timing
    assert timing.robust_cv == pytest.approx(timing.iqr_s / (1.349 * timing.median_s))
    assert timing.unstable is True and timing.gpu_busy_fraction is None
    if result.flops is not None:
        assert result.flops.by_dtype is None and result.flops.peaks_tflops is None
    if result.telemetry is not None:
        assert result.telemetry.energy_window_s is None and result.telemetry.energy_steps is None
    assert result.to_dict()["schema"] == SCHEMA_VERSION == 6


def test_the_new_figures_round_trip(tmp_path: Path) -> None:
    data = line(tmp_path)
    data["timing"]["gpu_busy_fraction"] = 0.42
    data["flops"] = {
        "per_step": 400,
        "counter": "torch FlopCounterMode",
        "dtype": "fp8",
        "peak_tflops": 1600.0,
        "peak_source": "FLOP-weighted",
        "peak_reason": None,
        "by_dtype": {"fp8": 300, "bf16": 100},
        "peaks_tflops": {"fp8": 2000.0, "bf16": 1000.0},
    }
    result = CaseResult.from_dict(data)
    assert result.timing.gpu_busy_fraction == 0.42
    assert result.flops.by_dtype == {"fp8": 300, "bf16": 100}
    assert result.to_dict() == data

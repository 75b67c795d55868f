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

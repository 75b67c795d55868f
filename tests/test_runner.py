"""The runner end to end on tiny models: results schema, skips, failures, inputs."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
import torch
from tiny import TINY_SUITE

from bench.engine import runner as runner_module
from bench.engine.device import Device
from bench.engine.executors import default_runner_factory
from bench.engine.runner import CaseRunner, measure_steps
from bench.engine.suite import Timing as TimingConfig
from bench.engine.suite import load_suite
from bench.engine.workloads import make_batch
from bench.results.rundir import ResultsWriter, load_run
from bench.results.schema import Case, CaseResult, Timing

CPU = Device(torch.device("cpu"))


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("run")
    (root / "tiny.toml").write_text(TINY_SUITE)
    suite = load_suite(root / "tiny.toml")
    writer = ResultsWriter(root)
    results = run_all(CaseRunner(suite, CPU), suite.cases("cpu"))
    for result in results:
        writer.append(result)
    return root, results


def run_all(runner: CaseRunner, cases: list[Case]) -> list[CaseResult]:
    """Every case through the one timed loop, in order."""
    return [runner.run(case) for case in cases]


def test_every_case_has_a_result_line_with_the_documented_schema(tiny_results) -> None:
    root, results = tiny_results
    lines = [json.loads(line) for line in (root / "results.jsonl").read_text().splitlines()]
    assert len(lines) == len(results) == 32
    for line in lines:
        assert set(line["case"]) == {
            "id",
            "model",
            "family",
            "workload",
            "precision",
            "batch_size",
            "seq_len",
            "device",
            "execution",
        }
        assert line["case"]["execution"] == "eager"  # the sweep's default: eager only
        assert line["status"] in ("ok", "skipped")
        if line["status"] == "skipped":
            assert line["case"]["precision"] == "tf32"
            assert (
                line["reason"] == "tf32 needs a CUDA GPU with compute capability >= 8.0; found cpu"
            )
            continue
        timing = line["timing"]
        assert timing["iterations"] == len(timing["step_s"]) == 3
        # At least the suite's warm-up, more until steady, at most the suite's cap (4).
        assert 1 <= timing["warmup"] <= 4 and isinstance(timing["warmup_steady"], bool)
        assert timing["warmup_steady"] or timing["warmup"] == 4
        assert timing["cv"] == pytest.approx(timing["stdev_s"] / timing["mean_s"])
        assert timing["robust_cv"] == pytest.approx(timing["iqr_s"] / (1.349 * timing["median_s"]))
        assert timing["unstable"] is (timing["robust_cv"] > 0.10)
        assert timing["gpu_busy_fraction"] is None  # a CPU reports no GPU-busy figure
        assert line["telemetry"]["energy_window_s"] is None  # no energy, no window
        assert timing["min_s"] <= timing["median_s"] <= timing["max_s"]
        assert line["telemetry"]["method"] == "unavailable"
        assert line["telemetry"]["reason"] == "no NVML on CPU"
        assert line["flops"]["per_step"] > 0 and line["flops"]["peak_tflops"] is None
        assert line["flops"]["peak_reason"] == "no peak table for CPUs; give --peak-tflops"
        for key in ("mean_s", "stdev_s", "iqr_s", "p10_s", "p90_s"):
            assert key in timing
        bs, seq = line["case"]["batch_size"], line["case"]["seq_len"]
        assert line["throughput"]["samples_per_s"] == pytest.approx(bs / timing["median_s"])
        assert line["throughput"]["tokens_per_s"] == pytest.approx(bs * seq / timing["median_s"])
        assert line["memory"]["peak_bytes"] > 0
        assert line["memory"]["method"] in ("vmhwm", "rss-sampled")  # rss-sampled: no clear_refs
        assert timing["method"] == "perf-counter"
        if line["case"]["workload"] == "train":
            assert len(line["losses"]) == 3 and all(loss > 0 for loss in line["losses"])
        else:
            assert line["losses"] is None
    run = load_run(root)
    assert len(run.by_id()) == 32


def test_pure_modes_record_their_dtypes(tiny_results) -> None:
    _, results = tiny_results
    by_id = {r.case.id: r for r in results}
    assert by_id["gpt2-tiny/train/bf16/bs1/seq16"].details["param_dtype"] == "bfloat16"
    assert by_id["gpt2-tiny/train/amp_bf16/bs1/seq16"].details["autocast_dtype"] == "bfloat16"
    assert by_id["gpt2-tiny/train/fp32/bs1/seq16"].details["tf32"] is False


def test_inputs_are_identical_across_precisions_and_mask_15_percent() -> None:
    suite = load_suite("smoke")
    runner = CaseRunner(suite, CPU)
    spec = suite.model("bert-tiny")
    a = Case("bert-tiny", "bert", "train", "fp32", 8, 64, "cpu")
    b = Case("bert-tiny", "bert", "train", "bf16", 8, 64, "cpu")
    assert runner.input_seed(a) == runner.input_seed(b)
    batch_a = make_batch(spec, "train", 8, 64, torch.device("cpu"), runner.input_seed(a))
    batch_b = make_batch(spec, "train", 8, 64, torch.device("cpu"), runner.input_seed(b))
    assert all(torch.equal(batch_a[k], batch_b[k]) for k in batch_a)
    masked = batch_a["labels"] != -100
    assert 0.08 < masked.float().mean().item() < 0.22
    assert (batch_a["input_ids"][masked] == spec.mask_token_id()).all()


def test_losses_are_kept_on_device_and_read_after_the_loop() -> None:
    calls: list[str] = []

    def step() -> torch.Tensor:
        calls.append("step")
        return torch.tensor(1.0)

    measured = measure_steps(step, warmup=2, iterations=4, device=CPU)
    assert len(calls) == 6 and len(measured.step_s) == 4
    assert measured.warmup_steps == 2 and measured.warmup_steady is None  # a fixed warm-up
    assert all(isinstance(o, torch.Tensor) for o in measured.outputs)


def scripted_steps(monkeypatch, durations_s: list[float]):
    """A step that takes the next scripted duration on a fake clock (the host clock the warm-up
    and the CPU step timer read)."""
    clock = [0.0]
    remaining = iter(durations_s)
    monkeypatch.setattr(runner_module.time, "perf_counter", lambda: clock[0])

    def step() -> None:
        clock[0] += next(remaining)

    return step


def test_warmup_goes_on_until_the_step_time_is_steady(monkeypatch) -> None:
    """A cold start (1.0, 0.5, 0.3 s), then 0.2 s steps: steady once the last five agree."""
    step = scripted_steps(monkeypatch, [1.0, 0.5, 0.3] + [0.2] * 20)
    timing = TimingConfig(warmup=2, iterations=3, max_warmup=20, steady_window=5)
    measured = measure_steps(step, 2, 3, CPU, timing=timing)
    assert measured.warmup_steps == 8 and measured.warmup_steady is True
    assert measured.step_s == pytest.approx([0.2, 0.2, 0.2])


def test_warmup_stops_at_its_cap_and_says_it_never_settled(monkeypatch) -> None:
    step = scripted_steps(monkeypatch, [0.1, 0.2] * 20)
    timing = TimingConfig(warmup=2, iterations=4, max_warmup=6, steady_window=3)
    measured = measure_steps(step, 2, 4, CPU, timing=timing)
    assert measured.warmup_steps == 6 and measured.warmup_steady is False
    timed = Timing.from_samples(measured.step_s, 6, "perf-counter", unstable_cv=0.10)
    assert timed.unstable and timed.cv == pytest.approx(0.0577 / 0.15, abs=1e-3)  # 0.1, 0.2, ..


def test_the_minimum_warmup_runs_even_when_already_steady(monkeypatch) -> None:
    step = scripted_steps(monkeypatch, [0.2] * 30)
    timing = TimingConfig(warmup=7, iterations=2, max_warmup=3, steady_window=2)
    measured = measure_steps(step, 7, 2, CPU, timing=timing)
    assert measured.warmup_steps == 7 and measured.warmup_steady is True  # cap never below min


def test_a_failing_case_is_recorded_and_the_sweep_goes_on(tiny_suite_path, monkeypatch) -> None:
    suite = load_suite(
        tiny_suite_path, {"precisions": ["fp32"], "workloads": ["infer"], "models": ["gpt2-tiny"]}
    )
    runner = CaseRunner(suite, CPU)
    original = runner.prepare
    calls = {"n": 0}

    def flaky(case):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom\nsecond line")
        if calls["n"] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(case)

    monkeypatch.setattr(runner, "prepare", flaky)
    cases = suite.cases("cpu") + [suite.cases("cpu")[0]]
    results = run_all(runner, cases)
    assert [r.status for r in results] == ["error", "oom", "ok"]
    assert results[0].reason == "RuntimeError: boom"
    assert "out of memory" in results[1].reason


def test_generate_workload_times_decoded_tokens(tiny_suite_path) -> None:
    suite = load_suite(
        tiny_suite_path, {"workloads": ["generate"], "precisions": ["fp32"], "batch_sizes": [2]}
    )
    results = run_all(CaseRunner(suite, CPU), suite.cases("cpu"))
    by_model = {r.case.model: r for r in results}
    gpt = by_model["gpt2-tiny"]
    assert gpt.status == "ok"
    assert gpt.throughput.tokens_per_s == pytest.approx(
        2 * suite.sweep.generate_new_tokens / gpt.median_s
    )
    assert by_model["bert-tiny"].status == "skipped"
    assert "causal LM" in by_model["bert-tiny"].reason


def test_truncated_last_line_is_skipped_with_a_warning(tiny_results, tmp_path) -> None:
    root, _ = tiny_results
    text = (root / "results.jsonl").read_text()
    (tmp_path / "results.jsonl").write_text(text + text.splitlines()[0][:50])
    run = load_run(tmp_path)
    assert any("results.jsonl:33: truncated last line" in w for w in run.warnings)
    assert len(run.results) == 32


def test_a_case_reports_its_phases_between_steps(tiny_suite_path) -> None:
    """Building, each warm-up and timed step, then every numerics pass with its steps: what the
    progress display shows while a long case runs."""
    suite = load_suite(tiny_suite_path, {"models": ["gpt2-tiny"], "precisions": ["fp32", "bf16"]})
    runner = default_runner_factory(suite, CPU)
    seen: list[tuple[str, int | None, int | None]] = []
    first, second = suite.cases("cpu")[:2]
    assert runner.run(first, lambda *p: seen.append(p)).ok
    assert seen[:3] == [("building", None, None), ("counting FLOPs", None, None), ("warm-up", 1, 1)]
    # More warm-up steps until the step time is steady (no known total), then the timed ones.
    timed_at = seen.index(("timed", 1, 3))
    assert all(p[0] == "warm-up" and p[2] is None for p in seen[3:timed_at])
    assert seen[timed_at : timed_at + 3] == [("timed", 1, 3), ("timed", 2, 3), ("timed", 3, 3)]
    numerics = [p for p in seen if p[0].startswith("numerics:")]
    names = list(dict.fromkeys(name for name, _, _ in numerics))
    assert names[:2] == ["numerics: fp32 reference", "numerics: fp32 repeat"]  # (fp64 off)
    assert ("numerics: fp32 reference", 3, 3) in numerics  # the suite's [numerics] train_steps
    seen.clear()
    assert runner.run(second, lambda *p: seen.append(p)).ok  # bf16: its own pass, references cached
    assert {name for name, _, _ in seen if name.startswith("numerics:")} == {"numerics: bf16"}


# ---------------------------------------------------------------------------------------------
# Robust timing: the collector, the unstable rule, the energy window
# ---------------------------------------------------------------------------------------------


def test_the_collector_is_off_while_timed_and_restored_after(monkeypatch) -> None:
    seen: list[bool] = []
    collected: list[int] = []
    monkeypatch.setattr(runner_module.gc, "collect", lambda *a: collected.append(1) or 0)
    measure_steps(lambda: seen.append(gc.isenabled()), 2, 3, CPU)
    assert seen == [True, True, False, False, False]  # warm-up as usual, timed steps without
    assert gc.isenabled() and collected  # collected once before the timed steps


@pytest.mark.parametrize("enabled_before", [True, False])
def test_a_failing_timed_step_restores_the_collector_state(enabled_before: bool) -> None:
    calls = {"n": 0}

    def step() -> None:
        calls["n"] += 1
        if calls["n"] == 4:  # the second timed step, after two warm-up steps
            raise RuntimeError("boom")

    was = gc.isenabled()
    try:
        (gc.enable if enabled_before else gc.disable)()
        with pytest.raises(RuntimeError, match="boom"):
            measure_steps(step, 2, 5, CPU)
        assert gc.isenabled() is enabled_before
    finally:
        (gc.enable if was else gc.disable)()


def test_one_outlier_step_does_not_make_a_case_unstable() -> None:
    steps = [0.100, 0.101, 0.099, 0.100, 0.102, 0.098, 0.100, 0.101, 0.099, 0.450]
    timed = Timing.from_samples(steps, 2, "perf-counter", unstable_cv=0.10)
    assert timed.cv > 0.10  # stdev / mean would have flagged it
    assert timed.robust_cv < 0.02 and timed.unstable is False


def test_a_bimodal_series_is_unstable() -> None:
    steps = [0.100, 0.150] * 5  # two speeds, half the steps each
    timed = Timing.from_samples(steps, 2, "perf-counter", unstable_cv=0.10)
    assert timed.robust_cv == pytest.approx(0.05 / (1.349 * 0.125))
    assert timed.unstable is True
    # a minority mode of 3 steps in 10 still moves the upper quartile
    timed = Timing.from_samples([0.1] * 7 + [0.15] * 3, 2, "perf-counter", unstable_cv=0.10)
    assert timed.unstable is True

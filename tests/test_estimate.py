"""The sweep estimate (bench.engine.estimate): its arithmetic with given rates, what it leaves
out (skipped cases, dtypes without a rate), and `mpbench run --dry-run`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from runs import mpbench

from bench.engine import estimate
from bench.engine.device import Device
from bench.engine.flops import analytic_flops
from bench.engine.modes import PRECISION_MODES
from bench.engine.rates import MatmulRate, measure_matmul
from bench.engine.selfcheck import SELFCHECK_NUMERICS_STEPS, shortened
from bench.engine.suite import load_suite, parse_suite

SUITE = """
[suite]
name = "est"

[sweep]
models = ["gpt2-124m", "bert-base"]
workloads = ["train", "infer"]
precisions = ["fp32", "bf16"]
batch_sizes = [32]
seq_lens = [512]

[timing]
warmup = 4
max_warmup = 10
iterations = 20

[numerics]
train_steps = 10
noise_floor = false
"""
RATES = {"fp32": MatmulRate("fp32", 8192, 50.0), "bf16": MatmulRate("bf16", 8192, 800.0)}


def test_a_compute_bound_step_is_flops_over_the_rate() -> None:
    suite = parse_suite(SUITE)
    case = next(c for c in suite.cases("cuda:0") if c.precision == "fp32")
    flops = analytic_flops(suite.model("gpt2-124m"), "train", 32, 512)
    expected = flops / (50e12 * estimate.MATMUL_EFFICIENCY["cuda"])
    assert estimate.step_estimate_s(suite, case, RATES, "cuda") == pytest.approx(expected)


def test_a_small_step_is_held_at_the_host_floor() -> None:
    suite = parse_suite(SUITE.replace("batch_sizes = [32]", "batch_sizes = [1]"))
    case = next(c for c in suite.cases("cuda:0") if c.precision == "bf16")
    floor = 12 * estimate.HOST_S_PER_LAYER["cuda"]["train"]
    assert estimate.step_estimate_s(suite, case, RATES, "cuda") == pytest.approx(floor)


def test_the_sweep_total_adds_steps_numerics_first_cases_and_workers() -> None:
    suite = parse_suite(SUITE)
    cases = suite.cases("cuda:0")
    got = estimate.estimate_sweep(suite, cases, "cuda", RATES, isolate="model")
    steps = (4 + 10) / 2 + 1  # expected warm-up, the FLOP count's step
    total = 0.0
    for case in cases:
        step = estimate.step_estimate_s(suite, case, RATES, "cuda")
        numerics = 10 if case.workload == "train" else estimate.INFER_NUMERICS_STEPS
        # 20 timed steps in an energy window of at least 5 s, then the GPU-busy profile's 5
        timed = max(20 * step, 5.0) + 5 * step
        total += estimate.CASE_OVERHEAD_S["cuda"] + steps * step + timed
        total += numerics * step * estimate.NUMERICS_SLOWDOWN
    for model in ("gpt2-124m", "bert-base"):
        total += estimate.WORKER_START_S["cuda"]
        for workload in ("train", "infer"):
            fp32 = next(
                c for c in cases if (c.model, c.workload, c.precision) == (model, workload, "fp32")
            )
            numerics = 10 if workload == "train" else estimate.INFER_NUMERICS_STEPS
            reference = estimate.step_estimate_s(suite, fp32, RATES, "cuda")
            total += estimate.FIRST_CASE_S["cuda"]
            total += numerics * reference * estimate.NUMERICS_SLOWDOWN  # noise floor off: once
    assert got.cases == 8 and got.total_s == pytest.approx(total)
    assert set(got.per_model_s) == {"gpt2-124m", "bert-base"}
    # In-process cases start no worker.
    none = estimate.estimate_sweep(suite, cases, "cuda", RATES, isolate="none")
    assert got.total_s - none.total_s == pytest.approx(2 * estimate.WORKER_START_S["cuda"])


def test_a_dtype_without_a_rate_is_left_out_with_a_note() -> None:
    suite = parse_suite(SUITE)
    rates = {"fp32": RATES["fp32"], "bf16": MatmulRate("bf16", reason="no bf16 here")}
    got = estimate.estimate_sweep(suite, suite.cases("cuda:0"), "cuda", rates)
    assert got.notes == ["no matmul rate for bf16: those cases not counted"]
    assert "bf16" not in got.rates_line() and "fp32 50" in got.rates_line()


def test_eager_fp8_on_a_gpu_costs_more_than_compiled_fp8() -> None:
    suite = parse_suite(
        SUITE.replace('["fp32", "bf16"]', '["fp8"]').replace(
            "[sweep]", '[sweep]\nexecution = ["eager", "compiled"]'
        )
    )
    eager, compiled = [c for c in suite.cases("cuda:0") if c.workload == "train"][:2]
    rates = {"fp8": MatmulRate("fp8", 8192, 1500.0)}
    eager_s = estimate.step_estimate_s(suite, eager, rates, "cuda")
    compiled_s = estimate.step_estimate_s(suite, compiled, rates, "cuda")
    assert eager_s == pytest.approx(
        compiled_s * 3 * PRECISION_MODES["fp8"].eager_gpu_slowdown["train"]
    )


def test_a_cpu_rate_is_measured_and_positive() -> None:
    rate = measure_matmul(Device(torch.device("cpu")), "fp32", iterations=2, target_s=0.002)
    assert rate.tflops is not None and rate.tflops > 0 and rate.n >= 256
    assert measure_matmul(Device(torch.device("cpu")), "tf32").reason.startswith("tf32 needs")


def test_dry_run_prints_the_estimate_and_runs_nothing(tmp_path: Path, capsys) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code = mpbench("run", "--device", "cpu", "--models", "gpt2-tiny", "--dry-run")
    finally:
        os.chdir(cwd)
    err = capsys.readouterr().err
    assert code == 0
    assert "36 cases on cpu" in err and "8 of them skipped here" in err and "dry run" in err
    assert "gpt2-tiny" in err and "TFLOP/s measured" in err
    assert not (tmp_path / "reports").exists()


def test_dry_run_with_resume_is_a_usage_error(tmp_path: Path, capsys) -> None:
    assert mpbench("run", "--dry-run", "--resume", str(tmp_path)) == 2
    assert "--dry-run" in capsys.readouterr().err


def test_selfcheck_shortens_a_suite_but_never_lengthens_it() -> None:
    ci = shortened(load_suite("ci"))
    assert (ci.timing.iterations, ci.timing.max_warmup, ci.timing.warmup) == (10, 5, 3)
    assert ci.tables["numerics"]["train_steps"] == SELFCHECK_NUMERICS_STEPS == 5
    assert ci.tables["numerics"]["fp64_max_parameters"] == 0  # no fp64 reference
    assert ci.tables["check"] == load_suite("ci").tables["check"]
    assert load_suite("ci").sweep.execution == ("compiled",)
    assert ci.sweep.execution == ("eager",)  # compiling its 28 cases would take the 4 minutes
    assert {c.execution for c in ci.cases("cuda:0")} == {"eager"}
    smoke = shortened(load_suite("smoke"))
    assert smoke.timing.iterations == 6  # smoke's own 6 < 10
    assert smoke.timing.warmup == min(3, load_suite("smoke").timing.warmup)


@pytest.mark.parametrize(
    "outcome",
    [
        subprocess.TimeoutExpired("python", 120),
        OSError("no python"),
        subprocess.CompletedProcess([], 1, "", "RuntimeError: CUDA error: no kernel image\n"),
        subprocess.CompletedProcess([], 0, "", ""),
        subprocess.CompletedProcess([], 0, "not json\n", ""),
        subprocess.CompletedProcess([], 0, '{"bf16": {"dtype": "bf16"}}\n', ""),
    ],
)
def test_a_gpu_rate_child_that_fails_gives_reasons_not_a_traceback(monkeypatch, outcome) -> None:
    def fake_run(*args, **kwargs):
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(estimate.subprocess, "run", fake_run)
    rates = estimate.measure_rates(Device(torch.device("cuda", 0)), ("fp32", "bf16"))
    assert set(rates) == {"fp32", "bf16"}
    assert all(
        r.tflops is None and r.reason.startswith("rate not measured") for r in rates.values()
    )

"""`mpbench selfcheck`: each check passes on this CPU and fails when what it checks is broken
(a timer or a memory window that lies, a rate above the datasheet peak, a training step that
synchronizes, fp32 that is not repeatable), and the command's output and exit code."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fake_gpu import FakeGpu
from report_fixtures import FIXTURE_RUN
from runs import edit_results, mpbench

from bench.engine import selfcheck, workloads
from bench.engine.device import CpuStepTimer, Device, MemoryReading
from bench.engine.selfcheck import suite_checks
from bench.results.peaks import PeakLookup
from bench.results.rundir import load_run

CPU = Device(torch.device("cpu"))


@contextlib.contextmanager
def scripted_work() -> Iterator[None]:
    """A clock that only work moves: every matmul the timer check runs takes exactly 5 ms of it.
    A busy machine cannot move it; a timer that measures the wrong interval still fails."""
    now = [0.0]

    def step_of(device: Device, n: int, dtype: torch.dtype) -> Callable[[], None]:
        def step() -> None:
            now[0] += 0.005

        return step

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "perf_counter", lambda: now[0])
        patch.setattr(selfcheck, "square_matmul", step_of)
        yield


def test_the_timer_check_passes_a_timer_that_tells_the_truth() -> None:
    with scripted_work():
        result = selfcheck.check_timer(CPU)
    assert result.status == "PASS" and result.figures["ratio"] == 1.0


def overhead_of(ratios: list[float]) -> Callable[..., selfcheck.OverheadResult]:
    """loop_overhead's result with these per-round ratios (the check's rule, not the timing)."""

    def measured(device: Device, suite: Any, rounds: int = 12, steps: int = 8) -> Any:
        return selfcheck.OverheadResult("gpt2-tiny/train/fp32/bs8/seq64", 4, 8, 0.01, 0.01, ratios)

    return measured


@pytest.mark.parametrize(
    ("ratios", "status"), [([1.0, 1.02, 0.99, 1.01], "PASS"), ([1.3, 1.25, 1.35, 1.2], "FAIL")]
)
def test_the_loop_overhead_check_holds_its_limit(monkeypatch, ratios, status) -> None:
    monkeypatch.setattr(selfcheck, "loop_overhead", overhead_of(ratios))
    assert selfcheck.check_overhead(CPU).status == status


def test_the_loop_overhead_measures_both_loops_on_one_model() -> None:
    """The real measurement, with no limit asserted: timing here is the machine's, not ours."""
    result = selfcheck.loop_overhead(CPU, selfcheck.overhead_suite(batch_size=2), rounds=2, steps=2)
    assert len(result.round_ratios) == 2 and all(r > 0 for r in result.round_ratios)
    assert result.mpbench_median_s > 0 and result.hand_median_s > 0


@pytest.mark.slow
def test_the_device_checks_pass_here_and_write_selfcheck_json(tmp_path: Path, monkeypatch) -> None:
    """Every device check end to end through the CLI; the two that compare timings against a
    limit run on the scripted clock (their rules are tested above), so a busy machine cannot
    fail this."""
    real_timer = selfcheck.check_timer

    def timer_on_scripted_work(device: Device) -> selfcheck.CheckResult:
        with scripted_work():
            return real_timer(device)

    monkeypatch.setattr(selfcheck, "check_timer", timer_on_scripted_work)
    monkeypatch.setattr(selfcheck, "loop_overhead", overhead_of([1.0, 1.01, 0.99, 1.0]))
    # In this process, so the scripted timings hold (the child's machinery is tested below).
    monkeypatch.setattr(selfcheck, "run_device_checks_in_child", in_this_process)
    out = tmp_path / "sc"
    assert mpbench("selfcheck", "--no-suite", "--device", "cpu", "--out", str(out)) == 0
    report = json.loads((out / "selfcheck.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert report["passed"] and report["run"] is None
    for name in ("identity", "timer", "memory", "mode fp32", "mode fp8", "matmul bf16"):
        assert checks[name]["status"] == "PASS", checks[name]
    # What needs a GPU is skipped with the reason, never passed.
    assert checks["mode tf32"]["status"] == "SKIP" and "CUDA" in checks["mode tf32"]["detail"]
    assert checks["telemetry overhead"]["detail"] == "no telemetry: no NVML on CPU"
    assert checks["memory"]["figures"]["error"] == pytest.approx(0, abs=0.05)
    assert "host-sync check needs CUDA" in checks["mode bf16"]["detail"]


def in_this_process(device_name: str, on_result: Any = None) -> list[selfcheck.CheckResult]:
    """run_device_checks_in_child without the child."""
    from bench.engine.device import resolve_device

    return selfcheck.run_device_checks(resolve_device(device_name), on_result)


def test_the_cli_parent_never_makes_the_gpu_current(tmp_path: Path, monkeypatch) -> None:
    """The device checks run in a child; `mpbench selfcheck` itself never calls activate (which
    creates a CUDA context): the suite's workers get the whole GPU."""
    activated: list[str] = []
    monkeypatch.setattr(Device, "activate", lambda self: activated.append(self.name))
    children: list[str] = []

    def child(device_name: str, on_result: Any = None) -> list[selfcheck.CheckResult]:
        children.append(device_name)
        return [selfcheck.CheckResult("identity", "PASS", "faked")]

    monkeypatch.setattr(selfcheck, "run_device_checks_in_child", child)
    out = tmp_path / "sc"
    assert mpbench("selfcheck", "--no-suite", "--device", "cpu", "--out", str(out)) == 0
    assert children == ["cpu"] and activated == []


@pytest.mark.slow
def test_a_device_check_that_kills_its_process_is_that_checks_fail() -> None:
    """The real spawned child, with a stand-in for the checks (tests/faults.py) that passes one
    and dies in the next: the finished check is kept, the one it died in FAILs with how."""
    from faults import device_checks_that_die

    seen: list[str] = []
    results = selfcheck.run_device_checks_in_child(
        "cpu", lambda r: seen.append(r.name), target=device_checks_that_die, timeout_s=120
    )
    assert [(r.name, r.status) for r in results] == [("identity", "PASS"), ("mode fp8", "FAIL")]
    assert seen == ["identity", "mode fp8"]
    assert "ended during this check" in results[1].detail and "SIGKILL" in results[1].detail


class LyingTimer(CpuStepTimer):
    def elapsed_s(self) -> list[float]:
        return [2 * s for s in super().elapsed_s()]


class LyingDevice(Device):
    """A CPU whose timer doubles every step and whose memory window halves every peak."""

    def step_timer(self, steps: int) -> CpuStepTimer:
        return LyingTimer(steps)

    def memory_window(self):  # type: ignore[override]
        inner = super().memory_window()

        class Halved:
            def __enter__(self) -> MemoryReading:
                self.reading = inner.__enter__()
                return self.reading

            def __exit__(self, *exc: Any) -> Any:
                result = inner.__exit__(*exc)
                self.reading.peak_bytes //= 2
                return result

        return Halved()


def test_a_timer_or_memory_window_that_lies_fails() -> None:
    liar = LyingDevice(torch.device("cpu"))
    timer = selfcheck.check_timer(liar)
    assert timer.status == "FAIL" and timer.figures["ratio"] == pytest.approx(2, rel=0.05)
    memory = selfcheck.check_memory_window(liar)
    assert memory.status == "FAIL" and memory.figures["error"] == pytest.approx(-0.5, abs=0.03)


def test_a_rate_above_the_datasheet_peak_fails(monkeypatch) -> None:
    tiny_peak = PeakLookup(1e-6, "a made-up datasheet", None)
    monkeypatch.setattr(selfcheck, "peak_tflops", lambda name, dtype: tiny_peak)
    result = selfcheck.check_matmul(CPU, "bf16")
    assert result.status == "FAIL" and "above the datasheet peak" in result.detail


H100 = "NVIDIA H100 80GB HBM3"  # torch's name for the H100 SXM: the peak table knows it


def slow_gpu(monkeypatch: pytest.MonkeyPatch, tflops: float) -> FakeGpu:
    """An H100 (to the peak table) whose square matmul measures `tflops` in every dtype: the
    rate is what `measure_matmul` hands the check, so no 8192^3 matmul runs on this CPU."""
    from bench.engine.rates import MatmulRate

    def measured(device: Device, dtype: str) -> MatmulRate:
        return MatmulRate(dtype, 8192, tflops)

    monkeypatch.setattr(selfcheck, "measure_matmul", measured)
    return FakeGpu((9, 0), H100)


@pytest.mark.parametrize(
    ("dtype", "tflops", "status"),
    [
        ("bf16", 790.0, "PASS"),  # 80% of 989: what an H200 measured
        ("bf16", 400.0, "FAIL"),  # 40%: clocks held low
        ("tf32", 260.0, "PASS"),  # 53% of 495
        ("tf32", 60.0, "FAIL"),  # the fp32 rate: TF32 was off
        ("fp32", 40.0, "PASS"),  # 60% of 67
    ],
)
def test_a_matmul_below_half_the_table_peak_fails(monkeypatch, dtype, tflops, status) -> None:
    result = selfcheck.check_matmul(slow_gpu(monkeypatch, tflops), dtype)
    assert result.status == status, result.detail
    if status == "FAIL":
        # The measured figure, the table's, the GPU and the likely causes, in one line.
        assert f"{tflops:.4g} TFLOP/s" in result.detail and H100 in result.detail
        assert "clocks low" in result.detail
        assert ("TF32 off" in result.detail) == (dtype == "tf32")
        assert result.figures["fraction_of_peak"] < selfcheck.PEAK_FLOOR


class SyncDebug:
    """torch.cuda.set_sync_debug_mode on a CPU: in "error" mode, reading a tensor on the host
    (.item(), or a tensor in an `if`: what a CUDA sync is here) raises as CUDA's sync debug
    mode does."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.mode: Any = 0
        real_item, real_bool = torch.Tensor.item, torch.Tensor.__bool__

        def guarded(real: Callable[[torch.Tensor], Any]) -> Callable[[torch.Tensor], Any]:
            def read(tensor: torch.Tensor) -> Any:
                if self.mode == "error":
                    raise RuntimeError("called a synchronizing CUDA operation")
                return real(tensor)

            return read

        monkeypatch.setattr(torch.Tensor, "item", guarded(real_item))
        monkeypatch.setattr(torch.Tensor, "__bool__", guarded(real_bool))
        monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", self.set)

    def set(self, mode: Any) -> None:
        self.mode = mode


def test_a_training_step_that_synchronizes_fails_the_mode_check(monkeypatch) -> None:
    """amp_fp16 with the fused AdamW (what mpbench uses on CUDA) takes GradScaler's inf flag on
    the device; with the default AdamW, GradScaler.step reads it on the host: a FAIL."""
    SyncDebug(monkeypatch)
    monkeypatch.setattr(selfcheck, "SYNC_CHECK_STEPS", (("gpt2-tiny", "train"),))
    gpu = FakeGpu((9, 0))
    assert selfcheck.check_mode(gpu, "amp_fp16").status == "PASS"
    real = workloads.make_optimizer
    monkeypatch.setattr(workloads, "make_optimizer", lambda model, fused=False, **_: real(model))
    failed = selfcheck.check_mode(gpu, "amp_fp16")
    assert failed.status == "FAIL"
    assert failed.detail == (
        "gpt2-tiny/train/amp_fp16/bs2/seq64: a timed train step synchronizes: "
        "called a synchronizing CUDA operation"
    )


def test_the_mode_check_covers_gpt2_and_bert_inference_and_fails_on_their_sync(
    monkeypatch,
) -> None:
    """Each mode's check runs GPT-2 training, GPT-2 inference and BERT inference under the sync
    check. GPT-2 without mpbench's answer to transformers' packed-sequence search tests a device
    tensor in an `if` every step, training (no KV cache) and inference alike: a FAIL naming the
    first such step."""
    SyncDebug(monkeypatch)
    gpu = FakeGpu((9, 0))
    passed = selfcheck.check_mode(gpu, "fp32", steps=1)
    assert passed.status == "PASS", passed.detail
    assert passed.figures["sync_checked"]
    assert [s.split("/")[:2] for s in passed.figures["steps"]] == [
        ["gpt2-tiny", "train"],
        ["gpt2-tiny", "infer"],
        ["bert-tiny", "infer"],
    ]
    monkeypatch.setattr(workloads, "unpacked_rows", contextlib.nullcontext)
    failed = selfcheck.check_mode(gpu, "fp32", steps=1)
    assert failed.status == "FAIL"
    assert failed.detail.startswith(
        "gpt2-tiny/train/fp32/bs2/seq64: a timed train step synchronizes"
    )
    # Inference alone, without the answer: its own FAIL.
    monkeypatch.setattr(selfcheck, "SYNC_CHECK_STEPS", (("gpt2-tiny", "infer"),))
    failed = selfcheck.check_mode(gpu, "fp32", steps=1)
    assert failed.detail.startswith(
        "gpt2-tiny/infer/fp32/bs2/seq64: a timed infer step synchronizes"
    )


def test_each_execution_checks_fp8_training_and_fp8_inference_of_a_masked_lm(
    monkeypatch,
) -> None:
    """The compiled check's steps (recorded, not compiled here): fp8 training of GPT-2 and fp8
    inference of BERT (torchao's quantize_ on a GPU), each under its execution; bf16 on a GPU
    without fp8; a SKIP with the reasons on one with neither; a step's problem FAILs."""
    bf16 = {"native": True}
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16["native"]
    )
    asked: list[str] = []

    def recorded(device: Device, suite: Any, steps: int = 3) -> selfcheck.StepCheck:
        case = suite.cases(device.name)[0]
        asked.append(case.id)
        return selfcheck.StepCheck(case.id)

    monkeypatch.setattr(selfcheck, "check_step", recorded)
    result = selfcheck.check_execution_syncs(FakeGpu((9, 0)), "compiled")
    assert result.status == "PASS", result.detail
    assert asked == [
        "gpt2-tiny/train/fp8/bs2/seq64/compiled",
        "bert-tiny/infer/fp8/bs2/seq64/compiled",
    ]
    asked.clear()
    a100 = selfcheck.check_execution_syncs(FakeGpu((8, 0)), "compiled")
    assert a100.status == "PASS" and asked == [
        "gpt2-tiny/train/amp_bf16/bs2/seq64/compiled",
        "bert-tiny/infer/bf16/bs2/seq64/compiled",
    ]
    asked.clear()
    bf16["native"] = False
    v100 = selfcheck.check_execution_syncs(FakeGpu((7, 0)), "compiled")
    assert v100.status == "SKIP" and asked == []
    assert "fp8 needs compute capability >= 8.9" in v100.detail and "bfloat16" in v100.detail
    bf16["native"] = True

    def synchronizes(device: Device, suite: Any, steps: int = 3) -> selfcheck.StepCheck:
        return selfcheck.StepCheck(suite.cases(device.name)[0].id, "a timed infer step syncs")

    monkeypatch.setattr(selfcheck, "check_step", synchronizes)
    failed = selfcheck.check_execution_syncs(FakeGpu((9, 0)), "compiled")
    assert failed.status == "FAIL" and failed.detail.endswith("a timed infer step syncs")
    assert selfcheck.check_execution_syncs(CPU, "compiled").status == "SKIP"


def test_a_mode_that_did_not_take_effect_fails(monkeypatch) -> None:
    """A bf16 mode whose prepare kept fp32 weights is caught."""
    from bench.engine.modes import PRECISION_MODES
    from bench.engine.modes.base import PreparedModel, copy_in_dtype

    def fp32_copy(self: Any, pristine: Any, device: Any, workload: str) -> PreparedModel:
        return PreparedModel(copy_in_dtype(pristine, torch.float32))

    monkeypatch.setattr(type(PRECISION_MODES["bf16"]), "prepare", fp32_copy)
    result = selfcheck.check_mode(CPU, "bf16")
    assert result.status == "FAIL"
    assert "parameters are ['torch.float32'], not torch.bfloat16" in result.detail


def test_suite_checks_read_the_run_back(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(FIXTURE_RUN, run)
    cases, determinism = suite_checks(load_run(run), 0)
    assert cases.status == "PASS" and determinism.status == "PASS"
    assert cases.detail.endswith(f"({run})")

    def fp32_not_repeatable(r: dict[str, Any]) -> dict[str, Any]:
        numerics = r.get("numerics")
        if r["case"]["precision"] != "fp32" or not numerics or "noise_floor" not in numerics:
            return r
        floor = {**numerics["noise_floor"], "fp32_runs_identical": False}
        return {**r, "numerics": {**numerics, "noise_floor": floor}}

    edit_results(run, fp32_not_repeatable)
    _, determinism = suite_checks(load_run(run), 0)
    assert determinism.status == "FAIL" and "not deterministic" in determinism.detail
    cases, _ = suite_checks(load_run(run), 130)
    assert cases.status == "FAIL" and "exit code 130" in cases.detail


def test_the_tally_counts_each_status_and_fails_on_any_fail() -> None:
    check = selfcheck.CheckResult
    results = [check("a", "PASS", ""), check("b", "SKIP", ""), check("c", "PASS", "")]
    counts = selfcheck.tally(results)
    assert (counts.passed, counts.failed, counts.skipped, counts.verdict) == (2, 0, 1, "PASS")
    assert counts.line() == "2 PASS, 0 FAIL, 1 SKIP"
    assert selfcheck.tally([*results, check("d", "FAIL", "")]).verdict == "FAIL"


class _FakeTelemetry:
    """An NVML telemetry that is available; its window yields no reading (the check only needs
    the window to be there)."""

    available = True
    reason = None

    def window(self) -> Any:
        import contextlib

        return contextlib.nullcontext(None)

    def close(self) -> None:
        pass


def _sampler_check_with(monkeypatch, slowdown: list[float]) -> selfcheck.CheckResult:
    """The sampler check on this CPU, the telemetry faked and every block with the window
    `slowdown[round]` times slower than the one without."""
    from bench.engine.runner import MeasuredSteps

    monkeypatch.setattr(selfcheck, "open_telemetry", lambda device: _FakeTelemetry())
    blocks = {"with": 0}

    def measure(step: Any, warmup: int, steps: int, device: Any, **kw: Any) -> MeasuredSteps:
        if kw.get("timed_window") is None:
            return MeasuredSteps([0.01] * steps, [], warmup, None)
        factor = slowdown[blocks["with"] % len(slowdown)]
        blocks["with"] += 1
        return MeasuredSteps([0.01 * factor] * steps, [], warmup, None)

    monkeypatch.setattr(selfcheck, "measure_steps", measure)
    return selfcheck.check_sampler_overhead(CPU, rounds=len(slowdown), steps=3)


def test_a_sampler_that_costs_5_percent_every_round_fails(monkeypatch) -> None:
    result = _sampler_check_with(monkeypatch, [1.05] * 8)
    assert result.status == "FAIL" and result.figures["ratio"] == pytest.approx(1.05)
    assert result.figures["p_value_above_limit"] < selfcheck.SAMPLER_ALPHA


def test_a_sampler_within_the_noise_passes_and_says_so(monkeypatch) -> None:
    # The per-round ratios of the H200 run (median 1.021, not told apart from the noise).
    noisy = [0.9205, 1.0342, 1.0133, 1.0328, 1.0289, 0.865, 1.02, 1.03]
    result = _sampler_check_with(monkeypatch, noisy)
    assert result.status == "PASS" and "within this host's noise" in result.detail
    free = _sampler_check_with(monkeypatch, [1.0] * 8)
    assert free.status == "PASS" and "noise" not in free.detail

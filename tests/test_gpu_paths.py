"""Flaws a reading of the engine found in its CUDA paths, each tested at its narrowest boundary
on this CPU (a fake torch.cuda surface, or a CPU device that says it is CUDA)."""

from __future__ import annotations

import contextlib
import gc
import weakref
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from fake_gpu import FakeGpu
from tiny import TINY_SUITE

from bench.engine import device as device_mod
from bench.engine import workloads
from bench.engine.device import Device, resolve_device
from bench.engine.executors import poisons_context
from bench.engine.models import PRESETS
from bench.engine.modes import PRECISION_MODES
from bench.engine.numerics.analyzer import NumericsAnalyzer
from bench.engine.runner import CaseRunner, is_out_of_memory
from bench.engine.suite import parse_suite

CPU = Device(torch.device("cpu"))


def tiny_suite(**sweep: Any) -> Any:
    overrides = {"models": ["gpt2-tiny"], "workloads": ["train"], "precisions": ["fp32"]}
    overrides.update(batch_sizes=[2], seq_lens=[16], **sweep)
    return parse_suite(TINY_SUITE, overrides=overrides)


# -- 1. cuBLAS workspaces ------------------------------------------------------------------------


def test_free_memory_clears_cublas_workspaces_before_emptying_the_cache(monkeypatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(
        torch, "cuda", SimpleNamespace(empty_cache=lambda: calls.append("empty_cache"))
    )
    monkeypatch.setattr(
        torch._C,
        "_cuda_clearCublasWorkspaces",
        lambda: calls.append("clear_cublas_workspaces"),
        raising=False,
    )
    Device(torch.device("cuda", 0)).free_memory()
    assert calls == ["clear_cublas_workspaces", "empty_cache"]


# -- 2. fused AdamW on CUDA, so GradScaler.step needs no host sync ---------------------------------


def test_training_uses_fused_adamw_on_cuda_and_records_it() -> None:
    model = torch.nn.Linear(8, 8)
    for device, fused in ((FakeGpu(), True), (CPU, False)):
        optimizer = PRECISION_MODES["amp_fp16"].make_optimizer(model, device)
        assert bool(optimizer.defaults["fused"]) is fused
    assert workloads.describe_optimizer(workloads.make_optimizer(model, fused=True)) == (
        "AdamW (fused)"
    )
    runner = CaseRunner(tiny_suite(), FakeGpu())
    with runner.prepare(tiny_suite().cases("cpu")[0]) as prepared:
        assert prepared.optimizer.defaults["fused"]
        assert prepared.details["optimizer"] == "AdamW (fused)"


def test_grad_scaler_step_reads_nothing_on_the_host_with_the_fused_optimizer(monkeypatch) -> None:
    """GradScaler.step calls found_inf.item() (a host sync on CUDA) unless the optimizer takes
    the scale itself; the fused AdamW does. Counted here on the CPU's GradScaler."""

    def scaler_step_items(fused: bool) -> int:
        model = torch.nn.Linear(8, 8)
        optimizer = workloads.make_optimizer(model, fused=fused)
        scaler = torch.amp.GradScaler("cpu")
        scaler.scale(model(torch.ones(2, 8)).sum()).backward()
        reads = []
        real_item = torch.Tensor.item
        monkeypatch.setattr(torch.Tensor, "item", lambda t: reads.append(1) or real_item(t))
        try:
            scaler.step(optimizer)
        finally:
            monkeypatch.setattr(torch.Tensor, "item", real_item)
        return len(reads)

    assert scaler_step_items(fused=False) >= 1  # the check can see a host read
    assert scaler_step_items(fused=True) == 0


# -- 3. a deterministic numerics pass: SDPA's math backend ----------------------------------------


def test_numerics_pass_runs_attention_on_the_math_backend() -> None:
    analyzer = NumericsAnalyzer(tiny_suite(), CPU)
    before = (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled())
    with analyzer._pass(PRECISION_MODES["fp32"]):
        assert torch.backends.cuda.math_sdp_enabled()
        assert not torch.backends.cuda.flash_sdp_enabled()
        assert not torch.backends.cuda.mem_efficient_sdp_enabled()
    assert (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()) == (
        before
    )


# -- 4. a sticky CUDA error in the cleanup becomes the case's result ------------------------------


class StickyErrorDevice(Device):
    """A CPU whose cleanup after a case fails the way a device-side assert surfaces on CUDA."""

    def __init__(self, fail_on_call: int) -> None:
        super().__init__(torch.device("cpu"))
        self.calls = 0
        self.fail_on_call = fail_on_call

    def free_memory(self) -> None:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("CUDA error: device-side assert triggered")
        super().free_memory()


def test_a_cleanup_failure_is_an_error_result_with_the_cuda_message() -> None:
    suite = tiny_suite()
    message = "RuntimeError: CUDA error: device-side assert triggered"
    # Call 1: building the model; 2: the memory window opens; 3: the cleanup after the case.
    for fail_on_call, reason in ((3, f"after the case: {message}"), (2, message)):
        runner = CaseRunner(suite, StickyErrorDevice(fail_on_call))
        result = runner.run(suite.cases("cpu")[0])
        assert result.status == "error" and result.started_at and result.wall_s > 0
        assert result.reason == reason
        assert poisons_context(result)  # a worker is replaced and the case recorded as crashed


# -- 5. nothing of a case lives on into the cleanup and the numerics pass -------------------------


def test_the_case_model_is_gone_before_the_numerics_pass() -> None:
    suite = tiny_suite()
    refs: list[weakref.ref] = []
    seen: list[bool] = []

    class Recording(CaseRunner):
        @contextlib.contextmanager
        def prepare(self, case: Any) -> Iterator[Any]:
            with super().prepare(case) as prepared:
                refs.extend([weakref.ref(prepared.model), weakref.ref(prepared.optimizer)])
                yield prepared

    def numerics(case: Any, phase: Any) -> None:
        gc.collect()
        seen.append([ref() is None for ref in refs])

    runner = Recording(suite, CPU, numerics=numerics)
    assert runner.run(suite.cases("cpu")[0]).ok
    assert seen == [[True, True]]


# -- 6. BERT: no all-ones attention mask in the timed batch ---------------------------------------


def test_bert_batches_carry_no_attention_mask_and_lose_nothing_by_it() -> None:
    spec = PRESETS["bert-tiny"]
    for workload in ("train", "infer"):
        batch = workloads.make_batch(spec, workload, 2, 16, torch.device("cpu"), seed=3)
        assert "attention_mask" not in batch
    model = spec.build(0).eval()
    with torch.inference_mode():
        without = model(**batch).logits
        with_ones = model(**batch, attention_mask=torch.ones_like(batch["input_ids"])).logits
    torch.testing.assert_close(without, with_ones, rtol=0, atol=1e-6)


# -- 8. optimizer state exists before the first step, and changes nothing -------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_optimizer_state_is_allocated_up_front_without_moving_a_weight(dtype) -> None:
    """Pure fp16 too, where eps rounds to 0 and a zero-gradient step would divide 0 by 0."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4).to(dtype)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = workloads.make_optimizer(model)
    assert len(optimizer.state) == 2
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b) and p.grad is None
        state = optimizer.state[p]
        assert float(state["step"]) == 0 and not state["exp_avg"].any()
        assert not state["exp_avg_sq"].any() and state["exp_avg"].dtype == dtype


def test_the_first_step_after_state_allocation_is_a_fresh_adamw_step() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    optimizer = workloads.make_optimizer(model)
    # The first real step is bit for bit a fresh AdamW's first step.
    fresh = torch.nn.Linear(8, 4)
    fresh.load_state_dict(model.state_dict())
    reference = torch.optim.AdamW(fresh.parameters(), lr=workloads.LEARNING_RATE)
    x = torch.randn(3, 8)
    for m, opt in ((model, optimizer), (fresh, reference)):
        m(x).square().sum().backward()
        opt.step()
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_a_probe_whose_scaler_skips_every_step_still_holds_optimizer_state() -> None:
    """amp_fp16 with inf gradients: GradScaler skips every step, AdamW never steps; its state
    (what a --find-max-batch probe must count) is there all the same."""
    suite = tiny_suite(precisions=["amp_fp16"])
    runner = CaseRunner(suite, CPU)
    with runner.prepare(suite.cases("cpu")[0]) as prepared:
        params = [p for p in prepared.model.parameters() if p.requires_grad]
        assert set(prepared.optimizer.state) == set(params)


# -- 9. no CUDA context in a parent that only hands out cases -------------------------------------


def test_resolve_device_makes_no_device_current_the_runner_does(monkeypatch) -> None:
    current: list[Any] = []
    fake = SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: 2,
        current_device=lambda: 0,
        set_device=lambda d: current.append(str(d)),
    )
    monkeypatch.setattr(device_mod.torch, "cuda", fake)
    device = resolve_device("cuda:1")
    assert device.name == "cuda:1" and current == []
    device.activate()
    assert current == ["cuda:1"]


def test_the_runner_activates_its_device() -> None:
    activated: list[bool] = []

    class Watched(FakeGpu):
        def activate(self) -> None:
            activated.append(True)

    CaseRunner(tiny_suite(), Watched())
    assert activated == [True]


# -- 10. CUDA out of memory in its other forms ---------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
        "CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported",
        "[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory",
    ],
)
def test_allocation_failures_are_out_of_memory(message: str) -> None:
    assert is_out_of_memory(RuntimeError(message))


def test_other_cuda_errors_are_not_out_of_memory() -> None:
    assert not is_out_of_memory(RuntimeError("CUDA error: device-side assert triggered"))
    assert not is_out_of_memory(ValueError("CUBLAS_STATUS_ALLOC_FAILED"))  # not a runtime error


# -- 11. a causal LM's inference step does not search for packed sequences (a host sync) --------


def test_the_inference_step_skips_transformers_packed_sequence_search(monkeypatch) -> None:
    """transformers' find_packed_sequence_indices tests `.all()` of a device tensor in an `if`
    (a host sync on CUDA) in every causal-LM forward without a KV cache or a mask: mpbench's
    prefill. The inference step answers it without calling it; a plain forward still calls it
    (so this test would see the sync come back), and the logits are the same with and without."""
    import transformers.masking_utils as masking_utils

    calls: list[torch.Tensor] = []
    real = masking_utils.find_packed_sequence_indices

    def spy(position_ids: torch.Tensor) -> Any:
        calls.append(position_ids)
        return real(position_ids)

    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", spy)
    spec = PRESETS["gpt2-tiny"]
    model = spec.build(seed=0).eval()
    batch = workloads.make_batch(spec, "infer", 2, 16, torch.device("cpu"), seed=0)
    kwargs = spec.family.forward_kwargs()
    assert kwargs == {"use_cache": False}

    with torch.inference_mode():
        plain = model(**batch, **kwargs).logits
    assert len(calls) == 1  # transformers' own path: the search ran (and found no packing)
    with torch.inference_mode(), workloads.unpacked_rows():
        unpacked = model(**batch, **kwargs).logits
    assert len(calls) == 1 and torch.equal(plain, unpacked)
    assert masking_utils.find_packed_sequence_indices is spy  # restored after the forward

    step = workloads.infer_step_fn(model, batch, contextlib.nullcontext, kwargs)
    step()
    assert len(calls) == 1  # the timed step never calls it

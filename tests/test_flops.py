"""FLOPs and peaks: the counted FLOPs of real steps against the analytic formulas (and fp8
against fp32), attention counted on a CPU, and the dense peak table (bench.results.peaks)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils import flop_counter

from bench.engine import flops, workloads
from bench.engine.device import Device
from bench.engine.flops import (
    analytic_flops,
    count_flops,
    count_flops_by_dtype,
    matmul_dtype,
    matmul_weights,
)
from bench.engine.models import PRESETS
from bench.engine.modes import PRECISION_MODES
from bench.results import peaks
from bench.results.peaks import PeakLookup, mfu, peak_tflops, split_peak, weighted_peak_tflops

CPU = Device(torch.device("cpu"))
BATCH, SEQ = 2, 64
TOLERANCE = 0.05  # counted vs analytic, and fp8 vs fp32


def step_of(precision: str, name: str, workload: str) -> Callable[[], Any]:
    """One real step of a case, built as the runner builds it (train()/eval() included)."""
    spec, mode = PRESETS[name], PRECISION_MODES[precision]
    model = mode.prepare(spec.build(0), CPU, workload).model
    batch = workloads.make_batch(spec, workload, BATCH, SEQ, CPU.torch_device, seed=0)

    def autocast() -> Any:
        return mode.autocast(CPU, workload)

    if workload == "train":
        model.train()
        optimizer = workloads.make_optimizer(model)
        return workloads.train_step_fn(model, batch, optimizer, autocast, None)
    model.eval()
    if workload == "infer":
        return workloads.infer_step_fn(
            model, batch, autocast, spec.family.forward_kwargs(), mode.inference_context
        )
    return workloads.generate_step_fn(model, batch, autocast, 8, mode.inference_context)


# ---------------------------------------------------------------------------------------------
# Counted FLOPs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt2-tiny", "bert-tiny"])
@pytest.mark.parametrize("workload", ["train", "infer"])
def test_counted_flops_match_the_analytic_estimate(name: str, workload: str) -> None:
    counted = count_flops(step_of("fp32", name, workload))
    expected = analytic_flops(PRESETS[name], workload, BATCH, SEQ)
    assert counted == pytest.approx(expected, rel=TOLERANCE)


def test_generate_counted_flops_match_the_analytic_estimate() -> None:
    counted = count_flops(step_of("fp32", "gpt2-tiny", "generate"))
    expected = analytic_flops(PRESETS["gpt2-tiny"], "generate", BATCH, SEQ, new_tokens=8)
    assert counted == pytest.approx(expected, rel=TOLERANCE)


@pytest.mark.parametrize("name", ["gpt2-tiny", "bert-tiny"])
def test_fp8_matmuls_are_counted(name: str) -> None:
    """torchao's Float8Linear runs aten.mm on float8 tensors (then aten._scaled_mm): an fp8 step
    counts what the fp32 step does, not just its bf16 leftovers."""
    reason = PRECISION_MODES["fp8"].unsupported_reason(CPU, "train")
    if reason is not None:
        pytest.skip(reason)
    fp8 = count_flops(step_of("fp8", name, "train"))
    fp32 = count_flops(step_of("fp32", name, "train"))
    assert fp8 == pytest.approx(fp32, rel=TOLERANCE)


def test_cpu_attention_is_counted_with_torchs_formulas() -> None:
    """Without dropout sdpa runs the CPU flash kernel, which torch 2.13's counter has no formula
    for: forward QK^T + AV, backward those recomputed plus three more (torch's CUDA rule)."""
    b, h, s, d = 2, 4, 64, 32
    q = torch.randn(b, h, s, d, requires_grad=True)
    one_matmul = 2 * b * h * s * s * d

    def forward() -> None:
        with torch.no_grad():
            torch.nn.functional.scaled_dot_product_attention(q, q, q)

    def forward_backward() -> None:
        torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()

    assert count_flops(forward) == 2 * one_matmul
    assert count_flops(forward_backward) == (2 + 5) * one_matmul
    assert torch.ops.aten._scaled_dot_product_flash_attention_for_cpu in flop_counter.flop_registry


def test_scaled_mm_is_counted() -> None:
    """The float8 matmul itself: 2*M*N*K, by torch's own formula."""
    reason = PRECISION_MODES["fp8"].unsupported_reason(CPU, "train")
    if reason is not None:
        pytest.skip(reason)
    m, k, n = 32, 64, 48
    a = torch.randn(m, k).to(torch.float8_e4m3fn)
    b = torch.randn(n, k).to(torch.float8_e4m3fn)
    one = torch.ones(())

    def step() -> None:
        torch._scaled_mm(a, b.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

    assert count_flops(step) == 2 * m * n * k


# ---------------------------------------------------------------------------------------------
# Analytic FLOPs
# ---------------------------------------------------------------------------------------------

GPT2_SMALL_PARAMS = 124_439_808  # Hugging Face `gpt2`, tied LM head counted once
GPT2_SMALL_POSITION_PARAMS = 1024 * 768  # wpe: a lookup, no matmul


def test_gpt2_124m_follows_the_6nt_rule() -> None:
    """Per token, a training step is ~6N FLOPs (N = parameters) while attention is small
    (seq 128), and nanoGPT's 6N + 12*L*d*S (N without position embeddings) at seq 1024."""
    spec = PRESETS["gpt2-124m"]
    assert matmul_weights(spec) == pytest.approx(
        GPT2_SMALL_PARAMS - GPT2_SMALL_POSITION_PARAMS, rel=0.01
    )
    per_token = analytic_flops(spec, "train", 1, 128) / 128
    assert per_token == pytest.approx(6 * GPT2_SMALL_PARAMS, rel=TOLERANCE)
    per_token = analytic_flops(spec, "train", 1, 1024) / 1024
    nanogpt = 6 * (GPT2_SMALL_PARAMS - GPT2_SMALL_POSITION_PARAMS) + 12 * 12 * 768 * 1024
    assert per_token == pytest.approx(nanogpt, rel=0.01)


def test_analytic_workloads_scale_as_documented() -> None:
    spec = PRESETS["bert-tiny"]
    infer = analytic_flops(spec, "infer", 4, 32)
    assert analytic_flops(spec, "train", 4, 32) == 3 * infer
    assert analytic_flops(spec, "infer", 8, 32) == 2 * infer  # linear in the batch
    with pytest.raises(ValueError, match="workload"):
        analytic_flops(spec, "serve", 4, 32)


# ---------------------------------------------------------------------------------------------
# Peaks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device_name", "model"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", None),  # not an H100 PCIe: different clocks and power
        ("NVIDIA H200", "H200"),
        ("NVIDIA H200 NVL", None),
        ("NVIDIA A100-SXM4-40GB", "A100 SXM4 40GB"),
        ("NVIDIA A100-SXM4-80GB", "A100 SXM4 80GB"),
        ("NVIDIA A100-PCIE-40GB", "A100 PCIe 40GB"),
        ("NVIDIA A100 80GB PCIe", "A100 PCIe 80GB"),
        ("NVIDIA A10", "A10"),  # not an A100
        ("NVIDIA A10G", None),
        ("NVIDIA L4", "L4"),  # not an L40S
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L40", None),  # not an L40S, not an L4
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("NVIDIA GeForce RTX 4090 D", None),
        ("Tesla V100-SXM2-16GB", "V100 SXM2"),
        ("Tesla V100-PCIE-32GB", "V100 PCIe"),
        ("Tesla V100S-PCIE-32GB", None),
        ("NVIDIA B200", "B200"),
        ("NVIDIA GB200", None),
    ],
)
def test_device_names_match_their_model_and_nothing_else(
    device_name: str, model: str | None
) -> None:
    found = peaks.find_gpu(device_name)
    assert (found.model if found else None) == model


def test_peaks_are_dense_not_sparse() -> None:
    """Datasheets quote H100 SXM bf16 as 1,979 TFLOPS "with sparsity": the dense peak is half."""
    lookup = peak_tflops("NVIDIA H100 80GB HBM3", "bf16")
    assert lookup.tflops == pytest.approx(989, abs=1)
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "bf16").tflops == 312
    assert peak_tflops("NVIDIA GeForce RTX 4090", "fp16").tflops == pytest.approx(165.2)


def test_table_entries_are_consistent() -> None:
    """Every entry: fp32 present, each tensor-core dtype at least as fast as fp32, bf16 = fp16,
    fp8 twice bf16, a source; and the hardware gaps (no tf32/bf16/fp8 on Volta, no fp8 on
    Ampere)."""
    for gpu in peaks.GPUS:
        assert set(gpu.tflops) <= set(peaks.DTYPES) and "fp32" in gpu.tflops, gpu.model
        assert all(v >= gpu.tflops["fp32"] for v in gpu.tflops.values()), gpu.model
        if "bf16" in gpu.tflops:
            assert gpu.tflops["bf16"] == gpu.tflops["fp16"], gpu.model
        if "fp8" in gpu.tflops:
            assert gpu.tflops["fp8"] == pytest.approx(2 * gpu.tflops["bf16"], rel=0.03)
        assert "http" in gpu.source, gpu.model
    volta = peaks.find_gpu("Tesla V100-SXM2-16GB")
    assert volta is not None and set(volta.tflops) == {"fp32", "fp16"}
    ampere = peaks.find_gpu("NVIDIA A100-SXM4-80GB")
    assert ampere is not None and "fp8" not in ampere.tflops


def test_every_precision_mode_has_a_compute_dtype_with_a_peak() -> None:
    dtype = {name: mode.compute_dtype for name, mode in PRECISION_MODES.items()}
    assert dtype["amp_fp16"] == "fp16" and dtype["amp_bf16"] == "bf16"
    assert {dtype[m] for m in ("fp8", "fp8_rowwise", "mxfp8")} == {"fp8"}
    for precision, compute in dtype.items():
        assert compute in peaks.DTYPES, precision
        assert peak_tflops("NVIDIA H100 80GB HBM3", compute).tflops, precision


def test_reasons_when_there_is_no_peak() -> None:
    cpu = peak_tflops(None, "fp32")
    assert cpu == PeakLookup(None, None, "no peak table for CPUs; give --peak-tflops")
    unknown = peak_tflops("NVIDIA H100 NVL", "bf16")
    assert unknown.tflops is None and unknown.source is None
    assert "NVIDIA H100 NVL" in (unknown.reason or "") and "H100 SXM" in (unknown.reason or "")
    missing = peak_tflops("Tesla V100-SXM2-16GB", "bf16")
    assert missing.reason == "Tesla V100-SXM2-16GB has no bf16 tensor cores"
    assert peak_tflops("NVIDIA A100-SXM4-40GB", "fp8").tflops is None


def test_override_wins() -> None:
    for name in (None, "NVIDIA H100 NVL", "NVIDIA H100 80GB HBM3"):
        assert peak_tflops(name, "bf16", override_tflops=123.0) == PeakLookup(
            123.0, "--peak-tflops", None
        )
    bad = peak_tflops("NVIDIA H100 80GB HBM3", "bf16", override_tflops=0.0)
    assert bad.tflops is None and "--peak-tflops" in (bad.reason or "")
    found = peak_tflops("NVIDIA H100 80GB HBM3", "bf16")
    assert found.source and found.source.startswith("H100 SXM: ") and found.reason is None


def test_mfu_arithmetic() -> None:
    peak = PeakLookup(400.0, "test", None)
    assert mfu(100.0, peak) == 0.25
    assert mfu(0.0, peak) == 0.0
    assert mfu(None, peak) is None
    assert mfu(100.0, PeakLookup(None, None, "unknown")) is None
    assert mfu(math.nan, peak) is None


def test_rowwise_fp8_gemm_formula() -> None:
    """mslk's rowwise float8 gemm (torchao's GPU inference path when mslk is installed; not
    here): 2*M*N*K from X [M, K] and the output [M, N]."""
    x, w, out = torch.Size([32, 64]), torch.Size([48, 64]), torch.Size([32, 48])
    assert flops._rowwise_fp8_gemm_flop(x, w, out_shape=out) == 2 * 32 * 48 * 64


# ---------------------------------------------------------------------------------------------
# Precision-aware MFU: FLOPs by the dtype each matmul ran in, and the FLOP-weighted peak
# ---------------------------------------------------------------------------------------------


def gpt2_tiny_by_hand(workload: str) -> dict[str, int]:
    """gpt2-tiny (2 layers, 128 wide, vocab 8192) at BATCH x SEQ, counted by hand. Per layer
    four Linear layers (Conv1D turned Linear), all divisible by 16, so all in fp8: qkv 128x384,
    attention out 128x128, MLP up 128x512 and down 512x128 = 12 d^2 weights, 2 FLOPs per
    weight per token; a training step adds the two backward GEMMs (grad input, grad weight),
    also in fp8 (e4m3 x e5m2). The tied LM head (128 x 8192) stays out of fp8 and runs in
    bf16 under the autocast, forward and both backward GEMMs. QK^T and AV: 2 matmuls x 2 x
    seq x seq x width per sequence and layer; in eval the CPU flash kernel runs them in bf16;
    in training (dropout) sdpa's math path runs them, which on a CPU upcasts bf16 to fp32, as
    2 bmm forward and 4 backward."""
    layers, width, vocab = 2, 128, 8192
    tokens = BATCH * SEQ
    linears = 2 * tokens * layers * (width * 3 * width + width * width + 2 * width * 4 * width)
    head = 2 * tokens * width * vocab
    attention = 2 * 2 * BATCH * SEQ * SEQ * width * layers
    if workload == "train":
        return {"fp8": 3 * linears, "bf16": 3 * head, "fp32": 3 * attention}
    return {"fp8": linears, "bf16": head + attention}


@pytest.mark.parametrize("workload", ["infer", "train"])
def test_an_fp8_models_flops_split_by_dtype_match_a_hand_count(workload: str) -> None:
    reason = PRECISION_MODES["fp8"].unsupported_reason(CPU, workload)
    if reason is not None:
        pytest.skip(reason)
    total, by_dtype = count_flops_by_dtype(step_of("fp8", "gpt2-tiny", workload))
    assert by_dtype == gpt2_tiny_by_hand(workload)
    assert sum(by_dtype.values()) == total


def test_fp32_matmuls_count_as_tf32_in_the_tf32_mode() -> None:
    total, by_dtype = count_flops_by_dtype(step_of("fp32", "gpt2-tiny", "infer"), "tf32")
    assert by_dtype == {"tf32": total}
    assert count_flops_by_dtype(step_of("fp32", "gpt2-tiny", "infer"))[1] == {"fp32": total}


def test_matmul_dtype_reads_the_stored_data_of_a_tensor_subclass() -> None:
    scale = torch.ones(())
    e4m3 = torch.zeros(4, 4).to(torch.float8_e4m3fn)
    assert matmul_dtype((e4m3, e4m3), {"scale_a": scale, "scale_b": scale}) == "fp8"
    assert matmul_dtype((torch.zeros(2, dtype=torch.bfloat16), torch.zeros(2)), {}) == "bf16"
    assert matmul_dtype((torch.zeros(2, dtype=torch.float16),), {}) == "fp16"
    assert matmul_dtype((torch.zeros(2),), {}, "tf32") == "tf32"

    class Wrapper(torch.Tensor):  # a float8 tensor standing in for a bf16 one (torchao's way)
        @staticmethod
        def __new__(cls, data: torch.Tensor) -> Wrapper:
            return torch.Tensor._make_wrapper_subclass(cls, data.shape, dtype=torch.bfloat16)

        def __init__(self, data: torch.Tensor) -> None:
            self._data = data

        def __tensor_flatten__(self) -> tuple[list[str], None]:
            return ["_data"], None

        @classmethod
        def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None):
            return NotImplemented

    assert matmul_dtype((Wrapper(e4m3), torch.zeros(2, dtype=torch.bfloat16)), {}) == "fp8"


def test_the_flop_weighted_peak_is_the_mixs_ideal_time() -> None:
    """3 TFLOP in fp8 at 2000 TFLOP/s and 1 TFLOP in bf16 at 1000: ideal 2.5 ms for 4 TFLOP,
    a peak of 1600 TFLOP/s; a step of 5 ms reaches 800 TFLOP/s, MFU 0.5 (ideal / real)."""
    split = {"fp8": 3 * 10**12, "bf16": 10**12}
    peak = weighted_peak_tflops(split, {"fp8": 2000.0, "bf16": 1000.0})
    assert peak == pytest.approx(1600.0)
    achieved = 4.0 / 0.005  # TFLOP / s
    assert mfu(achieved, PeakLookup(peak, "t", None)) == pytest.approx(0.0025 / 0.005)
    assert weighted_peak_tflops({"bf16": 10**12}, {"bf16": 989.0}) == 989.0  # one dtype: its own
    assert weighted_peak_tflops(split, {"fp8": 2000.0}) is None  # bf16 has no peak
    assert weighted_peak_tflops({}, {}) is None


def test_split_peak_on_a_gpu_and_without_one() -> None:
    h100 = "NVIDIA H100 80GB HBM3"
    lookup, peaks = split_peak(h100, {"fp8": 3 * 10**12, "bf16": 10**12})
    fp8, bf16 = peak_tflops(h100, "fp8").tflops, peak_tflops(h100, "bf16").tflops
    assert peaks == {"fp8": fp8, "bf16": bf16}
    assert lookup.tflops == pytest.approx(4 / (3 / fp8 + 1 / bf16))
    assert lookup.source.startswith("FLOP-weighted (fp8 75% at")
    one, _ = split_peak(h100, {"bf16": 10**12})
    assert one == peak_tflops(h100, "bf16")  # one dtype: as before
    cpu, none = split_peak(None, {"fp32": 10**9})
    assert none is None and cpu.reason == peaks_module_cpu_reason()
    cpu, _ = split_peak(None, {"fp8": 3, "bf16": 1})  # no dtype has a peak: the one reason
    assert cpu.reason == peaks_module_cpu_reason()
    mixed, _ = split_peak(None, {"fp8": 3, "bf16": 1}, lambda d: 100.0 if d == "fp8" else None)
    assert mixed.tflops is None and mixed.reason.startswith("bf16 (25% of the FLOPs): ")


def peaks_module_cpu_reason() -> str:
    return peaks.CPU_REASON

"""fp8 through torchao (bench.engine.modes.fp8): GPT-2's Conv1D swap, the module filter, the gates,
the GPU inference path (faked), MX conversion, fp8 activation ranges, and the one `prepare`
that timing and numerics share."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import pytest
import torch
from fake_gpu import FakeGpu

from bench.engine.device import Device
from bench.engine.executors import default_runner_factory
from bench.engine.models import PRESETS
from bench.engine.modes import PRECISION_MODES, fp8
from bench.engine.numerics.activations import activation_summary, range_entry
from bench.engine.suite import parse_suite

CPU = Device(torch.device("cpu"))


def tiny(name: str, seed: int = 0) -> torch.nn.Module:
    return PRESETS[name].build(seed)


def lm_batch(model: torch.nn.Module, batch: int = 2, seq: int = 16) -> dict[str, torch.Tensor]:
    ids = torch.randint(
        0, model.config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(1)
    )
    return {"input_ids": ids, "labels": ids.clone()}


def test_conv1d_swap_keeps_outputs_and_gradients_identical() -> None:
    """GPT-2's Conv1D (x @ W + b, W [in, out]) as nn.Linear (W transposed): bit-identical."""
    original = tiny("gpt2-tiny").eval()
    swapped = tiny("gpt2-tiny").eval()
    names = fp8.swap_conv1d_for_linear(swapped)
    assert len(names) == 8 and "transformer.h.0.attn.c_attn.weight" in names
    assert isinstance(swapped.transformer.h[0].attn.c_attn, torch.nn.Linear)
    assert swapped.lm_head.weight is swapped.transformer.wte.weight  # the tie survives
    batch = lm_batch(original)
    out_a, out_b = original(**batch), swapped(**batch)
    assert torch.equal(out_a.logits, out_b.logits)
    out_a.loss.backward()
    out_b.loss.backward()
    grads_a = dict(original.named_parameters())
    for name, param in swapped.named_parameters():
        expected = grads_a[name].grad
        got = param.grad.t() if name in names else param.grad
        assert torch.equal(expected, got), name


@pytest.mark.parametrize(
    ("model", "converted", "total"), [("gpt2-tiny", 8, 9), ("bert-tiny", 13, 14)]
)
def test_filter_skips_the_tied_head_and_odd_shapes(model: str, converted: int, total: int) -> None:
    m = tiny(model)
    fp8.swap_conv1d_for_linear(m)
    accept = fp8.LinearFilter(m)
    decisions = {name: accept(mod, name) for name, mod in accept.linears.items()}
    assert sum(decisions.values()) == converted and len(decisions) == total
    head = "lm_head" if model.startswith("gpt2") else "cls.predictions.decoder"
    assert decisions[head] is False  # tied to the input embedding (and divisible by 16)
    odd = torch.nn.Linear(24, 32)
    assert accept(odd, "x") is False and fp8.LinearFilter(m, multiple=8)(odd, "x") is True
    details = accept.details()
    assert details["fp8_linear_layers"] == converted and details["linear_layers"] == total
    assert 0 < details["fp8_linear_parameters"] < details["linear_parameters"]


@pytest.mark.parametrize("name", ["fp8", "fp8_rowwise"])
def test_cpu_training_conversion(name: str) -> None:
    prepared = PRECISION_MODES[name].prepare(tiny("gpt2-tiny"), CPU, "train")
    from torchao.float8.float8_linear import Float8Linear

    layers = [m for m in prepared.model.modules() if isinstance(m, Float8Linear)]
    assert len(layers) == prepared.details["fp8_linear_layers"] == 8
    assert prepared.details["conv1d_to_linear"] == 8 and len(prepared.transposed) == 8
    recipe = "rowwise" if name == "fp8_rowwise" else "tensorwise"
    assert (
        prepared.details["fp8_path"] == f"torchao float8 training (Float8Linear, {recipe} scaling)"
    )
    granularity = prepared.details["fp8_config"]["input"]["granularity"]
    assert granularity == ("axiswise" if recipe == "rowwise" else "tensorwise")
    assert PRECISION_MODES[name].caveat(CPU, compiled=False) == fp8.CPU_CAVEAT
    # GPU-less inference runs the same Float8Linear layers, forward only; the record says so.
    infer = PRECISION_MODES[name].prepare(tiny("gpt2-tiny"), CPU, "infer")
    assert infer.details["fp8_path"].endswith("forward only without gradients")
    assert infer.details["fp8_linear_layers"] == 8


def test_gates_name_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    modes = PRECISION_MODES
    assert modes["fp8"].unsupported_reason(CPU) is None  # this torch multiplies float8 on a CPU
    a100 = FakeGpu((8, 0), "NVIDIA A100")
    assert modes["fp8"].unsupported_reason(a100) == (
        "fp8 needs compute capability >= 8.9 (Ada, Hopper) for fp8 tensor cores; NVIDIA A100 "
        "has 8.0"
    )
    assert modes["fp8_rowwise"].unsupported_reason(FakeGpu((9, 0))) is None
    assert "compute capability >= 10.0 (Blackwell)" in modes["mxfp8"].unsupported_reason(CPU)
    assert "torchao would only emulate MX" in modes["mxfp8"].unsupported_reason(CPU)
    assert "NVIDIA Test GPU has 9.0" in modes["mxfp8"].unsupported_reason(FakeGpu((9, 0)))
    assert modes["mxfp8"].unsupported_reason(FakeGpu((10, 0))) is None
    # Without torchao, every fp8 mode says how to get it.
    fp8.torchao_reason.cache_clear()
    with monkeypatch.context() as patch:
        patch.setattr(fp8, "_quiet_import", _raise(ImportError("no torchao")))
        reason = modes["fp8"].unsupported_reason(CPU)
    fp8.torchao_reason.cache_clear()
    assert reason.startswith("fp8 needs torchao's float8 (no torchao); pip install 'torchao>=0.18'")
    # A torch without a CPU float8 matmul is a skip, not an error.
    fp8.cpu_float8_matmul_reason.cache_clear()
    with monkeypatch.context() as patch:
        patch.setattr(torch, "_scaled_mm", _raise(RuntimeError("no kernel")))
        reason = modes["fp8"].unsupported_reason(CPU)
    fp8.cpu_float8_matmul_reason.cache_clear()
    assert "has no float8 matmul on the CPU (no kernel)" in reason


def _raise(exc: Exception):
    def fail(*args: object, **kwargs: object) -> None:
        raise exc

    return fail


@pytest.mark.parametrize(("name", "granularity"), [("fp8", "PerTensor"), ("fp8_rowwise", "PerRow")])
def test_gpu_inference_goes_through_quantize(
    monkeypatch: pytest.MonkeyPatch, name: str, granularity: str
) -> None:
    """On a GPU, infer/generate quantize the eligible layers with torchao's float8 inference
    config, on bf16 weights and without autocast (faked: quantize_ itself refuses a CPU)."""
    import torchao.quantization as tq

    calls = []

    def fake_quantize(model: torch.nn.Module, config: object, filter_fn: object) -> None:
        linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        calls.append(
            (type(config).__name__, config, [n for n, m in linears.items() if filter_fn(m, n)])
        )

    monkeypatch.setattr(tq, "quantize_", fake_quantize)
    gpu = FakeGpu((9, 0))
    mode = PRECISION_MODES[name]
    prepared = mode.prepare(tiny("gpt2-tiny"), gpu, "infer")
    ((config_name, config, layers),) = calls
    assert config_name == "Float8DynamicActivationFloat8WeightConfig"
    assert type(config.granularity[0]).__name__ == granularity
    assert len(layers) == 8 and "lm_head" not in layers
    assert next(prepared.model.parameters()).dtype == torch.bfloat16
    assert "quantize_" in prepared.details["fp8_path"]
    assert isinstance(mode.autocast(gpu, "infer"), contextlib.nullcontext)  # bf16 weights
    assert mode.caveat(gpu, compiled=False) == fp8.EAGER_GPU_CAVEAT
    assert mode.caveat(gpu, compiled=True) is None


def test_mx_conversion_keeps_parameters() -> None:
    """MXFP8Linear replaces the accepted layers with the same parameter objects (tied weights
    stay tied); torchao's emulated MX runs forward and backward here. mpbench never reports the
    emulation as mxfp8: the mode is skipped on anything below compute capability 10.0."""
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(), torch.nn.Linear(96, 40))
    weight = model[0].weight
    fp8.convert_to_mxfp8(model, fp8.LinearFilter(model, multiple=32), emulated=True)
    from torchao.prototype.moe_training.mxfp8_linear import MXFP8Linear

    assert isinstance(model[0], MXFP8Linear) and model[0].weight is weight
    assert type(model[2]) is torch.nn.Linear  # 40 is no multiple of 32
    out = model(torch.randn(32, 64))
    out.sum().backward()
    assert torch.isfinite(model[0].weight.grad).all()


def test_the_mxfp8_check_recognises_the_class_it_installs() -> None:
    """On a Blackwell GPU (faked: the layers are only built, never run), mxfp8's prepare puts
    torchao 0.18's MXFP8Linear (torchao.prototype.moe_training) in place of each accepted
    nn.Linear, and the mode's check counts exactly those: it took effect. A model whose layers
    are some other class (what an older torchao called MXLinear, or plain nn.Linear) fails."""
    from torchao.prototype.moe_training.mxfp8_linear import MXFP8Linear

    gpu = FakeGpu((10, 0), "NVIDIA B200")
    mode = PRECISION_MODES["mxfp8"]
    prepared = mode.prepare(tiny("gpt2-tiny"), gpu, "train")
    installed = {type(m) for m in prepared.model.modules() if isinstance(m, torch.nn.Linear)}
    assert MXFP8Linear in installed
    assert len(mode.converted(prepared.model)) == prepared.details["fp8_linear_layers"] == 8
    assert mode.took_effect(gpu, prepared.model, prepared.details) == ""

    class MXLinear(torch.nn.Linear):  # not the class torchao 0.18 installs
        pass

    for parent in list(prepared.model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MXFP8Linear):
                other = MXLinear(child.in_features, child.out_features, device="meta")
                other.weight, other.bias = child.weight, child.bias
                setattr(parent, name, other)
    wrong = mode.took_effect(gpu, prepared.model, prepared.details)
    assert wrong == "0 fp8 Linear layers, details say 8"


def test_fp8_activation_ranges() -> None:
    """e4m3 (max 448, smallest normal 2**-6) and e5m2 (57344, 2**-14), unscaled; and what
    tensorwise scaling leaves below e4m3's smallest normal."""
    values = torch.tensor([500.0, 1.0, 0.01, 0.0, -1e-5])
    entry = range_entry("m", values)
    assert entry["e4m3_overflow"] and not entry["e5m2_overflow"] and not entry["fp16_overflow"]
    assert entry["e4m3_headroom_log2"] == pytest.approx(math.log2(448 / 500))
    assert entry["e5m2_headroom_log2"] == pytest.approx(math.log2(57344 / 500))
    assert entry["frac_below_e4m3_normal"] == pytest.approx(2 / 5)  # 0.01 and 1e-5; 0 is exact
    assert entry["frac_below_e5m2_normal"] == pytest.approx(1 / 5)  # 1e-5 only
    # Scaled so that 500 maps to 448: the cut is 500 * 2**-6 / 448 ~ 0.0174: 0.01 and 1e-5 fall.
    assert entry["frac_below_e4m3_normal_scaled"] == pytest.approx(2 / 5)
    summary = activation_summary([entry, range_entry("n", torch.tensor([1.0, 2.0]))], "e4m3")
    assert summary["format"] == "e4m3" and summary["worst_module"] == "m"
    assert summary["e4m3_overflow_modules"] == ["m"] and summary["e4m3_underflow_modules"] == ["m"]


SUITE = """
[sweep]
models = ["gpt2-tiny"]
workloads = ["train"]
precisions = ["fp32", "fp8"]
batch_sizes = [2]
seq_lens = [16]
[timing]
warmup = 0
iterations = 2
[numerics]
train_steps = 2
noise_floor = false
activations = false
"""


def test_timing_and_numerics_share_the_modes_prepare(monkeypatch: pytest.MonkeyPatch) -> None:
    """One component: the timed case and the numerics pass both build their model through
    PrecisionMode.prepare. A runner or pass that made its own copy would break this."""
    calls: list[str] = []
    original = fp8.Float8Training.prepare

    def spy(self: fp8.Float8Training, pristine: torch.nn.Module, device: Device, workload: str):
        calls.append(workload)
        return original(self, pristine, device, workload)

    monkeypatch.setattr(fp8.Float8Training, "prepare", spy)
    suite = parse_suite(SUITE, "s.toml")
    runner = default_runner_factory(suite, CPU)
    fp32, fp8_case = suite.cases("cpu")
    assert runner.run(fp32).ok and calls == []
    result = runner.run(fp8_case)
    assert result.ok and calls == ["train", "train"]  # the timed case, then the numerics pass
    assert result.details["fp8_linear_layers"] == 8 and result.details["caveat"] == fp8.CPU_CAVEAT
    sqnr = result.numerics["grad_sqnr_db"]["overall"]
    assert 15 < sqnr < 60  # real fp8 error on the transposed-back gradients, not a shape mix-up
    assert result.numerics["verdict"] in ("ok", "warn")


@pytest.mark.slow
def test_compiled_cases(tmp_path: Path) -> None:
    """Compiled cases: distinct ids, the first call timed apart, generate not compiled."""
    suite = parse_suite(
        SUITE.replace('workloads = ["train"]', 'workloads = ["infer", "generate"]')
        .replace('["fp32", "fp8"]', '["fp32"]')
        .replace("[numerics]", "[numerics]\nenabled = false\n#")
        .replace("[sweep]", '[sweep]\nexecution = ["eager", "compiled"]'),
        "s.toml",
    )
    cases = suite.cases("cpu")
    assert [c.id for c in cases] == [
        "gpt2-tiny/infer/fp32/bs2/seq16",
        "gpt2-tiny/infer/fp32/bs2/seq16/compiled",
        "gpt2-tiny/generate/fp32/bs2/seq16",
        "gpt2-tiny/generate/fp32/bs2/seq16/compiled",
    ]
    runner = default_runner_factory(suite, CPU)
    eager, compiled = runner.run(cases[0]), runner.run(cases[1])
    assert eager.ok and eager.timing.compile_s is None
    assert compiled.ok and compiled.case.execution == "compiled", compiled.reason
    assert compiled.timing.compile_s > 0 and len(compiled.step_s) == 2
    assert compiled.timing.compile_s > 5 * compiled.timing.median_s  # compiling is no step
    skipped = runner.run(cases[3])
    assert skipped.status == "skipped" and "generate is not compiled" in skipped.reason

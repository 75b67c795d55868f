"""Precision modes: support gates, model preparation, step context, scaler, global state."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from bench.engine import flags as precision
from bench.engine.device import Device
from bench.engine.modes import PRECISION_MODES

CPU = Device(torch.device("cpu"))


def fake_gpu(monkeypatch, cc: tuple[int, int], bf16: bool = True) -> Device:
    monkeypatch.setattr(
        torch,
        "cuda",
        SimpleNamespace(
            get_device_capability=lambda d: cc,
            get_device_name=lambda d: "Fake GPU",
            is_bf16_supported=lambda including_emulation=True: bf16,
        ),
    )
    return Device(torch.device("cuda", 0))


def test_every_torchbench_name_is_declared() -> None:
    names = "fp32 tf32 amp_fp16 amp_bf16 bf16 fp16 fp8 fp8_rowwise mxfp8"
    assert list(PRECISION_MODES) == names.split()


def test_cpu_support_and_reasons() -> None:
    reasons = {name: mode.unsupported_reason(CPU) for name, mode in PRECISION_MODES.items()}
    assert reasons["tf32"] == "tf32 needs a CUDA GPU with compute capability >= 8.0; found cpu"
    assert "compute capability >= 10.0" in reasons["mxfp8"] and "emulate" in reasons["mxfp8"]
    # fp8 runs on this CPU through torch's CPU _scaled_mm (bench.engine.modes.fp8), with a caveat.
    assert {n for n, r in reasons.items() if r is None} == set(PRECISION_MODES) - {"tf32", "mxfp8"}
    caveats = {n: m.caveat(CPU, compiled=False) for n, m in PRECISION_MODES.items()}
    assert {n for n, c in caveats.items() if c} == {"fp8", "fp8_rowwise", "mxfp8"}
    assert "no fp8-hardware figure" in caveats["fp8"]


def test_gpu_gates_by_compute_capability(monkeypatch) -> None:
    volta = fake_gpu(monkeypatch, (7, 0), bf16=False)
    assert "tf32 needs compute capability >= 8.0; Fake GPU has 7.0" == PRECISION_MODES[
        "tf32"
    ].unsupported_reason(volta)
    assert "native bfloat16" in PRECISION_MODES["amp_bf16"].unsupported_reason(volta)
    assert PRECISION_MODES["amp_fp16"].unsupported_reason(volta) is None
    hopper = fake_gpu(monkeypatch, (9, 0))
    assert PRECISION_MODES["tf32"].unsupported_reason(hopper) is None
    assert PRECISION_MODES["bf16"].unsupported_reason(hopper) is None


def test_prepare_casts_only_pure_modes_and_leaves_the_pristine_model() -> None:
    pristine = torch.nn.Linear(4, 4)
    before = pristine.weight.detach().clone()
    for name, dtype in [
        ("fp32", torch.float32),
        ("amp_bf16", torch.float32),
        ("bf16", torch.bfloat16),
        ("fp16", torch.float16),
    ]:
        prepared = PRECISION_MODES[name].prepare(pristine, CPU, "train")
        assert prepared.model is not pristine, name
        assert prepared.model.weight.dtype == dtype, name
        assert prepared.details == {} and prepared.transposed == frozenset(), name
        with torch.no_grad():
            prepared.model.weight.add_(
                1.0
            )  # a working copy: the pristine weights stay as they were
    assert pristine.weight.dtype == torch.float32
    assert torch.equal(pristine.weight, before)


def test_copy_in_dtype_keeps_tied_weights_tied() -> None:
    from bench.engine.modes.base import copy_in_dtype

    model = torch.nn.Sequential(torch.nn.Embedding(8, 4), torch.nn.Linear(4, 8, bias=False))
    model[1].weight = model[0].weight
    copy = copy_in_dtype(model, torch.bfloat16)
    assert copy[1].weight is copy[0].weight and copy[0].weight.dtype == torch.bfloat16


def test_autocast_context_on_cpu() -> None:
    x = torch.randn(4, 4)
    with PRECISION_MODES["amp_bf16"].autocast(CPU):
        assert (x @ x).dtype == torch.bfloat16
    with PRECISION_MODES["amp_fp16"].autocast(CPU):
        assert (x @ x).dtype == torch.float16
    with PRECISION_MODES["fp32"].autocast(CPU):
        assert (x @ x).dtype == torch.float32


def test_grad_scaler_only_for_amp_fp16() -> None:
    scaler = PRECISION_MODES["amp_fp16"].make_grad_scaler(CPU)
    assert isinstance(scaler, torch.amp.GradScaler)
    assert scaler.get_scale() == 2.0**16
    assert all(
        PRECISION_MODES[n].make_grad_scaler(CPU) is None
        for n in ("fp32", "amp_bf16", "bf16", "fp16")
    )


def _globals() -> tuple:
    """Every global a mode touches, read through the API this torch has."""
    return (
        precision.GlobalFlags.capture(),
        torch.get_default_dtype(),
        torch.are_deterministic_algorithms_enabled(),
    )


def test_global_state_sets_tf32_and_restores_everything() -> None:
    before = _globals()
    with PRECISION_MODES["tf32"].global_state(CPU):
        assert precision.tf32_state()["matmul"] and precision.tf32_state()["cudnn"]
        torch.use_deterministic_algorithms(True)  # a case that changes more must not leak it
        torch.set_default_dtype(torch.float64)
    with PRECISION_MODES["fp32"].global_state(CPU):
        state = precision.tf32_state()
        assert not state["matmul"] and not state["cudnn"]
        if precision.new_tf32_api():  # exact fp32 for oneDNN on a CPU too
            assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"
    assert _globals() == before


def test_global_state_after_the_new_tf32_api_was_used() -> None:
    """transformers' enable_tf32 uses torch's new API; after that, reading a legacy flag raises.
    mpbench must still set, record and restore TF32 (through the new API)."""
    if not precision.new_tf32_api():
        pytest.skip(f"torch {torch.__version__} has no fp32_precision API")
    saved = precision.GlobalFlags.capture()
    try:
        torch.backends.cuda.matmul.fp32_precision = "tf32"  # what enable_tf32 does
        with PRECISION_MODES["fp32"].global_state(CPU):
            assert precision.tf32_state() == {
                "matmul": False,
                "cudnn": False,
                "api": "fp32_precision",
            }
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        assert precision.tf32_state()["matmul"] is True
    finally:
        saved.restore()


def test_global_state_legacy_api_in_a_fresh_process() -> None:
    """On a torch without the new API, the legacy flags are set and restored (run in a fresh
    interpreter: once the new API has been used in a process, legacy reads raise)."""
    code = (
        "import torch; from bench.engine import flags as p; "
        "p.new_tf32_api = lambda: False; "
        "from bench.engine.modes import PRECISION_MODES as M; from bench.engine.device import Device; "
        "d = Device(torch.device('cpu')); before = p.tf32_state(); "
        "ctx = M['tf32'].global_state(d); ctx.__enter__(); on = p.tf32_state(); ctx.__exit__(None, None, None); "
        "print(before == p.tf32_state(), on['matmul'], on['cudnn'], on['float32_matmul_precision'], on['api'])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["True", "True", "True", "high", "allow_tf32"]


def test_global_state_restores_after_an_exception() -> None:
    before = _globals()
    with pytest.raises(RuntimeError), PRECISION_MODES["tf32"].global_state(CPU):
        raise RuntimeError("case failed")
    assert _globals() == before


def test_the_fallback_display_order_agrees_with_the_modes() -> None:
    """Runs that recorded no display order (older ones, pytest-benchmark files) sort by the
    schema's list: it names modes only, in their order. A new mode need not be added to it:
    its runs record its order."""
    from bench.engine.workloads import WORKLOADS
    from bench.results import schema

    assert [p for p in PRECISION_MODES if p in schema.PRECISIONS] == list(schema.PRECISIONS)
    assert tuple(WORKLOADS) == schema.WORKLOADS


def test_a_run_shows_its_modes_in_their_recorded_order_and_colours() -> None:
    """What a run recorded decides the order and colour of its modes (a mode unknown to this
    version of mpbench included), not a table in the views."""
    from bench.results.manifest import PrecisionStyle, PrecisionStyles
    from bench.results.schema import precision_rank
    from bench.views.svg import color_of, linestyle_of

    recorded = PrecisionStyles(
        [PrecisionStyle(m.name, m.order, m.color, m.dashed) for m in PRECISION_MODES.values()]
        + [PrecisionStyle("fp6", 55, "#123456", True, "fp8")]  # between fp16 and fp8
    )
    names = ["fp8", "fp6", "fp32", "bf16"]
    with recorded.shown():
        assert sorted(names, key=precision_rank) == ["fp32", "bf16", "fp6", "fp8"]
        assert color_of("fp6 +compile") == "#123456" and linestyle_of("fp6") == "--"
        assert color_of("fp32") == PRECISION_MODES["fp32"].color
    assert sorted(names, key=precision_rank) == ["fp32", "bf16", "fp8", "fp6"]  # fp6 unknown: last

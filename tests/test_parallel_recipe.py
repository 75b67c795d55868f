"""FSDP2's usual recipe, at its narrowest boundaries on this CPU: the mixed-precision policy
`fully_shard` is given per precision mode, fp8's float8 all-gather (held equal to torchao's own
conversion), and the ranks' messages on a gloo group, so a rank waiting for rank 0's
inference case sleeps on a socket instead of spinning in an NCCL collective."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from bench.engine import executors, parallel
from bench.engine.device import Device
from bench.engine.models import PRESETS
from bench.engine.modes import PRECISION_MODES
from bench.engine.suite import parse_suite
from bench.results.schema import Case, CaseResult

CPU = Device(torch.device("cpu"))

# The dtype FSDP2 all-gathers and computes in, per mode (None: as the mode stores them).
PARAM_DTYPES = {
    "fp32": None,
    "tf32": None,
    "bf16": None,  # pure bf16 already stores bf16
    "fp16": None,
    "amp_bf16": torch.bfloat16,  # fp32 master weights, bf16 compute
    "amp_fp16": torch.float16,
    "fp8": torch.bfloat16,  # torchtitan: bf16 for what is not fp8, float8 all-gather for the rest
    "fp8_rowwise": torch.bfloat16,
    "mxfp8": torch.bfloat16,
}


@pytest.mark.parametrize("precision", list(PRECISION_MODES))
def test_each_mode_gets_fsdp2s_usual_mixed_precision_policy(precision: str) -> None:
    assert set(PARAM_DTYPES) == set(PRECISION_MODES)  # a new mode must say what it wants
    policy = parallel.DataParallel("fsdp", "bf16", precision).mp_policy()
    assert policy.param_dtype == PARAM_DTYPES[precision]
    assert policy.reduce_dtype == torch.bfloat16


def test_the_layout_of_a_case_carries_its_precision() -> None:
    case = Case("gpt2-tiny", "gpt2", "train", "amp_fp16", 2, 16, "cpu", parallel="fsdp")
    layout = parallel.layout_for(case)
    assert layout.precision == "amp_fp16" and layout.mp_policy().param_dtype == torch.float16


def sharded_with(monkeypatch: pytest.MonkeyPatch, precision: str) -> tuple[list, dict, Any]:
    """DataParallel(fsdp).wrap of the mode's gpt2-tiny with fully_shard and the device mesh
    faked: the (module, mp_policy) of every fully_shard call, the details, the model."""
    import torch.distributed.device_mesh as device_mesh
    import torch.distributed.fsdp as fsdp

    calls: list[tuple[torch.nn.Module, Any]] = []
    monkeypatch.setattr(device_mesh, "init_device_mesh", lambda *a, **k: "mesh")
    monkeypatch.setattr(
        fsdp, "fully_shard", lambda m, mesh, mp_policy: calls.append((m, mp_policy))
    )
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    mode = PRECISION_MODES[precision]
    model = mode.prepare(PRESETS["gpt2-tiny"].build(0), CPU, "train").model
    _, details = parallel.DataParallel("fsdp", "fp32", precision).wrap(model, CPU)
    return calls, details, model


def test_fully_shard_gets_the_policy_on_every_block_and_the_model(monkeypatch) -> None:
    calls, details, model = sharded_with(monkeypatch, "amp_bf16")
    assert len(calls) == 3 and calls[-1][0] is model  # two blocks, then the whole model
    assert {(p.param_dtype, p.reduce_dtype) for _, p in calls} == {(torch.bfloat16, torch.float32)}
    assert details["mp_policy_param_dtype"] == "bfloat16"
    calls, details, _ = sharded_with(monkeypatch, "fp32")
    assert {p.param_dtype for _, p in calls} == {None}
    assert details["mp_policy_param_dtype"] == "as stored"


def test_fp8_turns_on_torchaos_float8_all_gather_before_sharding(monkeypatch) -> None:
    """Every Float8Linear's weight is torchao's float8 all-gather tensor by the time
    fully_shard sees it, its config flag on: what `convert_to_float8_training` with
    `enable_fsdp_float8_all_gather=True` makes; the forward is unchanged."""
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    from torchao.float8.float8_linear import Float8Linear
    from torchao.float8.fsdp_utils import WeightWithDynamicFloat8CastTensor

    from bench.engine.modes import fp8

    mode = PRECISION_MODES["fp8"]
    model = mode.prepare(PRESETS["gpt2-tiny"].build(0), CPU, "train").model.eval()  # no dropout
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), mode.autocast(CPU):
        before = model(input_ids=ids).logits
    assert fp8.enable_float8_all_gather(model) == 8
    with torch.no_grad(), mode.autocast(CPU):
        assert torch.equal(model(input_ids=ids).logits, before)

    reference = torch.nn.Sequential(torch.nn.Linear(32, 64))
    config = Float8LinearConfig.from_recipe_name("tensorwise")
    torchao_config = Float8LinearConfig(
        **{**config.__dict__, "enable_fsdp_float8_all_gather": True}
    )
    convert_to_float8_training(reference, config=torchao_config)
    layers = [m for m in model.modules() if isinstance(m, Float8Linear)]
    for layer in [*layers, reference[0]]:
        assert type(layer.weight) is type(reference[0].weight)
        assert isinstance(layer.weight, WeightWithDynamicFloat8CastTensor)
        assert layer.config == torchao_config

    _, details, sharded = sharded_with(monkeypatch, "fp8")
    assert details["fsdp_float8_all_gather"] == "yes: 8 layers"
    weights = [m.weight for m in sharded.modules() if isinstance(m, Float8Linear)]
    assert len(weights) == 8
    assert all(isinstance(w, WeightWithDynamicFloat8CastTensor) for w in weights)
    _, details, _ = sharded_with(monkeypatch, "fp8_rowwise")
    assert details["fsdp_float8_all_gather"].startswith("no: torchao's float8 all-gather needs")


# -- the ranks' messages on a gloo group -------------------------------------------------------


class RecordedDist:
    """torch.distributed's object collectives for one rank of a 2-rank launch, answering from a
    script, recording the group each call used."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, broadcasts: list[list[Any]]) -> None:
        self.groups: list[tuple[str, Any]] = []
        self.broadcasts = broadcasts
        monkeypatch.setattr(dist, "broadcast_object_list", self.broadcast)
        monkeypatch.setattr(dist, "all_gather_object", self.all_gather)
        monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)

    def broadcast(self, objects: list[Any], src: int = 0, group: Any = None, **kw: Any) -> None:
        self.groups.append(("broadcast", group))
        if self.broadcasts:
            objects[:] = self.broadcasts.pop(0)

    def all_gather(self, gathered: list[Any], obj: Any, group: Any = None) -> None:
        self.groups.append(("all_gather", group))
        gathered[:] = [obj] * len(gathered)


def test_a_rank_waits_for_rank_0s_inference_case_on_the_gloo_group(
    tmp_path: Path, monkeypatch
) -> None:
    """Rank 1 of a launch: told the suite, then an inference case (rank 0 runs it alone), then
    the end; every message, and the wait for rank 0's result, goes over the control group."""
    control = object()
    monkeypatch.setitem(parallel._control, "group", control)
    suite = parse_suite(
        "[sweep]\nmodels=['gpt2-tiny']\nworkloads=['infer']\nprecisions=['fp32']\n"
        "batch_sizes=[1]\nseq_lens=[16]\n"
    )
    case = suite.cases("cpu")[0]
    recorded = RecordedDist(
        monkeypatch, [[suite.to_toml(), str(tmp_path)], [case.to_dict()], [None]]
    )
    ran: list[Case] = []

    class Local:
        def __init__(self, *args: Any) -> None:
            pass

        def run(self, case: Case, phase: Any = None) -> CaseResult:
            ran.append(case)
            return CaseResult(case, "skipped", "not run here")

    monkeypatch.setattr(executors, "InProcessExecutor", Local)
    assert executors.follow_sweep(CPU, parallel.Launch(1, 2, 1, True)) == 0
    assert ran == []  # rank 0's case: this rank only waited
    assert [kind for kind, _ in recorded.groups] == [
        "broadcast",
        "broadcast",
        "all_gather",
        "broadcast",
    ]
    assert all(group is control for _, group in recorded.groups)


def test_rank_0_sends_and_gathers_on_the_gloo_group(tmp_path: Path, monkeypatch) -> None:
    control = object()
    monkeypatch.setitem(parallel._control, "group", control)
    recorded = RecordedDist(monkeypatch, [])
    suite = parse_suite(
        "[sweep]\nmodels=['gpt2-tiny']\nworkloads=['infer']\nprecisions=['fp32']\n"
        "batch_sizes=[1]\nseq_lens=[16]\n"
    )
    case = suite.cases("cpu")[0]

    class Local:
        def run(self, case: Case, phase: Any = None) -> CaseResult:
            return CaseResult(case, "skipped", "not run here")

    group = executors.RankGroupExecutor(
        Local(), suite, parallel.Launch(0, 2, 0, True), "nccl", tmp_path
    )
    assert group.run(case).status == "skipped"
    group.close()
    assert all(g is control for _, g in recorded.groups) and len(recorded.groups) == 4


def test_the_control_group_of_a_real_one_rank_group_is_gloo() -> None:
    """init_process_group makes it, destroy_process_group ends it (one rank, in this process)."""
    parallel.init_process_group(CPU, parallel.Launch(), 60.0)
    try:
        assert dist.get_backend(parallel.control_group()) == "gloo"
        ok = CaseResult(Case("m", None, "infer", "fp32", 1, 16, "cpu"), "skipped", "rank 0 runs it")
        assert [r.status for r in parallel.gather_results(ok)] == ["skipped"]
    finally:
        parallel.destroy_process_group()
    assert parallel.control_group() is None

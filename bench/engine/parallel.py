"""Data-parallel training on torch.distributed: one component, like a precision mode.

A run launched by `torchrun --nproc-per-node N -m bench run ... --parallel ddp|fsdp` (or by
`mpbench run --nproc N`, which starts torchrun: bench.engine.rankworker) runs every training case on
all N ranks at once; inference cases run on rank 0 alone while the others wait. PyTorch does
all of it: torchrun starts and watches the processes, NCCL (GPUs) or gloo (CPU) carries the
gradients, DistributedDataParallel or FSDP2's `fully_shard` wraps the model. mpbench adds:

- `Launch`: which rank this process is (torchrun's RANK/WORLD_SIZE/LOCAL_RANK environment);
- `init_process_group` / `destroy_process_group` around the sweep, with the case timeout as the
  collectives' timeout, so a rank that hangs ends its peers' waits;
- `DataParallel`, the layout of a data-parallel case (beside `SingleDevice`): its wrap (DDP with a
  gradient communication hook per reduce dtype, or fully_shard on every layer with
  `MixedPrecisionPolicy(reduce_dtype=...)`), the ranks agreeing on what changes how many
  collectives they make, the time in collectives after the timed steps;
- `collective_time_s`: the time one step spends in collectives, from the profiler;
- `combine_ranks`: every rank's CaseResult -> the one line rank 0 writes (slowest rank per step,
  global throughput, per-rank memory).

Every rank measures itself through the same CaseRunner as a single-device case (the runner
applies the layout like any other wrap step); the ranks' results are gathered once per case
(`gather_results`, by bench.engine.executors.RankGroupExecutor), which is also the point where
all ranks agree the case is over.
"""

from __future__ import annotations

import inspect
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from bench.engine.device import Device
from bench.engine.models import layer_blocks
from bench.engine.modes import PRECISION_MODES
from bench.errors import MpbenchError
from bench.results.schema import Case, CaseResult, Memory, Throughput, Timing

REDUCE_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Steps run under the profiler, after the timed ones, to measure collective time.
COMM_PROFILE_STEPS = 3
# Worst first: the status a case gets when ranks disagree.
_SEVERITY = ("crashed", "timeout", "error", "oom", "skipped", "ok")


class RankLost(MpbenchError):
    """A collective failed (a rank died, hung or left): the process group cannot be trusted."""


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun launch (world size 1 when not launched by one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # by torchrun (or anything that sets its environment)

    @classmethod
    def from_env(cls) -> Launch:
        """Read torchrun's RANK, WORLD_SIZE and LOCAL_RANK (where torchrun's agent set them);
        a bad value is an MpbenchError."""
        # TORCHELASTIC_RUN_ID: set by torchrun's agent, so RANK/WORLD_SIZE left by another
        # launcher (an MPI or Kubeflow job) do not make a plain `mpbench run` a rank.
        if not all(k in os.environ for k in ("WORLD_SIZE", "RANK", "TORCHELASTIC_RUN_ID")):
            return cls()
        try:
            values = {k: int(os.environ.get(k, "0")) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        except ValueError:
            raise MpbenchError(
                "RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them)"
            ) from None
        return cls(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"], launched=True)

    @property
    def leader(self) -> bool:
        """Rank 0: the one that writes the run directory and prints."""
        return self.rank == 0


def rank_device(spec: str, launch: Launch) -> str:
    """The device of this rank: each rank of a GPU launch takes the GPU of its local rank."""
    if not launch.launched or launch.world_size == 1 or spec == "cpu":
        return spec
    if spec == "auto" and not torch.cuda.is_available():
        return "cpu"
    if spec.startswith("cuda:"):
        raise MpbenchError(
            f"--device {spec}: under torchrun each rank uses the GPU of its LOCAL_RANK; "
            "give --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES"
        )
    return f"cuda:{launch.local_rank}"


def backend_for(device: Device) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.is_cuda else "gloo"


# The ranks' own messages (which case is next, every rank's result) go over a gloo group: a
# rank waiting there while rank 0 runs a case alone (inference) sleeps on a socket, where an
# NCCL collective would keep a kernel spinning on its GPU for the whole case. Its timeout is the
# process group's (the case timeout), so a rank 0 that hangs still ends the wait.
_control: dict[str, Any] = {"group": None}


def control_group() -> Any:
    """The gloo group of the ranks' messages (None, the default group, before init)."""
    return _control["group"]


def init_process_group(device: Device, launch: Launch, timeout_s: float) -> str:
    """Join the launch's process group (a one-rank group on a local port when not launched by
    torchrun), and its gloo group for the ranks' messages (`control_group`); every collective
    then gives up after `timeout_s`. Returns the backend."""
    backend = backend_for(device)
    options: dict[str, Any] = {"backend": backend, "timeout": timedelta(seconds=timeout_s)}
    if device.is_cuda:
        options["device_id"] = device.torch_device
    if not launch.launched:
        with socket.socket() as probe:  # a free port for the one-rank group's store
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        options.update(init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    dist.init_process_group(**options)
    _control["group"] = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    return backend


def destroy_process_group() -> None:
    """Leave the process group (a no-op when none is up), all ranks together: a rank tearing its
    side down while a peer still uses the group can abort that peer (gloo: SIGABRT at exit)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier(group=control_group())
        _control["group"] = None
        dist.destroy_process_group()


def exit_rank(code: int) -> None:
    """End a torchrun rank now, its work done and its output flushed, without the interpreter's
    teardown: C++ destructors of the distributed and profiler libraries then race their own
    background threads and can abort a rank that finished cleanly ("terminate called without an
    active exception", SIGABRT), which torchrun reports as a failed launch."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def current_rank() -> int:
    """This process's rank, 0 outside a process group."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


# ---------------------------------------------------------------------------------------------
# Wrapping a model
# ---------------------------------------------------------------------------------------------


# The hooks carry no annotations: DDP checks them against dist.GradBucket and
# Future[Tensor] objects, and `from __future__ import annotations` would make them strings.


def _reduce_in_bf16(state, bucket):
    """PyTorch's bf16_compress_hook under another name: DDP refuses that name unless NCCL >= 2.10
    is present, though gloo all-reduces bf16 too (CPU tests). The arithmetic is the hook's."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    return default_hooks.bf16_compress_hook(state, bucket)


def _reduce_in_fp32(state, bucket):
    """All-reduce a bucket of bf16/fp16 gradients in fp32 (the compression hooks' inverse):
    upcast, average, cast back into the bucket."""
    group = state if state is not None else dist.group.WORLD
    buffer = bucket.buffer()
    upcast = buffer.to(torch.float32).div_(dist.get_world_size(group))
    future = dist.all_reduce(upcast, group=group, async_op=True).get_future()

    def cast_back(done: Any) -> torch.Tensor:
        buffer.copy_(done.value()[0])
        return buffer

    return future.then(cast_back)


def _ddp_hook(reduce_dtype: str, grad_dtype: torch.dtype) -> tuple[Callable[..., Any] | None, str]:
    """The DDP communication hook that reduces gradients of `grad_dtype` in `reduce_dtype`, and
    its name for the record."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    if REDUCE_TORCH_DTYPES[reduce_dtype] == grad_dtype:
        return None, "none (all-reduce in the gradients' dtype)"
    if reduce_dtype == "bf16":
        return _reduce_in_bf16, "bf16_compress_hook"
    if reduce_dtype == "fp16":
        return default_hooks.fp16_compress_hook, "fp16_compress_hook"
    return _reduce_in_fp32, "fp32 upcast (mpbench's hook: gradients are kept in low precision)"


class SingleDevice:
    """The layout of a case on one device: nothing to wrap, nothing for ranks to agree on."""

    data_parallel = False
    agree = None  # measure_steps' `agree`: no peers

    def unsupported_reason(self) -> str | None:
        """Always runnable."""
        return None

    def seed_parts(self) -> tuple[object, ...]:
        """Nothing to add to a case's input seed."""
        return ()

    def wrap(self, model: torch.nn.Module, device: Device) -> tuple[torch.nn.Module, dict]:
        """The model as it is."""
        return model, {}

    def after_timed(
        self, step: Callable[[], Any], device: Device, phase: Callable[..., None]
    ) -> dict[str, Any]:
        """Nothing to measure after the timed steps."""
        return {}

    def mean_losses(self, losses: list[float]) -> list[float]:
        """The losses as they are."""
        return losses


@dataclass(frozen=True)
class DataParallel:
    """The layout of a data-parallel training case: every rank of the process group runs it,
    wrapped in DDP (with the reduce dtype's communication hook) or FSDP2; ranks agree on what
    changes how many collectives they make, and after the timed steps a profiled window
    measures the time in collectives."""

    strategy: str  # "ddp" or "fsdp"
    reduce_dtype: str = "fp32"
    precision: str = "fp32"  # the case's precision mode: FSDP2's parameter dtype follows it
    data_parallel = True

    def unsupported_reason(self) -> str | None:
        """Why this torch cannot run the strategy (FSDP2's public API is torch >= 2.6), or
        None."""
        if self.strategy != "fsdp":
            return None
        try:
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # noqa: F401
        except ImportError:
            return f"fsdp needs FSDP2 (torch.distributed.fsdp.fully_shard, torch >= 2.6); torch {torch.__version__} lacks it"
        return None

    def seed_parts(self) -> tuple[object, ...]:
        """Each rank trains on its own part of the global batch: its rank goes into the seed."""
        return ("rank", current_rank())

    def wrap(self, model: torch.nn.Module, device: Device) -> tuple[torch.nn.Module, dict]:
        """The case's model made data-parallel: DDP (with the reduce dtype's communication
        hook) or FSDP2 (`fully_shard` on each block, then the whole model). Returns the module
        the steps call and what was done, for the record. FSDP2 shards the parameters in place:
        build the optimizer afterwards."""
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.torch_device.index or 0] if device.is_cuda else None
            # No buffer sync before every forward: the models have no running statistics, and
            # the weights start identical on every rank (the same seeded fp32 state). Newer
            # torch names the switch forward_sync_buffers.
            names = inspect.signature(DistributedDataParallel).parameters
            sync = (
                "forward_sync_buffers" if "forward_sync_buffers" in names else "broadcast_buffers"
            )
            ddp = DistributedDataParallel(model, device_ids=ids, **{sync: False})
            grad_dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
            hook, name = _ddp_hook(self.reduce_dtype, grad_dtype)
            if hook is not None:
                ddp.register_comm_hook(None, hook)
            return ddp, {"comm_hook": name}
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (dist.get_world_size(),))
        mode = PRECISION_MODES[self.precision]
        done = mode.prepare_for_sharding(model)  # fp8: the float8 all-gather
        policy = self.mp_policy()
        blocks = layer_blocks(model)
        for block in blocks:
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
        param_dtype = policy.param_dtype
        return model, {
            "fsdp_sharded_blocks": len(blocks),
            "mp_policy_param_dtype": str(param_dtype).removeprefix("torch.")
            if param_dtype is not None
            else "as stored",
            "mp_policy_reduce_dtype": self.reduce_dtype,
            **done,
        }

    def mp_policy(self) -> Any:
        """FSDP2's mixed-precision policy for the case: the precision mode's compute dtype for
        the all-gathered parameters of an amp or fp8 mode (its fp32 master weights stay sharded
        in fp32: FSDP2's usual recipe, as torchtitan runs it; the all-gather then moves half the
        bytes), the stored dtype for the others; gradients reduced in the case's reduce dtype."""
        from torch.distributed.fsdp import MixedPrecisionPolicy

        return MixedPrecisionPolicy(
            param_dtype=PRECISION_MODES[self.precision].sharded_param_dtype(),
            reduce_dtype=REDUCE_TORCH_DTYPES[self.reduce_dtype],
        )

    @staticmethod
    def agree(flag: bool) -> bool:
        """Every rank's "steady" (or "finite") made one: all ranks must run the same number of
        steps, since each step's collectives must match."""
        return all_ranks_agree(flag)

    def after_timed(
        self, step: Callable[[], Any], device: Device, phase: Callable[..., None]
    ) -> dict[str, Any]:
        """The time one step spends in collectives, from a profiled window after the timed
        steps (and their record)."""
        phase("profiling collectives", None, None)
        comm_s, comm_method = collective_time_s(step, device)
        return {"comm_s_per_step": comm_s, "comm_method": comm_method}

    def mean_losses(self, losses: list[float]) -> list[float]:
        """The global batch's loss per step: each rank's, averaged over the ranks."""
        return mean_over_ranks(losses)


Layout = SingleDevice | DataParallel


def layout_for(case: Case) -> Layout:
    """The layout a case runs in: one device, or data-parallel over the process group."""
    if case.parallel is None:
        return SingleDevice()
    return DataParallel(case.parallel, case.reduce_dtype or "fp32", case.precision)


def unsupported_reason(case: Case) -> str | None:
    """Why this torch cannot run the case's layout, or None."""
    return layout_for(case).unsupported_reason()


def wrap_model(
    model: torch.nn.Module, case: Case, device: Device
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The case's model wrapped as its layout says (module, what was done)."""
    return layout_for(case).wrap(model, device)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) gradient or weight gathered whole (a collective: every rank calls
    it); a plain tensor as it is."""
    gather = getattr(tensor, "full_tensor", None)
    return gather() if gather is not None else tensor


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor; a plain tensor as it is."""
    local = getattr(tensor, "to_local", None)
    return local() if local is not None else tensor


def _collective_device() -> str:
    """Where a small tensor must live to take part in a collective: NCCL only moves GPU
    memory."""
    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def all_ranks_agree(flag: bool) -> bool:
    """True only where every rank says True (a collective)."""
    tensor = torch.tensor([int(flag)], device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return bool(tensor.item())


def mean_over_ranks(values: list[float]) -> list[float]:
    """Each value averaged over the ranks (a collective): per-rank losses -> the global
    batch's loss. As given outside a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    device = _collective_device()
    # A rank that stopped early (a non-finite loss) recorded fewer: keep the steps all have.
    length = torch.tensor([len(values)], device=device)
    dist.all_reduce(length, op=dist.ReduceOp.MIN)
    tensor = torch.tensor(values[: int(length)] or [0.0], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return (tensor / dist.get_world_size()).cpu().tolist()[: int(length)]


# ---------------------------------------------------------------------------------------------
# Communication time
# ---------------------------------------------------------------------------------------------


def collective_time_s(
    step: Callable[[], Any], device: Device, steps: int = COMM_PROFILE_STEPS
) -> tuple[float | None, str]:
    """Seconds per step spent in collectives, over `steps` profiled steps, and how it was read:
    the GPU time of NCCL kernels on CUDA, the CPU time of gloo's collective ops otherwise. It can
    overlap compute (DDP reduces buckets during the backward pass): it is what the step would
    save with free communication only where nothing hides it."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.is_cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        device.synchronize()
    events = prof.events() or []
    if device.is_cuda:
        from torch.autograd import DeviceType

        # The kernels themselves (the CPU-side "nccl:*" ops only launch them).
        chosen = [
            e for e in events if e.device_type == DeviceType.CUDA and "nccl" in e.name.lower()
        ]
        method = "profiler: NCCL kernel time on the GPU"
    else:
        chosen = [e for e in events if e.name.startswith("gloo:")]
        method = "profiler: gloo collective ops (CPU time)"
    total_us = sum(e.time_range.elapsed_us() for e in chosen)
    return total_us / 1e6 / steps, method


# ---------------------------------------------------------------------------------------------
# One line per case
# ---------------------------------------------------------------------------------------------


def gather_results(result: CaseResult) -> list[CaseResult]:
    """Every rank's result for the case, in rank order (a collective: all ranks call it). A
    failure here means a peer is gone: RankLost."""
    gathered: list[Any] = [None] * dist.get_world_size()
    try:
        dist.all_gather_object(gathered, result.to_dict(), group=control_group())
    except Exception as exc:
        raise RankLost(
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    return [CaseResult.from_dict(d, f"rank {i}") for i, d in enumerate(gathered)]


def combine_ranks(
    case: Case, per_rank: list[CaseResult], backend: str, unstable_cv: float | None
) -> CaseResult:
    """The case's one result from every rank's: the worst status (naming its rank) if any rank
    did not finish ok; else per step the slowest rank's time (a step is as slow as its slowest
    rank), global samples/s (batch size x world size), the largest peak memory, and every rank's
    step times and peaks in `details.parallel`."""
    lead = per_rank[0]
    if any(r.status != "ok" for r in per_rank):
        worst = min(range(len(per_rank)), key=lambda i: _SEVERITY.index(per_rank[i].status))
        bad = per_rank[worst]
        reason = bad.reason if len(per_rank) == 1 else f"rank {worst}: {bad.reason}"
        return bad.replace(case=case, reason=reason, started_at=lead.started_at)
    world = len(per_rank)
    step_s = [max(steps) for steps in zip(*(r.timing.step_s for r in per_rank), strict=True)]
    busy = [b for r in per_rank if (b := r.timing.gpu_busy_fraction) is not None]
    timing = Timing.from_samples(
        step_s,
        max(r.timing.warmup or 0 for r in per_rank),
        lead.timing.method,
        compile_s=max((r.timing.compile_s for r in per_rank if r.timing.compile_s), default=None),
        warmup_steady=all(r.timing.warmup_steady for r in per_rank)
        if all(r.timing.warmup_steady is not None for r in per_rank)
        else None,
        unstable_cv=unstable_cv,
        # The least busy rank's: a step is as host-bound as its most host-bound rank.
        gpu_busy_fraction=min(busy, default=None),
    )
    peaks = [r.memory.peak_bytes if r.memory else None for r in per_rank]
    known = [p for p in peaks if p is not None]
    memory = Memory(
        max(known) if known else None,
        max(
            (r.memory.reserved_bytes for r in per_rank if r.memory and r.memory.reserved_bytes),
            default=None,
        ),
        lead.memory.method if lead.memory else "unavailable",
    )
    comm = [r.details.get("comm_s_per_step") for r in per_rank]
    comm_known = [c for c in comm if c is not None]
    parallel = {
        "strategy": case.parallel,
        "world_size": world,
        "backend": backend,
        "reduce_dtype": case.reduce_dtype,
        "per_rank_step_s": [list(r.timing.step_s) for r in per_rank],
        "per_rank_median_s": [r.timing.median_s for r in per_rank],
        "per_rank_peak_bytes": peaks,
        "peak_bytes_spread": (max(known) - min(known)) if known else None,
        "comm_s_per_step": max(comm_known) if comm_known else None,
        "comm_method": lead.details.get("comm_method"),
        "per_rank_comm_s_per_step": comm,
        "samples_per_step": (case.batch_size or 0) * world,
    }
    losses = None
    if all(r.losses for r in per_rank):  # the global batch's loss: the mean over the ranks
        losses = tuple(sum(ls) / world for ls in zip(*(r.losses for r in per_rank), strict=True))
    details = {k: v for k, v in lead.details.items() if k not in ("comm_s_per_step", "comm_method")}
    return lead.replace(
        case=case,
        timing=timing,
        throughput=Throughput.from_median(
            (case.batch_size or 0) * world, case.seq_len, timing.median_s
        ),
        memory=memory,
        losses=losses,
        details={**details, "parallel": parallel},
        wall_s=max(r.wall_s or 0.0 for r in per_rank),
    )

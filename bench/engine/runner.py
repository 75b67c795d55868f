"""The runner: turns a Case into a CaseResult. Read it top to bottom like nanoGPT's bench.py.

For each case: skip with a reason if the device cannot run the precision; otherwise, inside the
precision's global-state guard and a peak-memory window, copy the model's pristine fp32 weights,
prepare them for the precision, build inputs once on the device, run warm-up steps, then time
each of N steps and keep every per-step time. `CaseRunner.run` is the one timed loop: `mpbench
run`, `--find-max-batch` and the pytest plugin all measure through it.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch

from bench.engine import parallel, workloads
from bench.engine.device import Device
from bench.engine.flops import count_flops
from bench.engine.models import ModelSpec, count_parameters
from bench.engine.modes import PRECISION_MODES
from bench.engine.precision import PrecisionMode
from bench.engine.progress import PhaseCallback, no_phase
from bench.engine.suite import Suite
from bench.engine.suite import Timing as TimingConfig
from bench.engine.telemetry import open_telemetry
from bench.results.peaks import COMPUTE_DTYPE, peak_tflops
from bench.results.schema import (
    Case,
    CaseResult,
    Flops,
    Memory,
    TelemetryReading,
    Throughput,
    Timing,
)

# numerics(case, phase) -> the case's numerics dict (bench.engine.numerics), or None
NumericsHook = Callable[[Case, PhaseCallback], "dict[str, Any] | None"]


@dataclass
class PreparedCase:
    """A case ready to time: `step()` runs one step; everything else is already on the device."""

    case: Case
    mode: PrecisionMode
    model: torch.nn.Module
    step: Callable[[], Any]
    scaler: torch.amp.GradScaler | None
    parameters: int
    details: dict[str, Any]  # what the mode's prepare did (fp8: which layers run in fp8)
    optimizer: torch.optim.Optimizer | None = None  # training only
    count_step: Callable[[], Any] | None = None  # the step on the eager module, for FLOPs
    batch: dict[str, torch.Tensor] | None = None  # the inputs every step feeds the model


@dataclass
class MeasuredSteps:
    """What measure_steps saw: per-step seconds of the timed steps, what each returned, and
    the warm-up it took to get there."""

    step_s: list[float]
    outputs: list[Any]
    warmup_steps: int
    warmup_steady: bool | None  # None: the warm-up was not judged (fixed count)
    telemetry: TelemetryReading | None = None  # what the GPU did during the timed steps


def steady(times_s: list[float], window: int, tolerance: float) -> bool:
    """True when the last `window` step times all lie within `tolerance` of their median."""
    if len(times_s) < window:
        return False
    last = times_s[-window:]
    middle = statistics.median(last)
    return all(abs(t - middle) <= tolerance * middle for t in last)


def skip_reason(suite: Suite, device: Device, case: Case) -> str | None:
    """Why `case` cannot run on `device` (precision, workload or data-parallel strategy
    unsupported), or None."""
    mode = PRECISION_MODES[case.precision]
    return (
        mode.unsupported_reason(device, case.workload)
        or workloads.unsupported_reason(case.workload, suite.model(case.model), case.compiled)
        or parallel.unsupported_reason(case)
    )


def measure_steps(
    step: Callable[[], Any],
    warmup: int,
    iterations: int,
    device: Device,
    after_warmup: Callable[[], None] | None = None,
    phase: PhaseCallback = no_phase,
    timing: TimingConfig | None = None,
    timed_window: Callable[[], AbstractContextManager[TelemetryReading]] | None = None,
    agree: Callable[[bool], bool] | None = None,
) -> MeasuredSteps:
    """Warm up, then time `iterations` steps one by one.

    Without `timing`, exactly `warmup` untimed steps. With it (the runner's case), at least
    `warmup` steps, then more until the step time is steady (TimingConfig's rule), at most
    `timing.warmup_cap`. Each warm-up step is timed with a synchronize after it (a sync costs
    nothing that is measured: the warm-up is not). The timed steps then run back to back; what
    each returns stays on the device (losses as tensors: reading them here would add a host sync
    per step, METHODS rule 2). Progress is reported between steps, outside the timer.
    `timed_window` (the GPU telemetry's) encloses the timed steps and the synchronize that ends
    them, so the energy it reads is theirs. `agree` turns this process's "steady" into one all
    ranks of a data-parallel case share (each step's collectives must match on every rank, so
    all ranks must run the same number of warm-up steps).
    """
    cap = warmup if timing is None else timing.warmup_cap
    warmup_s: list[float] = []
    settled: bool | None = None
    for i in range(cap):
        phase("warm-up", i + 1, None if timing is not None and i >= warmup else warmup)
        t0 = time.perf_counter()
        step()
        if timing is not None:
            device.synchronize()
            warmup_s.append(time.perf_counter() - t0)
            settled_here = steady(warmup_s, timing.steady_window, timing.steady_tolerance)
            if agree is not None:
                settled_here = agree(settled_here)
            if i + 1 >= warmup and settled_here:
                settled = True
                break
    else:
        settled = False if timing is not None and cap > 0 else None
    device.synchronize()
    if after_warmup is not None:
        after_warmup()
    timer = device.step_timer(iterations)
    outputs: list[Any] = []
    window = timed_window() if timed_window is not None else contextlib.nullcontext()
    with window as reading:
        for i in range(iterations):
            timer.start(i)
            out = step()
            timer.stop(i)
            outputs.append(out)
            phase("timed", i + 1, iterations)
        step_s = timer.elapsed_s()  # on CUDA: the one synchronize, inside the window
    steps = len(warmup_s) if timing is not None else warmup
    return MeasuredSteps(step_s, outputs, steps, settled, reading)


# Out of memory in the forms that are not torch.OutOfMemoryError: the CPU allocator, cuBLAS and
# cuDNN failing to allocate their workspaces, and the CUDA runtime's own error string.
_OOM_MESSAGES = (
    "can't allocate memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUDA error: out of memory",
)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA OutOfMemoryError, Python MemoryError, or an allocation failure by message."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _OOM_MESSAGES)


def first_line(message: str, limit: int = 500) -> str:
    """The first line of an error message, at most `limit` characters."""
    line = message.splitlines()[0] if message else "unknown error"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def now_utc() -> str:
    """The current time, ISO 8601 in UTC, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class CaseRunner:
    """Runs cases of one suite on one device; keeps each model's pristine fp32 weights."""

    def __init__(self, suite: Suite, device: Device, numerics: NumericsHook | None = None) -> None:
        self.suite = suite
        self.device = device
        # Divergence vs fp32 for a case (bench.engine.numerics); runs after timing, outside its
        # memory window.
        self.numerics = numerics
        self._pristine: tuple[str, torch.nn.Module] | None = None
        # This process runs the cases: make the device current here (CUDA events record on the
        # current device's stream), never in a parent that only hands cases to workers.
        device.activate()
        # NVML, opened once per process; on a CPU (or without NVML) every reading says why not.
        self.telemetry = open_telemetry(device)

    def pristine_model(self, spec: ModelSpec) -> torch.nn.Module:
        """The model's fp32 initial state on the CPU, built once from the seed and reused by every
        case of that model, so all precisions start from identical weights (METHODS rule 9)."""
        if self._pristine is None or self._pristine[0] != spec.name:
            self._pristine = None  # drop the previous model before building the next
            self.device.free_memory()
            self._pristine = (spec.name, spec.build(self.suite.info.seed))
        return self._pristine[1]

    def input_seed(self, case: Case, batch_index: int = 0) -> int:
        """Seed of a case's inputs: same for every precision, different per shape and batch,
        and per rank in a data-parallel case (each rank trains on its own part of the batch)."""
        parts: tuple[object, ...] = (case.model, case.batch_size, case.seq_len, batch_index)
        if case.parallel is not None:
            parts += ("rank", parallel.current_rank())
        return workloads.stable_seed(self.suite.info.seed, *parts)

    def skip_reason(self, case: Case) -> str | None:
        """Why a case cannot run here (module-level skip_reason), or None."""
        return skip_reason(self.suite, self.device, case)

    @contextmanager
    def prepare(self, case: Case) -> Iterator[PreparedCase]:
        """Build the case's model (through its precision mode), optimizer and inputs."""
        spec = self.suite.model(case.model)
        mode = PRECISION_MODES[case.precision]
        torch_device = self.device.torch_device
        prepared = mode.prepare(self.pristine_model(spec), self.device, case.workload)
        model = prepared.model
        details = dict(prepared.details)
        # A data-parallel case's steps call the DDP / FSDP2 module (bench.engine.parallel); the
        # optimizer, made below, holds its (for FSDP2 sharded) parameters.
        run_model = model
        if case.parallel is not None:
            run_model, wrapped = parallel.wrap_model(model, case, self.device)
            details.update(wrapped)
        # Under --compile the steps call the compiled module; the optimizer holds the same
        # parameters. A fresh compiler state per case: dynamo's caches would otherwise fill up
        # across cases and fall back to eager without a word.
        eager_model = run_model
        if case.compiled:
            torch.compiler.reset()
            run_model = torch.compile(run_model)
        # Dropout draws from the global RNG: seed it so every precision sees the same masks.
        torch.manual_seed(self.suite.info.seed)
        batch = workloads.make_batch(
            spec, case.workload, case.batch_size, case.seq_len, torch_device, self.input_seed(case)
        )
        scaler = None
        optimizer = None

        def autocast() -> Any:
            return mode.autocast(self.device, case.workload)

        if case.workload == "train":
            model.train()
            optimizer = mode.make_optimizer(model, self.device)
            details["optimizer"] = workloads.describe_optimizer(optimizer)
            scaler = mode.make_grad_scaler(self.device)
            after_step = mode.after_optimizer_step(model)

            def make_step(module: Any) -> Callable[[], Any]:
                return workloads.train_step_fn(
                    module, batch, optimizer, autocast, scaler, after_step
                )

        elif case.workload == "infer":
            model.eval()

            def make_step(module: Any) -> Callable[[], Any]:
                return workloads.infer_step_fn(
                    module, batch, autocast, spec.family, mode.inference_context
                )

        else:
            model.eval()

            def make_step(module: Any) -> Callable[[], Any]:
                return workloads.generate_step_fn(
                    model,  # generate is never compiled (workloads.unsupported_reason)
                    batch,
                    autocast,
                    self.suite.sweep.generate_new_tokens,
                    mode.inference_context,
                )

        step = make_step(run_model)
        yield PreparedCase(
            case,
            mode,
            model,
            step,
            scaler,
            count_parameters(model),
            details,
            optimizer,
            # FLOPs are counted on the eager module: FlopCounterMode sees aten ops, which a
            # compiled graph does not dispatch one by one.
            count_step=make_step(eager_model) if case.compiled else step,
            batch=batch,
        )

    def tokens_per_sample(self, case: Case) -> int:
        """Tokens a step produces per sample: new tokens for generate, the sequence otherwise."""
        return self.suite.sweep.generate_new_tokens if case.workload == "generate" else case.seq_len

    def run(self, case: Case, phase: PhaseCallback = no_phase) -> CaseResult:
        """Measure one case; never raises for a failure inside the case (it becomes a status)."""
        started_at = now_utc()
        t0 = time.perf_counter()
        reason = self.skip_reason(case)
        if reason is not None:
            return CaseResult(case, "skipped", reason, started_at=started_at, wall_s=0.0)
        mode = PRECISION_MODES[case.precision]
        timing = self.suite.timing
        prepared = outputs = measured = None
        try:
            phase("building", None, None)
            # Built (once per model) outside the window: it is not this case's memory.
            self.pristine_model(self.suite.model(case.model))
            with mode.global_state(self.device), self.device.memory_window() as memory:
                with self.prepare(case) as prepared:
                    flops = self.count_flops(case, prepared, phase)
                    compile_s = None
                    if case.compiled:  # the first call compiles: timed apart, not a step,
                        phase("compiling", None, None)  # and its memory is not the case's
                        t_compile = time.perf_counter()
                        prepared.step()
                        self.device.synchronize()
                        compile_s = time.perf_counter() - t_compile
                        memory.restart_peak()
                    scales: list[float] = []
                    after_warmup = None
                    if prepared.scaler is not None:
                        after_warmup = lambda: scales.append(prepared.scaler.get_scale())  # noqa: E731
                    measured = measure_steps(
                        prepared.step,
                        timing.warmup,
                        timing.iterations,
                        self.device,
                        after_warmup,
                        phase,
                        timing,
                        self.telemetry.window,
                        parallel.all_ranks_agree if case.parallel is not None else None,
                    )
                    step_s, outputs = measured.step_s, measured.outputs
                    details = {
                        **mode.describe(),
                        **prepared.details,
                        "parameters": prepared.parameters,
                    }
                    caveat = mode.caveat(self.device, case.compiled)
                    if caveat:
                        details["caveat"] = caveat
                    if prepared.scaler is not None:
                        details.update(_scaler_details(scales[0], prepared.scaler.get_scale()))
                    if case.parallel is not None:  # after the timed steps and their record
                        phase("profiling collectives", None, None)
                        comm_s, comm_method = parallel.collective_time_s(prepared.step, self.device)
                        details.update(comm_s_per_step=comm_s, comm_method=comm_method)
                    losses = _losses(outputs) if case.workload == "train" else None
                    # The case's model, optimizer state, inputs and outputs die here, before the
                    # window closes and long before the numerics pass: nothing of this case may
                    # sit in the next one's memory or in the pass's.
                    prepared = outputs = None
        except Exception as exc:  # one case's failure must not end the sweep
            prepared = outputs = None
            status = "oom" if is_out_of_memory(exc) else "error"
            message = first_line(f"{type(exc).__name__}: {exc}".strip())
            failed = CaseResult(case, status, message, started_at=started_at)
        else:
            failed = None
        # Freed here, after the except block has dropped the traceback that pins the tensors.
        # A sticky CUDA error (a device-side assert) surfaces here at the latest: it becomes the
        # case's result, with the CUDA message, instead of a traceback that ends the sweep.
        try:
            if case.compiled:
                torch.compiler.reset()  # the compiled graphs die with the case
            self.device.free_memory()
        except Exception as exc:
            message = first_line(f"{type(exc).__name__}: {exc}".strip())
            if failed is None or failed.status == "oom":
                failed = CaseResult(case, "error", f"after the case: {message}")
            failed = failed.replace(started_at=started_at)
        if failed is not None:
            return failed.replace(wall_s=time.perf_counter() - t0)
        timed = Timing.from_samples(
            step_s,
            measured.warmup_steps,
            self.device.timing_method,
            compile_s=compile_s,
            warmup_steady=measured.warmup_steady,
            unstable_cv=timing.unstable_cv,
        )
        telemetry = measured.telemetry
        if telemetry is not None and telemetry.energy_j is not None:
            telemetry.energy_per_step_j = telemetry.energy_j / len(step_s)
            telemetry.energy_per_sample_j = telemetry.energy_per_step_j / case.batch_size
        numerics = self.numerics(case, phase) if self.numerics is not None else None
        return CaseResult(
            case,
            "ok",
            timing=timed,
            throughput=Throughput.from_median(
                case.batch_size, self.tokens_per_sample(case), timed.median_s
            ),
            memory=Memory(memory.peak_bytes, memory.reserved_bytes, memory.method),
            losses=tuple(losses) if losses is not None else None,
            numerics=numerics,
            details=details,
            started_at=started_at,
            wall_s=time.perf_counter() - t0,
            telemetry=telemetry,
            flops=flops,
        )

    def count_flops(
        self, case: Case, prepared: PreparedCase, phase: PhaseCallback = no_phase
    ) -> Flops | None:
        """FLOPs of one step (one untimed step under FlopCounterMode, on the eager module) and
        the dense peak of the mode's compute dtype; None where [flops] is off. A count that
        fails leaves the case measured, with the reason in its details."""
        config = self.suite.flops
        if not config.enabled or prepared.count_step is None:
            return None
        phase("counting FLOPs", None, None)
        try:
            per_step = count_flops(prepared.count_step)
        except Exception as exc:
            prepared.details["flops_error"] = first_line(f"{type(exc).__name__}: {exc}")
            return None
        dtype = COMPUTE_DTYPE[case.precision]
        peak = peak_tflops(self.device.gpu_name(), dtype, config.override(dtype))
        return Flops(
            per_step=per_step,
            counter="torch FlopCounterMode",
            dtype=dtype,
            peak_tflops=peak.tflops,
            peak_source=peak.source,
            peak_reason=peak.reason,
        )


def _scaler_details(scale_after_warmup: float, final_scale: float) -> dict[str, Any]:
    """GradScaler state: the scale halves on each skipped step and cannot grow within the default
    2000-step interval, so log2 of the drop counts the timed steps that skipped the optimizer
    (those are faster than real steps; METHODS rules 4 and 14)."""
    skipped = round(math.log2(scale_after_warmup / final_scale)) if final_scale > 0 else None
    return {
        "grad_scaler_scale_after_warmup": float(scale_after_warmup),
        "grad_scaler_final_scale": float(final_scale),
        "grad_scaler_timed_skipped_steps": skipped,
    }


def _losses(outputs: list[Any]) -> list[float]:
    """Per-step losses read once, after the timed loop (one host sync)."""
    return torch.stack([o.float() for o in outputs]).cpu().tolist()

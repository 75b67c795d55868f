"""The runner: turns a Case into a CaseResult. Read `CaseRunner.run` top to bottom like nanoGPT's
bench.py.

For each case: skip with a reason if the device cannot run it (its precision mode, workload,
execution or data-parallel layout says why). Otherwise, inside the precision's global-state
guard and a peak-memory window, make the case's model through three steps applied in order:
the precision mode's `prepare` (the pristine fp32 weights as the mode runs them), the layout's
wrap (DDP or FSDP2 for a data-parallel case, nothing on one device), the execution's wrap
(torch.compile, or nothing), and the execution's wrap of the step (a CUDA graph replay, or the
step itself); build the inputs once on the device; count one step's FLOPs (eagerly); run the
execution's first call (compiling or capturing, timed apart); warm up until steady; time each
of N steps and keep every per-step time (garbage collection off; on a GPU with NVML, untimed
steps stretch the energy window to 5 s); profile a few more steps for how busy the GPU was
(the host-bound check); let the layout measure what it needs after them (time in
collectives). The numerics pass runs after the window closes. `CaseRunner.run` is the one timed
loop: `mpbench run`, `--find-max-batch`, selfcheck and the pytest plugin all measure through
it.
"""

from __future__ import annotations

import contextlib
import gc
import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch

from bench.engine import workloads
from bench.engine.budget import TimingPlan, plan_timing, slow_case_count
from bench.engine.device import Device, MemoryReading
from bench.engine.execution import Eager, Execution, execution_for
from bench.engine.flops import count_flops_by_dtype
from bench.engine.gpubusy import gpu_busy_fraction
from bench.engine.models import ModelSpec, count_parameters
from bench.engine.modes import PRECISION_MODES
from bench.engine.modes.base import PrecisionMode
from bench.engine.parallel import Layout, SingleDevice, layout_for
from bench.engine.progress import PhaseCallback, no_phase
from bench.engine.suite import Suite
from bench.engine.suite import Timing as TimingConfig
from bench.engine.telemetry import open_telemetry
from bench.results.peaks import peak_tflops, split_peak
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
    layout: Layout = field(default_factory=SingleDevice)  # one device, or data-parallel
    execution: Execution = field(default_factory=Eager)  # eager, compiled or graphs


@dataclass
class MeasuredSteps:
    """What measure_steps saw: per-step seconds of the timed steps, what each returned, and
    the warm-up it took to get there."""

    step_s: list[float]
    outputs: list[Any]
    warmup_steps: int
    warmup_steady: bool | None  # None: the warm-up was not judged (fixed count)
    telemetry: TelemetryReading | None = None  # what the GPU did during the timed steps
    scale_after_warmup: float | None = None  # a GradScaler's, to count skipped timed steps
    scale_after_timed: float | None = None  # ... and after the timed steps
    energy_steps: int | None = None  # steps the telemetry window saw: timed + untimed


def steady(times_s: list[float], window: int, tolerance: float) -> bool:
    """True when the last `window` step times all lie within `tolerance` of their median."""
    if len(times_s) < window:
        return False
    last = times_s[-window:]
    middle = statistics.median(last)
    return all(abs(t - middle) <= tolerance * middle for t in last)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Garbage collection off for the enclosed steps: collected once before, the previous state
    restored after, also when a step raises. A collection that falls into a timed step adds its
    pause to that step alone (Python's timeit turns the collector off while it times, for this
    reason); tensors are freed by reference counting all the same."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def stretch_window(
    step: Callable[[], Any],
    device: Device,
    start_s: float,
    window_s: float,
    per_step_s: float,
    agree: Callable[[bool], bool] | None = None,
) -> int:
    """Untimed steps until `window_s` seconds have passed since `start_s` (perf_counter), each
    round as many as the typical step time says are missing, then a synchronize; returns how
    many ran. With `agree` (data-parallel) every rank steps once a round until all ranks are
    past the window, so all run the same number of steps (each step's collectives match)."""
    extra = 0
    while True:
        device.synchronize()
        short_s = window_s - (time.perf_counter() - start_s)
        if agree is not None:
            if agree(short_s <= 0):
                return extra
            count = 1
        elif short_s <= 0:
            return extra
        else:
            count = math.ceil(short_s / per_step_s) if per_step_s > 0 else 1
        for _ in range(count):
            step()
        extra += count


def skip_reason(suite: Suite, device: Device, case: Case) -> str | None:
    """Why `case` cannot run on `device`: its precision mode, workload, execution or
    data-parallel layout says why; None when it can run."""
    return (
        PRECISION_MODES[case.precision].unsupported_reason(device, case.workload)
        or workloads.unsupported_reason(case.workload, suite.model(case.model))
        or execution_for(case, suite.sweep.compile_scope).unsupported_reason(case, device)
        or layout_for(case).unsupported_reason()
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
    energy_window_s: float = 0.0,
    after_timed: Callable[[], None] | None = None,
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

    The garbage collector is off from the first timed step to the window's end (collected
    before, restored after, also when a step raises). Where the window measures energy
    (`energy_window_s` > 0: NVML), untimed steps follow the timed ones, inside the window, until
    it has lasted `energy_window_s`: NVML's energy counter needs seconds to read true, and
    stretching the window costs fewer steps than stretching the timing would (METHODS rule 31).
    `after_timed` runs between the timed steps and those (a GradScaler's scale is read there).
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
    extra = 0
    with collector_paused(), window as reading:
        start_s = time.perf_counter()
        for i in range(iterations):
            timer.start(i)
            out = step()
            timer.stop(i)
            outputs.append(out)
            phase("timed", i + 1, iterations)
        step_s = timer.elapsed_s()  # on CUDA: the one synchronize, inside the window
        if after_timed is not None:
            after_timed()
        stretch = energy_window_s > 0 and bool(step_s)
        if agree is not None:  # all ranks stretch, or none: each step's collectives must match
            stretch = agree(stretch)
        if stretch:
            phase("energy window", None, None)
            per_step_s = statistics.median(step_s)
            extra = stretch_window(step, device, start_s, energy_window_s, per_step_s, agree)
    steps = len(warmup_s) if timing is not None else warmup
    measured = MeasuredSteps(step_s, outputs, steps, settled, reading)
    measured.energy_steps = iterations + extra
    if reading is not None and reading.energy_j is not None:
        reading.energy_steps = measured.energy_steps
    return measured


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
        self._slow_cases: int | None = None  # cases on a reference kernel here (budget.py)
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
            gc.unfreeze()  # ... and let the collector see it again
            self.device.free_memory()
            self._pristine = (spec.name, spec.build(self.suite.info.seed))
            # What lives now (torch, transformers, this model) lives until the next model: out
            # of every later collection's way. Each case's memory window collects garbage twice,
            # and a full collection over all of it costs ~0.2 s (a third of a tiny case).
            gc.collect()
            gc.freeze()
        return self._pristine[1]

    def input_seed(self, case: Case, batch_index: int = 0) -> int:
        """Seed of a case's inputs: same for every precision, different per shape and batch,
        and per rank in a data-parallel case (each rank trains on its own part of the batch)."""
        parts = (case.model, case.batch_size, case.seq_len, batch_index)
        return workloads.stable_seed(self.suite.info.seed, *parts, *layout_for(case).seed_parts())

    def skip_reason(self, case: Case) -> str | None:
        """Why a case cannot run here (module-level skip_reason), or None."""
        return skip_reason(self.suite, self.device, case)

    def tokens_per_sample(self, case: Case) -> int:
        """Tokens a step produces per sample: new tokens for generate, the sequence otherwise."""
        return self.suite.sweep.generate_new_tokens if case.workload == "generate" else case.seq_len

    # -- one case, top to bottom -----------------------------------------------------------------

    def run(self, case: Case, phase: PhaseCallback = no_phase) -> CaseResult:
        """Measure one case; never raises for a failure inside the case (it becomes a status)."""
        started_at, t0 = now_utc(), time.perf_counter()
        reason = self.skip_reason(case)
        if reason is not None:
            return CaseResult(case, "skipped", reason, started_at=started_at, wall_s=0.0)
        plan = self.timing_plan(case)
        if plan.skip_reason is not None:  # a reference kernel here: numerics, no timing
            numerics = self.numerics(case, phase) if self.numerics is not None else None
            details = {"timing_budget": plan.budget}
            wall_s = time.perf_counter() - t0
            return CaseResult(case, "skipped", plan.skip_reason, numerics=numerics, details=details, started_at=started_at, wall_s=wall_s)  # fmt: skip
        measured = failed = None
        try:
            measured = self.measure(case, phase, plan)
        except Exception as exc:  # one case's failure must not end the sweep
            failed = failure(case, exc)
        # Freed here, after the except block has dropped the traceback that pins the tensors.
        failed = self.clean_up(case, failed)
        if failed is not None:
            return failed.replace(started_at=started_at, wall_s=time.perf_counter() - t0)
        numerics = self.numerics(case, phase) if self.numerics is not None else None
        return measured.result(
            case, self.tokens_per_sample(case), numerics, started_at, time.perf_counter() - t0
        )

    def timing_plan(self, case: Case) -> TimingPlan:
        """What to time of the case: the suite's timing, unless its precision runs on a
        reference kernel here (bench.engine.budget)."""
        if self._slow_cases is None:
            self._slow_cases = slow_case_count(self.suite, self.device)
        return plan_timing(self.suite, self.device, case, self._slow_cases)

    def measure(
        self, case: Case, phase: PhaseCallback = no_phase, plan: TimingPlan | None = None
    ) -> Measurement:
        """Everything timed about a case, in its memory window (raises on a failure)."""
        plan = plan or TimingPlan(self.suite.timing)
        mode = PRECISION_MODES[case.precision]
        phase("building", None, None)
        # Built (once per model) outside the window: it is not this case's memory.
        self.pristine_model(self.suite.model(case.model))
        with mode.global_state(self.device), self.device.memory_window() as memory:
            with self.prepare(case) as prepared:
                flops = self.count_flops(case, prepared, phase)
                compile_s = prepared.execution.first_call(prepared.step, self.device, phase, memory)
                steps = self.time_steps(prepared, phase, plan.timing)
                gpu_busy = self.gpu_busy(prepared, phase)
                details = self.details(prepared, steps, phase, plan)
                losses = _losses(steps.outputs) if case.workload == "train" else None
                # The case's model, optimizer state, inputs and outputs die here, before the
                # window closes and long before the numerics pass: nothing of this case may sit
                # in the next one's memory or in the pass's.
                steps.outputs = []
                prepared = None
        timing = (self.device.timing_method, self.suite.timing.unstable_cv)
        return Measurement(
            steps, memory, details, flops, compile_s, losses, *timing, gpu_busy_fraction=gpu_busy
        )

    @contextmanager
    def prepare(self, case: Case) -> Iterator[PreparedCase]:
        """The case's model, optimizer and inputs. The model goes through three steps in order:
        the precision mode's prepare, the data-parallel layout's wrap, the execution's wrap."""
        spec = self.suite.model(case.model)
        mode, layout, execution = (
            PRECISION_MODES[case.precision],
            layout_for(case),
            execution_for(case, self.suite.sweep.compile_scope),
        )
        prepared = mode.prepare(self.pristine_model(spec), self.device, case.workload)
        module, wrapped = layout.wrap(prepared.model, self.device)
        run_module = execution.wrap(module)
        # Dropout draws from the global RNG: seed it so every precision sees the same masks.
        torch.manual_seed(self.suite.info.seed)
        batch = workloads.make_batch(
            spec, case.workload, case.batch_size, case.seq_len, self.device.torch_device,
            self.input_seed(case),
        )  # fmt: skip
        details = {**prepared.details, **wrapped, **execution.details()}
        make_step, optimizer, scaler = self._step_factory(
            case, spec, mode, prepared.model, batch, execution.capturable_optimizer
        )
        if optimizer is not None:
            details["optimizer"] = workloads.describe_optimizer(optimizer)
        # One step definition (the workload's) for every execution; the execution wraps it.
        eager_step = make_step(run_module)
        step = execution.wrap_step(eager_step, batch)
        yield PreparedCase(
            case,
            mode,
            prepared.model,
            step,
            scaler,
            count_parameters(prepared.model),
            details,
            optimizer,
            # FLOPs are counted eagerly: FlopCounterMode sees aten ops, which a compiled or
            # captured graph does not dispatch one by one.
            count_step=execution.counting_step(eager_step),
            batch=batch,
            layout=layout,
            execution=execution,
        )

    def _step_factory(
        self,
        case: Case,
        spec: ModelSpec,
        mode: PrecisionMode,
        model: torch.nn.Module,
        batch: dict[str, torch.Tensor],
        capturable: bool = False,
    ) -> tuple[Callable[[Any], Callable[[], Any]], Any, Any]:
        """(make_step(module) -> the workload's step, optimizer, scaler); training makes the
        mode's optimizer (on `model`: FSDP2 has sharded its parameters by now; `capturable`
        for a step captured in a CUDA graph) and GradScaler."""

        def autocast() -> Any:
            return mode.autocast(self.device, case.workload)

        if case.workload == "train":
            model.train()
            optimizer = mode.make_optimizer(model, self.device, capturable=capturable)
            scaler = mode.make_grad_scaler(self.device)
            after_step = mode.after_optimizer_step(model)
            return (
                lambda m: workloads.train_step_fn(
                    m, batch, optimizer, autocast, scaler, after_step, spec.family.forward_kwargs()
                ),
                optimizer,
                scaler,
            )
        model.eval()
        if case.workload == "infer":
            return (
                lambda m: workloads.infer_step_fn(
                    m, batch, autocast, spec.family.forward_kwargs(), mode.inference_context
                ),
                None,
                None,
            )
        new_tokens = self.suite.sweep.generate_new_tokens
        return (
            lambda m: workloads.generate_step_fn(
                m, batch, autocast, new_tokens, mode.inference_context
            ),
            None,
            None,
        )

    def time_steps(
        self,
        prepared: PreparedCase,
        phase: PhaseCallback = no_phase,
        timing: TimingConfig | None = None,
    ) -> MeasuredSteps:
        """Warm up until steady, then time each step (and read the GPU's telemetry over them);
        a GradScaler's scale after the warm-up is kept, to count the timed steps it skipped."""
        timing = timing or self.suite.timing
        scales: list[float] = []
        read_scale = None
        if prepared.scaler is not None:
            read_scale = lambda: scales.append(prepared.scaler.get_scale())  # noqa: E731
        # Energy needs a window of seconds; only where it is measured (NVML) is it stretched.
        energy_window_s = self.telemetry.min_energy_window_s if self.telemetry.available else 0.0
        measured = measure_steps(
            prepared.step,
            timing.warmup,
            timing.iterations,
            self.device,
            read_scale,
            phase,
            timing,
            self.telemetry.window,
            prepared.layout.agree,
            energy_window_s,
            read_scale,
        )
        measured.scale_after_warmup = scales[0] if scales else None
        measured.scale_after_timed = scales[1] if len(scales) > 1 else None
        return measured

    def gpu_busy(self, prepared: PreparedCase, phase: PhaseCallback = no_phase) -> float | None:
        """The share of a short profiled window after the timed steps in which the GPU ran
        kernels (bench.engine.gpubusy); None on a CPU. A profile that fails leaves the case
        measured, with the reason in its details."""
        if not self.device.is_cuda:
            return None
        phase("profiling GPU activity", None, None)
        try:
            return gpu_busy_fraction(prepared.step, self.device)
        except Exception as exc:
            prepared.details["gpu_busy_error"] = _message(exc)
            return None

    def details(
        self,
        prepared: PreparedCase,
        steps: MeasuredSteps,
        phase: PhaseCallback = no_phase,
        plan: TimingPlan | None = None,
    ) -> dict[str, Any]:
        """What the case records beside its figures: the mode's settings, what preparing did,
        the caveat (and what the slow-kernel budget cut), the GradScaler's state, and what the
        layout measures after the timed steps."""
        mode = prepared.mode
        details = {**mode.describe(), **prepared.details, "parameters": prepared.parameters}
        caveats = [mode.caveat(self.device, prepared.execution.compiles)]
        if plan is not None and plan.budget is not None:
            details["timing_budget"] = plan.budget
            caveats.append(plan.caveat)
        caveat = "; ".join(c for c in caveats if c)
        if caveat:
            details["caveat"] = caveat
        if prepared.scaler is not None:
            # After the timed steps: the energy window's and the profilers' steps come later.
            final = steps.scale_after_timed
            final = prepared.scaler.get_scale() if final is None else final
            details.update(_scaler_details(steps.scale_after_warmup, final))
        details.update(prepared.layout.after_timed(prepared.step, self.device, phase))
        return details

    def clean_up(self, case: Case, failed: CaseResult | None) -> CaseResult | None:
        """Reset the execution's state and free the case's memory. A sticky CUDA error (a
        device-side assert) surfaces here at the latest: it becomes the case's result, with the
        CUDA message, instead of a traceback that ends the sweep."""
        try:
            execution_for(case, self.suite.sweep.compile_scope).reset()
            self.device.free_memory()
        except Exception as exc:
            if failed is None or failed.status == "oom":
                failed = CaseResult(case, "error", f"after the case: {_message(exc)}")
        return failed

    def count_flops(
        self, case: Case, prepared: PreparedCase, phase: PhaseCallback = no_phase
    ) -> Flops | None:
        """FLOPs of one step (one untimed step under FlopCounterMode, on the eager module),
        split by the dtype each matmul ran in, and the FLOP-weighted peak of that mix
        (bench.results.peaks; the compute dtype's peak where nothing was split); None where
        [flops] is off. A count that fails leaves the case measured, with the reason in its
        details."""
        config = self.suite.flops
        if not config.enabled or prepared.count_step is None:
            return None
        phase("counting FLOPs", None, None)
        mode = prepared.mode
        try:
            per_step, by_dtype = count_flops_by_dtype(
                prepared.count_step, "tf32" if mode.tf32 else "fp32"
            )
        except Exception as exc:
            prepared.details["flops_error"] = _message(exc)
            return None
        dtype, gpu = mode.compute_dtype, self.device.gpu_name()
        peaks = None
        if by_dtype:
            peak, peaks = split_peak(gpu, by_dtype, config.override)
        else:  # nothing matmul-like ran: the compute dtype's peak (MFU is 0 then)
            peak = peak_tflops(gpu, dtype, config.override(dtype))
        return Flops(
            per_step=per_step,
            counter="torch FlopCounterMode",
            dtype=dtype,
            peak_tflops=peak.tflops,
            peak_source=peak.source,
            peak_reason=peak.reason,
            by_dtype=by_dtype or None,
            peaks_tflops=peaks,
        )


@dataclass
class Measurement:
    """What a case's memory window saw: its steps, peak memory, details, FLOPs, compile time."""

    steps: MeasuredSteps
    memory: MemoryReading
    details: dict[str, Any]
    flops: Flops | None
    compile_s: float | None
    losses: list[float] | None
    timing_method: str  # the device's: cuda-events or perf-counter
    unstable_cv: float | None  # the suite's limit on the timed steps' spread
    gpu_busy_fraction: float | None = None  # GPU cases: kernel time over a profiled window

    def result(
        self,
        case: Case,
        tokens_per_sample: int,
        numerics: dict[str, Any] | None,
        started_at: str,
        wall_s: float,
    ) -> CaseResult:
        """The case's ok result: timing statistics, throughput, memory, energy per step."""
        steps = self.steps
        timed = Timing.from_samples(
            steps.step_s,
            steps.warmup_steps,
            self.timing_method,
            compile_s=self.compile_s,
            warmup_steady=steps.warmup_steady,
            unstable_cv=self.unstable_cv,
            gpu_busy_fraction=self.gpu_busy_fraction,
        )
        telemetry = steps.telemetry
        if telemetry is not None and telemetry.energy_j is not None:
            # Over every step the window saw: the timed ones and those that stretched it.
            window_steps = telemetry.energy_steps or len(steps.step_s)
            telemetry.energy_per_step_j = telemetry.energy_j / window_steps
            telemetry.energy_per_sample_j = telemetry.energy_per_step_j / case.batch_size
        return CaseResult(
            case,
            "ok",
            timing=timed,
            throughput=Throughput.from_median(case.batch_size, tokens_per_sample, timed.median_s),
            memory=Memory(self.memory.peak_bytes, self.memory.reserved_bytes, self.memory.method),
            losses=tuple(self.losses) if self.losses is not None else None,
            numerics=numerics,
            details=self.details,
            started_at=started_at,
            wall_s=wall_s,
            telemetry=telemetry,
            flops=self.flops,
        )


def failure(case: Case, exc: BaseException) -> CaseResult:
    """A case that raised: out of memory in any of its forms, else an error, with the message."""
    status = "oom" if is_out_of_memory(exc) else "error"
    return CaseResult(case, status, _message(exc))


def _message(exc: BaseException) -> str:
    return first_line(f"{type(exc).__name__}: {exc}".strip())


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

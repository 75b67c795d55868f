"""How long a sweep will take, estimated before it starts from FLOP counts and measured matmul
rates, so a run that would take hours says so before it begins (`mpbench run` prints it;
`mpbench run --dry-run` prints it per model and stops).

The model, per case (constants below, measured on the machines named there):

    step_s  = max(flops / (rate[dtype] * MATMUL_EFFICIENCY),  n_layer * HOST_S_PER_LAYER)
              * the mode's eager_gpu_slowdown on a GPU without torch.compile (fp8: torchao's casts)
              (compiled: a third of the host floor; graphs: none, one replay launches the step)
    case_s  = CASE_OVERHEAD_S + (expected warm-up + 1 FLOP-count step) * step_s + timed_s
              + compile_estimate_s when compiled (a base + each traced layer: one block under
                regional compilation, all of them for the whole model), + GRAPH_WARMUP_STEPS + 1
                steps when captured as a CUDA graph
    timed_s = iterations * step_s; on a GPU max(that, the 5 s energy window: NVML's counter
              needs seconds) + the GPU-busy profile's steps (bench.engine.gpubusy)
              + a worker's start-up, once per model (--isolate model) or per case
    once per model, workload and precision: its numerics pass, numerics steps * step_s at the
    numerics shape * NUMERICS_SLOWDOWN
    first case of each model and workload: + FIRST_CASE_S and the fp32 reference's numerics steps
    (twice: the noise floor runs fp32 again)
    a case on a reference kernel (bench.engine.budget): its step predicted from the kernel's
    rate, and only the steps the slow-kernel budget lets it time (none when it is not timed)

flops is `analytic_flops` (matmul-class FLOPs, within 1% of torch's counter on the presets);
rate[dtype] the matmul rate measured on this device (bench.engine.rates, a few ms per dtype);
the host floor is the time the host needs to launch one step's kernels, which is what bounds
small batches on a GPU. The expected warm-up is midway between [timing] warmup and its cap.
Predicted OOMs are counted as if they ran: the estimate errs long.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field, replace

from bench.engine.budget import TimingPlan, plan_timing, predicted_step_s, slow_case_count
from bench.engine.device import Device
from bench.engine.execution import GRAPH_WARMUP_STEPS
from bench.engine.flops import analytic_flops
from bench.engine.gpubusy import PROFILE_STEPS
from bench.engine.modes import BASELINE_MODE, PRECISION_MODES
from bench.engine.numerics.config import NumericsConfig
from bench.engine.rates import MatmulRate, measure_matmul
from bench.engine.suite import Suite
from bench.engine.telemetry import MIN_ENERGY_WINDOW_S
from bench.results.schema import Case

# Fraction of the square-matmul rate a compute-bound transformer step reaches (fp32 train and
# infer of gpt2-124m / bert-base at batch 8 x 512 on an H200: 0.75-0.76 of the measured fp32
# matmul rate; tiny models on a 2-core CPU: 0.4-0.5).
MATMUL_EFFICIENCY = {"cuda": 0.75, "cpu": 0.45}
# Host time per transformer layer to launch one step's work (H200 host: bf16 gpt2-124m and
# bert-base at batch 8 x 512 are host-bound at 46-49 ms per 12-layer train step and 24-30 ms per
# infer step; 2-core CPU: gpt2-tiny 15 ms per 2-layer train step, 2.7 ms per infer step).
HOST_S_PER_LAYER = {
    "cuda": {"train": 4.0e-3, "infer": 2.2e-3, "generate": 2.2e-3},
    "cpu": {"train": 7.0e-3, "infer": 1.3e-3, "generate": 1.3e-3},
}
# A CPU without fp16 hardware runs the models' small fp16 matmuls 2-15x faster than the square
# ones measured (2-core VM: gpt2-tiny/bert-tiny steps vs 512x512 matmuls); 4 is their middle.
CPU_FP16_FACTOR = 4.0
# The numerics pass runs deterministic kernels and the math attention backend.
NUMERICS_SLOWDOWN = 1.3
# Per case: building the model from the pristine copy, the FLOP count, cleanup, writing.
CASE_OVERHEAD_S = {"cuda": 4.0, "cpu": 0.4}
# Once per model and workload: model construction, the fp32 reference run and activation ranges.
FIRST_CASE_S = {"cuda": 12.0, "cpu": 2.0}
# torch.compile's first call, per case (kept out of the steps, but it takes wall time):
# compile_s = COMPILE_BASE_S + COMPILE_S_PER_LAYER x the layers traced into the graph (one block
# under regional compilation, whose graph every layer reuses; every layer for the whole model).
# Measured by benchmarks/compile_regional.py on this project's 2-core CPU (gpt2-124m fp32, batch
# 1 x 128, a cold inductor cache per variant, 2026-12-06): train regional 16.5 s, whole model
# 50.5 s (3.1x); infer regional 12.1 s, whole model 22.1 s. Two equations per workload give the
# base (train 13.4 s, infer 11.2 s) and the cost per traced layer (train 3.1 s, infer 0.9 s).
# CUDA: not measured yet; the CPU figures stand in (inductor's time is mostly host-side tracing
# and code generation; a GPU host compiles its Triton kernels on more cores), errs long.
COMPILE_BASE_S = {
    "cpu": {"train": 13.4, "infer": 11.2, "generate": 11.2},
    "cuda": {"train": 13.4, "infer": 11.2, "generate": 11.2},
}
COMPILE_S_PER_LAYER = {
    "cpu": {"train": 3.1, "infer": 0.9, "generate": 0.9},
    "cuda": {"train": 3.1, "infer": 0.9, "generate": 0.9},
}
# Starting a worker process (--isolate model: one per model; case: one per case): importing
# torch and transformers, and on a GPU creating the CUDA context (H200 host: 5.8 s).
WORKER_START_S = {"cuda": 6.0, "cpu": 3.0}
INFER_NUMERICS_STEPS = 2
RATES_TIMEOUT_S = 120  # the child that measures a GPU's matmul rates (a few seconds normally)


@dataclass
class SweepEstimate:
    """The estimated wall time of a sweep, in total and per model."""

    cases: int
    total_s: float
    per_model_s: dict[str, float]
    rates: dict[str, MatmulRate]
    notes: list[str] = field(default_factory=list)

    def rates_line(self) -> str:
        """'fp32 51.3, bf16 791 TFLOP/s' (what the estimate divided by)."""
        parts = [f"{d} {r.tflops:.3g}" for d, r in self.rates.items() if r.tflops]
        return ", ".join(parts) + " TFLOP/s measured" if parts else "no matmul rate measured"


def needed_dtypes(cases: list[Case]) -> tuple[str, ...]:
    """The compute dtypes the cases' precision modes run their matmuls in."""
    return tuple(sorted({PRECISION_MODES[c.precision].compute_dtype for c in cases}))


def measure_rates(device: Device, dtypes: tuple[str, ...]) -> dict[str, MatmulRate]:
    """Quick matmul rates for the estimate: on a GPU in a short child process (so this process
    holds no CUDA context while the workers run), in-process on a CPU."""
    if not device.is_cuda:
        return {d: measure_matmul(device, d, iterations=3, target_s=0.005) for d in dtypes}
    code = (
        "import json, sys; from bench.engine.device import resolve_device; "
        "from bench.engine.rates import measure_matmul; d = resolve_device(sys.argv[1]); "
        "d.activate(); "
        "print(json.dumps({t: measure_matmul(d, t, iterations=5).__dict__ for t in sys.argv[2:]}))"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, device.name, *dtypes],
            capture_output=True,
            text=True,
            timeout=RATES_TIMEOUT_S,
            check=False,
        )
        if proc.returncode != 0:
            why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(why)
        measured = json.loads(proc.stdout.strip().splitlines()[-1])
        return {d: MatmulRate(**measured[d]) for d in dtypes}
    except (
        OSError,
        subprocess.SubprocessError,
        RuntimeError,
        ValueError,
        LookupError,
        TypeError,
    ) as exc:
        why = f"rate not measured ({type(exc).__name__}: {exc})".splitlines()[0]
        return {d: MatmulRate(d, reason=why) for d in dtypes}


def step_estimate_s(
    suite: Suite, case: Case, rates: dict[str, MatmulRate], device_type: str
) -> float | None:
    """Estimated seconds of one timed step of `case` (None without a rate for its dtype)."""
    mode = PRECISION_MODES[case.precision]
    rate = rates.get(mode.compute_dtype)
    if rate is None or not rate.tflops:
        return None
    spec = suite.model(case.model)
    flops = analytic_flops(
        spec, case.workload, case.batch_size, case.seq_len, suite.sweep.generate_new_tokens
    )
    compute_s = flops / (rate.tflops * 1e12 * MATMUL_EFFICIENCY[device_type])
    if device_type == "cpu" and rate.dtype == "fp16":
        compute_s /= CPU_FP16_FACTOR
    host_s = n_layers(suite, case.model) * HOST_S_PER_LAYER[device_type][case.workload]
    if case.execution == "compiled":
        host_s /= 3  # compiled graphs launch fewer, fused kernels
    elif case.execution == "graphs":
        host_s = 0.0  # one replay launches the whole step
    step_s = max(compute_s, host_s)
    if mode.eager_gpu_slowdown and case.execution != "compiled" and device_type == "cuda":
        step_s *= mode.eager_gpu_slowdown[case.workload]
    return step_s


def compile_estimate_s(suite: Suite, case: Case, device_type: str, scope: str) -> float:
    """Seconds torch.compile's first call takes for `case`: a base plus each layer traced, one
    block under regional compilation, every layer for the whole model (COMPILE_BASE_S)."""
    traced = 1 if scope == "regional" else n_layers(suite, case.model)
    base_s = COMPILE_BASE_S[device_type][case.workload]
    return base_s + traced * COMPILE_S_PER_LAYER[device_type][case.workload]


def n_layers(suite: Suite, model: str) -> int:
    """The model's transformer layer count."""
    config = suite.model(model).config()
    return int(getattr(config, "n_layer", None) or config.num_hidden_layers)


def estimate_sweep(
    suite: Suite,
    cases: list[Case],
    device_type: str,
    rates: dict[str, MatmulRate],
    isolate: str = "model",
    device: Device | None = None,
) -> SweepEstimate:
    """The estimated wall time of running `cases` (module docstring: the model) with workers
    started as --isolate says. With the `device`, cases whose precision runs on a reference
    kernel there cost what the slow-kernel budget lets them time (bench.engine.budget)."""
    numerics = NumericsConfig.from_table(suite.tables.get("numerics", {}), suite.source)
    slow_cases = slow_case_count(suite, device) if device is not None else 0
    per_model: dict[str, float] = {}
    notes = []
    seen_groups: set[tuple[str, str]] = set()
    seen_passes: set[tuple[str, str, str]] = set()  # a pass serves eager and compiled alike
    unknown = set()
    for case in cases:
        step_s = _step_s(suite, case, rates, device_type, device)
        if step_s is None:
            unknown.add(PRECISION_MODES[case.precision].compute_dtype)
            continue
        case_s = CASE_OVERHEAD_S[device_type]
        plan = (
            plan_timing(suite, device, case, slow_cases)
            if device is not None
            else TimingPlan(suite.timing)
        )
        if plan.skip_reason is None:
            timing = plan.timing
            steps = (timing.warmup + timing.warmup_cap) / 2
            steps += 1 if suite.flops.enabled else 0  # the FLOP count runs one step
            timed_s = timing.iterations * step_s
            if device_type == "cuda":  # NVML's energy window, then the GPU-busy profile
                timed_s = max(timed_s, MIN_ENERGY_WINDOW_S) + PROFILE_STEPS * step_s
            case_s += steps * step_s + timed_s
        kind = "train" if case.workload == "train" else "infer"
        if numerics.enabled:
            pass_steps = numerics.train_steps if kind == "train" else INFER_NUMERICS_STEPS
            batch_size, seq_len = numerics.pass_shape(
                suite.sweep.batch_sizes, suite.sweep.seq_lens, suite.model(case.model).max_positions
            )
            at_pass = replace(case, workload=kind, batch_size=batch_size, seq_len=seq_len)
            if (case.model, kind, case.numerics_key) not in seen_passes:  # once per model,
                seen_passes.add((case.model, kind, case.numerics_key))  # workload and precision
                pass_step_s = _step_s(suite, at_pass, rates, device_type, device) or step_s
                case_s += pass_steps * pass_step_s * NUMERICS_SLOWDOWN
            group = (case.model, kind)
            if group not in seen_groups:
                seen_groups.add(group)
                fp32_pass = replace(at_pass, precision=BASELINE_MODE.name)
                reference = _step_s(suite, fp32_pass, rates, device_type, device) or step_s
                repeats = 2 if numerics.noise_floor else 1
                case_s += FIRST_CASE_S[device_type]
                case_s += repeats * pass_steps * reference * NUMERICS_SLOWDOWN
        if case.execution == "compiled":
            case_s += compile_estimate_s(suite, case, device_type, suite.sweep.compile_scope)
        elif case.execution == "graphs":
            case_s += (GRAPH_WARMUP_STEPS + 1) * step_s  # side-stream warm-up, then capture
        if isolate == "case" or (isolate == "model" and case.model not in per_model):
            case_s += WORKER_START_S[device_type]
        per_model[case.model] = per_model.get(case.model, 0.0) + case_s
    if unknown:
        notes.append(f"no matmul rate for {', '.join(sorted(unknown))}: those cases not counted")
    return SweepEstimate(len(cases), sum(per_model.values()), per_model, rates, notes)


def _step_s(
    suite: Suite,
    case: Case,
    rates: dict[str, MatmulRate],
    device_type: str,
    device: Device | None,
) -> float | None:
    """One step's seconds: on a reference kernel, the budget's own prediction (it knows the
    kernel's rate); else FLOPs over the measured matmul rate, held at the host floor."""
    kernel = PRECISION_MODES[case.precision].slow_kernel(device) if device is not None else None
    if kernel is not None:
        return predicted_step_s(suite, case, kernel)
    return step_estimate_s(suite, case, rates, device_type)

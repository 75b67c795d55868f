"""Checks of mpbench's own measurement on this machine: the first thing to run on a new one.

Each check measures something whose answer is known, or can be had another way, and says PASS,
FAIL or SKIP (a check that needs what this device does not have, with the reason):

* identity: torch, CUDA, driver, NVML, compute capability, clocks, power limit;
* timer: the step timer against an independent host clock over the same synchronized loop;
* memory: the memory window against an allocation of known size;
* per precision mode: real steps (the runner's own: GPT-2 training, GPT-2 and BERT inference)
  with `torch.cuda.set_sync_debug_mode("error")`, so any host sync in a timed step raises
  (METHODS rule 23), and proof the mode took effect (parameter and autocast dtypes, fp8 layers,
  TF32 changing a matmul's result); then a few representative steps per execution other than
  eager (compiled), bounded in time (SYNC_CHECK_EXECUTIONS);
* matmul TFLOP/s per dtype against the peak table (above it: the timer lies; below half of it:
  clocks low, or TF32 off), and device copy bandwidth;
* the overhead of mpbench's timed loop against a hand-written one, and of the telemetry sampler.

`mpbench selfcheck` runs them in a process of their own (run_device_checks_in_child), so that
its own process holds no CUDA context while the suite's workers run. Then two checks on the
suite's run that follows them (suite_checks: every case ran, fp32 against
itself is exactly 0) and the tally of PASS, FAIL and SKIP. Nothing here prints:
bench.cli.selfcheck shows the results and runs the suite.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import Connection
from typing import Any

import torch

from bench.engine.device import Device
from bench.engine.env import capture_env
from bench.engine.modes import PRECISION_MODES
from bench.engine.modes.base import square_matmul
from bench.engine.numerics.config import NumericsConfig
from bench.engine.progress import no_phase
from bench.engine.rates import MATMUL_DTYPES, MatmulRate, measure_matmul, time_per_call_s
from bench.engine.runner import CaseRunner, PreparedCase, measure_steps, skip_reason
from bench.engine.suite import Suite, load_suite
from bench.engine.telemetry import open_telemetry
from bench.errors import EXIT_OK
from bench.results.peaks import peak_tflops
from bench.results.rundir import Run
from bench.results.schema import BASELINE_PRECISION, FAILURES, Case

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
TIMER_TOLERANCE = 0.05  # step timer vs host clock, relative
MEMORY_TOLERANCE = {"cuda": 0.01, "cpu": 0.05}  # window vs a known allocation, relative
OVERHEAD_LIMIT = 1.03  # mpbench's loop / a hand-written one: the target (median of round ratios)
# On a CPU the allocator alone moves one loop against another by 5-15% in a given process (same
# model, inputs and optimizer, measured on this project's 2-core VM, either loop ahead): the
# check there only catches a gross overhead.
CPU_OVERHEAD_LIMIT = 1.15
SAMPLER_OVERHEAD_LIMIT = 1.02  # timed steps with / without the NVML sampler
SAMPLER_ALPHA = 0.05  # significance for "the sampler costs more than the limit"
PEAK_SLACK = 1.05  # a measured rate above the datasheet peak by more than this: the timer lies
# A measured rate below this fraction of the datasheet peak: the GPU is not running as it should
# (clocks held low by power or thermal limits, TF32 left off for the tf32 matmul, another
# process on the GPU). This check's square 8192^3 matmuls reached 74-84% of the dense peak in
# every dtype on an H200 (README, "Measured on an H200": fp32 76%, tf32 84%, bf16 80%, fp16 77%,
# fp8 74%), so half the peak leaves room for a slower part of the same model.
PEAK_FLOOR = 0.5


@dataclass
class CheckResult:
    """One check: PASS, FAIL or SKIP, what it found in a line, and its figures."""

    name: str
    status: str
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """For selfcheck.json."""
        return asdict(self)


def _guarded(name: str, check: Callable[[], CheckResult]) -> CheckResult:
    """Run a check; an exception is that check's FAIL, not the end of the self-check."""
    try:
        return check()
    except Exception as exc:  # the point of a self-check is to say what broke
        return CheckResult(name, FAIL, f"{type(exc).__name__}: {exc}".splitlines()[0])


# ---------------------------------------------------------------------------------------------
# Device identity, timer, memory
# ---------------------------------------------------------------------------------------------


def check_identity(device: Device) -> CheckResult:
    """What this machine is, as env.json records it."""
    env = capture_env(device)
    versions = env["versions"]
    figures: dict[str, Any] = {
        "device": env["device_name"],
        "torch": versions["torch"],
        "torch_cuda": versions["torch_cuda"],
        "transformers": versions["transformers"],
        "tf32_api": env["tf32"].get("api"),
    }
    gpu = env.get("gpu")
    if gpu:
        keys = (
            "compute_capability",
            "memory_total_bytes",
            "driver",
            "nvml",
            "power_limit_w",
            "max_sm_clock_mhz",
            "max_mem_clock_mhz",
            "temperature_c",
        )
        figures.update({key: gpu.get(key) for key in keys})
        detail = (
            f"{gpu['name']} (cc {gpu['compute_capability']}), driver {gpu.get('driver')}, "
            f"CUDA {gpu['cuda']}, NVML {gpu.get('nvml')}, torch {versions['torch']}"
        )
    else:
        detail = f"{env['device_name']} (CPU, {env['cpu']['logical_cores']} logical cores), "
        detail += f"torch {versions['torch']}"
    return CheckResult("identity", PASS, detail, figures)


def check_timer(device: Device, steps: int = 20) -> CheckResult:
    """The sum of the step timer's per-step times against the host clock around the same
    synchronized loop: they must agree within TIMER_TOLERANCE (steps of several ms, so the gaps
    between them are negligible)."""
    step = square_matmul(device, 4096 if device.is_cuda else 512, torch.float32)
    for _ in range(3):
        step()
    device.synchronize()
    timer = device.step_timer(steps)
    t0 = time.perf_counter()
    for i in range(steps):
        timer.start(i)
        step()
        timer.stop(i)
    step_s = timer.elapsed_s()  # synchronizes on CUDA
    device.synchronize()
    wall_s = time.perf_counter() - t0
    ratio = sum(step_s) / wall_s
    status = PASS if abs(ratio - 1) <= TIMER_TOLERANCE else FAIL
    detail = (
        f"{device.timing_method}: sum of {steps} steps {sum(step_s) * 1e3:.1f} ms vs host clock "
        f"{wall_s * 1e3:.1f} ms (ratio {ratio:.3f}, tolerance ±{TIMER_TOLERANCE:.0%})"
    )
    return CheckResult(
        "timer", status, detail, {"ratio": ratio, "steps_s": sum(step_s), "wall_s": wall_s}
    )


def check_memory_window(device: Device, size_bytes: int = 256 * 2**20) -> CheckResult:
    """The memory window around an allocation of known size (touched, so a CPU maps it)."""
    with device.memory_window() as reading:
        block = torch.ones(size_bytes, dtype=torch.uint8, device=device.torch_device)
        device.synchronize()
        del block
    if reading.peak_bytes is None:
        return CheckResult("memory", SKIP, f"no memory figure here (method {reading.method})")
    tolerance = MEMORY_TOLERANCE["cuda" if device.is_cuda else "cpu"]
    error = reading.peak_bytes / size_bytes - 1
    status = PASS if abs(error) <= tolerance else FAIL
    detail = (
        f"{reading.method}: {reading.peak_bytes / 2**20:.1f} MiB for a {size_bytes / 2**20:.0f} "
        f"MiB allocation ({error:+.2%}, tolerance ±{tolerance:.0%})"
    )
    return CheckResult("memory", status, detail, {"peak_bytes": reading.peak_bytes, "error": error})


# ---------------------------------------------------------------------------------------------
# Precision modes
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def prepared_case(suite: Suite, device: Device) -> Iterator[tuple[Case, PreparedCase]]:
    """The suite's first case as the runner prepares it (model, optimizer, inputs, step), under
    its precision mode's global state, after its execution's first call (compiling, or
    capturing a CUDA graph: a graphs step replays only once captured), as the runner makes it."""
    case = suite.cases(device.name)[0]
    mode = PRECISION_MODES[case.precision]
    with mode.global_state(device), CaseRunner(suite, device).prepare(case) as prepared:
        prepared.execution.first_call(prepared.step, device, no_phase, _NO_MEMORY_WINDOW)
        yield case, prepared


class _NoMemoryWindow:
    """The memory window a selfcheck step runs in: none (the checks read no memory peak)."""

    def restart_peak(self) -> None:
        """Nothing to restart."""


_NO_MEMORY_WINDOW: Any = _NoMemoryWindow()


def interleaved_rounds(
    rounds: int, first: Callable[[], list[float]], second: Callable[[], list[float]]
) -> list[tuple[list[float], list[float]]]:
    """Per round, the step times of a block of `first` and one of `second`, which goes first
    alternating round by round (METHODS rule 3), so drift cancels in each round's ratio."""
    blocks = []
    for index in range(rounds):
        if index % 2 == 0:
            a = first()
            b = second()
        else:
            b = second()
            a = first()
        blocks.append((a, b))
    return blocks


def median_ratios(blocks: list[tuple[list[float], list[float]]]) -> list[float]:
    """Each round's median step of the first block over the second's."""
    return [statistics.median(a) / statistics.median(b) for a, b in blocks]


MODE_CHECK_SUITE = """
[suite]
name = "selfcheck-modes"

[sweep]
models = ["gpt2-tiny"]
workloads = ["train"]
precisions = ["fp32"]
batch_sizes = [2]
seq_lens = [64]
"""

# The steps every mode's check runs (eagerly): GPT-2 training, and inference of a causal LM
# (GPT-2) and of a masked LM (BERT), whose mask code differs. On a GPU the fp8 modes' inference
# is torchao's float8 `quantize_` path (bench.engine.modes.fp8), so it is checked here too.
SYNC_CHECK_STEPS = (("gpt2-tiny", "train"), ("gpt2-tiny", "infer"), ("bert-tiny", "infer"))

# Executions other than eager, and the steps each checks for host syncs: (precisions, model,
# workload), the first precision this GPU runs. Bounded so that the device checks stay near 2
# minutes on an H200: an eager step of a tiny model checks in about a second (9 modes x 3 steps
# above: ~30 s), but a compiled one first compiles (15-40 s for a tiny model), so the compiled
# check runs two steps that between them cover what compiling changes: GPT-2 training with fp8
# (torchao's float8 training compiled, as it runs on a GPU by default) and BERT inference with
# fp8 (torchao's quantize_ path compiled, and a masked LM); bf16 where a GPU has no fp8. The
# optimizer step and GradScaler stay outside the compiled module and are checked eagerly. The
# graphs check (two captures, each a few eager steps) costs seconds.
SYNC_CHECK_EXECUTIONS: dict[str, tuple[tuple[tuple[str, ...], str, str], ...]] = {
    "compiled": (
        (("fp8", "amp_bf16"), "gpt2-tiny", "train"),
        (("fp8", "bf16"), "bert-tiny", "infer"),
    ),
    # A captured step cannot sync (capture itself would fail): this checks the replays and the
    # input refills around them, which run every step.
    "graphs": (
        (("amp_bf16",), "gpt2-tiny", "train"),
        (("bf16",), "bert-tiny", "infer"),
    ),
}


def sync_suite(precision: str, model: str, workload: str, execution: str = "eager") -> Suite:
    """The one-case suite of a host-sync check: batch 2 x 64 tokens."""
    from bench.engine.suite import parse_suite

    overrides = {
        "models": [model],
        "workloads": [workload],
        "precisions": [precision],
        "execution": [execution],
    }
    return parse_suite(MODE_CHECK_SUITE, overrides=overrides)


@contextlib.contextmanager
def sync_debug_error(device: Device) -> Iterator[None]:
    """torch.cuda.set_sync_debug_mode("error") for the enclosed code: any synchronizing call
    (.item(), a tensor in a bool test, nonzero, a blocking copy) raises."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


@dataclass(frozen=True)
class StepCheck:
    """One step of a mode checked: '' when it took effect and (on CUDA) ran without a host
    sync, else what went wrong."""

    case_id: str
    problem: str = ""


def check_step(device: Device, suite: Suite, steps: int = 3) -> StepCheck:
    """The suite's one case as the runner prepares it: the mode took effect on the model, and on
    CUDA `steps` steps after as many warm-up ones (lazy init, autotuning, compiling, the first
    GradScaler steps) run under sync-debug "error". On a CPU one step proves the path runs."""
    with prepared_case(suite, device) as (case, prepared):
        try:
            wrong = prepared.mode.took_effect(device, prepared.model, prepared.details)
            if wrong:
                return StepCheck(case.id, f"the mode did not take effect: {wrong}")
            if not device.is_cuda:
                prepared.step()
                return StepCheck(case.id)
            for _ in range(steps):
                prepared.step()
            device.synchronize()
            try:
                with sync_debug_error(device):
                    for _ in range(steps):
                        prepared.step()
            except RuntimeError as exc:
                first = str(exc).splitlines()[0]
                return StepCheck(case.id, f"a timed {case.workload} step synchronizes: {first}")
            device.synchronize()
        finally:
            prepared.execution.reset()  # compiled graphs die with the check
    return StepCheck(case.id)


def _verdict(
    check: str, done: list[StepCheck], skipped: list[str], passed: str, sync_checked: bool
) -> CheckResult:
    """A check's result from its steps: the first problem FAILs it; none run is a SKIP."""
    figures: dict[str, Any] = {
        "steps": [c.case_id for c in done],
        "skipped": skipped,
        "sync_checked": sync_checked,
    }
    bad = next((c for c in done if c.problem), None)
    if bad is not None:
        return CheckResult(check, FAIL, f"{bad.case_id}: {bad.problem}", figures)
    if not done:
        return CheckResult(check, SKIP, "; ".join(skipped) or "nothing to check", figures)
    ran = ", ".join(" ".join(c.case_id.split("/")[:2]) for c in done)
    return CheckResult(check, PASS, f"{passed} ({ran})", figures)


def check_mode(device: Device, name: str, steps: int = 3) -> CheckResult:
    """The mode's real steps (the runner's prepare and step: GPT-2 training, GPT-2 and BERT
    inference): proof that the mode took effect, and on CUDA no host sync in them (eager)."""
    check = f"mode {name}"
    mode = PRECISION_MODES[name]
    reason = mode.unsupported_reason(device, "train")
    if reason:
        return CheckResult(check, SKIP, reason)
    done, skipped = [], []
    # On a CPU there is no host sync to find: one training step proves the mode runs, and the
    # suite after the checks runs its inference.
    for model, workload in SYNC_CHECK_STEPS if device.is_cuda else SYNC_CHECK_STEPS[:1]:
        reason = mode.unsupported_reason(device, workload)
        if reason:
            skipped.append(f"{model} {workload}: {reason}")
            continue
        done.append(check_step(device, sync_suite(name, model, workload), steps))
        if done[-1].problem:
            break
    passed = (
        f"took effect; {steps} steps each with no host sync"
        if device.is_cuda
        else "took effect (dtypes, layers); host-sync check needs CUDA (skipped on a CPU)"
    )
    return _verdict(check, done, skipped, passed, device.is_cuda)


def check_execution_syncs(device: Device, execution: str, steps: int = 3) -> CheckResult:
    """The representative steps of an execution other than eager (SYNC_CHECK_EXECUTIONS) run
    with no host sync: CUDA only, since a CPU has no asynchronous work to wait for."""
    check = f"no sync {execution}"
    if not device.is_cuda:
        return CheckResult(check, SKIP, "the host-sync check needs CUDA (skipped on a CPU)")
    done, skipped = [], []
    for precisions, model, workload in SYNC_CHECK_EXECUTIONS[execution]:
        reasons = {p: PRECISION_MODES[p].unsupported_reason(device, workload) for p in precisions}
        precision = next((p for p in precisions if reasons[p] is None), None)
        if precision is None:
            skipped += [f"{p} {model} {workload}: {reasons[p]}" for p in precisions]
            continue
        suite = sync_suite(precision, model, workload, execution)
        case = suite.cases(device.name)[0]
        reason = skip_reason(suite, device, case)
        if reason:
            skipped.append(f"{case.id}: {reason}")
            continue
        done.append(check_step(device, suite, steps))
        if done[-1].problem:
            break
    passed = f"{steps} {execution} steps each with no host sync"
    return _verdict(check, done, skipped, passed, True)


# ---------------------------------------------------------------------------------------------
# Rates
# ---------------------------------------------------------------------------------------------


def check_matmul(device: Device, dtype: str) -> CheckResult:
    """Square-matmul TFLOP/s in one dtype, against the peak table where it knows the GPU."""
    check = f"matmul {dtype}"
    rate = measure_matmul(device, dtype)
    if rate.tflops is None:
        return CheckResult(check, SKIP, rate.reason or "not measured")
    n, achieved = rate.n, rate.tflops
    peak = peak_tflops(device.gpu_name(), dtype)
    figures: dict[str, Any] = {"n": n, "tflops": achieved, "peak_tflops": peak.tflops}
    if peak.tflops is None:
        why = (peak.reason or "no peak").split(";")[0]  # the table's reason, without its CLI hint
        return CheckResult(check, PASS, f"{achieved:.3g} TFLOP/s ({n}³; {why})", figures)
    fraction = achieved / peak.tflops
    figures["fraction_of_peak"] = fraction
    status = FAIL if fraction > PEAK_SLACK or fraction < PEAK_FLOOR else PASS
    detail = f"{achieved:.4g} TFLOP/s = {fraction:.0%} of the {peak.tflops:g} TFLOP/s peak ({n}³)"
    if fraction > PEAK_SLACK:
        detail += ": above the datasheet peak, so the timer cannot be right"
    elif fraction < PEAK_FLOOR:
        detail += (
            f": below {PEAK_FLOOR:.0%} of the table's peak for {peak_name(device)}: clocks low "
            "(power or thermal limit, another process on the GPU)"
            + (", or TF32 off" if dtype == "tf32" else "")
        )
    return CheckResult(check, status, detail, figures)


def peak_name(device: Device) -> str:
    """The GPU the peak table was read for, as the device names itself."""
    return device.gpu_name() or device.name


def measured_rates(results: list[CheckResult]) -> dict[str, MatmulRate]:
    """The matmul rates the checks measured, by dtype (for the suite's time estimate)."""
    rates = {}
    for result in results:
        if result.name.startswith("matmul ") and result.figures.get("tflops"):
            dtype = result.name.removeprefix("matmul ")
            rates[dtype] = MatmulRate(dtype, result.figures["n"], result.figures["tflops"])
    return rates


def check_copy_bandwidth(device: Device) -> CheckResult:
    """Device-to-device copy bandwidth (read + write), GB/s."""
    size = 2**30 if device.is_cuda else 2**28
    source = torch.ones(size, dtype=torch.uint8, device=device.torch_device)
    target = torch.empty_like(source)
    seconds = time_per_call_s(lambda: target.copy_(source), device)
    rate = 2 * size / seconds / 1e9
    detail = f"{rate:.4g} GB/s (copy of {size / 2**20:.0f} MiB, read + write)"
    return CheckResult("copy bandwidth", PASS, detail, {"gb_per_s": rate, "bytes": size})


def check_sampler_overhead(device: Device, rounds: int = 8, steps: int = 100) -> CheckResult:
    """Timed training steps with and without the NVML sampler running, interleaved by round.

    The step is gpt2-tiny's (the loop-overhead case): on a GPU it is bound by the host launching
    kernels, the worst case for a sampler thread that takes the interpreter lock, where a
    GPU-bound matmul would hide any cost. Host-bound steps jitter by several % from round to
    round, so the check FAILs only when the per-round ratios are significantly above the limit
    (one-sided Wilcoxon signed-rank, `SAMPLER_ALPHA`), and says so when the median is above it
    but within the noise. Blocks of 100 steps (about a second on a GPU) hold ~10 samples each."""
    telemetry = open_telemetry(device)
    if not telemetry.available:
        return CheckResult("telemetry overhead", SKIP, f"no telemetry: {telemetry.reason}")
    readings = []
    try:
        with prepared_case(overhead_suite(), device) as (case, prepared):
            measure_steps(prepared.step, 5, 2, device)

            def block(window: Any = None) -> list[float]:
                measured = measure_steps(prepared.step, 2, steps, device, timed_window=window)
                readings.append(measured.telemetry)
                return measured.step_s

            ratios = median_ratios(
                interleaved_rounds(rounds, lambda: block(telemetry.window), block)
            )
    finally:
        telemetry.close()
    reading = next((r for r in reversed(readings) if r is not None), None)
    ratio = statistics.median(ratios)
    p_value = above_limit_p_value(ratios, SAMPLER_OVERHEAD_LIMIT)
    status = FAIL if ratio > SAMPLER_OVERHEAD_LIMIT and p_value < SAMPLER_ALPHA else PASS
    figures = {
        "ratio": ratio,
        "round_ratios": ratios,
        "p_value_above_limit": p_value,
        "telemetry": reading.to_dict() if reading else None,
    }
    detail = (
        f"{case.id} step time with / without the sampler: median {ratio:.4f} over {rounds} "
        f"rounds (range {min(ratios):.3f}-{max(ratios):.3f}; limit {SAMPLER_OVERHEAD_LIMIT}); "
        f"{reading.samples if reading else 0} samples per block, "
        f"{reading.method if reading else '?'}"
    )
    if ratio > SAMPLER_OVERHEAD_LIMIT and status == PASS:
        detail += f"; above the limit but within this host's noise (p = {p_value:.2f})"
    return CheckResult("telemetry overhead", status, detail, figures)


def above_limit_p_value(ratios: list[float], limit: float) -> float:
    """One-sided p-value that the ratios lie above `limit` (Wilcoxon signed-rank on their
    logarithms, scipy); 1.0 when every ratio equals the limit."""
    from scipy.stats import wilcoxon

    differences = [math.log(r) - math.log(limit) for r in ratios]
    if not any(differences):
        return 1.0
    return float(wilcoxon(differences, alternative="greater").pvalue)


# ---------------------------------------------------------------------------------------------
# mpbench's loop against a hand-written one
# ---------------------------------------------------------------------------------------------


def hand_written_loop(
    model: Any, batch: Any, optimizer: Any, device: Device, steps: int, train: bool
) -> list[float]:
    """The loop a person writes by hand (nanoGPT bench.py style): the step written out inline
    instead of mpbench's step functions, timed by the device's own step timer (CUDA events on
    a GPU, perf_counter on a CPU) so the two loops compare like with like."""
    timer = device.step_timer(steps)
    for i in range(steps):
        timer.start(i)
        if train:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode():
                model(**batch)
        timer.stop(i)
    return timer.elapsed_s()


@dataclass
class OverheadResult:
    """mpbench's loop against a hand-written one, interleaved round by round."""

    case_id: str
    rounds: int
    steps: int
    mpbench_median_s: float
    hand_median_s: float
    round_ratios: list[float]

    @property
    def ratio(self) -> float:
        """The median of the per-round ratios mpbench / hand-written."""
        return statistics.median(self.round_ratios)

    @property
    def iqr(self) -> tuple[float, float]:
        """The quartiles of the per-round ratios."""
        q1, _, q3 = statistics.quantiles(self.round_ratios, n=4)
        return q1, q3


def loop_overhead(
    device: Device, suite: Suite, rounds: int = 16, steps: int = 6, warmup: int = 3
) -> OverheadResult:
    """Time the suite's first case with mpbench's loop and with a hand-written one, in the same
    process on the same model, inputs and optimizer (so the only difference is the loop: on a
    CPU, two copies of the same inputs or optimizer state can run several % apart for where
    they sit in memory), alternating which goes first each round (METHODS rule 3): each
    round's two blocks give one ratio, so machine drift cancels."""
    with prepared_case(suite, device) as (case, prepared):
        train = case.workload == "train"

        def hand(count: int) -> list[float]:
            return hand_written_loop(
                prepared.model, prepared.batch, prepared.optimizer, device, count, train
            )

        measure_steps(prepared.step, warmup, 2, device)  # warm both paths' allocations
        hand(warmup)
        blocks = interleaved_rounds(
            rounds,
            lambda: measure_steps(prepared.step, 0, steps, device).step_s,
            lambda: hand(steps),
        )
    return OverheadResult(
        case.id,
        rounds,
        steps,
        statistics.median([s for mpbench, _ in blocks for s in mpbench]),
        statistics.median([s for _, h in blocks for s in h]),
        median_ratios(blocks),
    )


def overhead_suite(
    model: str = "gpt2-tiny",
    workload: str = "train",
    precision: str = "fp32",
    batch_size: int = 8,
    seq_len: int = 64,
) -> Suite:
    """The one-case suite the overhead check times."""
    overrides = {
        "models": [model],
        "workloads": [workload],
        "precisions": [precision],
        "batch_sizes": [batch_size],
        "seq_lens": [seq_len],
    }
    return load_suite("smoke", overrides)


def check_overhead(device: Device, rounds: int = 12, steps: int = 8) -> CheckResult:
    """mpbench's timed loop against a hand-written one, within OVERHEAD_LIMIT on a GPU and
    CPU_OVERHEAD_LIMIT on a CPU (median of the per-round ratios)."""
    result = loop_overhead(device, overhead_suite(), rounds=rounds, steps=steps)
    q1, q3 = result.iqr
    limit = OVERHEAD_LIMIT if device.is_cuda else CPU_OVERHEAD_LIMIT
    status = PASS if result.ratio <= limit else FAIL
    detail = (
        f"{result.case_id}: mpbench / hand-written median step {result.ratio:.4f} "
        f"(IQR {q1:.4f}-{q3:.4f}; limit {limit}"
        + ("" if device.is_cuda else f" on a CPU, target {OVERHEAD_LIMIT} on a GPU")
        + ")"
    )
    figures = {"ratio": result.ratio, "iqr": [q1, q3], "round_ratios": result.round_ratios}
    return CheckResult("loop overhead", status, detail, figures)


# ---------------------------------------------------------------------------------------------
# The suite after the checks
# ---------------------------------------------------------------------------------------------

# The suite runs to prove the whole pipeline (every case runs, report renders, fp32 repeats
# exactly), not to set a baseline (`mpbench run ci` gives the full figures). Its share of the
# 4 minutes selfcheck allows on one H200: with 20 timed steps, a 10-step numerics pass and the
# fp64 reference, the 28 ci cases took 4 minutes there alone (README, "Measured on an H200");
# 10 timed steps, a 5-step pass and no fp64 reference (nothing here reads it: fp32 against
# itself is the check) leave the device checks (~2 minutes) their room. It runs eagerly: `ci`
# compiles every case (about 10 s each on a GPU by the estimate, most of the 4 minutes for 28
# cases), and the compiled and graphs executions have their own checks (SYNC_CHECK_EXECUTIONS).
SELFCHECK_TIMING = {"warmup": 3, "max_warmup": 5, "iterations": 10}
SELFCHECK_NUMERICS_STEPS = 5


def shortened(suite: Suite) -> Suite:
    """The suite with selfcheck's timing and numerics pass where those are shorter than its own,
    run eagerly."""
    timing = {k: min(v, getattr(suite.timing, k)) for k, v in SELFCHECK_TIMING.items()}
    numerics = dict(suite.tables.get("numerics", {}))
    numerics["train_steps"] = min(
        numerics.get("train_steps", NumericsConfig().train_steps), SELFCHECK_NUMERICS_STEPS
    )
    numerics["fp64_max_parameters"] = 0
    eager = replace(suite.sweep, execution=("eager",))
    return replace(
        suite.with_timing(timing), sweep=eager, tables=dict(suite.tables, numerics=numerics)
    )


# ---------------------------------------------------------------------------------------------
# All of them
# ---------------------------------------------------------------------------------------------


def device_checks(device: Device) -> list[tuple[str, Callable[[], CheckResult]]]:
    """(name, check) for every device-level check, in the order they run."""
    checks: list[tuple[str, Callable[[], CheckResult]]] = [
        ("identity", lambda: check_identity(device)),
        ("timer", lambda: check_timer(device)),
        ("memory", lambda: check_memory_window(device)),
    ]
    checks += [(f"mode {n}", lambda n=n: check_mode(device, n)) for n in PRECISION_MODES]
    checks += [
        (f"no sync {e}", lambda e=e: check_execution_syncs(device, e))
        for e in SYNC_CHECK_EXECUTIONS
    ]
    checks += [(f"matmul {d}", lambda d=d: check_matmul(device, d)) for d in MATMUL_DTYPES]
    checks += [
        ("copy bandwidth", lambda: check_copy_bandwidth(device)),
        ("telemetry overhead", lambda: check_sampler_overhead(device)),
        ("loop overhead", lambda: check_overhead(device)),
    ]
    return checks


def run_device_checks(
    device: Device,
    on_result: Callable[[CheckResult], None] | None = None,
    on_start: Callable[[str], None] | None = None,
) -> list[CheckResult]:
    """Every device-level check; each failure is its own FAIL, never the end of the run."""
    results = []
    for name, check in device_checks(device):
        if on_start is not None:
            on_start(name)
        result = _guarded(name, check)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


# A generous bound on the device checks' process (about 2 minutes expected on an H200, ~30 s on
# this project's CPU VM): past it the process is killed and the check it was in FAILs.
CHILD_TIMEOUT_S = 1200.0


def _device_checks_process(conn: Connection, device_name: str) -> None:
    """The device checks' own process: it makes the device current (a CUDA context lives here,
    and dies with it), runs every check and sends each name as it starts and each result as it
    ends."""
    import signal

    from bench.engine.device import resolve_device
    from bench.engine.executors import quiet_transformers
    from bench.engine.supervisor import die_with_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    die_with_parent()
    quiet_transformers()
    device = resolve_device(device_name)
    device.activate()
    run_device_checks(
        device,
        on_result=lambda r: conn.send(("result", r.to_dict())),
        on_start=lambda name: conn.send(("start", name)),
    )
    conn.send(("done", None))
    conn.close()


def run_device_checks_in_child(
    device_name: str,
    on_result: Callable[[CheckResult], None] | None = None,
    target: Callable[..., None] = _device_checks_process,
    timeout_s: float = CHILD_TIMEOUT_S,
) -> list[CheckResult]:
    """Every device check, in a spawned process of their own: this process never holds a CUDA
    context (so none of its memory sits on the GPU while the suite's workers run after the
    checks), and a check that kills its process (a segfault, a CUDA error that poisons the
    context) is that check's FAIL, not the end of the self-check."""
    from bench.engine.supervisor import SpawnedChild

    child = SpawnedChild(target, (device_name,))
    results: list[CheckResult] = []
    current = "starting the device checks"
    deadline = time.monotonic() + timeout_s

    def lost(why: str) -> None:
        result = CheckResult(current, FAIL, f"the device checks' process {why}")
        results.append(result)
        if on_result is not None:
            on_result(result)

    try:
        while True:
            if not child.conn.poll(max(0.0, deadline - time.monotonic())):
                lost(f"gave no answer within {timeout_s:g} s; killed")
                break
            try:
                kind, payload = child.conn.recv()
            except (EOFError, OSError):
                child.join(5)
                lost(f"ended during this check ({child.death_reason()})")
                break
            if kind == "start":
                current = payload
            elif kind == "result":
                result = CheckResult(**payload)
                results.append(result)
                if on_result is not None:
                    on_result(result)
            else:  # "done"
                break
    finally:
        child.join(30)
        child.kill()
    return results


# ---------------------------------------------------------------------------------------------
# The suite's run, read back, and the tally
# ---------------------------------------------------------------------------------------------


def suite_checks(run: Run, exit_code: int) -> tuple[CheckResult, CheckResult]:
    """Two checks on the suite's run (loaded back, with the sweep's exit code): every case ran
    (or was skipped for a reason), and fp32 against itself is exactly 0 in every numerics pass."""
    failed = [r for r in run.results if r.status in FAILURES]
    counts: dict[str, int] = {}
    for result in run.results:
        counts[result.status] = counts.get(result.status, 0) + 1
    listed = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    if failed or exit_code != EXIT_OK:
        first = failed[0] if failed else None
        why = f"; first: {first.case.id}: {first.reason}" if first else f"; exit code {exit_code}"
        cases = CheckResult("suite", FAIL, f"{listed}{why}", {"counts": counts})
    else:
        cases = CheckResult("suite", PASS, f"{listed} ({run.path})", {"counts": counts})
    return cases, fp32_determinism(run)


def fp32_determinism(run: Run) -> CheckResult:
    """fp32 run twice in each numerics pass gave identical losses and gradients (SKIP without a
    pass that repeated fp32)."""
    floors = [
        (r.case.id, (r.numerics or {}).get("noise_floor") or {})
        for r in run.results
        if r.ok and r.case.precision == BASELINE_PRECISION and r.numerics and not r.numerics_error
    ]
    identical = [f.get("fp32_runs_identical") for _, f in floors]
    if not floors or all(i is None for i in identical):
        return CheckResult("fp32 vs fp32", SKIP, "no fp32 numerics pass with a repeat")
    if all(identical):
        return CheckResult(
            "fp32 vs fp32",
            PASS,
            f"fp32 run twice gave identical losses and gradients in {len(floors)} pass(es)",
            {"passes": len(floors)},
        )
    bad = [cid for (cid, _), same in zip(floors, identical, strict=True) if same is False]
    divergences = [f.get("fp32_repeat_max_rel_div") for _, f in floors]
    return CheckResult(
        "fp32 vs fp32",
        FAIL,
        f"fp32 run twice differs ({', '.join(bad)}): the numerics pass is not deterministic "
        "here, so every divergence it reports carries that noise",
        {"max_rel_div": divergences},
    )


@dataclass(frozen=True)
class Tally:
    """How many checks passed, failed and were skipped; the self-check passes when none
    failed."""

    passed: int
    failed: int
    skipped: int

    @property
    def verdict(self) -> str:
        """PASS, or FAIL when any check failed."""
        return FAIL if self.failed else PASS

    @property
    def counts(self) -> dict[str, int]:
        """{"PASS": n, "FAIL": n, "SKIP": n}, in that order."""
        return {PASS: self.passed, FAIL: self.failed, SKIP: self.skipped}

    def line(self) -> str:
        """'12 PASS, 0 FAIL, 3 SKIP'."""
        return ", ".join(f"{n} {status}" for status, n in self.counts.items())


def tally(results: list[CheckResult]) -> Tally:
    """The counts of a self-check's results."""
    statuses = [r.status for r in results]
    return Tally(statuses.count(PASS), statuses.count(FAIL), statuses.count(SKIP))

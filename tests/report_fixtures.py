"""A synthetic GPU run for the report tests that a CPU cannot produce (an A100's memory line,
tf32 measured, fp8 skipped, an OOM and a crash), written through the results contract with
exactly the fields the engine writes. Report tests on real numbers use tests/fixtures/smoke-run,
a real (reduced) smoke run that benchmarks/make_report_fixture.py regenerates.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.results.rundir import ENV_FILE, ResultsWriter
from bench.results.schema import Case, CaseResult, Memory, Throughput, Timing

FIXTURE_RUN = Path(__file__).parent / "fixtures" / "smoke-run"
OK_PRECISIONS = ("fp32", "tf32", "amp_fp16", "amp_bf16", "bf16", "fp16")
# The engine's reason on an A100 (bench.engine.modes.fp8's gate; tests/test_fp8.py checks the wording).
SKIPPED = {
    "fp8": "fp8 needs compute capability >= 8.9 (Ada, Hopper) for fp8 tensor cores; "
    "NVIDIA A100-SXM4-40GB has 8.0",
}
# Relative speed and numerics verdicts per precision: amp_fp16 is the fastest passing mode in
# training, bf16 in inference (its training verdict is only "warn").
SPEED = {"fp32": 1.0, "tf32": 1.5, "amp_fp16": 2.1, "amp_bf16": 2.0, "bf16": 2.4, "fp16": 2.6}
TRAIN_VERDICT = {
    "tf32": "ok",
    "amp_fp16": "ok",
    "amp_bf16": "ok",
    "bf16": "warn",
    "fp16": "diverged",
}
INFER_VERDICT = {"tf32": "ok", "amp_fp16": "ok", "amp_bf16": "ok", "bf16": "ok", "fp16": "warn"}
MEMORY_FACTOR = {
    "fp32": 1.0,
    "tf32": 1.0,
    "amp_fp16": 0.8,
    "amp_bf16": 0.8,
    "bf16": 0.5,
    "fp16": 0.5,
}
REL_DIV_SCALE = {"tf32": 5e-4, "amp_fp16": 1e-3, "amp_bf16": 4e-3, "bf16": 2e-2, "fp16": 0.3}
GPU_MEMORY_BYTES = 16 * 2**30


def environment(suite: str = "tiny-sweep", **extra: Any) -> dict[str, Any]:
    """An env.json as the engine writes it on a GPU machine."""
    env = {
        "suite": suite,
        "suite_source": "suites/tiny.toml",
        "started_at": "2026-11-29T12:00:00+00:00",
        "device": "cuda:0",
        "device_name": "NVIDIA A100-SXM4-40GB",
        "hostname": "gpu-host",
        "platform": "Linux-6.8-x86_64-with-glibc2.36",
        "cpu": {"model": "AMD EPYC 7742", "logical_cores": 16, "torch_threads": 16},
        "gpu": {
            "name": "NVIDIA A100-SXM4-40GB",
            "compute_capability": "8.0",
            "memory_total_bytes": GPU_MEMORY_BYTES,
            "multiprocessors": 108,
            "uuid": "GPU-1234",
            "cuda": "12.4",
            "driver": "550.54.15",
            "nvml": "ok",
        },
        "versions": {
            "python": "3.11.7",
            "torch": "2.13.0",
            "torch_cuda": "12.4",
            "cudnn": 90100,
            "transformers": "5.24.0",
            "mpbench": "0.1.0",
        },
        "tf32": {"matmul": False, "cudnn": True, "float32_matmul_precision": "highest"},
        "git_commit": "a445007",
        "argv": ["mpbench", "run", "suites/tiny.toml"],
        "suite_sha256": "0" * 64,
        "isolate": "model",
    }
    env.update(extra)
    return env


def _timing(rng: random.Random, median_s: float, steps: int = 10) -> Timing:
    """Per-step times jittered around median_s, timed with CUDA events."""
    return Timing.from_samples(
        [median_s * rng.uniform(0.95, 1.12) for _ in range(steps)], 2, "cuda-events"
    )


def _train_numerics(precision: str, rng: random.Random, steps: int = 8) -> dict[str, Any]:
    """Divergence-pass numerics of a training case."""
    baseline = [4.0 * math.exp(-0.12 * i) + 0.5 for i in range(steps)]
    scale = REL_DIV_SCALE.get(precision, 0.0)
    rel_div = [scale * (i + 1) / steps * rng.uniform(0.8, 1.2) for i in range(steps)]
    loss = [b * (1 + d) for b, d in zip(baseline, rel_div, strict=True)]
    verdict = TRAIN_VERDICT.get(precision, "ok")
    return {
        "kind": "train",
        "verdict": verdict,
        "reasons": [] if verdict == "ok" else [f"max_rel_div {max(rel_div):.3g} > 0.01"],
        "batch_size": 2,
        "seq_len": 32,
        "steps": steps,
        "loss": loss,
        "baseline_loss": baseline,
        "abs_div": [abs(a - b) for a, b in zip(loss, baseline, strict=True)],
        "rel_div": rel_div,
        "max_rel_div": max(rel_div),
        "mean_rel_div": sum(rel_div) / steps,
        "final_rel_div": rel_div[-1],
        "tolerance": 0.01,
        "first_exceed_step": 5 if verdict == "diverged" else None,
        "first_nan_step": None,
        "nan_source": None,
        "baseline_nan_step": None,
        "grad_sqnr_db": {"overall": 40.0, "embeddings": 42.0, "attention": 38.0, "mlp": 39.0},
        "scaler": {"scale": [65536.0] * steps, "skipped_steps": 0, "skipped_at": []}
        if precision == "amp_fp16"
        else None,
        "noise_floor": {"fp32_runs_identical": True, "max_rel_div": 1.1e-7},
    }


def _infer_numerics(precision: str) -> dict[str, Any]:
    """Output-comparison numerics of an inference case."""
    scale = REL_DIV_SCALE.get(precision, 0.0)
    verdict = INFER_VERDICT.get(precision, "ok")
    return {
        "kind": "infer",
        "verdict": verdict,
        "reasons": [] if verdict == "ok" else ["sqnr_db 25.0 < 30"],
        "max_abs_err": scale * 10,
        "rel_rmse": scale,
        "sqnr_db": -20 * math.log10(scale) if scale else math.inf,
        "cosine": 1 - scale**2,
        "top1_agreement": 1 - scale,
        "kl_mean": scale**2,
        "rmse_ratio": 1.5,
        "baseline_finite": True,
        "noise_floor": {"fp32_runs_identical": True, "fp32_vs_fp64_rel_rmse": 3e-7},
    }


def activations(model: str) -> list[dict[str, Any]]:
    """Activation ranges of a few modules; the last MLP overflows fp16."""
    prefix = "transformer.h" if "gpt2" in model else "encoder.layer"
    out = []
    for i, max_abs in enumerate((12.0, 850.0, 3100.0, 91000.0)):
        out.append(
            {
                "module": f"{prefix}.{i}.mlp",
                "max_abs": max_abs,
                "fp16_headroom_log2": math.log2(65504 / max_abs),
                "frac_below_fp16_normal": 0.001 * i,
                "frac_below_bf16_normal": 0.0,
                "fp16_overflow": max_abs > 65504,
            }
        )
    return out


def case_results(
    models: Sequence[tuple[str, str]] = (("gpt2-tiny", "gpt2"), ("bert-tiny", "bert")),
    workloads: Sequence[str] = ("train", "infer"),
    batch_sizes: Sequence[int] = (2, 4),
    seq_len: int = 32,
    numerics: bool = True,
    device: str = "cuda:0",
    seed: int = 0,
) -> list[CaseResult]:
    """Every model x workload x precision x batch size: six precisions ok, fp8 skipped."""
    rng = random.Random(seed)
    results = []
    for model, family in models:
        for workload in workloads:
            for batch_size in batch_sizes:
                for precision in (*OK_PRECISIONS, *SKIPPED):
                    case = Case(model, family, workload, precision, batch_size, seq_len, device)
                    if precision in SKIPPED:
                        results.append(CaseResult(case, "skipped", reason=SKIPPED[precision]))
                        continue
                    base_s = 0.004 * batch_size**0.8 * (3 if workload == "train" else 1)
                    timing = _timing(rng, base_s / SPEED[precision])
                    peak = int(2**28 * batch_size * MEMORY_FACTOR[precision])
                    num: dict[str, Any] | None = None
                    if numerics:
                        num = (
                            _train_numerics(precision, rng)
                            if workload == "train"
                            else _infer_numerics(precision)
                        )
                        if precision == "fp32":
                            num["activations"] = activations(model)
                    results.append(
                        CaseResult(
                            case,
                            "ok",
                            timing=timing,
                            throughput=Throughput.from_median(batch_size, seq_len, timing.median_s),
                            memory=Memory(peak, peak, "cuda-max-allocated"),
                            losses=tuple(3.0 - 0.1 * i for i in range(10))
                            if workload == "train"
                            else None,
                            numerics=num,
                            details={"parameters": 1_000_000},
                            started_at="2026-11-29T12:01:00+00:00",
                            wall_s=1.5,
                        )
                    )
    return results


def extra_failures(
    model: str = "gpt2-tiny", family: str = "gpt2", device: str = "cuda:0"
) -> list[CaseResult]:
    """An OOM and a crashed case at a batch size nothing else ran at."""
    return [
        CaseResult(
            Case(model, family, "train", "fp32", 64, 32, device),
            "oom",
            reason="OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        ),
        CaseResult(
            Case(model, family, "infer", "fp16", 64, 32, device),
            "crashed",
            reason="worker killed by SIGSEGV during the case",
        ),
    ]


def write_run(
    run_dir: Path, results: Sequence[CaseResult], env: dict[str, Any] | None = None
) -> Path:
    """Write env.json and results.jsonl into run_dir and return it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if env is not None:
        (run_dir / ENV_FILE).write_text(json.dumps(env), encoding="utf-8")
    writer = ResultsWriter(run_dir)
    for result in results:
        writer.append(result)
    if not results:
        writer.path.touch()
    return run_dir


def realistic_run(run_dir: Path, numerics: bool = True) -> Path:
    """2 models x train/infer x 7 precisions x 2 batch sizes, plus an OOM and a crash."""
    return write_run(run_dir, [*case_results(numerics=numerics), *extra_failures()], environment())

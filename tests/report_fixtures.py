"""Fixture runs for the report tests, written through the results contract (bench.results.schema)."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.results.samples import summarize_seconds
from bench.results.schema import ENV_FILE, Case, CaseResult, ResultsWriter

OK_PRECISIONS = ("fp32", "amp_fp16", "amp_bf16", "bf16", "fp16")
SKIPPED = {
    "tf32": "tf32 needs a CUDA GPU with compute capability >= 8.0; found cpu",
    "fp8": "fp8 needs transformer-engine and compute capability >= 8.9",
}
# Relative speed and numerics verdicts per precision: amp_fp16 is the fastest passing mode in
# training, bf16 in inference (its training verdict is only "warn").
SPEED = {"fp32": 1.0, "amp_fp16": 2.1, "amp_bf16": 2.0, "bf16": 2.4, "fp16": 2.6}
TRAIN_VERDICT = {"amp_fp16": "ok", "amp_bf16": "ok", "bf16": "warn", "fp16": "diverged"}
INFER_VERDICT = {"amp_fp16": "ok", "amp_bf16": "ok", "bf16": "ok", "fp16": "warn"}
MEMORY_FACTOR = {"fp32": 1.0, "amp_fp16": 0.8, "amp_bf16": 0.8, "bf16": 0.5, "fp16": 0.5}
REL_DIV_SCALE = {"amp_fp16": 1e-3, "amp_bf16": 4e-3, "bf16": 2e-2, "fp16": 0.3}
GPU_MEMORY_BYTES = 16 * 2**30


def environment(suite: str = "tiny-sweep", **extra: Any) -> dict[str, Any]:
    """An env.json as the engine writes it (GPU machine)."""
    env = {
        "suite": suite,
        "started_at": "2026-11-29T12:00:00+00:00",
        "device": "cuda:0",
        "device_name": "NVIDIA A100-SXM4-40GB",
        "cpu": {"model": "AMD EPYC 7742", "threads": 16},
        "gpu": {
            "name": "NVIDIA A100-SXM4-40GB",
            "compute_capability": "8.0",
            "driver": "550.54.15",
            "cuda": "12.4",
            "memory_total_bytes": GPU_MEMORY_BYTES,
        },
        "versions": {
            "python": "3.11.7",
            "torch": "2.13.0",
            "transformers": "5.24.0",
            "mpbench": "0.1.0",
        },
        "tf32": {"matmul": False, "cudnn": True},
        "warnings": ["GPU clock throttled during 2 cases (thermal)"],
        "git_commit": "a445007",
    }
    env.update(extra)
    return env


def _timing(rng: random.Random, median_s: float, steps: int = 10) -> dict[str, Any]:
    """A timing block with jittered step times around median_s."""
    step_s = [median_s * rng.uniform(0.95, 1.12) for _ in range(steps)]
    return {"warmup": 2, "iterations": steps, "step_s": step_s, **summarize_seconds(step_s)}


def _train_numerics(precision: str, rng: random.Random, steps: int = 8) -> dict[str, Any]:
    """Divergence-pass numerics of a training case."""
    baseline = [4.0 * math.exp(-0.12 * i) + 0.5 for i in range(steps)]
    scale = REL_DIV_SCALE[precision]
    rel_div = [scale * (i + 1) / steps * rng.uniform(0.8, 1.2) for i in range(steps)]
    loss = [b * (1 + d) for b, d in zip(baseline, rel_div, strict=True)]
    return {
        "verdict": TRAIN_VERDICT[precision],
        "loss": loss,
        "baseline_loss": baseline,
        "rel_div": rel_div,
        "max_rel_div": max(rel_div),
        "final_rel_div": rel_div[-1],
        "mean_rel_div": sum(rel_div) / steps,
        "first_exceed_step": 5 if TRAIN_VERDICT[precision] == "diverged" else None,
        "first_nan_step": None,
        "grad_sqnr_db": {"overall": 40.0, "embeddings": 42.0, "attention": 38.0, "mlp": 39.0},
        "scaler": {"scale": [65536.0] * steps, "skipped_steps": 0} if "fp16" in precision else None,
    }


def _infer_numerics(precision: str) -> dict[str, Any]:
    """Output-comparison numerics of an inference case."""
    scale = REL_DIV_SCALE[precision]
    metrics = {
        "max_abs_err": scale * 10,
        "rel_rmse": scale,
        "sqnr_db": -20 * math.log10(scale),
        "cosine": 1 - scale**2,
        "top1_agreement": 1 - scale,
        "kl_mean": scale**2,
        "rmse_ratio": 1.5,
    }
    return {"verdict": INFER_VERDICT[precision], **metrics, "noise_floor": dict(metrics)}


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
    """Every model x workload x precision x batch size: five precisions ok, tf32 and fp8 skipped."""
    rng = random.Random(seed)
    results = []
    for model, family in models:
        for workload in workloads:
            for precision in (*OK_PRECISIONS, *SKIPPED):
                for batch_size in batch_sizes:
                    case = Case(model, family, workload, precision, batch_size, seq_len, device)
                    if precision in SKIPPED:
                        results.append(CaseResult(case, "skipped", reason=SKIPPED[precision]))
                        continue
                    base_s = 0.004 * batch_size**0.8 * (3 if workload == "train" else 1)
                    timing = _timing(rng, base_s / SPEED[precision])
                    peak = int(2**28 * batch_size * MEMORY_FACTOR[precision])
                    num: dict[str, Any] | None = None
                    if numerics and precision != "fp32":
                        num = (
                            _train_numerics(precision, rng)
                            if workload == "train"
                            else _infer_numerics(precision)
                        )
                    if (
                        numerics
                        and precision == "fp32"
                        and workload == "infer"
                        and batch_size == max(batch_sizes)
                    ):
                        num = {"verdict": "ok", "activations": activations(model)}
                    results.append(
                        CaseResult(
                            case,
                            "ok",
                            timing=timing,
                            throughput={
                                "samples_per_s": batch_size / timing["median_s"],
                                "tokens_per_s": batch_size * seq_len / timing["median_s"],
                            },
                            memory={
                                "peak_bytes": peak,
                                "reserved_bytes": peak,
                                "method": "cuda-max-allocated",
                            },
                            losses=[3.0 - 0.1 * i for i in range(10)]
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
            reason="CUDA out of memory. Tried to allocate 2.00 GiB",
        ),
        CaseResult(
            Case(model, family, "infer", "fp16", 64, 32, device),
            "crashed",
            reason="worker exited with signal 11 (SIGSEGV)",
        ),
    ]


def write_run(
    run_dir: Path,
    results: Sequence[CaseResult],
    env: dict[str, Any] | None = None,
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

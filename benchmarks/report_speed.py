"""Time `render_report` on a large synthetic run: 2,016 cases (target: under 20 s on 2 cores).

    python benchmarks/report_speed.py [--keep DIR]

6 models x train/infer/generate x 7 precisions x 8 batch sizes x 2 sequence lengths, 50 timed
steps each, numerics on every low-precision case and an activation analysis per model. Not a
test: it prints the time (and the figure count and HTML size) for a human or a CI log to read.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.results.rundir import ENV_FILE, RESULTS_FILE
from bench.results.schema import Case, CaseResult, Memory, Throughput, Timing
from bench.views.report import render_report

MODELS = [(f"gpt2-{i}", "gpt2") for i in range(3)] + [(f"bert-{i}", "bert") for i in range(3)]
WORKLOADS = ("train", "infer", "generate")
PRECISIONS = ("fp32", "tf32", "amp_fp16", "amp_bf16", "bf16", "fp16", "fp8")
SPEED = {
    "fp32": 1.0,
    "tf32": 1.6,
    "amp_fp16": 2.1,
    "amp_bf16": 2.0,
    "bf16": 2.4,
    "fp16": 2.6,
    "fp8": 3.1,
}
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
SEQ_LENS = (128, 512)
TARGET_S = 20.0


def _numerics(workload: str, precision: str, rng: random.Random) -> dict[str, Any]:
    """Plausible numerics for a low-precision case."""
    scale = {
        "tf32": 1e-4,
        "amp_fp16": 1e-3,
        "amp_bf16": 4e-3,
        "bf16": 2e-2,
        "fp16": 0.2,
        "fp8": 0.05,
    }
    s = scale[precision] * rng.uniform(0.7, 1.3)
    verdict = "ok" if s < 0.01 else ("warn" if s < 0.1 else "diverged")
    if workload != "train":
        return {"verdict": verdict, "rel_rmse": s, "sqnr_db": -20 * math.log10(s), "cosine": 1 - s}
    baseline = [5 * math.exp(-0.1 * i) + 1 for i in range(20)]
    rel_div = [s * (i + 1) / 20 for i in range(20)]
    return {
        "verdict": verdict,
        "loss": [b * (1 + d) for b, d in zip(baseline, rel_div, strict=True)],
        "baseline_loss": baseline,
        "rel_div": rel_div,
        "max_rel_div": max(rel_div),
        "final_rel_div": rel_div[-1],
    }


def _activations(model: str) -> list[dict[str, Any]]:
    """24 modules, the last few close to or over the fp16 limit."""
    out = []
    for i in range(24):
        max_abs = 2.0 ** (3 + i * 0.6)
        out.append(
            {
                "module": f"{model}.h.{i // 2}.{'attn' if i % 2 else 'mlp'}",
                "max_abs": max_abs,
                "fp16_headroom_log2": math.log2(65504 / max_abs),
                "fp16_overflow": max_abs > 65504,
            }
        )
    return out


def synthetic_results(seed: int = 0) -> list[CaseResult]:
    """The 2,016 cases, skipping tf32/fp8 on the largest batch sizes and OOMing fp32 at 128."""
    rng = random.Random(seed)
    results = []
    for model, family in MODELS:
        for workload in WORKLOADS:
            for precision in PRECISIONS:
                for batch_size in BATCH_SIZES:
                    for seq_len in SEQ_LENS:
                        case = Case(
                            model, family, workload, precision, batch_size, seq_len, "cuda:0"
                        )
                        if precision == "fp8" and workload == "generate":
                            results.append(
                                CaseResult(case, "skipped", reason="fp8 generate unsupported")
                            )
                            continue
                        if precision == "fp32" and batch_size == 128 and seq_len == 512:
                            results.append(CaseResult(case, "oom", reason="CUDA out of memory"))
                            continue
                        median = 1e-4 * batch_size * seq_len**0.7 / SPEED[precision]
                        step_s = [median * rng.uniform(0.95, 1.15) for _ in range(50)]
                        timing = Timing.from_samples(step_s, 5, "cuda-events")
                        numerics = None
                        if precision != "fp32":
                            numerics = _numerics(workload, precision, rng)
                        elif workload == "infer" and batch_size == 1 and seq_len == 128:
                            numerics = {"activations": _activations(model)}
                        results.append(
                            CaseResult(
                                case,
                                "ok",
                                timing=timing,
                                throughput=Throughput.from_median(
                                    batch_size, seq_len, timing.median_s
                                ),
                                memory=Memory(
                                    int(2**20 * batch_size * seq_len / SPEED[precision]),
                                    None,
                                    "cuda-max-allocated",
                                ),
                                losses=tuple(4 - 0.05 * i for i in range(50))
                                if workload == "train"
                                else None,
                                numerics=numerics,
                                wall_s=3.0,
                            )
                        )
    return results


def write_run(run_dir: Path, results: list[CaseResult]) -> None:
    """env.json and results.jsonl, written in one go (the engine appends line by line)."""
    env = {
        "suite": "report-speed",
        "device": "cuda:0",
        "gpu": {"name": "Synthetic GPU", "memory_total_bytes": 80 * 2**30},
        "versions": {"torch": "2.13.0", "transformers": "5.24.0"},
    }
    (run_dir / ENV_FILE).write_text(json.dumps(env), encoding="utf-8")
    lines = (json.dumps(r.to_dict(), separators=(",", ":")) for r in results)
    (run_dir / RESULTS_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Build the run, render it once, print the time; exit 1 above the target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="write the run here instead of a temp dir")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mpbench-report-speed-") as tmp:
        run_dir = args.keep or Path(tmp)
        run_dir.mkdir(parents=True, exist_ok=True)
        results = synthetic_results()
        write_run(run_dir, results)
        start = time.perf_counter()
        html = render_report(run_dir)
        elapsed_s = time.perf_counter() - start
        text = html.read_text(encoding="utf-8")
        figures = text.count('<figure class="plot"')
        print(
            f"render_report: {len(results)} cases, {figures} figures, "
            f"{len(text) / 2**20:.1f} MiB HTML in {elapsed_s:.2f} s (target < {TARGET_S:.0f} s)"
        )
    return 0 if elapsed_s < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())

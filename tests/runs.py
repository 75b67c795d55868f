"""Run directories for the tests, written through the results contract (bench.results).

Every result here is a CaseResult the engine could have written: the same fields, methods and
units (CUDA memory method on GPU environments, VmHWM on CPU ones).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.results.rundir import ENV_FILE, SUITE_FILE, ResultsWriter, Run, load_run
from bench.results.schema import Case, CaseResult, Memory, Throughput, Timing

A100 = {
    "name": "NVIDIA A100-SXM4-40GB",
    "compute_capability": "8.0",
    "driver": "550.54.15",
    "cuda": "12.4",
    "memory_total_bytes": 40 * 2**30,
    "uuid": "GPU-1234",
}
H100 = {
    "name": "NVIDIA H100 80GB HBM3",
    "compute_capability": "9.0",
    "driver": "550.54.15",
    "cuda": "12.4",
    "memory_total_bytes": 80 * 2**30,
    "uuid": "GPU-5678",
}
CPU_MODEL = "AMD EPYC 7742 64-Core Processor"
PRECISIONS = ("fp32", "amp_bf16", "bf16")


def one_case_suite(name: str) -> str:
    """The [suite] and [sweep] tables of a suite of one small case (gpt2-tiny training, fp32,
    batch 2, 16 tokens); tests append the tables they need."""
    return f"""
[suite]
name = "{name}"

[sweep]
models = ["gpt2-tiny"]
workloads = ["train"]
precisions = ["fp32"]
batch_sizes = [2]
seq_lens = [16]
"""


def make_env(gpu: dict[str, Any] | None = A100, **versions: str) -> dict[str, Any]:
    """An env.json as the engine writes it (GPU, or CPU with gpu=None)."""
    return {
        "suite": "fixture",
        "started_at": "2026-11-29T12:00:00+00:00",
        "device": "cuda:0" if gpu else "cpu",
        "device_name": gpu["name"] if gpu else CPU_MODEL,
        "hostname": "node1",
        "cpu": {"model": CPU_MODEL, "logical_cores": 16, "torch_threads": 16},
        "gpu": dict(gpu) if gpu else None,
        "versions": {
            "python": "3.11.7",
            "torch": "2.13.0",
            "transformers": "5.24.0",
            "mpbench": "0.1.0",
            **versions,
        },
    }


def fixture_cases(
    models: Iterable[str] = ("gpt2-tiny", "bert-tiny"), device: str = "cuda:0"
) -> list[Case]:
    """Cases of two models x train/infer x three precisions at one shape."""
    return [
        Case(model, "gpt2" if model.startswith("gpt2") else "bert", workload, p, 8, 64, device)
        for model in models
        for workload in ("train", "infer")
        for p in PRECISIONS
    ]


def ok_result(
    case: Case,
    median_s: float,
    rng: random.Random,
    steps: int = 12,
    peak_bytes: int = 512 * 2**20,
    numerics: dict[str, Any] | None = None,
    method: str | None = None,
) -> CaseResult:
    """A measured case: per-step times jittered +-3% around median_s."""
    step_s = [median_s * rng.uniform(0.97, 1.03) for _ in range(steps)]
    on_gpu = (case.device or "").startswith("cuda")
    timing = Timing.from_samples(step_s, 2, method or ("cuda-events" if on_gpu else "perf-counter"))
    return CaseResult(
        case,
        "ok",
        timing=timing,
        throughput=Throughput.from_median(case.batch_size, case.seq_len, timing.median_s),
        memory=Memory(
            peak_bytes, peak_bytes if on_gpu else None, "cuda-max-allocated" if on_gpu else "vmhwm"
        ),
        numerics=numerics,
    )


def default_numerics(case: Case) -> dict[str, Any] | None:
    """fp32 against itself is exact; the others a small divergence with verdict ok."""
    divergence = {"fp32": 0.0, "amp_bf16": 4e-3}.get(case.precision, 2e-2)
    key = "max_rel_div" if case.workload == "train" else "rel_rmse"
    return {"kind": case.workload, "verdict": "ok", "reasons": [], key: divergence}


def write_run(
    path: Path,
    cases: Iterable[Case] | None = None,
    env: dict[str, Any] | None = None,
    seed: int = 0,
    suite_toml: str | None = None,
    status: dict[str, str] | None = None,
    steps: int = 12,
    numerics: Any = default_numerics,
) -> Path:
    """Write a run directory: env.json, suite.toml (if given), results.jsonl."""
    rng = random.Random(seed)
    path.mkdir(parents=True, exist_ok=True)
    (path / ENV_FILE).write_text(json.dumps(env or make_env()), encoding="utf-8")
    if suite_toml is not None:
        (path / SUITE_FILE).write_text(suite_toml, encoding="utf-8")
    writer = ResultsWriter(path)
    for i, case in enumerate(cases if cases is not None else fixture_cases()):
        forced = (status or {}).get(case.id)
        if forced is not None:
            writer.append(CaseResult(case, forced, reason=f"{forced} for the test"))
            continue
        median = 0.010 * (1 + i % 5) * (0.5 if case.precision != "fp32" else 1.0)
        writer.append(ok_result(case, median, rng, steps, numerics=numerics(case)))
    return path


def edit_results(path: Path, edit: Any) -> None:
    """Rewrite results.jsonl of a run directory, passing each result dict through `edit`
    (None drops the line)."""
    results_path = path / "results.jsonl"
    lines = [json.loads(line) for line in results_path.read_text().splitlines() if line.strip()]
    out = [edit(r) for r in lines]
    results_path.write_text("".join(json.dumps(r) + "\n" for r in out if r is not None))


def scale_timing(result: dict[str, Any], factor: float) -> dict[str, Any]:
    """Multiply every step time (and the statistics) by factor; throughput follows."""
    timing = result.get("timing")
    if timing:
        scaled = Timing.from_samples(
            [s * factor for s in timing["step_s"]], timing["warmup"], timing["method"]
        )
        result["timing"] = scaled.to_dict()
        for key in ("samples_per_s", "tokens_per_s"):
            if result["throughput"].get(key) is not None:
                result["throughput"][key] /= factor
    return result


def mpbench(*argv: str) -> int:
    """Run an mpbench command in-process, as the console script does."""
    from bench.cli.main import main

    return main(list(argv))


@dataclass
class Ran:
    """What an mpbench command did: its exit code and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def cli(*argv: str, cwd: Path | None = None) -> Ran:
    """An mpbench command in this process, its output captured as a user would see it: the exit
    code the console script would exit with (argparse's own exits included), stdout and stderr.
    In-process: no interpreter to start and no torch to import again (seconds per command)."""
    from bench.cli.main import main

    stdout, stderr = io.StringIO(), io.StringIO()
    previous = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(list(argv))
            except SystemExit as exc:  # argparse: --help, bad flags
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.chdir(previous)
    return Ran(code, stdout.getvalue(), stderr.getvalue())


def mpbench_command() -> list[str]:
    """argv prefix that runs the mpbench CLI in a subprocess."""
    return [sys.executable, "-m", "bench"]


def load(path: Path) -> Run:
    """A fixture run read back."""
    return load_run(path)

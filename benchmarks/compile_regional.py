"""Eager vs whole-model torch.compile vs regional torch.compile (each repeated transformer block
compiled once, the graph reused for every layer): compile time and median step time side by
side, and how much cheaper regional compilation is to compile.

    python benchmarks/compile_regional.py [--model gpt2-124m] [--workload train]
        [--batch-size 1] [--seq-len 128] [--steps 10]

Each variant runs in a fresh process with its own empty TORCHINDUCTOR_CACHE_DIR, so every
compile is cold and none reuses another's kernels. Before the model, each process compiles a
two-line function forward and backward (`prime_s`, printed): the one-time cost of a process's
first compile (importing inductor and AOTAutograd, starting the compile workers) is paid once
per worker process in a sweep, not once per case, so it is charged to neither variant. It builds the model, the step and the
compilation the way `mpbench run --execution compiled` does (bench.engine.execution.Compiled,
bench.engine.workloads), in fp32. Not a test: the figures depend on the machine (and on whoever
else uses its CPU); the regional compile should be several times cheaper than the whole model's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This checkout's bench package, not an installed one.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ("eager", "model", "regional")


def measure(args: argparse.Namespace) -> dict[str, float | str | None]:
    """One variant in this process: the first call (compiling, for a compiled variant) and the
    median of the timed steps after three warm-up steps."""
    import contextlib

    import torch

    from bench.engine import workloads
    from bench.engine.execution import Compiled
    from bench.engine.suite import parse_suite

    prime_s = None
    if args.variant != "eager":
        started = time.perf_counter()
        x = torch.randn(8, 8, requires_grad=True)
        torch.compile(lambda t: (t.sin() * 2).sum())(x).backward()
        prime_s = time.perf_counter() - started
        torch.compiler.reset()
    suite = parse_suite(f'[sweep]\nmodels = ["{args.model}"]\n', "<benchmark>")
    spec = suite.model(args.model)
    model = spec.build(0)
    batch = workloads.make_batch(
        spec, args.workload, args.batch_size, args.seq_len, torch.device("cpu"), 0
    )
    blocks = None
    if args.variant == "eager":
        run_module = model
    else:
        execution = Compiled(args.variant)
        run_module = execution.wrap(model)
        blocks = execution.details().get("compiled_blocks")
    if args.workload == "train":
        model.train()
        optimizer = workloads.make_optimizer(model)
        step = workloads.train_step_fn(
            run_module,
            batch,
            optimizer,
            contextlib.nullcontext,
            None,
            kwargs=spec.family.forward_kwargs(),
        )
    else:
        model.eval()
        step = workloads.infer_step_fn(
            run_module, batch, contextlib.nullcontext, spec.family.forward_kwargs()
        )
    started = time.perf_counter()
    step()
    first_s = time.perf_counter() - started
    for _ in range(3):
        step()
    times_s = []
    for _ in range(args.steps):
        started = time.perf_counter()
        step()
        times_s.append(time.perf_counter() - started)
    median_s = statistics.median(times_s)
    return {
        "variant": args.variant,
        "first_call_s": first_s,
        "compile_s": None if args.variant == "eager" else first_s - median_s,
        "prime_s": prime_s,
        "median_step_s": median_s,
        "compiled_blocks": blocks,
    }


def main(argv: list[str] | None = None) -> int:
    """Run each variant in its own process and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2-124m")
    parser.add_argument("--workload", default="train", choices=("train", "infer"))
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="a comma list of eager, model, regional"
    )
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # the child's
    args = parser.parse_args(argv)
    if args.variant is not None:
        print(json.dumps(measure(args)))
        return 0
    rows = []
    variants = [v for v in args.variants.split(",") if v in VARIANTS]
    for variant in variants:
        with tempfile.TemporaryDirectory(prefix="mpbench-inductor-") as cache:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
            command = [sys.executable, __file__, *(argv or sys.argv[1:]), "--variant", variant]
            proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            print(f"{variant}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"  {variant} done", file=sys.stderr)
    shape = f"{args.model} {args.workload} fp32, batch {args.batch_size} x {args.seq_len}"
    print(f"{shape}, {args.steps} timed steps, cold inductor cache per variant")
    print(f"{'variant':10} {'compile s':>10} {'median step ms':>15} {'prime s':>8}  compiled")
    for row in rows:
        compile_s = "-" if row["compile_s"] is None else f"{row['compile_s']:.1f}"
        prime_s = "-" if row["prime_s"] is None else f"{row['prime_s']:.1f}"
        what = row["compiled_blocks"] or ("whole model" if row["variant"] == "model" else "-")
        step_ms = row["median_step_s"] * 1e3
        print(f"{row['variant']:10} {compile_s:>10} {step_ms:15.1f} {prime_s:>8}  {what}")
    by_variant = {row["variant"]: row["compile_s"] for row in rows}
    whole, regional = by_variant.get("model"), by_variant.get("regional")
    if whole and regional:
        print(f"compile time whole model / regional: {whole / regional:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""fp8 training numerics of GPT-2 124M on this machine: a few training steps of fp32, a second
fp32 run (the noise floor), bf16, fp8 (tensorwise) and fp8_rowwise from the same seeded weights
and batches, then each mode's loss divergence and first-step gradient SQNR against fp32 and
against bf16.

    python benchmarks/fp8_gpt2_124m_numerics.py [--steps 4] [--batch-size 2] [--seq-len 128]

Every pass is the numerics analyzer's own (bench.engine.numerics: the modes' `prepare`, the
deterministic pass context, the synthetic data) and every figure its metrics' own, so these are
the numbers a `mpbench run` of gpt2-124m would record, here with bf16 as a second reference. On a
CPU the fp8 modes run real float8 quantisation through torch's CPU `_scaled_mm`: the numerics are
real, the time they take is no fp8-hardware figure. Minutes on 2 CPU cores, several GiB of memory.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from bench.engine.device import resolve_device
from bench.engine.executors import quiet_transformers
from bench.engine.modes import PRECISION_MODES
from bench.engine.numerics import metrics
from bench.engine.numerics.analyzer import NumericsAnalyzer
from bench.engine.numerics.passes import TrainingTrace
from bench.engine.suite import parse_suite

MODES = ("bf16", "fp8", "fp8_rowwise")
SUITE = """\
[suite]
name = "fp8-gpt2-124m-numerics"
seed = 0

[sweep]
models = ["gpt2-124m"]
workloads = ["train"]
precisions = ["fp32", "bf16", "fp8", "fp8_rowwise"]
batch_sizes = [{batch_size}]
seq_lens = [{seq_len}]

[numerics]
train_steps = {steps}
"""


def compare(trace: TrainingTrace, reference: TrainingTrace) -> dict[str, float | None]:
    """Loss divergence and gradient SQNR of `trace` against `reference`."""
    div = metrics.loss_divergence(trace.loss, reference.loss)
    sqnr = metrics.grad_sqnr_db(reference.grads, trace.grads, reference.names)
    groups = {k: v for k, v in sqnr.items() if k != "overall" and v is not None}
    worst = min(groups, key=lambda k: groups[k]) if groups else None
    return {
        "max_rel_div": div["max_rel_div"],
        "final_rel_div": div["final_rel_div"],
        "grad_sqnr_db": sqnr["overall"],
        "worst_group": worst,
        "worst_group_sqnr_db": groups.get(worst) if worst else None,
    }


def fmt(value: float | None, spec: str) -> str:
    """A figure, or '-' when there is none."""
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else spec.format(value)
    )


def main(argv: list[str] | None = None) -> int:
    """Run the passes and print one table per reference."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="training steps per pass (4)")
    parser.add_argument("--batch-size", type=int, default=2, help="batch size (2)")
    parser.add_argument("--seq-len", type=int, default=128, help="sequence length (128)")
    args = parser.parse_args(argv)
    quiet_transformers()  # torchao's and transformers' import notices
    suite = parse_suite(
        SUITE.format(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len)
    )
    device = resolve_device()
    analyzer = NumericsAnalyzer(suite, device)
    spec = suite.model("gpt2-124m")
    print(
        f"gpt2-124m on {device.name}: {args.steps} steps, batch {args.batch_size}, "
        f"seq {args.seq_len}, torch {torch.__version__}"
    )
    traces: dict[str, TrainingTrace] = {}
    details: dict[str, dict] = {}
    for name in ("fp32", "fp32 repeat", *MODES):
        mode = PRECISION_MODES[name.split()[0]]
        reason = mode.unsupported_reason(device, "train")
        if reason:
            print(f"  {name:12} skipped: {reason}")
            continue
        started = time.perf_counter()
        traces[name] = analyzer.training_trace(spec, mode, name)
        details[name] = mode.prepare(analyzer.pristine_model(spec), device, "train").details
        loss = " ".join(f"{x:.4f}" for x in traces[name].loss)
        print(f"  {name:12} {time.perf_counter() - started:6.1f} s  loss {loss}")
    for name in MODES:
        d = details.get(name)
        if d:
            print(
                f"  {name}: {d['fp8_linear_layers']}/{d['linear_layers']} Linear layers in fp8 "
                f"({d['fp8_linear_parameters'] / 1e6:.1f}M of {d['linear_parameters'] / 1e6:.1f}M "
                f"parameters), {d['fp8_path']}"
            )
    for reference in ("fp32", "bf16"):
        if reference not in traces:
            continue
        print(f"\nvs {reference}:")
        print(
            f"  {'mode':12} {'max rel div':>12} {'final rel div':>14} {'grad SQNR':>10}  worst group"
        )
        others = [n for n in ("fp32 repeat", *MODES) if n in traces and n != reference]
        for name in others:
            row = compare(traces[name], traces[reference])
            print(
                f"  {name:12} {fmt(row['max_rel_div'], '{:.2e}'):>12} "
                f"{fmt(row['final_rel_div'], '{:.2e}'):>14} "
                f"{fmt(row['grad_sqnr_db'], '{:.1f} dB'):>10}  "
                f"{row['worst_group'] or '-'} {fmt(row['worst_group_sqnr_db'], '{:.1f} dB')}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Self-checks that print measured ratios (benchmarks, not tests: this machine is noisy).

    mpbench selfcheck overhead [--model gpt2-tiny] [--workload train] [--precision fp32]

`overhead`: mpbench's timed loop against a hand-written nanoGPT-style loop on the same model,
batch and precision in the same process, interleaved round by round so drift hits both alike
(METHODS rule 3). Each round's two blocks give one ratio; the median of those ratios is the
figure (target <= 1.03), with its IQR as the noise band.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any


def hand_written_loop(
    model: Any, batch: Any, optimizer: Any, device: Any, steps: int, train: bool
) -> list[float]:
    """The loop a person writes by hand: perf_counter around each step, synchronize before the
    clock is read (nanoGPT bench.py style)."""
    import torch

    times_s = []
    for _ in range(steps):
        t0 = time.perf_counter()
        if train:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode():
                model(**batch)
        device.synchronize()
        times_s.append(time.perf_counter() - t0)
    return times_s


def overhead(args: argparse.Namespace) -> float:
    """Print and return median(mpbench step) / median(hand-written step)."""
    from bench.engine.device import resolve_device
    from bench.engine.executors import quiet_transformers
    from bench.engine.runner import CaseRunner, measure_steps
    from bench.engine.suite import load_suite
    from bench.engine.workloads import make_batch, make_optimizer

    quiet_transformers()
    device = resolve_device(args.device)
    overrides = {
        "models": [args.model],
        "workloads": [args.workload],
        "precisions": [args.precision],
        "batch_sizes": [args.batch_size],
        "seq_lens": [args.seq_len],
    }
    suite = load_suite("smoke", overrides)
    case = suite.cases(device.name)[0]
    runner = CaseRunner(suite, device)
    mpbench_s: list[float] = []
    hand_s: list[float] = []
    round_ratios: list[float] = []
    with runner.prepare(case) as prepared:
        train = case.workload == "train"
        spec = suite.model(case.model)
        batch = make_batch(
            spec, case.workload, case.batch_size, case.seq_len, device.torch_device, 1
        )
        optimizer = make_optimizer(prepared.model) if train else None
        measure_steps(prepared.step, args.warmup, 2, device)  # warm both paths' allocations
        hand_written_loop(prepared.model, batch, optimizer, device, args.warmup, train)
        for round_index in range(args.rounds):
            # alternate which loop goes first, so neither always runs on a warmer machine
            order = ("mpbench", "hand") if round_index % 2 == 0 else ("hand", "mpbench")
            block: dict[str, list[float]] = {}
            for which in order:
                if which == "mpbench":
                    block[which], _ = measure_steps(prepared.step, 0, args.steps, device)
                else:
                    block[which] = hand_written_loop(
                        prepared.model, batch, optimizer, device, args.steps, train
                    )
            mpbench_s += block["mpbench"]
            hand_s += block["hand"]
            # Paired per round: the two blocks ran back to back, so machine drift (clock, noisy
            # neighbours) cancels in their ratio far better than in whole-run medians.
            round_ratios.append(
                statistics.median(block["mpbench"]) / statistics.median(block["hand"])
            )
    ratio = statistics.median(round_ratios)
    q1, _, q3 = statistics.quantiles(round_ratios, n=4)
    print(f"case: {case.id} on {device.name}; {args.rounds} rounds x {args.steps} steps each")
    print(f"mpbench median step:      {statistics.median(mpbench_s) * 1e3:9.3f} ms")
    print(f"hand-written median step: {statistics.median(hand_s) * 1e3:9.3f} ms")
    print(
        f"ratio of the medians:     {statistics.median(mpbench_s) / statistics.median(hand_s):.4f}"
    )
    print(
        f"median per-round ratio mpbench / hand-written: {ratio:.4f} "
        f"(IQR {q1:.4f}-{q3:.4f}; target <= 1.03)"
    )
    return ratio


def register(sub: Any) -> None:
    """Add `mpbench selfcheck` to the parser."""
    parser = sub.add_parser(
        "selfcheck",
        help="check mpbench's own measurement on this machine (prints measured ratios)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    checks = parser.add_subparsers(dest="check", metavar="CHECK", required=True)
    ov = checks.add_parser("overhead", help="mpbench's timed loop vs a hand-written loop")
    ov.add_argument("--model", default="gpt2-tiny")
    ov.add_argument("--workload", default="train", choices=["train", "infer"])
    ov.add_argument("--precision", default="fp32", choices=["fp32"])
    ov.add_argument("--batch-size", type=int, default=8)
    ov.add_argument("--seq-len", type=int, default=64)
    ov.add_argument("--device", default="auto")
    ov.add_argument("--rounds", type=int, default=16)
    ov.add_argument("--steps", type=int, default=6)
    ov.add_argument("--warmup", type=int, default=3)
    ov.set_defaults(handler=cmd_overhead)


def cmd_overhead(args: argparse.Namespace) -> int:
    """`mpbench selfcheck overhead`."""
    overhead(args)
    return 0

"""The pytest plugin and `mpbench run` measure the same case the same way: peak memory and
median step side by side, per case (a benchmark, not a test).

    python benchmarks/plugin_vs_run.py [--suite FILE]

`mpbench run --isolate none` runs the suite twice (an A/A pair: the noise) and `pytest
--mpbench-suite` once (it measures through the same CaseRunner.run, in one process, in the same
order). Per case it prints the peak and median ratios run2/run1 and plugin/run1: the plugin is
"the same within noise" when its ratios stay inside the spread of the A/A ratios. On a CPU the
peak is the resident set's high-water mark, which moves with what the allocator kept from
earlier cases; on a GPU the CUDA allocator's counters are exact.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.results.inputs import load_input

SUITE = """
[suite]
name = "plugin-vs-run"
seed = 0

[sweep]
models = ["gpt2-tiny", "bert-tiny"]
workloads = ["train", "infer"]
precisions = ["fp32", "amp_bf16", "bf16"]
batch_sizes = [4]
seq_lens = [64]

[timing]
warmup = 2
iterations = 10

[numerics]
enabled = false
"""


def main(argv: list[str] | None = None) -> int:
    """Run the suite both ways and print the side-by-side table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, help="suite file (default: a small built-in one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mpbench-plugin-vs-run-") as tmp:
        root = Path(tmp)
        suite = args.suite.resolve() if args.suite else root / "suite.toml"
        if not args.suite:
            suite.write_text(SUITE, encoding="utf-8")
        for name in ("run1", "run2"):
            subprocess.run(
                [sys.executable, "-m", "bench", "run", str(suite), "--out", str(root / name)]
                + ["--isolate", "none", "--no-report", "-q"],
                check=True,
            )
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--mpbench-suite"]
            + [str(suite), f"--benchmark-json={root / 'plugin.json'}"],
            check=True,
            cwd=root,
            capture_output=True,
        )
        first = {r.case.id: r for r in load_input(root / "run1", "run").results if r.ok}
        second = {r.case.id: r for r in load_input(root / "run2", "run").results}
        plugin = {r.case.id: r for r in load_input(root / "plugin.json", "plugin").results}
    print(
        f"{'case':38} {'peak run1':>10} {'run2/run1':>10} {'plugin/run1':>12}"
        f" {'median run2/run1':>17} {'plugin/run1':>12}"
    )
    aa, pr = [], []
    for case_id, base in first.items():
        aa.append(second[case_id].peak_bytes / base.peak_bytes)
        pr.append(plugin[case_id].peak_bytes / base.peak_bytes)
        print(
            f"{case_id:38} {base.peak_bytes / 2**20:9.1f}M {aa[-1]:10.3f} {pr[-1]:12.3f}"
            f" {second[case_id].median_s / base.median_s:17.3f}"
            f" {plugin[case_id].median_s / base.median_s:12.3f}"
        )
    methods = {r.memory.method for r in (*first.values(), *plugin.values())}
    summary = {
        "cases": len(pr),
        "peak_ratio_run2_vs_run1": [round(min(aa), 3), round(max(aa), 3)],
        "peak_ratio_plugin_vs_run1": [round(min(pr), 3), round(max(pr), 3)],
        "memory_methods": sorted(methods),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

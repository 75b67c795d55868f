"""An A/A pair: the same suite run twice back to back, then `mpbench check` of one against the
other. On a quiet, dedicated machine this passes; on a shared one, whole cases move by tens of
percent between runs and check rightly says so. That is why no unit test depends on it (CI
machines are noisy): this script reports what the gate sees here, for a human to read.

    python benchmarks/aa_check.py [SUITE] [--keep DIR]   # default: smoke, reduced

It prints, per case, the throughput change and its p-value, then check's verdict and exit code.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *argv], capture_output=True, text=True, check=False
    )


def main(argv: list[str] | None = None) -> int:
    """Two runs, one check; print the changes and the gate's answer."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", nargs="?", default="smoke")
    parser.add_argument("--keep", type=Path, help="keep both runs in this directory")
    args = parser.parse_args(argv)
    flags = ["--precisions", "fp32,amp_bf16", "--batch-sizes", "2", "--iterations", "20"]
    flags += ["--no-report", "-q"]
    with tempfile.TemporaryDirectory(prefix="mpbench-aa-") as tmp:
        root = args.keep or Path(tmp)
        for name in ("first", "second"):
            proc = run("run", args.suite, "--out", str(root / name), *flags)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
        report = root / "check.json"
        proc = run(
            "check", str(root / "second"), "--baseline", str(root / "first"), "--json", str(report)
        )
        data = json.loads(report.read_text()) if report.exists() else {}
    for case in data.get("comparison", {}).get("cases", []):
        delta = case["metrics"].get("throughput") or {}
        change = delta.get("change_pct")
        p = delta.get("p_value")
        print(
            f"{case['id']:42} throughput {change:+7.1f}%  p={p:.2g}"
            if change is not None and p is not None
            else f"{case['id']:42} {case['current_status']}"
        )
    print(
        f"check exit code {proc.returncode}: {proc.stdout.strip().splitlines()[-1] if proc.stdout else ''}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Regenerate tests/fixtures/smoke-run: a real run of the smoke suite, reduced to stay small.

    python benchmarks/make_report_fixture.py          # about a minute on 2 CPU cores

It runs `mpbench run` on the built-in smoke suite (both tiny models, train and infer, every
precision mode, batch sizes 2 and 4) with 1 warm-up and 4 timed steps and a 4-step numerics
pass, in this process's environment, and copies env.json, suite.toml and results.jsonl into the
fixture folder. Only the fields that name this machine or a temporary path are normalised
(hostname, argv, suite_source, git_commit, the suite's source comment); every measured number is as the engine wrote it. The
report tests render from it, so a change to the results schema or the engine's output shows up
there; re-run this script after such a change and commit the result.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "smoke-run"
SUITE = """\
# The built-in smoke suite, reduced for a committed test fixture (benchmarks/make_report_fixture.py).
[suite]
name = "smoke"
seed = 0

[sweep]
models = ["gpt2-tiny", "bert-tiny"]
workloads = ["train", "infer"]
precisions = ["fp32", "tf32", "amp_fp16", "amp_bf16", "bf16", "fp16", "fp8", "fp8_rowwise", "mxfp8"]
batch_sizes = [2, 4]
seq_lens = [64]

[timing]
warmup = 1
iterations = 4

[numerics]
train_steps = 4
seq_len = 16
"""


def main() -> int:
    """Run the reduced smoke suite and copy its run directory into the fixture."""
    with tempfile.TemporaryDirectory() as tmp:
        suite = Path(tmp) / "smoke.toml"
        suite.write_text(SUITE, encoding="utf-8")
        out = Path(tmp) / "run"
        command = [sys.executable, "-m", "bench", "run", str(suite), "--out", str(out)]
        command += ["--device", "cpu", "--isolate", "none", "--no-report", "-q"]
        subprocess.run(command, check=True, cwd=ROOT)
        env = json.loads((out / "env.json").read_text(encoding="utf-8"))
        env.update(
            hostname="fixture-host",
            argv=["mpbench", "run", "smoke.toml", "--device", "cpu", "--isolate", "none"],
            suite_source="smoke.toml",
            git_commit=None,
        )
        if FIXTURE.exists():
            shutil.rmtree(FIXTURE)
        FIXTURE.mkdir(parents=True)
        (FIXTURE / "env.json").write_text(json.dumps(env, indent=2) + "\n", encoding="utf-8")
        resolved = (out / "suite.toml").read_text(encoding="utf-8").split("\n", 1)[1]
        (FIXTURE / "suite.toml").write_text(
            "# resolved from smoke.toml (benchmarks/make_report_fixture.py)\n" + resolved,
            encoding="utf-8",
        )
        shutil.copy(out / "results.jsonl", FIXTURE / "results.jsonl")
    size = sum(p.stat().st_size for p in FIXTURE.iterdir())
    print(f"{FIXTURE}: {size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

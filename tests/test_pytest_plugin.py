"""The pytest plugin: inert without --mpbench-suite; with it, one pytest-benchmark test per case."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from runs import mpbench

from bench.integrations.pytest_plugin import ReplayClock, storage_per_device
from bench.results.inputs import load_input

TINY_SUITE = """
[suite]
name = "plugin-tiny"
seed = 0

[sweep]
models = ["gpt2-tiny"]
workloads = ["train", "infer"]
precisions = ["fp32", "tf32", "amp_bf16"]
batch_sizes = [2]
seq_lens = [16]

[timing]
warmup = 1
iterations = 8
max_warmup = 3

[numerics]
train_steps = 4
noise_floor = false
activations = false
"""
MEASURED = [
    "gpt2-tiny/train/fp32/bs2/seq16",
    "gpt2-tiny/train/amp_bf16/bs2/seq16",
    "gpt2-tiny/infer/fp32/bs2/seq16",
    "gpt2-tiny/infer/amp_bf16/bs2/seq16",
]


def plugin_args() -> list[str]:
    """Load the plugin explicitly until the pytest11 entry point is installed (loading it twice
    is an error)."""
    installed = any(
        ep.value == "bench.integrations.pytest_plugin" for ep in entry_points(group="pytest11")
    )
    return [] if installed else ["-p", "bench.integrations.pytest_plugin"]


def run_pytest(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest in a subprocess, in a directory of its own (no rootdir config from this repo), and
    not taken for a pytest-xdist worker when this run is one (pytest-benchmark turns itself off
    in xdist workers)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", *plugin_args(), "-p", "no:cacheprovider", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )


def test_importing_the_plugin_imports_no_torch() -> None:
    code = "import sys, bench.integrations.pytest_plugin; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_without_the_option_the_plugin_does_nothing(tmp_path: Path) -> None:
    (tmp_path / "test_plain.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    proc = run_pytest(tmp_path, "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout and "case[" not in proc.stdout
    help_text = run_pytest(tmp_path, "--help").stdout
    assert "--mpbench-suite" in help_text


def test_bad_suite_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_pytest(tmp_path, "--mpbench-suite", "nope.toml")
    assert proc.returncode == 4  # pytest's usage-error exit code
    assert "--mpbench-suite: nope.toml: no such suite file" in proc.stderr


def test_replay_clock_gives_each_round_exactly_one_engine_step() -> None:
    """pytest-benchmark reads the clock before and after each round: the difference is the
    engine's step time, bit for bit."""
    clock = ReplayClock()
    steps = [0.0123456789, 1e-7, 0.3]
    clock.load(steps)
    durations = []
    for _ in steps:
        start = clock()
        clock.advance()
        durations.append(clock() - start)
    assert durations == steps


def test_storage_per_device() -> None:
    assert (
        storage_per_device("file://./.benchmarks", "nvidia-h100")
        == "file://./.benchmarks/nvidia-h100"
    )
    assert storage_per_device("/data/bench/", "cpu-x") == "/data/bench/cpu-x"
    with pytest.raises(pytest.UsageError):
        storage_per_device("elasticsearch+https://host/index", "x")


@pytest.mark.slow
def test_suite_as_benchmarks_and_compare_fail(tmp_path: Path) -> None:
    """Collect, time and save a tiny suite; mpbench reads the JSON; a doctored faster baseline
    makes --benchmark-compare-fail fail the next run."""
    (tmp_path / "tiny.toml").write_text(TINY_SUITE)
    storage = tmp_path / "store"
    common = ["--mpbench-suite", "tiny.toml", f"--benchmark-storage=file://{storage}"]
    first = run_pytest(
        tmp_path,
        *common,
        "--mpbench-storage-per-device",
        "--benchmark-autosave",
        "--benchmark-save-data",
        "--benchmark-json",
        "out.json",
        "-rs",
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert "4 passed, 2 skipped" in first.stdout
    assert "tf32 needs" in first.stdout  # skipped with the engine's reason

    data = json.loads((tmp_path / "out.json").read_text())
    benches = {b["param"]: b for b in data["benchmarks"]}
    assert sorted(benches) == sorted(MEASURED)
    bench = benches["gpt2-tiny/train/fp32/bs2/seq16"]
    assert bench["fullname"] == "tiny.toml::case[gpt2-tiny/train/fp32/bs2/seq16]"
    assert bench["group"] == "gpt2-tiny/train/bs2/seq16"
    assert bench["stats"]["rounds"] == 8 and len(bench["stats"]["data"]) == 8
    extra = bench["extra_info"]
    assert extra["case_id"] == "gpt2-tiny/train/fp32/bs2/seq16"
    assert extra["samples_per_s"] == pytest.approx(2 / bench["stats"]["median"])
    assert extra["peak_bytes"] > 0 and extra["numerics_verdict"] == "ok"
    # The engine's result, whole: pytest-benchmark's samples are its step times, exactly.
    result = extra["mpbench_result"]
    assert result["timing"]["step_s"] == bench["stats"]["data"]
    assert result["timing"]["method"] == "perf-counter"
    assert result["memory"]["method"] in ("vmhwm", "rss-sampled")
    (read_back,) = [
        r for r in load_input(tmp_path / "out.json", "X").results if r.case.id == bench["param"]
    ]
    assert read_back.to_dict() == result
    mp = data["machine_info"]["mpbench"]
    assert mp["device"] == "cpu" and mp["suite"] == "plugin-tiny" and "temperature_c" not in mp

    # mpbench reads pytest-benchmark JSON like a run directory.
    assert mpbench("compare", str(tmp_path / "out.json"), str(tmp_path / "out.json")) == 0

    # Storage is keyed by device; make the saved run twice as fast, then compare against it.
    (saved,) = storage.glob("cpu-*/*/0001_*.json")
    doc = json.loads(saved.read_text())
    for b in doc["benchmarks"]:
        stats = b["stats"]
        for key in (
            "min",
            "max",
            "mean",
            "median",
            "q1",
            "q3",
            "ld15iqr",
            "hd15iqr",
            "stddev",
            "iqr",
            "total",
        ):
            stats[key] = stats[key] / 2
        stats["data"] = [v / 2 for v in stats["data"]]
        stats["ops"] *= 2
    saved.write_text(json.dumps(doc))
    second = run_pytest(
        tmp_path,
        *common,
        "--mpbench-storage-per-device",
        "--benchmark-compare=0001",
        "--benchmark-compare-fail=median:5%",
    )
    assert second.returncode != 0, second.stdout
    assert "Performance has regressed" in second.stdout + second.stderr

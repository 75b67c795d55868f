"""The command line: exit codes, messages without tracebacks, and the run directory it writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from runs import cli as mpbench  # in this process: a user's view, without an interpreter start


def test_run_writes_env_suite_and_results(tiny_suite_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = mpbench(
        "run",
        str(tiny_suite_path),
        "--out",
        str(out),
        "--models",
        "gpt2-tiny",
        "--precisions",
        "fp32,tf32",
        "--batch-sizes",
        "2",
        "--no-report",
        "--isolate",
        "none",  # worker processes are tests/test_reliability.py's
    )
    assert proc.returncode == 0, proc.stderr
    env = json.loads((out / "env.json").read_text())
    assert env["device"] == "cpu" and env["versions"]["torch"]
    assert env["cpu"]["torch_threads"] >= 1
    assert 'precisions = ["fp32", "tf32"]' in (out / "suite.toml").read_text()
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["case"]["id"], r["status"]) for r in lines] == [
        ("gpt2-tiny/train/fp32/bs2/seq16", "ok"),
        ("gpt2-tiny/train/tf32/bs2/seq16", "skipped"),
        ("gpt2-tiny/infer/fp32/bs2/seq16", "ok"),
        ("gpt2-tiny/infer/tf32/bs2/seq16", "skipped"),
    ]
    assert "[1/4] gpt2-tiny/train/fp32/bs2/seq16: ok" in proc.stderr  # progress lines in logs


def test_run_refuses_to_overwrite_results(tiny_suite_path: Path, tmp_path: Path) -> None:
    (tmp_path / "results.jsonl").write_text("")
    proc = mpbench("run", str(tiny_suite_path), "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "already holds results.jsonl" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "missing.toml"], "missing.toml: no such suite file"),
        (
            ["run", "smoke", "--precisions", "fp32,fp64"],
            "--precisions: must be a non-empty list from",
        ),
        (
            ["run", "smoke", "--batch-sizes", "0"],
            "--batch-sizes: must be a non-empty list of positive integers; got 0",
        ),
        (
            ["run", "smoke", "--batch-sizes", "two"],
            "argument --batch-sizes: expected comma-separated integers, got 'two'",
        ),
        (
            ["run", "smoke", "--seq-lens", "100000"],
            "100000 is longer than gpt2-tiny's 256 positions",
        ),
        (["run", "smoke", "--models", "gpt3"], "sweep.models[0]: model 'gpt3' is not a preset"),
        (["run", "smoke", "--device", "tpu"], "--device: 'tpu' is not valid"),
        (["run", "smoke", "--iterations", "1"], "--iterations: must be an integer >= 2; got 1"),
        (["run", "smoke", "--bogus"], "unrecognized arguments: --bogus"),
        (["run", "smoke", "--memory-limit", "inf"], "--memory-limit: needs a positive GiB figure"),
        (["run", "smoke", "--case-timeout", "nan"], "--case-timeout: must be a positive number"),
        (["run", "smoke", "--out", "/proc/version/x"], "cannot create the run directory"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(
    args: list[str], message: str, tmp_path: Path
) -> None:
    proc = mpbench(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "reports").exists()  # nothing ran


def test_bad_suite_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[sweep]\nmodels = ["gpt2-tiny"]\nbatch_sizes = [1, -4]\n')
    proc = mpbench("run", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"mpbench: error: {bad}: sweep.batch_sizes: must be a non-empty list of positive integers; got -4"
    )


def test_list_shows_support_and_reasons() -> None:
    proc = mpbench("list", "--device", "cpu")
    assert proc.returncode == 0
    assert "amp_bf16" in proc.stdout and "supported" in proc.stdout
    assert (
        "tf32 needs a CUDA GPU" in proc.stdout.replace("\n", " ").replace("│", " ")
        or "tf32 needs" in proc.stdout
    )
    assert "gpt2-124m" in proc.stdout and "bert-large" in proc.stdout


def test_env_prints_json() -> None:
    proc = mpbench("env", "--device", "cpu")
    env = json.loads(proc.stdout)
    assert env["device"] == "cpu" and env["gpu"] is None
    assert set(env["versions"]) >= {"python", "torch", "transformers", "mpbench"}


def test_help_lists_the_commands() -> None:
    """`python -m bench`, the real entry point, in a process of its own."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--help"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0
    for command in ("run", "list", "env"):
        assert command in proc.stdout


def test_bad_checkpoint_directories_exit_2_without_traceback(tmp_path: Path) -> None:
    import torch

    from bench.engine.models import PRESETS

    not_model = tmp_path / "not-model"
    not_model.mkdir()
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5"}))
    pickled = tmp_path / "pickled"
    PRESETS["gpt2-tiny"].config().save_pretrained(pickled)
    torch.save({}, pickled / "pytorch_model.bin")
    cases = {
        str(tmp_path / "missing"): "no such checkpoint directory",
        str(not_model): "not a model directory (no config.json)",
        str(t5): "model_type 't5' is neither a causal nor a masked",
        str(pickled): "mpbench loads safetensors only (never arbitrary pickle)",
        "someorg/some-model": "mpbench never downloads",
    }
    for model, message in cases.items():
        proc = mpbench("run", "smoke", "--models", model, cwd=tmp_path)
        assert proc.returncode == 2, (model, proc.stderr)
        assert message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_run_with_a_local_checkpoint(tmp_path: Path) -> None:
    from bench.engine.models import PRESETS

    ckpt = tmp_path / "my-gpt"
    PRESETS["gpt2-tiny"].build(seed=5).save_pretrained(ckpt, safe_serialization=True)
    out = tmp_path / "run"
    proc = mpbench(
        "run",
        "smoke",
        "--models",
        str(ckpt),
        "--workloads",
        "infer",
        "--precisions",
        "fp32",
        "--batch-sizes",
        "1",
        "--seq-lens",
        "16",
        "--out",
        str(out),
        "--no-report",
        "--isolate",
        "none",
    )
    assert proc.returncode == 0, proc.stderr
    (line,) = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert line["case"]["id"] == "my-gpt/infer/fp32/bs1/seq16" and line["status"] == "ok"
    assert line["case"]["family"] == "gpt2"

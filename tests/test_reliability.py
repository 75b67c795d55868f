"""Reliability: isolated workers, crashes, hangs, OOM, interrupts, resume, torn results lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faults import default_sigint
from runs import cli

from bench.engine.oom import OomLimits
from bench.engine.suite import load_suite
from bench.results.rundir import load_run
from bench.results.schema import CaseResult, Timing

TESTS_DIR = Path(__file__).parent


def with_fault(fault: str) -> dict[str, str]:
    """Environment that makes the worker kill or hang itself on one case (tests/faults.py)."""
    path = os.pathsep.join(p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH")) if p)
    return {
        "MPBENCH_RUNNER_FACTORY": "faults:faulty_runner",
        "MPBENCH_TEST_FAULT": fault,
        "PYTHONPATH": path,
    }


SUITE = """
[suite]
name = "rel"

[sweep]
models = ["gpt2-tiny"]
workloads = ["train", "infer"]
precisions = ["fp32", "amp_bf16"]
batch_sizes = [1, 2]
seq_lens = [16]

[timing]
warmup = 1
iterations = 2

[numerics]
enabled = false
"""


@pytest.fixture
def suite_path(tmp_path: Path) -> Path:
    path = tmp_path / "rel.toml"
    path.write_text(SUITE)
    return path


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        preexec_fn=default_sigint,
    )


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = start(*args, env=env)
    stdout, stderr = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def statuses(out: Path) -> dict[str, str]:
    return {r.case.id: r.status for r in load_run(out).results}


@pytest.mark.slow
def test_sigkilled_worker_is_crashed_and_the_sweep_goes_on(
    suite_path: Path, tmp_path: Path
) -> None:
    victim = "gpt2-tiny/train/amp_bf16/bs1/seq16"
    out = tmp_path / "run"
    proc = run(
        str(suite_path),
        "--out",
        str(out),
        "--no-report",
        env=with_fault(f"kill:{victim}"),
    )
    assert proc.returncode == 0, proc.stderr
    got = statuses(out)
    assert len(got) == 8
    assert got.pop(victim) == "crashed"
    assert set(got.values()) == {"ok"}
    crashed = next(r for r in load_run(out).results if r.case.id == victim)
    assert crashed.reason == "worker killed by SIGKILL during the case"


@pytest.mark.slow
def test_hung_case_times_out_and_the_sweep_goes_on(suite_path: Path, tmp_path: Path) -> None:
    victim = "gpt2-tiny/infer/fp32/bs1/seq16"
    out = tmp_path / "run"
    proc = run(
        str(suite_path),
        "--out",
        str(out),
        "--no-report",
        "--case-timeout",
        "8",  # a tiny case takes well under a second, its model's first one a few
        "--workloads",
        "infer",
        env=with_fault(f"hang:{victim}"),
    )
    assert proc.returncode == 0, proc.stderr
    got = statuses(out)
    assert got.pop(victim) == "timeout"
    assert set(got.values()) == {"ok"} and len(got) == 3


@pytest.mark.slow
def test_memory_cap_gives_oom_then_larger_batches_are_predicted(tmp_path: Path, suite_path) -> None:
    out = tmp_path / "run"
    proc = run(
        str(suite_path),
        "--out",
        str(out),
        "--no-report",
        "--workloads",
        "train",
        "--precisions",
        "fp32",
        "--batch-sizes",
        "1,512,1024",
        "--seq-lens",
        "64",
        "--memory-limit",
        "0.75",
    )
    assert proc.returncode == 0, proc.stderr
    results = {r.case.batch_size: r for r in load_run(out).results}
    assert results[1].status == "ok"
    assert results[512].status == "oom"
    assert "allocate" in results[512].reason
    assert results[1024].status == "oom"
    assert results[1024].reason.startswith("predicted, not run: batch size 512")


def test_oom_prediction_can_be_turned_off() -> None:
    suite = load_suite("smoke")
    cases = [
        c
        for c in suite.cases("cpu")
        if c.precision == "fp32" and c.model == "gpt2-tiny" and c.workload == "train"
    ]
    small, large = cases
    limits = OomLimits(enabled=True)
    limits.record(CaseResult(small, "oom", "CUDA out of memory"))
    assert limits.predict(large).status == "oom"
    assert OomLimits(enabled=False).predict(large) is None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code", "isolate"),
    [(signal.SIGINT, 130, "model"), (signal.SIGTERM, 143, "model"), (signal.SIGTERM, 143, "none")],
)
def test_interrupt_keeps_finished_cases_and_resume_completes(
    suite_path: Path, tmp_path: Path, sig, code, isolate
) -> None:
    """The fourth case hangs (tests/faults.py), so the signal always lands mid-case."""
    out = tmp_path / "run"
    fourth = "gpt2-tiny/train/amp_bf16/bs2/seq16"
    proc = start(
        str(suite_path), "--out", str(out), "--isolate", isolate, env=with_fault(f"hang:{fourth}")
    )
    results = out / "results.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if results.exists() and len(results.read_text().splitlines()) >= 3:
            break
        time.sleep(0.1)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    assert f"mpbench run --resume {out}" in stderr
    finished = statuses(out)
    assert len(finished) == 3 and fourth not in finished
    assert set(finished.values()) == {"ok"}
    assert (out / "index.html").exists()

    again = cli("run", "--resume", str(out), "--no-report", "--isolate", "none")
    assert again.returncode == 0, again.stderr
    full = [c.id for c in load_suite(suite_path).cases("cpu")]
    ids = [r.case.id for r in load_run(out).results]
    assert sorted(ids) == sorted(full)  # every case exactly once


def test_resume_refuses_a_different_suite(suite_path: Path, tmp_path: Path) -> None:
    """In this process: resuming is about the run directory, not about worker processes."""
    out = tmp_path / "run"
    first = cli(
        "run", str(suite_path), "--out", str(out), "--no-report", "--workloads", "infer",
        "--batch-sizes", "1", "--isolate", "none",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    proc = cli("run", "--resume", str(out), str(suite_path), "--batch-sizes", "4")
    assert proc.returncode == 2
    assert "differs from the one this run started with" in proc.stderr
    done = cli("run", "--resume", str(out), "--no-report", "--isolate", "none")
    assert done.returncode == 0 and "resuming (2 done, 0 to go)" in done.stderr.replace("\n", " ")


def test_resume_after_a_torn_last_line(suite_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = cli(
        "run", str(suite_path), "--out", str(out), "--no-report", "--workloads", "infer",
        "--batch-sizes", "1", "--isolate", "none",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:40])  # power cut
    proc = cli("run", "--resume", str(out), "--no-report", "--isolate", "none")
    assert proc.returncode == 0, proc.stderr
    assert "results.jsonl:2: truncated last line" in proc.stderr
    run_back = load_run(out)
    assert any("results.jsonl:2: unreadable line" in w for w in run_back.warnings)
    assert sorted(r.case.id for r in run_back.results) == sorted(
        c.id for c in load_suite(out / "suite.toml").cases("cpu")
    )
    json.loads((out / "results.jsonl").read_text().splitlines()[-1])  # appended lines are whole


def fake_probe(limit: int, calls: list[int]):
    """A run_case whose batches fit up to `limit`, recording which batch sizes were tried."""

    def run_case(case):
        calls.append(case.batch_size)
        if case.batch_size <= limit:
            return CaseResult(case, "ok", timing=Timing.from_samples([0.01], 0, "perf-counter"))
        return CaseResult(case, "oom", "out of memory")

    return run_case


@pytest.mark.parametrize("limit", [1, 2, 5, 24, 90, 100, 1023])
def test_find_max_batch_doubles_then_bisects(limit: int) -> None:
    from bench.engine.maxbatch import find_max_batch

    template = load_suite("smoke").cases("cpu")[0]
    calls: list[int] = []
    cap = 100 if limit <= 100 else 1024  # a cap that is not a power of two is probed too
    found = find_max_batch(fake_probe(limit, calls), template, cap=cap)
    assert found.max_batch_size == limit
    assert found.limit_reached == (limit == cap)
    assert len(calls) <= 2 * limit.bit_length() + 1  # logarithmic, not a linear scan
    assert [p["batch_size"] for p in found.probes] == calls


def test_find_max_batch_cap_and_nothing_fits() -> None:
    from dataclasses import asdict

    from bench.analysis.maxbatch import max_batch_report
    from bench.engine.maxbatch import find_max_batch

    template = load_suite("smoke").cases("cpu")[0]
    capped = find_max_batch(fake_probe(10_000, []), template, cap=64)
    assert (capped.max_batch_size, capped.limit_reached) == (64, True)
    none = find_max_batch(fake_probe(0, []), template, cap=64)
    assert none.max_batch_size is None
    report = max_batch_report([capped], cap=64, finished=True)
    assert report.rows[0].vs_fp32 == 1.0
    # max_batch.json: each search's fields as found, then its ratio.
    (row,) = report.to_dict()["results"]
    assert list(row) == [*asdict(capped), "vs_fp32"]
    assert {k: row[k] for k in asdict(capped)} == asdict(capped)


def test_max_batch_ratios_are_against_fp32_at_the_same_shape() -> None:
    from bench.analysis.maxbatch import max_batch_rows
    from bench.engine.maxbatch import MaxBatch

    found = [
        MaxBatch("m", "train", "fp32", 64, 8, False),
        MaxBatch("m", "train", "bf16", 64, 20, False),
        MaxBatch("m", "train", "fp16", 64, None, False, "skipped: no GPU"),
        MaxBatch("m", "train", "bf16", 128, 4, False),  # no fp32 at seq 128
    ]
    assert [r.vs_fp32 for r in max_batch_rows(found)] == [1.0, 2.5, None, None]


def test_an_interrupted_max_batch_search_writes_the_finished_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    from bench.cli.run import _find_max_batch
    from bench.engine import maxbatch

    found = [maxbatch.MaxBatch("m", "train", "fp32", 64, 8, False, None, [])]
    monkeypatch.setattr(
        maxbatch, "search_max_batch", lambda *a, **k: maxbatch.MaxBatchOutcome(130, found)
    )
    device = type("FakeDevice", (), {"name": "cpu"})()
    console = Console(record=True, width=200)
    assert _find_max_batch(None, device, tmp_path, None, 64, console) == 130
    data = json.loads((tmp_path / "max_batch.json").read_text())
    assert (data["cap"], data["finished"]) == (64, False)
    assert data["results"] == [
        {
            "model": "m",
            "workload": "train",
            "precision": "fp32",
            "seq_len": 64,
            "max_batch_size": 8,
            "limit_reached": False,
            "reason": None,
            "probes": [],
            "vs_fp32": 1.0,
        }
    ]
    assert "interrupted" in console.export_text()


@pytest.mark.slow
def test_find_max_batch_end_to_end_with_a_memory_cap(suite_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run(
        str(suite_path),
        "--out",
        str(out),
        "--find-max-batch",
        "--workloads",
        "train",
        "--precisions",
        "fp32",
        "--seq-lens",
        "64",
        "--memory-limit",
        "0.4",  # a few small batches fit (each probe is cheap), batch 32 does not
        "--max-batch-cap",
        "64",
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "max_batch.json").read_text())
    (row,) = data["results"]
    assert 1 <= row["max_batch_size"] < 64  # the memory cap binds before the search limit
    statuses_seen = {p["status"] for p in row["probes"]}
    assert statuses_seen == {"ok", "oom"}


def test_cuda_errors_that_poison_the_context_replace_the_worker() -> None:
    from bench.engine.executors import poisons_context

    case = load_suite("smoke").cases("cpu")[0]
    sticky = CaseResult(
        case, "error", "RuntimeError: CUDA error: an illegal memory access was encountered"
    )
    assert poisons_context(sticky)
    assert not poisons_context(CaseResult(case, "error", "ValueError: bad shape"))
    assert not poisons_context(CaseResult(case, "oom", "CUDA out of memory"))


@pytest.mark.slow
@pytest.mark.parametrize("isolate", ["none", "case"])
def test_other_isolation_modes_run_the_same_cases(
    suite_path: Path, tmp_path: Path, isolate: str
) -> None:
    out = tmp_path / "run"
    proc = run(
        str(suite_path),
        "--out",
        str(out),
        "--no-report",
        "--isolate",
        isolate,
        "--workloads",
        "infer",
        "--batch-sizes",
        "1",
    )
    assert proc.returncode == 0, proc.stderr
    assert statuses(out) == {
        "gpt2-tiny/infer/fp32/bs1/seq16": "ok",
        "gpt2-tiny/infer/amp_bf16/bs1/seq16": "ok",
    }
    assert ("worker process(es) started" in proc.stderr) == (isolate == "case")
    if isolate == "case":
        assert "2 worker process(es) started" in proc.stderr

"""Progress that tells the truth about long work: phases reach the display from a worker
process, steps are throttled, and a log (not a terminal) hears about long cases."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from rich.console import Console
from tiny import TINY_SUITE

from bench.engine.device import Device
from bench.engine.executors import ExecutionOptions, make_executor
from bench.engine.progress import Throttled
from bench.engine.suite import load_suite
from bench.results.schema import Case, CaseResult
from bench.views import progress as progress_view

CPU = Device(torch.device("cpu"))


def test_throttled_passes_new_phases_and_last_steps_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [0.0]
    monkeypatch.setattr("bench.engine.progress.time.monotonic", lambda: now[0])
    seen: list[tuple] = []
    phase = Throttled(lambda *p: seen.append(p), interval_s=1.0)
    phase("timed", 1, 100)
    for step in range(2, 100):
        phase("timed", step, 100)  # no time passes: dropped
    now[0] = 1.5
    phase("timed", 100, 100)
    phase("numerics: fp32 reference", 1, 30)
    assert seen == [("timed", 1, 100), ("timed", 100, 100), ("numerics: fp32 reference", 1, 30)]


def test_a_worker_sends_its_phases_before_its_result(tmp_path: Path) -> None:
    (tmp_path / "tiny.toml").write_text(TINY_SUITE)
    suite = load_suite(tmp_path / "tiny.toml", {"models": ["gpt2-tiny"], "precisions": ["fp32"]})
    executor = make_executor(ExecutionOptions(isolate="model"), suite, CPU, tmp_path)
    seen: list[tuple] = []
    try:
        result = executor.run(suite.cases("cpu")[0], lambda *p: seen.append(p))
    finally:
        executor.close()
    assert result.ok
    names = [name for name, _, _ in seen]
    assert names[0] == "building" and ("timed", 3, 3) in seen
    assert "numerics: fp32 reference" in names  # the first case of a model pays for references


def test_a_log_hears_about_a_long_case(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    now = [100.0]
    monkeypatch.setattr(progress_view.time, "monotonic", lambda: now[0])
    console = Console(file=io.StringIO(), force_terminal=False)
    case = Case("gpt2-124m", "gpt2", "train", "amp_bf16", 2, 128, "cpu")
    shown = progress_view.RichProgress(console)
    with shown:
        shown.sweep_started("standard", "cpu", Path("reports/x"), 3, 0)
        shown.case_started(case)
        shown.phase(case, "building", None, None)
        now[0] += 20
        shown.phase(case, "numerics: fp32 reference", 5, 30)
        shown.phase(case, "numerics: fp32 reference", 6, 30)  # same phase: no new line
        now[0] += 200
        shown.phase(case, "numerics: fp64 reference", 1, 30)
        result = CaseResult(case, "error", "RuntimeError: boom")
        shown.case_finished(case, result)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "mpbench: suite standard (3 cases) on cpu -> reports/x",
        f"  {case.id}: numerics: fp32 reference 5/30 (20 s into the case)",
        f"  {case.id}: numerics: fp64 reference 1/30 (220 s into the case)",
        f"[1/3] {case.id}: error: RuntimeError: boom",
    ]

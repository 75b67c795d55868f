"""`mpbench check` (the CI gate), baselines, JUnit output and the suite's [check] table."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from runs import (
    A100,
    H100,
    Ran,
    cli,
    edit_results,
    fixture_cases,
    make_env,
    mpbench,
    scale_timing,
    write_run,
)

from bench.analysis.assessment import assess
from bench.analysis.compare import compare_runs
from bench.analysis.compatibility import compatibility
from bench.analysis.thresholds import (
    CheckConfig,
    config_from_table,
    parse_threshold_flag,
    validate_table,
)
from bench.errors import SuiteError
from bench.results.identity import DeviceIdentity
from bench.results.inputs import load_input
from bench.results.rundir import load_run

SUITE_WITH_CHECK = """
[suite]
name = "fixture"

[sweep]
models = ["gpt2-tiny"]

[check]
throughput = -30
"""


@pytest.fixture
def base_run(tmp_path: Path) -> Path:
    """A GPU run of 12 ok cases."""
    return write_run(tmp_path / "base")


def copy_run(run: Path, dest: Path) -> Path:
    """A copy of a run directory, to edit."""
    shutil.copytree(run, dest)
    return dest


# ---------------------------------------------------------------------------------------------
# The gate end to end (in process)
# ---------------------------------------------------------------------------------------------


def test_run_against_itself_passes(base_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert mpbench("check", str(base_run), "--baseline", str(base_run)) == 0
    assert "PASS: no regression" in capsys.readouterr().out


def test_baseline_20_percent_faster_fails_and_names_the_cases(
    base_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The baseline's throughput is 20% higher (step times / 1.2): every case regressed."""
    faster = copy_run(base_run, tmp_path / "faster")
    edit_results(faster, lambda r: scale_timing(r, 1 / 1.2))
    junit = tmp_path / "junit.xml"
    code = mpbench("check", str(base_run), "--baseline", str(faster), "--junit", str(junit))
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL: 12 case(s) regressed" in out
    for case in fixture_cases():
        assert case.id in out
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("tests") == "12" and suite.get("failures") == "12"
    failure = suite.find("testcase/failure")
    assert failure is not None and "throughput -16.7%" in failure.get("message")


def test_small_slowdown_under_threshold_passes(base_run: Path, tmp_path: Path) -> None:
    """3% slower is significant with 12 samples but under the 5% default threshold."""
    slower = copy_run(base_run, tmp_path / "slower")
    edit_results(slower, lambda r: scale_timing(r, 1.03))
    assert mpbench("check", str(slower), "--baseline", str(base_run)) == 0
    assert (
        mpbench("check", str(slower), "--baseline", str(base_run), "--threshold", "throughput=-2")
        == 1
    )


def test_ok_to_oom_fails(
    base_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    current = copy_run(base_run, tmp_path / "cur")
    victim = fixture_cases()[4].id

    def oom(r: dict[str, Any]) -> dict[str, Any]:
        if r["case"]["id"] != victim:
            return r
        return {
            **r,
            "status": "oom",
            "reason": "CUDA out of memory",
            "timing": None,
            "throughput": None,
        }

    edit_results(current, oom)
    assert mpbench("check", str(current), "--baseline", str(base_run)) == 1
    out = capsys.readouterr().out
    assert victim in out and "ok -> oom" in out


def edit_numerics(run: Path, victim: str, numerics: Any) -> None:
    """Replace the numerics of one case (numerics: a dict, or None for none at all)."""
    edit_results(run, lambda r: {**r, "numerics": numerics} if r["case"]["id"] == victim else r)


@pytest.mark.parametrize("verdict", ["warn", "diverged", "nan"])
def test_verdict_change_for_the_worse_fails(
    base_run: Path, tmp_path: Path, verdict: str, capsys: pytest.CaptureFixture[str]
) -> None:
    current = copy_run(base_run, tmp_path / "cur")
    victim = fixture_cases()[1].id  # amp_bf16 with numerics
    edit_numerics(current, victim, {"verdict": verdict, "reasons": ["for the test"]})
    assert mpbench("check", str(current), "--baseline", str(base_run)) == 1
    assert f"numerics verdict ok -> {verdict}" in capsys.readouterr().out


def test_errored_numerics_fail(
    base_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A numerics pass that broke in CURRENT is a regression, though no verdict got worse."""
    current = copy_run(base_run, tmp_path / "cur")
    victim = fixture_cases()[1].id
    edit_numerics(current, victim, {"verdict": None, "error": "RuntimeError: boom"})
    assert mpbench("check", str(current), "--baseline", str(base_run)) == 1
    out = capsys.readouterr().out
    assert "numerics pass errored: RuntimeError: boom" in out and victim in out


def test_missing_numerics_fail_unless_turned_off_on_purpose(
    base_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    current = copy_run(base_run, tmp_path / "cur")
    edit_results(current, lambda r: {**r, "numerics": None})
    assert mpbench("check", str(current), "--baseline", str(base_run)) == 1
    assert "numerics missing in CURRENT" in capsys.readouterr().out
    # The same run, but its suite says so: numerics are not gated, and the output says why.
    (current / "suite.toml").write_text(
        '[sweep]\nmodels = ["gpt2-tiny"]\n[numerics]\nenabled = false\n'
    )
    assert mpbench("check", str(current), "--baseline", str(base_run)) == 0
    assert "numerics not gated: CURRENT's suite turned them off" in capsys.readouterr().out
    # Or the flag, with numerics on in the suite.
    (current / "suite.toml").unlink()
    assert mpbench("check", str(current), "--baseline", str(base_run), "--ignore-numerics") == 0
    assert "numerics not gated: --ignore-numerics" in capsys.readouterr().out


def test_numerics_without_a_verdict_fail(
    base_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """CURRENT's pass ran but judged nothing (its fp32 reference went non-finite): worse."""
    current = copy_run(base_run, tmp_path / "cur")
    victim = fixture_cases()[1].id
    numerics = {"verdict": None, "reasons": ["fp32 baseline went non-finite at step 3"]}
    edit_numerics(current, victim, numerics)
    assert mpbench("check", str(current), "--baseline", str(base_run)) == 1
    out = capsys.readouterr().out
    assert "numerics gave no verdict in CURRENT (BASE: ok): fp32 baseline went non-finite" in out


def test_no_case_in_common_is_an_input_error(
    base_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = write_run(tmp_path / "other", fixture_cases(models=["gpt2-small"]))
    assert mpbench("check", str(other), "--baseline", str(base_run)) == 2
    assert "no case in common" in capsys.readouterr().err


def test_timings_from_different_methods_are_refused(
    base_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    current = copy_run(base_run, tmp_path / "cur")
    edit_results(current, lambda r: {**r, "timing": {**r["timing"], "method": "pytest-benchmark"}})
    assert mpbench("check", str(current), "--baseline", str(base_run)) == 2
    assert "timed by different methods" in capsys.readouterr().err


def test_missing_case_fails_and_new_case_does_not(base_run: Path, tmp_path: Path) -> None:
    cases = fixture_cases()
    missing = copy_run(base_run, tmp_path / "missing")
    edit_results(missing, lambda r: None if r["case"]["id"] == cases[0].id else r)
    assert mpbench("check", str(missing), "--baseline", str(base_run)) == 1
    # The other way round, the case is new in CURRENT: listed, not a regression.
    assert mpbench("check", str(base_run), "--baseline", str(missing)) == 0


def test_improvement_fails_only_when_asked(base_run: Path, tmp_path: Path) -> None:
    faster = copy_run(base_run, tmp_path / "faster")
    edit_results(faster, lambda r: scale_timing(r, 0.7))
    assert mpbench("check", str(faster), "--baseline", str(base_run)) == 0
    assert mpbench("check", str(faster), "--baseline", str(base_run), "--fail-on-improvement") == 1


def test_suite_check_table_sets_the_thresholds(tmp_path: Path) -> None:
    """CURRENT's suite.toml says throughput = -30: a 20% drop passes; a flag overrides it."""
    base = write_run(tmp_path / "base", suite_toml=SUITE_WITH_CHECK)
    current = copy_run(base, tmp_path / "cur")
    edit_results(current, lambda r: scale_timing(r, 1.25))
    assert mpbench("check", str(current), "--baseline", str(base)) == 0
    assert (
        mpbench("check", str(current), "--baseline", str(base), "--threshold", "throughput=10") == 1
    )


def test_cpu_runs_default_to_a_wider_timing_threshold(tmp_path: Path) -> None:
    """20% slower fails on a GPU (default -10%) and passes on a CPU (default -30%)."""
    for env, expected in ((make_env(A100), 1), (make_env(None), 0)):
        base = write_run(tmp_path / f"base-{expected}", env=env)
        current = copy_run(base, tmp_path / f"cur-{expected}")
        edit_results(current, lambda r: scale_timing(r, 1.25))
        assert mpbench("check", str(current), "--baseline", str(base)) == expected


def test_different_gpu_is_refused_unless_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = write_run(tmp_path / "a100", env=make_env(A100))
    current = write_run(tmp_path / "h100", env=make_env(H100))
    assert mpbench("check", str(current), "--baseline", str(base)) == 2
    err = capsys.readouterr().err
    assert "different GPU model" in err and "--allow-device-mismatch" in err
    assert len(err.strip().splitlines()) == 1
    assert mpbench("check", str(current), "--baseline", str(base), "--allow-device-mismatch") == 0


def test_driver_and_torch_changes_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = write_run(tmp_path / "old", env=make_env(A100))
    new_gpu = {**A100, "driver": "560.28.03"}
    current = write_run(tmp_path / "new", env=make_env(new_gpu, torch="2.14.0"))
    md = tmp_path / "summary.md"
    assert mpbench("check", str(current), "--baseline", str(base), "--markdown", str(md)) == 0
    out = capsys.readouterr().out
    assert "driver changed: BASE 550.54.15, CURRENT 560.28.03" in out
    assert "torch changed: BASE 2.13.0, CURRENT 2.14.0" in out
    assert "⚠️ driver changed" in md.read_text()


def test_compatibility_of_cpu_runs() -> None:
    cpu = DeviceIdentity.from_env(make_env(None))
    other = DeviceIdentity.from_env(
        {**make_env(None), "cpu": {"model": "Intel Xeon", "torch_threads": 16}}
    )
    assert compatibility(cpu, cpu).same_device
    assert "different CPU model" in compatibility(cpu, other).mismatches[0]
    gpu = DeviceIdentity.from_env(make_env(A100))
    assert not compatibility(cpu, gpu).same_device


# ---------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------


def test_baseline_save_and_pick_by_device(
    base_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "baselines"
    assert mpbench("baseline", "save", str(base_run), "--to", str(store)) == 0
    saved = store / "nvidia-a100-sxm4-40gb.json"
    assert saved.is_file() and str(saved) in capsys.readouterr().out
    data = json.loads(saved.read_text())
    assert data["env"]["gpu"]["driver"] == A100["driver"]
    assert all(r["timing"]["step_s"] for r in data["results"])
    # check --baseline DIR picks the file for CURRENT's device.
    assert mpbench("check", str(base_run), "--baseline", str(store)) == 0
    slower = copy_run(base_run, tmp_path / "slower")
    edit_results(slower, lambda r: scale_timing(r, 1.2))
    assert mpbench("check", str(slower), "--baseline", str(store)) == 1
    # No baseline for an H100 in the directory: an input error naming what is there.
    h100 = write_run(tmp_path / "h100", env=make_env(H100))
    assert mpbench("check", str(h100), "--baseline", str(store)) == 2
    err = capsys.readouterr().err
    assert "no baseline for NVIDIA H100 80GB HBM3" in err and "nvidia-a100-sxm4-40gb.json" in err
    # A baseline file reads as a run anywhere a run is accepted.
    assert len(load_input(saved, "BASE").results) == 12
    assert mpbench("baseline", "list", str(store)) == 0
    assert "NVIDIA A100-SXM4-40GB" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Bad input: exit 2, one line, no traceback
# ---------------------------------------------------------------------------------------------


def run_cli(*argv: str) -> Ran:
    """The CLI with its output captured: exactly what a CI log would show."""
    return cli(*argv)


def test_corrupt_and_missing_inputs_exit_2_with_one_line(base_run: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"mpbench_baseline": 1, "results": [')
    garbage_run = tmp_path / "garbage"
    garbage_run.mkdir()
    (garbage_run / "results.jsonl").write_text("not json\n{also not\n")
    bad_env = copy_run(base_run, tmp_path / "bad-env")
    (bad_env / "env.json").write_text("{")
    cases = [
        ("check", str(base_run), "--baseline", str(corrupt)),
        ("check", str(base_run), "--baseline", str(tmp_path / "nope")),
        ("check", str(garbage_run), "--baseline", str(base_run)),
        ("check", str(bad_env), "--baseline", str(base_run)),
        ("compare", str(base_run), str(tmp_path / "nope.json")),
    ]
    for argv in cases:
        proc = run_cli(*argv)
        assert proc.returncode == 2, (argv, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mpbench: error: "), proc.stderr
        assert "Traceback" not in proc.stderr
    assert "not valid JSON" in run_cli(*cases[0]).stderr
    assert "no such run directory or file" in run_cli(*cases[1]).stderr


def test_bad_threshold_flag_is_a_usage_error(base_run: Path) -> None:
    proc = run_cli("check", str(base_run), "--baseline", str(base_run), "--threshold", "speed=5")
    assert proc.returncode == 2 and "expected METRIC=PERCENT" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_documents_the_exit_codes() -> None:
    proc = run_cli("check", "--help")
    assert proc.returncode == 0
    assert "0  no regression" in proc.stdout and "1  regression" in proc.stdout
    assert "2  usage or input error" in proc.stdout


# ---------------------------------------------------------------------------------------------
# The [check] table and --threshold
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"throughputt": -5}, "check.throughputt: unknown key (did you mean 'throughput'?)"),
        ({"step_time": -5}, "check.step_time: -5: a step_time regression is a rise"),
        ({"peak_memory": -5}, "check.peak_memory: -5: a peak_memory regression is a rise"),
        ({"divergence": "50%"}, "check.divergence: must be a percentage"),
        ({"alpha": 2}, "check.alpha: must be a p-value between 0 and 1"),
        ({"memory_floor_mib": -1}, "check.memory_floor_mib: must be a non-negative number"),
        ({"fail_on_improvement": "yes"}, "check.fail_on_improvement: must be true or false"),
    ],
)
def test_validate_table_names_the_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(SuiteError) as info:
        validate_table(table, "suites/ci.toml")
    assert str(info.value).startswith("suites/ci.toml: ") and message in str(info.value)


def test_valid_table_and_suite_integration() -> None:
    validate_table({"throughput": -5, "peak_memory": False, "alpha": 0.01}, "x.toml")
    config = config_from_table({"throughput": -7, "peak_memory": False, "memory_floor_mib": 4}, "x")
    assert config.thresholds_pct["throughput"] == 7 and config.thresholds_pct["peak_memory"] is None
    assert config.options.memory_floor_bytes == 4 * 2**20


def test_run_refuses_a_bad_check_table_before_running(tmp_path: Path) -> None:
    """`mpbench run` validates [check] up front (the engine itself never reads it)."""
    suite = tmp_path / "s.toml"
    suite.write_text('[sweep]\nmodels = ["gpt2-tiny"]\n[check]\nspeed = 1\n')
    proc = run_cli("run", str(suite), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2 and "s.toml: check.speed: unknown key" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_parse_threshold_flag() -> None:
    assert parse_threshold_flag("throughput=-5") == ("throughput", 5.0)
    assert parse_threshold_flag("throughput=5%") == ("throughput", 5.0)
    assert parse_threshold_flag("peak-memory=10") == ("peak_memory", 10.0)
    assert parse_threshold_flag("divergence=off") == ("divergence", None)
    assert parse_threshold_flag("throughput=7") == ("throughput", 7.0)
    with pytest.raises(ValueError, match="regression is a rise"):
        parse_threshold_flag("step_time=-5")


def test_assess_without_samples_uses_the_threshold_alone(tmp_path: Path) -> None:
    """pytest-benchmark files saved without data: a change beyond the threshold still counts."""
    base = write_run(tmp_path / "base")
    current = copy_run(base, tmp_path / "cur")
    edit_results(base, lambda r: {**r, "timing": {**r["timing"], "step_s": []}})
    edit_results(current, lambda r: scale_timing(r, 1.5))
    edit_results(current, lambda r: {**r, "timing": {**r["timing"], "step_s": []}})
    result = assess(compare_runs(load_run(base), load_run(current)), CheckConfig())
    assert result.failed
    assert "significance not tested" in result.regressions[0].message


# ---------------------------------------------------------------------------------------------
# Energy and stability
# ---------------------------------------------------------------------------------------------


def with_energy(joules_per_sample: float) -> Any:
    """An edit that gives every ok case an NVML energy figure."""

    def edit(r: dict[str, Any]) -> dict[str, Any]:
        if r["status"] != "ok":
            return r
        telemetry = {"method": "nvml-energy-counter", "energy_per_sample_j": joules_per_sample}
        return {**r, "telemetry": telemetry}

    return edit


def test_energy_is_compared_but_gated_only_on_request(
    base_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = copy_run(base_run, tmp_path / "base-energy")
    edit_results(base, with_energy(0.50))
    hungrier = copy_run(base_run, tmp_path / "hungrier")
    edit_results(hungrier, with_energy(0.60))  # 20% more energy per sample, same speed
    assert mpbench("check", str(hungrier), "--baseline", str(base)) == 0  # off by default
    comparison = compare_runs(load_run(base), load_run(hungrier))
    delta = comparison.matched[0].metrics["energy"]
    assert delta.change_pct == pytest.approx(20.0) and delta.significant and delta.worse_pct > 0
    capsys.readouterr()
    assert mpbench("check", str(hungrier), "--baseline", str(base), "--threshold", "energy=10") == 1
    assert "energy +20.0% (0.5 J/sample -> 0.6 J/sample" in capsys.readouterr().out
    # A change within the noise of power draw (under 2%) is not significant.
    close = copy_run(base_run, tmp_path / "close")
    edit_results(close, with_energy(0.505))
    assert mpbench("check", str(close), "--baseline", str(base), "--threshold", "energy=0.5") == 0


def test_check_names_cases_with_unstable_timing(
    base_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shaky = copy_run(base_run, tmp_path / "shaky")
    victim = fixture_cases()[2].id

    def unstable(r: dict[str, Any]) -> dict[str, Any]:
        if r["case"]["id"] != victim:
            return r
        return {**r, "timing": {**r["timing"], "robust_cv": 0.14, "cv": 0.2, "unstable": True}}

    edit_results(shaky, unstable)
    assert mpbench("check", str(shaky), "--baseline", str(base_run)) == 0  # a note, not a failure
    out = capsys.readouterr().out
    assert "unstable timing in CURRENT (robust CV 14%, CV 20%)" in out and victim in out


def test_check_names_host_bound_cases(
    base_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    waiting = copy_run(base_run, tmp_path / "waiting")
    victim = fixture_cases()[2].id

    def host_bound(r: dict[str, Any]) -> dict[str, Any]:
        if r["case"]["id"] != victim:
            return r
        return {**r, "timing": {**r["timing"], "gpu_busy_fraction": 0.42}}

    edit_results(waiting, host_bound)
    assert mpbench("check", str(waiting), "--baseline", str(base_run)) == 0  # a note only
    out = capsys.readouterr().out
    assert "host-bound in CURRENT (GPU busy 42%)" in out and victim in out

"""Data-parallel training (bench.engine.parallel): case ids, suites, one line per case from every
rank's result, scaling efficiency, and real torchrun launches with gloo on 2 CPU processes
(ddp and fsdp, reduce dtypes with their numerics, a rank killed mid-case, Ctrl-C)."""

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
from runs import one_case_suite

from bench.analysis.summary import analyze
from bench.engine import parallel, supervisor
from bench.engine.suite import load_suite, parse_suite
from bench.errors import SuiteError
from bench.results.rundir import load_run
from bench.results.schema import Case, CaseResult, Memory, Throughput, Timing

TESTS_DIR = Path(__file__).parent
REPO = TESTS_DIR.parent

SUITE = (
    one_case_suite("dp")
    + """
[timing]
warmup = 1
iterations = 3
max_warmup = 3

[numerics]
train_steps = 4
seq_len = 16
"""
)


def ddp_case(precision: str = "fp32", reduce: str = "fp32", world: int = 2, **kw) -> Case:
    return Case(
        "gpt2-tiny", "gpt2", "train", precision, 4, 64, "cpu", parallel="ddp",
        world_size=world, reduce_dtype=reduce, **kw,
    )  # fmt: skip


# -- ids, schema, suites ------------------------------------------------------------------------


def test_parallel_case_ids_and_modes() -> None:
    assert ddp_case().id == "gpt2-tiny/train/fp32/bs4/seq64/ddp2"
    assert (
        ddp_case("amp_bf16", "bf16", 4).id == "gpt2-tiny/train/amp_bf16/bs4/seq64/ddp4/reduce-bf16"
    )
    assert ddp_case(execution="compiled").id.endswith("/ddp2/compiled")
    assert ddp_case("bf16", "fp16").mode == "bf16 ddp2 reduce-fp16"
    assert ddp_case("bf16", "fp16").numerics_key == "bf16 ddp2 reduce-fp16"
    single = Case("gpt2-tiny", "gpt2", "train", "fp32", 4, 64, "cpu")
    assert single.id == "gpt2-tiny/train/fp32/bs4/seq64" and single.layout == ""
    assert "parallel" not in single.to_dict()  # single-device lines are unchanged


def test_parallel_case_round_trips_and_bad_fields_are_named() -> None:
    case = ddp_case("amp_bf16", "bf16")
    assert Case.from_dict(case.to_dict()) == case
    bad = {**case.to_dict(), "reduce_dtype": "fp8"}
    with pytest.raises(Exception, match="reduce_dtype"):
        Case.from_dict(bad)
    missing = {k: v for k, v in case.to_dict().items() if k != "world_size"}
    with pytest.raises(Exception, match="world_size"):
        Case.from_dict(missing)


def test_suite_parallel_table_expands_training_cases_only() -> None:
    text = SUITE.replace('workloads = ["train"]', 'workloads = ["train", "infer"]')
    text += '\n[parallel]\nstrategy = "fsdp"\nreduce_dtypes = ["fp32", "bf16"]\n'
    suite = parse_suite(text, "dp.toml")
    ids = [c.id for c in suite.cases("cpu", world_size=4)]
    assert ids == [
        "gpt2-tiny/train/fp32/bs2/seq16/fsdp4",
        "gpt2-tiny/train/fp32/bs2/seq16/fsdp4/reduce-bf16",
        "gpt2-tiny/infer/fp32/bs2/seq16",
    ]
    assert parse_suite(suite.to_toml()).fingerprint() == suite.fingerprint()
    # Off, the suite and its hash are what they were before [parallel] existed.
    plain = parse_suite(SUITE)
    assert "[parallel]" not in plain.to_toml()
    with pytest.raises(SuiteError, match=r"dp.toml: parallel.strategy: must be one of"):
        parse_suite(SUITE + '\n[parallel]\nstrategy = "tp"\n', "dp.toml")
    with pytest.raises(SuiteError, match="--reduce-dtypes"):
        plain.with_parallel("ddp", ["fp8"])


def test_torchrun_command_of_a_nproc_launch() -> None:
    """Every rank gets its device kind and the collectives' timeout on the command line (the
    process group needs them before rank 0 can tell it anything); the suite is the run's."""
    cmd = supervisor.torchrun_command(2, Path("o"), "cuda", 300.0)
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    assert cmd[6:] == [
        "-m", "bench.engine.rankworker", "--run-dir", "o", "--device", "cuda",
        "--case-timeout", "300",
    ]  # fmt: skip


def test_launch_from_torchrun_environment(monkeypatch) -> None:
    torchrun_env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "TORCHELASTIC_RUN_ID": "x"}
    for key, value in torchrun_env.items():
        monkeypatch.setenv(key, value)
    here = parallel.Launch.from_env()
    assert (here.rank, here.world_size, here.local_rank, here.launched) == (1, 2, 1, True)
    assert not here.leader
    assert parallel.rank_device("auto", here) == "cpu"  # no GPU here
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")  # RANK/WORLD_SIZE from another launcher: ignored
    assert parallel.Launch.from_env() == parallel.Launch()


# -- one line per case ----------------------------------------------------------------------------


def rank_result(
    step_s: list[float], peak: int, comm: float, case: Case | None = None
) -> CaseResult:
    case = case or ddp_case()
    return CaseResult(
        case,
        "ok",
        timing=Timing.from_samples(step_s, 2, "perf-counter"),
        throughput=Throughput.from_median(4, 64, sorted(step_s)[1]),
        memory=Memory(peak, None, "vmhwm"),
        losses=(2.0, 1.0),
        details={"comm_s_per_step": comm, "comm_method": "profiler"},
        wall_s=1.0,
    )


def test_combine_ranks_keeps_the_slowest_rank_per_step_and_every_rank() -> None:
    case = ddp_case()
    ranks = [rank_result([1.0, 3.0, 2.0], 100, 0.5), rank_result([2.0, 1.0, 2.5], 160, 0.7)]
    ranks[1] = ranks[1].replace(losses=(4.0, 3.0))
    one = parallel.combine_ranks(case, ranks, "gloo", 0.1)
    assert one.timing.step_s == (2.0, 3.0, 2.5)
    assert one.timing.median_s == 2.5
    assert one.throughput.samples_per_s == pytest.approx(8 / 2.5)  # 4 per rank x 2 ranks
    assert one.throughput.tokens_per_s == pytest.approx(8 * 64 / 2.5)
    assert one.memory.peak_bytes == 160
    assert one.losses == (3.0, 2.0)  # the global batch's: mean over ranks
    info = one.details["parallel"]
    assert info["per_rank_step_s"] == [[1.0, 3.0, 2.0], [2.0, 1.0, 2.5]]
    assert info["per_rank_peak_bytes"] == [100, 160] and info["peak_bytes_spread"] == 60
    assert info["comm_s_per_step"] == 0.7 and info["backend"] == "gloo"
    assert info["world_size"] == 2 and info["strategy"] == "ddp"
    assert "comm_s_per_step" not in one.details  # kept once, in details.parallel
    again = CaseResult.from_dict(json.loads(json.dumps(one.to_dict())))
    assert again.details["parallel"] == info


def test_combine_ranks_reports_the_worst_rank() -> None:
    case = ddp_case()
    ok = rank_result([1.0, 1.0, 1.0], 1, 0.1)
    oom = CaseResult(case, "oom", "OutOfMemoryError: no")
    crashed = CaseResult(case, "crashed", "worker gone")
    one = parallel.combine_ranks(case, [ok, oom, crashed], "gloo", None)
    assert (one.status, one.reason) == ("crashed", "rank 2: worker gone")


def test_scaling_efficiency_against_the_one_rank_case() -> None:
    one_rank = rank_result([1.0, 1.0, 1.0], 1, 0.0, ddp_case(world=1))  # 4 samples/s
    two = rank_result([1.25, 1.25, 1.25], 1, 0.0)
    two = parallel.combine_ranks(two.case, [two, two], "gloo", None)  # 8 / 1.25 = 6.4
    rows = {row.id: row for row in analyze([one_rank, two]).rows}
    assert rows[two.case.id].scaling_efficiency == pytest.approx(6.4 / (2 * 4.0))
    assert rows[two.case.id].speedup == pytest.approx(1.0)  # vs fp32 ddp2 itself
    # Without a one-rank case there is nothing to scale against.
    assert all(row.scaling_efficiency is None for row in analyze([two]).rows)


# -- in one process: a one-rank group -----------------------------------------------------------


@pytest.mark.slow
def test_ddp1_and_fsdp1_run_without_torchrun(tmp_path: Path) -> None:
    """`--parallel` without torchrun: a one-rank gloo group in this process (scaling baseline)."""
    for strategy in ("ddp", "fsdp"):
        out = tmp_path / strategy
        proc = mpbench("run", suite_file(tmp_path), "--parallel", strategy, "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        (result,) = load_run(out).results
        assert result.case.id == f"gpt2-tiny/train/fp32/bs2/seq16/{strategy}1"
        assert result.ok and result.numerics["verdict"] == "ok"
        assert result.details["parallel"]["world_size"] == 1


# -- torchrun, 2 processes, gloo -------------------------------------------------------------------


def suite_file(tmp_path: Path, numerics: bool = True) -> str:
    """SUITE in a file; `numerics=False` for the fault tests, which judge no numerics (each
    case's pass would add its fp32 reference and repeat on both ranks)."""
    path = tmp_path / "dp.toml"
    path.write_text(SUITE if numerics else without_numerics(SUITE))
    return str(path)


def without_numerics(text: str) -> str:
    """A suite text with its numerics pass off."""
    return text.split("[numerics]")[0] + "[numerics]\nenabled = false\n"


def mpbench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return subprocess.run(
        [*cmd, "-m", "bench", *args], capture_output=True, text=True, timeout=600, cwd=REPO
    )


@pytest.mark.slow
def test_torchrun_ddp_run_from_the_issue(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    proc = torchrun(
        "run", "suites/smoke.toml", "--models", "gpt2-tiny", "--workloads", "train",
        "--precisions", "fp32,amp_bf16", "--batch-sizes", "4", "--seq-lens", "64",
        "--parallel", "ddp", "--out", str(out), "--iterations", "3", "--warmup", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2  # one line per case, never one per rank
    assert (out / "index.html").exists()
    run = load_run(out)
    assert [r.case.id for r in run.results] == [
        "gpt2-tiny/train/fp32/bs4/seq64/ddp2",
        "gpt2-tiny/train/amp_bf16/bs4/seq64/ddp2",
    ]
    assert run.env["world_size"] == 2 and run.env["backend"] == "gloo"
    for result in run.results:
        assert result.ok, result.reason
        info = result.details["parallel"]
        assert len(info["per_rank_step_s"]) == 2 and all(
            len(s) == 3 for s in info["per_rank_step_s"]
        )
        assert len(info["per_rank_peak_bytes"]) == 2 and info["peak_bytes_spread"] is not None
        assert info["comm_s_per_step"] > 0 and "gloo" in info["comm_method"]
        # The slowest rank per step:
        assert list(result.timing.step_s) == [max(s) for s in zip(*info["per_rank_step_s"])]
        assert result.throughput.samples_per_s == pytest.approx(8 / result.timing.median_s)
        assert result.details["comm_hook"].startswith("none")
    assert run.results[1].numerics["verdict"] in ("ok", "warn")


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "low"), [("fsdp", "amp_bf16"), ("ddp", "bf16")])
def test_torchrun_reduce_dtypes_with_verdicts(tmp_path: Path, strategy: str, low: str) -> None:
    """fsdp: MixedPrecisionPolicy(reduce_dtype); ddp: the communication hooks, bf16 weights
    reduced in fp32 through mpbench's upcast hook."""
    out = tmp_path / strategy
    proc = torchrun(
        "run", suite_file(tmp_path), "--precisions", f"fp32,{low}", "--parallel", strategy,
        "--reduce-dtypes", "fp32,bf16,fp16", "--out", str(out), "--no-report",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r.case.id: r for r in load_run(out).results}
    assert len(results) == 6 and all(r.ok for r in results.values()), results
    base = f"gpt2-tiny/train/fp32/bs2/seq16/{strategy}2"
    assert results[base].numerics["max_rel_div"] == 0  # fp32 against its fp32-reduce repeat
    for dtype in ("bf16", "fp16"):
        numerics = results[f"{base}/reduce-{dtype}"].numerics
        assert numerics["verdict"] in ("ok", "warn", "diverged")
        assert numerics["loss"] != numerics["baseline_loss"]  # the reduction changed something
        assert numerics["grad_sqnr_db"]["overall"] < 200
        assert numerics["reduce"]["reduce_dtype"] == dtype and numerics["reduce"]["verdict"]
        mixed = results[f"gpt2-tiny/train/{low}/bs2/seq16/{strategy}2/reduce-{dtype}"].numerics
        assert mixed["reduce"]["against"].startswith(f"{low}, gradients reduced in fp32")
    details = {r.case.reduce_dtype: r.details for r in results.values() if r.case.precision == low}
    if strategy == "fsdp":
        assert details["fp32"]["mp_policy_reduce_dtype"] == "fp32"
        # FSDP2's usual recipe: amp's fp32 master weights all-gathered in bf16.
        assert details["fp32"]["mp_policy_param_dtype"] == "bfloat16"
    else:
        assert details["fp32"]["comm_hook"].startswith("fp32 upcast")
        assert details["bf16"]["comm_hook"].startswith("none")  # bf16 already
        assert details["fp16"]["comm_hook"] == "fp16_compress_hook"


def processes_naming(out: Path) -> list[int]:
    """Live processes whose command line names this run directory (torchrun, its ranks),
    wherever they were re-parented."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not _not_zombie(int(entry.name)):
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if str(out).encode() in cmdline:
            found.append(int(entry.name))
    return found


VICTIM = "gpt2-tiny/train/amp_bf16/bs2/seq16/ddp2"  # the second case of the fault tests


def fault_env(fault: str) -> dict[str, str]:
    """Rank 1 kills or hangs itself when VICTIM starts (tests/faults.py)."""
    return {
        "MPBENCH_RUNNER_FACTORY": "faults:faulty_runner",
        "MPBENCH_TEST_FAULT": f"{fault}-rank1:{VICTIM}",
        "PYTHONPATH": os.pathsep.join(filter(None, (str(TESTS_DIR), os.environ.get("PYTHONPATH")))),
    }


@pytest.mark.slow
def test_a_killed_then_a_hung_rank_crash_and_time_out_their_cases_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    # One launch for both faults (each costs a torchrun launch and a timeout: about 35 s apiece
    # as two tests): rank 1 dies in the second case, hangs in the third.
    out = tmp_path / "faults"
    hung = "gpt2-tiny/train/bf16/bs2/seq16/ddp2"
    env = {
        **fault_env("kill"),
        "MPBENCH_TEST_FAULT": f"kill-rank1:{VICTIM};hang-rank1:{hung}",
    }
    proc = mpbench(
        "run", suite_file(tmp_path, numerics=False), "--precisions", "fp32,amp_bf16,bf16,amp_fp16",
        "--parallel", "ddp", "--nproc", "2", "--case-timeout", "5", "--out", str(out), env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # torchrun logs the rank's death and its own stop (tracebacks); after the timed-out case,
    # nothing.
    assert "[3/4]" in proc.stderr and "Traceback" not in proc.stderr.split("[3/4]")[-1]
    results = load_run(out).results
    assert [(r.case.id, r.status) for r in results] == [
        ("gpt2-tiny/train/fp32/bs2/seq16/ddp2", "ok"),  # before them: intact
        (VICTIM, "crashed"),
        (hung, "timeout"),  # a fresh launch after the crash
        ("gpt2-tiny/train/amp_fp16/bs2/seq16/ddp2", "ok"),  # and one after the timeout
    ]
    assert "timed out" in results[2].reason.lower() or "timeout" in results[2].reason
    assert len((out / "results.jsonl").read_text().splitlines()) == 4
    assert not list(out.glob("inflight*"))
    assert (out / "index.html").exists()
    assert processes_naming(out) == []


@pytest.mark.slow
def test_ctrl_c_stops_torchrun_and_leaves_no_process(tmp_path: Path) -> None:
    out = tmp_path / "interrupted"
    env = {**os.environ, **fault_env("hang")}
    cmd = [sys.executable, "-m", "bench", "run", suite_file(tmp_path, False), "--precisions"]
    cmd += ["fp32,amp_bf16", "--parallel", "ddp", "--nproc", "2", "--out", str(out)]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
        preexec_fn=default_sigint,
    )
    deadline = time.monotonic() + 300
    while not _lines(out):  # the first case is done: rank 1 hangs in the second
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert len(processes_naming(out)) >= 3  # torchrun and its two ranks
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert [r.case.id for r in load_run(out).results] == ["gpt2-tiny/train/fp32/bs2/seq16/ddp2"]
    assert processes_naming(out) == []


def _lines(out: Path) -> int:
    try:
        return len((out / "results.jsonl").read_text().splitlines())
    except OSError:
        return 0


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_torchrun_without_parallel_is_refused(tmp_path: Path) -> None:
    proc = mpbench("run", suite_file(tmp_path), "--nproc", "2", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2
    assert "--parallel ddp|fsdp" in proc.stderr and "Traceback" not in proc.stderr


def test_load_suite_with_parallel_flags_keeps_numerics() -> None:
    suite = load_suite(str(REPO / "suites" / "smoke.toml")).with_parallel("ddp", ["bf16"])
    assert suite.parallel.reduce_dtypes == ("bf16",)
    assert suite.tables.get("numerics") is not None


# -- GPU paths, through fakes at the narrowest boundary --------------------------------------------


def test_each_gpu_rank_takes_its_local_gpu(monkeypatch) -> None:
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    rank1 = parallel.Launch(rank=1, world_size=2, local_rank=1, launched=True)
    assert parallel.rank_device("auto", rank1) == "cuda:1"
    assert parallel.rank_device("cuda", rank1) == "cuda:1"
    assert parallel.rank_device("cpu", rank1) == "cpu"
    with pytest.raises(Exception, match="LOCAL_RANK"):
        parallel.rank_device("cuda:0", rank1)
    assert parallel.rank_device("cuda:0", parallel.Launch()) == "cuda:0"  # not launched


class _FakeEvent:
    def __init__(self, name: str, device_type: object, elapsed_us: float) -> None:
        self.name, self.device_type = name, device_type
        self.time_range = type("Range", (), {"elapsed_us": lambda _self: elapsed_us})()


def test_collective_time_counts_nccl_kernels_not_their_launches(monkeypatch) -> None:
    from torch.autograd import DeviceType

    events = [
        _FakeEvent("nccl:all_reduce", DeviceType.CPU, 900.0),  # the launch, on the CPU
        _FakeEvent("ncclDevKernel_AllReduce_Sum_f32_RING_LL", DeviceType.CUDA, 300.0),
        _FakeEvent("ncclDevKernel_AllReduce_Sum_f32_RING_LL", DeviceType.CUDA, 300.0),
        _FakeEvent("ampere_sgemm_128x64_tn", DeviceType.CUDA, 5000.0),
    ]

    class FakeProfile:
        def __init__(self, activities: list) -> None:
            self.activities = activities

        def __enter__(self) -> FakeProfile:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def events(self) -> list:
            return events

    monkeypatch.setattr("torch.profiler.profile", FakeProfile)
    gpu = type("FakeGpu", (), {"is_cuda": True, "synchronize": lambda self: None})()
    steps = []
    seconds, method = parallel.collective_time_s(lambda: steps.append(1), gpu, steps=2)
    assert len(steps) == 2
    assert seconds == pytest.approx(600e-6 / 2) and "NCCL kernel" in method


@pytest.mark.slow
def test_out_of_memory_on_one_rank_is_recorded_as_oom(tmp_path: Path) -> None:
    """Rank 1 fails alone (as one GPU running out of memory would): it leaves its result and
    exits; rank 0's collectives fail; the case is `oom` with rank 1's reason, and larger batches
    of it are then predicted to run out too."""
    out = tmp_path / "oom"
    text = without_numerics(SUITE).replace("batch_sizes = [2]", "batch_sizes = [2, 4]")
    (tmp_path / "dp.toml").write_text(text)
    env = fault_env("oom")
    proc = mpbench(
        "run", str(tmp_path / "dp.toml"), "--precisions", "amp_bf16", "--parallel", "ddp",
        "--nproc", "2", "--out", str(out), "--no-report", env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r.case.id: r for r in load_run(out).results}
    assert list(results) == [VICTIM, "gpt2-tiny/train/amp_bf16/bs4/seq16/ddp2"]
    assert results[VICTIM].status == "oom"
    assert results[VICTIM].reason.startswith("rank 1: OutOfMemoryError: injected")
    bigger = results["gpt2-tiny/train/amp_bf16/bs4/seq16/ddp2"]
    assert bigger.status == "oom" and "predicted" in bigger.reason
    assert not list(out.glob("inflight*"))
    assert processes_naming(out) == []


def test_fsdp_on_a_torch_without_fsdp2_is_skipped_with_the_reason(monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def without_fsdp2(name: str, *args: object, **kwargs: object) -> object:
        if name == "torch.distributed.fsdp":
            raise ImportError("no FSDP2 here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_fsdp2)
    fsdp = ddp_case().__class__(**{**ddp_case().__dict__, "parallel": "fsdp"})
    assert "torch >= 2.6" in parallel.unsupported_reason(fsdp)
    assert parallel.unsupported_reason(ddp_case()) is None

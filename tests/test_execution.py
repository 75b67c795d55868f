"""Execution as a case dimension (eager, compiled, graphs): ids and old results read back, the
suite key and the flags (with their old names), regional compilation, the CUDA-graph capture
through a fake torch.cuda, the gates, like-with-like speedups and the execution gains (every
view shows them alike: tests/test_views_agree.py), the history store's migration."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from runs import make_env, one_case_suite, write_run

from bench.analysis.summary import analyze
from bench.cli.main import main
from bench.engine import estimate
from bench.engine.device import Device
from bench.engine.execution import (
    GRAPH_WARMUP_STEPS,
    Compiled,
    Eager,
    GraphedStep,
    Graphs,
    execution_for,
    repeated_blocks,
)
from bench.engine.runner import skip_reason
from bench.engine.suite import parse_suite
from bench.errors import ResultsError, SuiteError
from bench.results.history import HistoryStore
from bench.results.rundir import load_run
from bench.results.schema import (
    EXECUTIONS,
    SCHEMA_VERSION,
    Case,
    CaseResult,
    Memory,
    Throughput,
    Timing,
)

CPU = Device(torch.device("cpu"))
SUITE = one_case_suite("exec")


def case(execution: str = "eager", precision: str = "bf16", **kw: Any) -> Case:
    fields = {"workload": "train", "batch_size": 2, "seq_len": 16, **kw}
    return Case(
        "gpt2-tiny", "gpt2", precision=precision, device="cpu", execution=execution, **fields
    )


# -- ids, results and their old form -------------------------------------------------------------


def test_ids_and_modes_name_the_execution_and_old_results_read_back() -> None:
    assert [case(e).id for e in EXECUTIONS] == [
        "gpt2-tiny/train/bf16/bs2/seq16",
        "gpt2-tiny/train/bf16/bs2/seq16/compiled",
        "gpt2-tiny/train/bf16/bs2/seq16/graphs",
    ]
    assert [case(e).mode for e in EXECUTIONS] == ["bf16", "bf16 +compile", "bf16 +graphs"]
    assert {case(e).numerics_key for e in EXECUTIONS} == {"bf16"}  # one pass for all three
    data = CaseResult(case("graphs"), "skipped", "no GPU").to_dict()
    assert data["schema"] == SCHEMA_VERSION and data["case"]["execution"] == "graphs"
    assert CaseResult.from_dict(json.loads(json.dumps(data))).case == case("graphs")
    # Schema 5 and before: `compiled` true or false, the id ends in /compiled or nothing.
    for compiled, execution in ((True, "compiled"), (False, "eager")):
        old = json.loads(json.dumps(data))
        old["schema"] = 5
        del old["case"]["execution"]
        old["case"].update(compiled=compiled, id=case(execution).id)
        assert CaseResult.from_dict(old).case == case(execution)
    bad = json.loads(json.dumps(data))
    bad["case"]["execution"] = "jit"
    with pytest.raises(ResultsError, match="execution: must be one of"):
        CaseResult.from_dict(bad)


# -- the suite key and the flags -----------------------------------------------------------------


def test_suite_execution_key_and_the_old_compile_key(capsys: pytest.CaptureFixture[str]) -> None:
    suite = parse_suite(SUITE + 'execution = ["eager", "compiled", "graphs"]\n')
    assert [c.execution for c in suite.cases("cpu")] == list(EXECUTIONS)
    assert suite.sweep.compile_scope == "regional" and "compile_scope" not in suite.to_toml()
    assert parse_suite(suite.to_toml()).sweep == suite.sweep  # the resolved suite reads back
    whole = parse_suite(SUITE + 'compile_scope = "model"\n')
    assert parse_suite(whole.to_toml()).sweep.compile_scope == "model"
    capsys.readouterr()
    old = parse_suite(SUITE + 'compile = ["eager", "compiled"]\n', "old.toml")
    assert old.sweep.execution == ("eager", "compiled")
    err = capsys.readouterr().err
    assert err.startswith("old.toml: sweep.compile is deprecated; use sweep.execution")
    assert err.count("\n") == 1
    with pytest.raises(SuiteError, match="sweep.compile: give sweep.execution only"):
        parse_suite(SUITE + 'compile = ["eager"]\nexecution = ["eager"]\n', "s.toml")
    with pytest.raises(SuiteError, match='sweep.execution: must be a non-empty list from: "eag'):
        parse_suite(SUITE + 'execution = ["jit"]\n', "s.toml")
    with pytest.raises(SuiteError, match='sweep.compile_scope: must be one of: "regional"'):
        parse_suite(SUITE + 'compile_scope = "layer"\n', "s.toml")


def test_execution_flag_and_the_deprecated_compile_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.toml"
    path.write_text(SUITE)
    dry = ["run", str(path), "--device", "cpu", "--dry-run", "--isolate", "none"]
    assert main([*dry, "--execution", "eager,compiled,graphs"]) == 0
    err = capsys.readouterr().err  # the dry run prints on stderr
    assert "3 cases on cpu" in err and "1 of them skipped here" in err
    assert "deprecated" not in err
    assert main([*dry, "--compile", "both"]) == 0
    err = capsys.readouterr().err
    assert "2 cases on cpu" in err and err.count("deprecated") == 1
    assert "--compile is deprecated; use --execution eager,compiled,graphs (any of them)\n" in err
    assert main([*dry, "--execution", "eager,jit"]) == 2
    err = capsys.readouterr().err
    assert "--execution: must be a non-empty list from" in err and "Traceback" not in err
    assert main([*dry, "--execution", "eager", "--compile", "both"]) == 2
    assert "--compile: give --execution only" in capsys.readouterr().err


# -- regional compilation ------------------------------------------------------------------------


def tiny_model(name: str) -> torch.nn.Module:
    return parse_suite(SUITE.replace("gpt2-tiny", name)).model(name).build(0)


def test_regional_compilation_compiles_each_repeated_block_in_place() -> None:
    gpt2, bert = tiny_model("gpt2-tiny"), tiny_model("bert-tiny")
    assert [(n, len(s), type(s[0]).__name__) for n, s in repeated_blocks(gpt2)] == [
        ("transformer.h", 2, "GPT2Block")
    ]
    assert [(n, type(s[0]).__name__) for n, s in repeated_blocks(bert)] == [
        ("bert.encoder.layer", "BertLayer")
    ]
    regional = Compiled("regional")
    assert regional.wrap(gpt2) is gpt2  # the blocks are compiled in place; nothing compiles yet
    assert all(block._compiled_call_impl is not None for block in gpt2.transformer.h)
    assert gpt2._compiled_call_impl is None and gpt2.lm_head._compiled_call_impl is None
    assert regional.details() == {
        "compile_scope": "regional",
        "compiled_blocks": "transformer.h: 2 x GPT2Block",
    }
    # No stack of repeated blocks: the whole model, and the reason recorded.
    plain = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4))
    fallback = Compiled("regional")
    assert isinstance(fallback.wrap(plain), torch._dynamo.eval_frame.OptimizedModule)
    assert fallback.details()["compile_scope"] == "model"
    assert "no stack of repeated blocks" in fallback.details()["compile_fallback"]
    whole = Compiled("model")
    assert isinstance(whole.wrap(bert), torch._dynamo.eval_frame.OptimizedModule)
    assert whole.details() == {"compile_scope": "model"}
    assert isinstance(execution_for(case("compiled"), "model"), Compiled)
    torch.compiler.reset()


def test_the_flop_count_runs_compiled_regions_eagerly() -> None:
    """FlopCounterMode must see aten ops: counting runs the step with torch.compile off."""
    seen: list[bool] = []

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.compiler.is_compiling())
            return x * self.scale

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList([Block(), Block()])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                x = layer(x)
            return x

    for scope in ("regional", "model"):
        execution = Compiled(scope)
        module = execution.wrap(Net())
        assert (scope == "regional") == ("compiled_blocks" in execution.details())
        execution.counting_step(lambda m=module: m(torch.ones(2)))()
    assert seen == [False] * 4
    torch.compiler.reset()


def test_compile_estimate_counts_one_block_graph_regionally() -> None:
    suite = parse_suite(SUITE)
    compiled = case("compiled", precision="fp32")
    regional_s = estimate.compile_estimate_s(suite, compiled, "cuda", "regional")
    whole_s = estimate.compile_estimate_s(suite, compiled, "cuda", "model")
    per_layer_s = estimate.COMPILE_S_PER_LAYER["cuda"]["train"]
    assert regional_s == estimate.COMPILE_BASE_S["cuda"]["train"] + per_layer_s
    assert whole_s == pytest.approx(
        regional_s + (estimate.n_layers(suite, "gpt2-tiny") - 1) * per_layer_s
    )
    rates = {"fp32": estimate.MatmulRate("fp32", 8192, 50.0)}
    eager_s = estimate.step_estimate_s(suite, case(precision="fp32"), rates, "cuda")
    graphs_s = estimate.step_estimate_s(suite, case("graphs", precision="fp32"), rates, "cuda")
    assert graphs_s < eager_s  # a replay has no host floor


# -- CUDA graphs ---------------------------------------------------------------------------------


class FakeCuda:
    """The torch.cuda calls a capture makes, recorded in order: streams, the capture, replays
    (with the static input each replay saw)."""

    def __init__(self) -> None:
        self.log: list[Any] = []
        self.where = "default"
        self.default = self.Stream("default")

    def Stream(self, name: str = "side") -> Any:  # noqa: N802 - torch.cuda's name
        log = self.log
        return SimpleNamespace(
            name=name, wait_stream=lambda other: log.append(f"{name} waits for {other.name}")
        )

    def current_stream(self) -> Any:
        return self.default

    @contextlib.contextmanager
    def stream(self, stream: Any) -> Iterator[None]:
        self.where = stream.name
        yield
        self.where = "default"

    def CUDAGraph(self) -> Any:  # noqa: N802 - torch.cuda's name
        return SimpleNamespace(replay=lambda: self.log.append(("replay", self.inputs.clone())))

    @contextlib.contextmanager
    def graph(self, graph: Any) -> Iterator[None]:
        self.log.append("capture begins")
        self.where = "capture"
        yield
        self.where = "default"
        self.log.append("capture ends")


def test_graphs_warm_up_on_a_side_stream_capture_once_then_refill_and_replay() -> None:
    cuda = FakeCuda()
    batch = {"input_ids": torch.arange(4)}
    cuda.inputs = batch["input_ids"]
    static_loss = torch.tensor(0.5)

    def step() -> torch.Tensor:  # the workload's one step
        cuda.log.append(("step", cuda.where))
        return static_loss

    graphs = Graphs(cuda)
    graphed = graphs.wrap_step(step, batch)
    assert isinstance(graphed, GraphedStep) and graphs.counting_step(graphed) is step
    with pytest.raises(RuntimeError, match="not captured"):
        graphed()
    events: list[str] = []
    device = SimpleNamespace(synchronize=lambda: events.append("synchronize"))
    memory = SimpleNamespace(restart_peak=lambda: events.append("peak restarted"))
    capture_s = graphs.first_call(graphed, device, lambda *a: events.append(a[0]), memory)
    assert capture_s is not None and capture_s >= 0
    assert events == ["capturing", "synchronize", "peak restarted"]
    assert cuda.log == [
        "side waits for default",
        *[("step", "side")] * GRAPH_WARMUP_STEPS,
        "default waits for side",
        "capture begins",
        ("step", "capture"),
        "capture ends",
    ]
    # Each replay refills the static inputs first (copy_ from the case's inputs), then replays;
    # what it returns is a copy: the next replay overwrites the static output.
    cuda.log.clear()
    batch["input_ids"].fill_(-1)  # whatever the last step left in the static buffer
    out = graphed()
    assert len(cuda.log) == 1 and cuda.log[0][0] == "replay"
    assert cuda.log[0][1].tolist() == [0, 1, 2, 3]
    assert batch["input_ids"] is cuda.inputs  # the same buffer, refilled in place
    assert torch.equal(out, static_loss) and out is not static_loss


def test_graphs_is_skipped_with_its_reason_where_it_cannot_be_captured() -> None:
    suite = parse_suite(SUITE + 'execution = ["graphs"]\n')
    [graphed] = suite.cases("cpu")
    reason = skip_reason(suite, CPU, graphed)
    assert reason == "graphs needs a CUDA device: torch.cuda.graph captures CUDA kernels"
    gpu = SimpleNamespace(is_cuda=True)
    graphs = Graphs()
    assert graphs.unsupported_reason(case("graphs"), gpu) is None
    assert graphs.unsupported_reason(case("graphs", workload="infer"), gpu) is None
    generate = graphs.unsupported_reason(case("graphs", workload="generate"), gpu)
    assert generate is not None and generate.startswith("generate is not captured")
    ddp = case("graphs", parallel="ddp", world_size=2, reduce_dtype="fp32")
    assert "data-parallel" in (graphs.unsupported_reason(ddp, gpu) or "")
    assert Graphs.capturable_optimizer and not Compiled.capturable_optimizer
    assert not Eager.capturable_optimizer


# -- like with like ------------------------------------------------------------------------------


def ok(c: Case, median_s: float, compile_s: float | None = None) -> CaseResult:
    return CaseResult(
        c,
        "ok",
        timing=Timing.from_samples([median_s] * 3, 1, "perf-counter", compile_s=compile_s),
        throughput=Throughput.from_median(c.batch_size, c.seq_len, median_s),
        memory=Memory(100, None, "vmhwm"),
    )


def test_speedups_compare_the_same_execution_and_gains_compare_with_eager() -> None:
    results = [
        ok(case("eager", "fp32"), 1.0),
        ok(case("eager", "bf16"), 0.5),
        ok(case("compiled", "fp32"), 0.8, compile_s=30.0),
        ok(case("compiled", "bf16"), 0.2, compile_s=20.0),
        ok(case("graphs", "bf16"), 0.1, compile_s=2.0),  # no fp32 under graphs
    ]
    analysis = analyze(results)
    speedups = {row.mode: row.speedup for row in analysis.rows}
    assert speedups == {
        "fp32": 1.0,
        "bf16": 2.0,
        "fp32 +compile": 1.0,
        "bf16 +compile": pytest.approx(4.0),  # vs compiled fp32 (0.8), not eager fp32 (1.0)
        "bf16 +graphs": None,  # never vs eager fp32
    }
    [group] = analysis.groups
    note = group.mode("bf16 +graphs").speedup_note
    assert note is not None and note.startswith("no fp32 +graphs ran ok at this shape")
    assert group.mode("bf16 +compile").speedup_note is None
    gains = {(g.mode, g.eager_mode): (g.gain, g.compile_s) for g in analysis.execution_gains}
    assert gains == {
        ("fp32 +compile", "fp32"): (pytest.approx(1.25), 30.0),
        ("bf16 +compile", "bf16"): (pytest.approx(2.5), 20.0),
        ("bf16 +graphs", "bf16"): (pytest.approx(5.0), 2.0),
    }
    data = analysis.to_dict()
    assert [g["gain"] for g in data["execution_gains"]] == [
        g.gain for g in analysis.execution_gains
    ]
    assert [m.label for m in group.modes] == [
        "fp32",
        "fp32 +compile",
        "bf16",
        "bf16 +compile",
        "bf16 +graphs",
    ]


# -- the history store ---------------------------------------------------------------------------


def test_history_migrates_a_database_without_the_execution_column(tmp_path: Path) -> None:
    cases = [case("eager", "fp32"), case("compiled", "fp32")]
    run = write_run(tmp_path / "run", cases=cases, env=make_env(), suite_toml=SUITE)
    url = f"sqlite:///{tmp_path / 'h.db'}"
    with HistoryStore(url) as store:
        store.add(load_run(run))
    # The database as version 1 left it: no execution column, no version-2 row.
    with contextlib.closing(sqlite3.connect(tmp_path / "h.db")) as conn:
        conn.execute("ALTER TABLE case_results DROP COLUMN execution")
        conn.execute("DELETE FROM mpbench_schema WHERE version = 2")
        conn.commit()
    with HistoryStore(url) as store:
        assert store.schema_version == 2
        results = store.results(store.runs()[0].id)
        assert sorted(r.case.execution for r in results) == ["compiled", "eager"]
    with contextlib.closing(sqlite3.connect(tmp_path / "h.db")) as conn:
        rows = conn.execute("SELECT case_id, execution FROM case_results ORDER BY position")
        assert [r[1] for r in rows] == ["eager", "compiled"]


@pytest.mark.slow
def test_a_regionally_compiled_training_case_runs_on_the_cpu() -> None:
    """gpt2-tiny train, eager and compiled: the blocks compiled in place, the first call timed
    apart, FLOPs counted eagerly (the same count as eager's)."""
    from bench.engine.executors import default_runner_factory

    suite = parse_suite(
        SUITE + 'execution = ["eager", "compiled"]\n[timing]\nwarmup = 1\niterations = 2\n'
        "[numerics]\nenabled = false\n",
        "s.toml",
    )
    runner = default_runner_factory(suite, CPU)
    eager, compiled = (runner.run(c) for c in suite.cases("cpu"))
    assert eager.ok and compiled.ok, compiled.reason
    assert compiled.details["compile_scope"] == "regional"
    assert compiled.details["compiled_blocks"] == "transformer.h: 2 x GPT2Block"
    assert compiled.timing.compile_s > 0 and eager.timing.compile_s is None
    assert compiled.flops.per_step == eager.flops.per_step > 0

"""Numerics against an fp32 baseline: config, metrics, the training and inference divergence
passes, the noise floor, activation ranges, verdicts, and the runner wiring (CPU, tiny models)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.engine.device import Device
from bench.engine.models import PRESETS, ModelSpec
from bench.engine.numerics import metrics
from bench.engine.numerics.activations import FP16_MAX, activation_summary
from bench.engine.numerics.analyzer import NumericsAnalyzer
from bench.engine.numerics.config import NumericsConfig, validate_table
from bench.engine.runner import CaseRunner
from bench.engine.suite import parse_suite
from bench.errors import SuiteError

CPU = Device(torch.device("cpu"))
STEPS = 30


def make_suite(
    models: str = '"gpt2-tiny"',
    workloads: str = '"train"',
    precisions: str = '"fp32", "amp_bf16", "amp_fp16", "fp16"',
    numerics: str = "",
    batch_sizes: str = "2",
    seq_lens: str = "16",
) -> Any:
    """A one-shape suite on tiny models with a [numerics] table."""
    return parse_suite(
        f"""
[suite]
name = "numerics-test"
seed = 0
[sweep]
models = [{models}]
workloads = [{workloads}]
precisions = [{precisions}]
batch_sizes = [{batch_sizes}]
seq_lens = [{seq_lens}]
[timing]
warmup = 0
iterations = 2
[numerics]
{numerics}
"""
    )


def analyze_all(analyzer: NumericsAnalyzer, suite: Any) -> dict[str, dict[str, Any]]:
    """Numerics of every case of the suite, by case id."""
    return {case.id: analyzer.for_case(case) for case in suite.cases("cpu")}


def by_precision(analyzer: NumericsAnalyzer, suite: Any) -> dict[str, dict[str, Any]]:
    """Numerics of a one-model, one-workload, one-shape suite, by precision."""
    return {case.precision: analyzer.for_case(case) for case in suite.cases("cpu")}


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def test_config_defaults_and_overrides() -> None:
    assert NumericsConfig().train_steps == 30
    assert NumericsConfig().warn_rel_div < NumericsConfig().diverged_rel_div
    config = NumericsConfig.from_table(
        {"train_steps": 5, "warn_rel_div": 1, "diverged_rel_div": 2, "seq_len": 8}, "s"
    )
    assert (config.train_steps, config.seq_len) == (5, 8)
    assert isinstance(config.warn_rel_div, float)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"train_step": 5},
            "s.toml: numerics.train_step: unknown key (did you mean 'train_steps'?)",
        ),
        (
            {"train_steps": 0},
            "s.toml: numerics.train_steps: must be an integer from 1 to 10000; got 0",
        ),
        ({"enabled": "yes"}, "s.toml: numerics.enabled: must be true or false; got 'yes'"),
        (
            {"warn_rel_div": True},
            "s.toml: numerics.warn_rel_div: must be a positive number; got True",
        ),
        ({"seq_len": 1}, "s.toml: numerics.seq_len: must be an integer >= 2; got 1"),
        (
            {"diverged_cosine": 1.5},
            "s.toml: numerics.diverged_cosine: must be a number from 0 to 1",
        ),
        (
            {"warn_rel_div": 0.5},
            "s.toml: numerics.warn_rel_div: must be <= diverged_rel_div (0.05); got 0.5",
        ),
        (
            {"warn_sqnr_db": 10},
            "s.toml: numerics.warn_sqnr_db: must be >= diverged_sqnr_db (20.0); got 10",
        ),
    ],
)
def test_validate_table_rejects(table: dict[str, Any], message: str) -> None:
    with pytest.raises(SuiteError) as info:
        validate_table(table, "s.toml")
    assert str(info.value).startswith(message)


def test_suite_loader_validates_numerics_table() -> None:
    with pytest.raises(SuiteError, match=r"numerics\.noise_flor: unknown key"):
        make_suite(numerics="noise_flor = false")
    suite = make_suite(numerics="train_steps = 3")
    assert NumericsAnalyzer(suite, CPU).config.train_steps == 3


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def test_sqnr_and_output_metrics() -> None:
    ref = torch.randn(4, 8, 50, generator=torch.Generator().manual_seed(0))
    same = metrics.compare_outputs(ref, ref.clone())
    assert same["sqnr_db"] == math.inf and same["max_abs_err"] == 0.0
    assert same["top1_agreement"] == 1.0 and same["kl_mean"] == pytest.approx(0.0, abs=1e-12)
    noisy = metrics.compare_outputs(ref, ref + 0.01 * ref)  # noise is 1% of the signal: 40 dB
    assert noisy["sqnr_db"] == pytest.approx(40.0)
    assert noisy["rel_rmse"] == pytest.approx(0.01)
    assert noisy["kl_mean"] > 0
    nan = metrics.compare_outputs(ref, torch.full_like(ref, math.nan))
    assert math.isnan(nan["sqnr_db"])
    ratio = metrics.compare_outputs(ref, ref + 0.02, reference64=ref.double() + 0.01)
    assert ratio["rmse_ratio"] == pytest.approx(1.0, rel=1e-4)  # 0.01 off fp64, as fp32 is


def test_parameter_groups_gpt2_and_bert() -> None:
    cases = {
        "transformer.wte.weight": "embeddings",
        "transformer.h.0.ln_1.weight": "norms",
        "transformer.h.3.attn.c_attn.weight": "attention",
        "transformer.h.3.mlp.c_proj.bias": "mlp",
        "lm_head.weight": "head",
        "bert.embeddings.LayerNorm.weight": "norms",
        "bert.embeddings.position_embeddings.weight": "embeddings",
        "bert.encoder.layer.0.attention.output.dense.weight": "attention",
        "bert.encoder.layer.0.attention.output.LayerNorm.bias": "norms",
        "bert.encoder.layer.0.intermediate.dense.weight": "mlp",
        "bert.encoder.layer.0.output.dense.weight": "mlp",
        "cls.predictions.bias": "head",
    }
    assert {name: metrics.parameter_group(name) for name in cases} == cases


def test_loss_divergence_and_first_exceeding() -> None:
    div = metrics.loss_divergence([10.0, 10.5, 12.0], [10.0, 10.0, 10.0])
    assert div["rel_div"] == [0.0, 0.05, 0.2]
    assert div["max_rel_div"] == 0.2 and div["final_rel_div"] == 0.2
    assert metrics.first_exceeding(div["rel_div"], 0.01) == 1
    assert metrics.first_exceeding([0.0, math.nan], 0.01) == 1
    assert metrics.first_exceeding([0.0, 0.001], 0.01) is None


# ---------------------------------------------------------------------------------------------
# Training divergence on a tiny GPT (the acceptance checks)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt_train() -> dict[str, dict[str, Any]]:
    """gpt2-tiny trained 30 steps at bs2 seq16 in fp32, amp_bf16, amp_fp16 and pure fp16."""
    suite = make_suite(numerics=f"train_steps = {STEPS}")
    return by_precision(NumericsAnalyzer(suite, CPU), suite)


def test_fp32_against_itself_is_exactly_zero(gpt_train: dict[str, dict[str, Any]]) -> None:
    fp32 = gpt_train["fp32"]
    assert fp32["verdict"] == "ok"
    assert len(fp32["loss"]) == STEPS and fp32["loss"] == fp32["baseline_loss"]
    assert fp32["max_rel_div"] == 0.0 and set(fp32["rel_div"]) == {0.0}
    assert fp32["grad_sqnr_db"]["overall"] == math.inf
    floor = fp32["noise_floor"]
    assert floor["fp32_runs_identical"] is True and floor["fp32_repeat_max_rel_div"] == 0.0
    # fp32's own error against fp64 is tiny but real: that is the floor modes are judged by.
    assert floor["fp64_reference"] is True
    assert 0 < floor["fp32_vs_fp64_max_rel_div"] < 1e-5
    assert floor["fp32_vs_fp64_grad_sqnr_db"] > 100


def test_amp_bf16_diverges_a_little(gpt_train: dict[str, dict[str, Any]]) -> None:
    bf16 = gpt_train["amp_bf16"]
    assert bf16["verdict"] == "ok"
    assert 0 < bf16["max_rel_div"] < bf16["tolerance"]
    assert bf16["first_exceed_step"] is None and bf16["first_nan_step"] is None
    # Above fp32's own error, far below the tolerance.
    assert bf16["floor_ratio"] > 10
    assert 30 < bf16["grad_sqnr_db"]["overall"] < 80
    assert set(bf16["grad_sqnr_db"]) == {"overall", *metrics.GRAD_GROUPS}
    assert bf16["scaler"] is None


def test_amp_fp16_stays_within_tolerance(gpt_train: dict[str, dict[str, Any]]) -> None:
    amp = gpt_train["amp_fp16"]
    assert amp["verdict"] == "ok", amp["reasons"]
    assert amp["max_rel_div"] < amp["thresholds"]["warn_rel_div"]
    assert len(amp["loss"]) == STEPS
    assert len(amp["scaler"]["scale"]) == STEPS and amp["scaler"]["scale"][0] == 2.0**16
    assert amp["scaler"]["skipped_steps"] == len(amp["scaler"]["skipped_at"])


def test_pure_fp16_training_fails(gpt_train: dict[str, dict[str, Any]]) -> None:
    """Micikevicius et al. 2018. Here the first AdamW step already fails: (1 - beta2) * g^2
    underflows to 0 in fp16 for most entries, and eps = 1e-8 rounds to 0 in fp16, so the update
    divides by zero and the weights become inf/NaN (see the analysis notes in bench.engine.numerics)."""
    fp16 = gpt_train["fp16"]
    assert fp16["verdict"] in ("nan", "diverged")
    assert fp16["verdict"] == "nan"
    assert fp16["first_nan_step"] == 0 and fp16["nan_source"] == "weights"
    assert math.isnan(fp16["max_rel_div"])
    assert torch.tensor(1e-8, dtype=torch.float16).item() == 0.0  # the reason, checked


def test_training_numerics_record_the_pass(gpt_train: dict[str, dict[str, Any]]) -> None:
    amp = gpt_train["amp_bf16"]
    assert (amp["kind"], amp["batch_size"], amp["seq_len"], amp["steps"]) == ("train", 2, 16, STEPS)
    assert amp["data"] == "random"
    assert len(amp["rel_div"]) == len(amp["abs_div"]) == STEPS
    assert amp["final_rel_div"] == amp["rel_div"][-1]
    assert "activations" in gpt_train["fp32"] and "activation_summary" in gpt_train["fp16"]
    assert "activations" not in amp and "activation_summary" not in amp
    # No module of the untouched model comes near fp16's limit.
    assert not any(e["fp16_overflow"] for e in gpt_train["fp32"]["activations"])
    json.dumps(gpt_train)  # serialisable as results.jsonl writes it (allow_nan)


# ---------------------------------------------------------------------------------------------
# Inference divergence, BERT, caching
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def infer_both() -> dict[str, dict[str, Any]]:
    suite = make_suite(
        models='"gpt2-tiny", "bert-tiny"',
        workloads='"infer"',
        precisions='"fp32", "amp_bf16", "bf16"',
        batch_sizes="2, 4",
    )
    return analyze_all(NumericsAnalyzer(suite, CPU), suite)


def test_inference_metrics(infer_both: dict[str, dict[str, Any]]) -> None:
    for model in ("gpt2-tiny", "bert-tiny"):
        fp32 = infer_both[f"{model}/infer/fp32/bs2/seq16"]
        assert fp32["sqnr_db"] == math.inf and fp32["max_abs_err"] == 0.0
        assert fp32["noise_floor"]["fp32_runs_identical"] is True
        assert fp32["noise_floor"]["fp32_vs_fp64_sqnr_db"] > 100
        amp = infer_both[f"{model}/infer/amp_bf16/bs2/seq16"]
        assert amp["verdict"] == "ok", amp["reasons"]
        assert 30 < amp["sqnr_db"] < 80 and amp["cosine"] > 0.999
        assert amp["top1_agreement"] > 0.9 and amp["kl_mean"] > 0
        assert amp["rmse_ratio"] > 100  # bf16 rounds far more than fp32 does
        for key in ("max_abs_err", "rel_rmse", "sqnr_db", "cosine", "top1_agreement", "kl_mean"):
            assert isinstance(amp[key], float)


def test_numerics_shared_by_every_case_of_a_triple(infer_both: dict[str, dict[str, Any]]) -> None:
    small = infer_both["bert-tiny/infer/bf16/bs2/seq16"]
    large = infer_both["bert-tiny/infer/bf16/bs4/seq16"]
    assert small == large and small["batch_size"] == 2  # the pass's shape, not the case's


def test_bert_training_fp32_zero_and_amp_bf16_small() -> None:
    suite = make_suite(
        models='"bert-tiny"', precisions='"fp32", "amp_bf16"', numerics="train_steps = 8"
    )
    out = by_precision(NumericsAnalyzer(suite, CPU), suite)
    assert out["fp32"]["max_rel_div"] == 0.0
    assert 0 < out["amp_bf16"]["max_rel_div"] < 0.01
    assert out["amp_bf16"]["grad_sqnr_db"]["norms"] is not None


# ---------------------------------------------------------------------------------------------
# Activation ranges: a model pushed past fp16's range
# ---------------------------------------------------------------------------------------------

OVERFLOW_MODULE = "transformer.h.0.mlp.c_fc"


def scaled_gpt(spec: ModelSpec) -> torch.nn.Module:
    """gpt2-tiny with its first MLP input projection x1e5: |c_fc output| ~ 9e4 > 65504."""
    model = PRESETS["gpt2-tiny"].build(0)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.mul_(1e5)
    return model


def test_activation_overflow_named_and_fp16_inference_fails() -> None:
    suite = make_suite(workloads='"infer"', precisions='"fp32", "amp_bf16", "fp16"')
    out = by_precision(NumericsAnalyzer(suite, CPU, pristine_model=scaled_gpt), suite)
    by_module = {e["module"]: e for e in out["fp32"]["activations"]}
    hot = by_module[OVERFLOW_MODULE]
    assert hot["fp16_overflow"] is True and hot["max_abs"] > FP16_MAX
    assert hot["fp16_headroom_log2"] == pytest.approx(math.log2(FP16_MAX / hot["max_abs"]))
    assert hot["fp16_headroom_log2"] < 0
    summary = out["fp16"]["activation_summary"]
    assert OVERFLOW_MODULE in summary["fp16_overflow_modules"]
    assert summary["min_fp16_headroom_log2"] < 0
    assert out["fp16"]["verdict"] in ("nan", "diverged")
    assert out["fp32"]["verdict"] == "ok"  # fp32 has the range: only fp16 breaks
    assert out["amp_bf16"]["verdict"] != "nan"  # bf16 shares fp32's exponent range


def test_activation_summary_of_nothing() -> None:
    assert activation_summary([])["worst_module"] is None


# ---------------------------------------------------------------------------------------------
# Reproducibility, failures, the runner and the verdict table
# ---------------------------------------------------------------------------------------------


def test_same_suite_twice_gives_identical_numerics() -> None:
    suite = make_suite(
        models='"gpt2-tiny", "bert-tiny"',
        workloads='"train", "infer"',
        precisions='"fp32", "amp_bf16"',
        numerics="train_steps = 5",
    )
    first = analyze_all(NumericsAnalyzer(suite, CPU), suite)
    second = analyze_all(NumericsAnalyzer(suite, CPU), suite)
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    assert all(n["verdict"] in ("ok", "warn") for n in first.values())


def test_failures_become_errors_not_exceptions() -> None:
    suite = make_suite(precisions='"fp32", "amp_bf16"', numerics="train_steps = 2")

    def broken(spec: ModelSpec) -> torch.nn.Module:
        raise RuntimeError("no weights today")

    analyzer = NumericsAnalyzer(suite, CPU, pristine_model=broken)
    for case in suite.cases("cpu"):
        result = analyzer.for_case(case)
        assert result == {"verdict": None, "error": "RuntimeError: no weights today"}


def test_a_numerics_seq_len_past_the_model_is_capped_at_its_positions() -> None:
    # One [numerics] seq_len serves a suite of short- and long-context models: each model's
    # pass runs at most its own positions, and the result says which length it ran.
    suite = make_suite(numerics="seq_len = 512\ntrain_steps = 1")
    result = NumericsAnalyzer(suite, CPU).for_case(suite.cases("cpu")[0])
    assert result["verdict"] == "ok" and result["seq_len"] == 256


def test_disabled_numerics_return_none() -> None:
    suite = make_suite(numerics="enabled = false")
    analyzer = NumericsAnalyzer(suite, CPU)
    assert not analyzer.enabled and analyzer.for_case(suite.cases("cpu")[0]) is None


def test_runner_keeps_timing_and_attaches_numerics() -> None:
    suite = make_suite(precisions='"fp32", "amp_bf16"', numerics="train_steps = 3")
    runner = CaseRunner(suite, CPU)
    analyzer = NumericsAnalyzer(suite, CPU, pristine_model=runner.pristine_model)
    runner.numerics = analyzer.for_case
    results = [runner.run(case) for case in suite.cases("cpu")]
    assert [r.status for r in results] == ["ok", "ok"]
    assert results[0].numerics["max_rel_div"] == 0.0
    assert results[1].numerics["verdict"] == "ok" and results[1].numerics["steps"] == 3
    assert results[1].timing.iterations == 2


def test_mpbench_run_writes_numerics(tmp_path: Path) -> None:
    """End to end: `mpbench run` attaches numerics to results.jsonl and prints the verdicts."""
    from bench.cli.main import main

    suite_path = tmp_path / "s.toml"
    suite_path.write_text(
        '[suite]\nname = "n"\n[sweep]\nmodels = ["gpt2-tiny"]\nworkloads = ["train"]\n'
        'precisions = ["fp32", "amp_bf16"]\nbatch_sizes = [2]\nseq_lens = [16]\n'
        "[timing]\nwarmup = 0\niterations = 2\n[numerics]\ntrain_steps = 3\n",
        encoding="utf-8",
    )
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                str(suite_path),
                "--device",
                "cpu",
                "--out",
                str(out),
                "-q",
                "--no-report",
                "--isolate",
                "none",
            ]
        )
        == 0
    )
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    numerics = {r["case"]["precision"]: r["numerics"] for r in lines}
    assert numerics["fp32"]["max_rel_div"] == 0.0
    assert numerics["amp_bf16"]["verdict"] == "ok" and numerics["amp_bf16"]["max_rel_div"] > 0

"""Every verdict rule at its boundaries, and a suite's [numerics] table overriding them.

The rules (bench.engine.numerics.verdicts): a value exactly at a threshold passes it; NaN counts
as failing a lower bound; the worst rule decides (nan > diverged > warn > ok)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bench.engine.numerics.config import NumericsConfig
from bench.engine.numerics.verdicts import inference_verdict, training_verdict
from bench.engine.suite import parse_suite

DEFAULT = NumericsConfig()


def train(**values: Any) -> dict[str, Any]:
    """Training numerics that pass every rule, with `values` replaced."""
    base = {
        "first_nan_step": None,
        "nan_source": None,
        "baseline_nan_step": None,
        "max_rel_div": 0.001,
        "grad_sqnr_db": {"overall": 40.0},
        "scaler": None,
        "steps": 30,
    }
    return {**base, **values}


def infer(**values: Any) -> dict[str, Any]:
    """Inference numerics that pass every rule, with `values` replaced."""
    base = {
        "baseline_finite": True,
        "max_abs_err": 0.01,
        "sqnr_db": 50.0,
        "cosine": 0.9999,
        "top1_agreement": 1.0,
    }
    return {**base, **values}


@pytest.mark.parametrize(
    ("values", "verdict", "reason"),
    [
        ({}, "ok", None),
        ({"max_rel_div": 0.01}, "ok", None),  # at warn_rel_div: not above it
        ({"max_rel_div": 0.0100001}, "warn", "max_rel_div 0.01 > 0.01"),
        ({"max_rel_div": 0.05}, "warn", "max_rel_div 0.05 > 0.01"),  # at diverged_rel_div
        ({"max_rel_div": 0.0500001}, "diverged", "max_rel_div 0.05 > 0.05"),
        ({"grad_sqnr_db": {"overall": 20.0}}, "ok", None),  # at warn_grad_sqnr_db
        ({"grad_sqnr_db": {"overall": 19.99}}, "warn", "grad_sqnr_db 20.0 < 20"),
        ({"grad_sqnr_db": {"overall": math.nan}}, "warn", "grad_sqnr_db nan < 20"),
        ({"grad_sqnr_db": {"overall": math.inf}}, "ok", None),  # identical gradients
        ({"scaler": {"skipped_steps": 7}}, "ok", None),  # 7/30 < 0.25
        ({"scaler": {"skipped_steps": 8}}, "warn", "GradScaler skipped 8/30 steps"),
        ({"first_nan_step": 3, "nan_source": "weights"}, "nan", "non-finite weights at step 3"),
        ({"first_nan_step": 0, "max_rel_div": 0.5}, "nan", "non-finite loss at step 0"),
        ({"baseline_nan_step": 4}, None, "fp32 baseline went non-finite at step 4"),
    ],
)
def test_training_rules(values: dict[str, Any], verdict: str | None, reason: str | None) -> None:
    got, reasons = training_verdict(train(**values), DEFAULT)
    assert got == verdict
    assert (reasons[0] if reasons else None) == reason


def test_training_warnings_accumulate() -> None:
    verdict, reasons = training_verdict(
        train(max_rel_div=0.02, grad_sqnr_db={"overall": 10.0}, scaler={"skipped_steps": 20}),
        DEFAULT,
    )
    assert verdict == "warn" and len(reasons) == 3


@pytest.mark.parametrize(
    ("values", "verdict", "reason"),
    [
        ({}, "ok", None),
        ({"sqnr_db": 30.0}, "ok", None),  # at warn_sqnr_db
        ({"sqnr_db": 29.99}, "warn", "sqnr_db 30.0 < 30"),
        ({"sqnr_db": 20.0}, "warn", "sqnr_db 20.0 < 30"),  # at diverged_sqnr_db
        ({"sqnr_db": 19.99}, "diverged", "sqnr_db 20.0 < 20"),
        ({"cosine": 0.99}, "ok", None),  # at diverged_cosine
        ({"cosine": 0.98999}, "diverged", "cosine 0.9900 < 0.99"),
        ({"top1_agreement": 0.9}, "ok", None),  # at warn_top1_agreement
        ({"top1_agreement": 0.899}, "warn", "top1_agreement 0.899 < 0.9"),
        ({"sqnr_db": math.nan, "max_abs_err": math.nan}, "nan", "non-finite outputs"),
        ({"max_abs_err": math.nan}, "nan", "non-finite outputs"),
        ({"cosine": math.nan}, "diverged", "cosine nan < 0.99"),  # NaN fails a lower bound
        ({"top1_agreement": math.nan}, "warn", "top1_agreement nan < 0.9"),
        ({"baseline_finite": False}, None, "fp32 baseline logits are not finite"),
    ],
)
def test_inference_rules(values: dict[str, Any], verdict: str | None, reason: str | None) -> None:
    got, reasons = inference_verdict(infer(**values), DEFAULT)
    assert got == verdict
    assert (reasons[0] if reasons else None) == reason


def test_diverged_outranks_warn_in_inference() -> None:
    verdict, reasons = inference_verdict(infer(sqnr_db=10.0, top1_agreement=0.5), DEFAULT)
    assert verdict == "diverged" and reasons == ["sqnr_db 10.0 < 20"]


def test_a_suite_table_overrides_every_threshold() -> None:
    suite = parse_suite(
        '[sweep]\nmodels = ["gpt2-tiny"]\n[numerics]\n'
        "warn_rel_div = 0.0001\ndiverged_rel_div = 0.002\nwarn_grad_sqnr_db = 45\n"
        "warn_skipped_frac = 0.0\nwarn_sqnr_db = 60\ndiverged_sqnr_db = 55\n"
        "diverged_cosine = 0.99999\nwarn_top1_agreement = 1\n",
        "s.toml",
    )
    config = NumericsConfig.from_table(suite.tables["numerics"], "s.toml")
    assert training_verdict(train(), config)[0] == "warn"  # 0.001 > 0.0001, and 40 dB < 45
    assert training_verdict(train(max_rel_div=0.003), config)[0] == "diverged"
    assert training_verdict(train(max_rel_div=1e-5, scaler={"skipped_steps": 1}), config) == (
        "warn",
        ["grad_sqnr_db 40.0 < 45", "GradScaler skipped 1/30 steps"],
    )
    assert inference_verdict(infer(), config)[0] == "diverged"  # 50 dB < 55
    assert inference_verdict(infer(sqnr_db=58.0, cosine=1.0), config) == (
        "warn",
        ["sqnr_db 58.0 < 60"],
    )
    assert inference_verdict(infer(sqnr_db=70.0, cosine=1.0, top1_agreement=0.999), config)[0] == (
        "warn"
    )
    assert config.thresholds()["warn_rel_div"] == 0.0001  # recorded with every verdict

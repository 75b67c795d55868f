"""Error metrics between a reference tensor and a result (METHODS rule 12). Pure functions.

Every metric is computed in float64 on the CPU so the measuring adds no error of its own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch

GRAD_GROUPS = ("embeddings", "attention", "mlp", "norms", "head")

# Parameter name -> group, first match wins, over the layer names of GPT-2, BERT, RoBERTa,
# DeBERTa-v2 (`ln_1`, `LayerNorm`, `attention`, `intermediate`, `output`, `rel_embeddings`,
# `lm_predictions`), Llama/Qwen2/Mistral/Gemma (`embed_tokens`, `self_attn`,
# `input_layernorm`, `post_attention_layernorm`, `mlp`, `norm`, `lm_head`) and ModernBERT
# (`tok_embeddings`, `attn`, `attn_norm`, `mlp_norm`, `final_norm`, `head`, `decoder`). Norms
# come first: BERT's `embeddings.LayerNorm`, `attention.output.LayerNorm` and ModernBERT's
# `head.norm` are norms, not embeddings, attention or head.
_GROUP_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "norms",
        re.compile(r"(^|\.)(ln_\w+|\w*layer_?norm|\w*_norm|norm)(\.|$)", re.IGNORECASE),
    ),
    ("embeddings", re.compile(r"(^|\.)(wte|wpe|\w*embed\w*)(\.|$)")),
    ("attention", re.compile(r"(^|\.)(\w*attn|\w*attention)(\.|$)")),
    ("mlp", re.compile(r"(^|\.)(mlp|intermediate|output|feed_forward)(\.|$)")),
    ("head", re.compile(r"(^|\.)(lm_head|cls|pooler|head|decoder|lm_predictions)(\.|$)")),
)


def parameter_group(name: str) -> str:
    """The group of a parameter name (embeddings, attention, mlp, norms, head; `other` where
    no pattern knows it)."""
    for group, pattern in _GROUP_PATTERNS:
        if pattern.search(name):
            return group
    return "other"


def sqnr_db(signal_sq: float, noise_sq: float) -> float:
    """10*log10(sum ref^2 / sum (ref - x)^2): inf when identical, NaN when x is not finite."""
    if not math.isfinite(noise_sq) or not math.isfinite(signal_sq):
        return math.nan
    if noise_sq == 0:
        return math.inf
    if signal_sq == 0:
        return -math.inf
    return 10.0 * math.log10(signal_sq / noise_sq)


def grad_sqnr_db(
    reference: dict[str, torch.Tensor],
    result: dict[str, torch.Tensor],
    names: dict[str, tuple[str, ...]],
) -> dict[str, float | None]:
    """SQNR (dB) of first-step gradients vs the reference, overall and per parameter group.

    `names` maps each parameter key to all its names: a tied weight (GPT-2's wte = lm_head) counts
    in every group it belongs to, once overall. A group with no parameters is None.
    """
    sums = {group: [0.0, 0.0] for group in ("overall", *GRAD_GROUPS)}
    for key, ref in reference.items():
        out = result.get(key)
        if out is None:
            continue
        ref64 = ref.double()
        signal = float(ref64.square().sum())
        noise = float((ref64 - out.double()).square().sum())
        groups = {"overall", *(parameter_group(n) for n in names.get(key, (key,)))}
        for group in groups & sums.keys():
            sums[group][0] += signal
            sums[group][1] += noise
    counted = {parameter_group(n) for key in reference for n in names.get(key, (key,))}
    return {
        group: sqnr_db(signal, noise) if group == "overall" or group in counted else None
        for group, (signal, noise) in sums.items()
    }


def _rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).square().mean().sqrt())


def compare_outputs(
    reference: torch.Tensor, result: torch.Tensor, reference64: torch.Tensor | None = None
) -> dict[str, float | None]:
    """Logits of a mode vs fp32 logits on identical inputs and weights (shape [..., vocab]).

    max_abs_err, rel_rmse = rmse / rms(reference), sqnr_db, cosine (flattened), top1_agreement
    (argmax over the vocabulary), kl_mean = mean over positions of KL(fp32 || mode), and
    rmse_ratio = rmse(fp64, mode) / rmse(fp64, fp32) when an fp64 reference is given.
    """
    ref = reference.double()
    out = result.double()
    finite = bool(torch.isfinite(out).all())
    diff = out - ref
    ref_norm_sq = float(ref.square().sum())
    noise_sq = float(diff.square().sum()) if finite else math.nan
    rms_ref = math.sqrt(ref_norm_sq / ref.numel())
    rmse = math.sqrt(noise_sq / ref.numel()) if finite else math.nan
    metrics: dict[str, float | None] = {
        "max_abs_err": float(diff.abs().max()) if finite else math.nan,
        "rel_rmse": rmse / rms_ref if rms_ref > 0 else math.nan,
        "sqnr_db": sqnr_db(ref_norm_sq, noise_sq),
        "cosine": _cosine(ref, out) if finite else math.nan,
        "top1_agreement": float((ref.argmax(-1) == out.argmax(-1)).double().mean())
        if finite
        else math.nan,
        "kl_mean": _kl_mean(ref, out) if finite else math.nan,
        "rmse_ratio": None,
    }
    if reference64 is not None:
        ref64 = reference64.double()
        floor = _rmse(ref64, ref)
        mode_err = _rmse(ref64, out) if finite else math.nan
        metrics["rmse_ratio"] = mode_err / floor if floor > 0 else math.inf
    return metrics


# Rotary position embeddings lose angle resolution at large positions when cos/sin (or the
# products with them) are rounded to a 16-bit format: compare the error at positions from
# LONG_POSITION on with the error over the first EARLY_POSITIONS (the same logits, one pass).
LONG_POSITION = 2048
EARLY_POSITIONS = 512


def long_positions(reference: torch.Tensor, result: torch.Tensor) -> dict[str, Any]:
    """A rotary model's logits vs fp32 at late positions (LONG_POSITION and on) against early
    ones (the first EARLY_POSITIONS), shapes [batch, seq, vocab]: SQNR, relative RMSE and top-1
    agreement of each range, and how many dB the late range loses (`late_drop_db`). Where the
    sequence is not longer than LONG_POSITION, `run` is false with the reason."""
    seq_len = reference.shape[1]
    if seq_len <= LONG_POSITION:
        return {
            "run": False,
            "reason": (
                f"needs a numerics sequence longer than {LONG_POSITION} tokens; this pass has "
                f"{seq_len} ([numerics] seq_len)"
            ),
        }
    keys = ("sqnr_db", "rel_rmse", "top1_agreement")
    early = compare_outputs(reference[:, :EARLY_POSITIONS], result[:, :EARLY_POSITIONS])
    late = compare_outputs(reference[:, LONG_POSITION:], result[:, LONG_POSITION:])
    drop = None
    if early["sqnr_db"] is not None and late["sqnr_db"] is not None:
        drop = float(early["sqnr_db"]) - float(late["sqnr_db"])
    return {
        "run": True,
        "early_positions": [0, EARLY_POSITIONS],
        "late_positions": [LONG_POSITION, seq_len],
        "early": {k: early[k] for k in keys},
        "late": {k: late[k] for k in keys},
        "late_drop_db": drop,
    }


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def _kl_mean(reference: torch.Tensor, result: torch.Tensor) -> float:
    """Mean over positions of KL(softmax(reference) || softmax(result)), in nats."""
    log_p = torch.log_softmax(reference, dim=-1)
    log_q = torch.log_softmax(result, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)
    return float(kl.mean())


def loss_divergence(loss: Sequence[float], baseline: Sequence[float]) -> dict[str, object]:
    """Per-step |loss - baseline| and |loss - baseline| / |baseline| over the common steps, with
    their max, mean and final values (NaN where a loss is not finite)."""
    abs_div = [abs(a - b) for a, b in zip(loss, baseline)]
    rel_div = [d / abs(b) if b else math.nan for d, b in zip(abs_div, baseline)]
    return {
        "abs_div": abs_div,
        "rel_div": rel_div,
        "max_rel_div": _nan_max(rel_div),
        "mean_rel_div": sum(rel_div) / len(rel_div) if rel_div else math.nan,
        "final_rel_div": rel_div[-1] if rel_div else math.nan,
    }


def _nan_max(values: Iterable[float]) -> float:
    """max(), NaN if any value is NaN (a NaN step is the largest divergence there is)."""
    values = list(values)
    if not values or any(math.isnan(v) for v in values):
        return math.nan
    return max(values)


def first_exceeding(values: Sequence[float], tolerance: float) -> int | None:
    """Index of the first value above `tolerance` (NaN counts), or None."""
    for index, value in enumerate(values):
        if math.isnan(value) or value > tolerance:
            return index
    return None

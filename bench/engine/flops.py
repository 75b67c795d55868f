"""FLOPs of one step: counted by PyTorch's FlopCounterMode, and estimated from the model's shape.

Achieved TFLOP/s (and MFU against bench.results.peaks) need the floating-point operations one
timed step performs. `count_flops` runs the step once under
`torch.utils.flop_counter.FlopCounterMode` (outside the timed loop: the counter's overhead never
touches a timing) and returns its total. `analytic_flops` is the textbook estimate from the
model's configuration: it checks the counter (tests/test_flops.py) and sizes a sweep before
anything runs.

What is counted: matmul-class ops only, as in every MFU convention (PaLM, Megatron, nanoGPT):
aten.mm, addmm, bmm, baddbmm, the fused attention ops and aten._scaled_mm (the float8 matmul),
each at 2 FLOPs per multiply-accumulate. Elementwise ops, softmax, layernorm, GELU, dropout,
embedding lookups and the optimizer step are not counted. Composite ops (aten.linear, aten.matmul,
aten.scaled_dot_product_attention) are decomposed by the counter to what they run.

Formulas this module adds to torch's registry (torch 2.13 lacks them), so attention is counted on
a CPU as on a GPU:
  aten._scaled_dot_product_flash_attention_for_cpu            what sdpa runs on a CPU without
  aten._scaled_dot_product_flash_attention_for_cpu_backward   dropout (model.eval(): infer and
                                                              generate), and its backward
  mslk.f8f8bf16_rowwise                                       torchao's rowwise float8 GPU
                                                              inference gemm, when the mslk
                                                              package is installed
They reuse torch's own sdpa formulas (full QK^T and AV matrices, causal or not; the backward
counts the recomputed scores, as torch does for the CUDA flash kernels). With dropout (training
on a CPU) sdpa runs its math path, plain bmm ops that torch already counts: 2 bmm forward and 4
backward, against the fused kernels' 2 + 5, so a CPU training step with dropout counts half an
attention forward less per layer (0.4% of a tiny model's step).

fp8: torchao's float8 training (Float8Linear) is counted once, at the aten.mm on its float8
tensors (the counter does not see the aten._scaled_mm that mm becomes inside the tensor
subclass); a plain aten._scaled_mm call (torchao's GPU inference path) is counted by torch's own
formula. Either way an fp8 step counts what the fp32 step does.

Split by dtype (`count_flops_by_dtype`, for precision-aware MFU): each counted op's FLOPs go to
the dtype its operands are stored in, read off the op as the counter sees it (after autocast has
cast them): float8 data (a float8 tensor, or a tensor subclass such as torchao's float8 tensors
holding float8 data) -> "fp8"; bfloat16 -> "bf16"; float16 -> "fp16"; float32 -> "fp32", or
"tf32" where the mode runs fp32 matmuls on TF32 tensor cores. So an fp8 model's converted
Linear layers (the mode's module filter: bench.engine.modes.fp8.LinearFilter; forward and both
backward GEMMs) count as fp8, and what the filter leaves out (the LM head, layers whose shapes
do not divide by 16) and the attention score and value matmuls count in the bf16 they run in.
The split adds up to the counter's total, op by op. bench.results.peaks turns it into the
FLOP-weighted peak that MFU divides by.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.utils import flop_counter

from bench.engine.models import ModelSpec, layer_blocks

# Multiply-accumulates are counted as two FLOPs, everywhere.
FLOPS_PER_MAC = 2
# A training step is the forward, the backward to the activations (one more forward's worth of
# matmuls) and the backward to the weights (another): 3 forwards.
TRAIN_FORWARDS = 3


# Where each float8 format exists in this torch (all of them since 2.2; the fnuz ones are AMD's).
FLOAT8_DTYPES = frozenset(
    dtype
    for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    if (dtype := getattr(torch, name, None)) is not None
)


def count_flops(step: Callable[[], Any]) -> int:
    """FLOPs of one call of `step`, counted by torch's FlopCounterMode (matmul-class ops).

    The step really runs (a training step updates the weights): call it where an extra warmup
    step does no harm."""
    return count_flops_by_dtype(step)[0]


def count_flops_by_dtype(
    step: Callable[[], Any], fp32_as: str = "fp32"
) -> tuple[int, dict[str, int]]:
    """(FLOPs of one call of `step`, the same FLOPs by the dtype each op ran in): torch's
    FlopCounterMode with each of its formulas wrapped (its public `custom_mapping`) to note the
    dtype of the op's operands (module docstring). `fp32_as` names fp32 matmuls: "tf32" for a
    mode that runs them on TF32 tensor cores."""
    _register_formulas()
    split: Counter[str] = Counter()

    def noting_dtype(formula: Callable[..., Any]) -> Callable[..., Any]:
        def count(*args: Any, out_val: Any = None, **kwargs: Any) -> Any:
            flops = formula(*args, out_val=out_val, **kwargs)
            split[matmul_dtype(args, kwargs, fp32_as)] += int(flops)
            return flops

        count._get_raw = True  # type: ignore[attr-defined]  # gets tensors: formula wraps itself
        return count

    mapping = {op: noting_dtype(formula) for op, formula in flop_counter.flop_registry.items()}
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping=mapping)
    with counter:
        step()
    return int(counter.get_total_flops()), {k: v for k, v in split.items() if v}


def storage_dtypes(value: Any) -> set[torch.dtype]:
    """The dtypes a tensor's data is stored in: a tensor subclass (torchao's float8 tensors, a
    DTensor) by its inner tensors, whose dtypes are what runs (its own `dtype` is the one it
    stands in for); nothing for a non-tensor."""
    if not isinstance(value, torch.Tensor):
        return set()
    flatten = getattr(value, "__tensor_flatten__", None)
    if flatten is None:
        return {value.dtype}
    names, _ = flatten()
    inner: set[torch.dtype] = set()
    for name in names:
        inner |= storage_dtypes(getattr(value, name, None))
    return inner or {value.dtype}


def matmul_dtype(args: Any, kwargs: dict[str, Any], fp32_as: str = "fp32") -> str:
    """The peak-table dtype (bench.results.peaks) a matmul-class op runs in, from its operands:
    fp8 when any holds float8 data (scales are fp32), else bf16, fp16, then fp32 (`fp32_as`)."""
    dtypes: set[torch.dtype] = set()
    for value in (*args, *kwargs.values()):
        dtypes |= storage_dtypes(value)
    if dtypes & FLOAT8_DTYPES:
        return "fp8"
    if torch.bfloat16 in dtypes:
        return "bf16"
    if torch.float16 in dtypes:
        return "fp16"
    return fp32_as


# ---------------------------------------------------------------------------------------------
# Formulas torch's FlopCounterMode lacks
# ---------------------------------------------------------------------------------------------


def _cpu_attention(
    query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None, **kw: Any
) -> int:
    """sdpa's CPU flash kernel: torch's formula for the CUDA flash kernel (shapes [B, H, S, D])."""
    return int(flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape))


def _cpu_attention_backward(
    grad_out_shape: Any,
    query_shape: Any,
    key_shape: Any,
    value_shape: Any,
    *args: Any,
    out_shape: Any = None,
    **kw: Any,
) -> int:
    """Its backward: torch's formula for the CUDA flash backward (same argument order)."""
    return int(
        flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)
    )


def _rowwise_fp8_gemm_flop(xq: Any, wq: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
    """mslk.f8f8bf16_rowwise(XQ [M, K], WQ [N, K]) -> [M, N]: 2*M*N*K, read off the output."""
    return FLOPS_PER_MAC * math.prod(out_shape) * int(xq[-1])


def _optional_op(namespace: str, name: str) -> Any:
    """torch.ops.<namespace>.<name>, or None where no loaded library defines it."""
    try:
        return getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return None


def _register_formulas() -> None:
    """Add the missing formulas to torch's registry, once each. Called at every count, not at
    import: mslk's ops exist only after torchao has imported it. An op torch learns to count
    itself keeps torch's formula."""
    formulas = [
        (_optional_op("aten", "_scaled_dot_product_flash_attention_for_cpu"), _cpu_attention),
        (
            _optional_op("aten", "_scaled_dot_product_flash_attention_for_cpu_backward"),
            _cpu_attention_backward,
        ),
        (_optional_op("mslk", "f8f8bf16_rowwise"), _rowwise_fp8_gemm_flop),
    ]
    for op, formula in formulas:
        if op is not None and op not in flop_counter.flop_registry:
            flop_counter.register_flop_formula(op)(formula)


# ---------------------------------------------------------------------------------------------
# Analytic estimate
# ---------------------------------------------------------------------------------------------


def _matmul_weights(spec: ModelSpec) -> tuple[int, int]:
    """(body, head): weights of the matmuls in the repeated transformer layers and outside them
    (the output head, a masked LM's head transform), read off the model's structure on the meta
    device: every nn.Linear (in x out) and transformers' Conv1D (GPT-2). So grouped-query
    attention (narrow k/v projections), gated MLPs (three matrices), biases-or-not and an untied
    head are what the config makes them, for any architecture."""
    return _weights_of(spec.skeleton())


def _weights_of(model: torch.nn.Module) -> tuple[int, int]:
    in_layers = {id(m) for block in layer_blocks(model) for m in block.modules()}
    body = head = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        is_matmul = isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"
        if not is_matmul or weight is None:
            continue
        if id(module) in in_layers:
            body += weight.numel()
        else:
            head += weight.numel()
    return body, head


def matmul_weights(spec: ModelSpec) -> int:
    """N_matmul: weights of every matmul in a forward (all Linear/Conv1D layers, the LM head
    included; not the embedding lookups, biases or layernorms)."""
    return sum(_matmul_weights(spec))


def layer_matmul_share(spec: ModelSpec) -> float:
    """The transformer layers' share of the matmul weights (the rest is the output head): the
    share of a step's matmul FLOPs that a precision converting only the layers' Linear modules
    (fp8) runs in its own kernels, attention aside."""
    body, head = _matmul_weights(spec)
    return body / (body + head)


def _layers_width(spec: ModelSpec) -> tuple[int, int]:
    """(layers, query width): the transformer layers, and heads x head size of a query (the
    hidden size, except where a config sets head_dim apart: Gemma, Mistral); grouped-query
    attention shares keys and values, not queries, so it does not change QK^T and AV."""
    config = spec.config()
    heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or int(config.hidden_size) // heads
    return int(config.num_hidden_layers), heads * int(head_dim)


def attention_flops(spec: ModelSpec, query_tokens: int, context_len: int) -> int:
    """QK^T and AV over all layers for `query_tokens` queries each seeing `context_len` keys:
    2 matmuls * 2 FLOPs * layers * queries * context * query width (the full matrix: sdpa
    computes it whole, causal, sliding-window or not)."""
    layers, width = _layers_width(spec)
    return 2 * FLOPS_PER_MAC * layers * query_tokens * context_len * width


def forward_flops(spec: ModelSpec, batch_size: int, seq_len: int) -> int:
    """One forward over batch_size x seq_len tokens: 2 * N_matmul * T + attention."""
    tokens = batch_size * seq_len
    return FLOPS_PER_MAC * matmul_weights(spec) * tokens + attention_flops(spec, tokens, seq_len)


def generate_flops(spec: ModelSpec, batch_size: int, seq_len: int, new_tokens: int) -> int:
    """Greedy decode of `new_tokens` after a seq_len prompt, as transformers' generate runs it:
    a prefill forward whose LM head sees only the last position (it passes logits_to_keep=1),
    then new_tokens - 1 single-token forwards, each attending to the cache so far."""
    body, head = _matmul_weights(spec)
    prefill = FLOPS_PER_MAC * (body * batch_size * seq_len + head * batch_size) + attention_flops(
        spec, batch_size * seq_len, seq_len
    )
    decode = sum(
        FLOPS_PER_MAC * (body + head) * batch_size + attention_flops(spec, batch_size, seq_len + i)
        for i in range(1, new_tokens)
    )
    return prefill + decode


def analytic_flops(
    spec: ModelSpec, workload: str, batch_size: int, seq_len: int, new_tokens: int = 16
) -> float:
    """Estimated FLOPs of one step of `workload` (train, infer, generate), matmul-class only.

    forward  = 2 * N_matmul * T + 2 * 2 * n_layer * T * seq_len * d_model   (T = batch * seq_len;
               the second term is QK^T and AV, the full matrix, not causal-halved: sdpa computes
               it whole)
    train    = 3 * forward          (forward, backward to activations, backward to weights)
    infer    = forward
    generate = prefill (forward of the prompt, LM head on its last position only) + new_tokens - 1
               single-token forwards against the KV cache (`generate_flops`). Approximate in
               principle (it follows transformers' current generate loop; a generate that
               stops early at EOS runs fewer: mpbench forces min_new_tokens).
    """
    if workload == "train":
        return float(TRAIN_FORWARDS * forward_flops(spec, batch_size, seq_len))
    if workload == "infer":
        return float(forward_flops(spec, batch_size, seq_len))
    if workload == "generate":
        return float(generate_flops(spec, batch_size, seq_len, new_tokens))
    raise ValueError(f"unknown workload {workload!r}; expected train, infer or generate")

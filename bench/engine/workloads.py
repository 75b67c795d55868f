"""Workloads: the inputs of a case and the one step that gets timed.

- train:    forward with labels, backward, AdamW step, zero_grad
- infer:    forward without autograd, in the mode's inference context (torch.inference_mode(),
            torch.no_grad() for fp8's Float8Linear) (causal LM: prefill over the whole sequence)
- generate: greedy token-by-token decode with the KV cache (causal LMs only)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from bench.engine.families import MASKED_LM, stable_seed
from bench.engine.models import ModelSpec

WORKLOADS: dict[str, str] = {
    "train": "forward with labels, backward, AdamW step, zero_grad",
    "infer": "forward pass without autograd (torch.inference_mode(); torch.no_grad() for fp8 "
    "on a CPU) (causal LM: prefill of the whole sequence)",
    "generate": "greedy decode of new tokens with the KV cache, after a prefill (causal LMs only)",
}

LEARNING_RATE = 1e-4


def unsupported_reason(workload: str, spec: ModelSpec) -> str | None:
    """Why `workload` cannot run on this model family, or None."""
    if workload == "generate" and not spec.family.generates:
        return f"generate needs a causal LM; {spec.name} is a masked LM ({spec.model_type})"
    return None


def mask_for_mlm(
    input_ids: torch.Tensor, spec: ModelSpec, seed: int, with_labels: bool
) -> dict[str, torch.Tensor]:
    """Masked-LM inputs from token windows (bench.engine.families.MASKED_LM's batch): 15% of
    positions masked (at least one per row); labels (-100 where unmasked) only for training."""
    return MASKED_LM.batch(input_ids, spec, seed, with_labels)


def make_batch(
    spec: ModelSpec,
    workload: str,
    batch_size: int,
    seq_len: int,
    device: torch.device,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Seeded random tokens (same for every precision), built on the CPU then moved once.

    Masked LMs: 15% of positions masked by the seeded generator, labels -100 elsewhere; causal
    LMs: labels are the inputs (the model shifts them). Inference inputs carry no labels
    (bench.engine.families).
    """
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, spec.vocab_size, (batch_size, seq_len), generator=gen)
    batch = spec.family.batch(input_ids, spec, stable_seed(seed, "mlm"), workload == "train")
    return {k: v.to(device) for k, v in batch.items()}


def make_optimizer(
    model: torch.nn.Module, fused: bool = False, capturable: bool = False
) -> torch.optim.Optimizer:
    """AdamW over all parameters, its state already allocated (see init_optimizer_state); the
    state takes the parameters' dtype (pure bf16/fp16 too).

    `fused` (what mpbench uses on CUDA, as nanoGPT and torchtitan do): one kernel for the whole
    update, and it takes GradScaler's scale and inf flag on the device. With the default
    implementation, `GradScaler.step` reads the inf flag on the host (`.item()`), a sync in
    every amp_fp16 training step. `capturable` (a step captured in a CUDA graph: the execution
    "graphs") keeps AdamW's step count on the device, so a replay updates it."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=LEARNING_RATE, fused=fused or None, capturable=capturable
    )
    init_optimizer_state(optimizer)
    return optimizer


def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Allocate the optimizer's state (AdamW: step, exp_avg, exp_avg_sq) before the first real
    step, as the first step would make it, without moving a weight.

    AdamW allocates its state lazily, in the first step that updates. A training case whose
    GradScaler skips every step (inf gradients at the initial scale) would never allocate it:
    its peak memory, and a --find-max-batch probe, would leave out two copies of the weights.
    So: one step at learning rate 0 (AdamW's update and its decoupled weight decay are both
    multiplied by the learning rate, so the weights stay bit for bit), then every state tensor
    back to zero, which is AdamW's initial state. The step's gradients are ones, not zeros: in
    pure fp16, eps (1e-8) rounds to 0, and zero gradients would make the update 0/0 = NaN,
    which even a zero learning rate does not cancel.
    """
    saved_lr = [group["lr"] for group in optimizer.param_groups]
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    try:
        for group in optimizer.param_groups:
            group["lr"] = 0.0
        for p in params:
            p.grad = torch.ones_like(p)
        optimizer.step()
    finally:
        for group, lr in zip(optimizer.param_groups, saved_lr):
            group["lr"] = lr
        for p in params:
            p.grad = None
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                value.zero_()
            else:
                state[key] = type(value)(0)


def describe_optimizer(optimizer: torch.optim.Optimizer) -> str:
    """The optimizer and its implementation, as recorded in a training case's details."""
    defaults = optimizer.defaults
    if defaults.get("fused"):
        kind = "fused"
    elif defaults.get("foreach"):
        kind = "foreach"
    else:
        kind = "default: foreach on CUDA, for-loop on CPU"
    if defaults.get("capturable"):
        kind += ", capturable"
    return f"{type(optimizer).__name__} ({kind})"


def train_step_fn(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    scaler: torch.amp.GradScaler | None,
    after_step: Callable[[], None] | None = None,
    kwargs: dict[str, Any] | None = None,
) -> Callable[[], torch.Tensor]:
    """One training step returning the loss as a detached tensor (no host sync to read it).
    `after_step` is the precision mode's hook after optimizer.step(), if it has one; `kwargs`
    the family's forward arguments (a causal LM keeps no KV cache: transformers would build one
    in every training forward, and each layer's cache update makes torch.compile recompile the
    block for every layer). Without a cache the forward would run transformers' packed-sequence
    search, a host sync: it runs under `unpacked_rows` as inference does."""
    forward_kwargs = kwargs or {}

    def step() -> torch.Tensor:
        with autocast(), unpacked_rows():
            loss = model(**batch, **forward_kwargs).loss
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if after_step is not None:
            after_step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


Context = Callable[[], contextlib.AbstractContextManager[Any]]


def _one_sequence_per_row(position_ids: torch.Tensor) -> None:
    """transformers' packed-sequence search, answered without looking: mpbench's batches hold
    one sequence per row, so there is never a packed sequence to find."""
    return None


@contextlib.contextmanager
def unpacked_rows() -> Iterator[None]:
    """A forward pass without transformers' packed-sequence search, which synchronises the host.

    transformers 5.25 (masking_utils._preprocess_mask_arguments): when a causal LM's forward has
    no KV cache and no attention mask (mpbench's prefill: `use_cache=False`, no padding), it
    looks for several sequences packed into one row in the position ids the model made itself
    (`arange(seq_len)`): `find_packed_sequence_indices` evaluates
    `(packed_sequence_mask[:, -1] == 0).all()` in an `if`, on the device: a host sync in every
    eager GPT-2 (Llama, Qwen2, ...) inference step, which leaves the GPU idle while the host
    waits. No argument of the forward avoids it without a cost of its own: an all-ones
    attention_mask trades it for `fast_all(padding_mask)` in the SDPA mask code (another sync),
    a KV cache copies every layer's keys and values (memory and time a prefill benchmark must
    not count), a 4-D mask turns off SDPA's causal kernels. For rows that are not packed the
    function returns None, so answering None here changes nothing but the sync (tests hold the
    logits equal). Under torch.compile or CUDA graph capture transformers skips the search
    itself; masked LMs (BERT) pass no position ids and never reach it."""
    from transformers import masking_utils

    found = masking_utils.find_packed_sequence_indices
    masking_utils.find_packed_sequence_indices = _one_sequence_per_row
    try:
        yield
    finally:
        masking_utils.find_packed_sequence_indices = found


def infer_step_fn(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    autocast: Context,
    kwargs: dict[str, Any],
    no_grad: Context = torch.inference_mode,
) -> Callable[[], None]:
    """One forward pass; logits are dropped so a step holds no memory after it ends. `kwargs`
    are the family's forward arguments (a causal LM's prefill keeps no KV cache); `no_grad` is
    the precision mode's inference context (torch.inference_mode unless the mode says). The
    forward runs without transformers' packed-sequence search (`unpacked_rows`: a host sync)."""

    def step() -> None:
        with no_grad(), autocast(), unpacked_rows():
            model(**batch, **kwargs)

    return step


def generate_step_fn(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    autocast: Context,
    new_tokens: int,
    no_grad: Context = torch.inference_mode,
) -> Callable[[], None]:
    """Greedy decode of exactly `new_tokens` tokens after the prompt, with the KV cache."""
    config = model.config
    eos = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    pad_id = config.pad_token_id if config.pad_token_id is not None else (eos or 0)
    attention_mask = torch.ones_like(batch["input_ids"])

    def step() -> None:
        with no_grad(), autocast():
            model.generate(
                input_ids=batch["input_ids"],
                attention_mask=attention_mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=pad_id,
            )

    return step

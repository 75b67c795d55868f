"""Model families by capability: a model is a causal LM (GPT-style: `AutoModelForCausalLM`) or a
masked LM (BERT-style: `AutoModelForMaskedLM`), whatever its architecture (GPT-2, Llama, Qwen2,
Mistral, Gemma; BERT, RoBERTa, ModernBERT, DeBERTa-v2, ...). One small adapter per family holds
what truly differs between them:

  inputs and labels   causal: the tokens are their own labels (the model shifts them);
                      masked: 15% of positions masked with the mask token, labels there only
  forward arguments   causal: no KV cache for a prefill (`use_cache=False`); masked: none
  generate            causal only
  the auto class      that builds a preset from its config or loads a checkpoint

Everything else (positions limit, FLOPs, which Linear layers fp8 converts) is read off the config
or the model itself (bench.engine.models, bench.engine.flops), never from the architecture's name.
The family is decided from the config: its `architectures` entry where it has one (a checkpoint
saved as `LlamaForCausalLM` is a causal LM), else the kind of model its type is (an encoder type
with a masked-LM head is a masked LM, a decoder is a causal LM).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import torch

MLM_PROBABILITY = 0.15  # BERT pre-training masks 15% of positions


def stable_seed(*parts: object) -> int:
    """A seed from its parts, stable across processes (unlike hash())."""
    return zlib.crc32("/".join(str(p) for p in parts).encode())


@dataclass(frozen=True)
class Family:
    """What differs between causal and masked language models."""

    name: str  # "causal-lm" or "masked-lm"
    summary: str
    generates: bool  # greedy decoding with a KV cache (the generate workload)

    def auto_class(self) -> Any:
        """transformers' auto class for this family (builds from a config, loads a checkpoint)."""
        import transformers

        return getattr(transformers, self._auto_class_name)

    @property
    def _auto_class_name(self) -> str:
        return "AutoModelForCausalLM" if self.name == "causal-lm" else "AutoModelForMaskedLM"

    def forward_kwargs(self) -> dict[str, Any]:
        """Arguments of a forward pass over a whole sequence: a causal LM's prefill keeps no KV
        cache (it would cost memory and a copy of every layer's keys and values; without it
        transformers searches the position ids for packed sequences, a host sync that the
        inference step answers without looking: bench.engine.workloads.unpacked_rows)."""
        return {"use_cache": False} if self.generates else {}

    def batch(
        self, input_ids: torch.Tensor, spec: Any, seed: int, with_labels: bool
    ) -> dict[str, torch.Tensor]:
        """A batch from token windows: causal, the tokens (and, for training, the same tokens as
        labels); masked, 15% of positions masked by a generator seeded with `seed` (at least one
        per row; labels -100 elsewhere). No attention_mask: every position is real (no padding),
        and an all-ones mask makes transformers test `mask.all()` on the host, a sync in every
        timed step."""
        if self.generates:
            batch = {"input_ids": input_ids}
            if with_labels:
                batch["labels"] = input_ids.clone()
            return batch
        gen = torch.Generator().manual_seed(seed)
        masked = torch.rand(input_ids.shape, generator=gen) < MLM_PROBABILITY
        masked[:, 0] |= ~masked.any(dim=1)  # every row predicts at least one token
        mask = torch.full_like(input_ids, spec.mask_token_id())
        batch = {"input_ids": torch.where(masked, mask, input_ids)}
        if with_labels:
            batch["labels"] = torch.where(masked, input_ids, torch.full_like(input_ids, -100))
        return batch


CAUSAL_LM = Family(
    "causal-lm", "GPT-style causal LM (AutoModelForCausalLM): next-token loss", generates=True
)
MASKED_LM = Family(
    "masked-lm", "BERT-style masked LM (AutoModelForMaskedLM): masked-token loss", generates=False
)
FAMILIES = (CAUSAL_LM, MASKED_LM)


def family_of(config: Any) -> Family | None:
    """The family of a transformers config, or None for a model that is neither (a seq2seq T5,
    a vision model)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    causal_classes = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    masked_classes = set(MODEL_FOR_MASKED_LM_MAPPING_NAMES.values())
    for architecture in getattr(config, "architectures", None) or []:
        if architecture in masked_classes:
            return MASKED_LM
        if architecture in causal_classes or architecture.endswith(("ForCausalLM", "LMHeadModel")):
            return CAUSAL_LM
        if architecture.endswith("ForMaskedLM"):
            return MASKED_LM
    model_type = getattr(config, "model_type", None)
    causal = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    masked = model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    if causal and masked:  # BERT, RoBERTa: an encoder, unless its config says it decodes
        return CAUSAL_LM if getattr(config, "is_decoder", False) else MASKED_LM
    if causal:
        return CAUSAL_LM
    if masked:
        return MASKED_LM
    return None

"""Models: named presets built from configs with seeded random weights, or a local checkpoint.

Any transformers architecture that is a causal LM (AutoModelForCausalLM: GPT-2, Llama, Qwen2,
Mistral, Gemma, ...) or a masked LM (AutoModelForMaskedLM: BERT, RoBERTa, ModernBERT,
DeBERTa-v2, ...) runs; its family adapter (bench.engine.families) holds what differs between the
two. Nothing is downloaded: a hub id loads only from the local Hugging Face cache, weights load
from safetensors only, and `trust_remote_code` is never set.

Presets copy the shapes of real models (each with its source config) with seeded random
weights: what a precision costs and how far it drifts depends on the shapes (grouped-query
attention, gated MLPs, 128k untied heads) far more than on the trained values. The `-tiny` ones
keep each architecture's structure at a size a CPU test runs in milliseconds.
"""

from __future__ import annotations

import difflib
import functools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.engine.families import FAMILIES, Family, family_of
from bench.errors import ModelError

BERT_MASK_TOKEN_ID = 103  # [MASK] in BERT's uncased vocabulary
# Architectures whose position ids start after the padding index (RoBERTa's
# create_position_ids_from_input_ids): max_position_embeddings - (pad_token_id + 1) positions.
PADDED_POSITIONS = ("roberta", "xlm-roberta", "camembert", "roberta-prelayernorm", "data2vec-text")
UNBOUNDED_POSITIONS = 1 << 20  # a config without max_position_embeddings (rotary, no table)


@dataclass(frozen=True)
class ModelSpec:
    """What the suite names: a preset (config + seed) or a checkpoint directory."""

    name: str  # the name used in case ids
    model_type: str  # the architecture (config.model_type: gpt2, llama, bert, ...)
    family: Family  # causal or masked LM (bench.engine.families)
    config_kwargs: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # checkpoint directory, when not a preset
    summary: str = ""
    ref: str = ""  # what the suite said (a hub id stays a hub id in the resolved suite.toml)
    source: str = ""  # where a preset's shape comes from
    mask_token: int | None = None  # a preset's [MASK] id (its real tokenizer's)

    @property
    def max_positions(self) -> int:
        """Longest sequence the model's positions allow."""
        config = self.config()
        limit = getattr(config, "max_position_embeddings", None)
        if not limit:
            return UNBOUNDED_POSITIONS
        if self.model_type in PADDED_POSITIONS:
            limit -= int(getattr(config, "pad_token_id", 0) or 0) + 1
        return int(limit)

    @property
    def vocab_size(self) -> int:
        """Vocabulary size (random token ids are drawn below it)."""
        return int(self.config().vocab_size)

    def config(self) -> Any:
        """The transformers config (read from the checkpoint for a directory)."""
        return _config(self.model_type, _frozen(self.config_kwargs), self.path)

    def mask_token_id(self) -> int:
        """The [MASK] id for masked-LM inputs: the checkpoint tokenizer's where present, a
        preset's own, else BERT's (within the vocabulary)."""
        if self.path is not None:
            tokenizer_config = self.path / "tokenizer_config.json"
            if tokenizer_config.is_file():
                try:
                    from transformers import AutoTokenizer

                    tok = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
                    if tok.mask_token_id is not None:
                        return int(tok.mask_token_id)
                except (OSError, ValueError):
                    pass
        if self.mask_token is not None:
            return self.mask_token
        return min(BERT_MASK_TOKEN_ID, self.vocab_size - 1)

    def build(self, seed: int) -> torch.nn.Module:
        """An fp32 model on the CPU: seeded random init for presets, loaded weights otherwise."""
        cls = self.family.auto_class()
        if self.path is not None:
            return load_checkpoint(cls, self.path)
        torch.manual_seed(seed)
        return cls.from_config(self.config()).float()

    def skeleton(self) -> torch.nn.Module:
        """The model on the meta device: its structure, no weights (FLOPs, parameter counts)."""
        return _skeleton(self.family.name, self.model_type, _frozen(self.config_kwargs), self.path)

    def parameters(self) -> int:
        """Parameter count (tied weights counted once), from the skeleton."""
        return count_parameters(self.skeleton())

    @property
    def rotary(self) -> bool:
        """The model encodes positions by rotary embeddings (Llama, Qwen2, Mistral, Gemma,
        ModernBERT): a rotary-embedding module in its structure."""
        return any("Rotary" in type(m).__name__ for m in self.skeleton().modules())


def _frozen(kwargs: dict[str, Any]) -> str:
    """A hashable form of a preset's config arguments (for the caches below)."""
    return json.dumps(kwargs, sort_keys=True)


@functools.cache
def _config(model_type: str, kwargs: str, path: Path | None) -> Any:
    from transformers import AutoConfig

    if path is not None:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    return AutoConfig.for_model(model_type, **json.loads(kwargs))


@functools.cache
def _skeleton(family: str, model_type: str, kwargs: str, path: Path | None) -> torch.nn.Module:
    cls = next(f for f in FAMILIES if f.name == family).auto_class()
    with torch.device("meta"):
        return cls.from_config(_config(model_type, kwargs, path))


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------


def _gpt2(
    n_layer: int, n_head: int, n_embd: int, vocab: int = 50257, positions: int = 1024
) -> dict:
    # bos/eos default to 50256; keep them inside a reduced vocabulary.
    last = vocab - 1
    return dict(
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        vocab_size=vocab,
        n_positions=positions,
        bos_token_id=last,
        eos_token_id=last,
    )


def _bert(layers: int, hidden: int, heads: int, vocab: int = 30522, positions: int = 512) -> dict:
    return dict(
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        vocab_size=vocab,
        max_position_embeddings=positions,
    )


def tiny_shape(**overrides: Any) -> dict:
    """Config keys of a CPU-test size of an architecture: 2 layers, 64 wide, 4 heads of 16,
    vocabulary 1024, 512 positions, special ids inside the vocabulary; `overrides` replace or
    add keys (2 KV heads, a sliding window, ...)."""
    shape = dict(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=128,
        vocab_size=1024,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return {**shape, **overrides}


_LLAMA_3_2_1B = dict(  # meta-llama/Llama-3.2-1B config.json
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    vocab_size=128256,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    rope_scaling={
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    tie_word_embeddings=True,
    bos_token_id=128000,
    eos_token_id=128001,
)
_QWEN2_5_0_5B = dict(  # Qwen/Qwen2.5-0.5B config.json (attention q/k/v carry biases)
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    tie_word_embeddings=True,
    use_sliding_window=False,
    bos_token_id=151643,
    eos_token_id=151643,
)
_MISTRAL_7B = dict(  # mistralai/Mistral-7B-v0.1 config.json
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=32000,
    max_position_embeddings=32768,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    sliding_window=4096,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)
_MODERNBERT_BASE = dict(  # answerdotai/ModernBERT-base config.json
    hidden_size=768,
    intermediate_size=1152,
    num_hidden_layers=22,
    num_attention_heads=12,
    vocab_size=50368,
    max_position_embeddings=8192,
    global_attn_every_n_layers=3,
    local_attention=128,
    pad_token_id=50283,
    bos_token_id=50281,
    eos_token_id=50282,
    cls_token_id=50281,
    sep_token_id=50282,
)
_ROBERTA_BASE = dict(  # FacebookAI/roberta-base config.json
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    vocab_size=50265,
    max_position_embeddings=514,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)


def _preset(
    name: str,
    model_type: str,
    family: Family,
    kwargs: dict,
    summary: str,
    source: str = "",
    mask: int | None = None,
) -> ModelSpec:
    return ModelSpec(
        name, model_type, family, kwargs, summary=summary, source=source, mask_token=mask
    )


def _presets() -> tuple[ModelSpec, ...]:
    from bench.engine.families import CAUSAL_LM as C
    from bench.engine.families import MASKED_LM as M

    tiny_note = "2 layers, 64 wide (CPU tests)"
    return (
        _preset(
            "gpt2-tiny",
            "gpt2",
            C,
            _gpt2(2, 4, 128, 8192, 256),
            "2 layers, 128 wide, vocab 8192 (CPU tests)",
        ),  # fmt: skip
        _preset(
            "gpt2-124m", "gpt2", C, _gpt2(12, 12, 768), "GPT-2 small shape", "openai-community/gpt2"
        ),  # fmt: skip
        _preset(
            "gpt2-355m",
            "gpt2",
            C,
            _gpt2(24, 16, 1024),
            "GPT-2 medium shape",
            "openai-community/gpt2-medium",
        ),  # fmt: skip
        _preset(
            "gpt2-774m",
            "gpt2",
            C,
            _gpt2(36, 20, 1280),
            "GPT-2 large shape",
            "openai-community/gpt2-large",
        ),  # fmt: skip
        _preset(
            "gpt2-1.5b",
            "gpt2",
            C,
            _gpt2(48, 25, 1600),
            "GPT-2 XL shape",
            "openai-community/gpt2-xl",
        ),  # fmt: skip
        _preset(
            "llama-3.2-1b",
            "llama",
            C,
            _LLAMA_3_2_1B,
            "Llama-3.2-1B shape: GQA 32/8, SwiGLU, RMSNorm, rotary, tied 128k head",
            "meta-llama/Llama-3.2-1B",
        ),  # fmt: skip
        _preset(
            "qwen2.5-0.5b",
            "qwen2",
            C,
            _QWEN2_5_0_5B,
            "Qwen2.5-0.5B shape: GQA 14/2, SwiGLU, qkv bias, tied 152k head",
            "Qwen/Qwen2.5-0.5B",
        ),  # fmt: skip
        _preset(
            "mistral-7b",
            "mistral",
            C,
            _MISTRAL_7B,
            "Mistral-7B-v0.1 shape: GQA 32/8, SwiGLU, sliding window 4096, untied head (GPUs with the memory)",
            "mistralai/Mistral-7B-v0.1",
        ),  # fmt: skip
        _preset(
            "llama-tiny",
            "llama",
            C,
            tiny_shape(num_key_value_heads=2),
            f"Llama structure, {tiny_note}",
        ),  # fmt: skip
        _preset(
            "qwen2-tiny",
            "qwen2",
            C,
            tiny_shape(num_key_value_heads=2, tie_word_embeddings=True),
            f"Qwen2 structure, {tiny_note}",
        ),  # fmt: skip
        _preset(
            "mistral-tiny",
            "mistral",
            C,
            tiny_shape(num_key_value_heads=2, sliding_window=32, head_dim=16),
            f"Mistral structure, {tiny_note}",
        ),  # fmt: skip
        _preset(
            "bert-tiny",
            "bert",
            M,
            _bert(2, 128, 2, 8192, 256),
            "2 layers, 128 wide, vocab 8192 (CPU tests)",
        ),  # fmt: skip
        _preset(
            "bert-mini",
            "bert",
            M,
            _bert(4, 256, 4),
            "BERT-mini shape (4 layers, 256 wide)",
            "google/bert_uncased_L-4_H-256_A-4",
        ),  # fmt: skip
        _preset(
            "bert-base",
            "bert",
            M,
            _bert(12, 768, 12),
            "BERT-base shape",
            "google-bert/bert-base-uncased",
        ),  # fmt: skip
        _preset(
            "bert-large",
            "bert",
            M,
            _bert(24, 1024, 16),
            "BERT-large shape",
            "google-bert/bert-large-uncased",
        ),  # fmt: skip
        _preset(
            "roberta-base",
            "roberta",
            M,
            _ROBERTA_BASE,
            "RoBERTa-base shape",
            "FacebookAI/roberta-base",
            mask=50264,
        ),  # fmt: skip
        _preset(
            "modernbert-base",
            "modernbert",
            M,
            _MODERNBERT_BASE,
            "ModernBERT-base shape: GeGLU, rotary, local/global attention, no biases",
            "answerdotai/ModernBERT-base",
            mask=50284,
        ),  # fmt: skip
        _preset(
            "roberta-tiny",
            "roberta",
            M,
            # RoBERTa's ids: positions start after the padding id (1), so 514 embeddings.
            tiny_shape(
                max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0
            ),
            f"RoBERTa structure, {tiny_note}",
        ),  # fmt: skip
        _preset(
            "modernbert-tiny",
            "modernbert",
            M,
            tiny_shape(
                global_attn_every_n_layers=2, local_attention=16, cls_token_id=1, sep_token_id=2
            ),
            f"ModernBERT structure, {tiny_note}",
        ),  # fmt: skip
    )


PRESETS: dict[str, ModelSpec] = {spec.name: spec for spec in _presets()}


def resolve_model(name: str, base_dir: Path | None = None) -> ModelSpec:
    """A preset name, a local checkpoint directory, or a hub id already in the local cache."""
    if name in PRESETS:
        return PRESETS[name]
    candidate = Path(os.path.expanduser(name))
    if not candidate.is_absolute() and base_dir is not None and _exists(base_dir / candidate):
        candidate = base_dir / candidate
    if _exists(candidate) and candidate.is_dir():
        return _checkpoint_spec(candidate)
    if name.startswith((".", "/", "~")) or _exists(candidate):
        raise ModelError(f"model {name!r}: no such checkpoint directory")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        return _hub_cache_spec(name)
    close = difflib.get_close_matches(name, PRESETS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ModelError(
        f"model {name!r} is not a preset or a local directory{hint}; presets: {', '.join(PRESETS)}"
    )


def _exists(path: Path) -> bool:
    """Path.exists that answers False for names the OS rejects (too long, NUL bytes)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


SUPPORTED = (
    "mpbench runs causal LMs (AutoModelForCausalLM: GPT-2, Llama, Qwen2, Mistral, Gemma, ...) "
    "and masked LMs (AutoModelForMaskedLM: BERT, RoBERTa, ModernBERT, DeBERTa-v2, ...)"
)


def _checkpoint_spec(path: Path) -> ModelSpec:
    """Validate a checkpoint directory: its config (no remote code), its family, its weights."""
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: not a model directory (no config.json)")
    try:
        config = _config("", "{}", path.resolve())
    except ValueError as exc:
        if "trust_remote_code" in str(exc) or "custom code" in str(exc):
            raise ModelError(
                f"{path}: its config needs remote code (trust_remote_code); mpbench never runs "
                f"code from a checkpoint. {SUPPORTED}"
            ) from None
        raise ModelError(
            f"{path}/config.json: cannot be read as a transformers config ({exc})"
        ) from None
    except (OSError, KeyError) as exc:
        raise ModelError(
            f"{path}/config.json: cannot be read as a transformers config ({exc})"
        ) from None
    family = family_of(config)
    model_type = getattr(config, "model_type", None) or "?"
    if family is None:
        architectures = ", ".join(getattr(config, "architectures", None) or [])
        what = f" ({architectures})" if architectures else ""
        raise ModelError(
            f"{path}: model_type {model_type!r}{what} is neither a causal nor a masked language "
            f"model; {SUPPORTED}"
        )
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickles = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        what = f"only pickle weights ({', '.join(sorted(pickles))})" if pickles else "no weights"
        raise ModelError(
            f"{path}: {what}; mpbench loads safetensors only (never arbitrary pickle). Convert with "
            "`model.save_pretrained(dir, safe_serialization=True)`"
        )
    spec = ModelSpec(_slug(path.name), model_type, family, path=path.resolve(), summary=str(path))
    missing = missing_weights(spec, files)
    if missing:
        shown = ", ".join(missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        raise ModelError(
            f"{path}: the checkpoint lacks {len(missing)} weight(s) of its {family.name} model "
            f"({shown}): they would run with random values. Save the whole model (its "
            f"{family.auto_class().__name__} class) with save_pretrained"
        )
    return spec


def missing_weights(spec: ModelSpec, files: list[Path]) -> list[str]:
    """The model's parameters (tied ones once) that no safetensors file of the checkpoint holds,
    allowing for the base-model prefix either way (a saved `BertModel` lacks `bert.`)."""
    from safetensors import safe_open

    stored: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="pt") as fh:
            stored.update(fh.keys())
    model = spec.skeleton()
    prefix = getattr(model, "base_model_prefix", "") or ""
    missing = []
    for name, _ in model.named_parameters(remove_duplicate=True):
        names = {name, f"{prefix}.{name}", name.removeprefix(f"{prefix}.")}
        if not names & stored:
            missing.append(name)
    return missing


def _hub_cache_spec(hub_id: str) -> ModelSpec:
    """A hub id works only when it is already in the local cache: never a download."""
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(hub_id, local_files_only=True)
    except Exception:  # any miss (not cached, offline, bad id) is the same answer for the user
        raise ModelError(
            f"model {hub_id!r}: not a local directory, and as a Hugging Face Hub id it has no local "
            "copy; mpbench never "
            f"downloads. Fetch it once with `hf download {hub_id} --local-dir DIR` and pass DIR"
        ) from None
    spec = _checkpoint_spec(Path(local))
    return ModelSpec(
        _slug(hub_id), spec.model_type, spec.family, path=spec.path, summary=hub_id, ref=hub_id
    )


def load_checkpoint(cls: Any, path: Path) -> torch.nn.Module:
    """Load fp32 weights from safetensors in a local directory (no network, no pickle, no
    remote code)."""
    try:
        model = cls.from_pretrained(
            path, local_files_only=True, use_safetensors=True, dtype=torch.float32
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: cannot load the checkpoint ({exc})") from None
    return model.float()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


def layer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated transformer layers: the longest ModuleList (GPT-2's `h`, BERT's `layer`,
    Llama's `layers`). FSDP shards them one by one; the FLOP count tells them from the head."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())

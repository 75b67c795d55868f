"""Models: named presets built from configs with seeded random weights, or a local checkpoint.

GPT-style models are `GPT2LMHeadModel` (causal LM); BERT-style are `BertForMaskedLM`.
Nothing is downloaded: a hub id loads only from the local Hugging Face cache.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.errors import ModelError

BERT_MASK_TOKEN_ID = 103  # [MASK] in BERT's uncased vocabulary


@dataclass(frozen=True)
class ModelSpec:
    """What the suite names: a preset (config + seed) or a checkpoint directory."""

    name: str  # the name used in case ids
    family: str  # 'gpt2' or 'bert'
    config_kwargs: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # checkpoint directory, when not a preset
    summary: str = ""
    ref: str = ""  # what the suite said (a hub id stays a hub id in the resolved suite.toml)

    @property
    def max_positions(self) -> int:
        """Longest sequence the model's position embeddings allow."""
        config = self.config()
        if self.family == "gpt2":
            return int(config.n_positions)
        return int(config.max_position_embeddings)

    @property
    def vocab_size(self) -> int:
        """Vocabulary size (random token ids are drawn below it)."""
        return int(self.config().vocab_size)

    def config(self) -> Any:
        """The transformers config (read from the checkpoint for a directory)."""
        from transformers import AutoConfig, BertConfig, GPT2Config

        if self.path is not None:
            return AutoConfig.from_pretrained(self.path, local_files_only=True)
        cls = GPT2Config if self.family == "gpt2" else BertConfig
        return cls(**self.config_kwargs)

    def mask_token_id(self) -> int:
        """The [MASK] id for BERT inputs: the checkpoint tokenizer's where present."""
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
        return min(BERT_MASK_TOKEN_ID, self.vocab_size - 1)

    def build(self, seed: int) -> torch.nn.Module:
        """An fp32 model on the CPU: seeded random init for presets, loaded weights otherwise."""
        from transformers import BertForMaskedLM, GPT2LMHeadModel

        cls = GPT2LMHeadModel if self.family == "gpt2" else BertForMaskedLM
        if self.path is not None:
            return load_checkpoint(cls, self.path)
        torch.manual_seed(seed)
        model = cls(self.config())
        return model.float()


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


PRESETS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "gpt2-tiny",
            "gpt2",
            _gpt2(2, 4, 128, 8192, 256),
            summary="2 layers, 128 wide, vocab 8192 (CPU tests)",
        ),
        ModelSpec("gpt2-124m", "gpt2", _gpt2(12, 12, 768), summary="GPT-2 small shape"),
        ModelSpec("gpt2-355m", "gpt2", _gpt2(24, 16, 1024), summary="GPT-2 medium shape"),
        ModelSpec("gpt2-774m", "gpt2", _gpt2(36, 20, 1280), summary="GPT-2 large shape"),
        ModelSpec("gpt2-1.5b", "gpt2", _gpt2(48, 25, 1600), summary="GPT-2 XL shape"),
        ModelSpec(
            "bert-tiny",
            "bert",
            _bert(2, 128, 2, 8192, 256),
            summary="2 layers, 128 wide, vocab 8192 (CPU tests)",
        ),
        ModelSpec(
            "bert-mini", "bert", _bert(4, 256, 4), summary="BERT-mini shape (4 layers, 256 wide)"
        ),
        ModelSpec("bert-base", "bert", _bert(12, 768, 12), summary="BERT-base shape"),
        ModelSpec("bert-large", "bert", _bert(24, 1024, 16), summary="BERT-large shape"),
    )
}

_MODEL_TYPES = {"gpt2": "gpt2", "bert": "bert"}


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


def _checkpoint_spec(path: Path) -> ModelSpec:
    """Validate a checkpoint directory and derive its family from config.json."""
    if not (path / "config.json").is_file():
        raise ModelError(f"{path}: not a model directory (no config.json)")
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(
            f"{path}/config.json: cannot be read as a transformers config ({exc})"
        ) from None
    family = _MODEL_TYPES.get(getattr(config, "model_type", None) or "")
    if family is None:
        raise ModelError(
            f"{path}: model_type {config.model_type!r} is not supported; mpbench runs "
            "gpt2 (GPT2LMHeadModel) and bert (BertForMaskedLM) checkpoints"
        )
    if not list(path.glob("*.safetensors")):
        pickles = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        what = f"only pickle weights ({', '.join(sorted(pickles))})" if pickles else "no weights"
        raise ModelError(
            f"{path}: {what}; mpbench loads safetensors only (never arbitrary pickle). Convert with "
            "`model.save_pretrained(dir, safe_serialization=True)`"
        )
    return ModelSpec(name=_slug(path.name), family=family, path=path.resolve(), summary=str(path))


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
    return ModelSpec(_slug(hub_id), spec.family, path=spec.path, summary=hub_id, ref=hub_id)


def load_checkpoint(cls: type, path: Path) -> torch.nn.Module:
    """Load fp32 weights from safetensors in a local directory (no network, no pickle)."""
    try:
        model = cls.from_pretrained(
            path, local_files_only=True, use_safetensors=True, dtype=torch.float32
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: cannot load the checkpoint ({exc})") from None
    return model.float()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "model"


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())

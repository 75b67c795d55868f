"""Model presets, checkpoint loading from a local directory, and clear errors."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch

from bench.engine.models import PRESETS, resolve_model
from bench.errors import ModelError


def test_presets_cover_both_families_and_sizes() -> None:
    for name in ["gpt2-tiny", "gpt2-124m", "gpt2-355m", "gpt2-774m", "gpt2-1.5b"]:
        assert (PRESETS[name].model_type, PRESETS[name].family.name) == ("gpt2", "causal-lm")
    for name in ["bert-tiny", "bert-mini", "bert-base", "bert-large"]:
        assert (PRESETS[name].model_type, PRESETS[name].family.name) == ("bert", "masked-lm")
    assert PRESETS["gpt2-124m"].config().n_embd == 768
    assert PRESETS["bert-large"].config().num_hidden_layers == 24


def test_seeded_init_is_reproducible_and_seed_dependent() -> None:
    spec = PRESETS["gpt2-tiny"]
    a, b, c = spec.build(seed=1), spec.build(seed=1), spec.build(seed=2)
    wa, wb, wc = (m.transformer.h[0].attn.c_attn.weight for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)
    assert type(a).__name__ == "GPT2LMHeadModel"
    assert type(PRESETS["bert-tiny"].build(0)).__name__ == "BertForMaskedLM"


def test_local_checkpoint_loads_with_family_from_config(tmp_path: Path) -> None:
    source = PRESETS["bert-tiny"].build(seed=3)
    ckpt = tmp_path / "my-bert"
    source.save_pretrained(ckpt, safe_serialization=True)
    spec = resolve_model(str(ckpt))
    assert (spec.name, spec.model_type, spec.path) == ("my-bert", "bert", ckpt.resolve())
    assert spec.family.name == "masked-lm"
    loaded = spec.build(seed=0)  # the seed does not matter: weights come from the file
    assert torch.equal(
        loaded.bert.encoder.layer[0].attention.self.query.weight,
        source.bert.encoder.layer[0].attention.self.query.weight,
    )


def test_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such checkpoint directory"):
        resolve_model(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="not a model directory"):
        resolve_model(str(empty))
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(ModelError, match="model_type 't5' is neither a causal nor a masked"):
        resolve_model(str(t5))
    pickled = tmp_path / "pickled"
    PRESETS["gpt2-tiny"].config().save_pretrained(pickled)
    torch.save({}, pickled / "pytorch_model.bin")
    with pytest.raises(
        ModelError, match=r"only pickle weights \(pytorch_model.bin\).*safetensors only"
    ):
        resolve_model(str(pickled))


def test_hub_id_without_local_copy_fails_without_touching_the_network(
    monkeypatch, tmp_path
) -> None:
    """No connection is even attempted (so nothing waits on a network timeout)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    attempts = []

    def no_network(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("the test forbids the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ModelError, match="no local copy; mpbench never downloads"):
        resolve_model("openai-community/gpt2")
    assert attempts == []


def test_unknown_preset_suggests_a_name() -> None:
    with pytest.raises(ModelError, match="did you mean 'gpt2-tiny'"):
        resolve_model("gpt2-tiyn")

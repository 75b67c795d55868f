"""Token data for the numerics passes: random and text streams, windows, BERT masks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.engine.data import (
    has_tokenizer,
    make_batches,
    random_stream,
    stable_seed,
    token_stream,
)
from bench.engine.families import CAUSAL_LM, MASKED_LM
from bench.engine.models import PRESETS, ModelSpec
from bench.engine.workloads import mask_for_mlm

GPT = PRESETS["gpt2-tiny"]
BERT = PRESETS["bert-tiny"]


def test_random_stream_is_seeded_and_in_vocabulary() -> None:
    a = random_stream(GPT, 1000, seed=3).tokens
    assert torch.equal(a, random_stream(GPT, 1000, seed=3).tokens)
    assert not torch.equal(a, random_stream(GPT, 1000, seed=4).tokens)
    assert int(a.min()) >= 0 and int(a.max()) < GPT.vocab_size


def test_batches_are_consecutive_windows_of_the_stream(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(bytes(range(200)))
    made = make_batches(f"text:{path}", GPT, True, batch_size=2, seq_len=8, count=3, seed=0)
    assert (made.tokenizer, made.wrapped) == ("bytes", False)
    flat = torch.cat([b["input_ids"].flatten() for b in made.batches])
    assert flat.tolist() == list(range(48))  # byte value = token id, in file order
    assert torch.equal(made.batches[0]["labels"], made.batches[0]["input_ids"])


def test_bytes_wrap_modulo_vocab_and_short_text_wraps(tmp_path: Path) -> None:
    small = ModelSpec(
        "small", "gpt2", CAUSAL_LM, dict(vocab_size=100, n_layer=1, n_head=1, n_embd=8)
    )
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xff\x00\x64")  # 255, 0, 100
    stream = token_stream(f"text:{path}", small, length=6, seed=0)
    windows, wrapped = stream.windows(2, 3)
    assert wrapped and windows.tolist() == [[55, 0, 0], [55, 0, 0]]


def test_empty_text_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        token_stream(f"text:{path}", GPT, 10, 0)


def test_bert_masks_are_seeded_and_like_make_batch() -> None:
    ids = random_stream(BERT, 64, 0).tokens.reshape(4, 16)
    a = mask_for_mlm(ids, BERT, seed=7, with_labels=True)
    b = mask_for_mlm(ids, BERT, seed=7, with_labels=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    masked = a["labels"] != -100
    assert masked.any(dim=1).all()  # every row predicts something
    assert (a["input_ids"][masked] == BERT.mask_token_id()).all()
    assert torch.equal(a["input_ids"][~masked], ids[~masked])
    assert torch.equal(a["labels"][masked], ids[masked])
    assert "labels" not in mask_for_mlm(ids, BERT, seed=7, with_labels=False)


def test_bert_batches_get_different_masks_per_step() -> None:
    made = make_batches("random", BERT, True, batch_size=2, seq_len=32, count=2, seed=1)
    first, second = (b["labels"] != -100 for b in made.batches)
    assert not torch.equal(first, second)


def test_checkpoint_tokenizer_is_used(tmp_path: Path) -> None:
    from transformers import BertConfig, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "numerics"]
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(words)})
    tokenizer.save_pretrained(tmp_path)
    BertConfig(vocab_size=len(words), hidden_size=8, num_hidden_layers=1).save_pretrained(tmp_path)
    spec = ModelSpec("ckpt", "bert", MASKED_LM, path=tmp_path)
    assert has_tokenizer(tmp_path) and not has_tokenizer(None)
    text = tmp_path / "text.txt"
    text.write_text("hello world numerics hello", encoding="utf-8")
    stream = token_stream(f"text:{text}", spec, length=4, seed=0)
    assert stream.tokenizer == "checkpoint"
    assert stream.tokens.tolist() == [5, 6, 7, 5]


def test_stable_seed_is_stable() -> None:
    assert stable_seed(0, "gpt2-tiny", "numerics") == stable_seed(0, "gpt2-tiny", "numerics")
    assert stable_seed(0, "a") != stable_seed(1, "a")

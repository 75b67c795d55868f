"""Token data for the numerics passes: seeded random tokens or a local text file.

`suite.info.data` is either "random" (the default) or "text:/abs/path". Text is tokenized with the
checkpoint's own tokenizer when the model folder (`spec.path`) has one (AutoTokenizer,
local_files_only), else as bytes (token id = byte value modulo the vocabulary). Nothing is
downloaded. Batches are consecutive windows of the token stream: batch t holds windows
t*batch_size ... (t+1)*batch_size - 1, each `seq_len` tokens long; a text shorter than the pass
needs is read again from its start (`wrapped` says so).

Masked-LM batches are masked like `bench.engine.workloads.make_batch` masks its random ones (15%
of positions, at least one per row, labels -100 elsewhere: bench.engine.families), with a seeded
generator per batch, so every precision sees the same masks (METHODS rule 9).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from bench.engine.families import stable_seed
from bench.engine.models import ModelSpec

RANDOM = "random"
TEXT_PREFIX = "text:"
# Files whose presence means a checkpoint folder carries its tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt")


@dataclass(frozen=True)
class TokenStream:
    """A 1-D stream of token ids and where it came from."""

    tokens: torch.Tensor  # int64, 1-D, every id < the model's vocabulary
    source: str  # "random" or "text:/abs/path"
    tokenizer: str  # "random", "checkpoint" or "bytes"

    def windows(self, count: int, seq_len: int) -> tuple[torch.Tensor, bool]:
        """`count` consecutive windows of `seq_len` tokens, shape [count, seq_len], and whether
        the stream had to be read again from its start to fill them."""
        needed = count * seq_len
        stream = self.tokens
        wrapped = stream.numel() < needed
        if wrapped:
            stream = stream.repeat((needed + stream.numel() - 1) // stream.numel())
        return stream[:needed].reshape(count, seq_len).clone(), wrapped


def random_stream(spec: ModelSpec, length: int, seed: int) -> TokenStream:
    """`length` uniformly random token ids from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, spec.vocab_size, (length,), generator=gen)
    return TokenStream(tokens, RANDOM, "random")


def has_tokenizer(folder: Path | None) -> bool:
    """True when a checkpoint folder holds tokenizer files."""
    return folder is not None and any((folder / name).is_file() for name in TOKENIZER_FILES)


def text_stream(spec: ModelSpec, path: Path, length: int) -> TokenStream:
    """The start of a text file as at most about `length` token ids: the checkpoint's tokenizer
    when it has one, else its bytes."""
    with open(path, "rb") as fh:
        # A token is rarely longer than 16 bytes: read no more than the pass can use.
        raw = fh.read(max(4096, 16 * length))
    if not raw:
        raise ValueError(f"{path}: the text data file is empty")
    vocab = spec.vocab_size
    if has_tokenizer(spec.path):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(spec.path, local_files_only=True)
        text = raw.decode("utf-8", errors="replace")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        # A tokenizer may know a few more ids than the embedding has rows: keep every id valid.
        tokens = torch.tensor(ids, dtype=torch.int64) % vocab
        kind = "checkpoint"
    else:
        raw = raw[:length]
        tokens = torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(torch.int64) % vocab
        kind = "bytes"
    if tokens.numel() == 0:
        raise ValueError(f"{path}: the text data file has no tokens")
    return TokenStream(tokens, f"{TEXT_PREFIX}{path}", kind)


def token_stream(data: str, spec: ModelSpec, length: int, seed: int) -> TokenStream:
    """The stream named by `suite.info.data` ("random" or "text:PATH") for one model."""
    if data == RANDOM:
        return random_stream(spec, length, seed)
    if data.startswith(TEXT_PREFIX):
        return text_stream(spec, Path(data[len(TEXT_PREFIX) :]), length)
    raise ValueError(f'data {data!r}: expected "random" or "text:PATH"')


@dataclass(frozen=True)
class Batches:
    """The batches of one numerics pass (on the CPU) and how they were made."""

    batches: list[dict[str, torch.Tensor]]
    source: str
    tokenizer: str
    wrapped: bool


def make_batches(
    data: str,
    spec: ModelSpec,
    training: bool,
    batch_size: int,
    seq_len: int,
    count: int,
    seed: int,
) -> Batches:
    """`count` batches of consecutive windows; a causal LM's labels are the inputs (the model
    shifts them), a masked LM gets MLM masks seeded per batch. Inference batches carry no
    labels."""
    stream = token_stream(data, spec, count * batch_size * seq_len, seed)
    windows, wrapped = stream.windows(count * batch_size, seq_len)
    batches = []
    for index in range(count):
        ids = windows[index * batch_size : (index + 1) * batch_size]
        batches.append(spec.family.batch(ids, spec, stable_seed(seed, "mlm", index), training))
    return Batches(batches, stream.source, stream.tokenizer, wrapped)

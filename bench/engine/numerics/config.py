"""The suite's `[numerics]` table: a typed, frozen config with documented defaults."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields, replace
from typing import Any

from bench.errors import SuiteError
from bench.results.schema import finite_or_none


@dataclass(frozen=True)
class NumericsConfig:
    """[numerics]: the divergence pass's shape and the tolerances of its verdicts."""

    enabled: bool = True
    train_steps: int = 30  # training steps of the divergence pass
    batch_size: int | None = None  # None: the smallest batch size of the sweep
    seq_len: int | None = None  # None: the shortest sequence length of the sweep
    # Training: relative loss divergence |loss - fp32| / |fp32| at any step.
    warn_rel_div: float = 0.01
    diverged_rel_div: float = 0.05
    # Training: first-step gradient SQNR below this warns (torchao's 20 dB bar, METHODS rule 12).
    warn_grad_sqnr_db: float = 20.0
    # Training with a GradScaler: warn when it skipped more than this fraction of the steps.
    warn_skipped_frac: float = 0.25
    # Inference: output logits vs fp32.
    warn_sqnr_db: float = 30.0
    diverged_sqnr_db: float = 20.0
    diverged_cosine: float = 0.99  # PyTorch same()'s cosine fallback (METHODS rule 12)
    warn_top1_agreement: float = 0.9
    noise_floor: bool = True  # run fp32 twice (and vs fp64 where affordable): METHODS rule 11
    fp64_max_parameters: int = 150_000_000  # fp64 reference up to this size; 0 = never
    activations: bool = True  # activation range analysis (one instrumented fp32 forward)

    @classmethod
    def from_table(cls, table: dict[str, Any], source: str = "<suite>") -> NumericsConfig:
        """A validated config from the suite's [numerics] table (SuiteError on a bad key)."""
        validate_table(table, source)
        return replace(cls(), **{k: _clean(k, v) for k, v in table.items()})

    def pass_shape(
        self, batch_sizes: tuple[int, ...], seq_lens: tuple[int, ...], max_positions: int
    ) -> tuple[int, int]:
        """(batch size, sequence length) of a model's numerics passes: the table's, else the
        sweep's smallest; the sequence at most the model's positions (one suite of RoBERTa's
        512 and Llama's 128k positions can ask for 4096 to see rotary embeddings late)."""
        batch_size = self.batch_size or min(batch_sizes)
        seq_len = self.seq_len or min(seq_lens)
        return batch_size, min(seq_len, max_positions)

    def thresholds(self) -> dict[str, float]:
        """The tolerances recorded with every verdict."""
        names = (
            "warn_rel_div",
            "diverged_rel_div",
            "warn_grad_sqnr_db",
            "warn_skipped_frac",
            "warn_sqnr_db",
            "diverged_sqnr_db",
            "diverged_cosine",
            "warn_top1_agreement",
        )
        return {name: getattr(self, name) for name in names}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return finite_or_none(value) is not None


def _fraction(value: Any) -> bool:
    return _finite(value) and 0 <= value <= 1


# key: (what the message says it must be, check)
_RULES: dict[str, tuple[str, Any]] = {
    "enabled": ("true or false", lambda v: isinstance(v, bool)),
    "train_steps": ("an integer from 1 to 10000", lambda v: _is_int(v) and 1 <= v <= 10000),
    "batch_size": ("a positive integer", lambda v: _is_int(v) and v > 0),
    "seq_len": ("an integer >= 2", lambda v: _is_int(v) and v >= 2),
    "warn_rel_div": ("a positive number", lambda v: _finite(v) and v > 0),
    "diverged_rel_div": ("a positive number", lambda v: _finite(v) and v > 0),
    "warn_grad_sqnr_db": ("a number (dB)", _finite),
    "warn_skipped_frac": ("a number from 0 to 1", _fraction),
    "warn_sqnr_db": ("a number (dB)", _finite),
    "diverged_sqnr_db": ("a number (dB)", _finite),
    "diverged_cosine": ("a number from 0 to 1", _fraction),
    "warn_top1_agreement": ("a number from 0 to 1", _fraction),
    "noise_floor": ("true or false", lambda v: isinstance(v, bool)),
    "fp64_max_parameters": ("a non-negative integer", lambda v: _is_int(v) and v >= 0),
    "activations": ("true or false", lambda v: isinstance(v, bool)),
}
# Pairs that must be ordered: (lower, higher).
_ORDERED = (("warn_rel_div", "diverged_rel_div"), ("diverged_sqnr_db", "warn_sqnr_db"))

assert set(_RULES) == {f.name for f in fields(NumericsConfig)}, "every key needs a rule"


def _clean(key: str, value: Any) -> Any:
    """Floats where the config holds floats (TOML `1` is an int)."""
    default = getattr(NumericsConfig(), key)
    return float(value) if isinstance(default, float) else value


def validate_table(table: dict[str, Any], source: str) -> None:
    """Check a [numerics] table: unknown keys, wrong types and misordered tolerances raise
    SuiteError naming `source` and the key."""
    if not isinstance(table, dict):
        raise SuiteError(f"{source}: numerics: must be a table ([numerics]); got {table!r}")
    for key, value in table.items():
        rule = _RULES.get(key)
        if rule is None:
            close = difflib.get_close_matches(key, _RULES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SuiteError(
                f"{source}: numerics.{key}: unknown key{hint}; allowed: {', '.join(_RULES)}"
            )
        description, check = rule
        if not check(value):
            raise SuiteError(f"{source}: numerics.{key}: must be {description}; got {value!r}")
    merged = {
        f.name: table.get(f.name, getattr(NumericsConfig(), f.name)) for f in fields(NumericsConfig)
    }
    for low, high in _ORDERED:
        if merged[low] > merged[high]:
            if low in table:
                raise SuiteError(
                    f"{source}: numerics.{low}: must be <= {high} ({merged[high]!r}); "
                    f"got {merged[low]!r}"
                )
            raise SuiteError(
                f"{source}: numerics.{high}: must be >= {low} ({merged[low]!r}); "
                f"got {merged[high]!r}"
            )

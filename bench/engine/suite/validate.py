"""What each key of [suite], [sweep], [timing], [flops] and [parallel] accepts: one pydantic model
per table, and the SuiteError lines built from pydantic's errors.

The models are strict (a TOML integer is not a bool, a string is not a number; a float key
accepts an integer), forbid unknown keys, and state every rule as a type: a constrained int or
float, a Literal of the allowed names, a non-empty list (repeats dropped, order kept). Each key's
`Field(description=...)` is the "must be ..." of its error line. Every key is optional: a key
the file leaves out keeps the default of its dataclass in bench.engine.suite.model, so the
models read back only the keys given (their `None` defaults are never validated nor used).

The error lines stay mpbench's, one per problem, for the first problem in the file's order:

    {source}: {table}.{key}: must be {description}; got {value!r}
    {source}: {table}.{key}: unknown key (did you mean 'x'?); allowed: a, b
    --iterations: must be an integer >= 2; got 1                 (a flag: check_value)

For a list, the value shown is its first wrong item (for a key that takes one value, the first
item). Checks across keys or tables (a sequence longer than a model's positions, the data file)
belong to the reader, bench.engine.suite.files.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from bench.engine.modes import PRECISION_MODES
from bench.engine.workloads import WORKLOADS
from bench.errors import SuiteError
from bench.results.peaks import DTYPES
from bench.results.schema import EXECUTIONS, PARALLEL_STRATEGIES, REDUCE_DTYPES

COMPILE_SCOPES = ("regional", "model")

T = TypeVar("T")


def _unique(items: list[T]) -> tuple[T, ...]:
    """Repeats dropped, order kept, as the tuple the dataclasses hold."""
    return tuple(dict.fromkeys(items))


def _data_source(value: str) -> str:
    if value == "random" or (value.startswith("text:") and value[5:]):
        return value
    raise ValueError("not a data source")


def _all_dtypes(value: float | dict[str, float]) -> dict[str, float]:
    """One number is the peak of every dtype."""
    return value if isinstance(value, dict) else {"all": value}


# The building blocks of the tables below.
NonEmptyList = Annotated[list[T], Field(min_length=1), AfterValidator(_unique)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
AtLeastTwo = Annotated[int, Field(ge=2)]
Fraction = Annotated[float, Field(gt=0, lt=1)]  # strictly between 0 and 1
PositiveNumber = Annotated[float, Field(gt=0, allow_inf_nan=False)]
PeakTflops = Annotated[
    PositiveNumber
    | Annotated[dict[Literal[(*DTYPES, "all")], PositiveNumber], Field(min_length=1)],
    AfterValidator(_all_dtypes),
]


def _choices(names: Iterable[str], quote: bool = False) -> str:
    return ", ".join(f'"{n}"' if quote else n for n in names)


def _key(description: str) -> Any:
    """A key of a table: optional, with the description its error line gives."""
    return Field(None, description=description)


class _Table(BaseModel):
    """A suite table's keys: strict types, unknown keys forbidden."""

    model_config = ConfigDict(strict=True, extra="forbid")


class SuiteTable(_Table):
    """[suite]: identity of the sweep (bench.engine.suite.model.SuiteInfo)."""

    name: str = _key("a string")
    description: str = _key("a string")
    seed: NonNegativeInt = _key("a non-negative integer")
    data: Annotated[str, AfterValidator(_data_source)] = _key(
        '"random" or "text:PATH" (a local text file)'
    )


class SweepTable(_Table):
    """[sweep]: the lists whose cross product becomes cases (model.Sweep)."""

    models: NonEmptyList[str] = _key("a non-empty list of preset names or checkpoint paths")
    workloads: NonEmptyList[Literal[tuple(WORKLOADS)]] = _key(
        f"a non-empty list from: {_choices(WORKLOADS)}"
    )
    precisions: NonEmptyList[Literal[tuple(PRECISION_MODES)]] = _key(
        f"a non-empty list from: {_choices(PRECISION_MODES)}"
    )
    batch_sizes: NonEmptyList[PositiveInt] = _key("a non-empty list of positive integers")
    seq_lens: NonEmptyList[PositiveInt] = _key("a non-empty list of positive integers")
    generate_new_tokens: PositiveInt = _key("a positive integer")
    execution: NonEmptyList[Literal[EXECUTIONS]] = _key(
        f"a non-empty list from: {_choices(EXECUTIONS, quote=True)}"
    )
    compile_scope: Literal[COMPILE_SCOPES] = _key(f"one of: {_choices(COMPILE_SCOPES, quote=True)}")


class TimingTable(_Table):
    """[timing]: warm-up and timed steps per case (model.Timing)."""

    warmup: NonNegativeInt = _key("a non-negative integer")
    iterations: AtLeastTwo = _key("an integer >= 2")
    max_warmup: NonNegativeInt = _key("a non-negative integer")
    steady_window: AtLeastTwo = _key("an integer >= 2")
    steady_tolerance: Fraction = _key("a number between 0 and 1")
    unstable_cv: Fraction = _key("a number between 0 and 1")
    slow_kernel_budget_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = _key(
        "a non-negative number of seconds"
    )


class FlopsTable(_Table):
    """[flops]: FLOPs counting and the peak TFLOP/s override (model.FlopsConfig)."""

    enabled: bool = _key("true or false")
    peak_tflops: PeakTflops = _key(
        f"a positive number (every dtype) or a table of them by dtype ({_choices(DTYPES)})"
    )


class ParallelTable(_Table):
    """[parallel]: data-parallel training (model.ParallelConfig)."""

    strategy: Literal[("none", *PARALLEL_STRATEGIES)] = _key(
        f"one of {_choices(('none', *PARALLEL_STRATEGIES), quote=True)}"
    )
    reduce_dtypes: NonEmptyList[Literal[REDUCE_DTYPES]] = _key(
        f"a non-empty list from: {_choices(REDUCE_DTYPES)}"
    )


TABLES: dict[str, type[_Table]] = {
    "suite": SuiteTable,
    "sweep": SweepTable,
    "timing": TimingTable,
    "flops": FlopsTable,
    "parallel": ParallelTable,
}


def table_keys(table: str) -> list[str]:
    """The keys a table allows, in the order its dataclass declares them."""
    return list(TABLES[table].model_fields)


def check_table(table: str, raw: Any, source: str) -> dict[str, Any]:
    """The clean values of the keys a suite file gives in `table` ({} for a table it lacks).

    The first problem in the file's order raises SuiteError: a table that is not one, an
    unknown key (before any value), a value its key does not accept."""
    if not isinstance(raw, dict):
        raise SuiteError(f"{source}: {table}: must be a table ([{table}])")
    return _validate(table, raw, f"{source}: {table}.")


def check_value(table: str, key: str, value: Any, where: str) -> Any:
    """The clean value of one key given by a flag (`where`: "--iterations"), or SuiteError."""
    return _validate(table, {key: value}, where, flag=True)[key]


def parse_peak_tflops(text: str) -> dict[str, float] | None:
    """--peak-tflops: "989" (every dtype) or "bf16=989,fp8=1979"; None if malformed."""
    try:
        if "=" not in text:
            value: Any = float(text)
        else:
            pairs = dict(item.split("=", 1) for item in text.split(","))
            value = {k.strip(): float(v) for k, v in pairs.items()}
        return FlopsTable.model_validate({"peak_tflops": value}).peak_tflops
    except (ValueError, ValidationError):
        return None


def reject_unknown(keys: Iterable[str], allowed: list[str], where: str) -> None:
    """SuiteError for the first key not in `allowed`, with the closest allowed one as a hint
    (`where`: the file and table the keys are in, e.g. "suite.toml: sweep.")."""
    for key in keys:
        if key not in allowed:
            raise SuiteError(f"{where}{_unknown_key(key, allowed)}")


def _unknown_key(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{key}: unknown key{hint}; allowed: {', '.join(allowed)}"


def _validate(table: str, raw: dict[str, Any], where: str, flag: bool = False) -> dict[str, Any]:
    """Validate `raw` against the table's model; SuiteError from pydantic's first error in the
    order of `raw` (unknown keys first). `where` prefixes "key: ..." (a flag: "where: ...")."""
    model = TABLES[table]
    try:
        clean = model.model_validate(raw)
    except ValidationError as exc:
        order = list(raw)
        errors = exc.errors()
        unknown = [e for e in errors if e["type"] == "extra_forbidden"]
        first = min(unknown or errors, key=lambda e: order.index(e["loc"][0]))
        key = str(first["loc"][0])
        if unknown:
            raise SuiteError(f"{where}{_unknown_key(key, table_keys(table))}") from None
        description = model.model_fields[key].description
        bad = _bad_value(raw[key], first)
        prefix = where if flag else f"{where}{key}"
        raise SuiteError(f"{prefix}: must be {description}; got {bad!r}") from None
    return {key: getattr(clean, key) for key in raw}


def _bad_value(value: Any, error: Any) -> Any:
    """What the error line shows: the value, or for a list the item pydantic's error points at
    (a list where one value belongs: its first item; an empty list: itself)."""
    if not isinstance(value, list):
        return value
    loc = error["loc"]
    if len(loc) > 1 and isinstance(loc[1], int):
        return error["input"]
    return value[0] if value else value

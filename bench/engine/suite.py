"""Suite files (TOML): a sweep of models x workloads x precisions x batch sizes x sequence lengths.

Every problem is a SuiteError naming the file, the key path (and TOML's line where it gives one)
and what is allowed; the CLI prints it and exits 2 before anything runs.
"""

from __future__ import annotations

import difflib
import hashlib
import sys
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from bench.engine.models import ModelSpec, resolve_model
from bench.engine.modes import PRECISION_MODES
from bench.engine.numerics.config import validate_table as validate_numerics_table
from bench.engine.workloads import WORKLOADS
from bench.errors import MpbenchError, SuiteError
from bench.results.peaks import DTYPES
from bench.results.schema import PARALLEL_STRATEGIES, REDUCE_DTYPES, Case

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

BUILTIN_SUITES = ("smoke", "standard", "ci", "full")
COMPILE_CHOICES = ("eager", "compiled")


@dataclass(frozen=True)
class SuiteInfo:
    """[suite]: identity of the sweep."""

    name: str = "suite"
    description: str = ""
    seed: int = 0
    data: str = "random"  # or "text:PATH": a local text file for the numerics passes


@dataclass(frozen=True)
class Sweep:
    """[sweep]: the cross product that becomes cases."""

    models: tuple[str, ...] = ()
    workloads: tuple[str, ...] = ("train", "infer")
    precisions: tuple[str, ...] = tuple(PRECISION_MODES)
    batch_sizes: tuple[int, ...] = (1,)
    seq_lens: tuple[int, ...] = (128,)
    generate_new_tokens: int = 16
    compile: tuple[str, ...] = ("eager",)  # "eager" and/or "compiled" (torch.compile)


@dataclass(frozen=True)
class Timing:
    """[timing]: warm-up steps (excluded) and timed steps per case.

    The warm-up runs at least `warmup` steps and then goes on until the step time is steady: the
    last `steady_window` warm-up steps all within `steady_tolerance` of their median (clocks
    ramp, allocators and autotuners settle, and the first case in a fresh process is the
    coldest). It stops at `max_warmup` steps (never fewer than `warmup`) steady or not, and the
    result records how many it ran and whether it settled. A case whose timed steps spread more
    than `unstable_cv` (stdev / mean, pyperf's 10%) is flagged unstable.
    """

    warmup: int = 2
    iterations: int = 10
    max_warmup: int = 20
    steady_window: int = 5
    steady_tolerance: float = 0.05
    unstable_cv: float = 0.10

    @property
    def warmup_cap(self) -> int:
        """The most warm-up steps a case runs."""
        return max(self.warmup, self.max_warmup)


@dataclass(frozen=True)
class FlopsConfig:
    """[flops]: FLOPs per step, counted once per case (one untimed step under torch's
    FlopCounterMode), for achieved TFLOP/s and MFU against the GPU's dense peak
    (bench.results.peaks). `peak_tflops` overrides that table: one number for every dtype, or a
    table by dtype (`{bf16 = 989, fp8 = 1979}`); needed for MFU on a CPU or an unknown GPU."""

    enabled: bool = True
    peak_tflops: dict[str, float] | None = None  # dtype (or "all") -> TFLOP/s

    def override(self, dtype: str) -> float | None:
        """The overriding peak for `dtype`, if one was given."""
        if not self.peak_tflops:
            return None
        return self.peak_tflops.get(dtype, self.peak_tflops.get("all"))


@dataclass(frozen=True)
class ParallelConfig:
    """[parallel]: data-parallel training (bench.engine.parallel) when the run is launched by
    torchrun. `strategy` "ddp" (DistributedDataParallel) or "fsdp" (FSDP2's fully_shard), or
    "none"; each training case then runs once per `reduce_dtypes` entry, the dtype gradients are
    reduced in (DDP: a communication hook; FSDP2: MixedPrecisionPolicy.reduce_dtype). The world
    size is the launch's, not the suite's."""

    strategy: str = "none"
    reduce_dtypes: tuple[str, ...] = ("fp32",)

    @property
    def enabled(self) -> bool:
        """True for ddp or fsdp."""
        return self.strategy != "none"


@dataclass(frozen=True)
class Shard:
    """`--shard I/N`: this run takes every N-th comparison group of the sweep, from the I-th.

    A comparison group is one shape of one model and workload (model, workload, sequence
    length, batch size): its precisions, eager and compiled, are what speedups and verdicts
    compare, so they stay together on one machine and run back to back. Groups are dealt
    round-robin in the suite's case order, so shards differ by at most one group and the same
    suite splits the same way everywhere; N runs with I = 1..N cover the sweep exactly once."""

    index: int  # 1-based
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, cases: list[Case]) -> list[Case]:
        """The cases of this shard, in their order (`cases`: the whole sweep)."""
        groups = list(dict.fromkeys(comparison_group(c) for c in cases))
        mine = {g for i, g in enumerate(groups) if i % self.count == self.index - 1}
        return [c for c in cases if comparison_group(c) in mine]


def comparison_group(case: Case) -> tuple[str, str, int, int]:
    """The cases compared with each other: one model, workload, sequence length and batch size."""
    return (case.model, case.workload, case.seq_len, case.batch_size)


def parse_shard(text: str, where: str = "--shard") -> Shard:
    """'2/4' -> Shard(2, 4); anything else is a SuiteError naming `where`."""
    index, _, count = str(text).partition("/")
    try:
        shard = Shard(int(index), int(count))
    except ValueError:
        shard = None
    if shard is None or not 1 <= shard.index <= shard.count:
        raise SuiteError(f"{where}: expected I/N with 1 <= I <= N (e.g. 1/2); got {text!r}")
    return shard


@dataclass(frozen=True)
class Suite:
    """A validated suite, with its models resolved."""

    info: SuiteInfo
    sweep: Sweep
    timing: Timing
    models: tuple[ModelSpec, ...]
    source: str = "<suite>"
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)  # [numerics], [check] as given
    flops: FlopsConfig = field(default_factory=FlopsConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    @property
    def name(self) -> str:
        """The suite's name (used in run directory names)."""
        return self.info.name

    def cases(self, device: str, shard: Shard | None = None, world_size: int = 1) -> list[Case]:
        """Every case (of `shard` only, when given), ordered model > workload > seq_len > batch
        size > precision > gradient reduce dtype > eager or compiled, so the cases being
        compared run back to back (drift hits them alike) and batch sizes grow. With [parallel]
        on, training cases are data-parallel over `world_size` ranks (the launch's)."""
        out = []
        parallel = self.parallel
        for spec in self.models:
            for workload in self.sweep.workloads:
                data_parallel = parallel.enabled and workload == "train"
                reduce_dtypes = parallel.reduce_dtypes if data_parallel else (None,)
                for seq_len in self.sweep.seq_lens:
                    for batch_size in self.sweep.batch_sizes:
                        for precision in self.sweep.precisions:
                            for reduce_dtype in reduce_dtypes:
                                for execution in self.sweep.compile:
                                    out.append(
                                        Case(
                                            spec.name,
                                            spec.family,
                                            workload,
                                            precision,
                                            batch_size,
                                            seq_len,
                                            device,
                                            compiled=execution == "compiled",
                                            parallel=parallel.strategy if data_parallel else None,
                                            world_size=world_size if data_parallel else None,
                                            reduce_dtype=reduce_dtype,
                                        )
                                    )
        if shard is None:
            return out
        groups = len({comparison_group(c) for c in out})
        if shard.count > groups:
            raise SuiteError(
                f"--shard {shard}: suite {self.name} has {groups} comparison group(s) (model x "
                f"workload x seq len x batch size) to split; use N <= {groups}"
            )
        return shard.select(out)

    def with_timing(self, values: dict[str, int]) -> Suite:
        """A copy with [timing] keys replaced (from --warmup/--iterations), validated."""
        clean = {k: _check_field(Timing, k, v, f"--{k}") for k, v in values.items()}
        return replace(self, timing=replace(self.timing, **clean))

    def with_parallel(self, strategy: str | None, reduce_dtypes: list[str] | None) -> Suite:
        """A copy with [parallel] keys replaced (from --parallel/--reduce-dtypes), validated."""
        values = {"strategy": strategy, "reduce_dtypes": reduce_dtypes}
        clean = {
            k: _check_field(ParallelConfig, k, v, f"--{k.replace('_', '-')}")
            for k, v in values.items()
            if v is not None
        }
        return replace(self, parallel=replace(self.parallel, **clean))

    def with_peak_tflops(self, text: str) -> Suite:
        """A copy with [flops] peak_tflops from --peak-tflops ("989" or "bf16=989,fp8=1979")."""
        peaks = parse_peak_tflops(text)
        if peaks is None:
            raise SuiteError(
                "--peak-tflops: must be a positive number (every dtype) or DTYPE=N pairs with "
                f"DTYPE one of {', '.join(DTYPES)} (e.g. bf16=989,fp8=1979); got {text!r}"
            )
        return replace(self, flops=replace(self.flops, peak_tflops=peaks))

    def model(self, name: str) -> ModelSpec:
        """The resolved spec of a model named in this suite."""
        for spec in self.models:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def fingerprint(self) -> str:
        """sha256 of the resolved suite (comments aside): what --resume checks is unchanged."""
        body = "\n".join(line for line in self.to_toml().splitlines() if not line.startswith("#"))
        return hashlib.sha256(body.encode()).hexdigest()

    def to_toml(self) -> str:
        """The resolved suite as TOML (what ran, flags applied), loadable by load_suite."""
        lines = [f"# resolved from {self.source}", "[suite]"]
        lines += _toml_items(self.info)
        lines += ["", "[sweep]"]
        sweep = replace(self.sweep, models=tuple(_model_ref(s) for s in self.models))
        lines += _toml_items(sweep)
        lines += ["", "[timing]"]
        lines += _toml_items(self.timing)
        lines += ["", "[flops]", f"enabled = {_toml_value(self.flops.enabled)}"]
        if self.flops.peak_tflops:
            lines.append(f"peak_tflops = {_toml_value(self.flops.peak_tflops)}")
        if self.parallel.enabled:  # absent when off, so older suites keep their hash
            lines += ["", "[parallel]"] + _toml_items(self.parallel)
        for table, values in self.tables.items():
            lines += ["", f"[{table}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

_TABLES: dict[str, type] = {
    "suite": SuiteInfo,
    "sweep": Sweep,
    "timing": Timing,
    "flops": FlopsConfig,
    "parallel": ParallelConfig,
}
# Tables whose keys are validated by the feature that owns them (numerics here, check by the CLI).
_FREE_TABLES = ("numerics", "check")


def builtin_suite_path(name: str) -> Path:
    """Path of a suite shipped inside the package (works from any working directory)."""
    return Path(str(resources.files("bench.engine") / "suites" / f"{name}.toml"))


def default_suite_name(device_type: str) -> str:
    """smoke on CPU, standard on a GPU."""
    return "standard" if device_type == "cuda" else "smoke"


def find_suite(ref: str) -> Path:
    """A path to a TOML file, or the name of a built-in suite."""
    path = Path(ref)
    if _is_file(path):
        return path
    if ref in BUILTIN_SUITES:
        return builtin_suite_path(ref)
    if path.suffix == ".toml" or "/" in ref:
        raise SuiteError(f"{ref}: no such suite file")
    raise SuiteError(
        f"suite {ref!r} is not a file or a built-in suite; built-in: {', '.join(BUILTIN_SUITES)}"
    )


def _is_file(path: Path) -> bool:
    """Path.is_file that answers False for names the OS rejects (too long, NUL bytes)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def load_suite(
    ref: str | Path, overrides: dict[str, Any] | None = None, data_override: str | None = None
) -> Suite:
    """Read, validate and resolve a suite; `overrides` (from CLI flags) replace sweep lists."""
    path = find_suite(str(ref))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SuiteError(f"{path}: cannot read suite file ({exc})") from None
    return parse_suite(text, str(path), path.parent, overrides, data_override)


def parse_suite(
    text: str,
    source: str = "<suite>",
    base_dir: Path | None = None,
    overrides: dict[str, Any] | None = None,
    data_override: str | None = None,
) -> Suite:
    """Validate a suite document (TOML text); every problem raises SuiteError."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{source}: TOML syntax error: {exc}") from None
    _reject_unknown(doc, list(_TABLES) + list(_FREE_TABLES), source, "")
    for table in _FREE_TABLES:
        if table in doc and not isinstance(doc[table], dict):
            raise SuiteError(f"{source}: {table}: must be a table ([{table}])")
    parsed = {name: _parse_table(doc, name, cls, source) for name, cls in _TABLES.items()}
    sweep: Sweep = parsed["sweep"]
    for key, value in (overrides or {}).items():
        sweep = replace(
            sweep, **{key: _check_field(Sweep, key, value, f"--{key.replace('_', '-')}")}
        )
    info: SuiteInfo = parsed["suite"]
    timing: Timing = parsed["timing"]
    if "sweep" not in doc and not overrides:
        raise SuiteError(f"{source}: missing [sweep] table; it needs at least `models = [...]`")
    if not sweep.models:
        raise SuiteError(f"{source}: sweep.models: the sweep is empty; name at least one model")
    models = tuple(_resolve_models(sweep.models, source, base_dir))
    _check_lengths(models, sweep, source)
    info = replace(info, data=_resolve_data(info.data, source, base_dir, data_override))
    tables = {t: dict(doc[t]) for t in _FREE_TABLES if t in doc}
    _validate_feature_tables(tables, source)
    return Suite(
        info,
        sweep,
        timing,
        models,
        source=source,
        tables=tables,
        flops=parsed["flops"],
        parallel=parsed["parallel"],
    )


def _resolve_data(data: str, source: str, base_dir: Path | None, override: str | None) -> str:
    """Check a text data file exists; relative paths are relative to the suite file."""
    where = f"{source}: suite.data"
    if override is not None:
        where, data = "--data", _check_field(SuiteInfo, "data", override, "--data")
        base_dir = Path.cwd()
    if data == "random":
        return data
    path = Path(data[5:]).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not _is_file(path):
        raise SuiteError(f"{where}: text file {str(path)!r} does not exist")
    # Checked here, before anything runs: an empty file would otherwise cost a whole sweep and
    # leave a numerics error in every case.
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError as exc:
        raise SuiteError(
            f"{where}: text file {str(path)!r} cannot be read ({exc.strerror})"
        ) from None
    if not head.strip():
        what = "is empty" if not head else "holds only whitespace"
        raise SuiteError(
            f'{where}: text file {str(path)!r} {what}; give a file with text in it, or use "random"'
        )
    return f"text:{path.resolve()}"


def _validate_feature_tables(tables: dict[str, dict[str, Any]], source: str) -> None:
    """[numerics] belongs to the numerics passes, which validate it here. [check] belongs to the
    CI gate (bench.analysis.thresholds), which the CLI asks to validate it before a run starts: the
    engine never reads it."""
    if "numerics" in tables:
        validate_numerics_table(tables["numerics"], source)


def _reject_unknown(doc: dict[str, Any], allowed: list[str], source: str, prefix: str) -> None:
    for key in doc:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SuiteError(
                f"{source}: {prefix}{key}: unknown key{hint}; allowed: {', '.join(allowed)}"
            )


def _parse_table(doc: dict[str, Any], name: str, cls: type, source: str) -> Any:
    raw = doc.get(name, {})
    if not isinstance(raw, dict):
        raise SuiteError(f"{source}: {name}: must be a table ([{name}])")
    allowed = [f.name for f in fields(cls)]
    _reject_unknown(raw, allowed, source, f"{name}.")
    values = {k: _check_field(cls, k, v, f"{source}: {name}.{k}") for k, v in raw.items()}
    return cls(**values)


# What each key accepts: (description for the message, validator returning the clean value).
def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _non_negative_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _fraction(value: Any) -> float | None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if is_number and 0 < value < 1 else None


def _positive_number(value: Any) -> float | None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if is_number and 0 < value < float("inf") else None


def _peak_tflops(value: Any) -> dict[str, float] | None:
    if _positive_number(value) is not None:
        return {"all": _positive_number(value)}
    if not isinstance(value, dict) or not value:
        return None
    clean = {k: _positive_number(v) for k, v in value.items()}
    if any(k not in (*DTYPES, "all") for k in clean) or None in clean.values():
        return None
    return clean


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _data_source(value: Any) -> str | None:
    if value == "random" or (isinstance(value, str) and value.startswith("text:") and value[5:]):
        return value
    return None


def _list_of(item_check: Any, choices: tuple[str, ...] | None = None) -> Any:
    def check(value: Any) -> tuple | None:
        if not isinstance(value, list) or not value:
            return None
        clean = [item_check(v) for v in value]
        if any(c is None for c in clean):
            return None
        if choices is not None and any(c not in choices for c in clean):
            return None
        return tuple(dict.fromkeys(clean))  # drop repeats, keep order

    return check


_FIELD_RULES: dict[tuple[type, str], tuple[str, Any]] = {
    (SuiteInfo, "name"): ("a string", _string),
    (SuiteInfo, "description"): ("a string", _string),
    (SuiteInfo, "seed"): ("a non-negative integer", _non_negative_int),
    (SuiteInfo, "data"): ('"random" or "text:PATH" (a local text file)', _data_source),
    (Sweep, "models"): ("a non-empty list of preset names or checkpoint paths", _list_of(_string)),
    (Sweep, "workloads"): (
        f"a non-empty list from: {', '.join(WORKLOADS)}",
        _list_of(_string, tuple(WORKLOADS)),
    ),
    (Sweep, "precisions"): (
        f"a non-empty list from: {', '.join(PRECISION_MODES)}",
        _list_of(_string, tuple(PRECISION_MODES)),
    ),
    (Sweep, "batch_sizes"): ("a non-empty list of positive integers", _list_of(_positive_int)),
    (Sweep, "seq_lens"): ("a non-empty list of positive integers", _list_of(_positive_int)),
    (Sweep, "generate_new_tokens"): ("a positive integer", _positive_int),
    (Sweep, "compile"): (
        'a non-empty list from: "eager", "compiled" (torch.compile)',
        _list_of(_string, COMPILE_CHOICES),
    ),
    (Timing, "warmup"): ("a non-negative integer", _non_negative_int),
    (Timing, "iterations"): (
        "an integer >= 2",
        lambda v: v if _positive_int(v) and v >= 2 else None,
    ),
    (Timing, "max_warmup"): ("a non-negative integer", _non_negative_int),
    (Timing, "steady_window"): (
        "an integer >= 2",
        lambda v: v if _positive_int(v) and v >= 2 else None,
    ),
    (Timing, "steady_tolerance"): ("a number between 0 and 1", _fraction),
    (Timing, "unstable_cv"): ("a number between 0 and 1", _fraction),
    (FlopsConfig, "enabled"): ("true or false", lambda v: v if isinstance(v, bool) else None),
    (FlopsConfig, "peak_tflops"): (
        f"a positive number (every dtype) or a table of them by dtype ({', '.join(DTYPES)})",
        _peak_tflops,
    ),
    (ParallelConfig, "strategy"): (
        'one of "none", ' + ", ".join(f'"{s}"' for s in PARALLEL_STRATEGIES),
        lambda v: v if v in ("none", *PARALLEL_STRATEGIES) else None,
    ),
    (ParallelConfig, "reduce_dtypes"): (
        f"a non-empty list from: {', '.join(REDUCE_DTYPES)}",
        _list_of(_string, REDUCE_DTYPES),
    ),
}


def parse_peak_tflops(text: str) -> dict[str, float] | None:
    """--peak-tflops: "989" (every dtype) or "bf16=989,fp8=1979"; None if malformed."""
    try:
        if "=" not in text:
            return _peak_tflops(float(text))
        pairs = dict(item.split("=", 1) for item in text.split(","))
        return _peak_tflops({k.strip(): float(v) for k, v in pairs.items()})
    except ValueError:
        return None


def _check_field(cls: type, key: str, value: Any, where: str) -> Any:
    description, check = _FIELD_RULES[(cls, key)]
    clean = check(value)
    if clean is None:
        bad = _first_bad_item(value, check) if isinstance(value, list) else value
        raise SuiteError(f"{where}: must be {description}; got {bad!r}")
    return clean


def _first_bad_item(values: list[Any], check: Any) -> Any:
    if not values:
        return values
    for value in values:
        if check([value]) is None:
            return value
    return values


def _resolve_models(names: tuple[str, ...], source: str, base_dir: Path | None) -> list[ModelSpec]:
    specs = []
    for i, name in enumerate(names):
        try:
            specs.append(resolve_model(name, base_dir))
        except MpbenchError as exc:
            raise SuiteError(f"{source}: sweep.models[{i}]: {exc}") from None
    seen: dict[str, str] = {}
    for name, spec in zip(names, specs):
        if spec.name in seen:
            raise SuiteError(
                f"{source}: sweep.models: {seen[spec.name]!r} and {name!r} both have the case "
                f"name {spec.name!r}; rename one checkpoint directory"
            )
        seen[spec.name] = name
    return specs


def _check_lengths(models: tuple[ModelSpec, ...], sweep: Sweep, source: str) -> None:
    for spec in models:
        limit = spec.max_positions
        for seq_len in sweep.seq_lens:
            if seq_len > limit:
                raise SuiteError(
                    f"{source}: sweep.seq_lens: {seq_len} is longer than {spec.name}'s "
                    f"{limit} positions; use at most {limit}"
                )
            if "generate" in sweep.workloads and spec.family == "gpt2":
                total = seq_len + sweep.generate_new_tokens
                if total > limit:
                    raise SuiteError(
                        f"{source}: sweep.generate_new_tokens: prompt {seq_len} + "
                        f"{sweep.generate_new_tokens} new tokens exceeds {spec.name}'s {limit} "
                        "positions"
                    )


# ---------------------------------------------------------------------------------------------
# Writing (resolved suite.toml in the run directory)
# ---------------------------------------------------------------------------------------------


def _model_ref(spec: ModelSpec) -> str:
    if spec.ref:
        return spec.ref
    return str(spec.path) if spec.path is not None else spec.name


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_items(obj: Any) -> list[str]:
    return [f"{f.name} = {_toml_value(getattr(obj, f.name))}" for f in fields(obj)]

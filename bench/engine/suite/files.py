"""Reading a suite: find the file (a path or a built-in name), parse its TOML, validate each
table (bench.engine.suite.validate), apply the flags that override the sweep, then the checks
that need more than one key: models resolved, sequence lengths against each model's positions,
the data file, [numerics] (validated by bench.engine.numerics.config). [check] is kept as given
for the CLI to validate. Every problem is a SuiteError naming the file and key.
"""

from __future__ import annotations

import sys
from dataclasses import fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from bench.engine.models import ModelSpec, resolve_model
from bench.engine.numerics.config import validate_table as validate_numerics_table
from bench.engine.suite.model import FlopsConfig, ParallelConfig, Suite, SuiteInfo, Sweep, Timing
from bench.engine.suite.validate import check_table, check_value, reject_unknown, table_keys
from bench.errors import MpbenchError, SuiteError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

BUILTIN_SUITES = ("smoke", "standard", "ci", "full", "modern")

# The tables this module validates and the dataclass each becomes, in the order they are checked.
_TABLES: dict[str, type] = {
    "suite": SuiteInfo,
    "sweep": Sweep,
    "timing": Timing,
    "flops": FlopsConfig,
    "parallel": ParallelConfig,
}
# Tables whose keys are validated by the feature that owns them (numerics here, check by the CLI).
_FREE_TABLES = ("numerics", "check")

for _name, _cls in _TABLES.items():  # the "allowed:" lists and the dataclasses name the same keys
    if table_keys(_name) != [f.name for f in fields(_cls)]:
        raise RuntimeError(f"[{_name}]: validate.py and model.py disagree on its keys")


def builtin_suite_path(name: str) -> Path:
    """Path of a suite shipped inside the package, bench/engine/suites/NAME.toml (works from any
    working directory)."""
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
    reject_unknown(doc, list(_TABLES) + list(_FREE_TABLES), f"{source}: ")
    for table in _FREE_TABLES:
        if table in doc and not isinstance(doc[table], dict):
            raise SuiteError(f"{source}: {table}: must be a table ([{table}])")
    _rename_compile_key(doc, source)
    parsed = {
        name: cls(**check_table(name, doc.get(name, {}), source)) for name, cls in _TABLES.items()
    }
    sweep: Sweep = parsed["sweep"]
    for key, value in (overrides or {}).items():
        sweep = replace(
            sweep, **{key: check_value("sweep", key, value, f"--{key.replace('_', '-')}")}
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


def _rename_compile_key(doc: dict[str, Any], source: str) -> None:
    """[sweep] compile (before execution had "graphs") is read as [sweep] execution, with a
    one-line deprecation note on stderr; both keys at once is an error."""
    sweep = doc.get("sweep")
    if not isinstance(sweep, dict) or "compile" not in sweep:
        return
    if "execution" in sweep:
        raise SuiteError(
            f"{source}: sweep.compile: give sweep.execution only (compile is its old name)"
        )
    print(
        f"{source}: sweep.compile is deprecated; use sweep.execution = "
        '["eager", "compiled", "graphs"] (any of them)',
        file=sys.stderr,
    )
    doc["sweep"] = {("execution" if k == "compile" else k): v for k, v in sweep.items()}


def _is_file(path: Path) -> bool:
    """Path.is_file that answers False for names the OS rejects (too long, NUL bytes)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _resolve_models(names: tuple[str, ...], source: str, base_dir: Path | None) -> list[ModelSpec]:
    """Each name as a preset or a checkpoint directory (relative to the suite file); two that
    would give cases the same model name are an error."""
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
    """Every sequence (and, for generate, prompt + new tokens) fits every model's positions."""
    for spec in models:
        limit = spec.max_positions
        for seq_len in sweep.seq_lens:
            if seq_len > limit:
                raise SuiteError(
                    f"{source}: sweep.seq_lens: {seq_len} is longer than {spec.name}'s "
                    f"{limit} positions; use at most {limit}"
                )
            if "generate" in sweep.workloads and spec.family.generates:
                total = seq_len + sweep.generate_new_tokens
                if total > limit:
                    raise SuiteError(
                        f"{source}: sweep.generate_new_tokens: prompt {seq_len} + "
                        f"{sweep.generate_new_tokens} new tokens exceeds {spec.name}'s {limit} "
                        "positions"
                    )


def _resolve_data(data: str, source: str, base_dir: Path | None, override: str | None) -> str:
    """Check a text data file exists; relative paths are relative to the suite file."""
    where = f"{source}: suite.data"
    if override is not None:
        where, data = "--data", check_value("suite", "data", override, "--data")
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

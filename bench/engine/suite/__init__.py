"""Suite files (TOML): a sweep of models x workloads x precisions x batch sizes x sequence lengths.

Read top-down, the package is four modules:

- `model`: what a suite is once read: frozen dataclasses per table (SuiteInfo, Sweep, Timing,
  FlopsConfig, ParallelConfig) with their defaults, the Suite that expands into cases, and
  sharding (`--shard I/N`).
- `validate`: what each key accepts, one pydantic model per table, and mpbench's error lines.
- `files`: finding a suite (a path or a built-in name), reading it, validating it table by table,
  and the checks across keys (sequence lengths against each model, the data file, [numerics]).
- `writer`: the resolved suite.toml a run keeps, whose hash `--resume` compares.

Why pydantic: it replaces ~150 lines of hand-written type and range checks (a checker function per
kind of value, a rule table mapping each key to one, and a search for the first bad list item).
Each key's rule is now its type, read in one place, one model per table: strict (a TOML integer
is not a bool), ranges, allowed names, non-empty lists. The messages stay mpbench's: every problem
is a SuiteError with one line naming the file, the key path (and TOML's line where it gives one)
and what is allowed; the CLI prints it and exits 2 before anything runs. Pydantic's own error text
is never shown.

The built-in suites are data, not code: bench/engine/suites/*.toml (`builtin_suite_path`).
"""

from __future__ import annotations

from bench.engine.suite.files import (
    BUILTIN_SUITES,
    builtin_suite_path,
    default_suite_name,
    find_suite,
    load_suite,
    parse_suite,
)
from bench.engine.suite.model import (
    FlopsConfig,
    ParallelConfig,
    Shard,
    Suite,
    SuiteInfo,
    Sweep,
    Timing,
    comparison_group,
    parse_shard,
)
from bench.engine.suite.validate import COMPILE_SCOPES, parse_peak_tflops
from bench.engine.suite.writer import toml_value

__all__ = [
    "BUILTIN_SUITES",
    "COMPILE_SCOPES",
    "FlopsConfig",
    "ParallelConfig",
    "Shard",
    "Suite",
    "SuiteInfo",
    "Sweep",
    "Timing",
    "builtin_suite_path",
    "comparison_group",
    "default_suite_name",
    "find_suite",
    "load_suite",
    "parse_peak_tflops",
    "parse_shard",
    "parse_suite",
    "toml_value",
]

"""The resolved suite.toml a run directory keeps: what ran, flags applied, loadable again.

Its text is a contract: `Suite.fingerprint()` hashes it and `--resume` compares that hash with
the one stored by the run being resumed, which an older mpbench may have written. So the layout
below (table order, key order, how each value is spelled) must not change for a suite that could
be written before; a new table is written only when it is not at its default ([parallel]).
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from bench.engine.models import ModelSpec

# Keys added after suites were first written: at their default they are left out, so a suite
# that could be written before keeps its text and its hash.
NEWER_TIMING_KEYS = ("slow_kernel_budget_s",)
NEWER_SWEEP_KEYS = ("compile_scope",)


def resolved_toml(suite: Any) -> str:
    """The TOML text of `suite` (a bench.engine.suite.model.Suite), models written as given."""
    lines = [f"# resolved from {suite.source}", "[suite]"]
    lines += _toml_items(suite.info)
    lines += ["", "[sweep]"]
    sweep = replace(suite.sweep, models=tuple(_model_ref(s) for s in suite.models))
    lines += _toml_items(sweep, omit_at_default=NEWER_SWEEP_KEYS)
    lines += ["", "[timing]"]
    lines += _toml_items(suite.timing, omit_at_default=NEWER_TIMING_KEYS)
    lines += ["", "[flops]", f"enabled = {toml_value(suite.flops.enabled)}"]
    if suite.flops.peak_tflops:
        lines.append(f"peak_tflops = {toml_value(suite.flops.peak_tflops)}")
    if suite.parallel.enabled:  # absent when off, so older suites keep their hash
        lines += ["", "[parallel]"] + _toml_items(suite.parallel)
    for table, values in suite.tables.items():
        lines += ["", f"[{table}]"] + [f"{k} = {toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    """One value as TOML: bools, numbers (their repr), strings, lists and inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_items(obj: Any, omit_at_default: tuple[str, ...] = ()) -> list[str]:
    """`key = value` for every field of a table's dataclass, in declaration order; a key named
    in `omit_at_default` only where it differs from its default."""
    return [
        f"{f.name} = {toml_value(getattr(obj, f.name))}"
        for f in fields(obj)
        if f.name not in omit_at_default or getattr(obj, f.name) != f.default
    ]


def _model_ref(spec: ModelSpec) -> str:
    """A model as the suite named it: preset name, hub id or checkpoint path."""
    if spec.ref:
        return spec.ref
    return str(spec.path) if spec.path is not None else spec.name

"""Every precision mode, by name, in the order every view shows them.

Each module of this package (but `base`) defines a `MODES` tuple of PrecisionMode components
(bench.engine.modes.base); this registry collects them all, so adding a mode is one module plus
its tests: nothing else names it. The runner, the numerics passes, the estimate, the matmul
rates, selfcheck and the CLI's `list` all ask a mode for its facts instead of comparing names.
"""

from __future__ import annotations

import importlib
import pkgutil

from bench.engine.modes.base import PrecisionMode
from bench.results.peaks import DTYPES
from bench.results.schema import BASELINE_PRECISION


def _collect() -> dict[str, PrecisionMode]:
    found: list[PrecisionMode] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            found += importlib.import_module(f"{__name__}.{info.name}").MODES
    names = [m.name for m in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RuntimeError(f"precision modes defined twice: {', '.join(duplicates)}")
    return {m.name: m for m in sorted(found, key=lambda m: (m.order, m.name))}


PRECISION_MODES: dict[str, PrecisionMode] = _collect()
# What every speedup, saving and divergence is measured against.
BASELINE_MODE: PrecisionMode = PRECISION_MODES[BASELINE_PRECISION]


def compute_dtypes() -> tuple[str, ...]:
    """The dtypes the modes' matmuls run in, in the peak table's order (fp32, tf32, bf16, fp16,
    fp8; a dtype the table lacks last)."""
    used = dict.fromkeys(m.compute_dtype for m in PRECISION_MODES.values())
    return tuple(sorted(used, key=lambda d: DTYPES.index(d) if d in DTYPES else len(DTYPES)))


def mode_for_dtype(dtype: str) -> PrecisionMode:
    """The first mode (in display order) whose matmuls run in `dtype`: what a matmul rate of
    that dtype is measured through (its gate says whether the device has it)."""
    for mode in PRECISION_MODES.values():
        if mode.compute_dtype == dtype:
            return mode
    raise KeyError(f"no precision mode computes in {dtype!r}")

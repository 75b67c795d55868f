"""Every precision mode by name, in the order every view shows them (the same order as
bench.results.schema.PRECISIONS, which tests check)."""

from __future__ import annotations

from bench.engine.fp8 import FP8_MODES
from bench.engine.precision import BASE_MODES, PrecisionMode

PRECISION_MODES: dict[str, PrecisionMode] = {mode.name: mode for mode in (*BASE_MODES, *FP8_MODES)}

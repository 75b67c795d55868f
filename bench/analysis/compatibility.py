"""Whether two runs' devices may be compared: the model must match, software versions are reported.

Part of the CI gate, with bench.analysis.thresholds (the configuration) and
bench.analysis.assessment (judging a comparison, which refuses runs on different devices).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.results.identity import DeviceIdentity


@dataclass(frozen=True)
class Compatibility:
    """Why two runs are not the same device (mismatches) and what else differs (differences)."""

    mismatches: list[str] = field(default_factory=list)  # refused without --allow-device-mismatch
    differences: list[str] = field(default_factory=list)  # reported prominently

    @property
    def same_device(self) -> bool:
        """True when nothing forbids the comparison."""
        return not self.mismatches


_VERSION_FIELDS = (
    ("driver", "driver"),
    ("cuda", "CUDA"),
    ("torch", "torch"),
    ("transformers", "transformers"),
    ("torch_threads", "torch threads"),
    ("memory_total_gib", "GPU memory (GiB)"),
)


def _identity_field(identity: DeviceIdentity, attr: str) -> Any:
    if attr == "memory_total_gib":
        total = identity.memory_total_bytes
        return None if total is None else round(total / 2**30, 1)
    return getattr(identity, attr)


def compatibility(base: DeviceIdentity, current: DeviceIdentity) -> Compatibility:
    """Compare two device identities: model (must match) and software versions (reported)."""
    mismatches: list[str] = []
    differences: list[str] = []
    for side, ident in (("BASE", base), ("CURRENT", current)):
        if not ident.known:
            differences.append(
                f"{side} does not record its device (no env.json): cannot verify it is the same"
            )
    if base.known and current.known:
        if base.kind != current.kind:
            mismatches.append(f"BASE ran on {base.label}, CURRENT on {current.label}")
        elif base.name != current.name:
            what = "GPU" if base.kind == "cuda" else "CPU"
            mismatches.append(
                f"different {what} model: BASE {base.name!r}, CURRENT {current.name!r}"
            )
        elif (
            base.compute_capability
            and current.compute_capability
            and base.compute_capability != current.compute_capability
        ):
            mismatches.append(
                f"different compute capability: BASE {base.compute_capability}, "
                f"CURRENT {current.compute_capability}"
            )
    for attr, label in _VERSION_FIELDS:
        b, c = _identity_field(base, attr), _identity_field(current, attr)
        if b is not None and c is not None and b != c:
            differences.append(f"{label} changed: BASE {b}, CURRENT {c}")
    return Compatibility(mismatches, differences)

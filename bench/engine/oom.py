"""Predicted out-of-memory: after a batch size runs out of memory, larger batches of the same
model, workload, precision and sequence length are recorded as `oom` without running (and say
so in their reason and `details.predicted`)."""

from __future__ import annotations

from bench.results.schema import Case, CaseResult


class OomLimits:
    """The smallest batch size that ran out of memory, per (model, workload, precision, seq)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._smallest_oom: dict[tuple[object, ...], int] = {}

    @staticmethod
    def _key(case: Case) -> tuple[object, ...]:
        # A data-parallel layout and its reduce dtype hold memory differently: their own limits.
        layout = (case.layout, case.reduce_suffix)
        return (case.model, case.workload, case.precision, case.seq_len, *layout)

    def record(self, result: CaseResult) -> None:
        """Remember a measured OOM."""
        if result.status == "oom" and not result.details.get("predicted"):
            key = self._key(result.case)
            known = self._smallest_oom.get(key)
            size = result.case.batch_size or 0
            self._smallest_oom[key] = min(known, size) if known else size

    def predict(self, case: Case) -> CaseResult | None:
        """A predicted-OOM result for `case`, or None to run it."""
        limit = self._smallest_oom.get(self._key(case))
        if not self.enabled or limit is None or (case.batch_size or 0) <= limit:
            return None
        reason = (
            f"predicted, not run: batch size {limit} already ran out of memory for this model, "
            "workload, precision and sequence length (--no-skip-larger runs it anyway)"
        )
        return CaseResult(case, "oom", reason, details={"predicted": True}, wall_s=0.0)

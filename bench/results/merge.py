"""Joining the run directories of a sharded sweep (`mpbench run --shard I/N`) into one run.

Shards of one sweep share the resolved suite (env.json's `suite_sha256`) and the device model;
each case id is in exactly one of them. Anything else is an input error that names the runs:
a different suite or device, a case id in two runs (overlapping shards, or one shard given
twice), a run that is not an mpbench run directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import ResultsError
from bench.results.manifest import ENV_FILE, SUITE_FILE, RunManifest
from bench.results.rundir import ResultsWriter, Run, create_run_dir
from bench.results.schema import CaseResult


@dataclass
class MergedRun:
    """What the merged run directory will hold."""

    manifest: RunManifest  # the first run's, unsharded, listing the runs merged
    results: list[CaseResult]
    shards: list[str | None]  # each source run's shard ("1/2"), None for an unsharded run
    warnings: list[str] = field(default_factory=list)  # the source runs' own, and differences


# Identity fields that may differ between the machines of one sweep without refusing the merge
# (the device model may not): each difference is a warning.
_SOFT_IDENTITY = (
    "compute_capability",
    "memory_total_bytes",
    "driver",
    "cuda",
    "torch",
    "transformers",
    "torch_threads",
)


def merge_runs(runs: list[Run]) -> MergedRun:
    """Check that `runs` are disjoint parts of one sweep on one device model, and join them."""
    if len(runs) < 2:
        raise ResultsError("merge: give at least two run directories (the shards of one sweep)")
    for run in runs:
        if not run.manifest.complete:
            raise ResultsError(
                f"{run.path}: not an mpbench run directory (needs {ENV_FILE} and {SUITE_FILE})"
            )
    first = runs[0]
    counts = {str(r.manifest.shard).partition("/")[2] for r in runs if r.manifest.shard}
    if len(counts) > 1:
        raise ResultsError(
            "merge: the runs split the sweep in different numbers of shards ("
            + ", ".join(f"{r.path}: {r.manifest.shard}" for r in runs)
            + "); merge the shards of one split (all I/N with the same N)"
        )
    warnings = [w if str(r.path) in w else f"{r.path}: {w}" for r in runs for w in r.warnings]
    for run in runs[1:]:
        if run.manifest.suite_sha256 != first.manifest.suite_sha256:
            raise ResultsError(
                f"merge: {run.path} ran another suite than {first.path} (suite_sha256 differs): "
                "shards must come from the same suite file and flags"
            )
        if run.identity.name != first.identity.name or run.identity.kind != first.identity.kind:
            raise ResultsError(
                f"merge: {run.path} ran on {run.identity.label}, {first.path} on "
                f"{first.identity.label}: a merged run holds one device model"
            )
        for name in _SOFT_IDENTITY:
            mine, theirs = getattr(run.identity, name), getattr(first.identity, name)
            if mine != theirs:
                warnings.append(
                    f"{run.path} recorded {name} {mine}, {first.path} {theirs}: the merged "
                    f"run's env.json is {first.path}'s"
                )
    owner: dict[str, Run] = {}
    results: list[CaseResult] = []
    for run in runs:
        for result in run.latest():  # a resumed shard may hold a case twice: the last counts
            case_id = result.case.id
            if case_id in owner:
                first_seen = owner[case_id]
                raise ResultsError(
                    f"merge: case {case_id} is in both {first_seen.path} and {run.path} "
                    f"(shards {first_seen.manifest.shard} and {run.manifest.shard}): "
                    "the runs overlap; merge each shard once"
                )
            owner[case_id] = run
            results.append(result)
    environment = dict(first.manifest.environment)
    environment["started_at"] = min(str(r.env.get("started_at") or "") for r in runs) or None
    environment["merged_from"] = [
        {
            "path": str(r.path),
            "shard": r.manifest.shard,
            "started_at": r.env.get("started_at"),
            "hostname": r.env.get("hostname"),
            "argv": r.env.get("argv"),
        }
        for r in runs
    ]
    manifest = first.manifest.replace(shard=None, environment=environment)
    shards = [r.manifest.shard for r in runs]
    return MergedRun(manifest, results, shards, warnings)


def write_merged(merged: MergedRun, out: Path) -> None:
    """Write the merged run directory: env.json, suite.toml and results.jsonl."""
    create_run_dir(out)
    merged.manifest.write(out)
    writer = ResultsWriter(out)
    for result in merged.results:
        writer.append(result)

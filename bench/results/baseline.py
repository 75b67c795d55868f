"""Baselines for `mpbench check`: one JSON file per device model, e.g. baselines/nvidia-h100.json.

A baseline file is a run frozen for the CI gate: env.json (the device identity: GPU name, compute
capability, driver, CUDA, torch), the resolved suite (for its [check] table) and every case result
with its per-step samples. Bulky per-step curves that check never reads (training losses, numerics
arrays) are dropped so the files stay small enough to commit. Format 1; each result inside is a
results.jsonl object, read through `CaseResult.from_dict` (and upgraded like any other).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.errors import ResultsError
from bench.results.files import write_text_atomic
from bench.results.identity import DeviceIdentity
from bench.results.manifest import RunManifest
from bench.results.rundir import RESULTS_FILE, Run
from bench.results.schema import CaseResult

BASELINE_FORMAT = 1
BASELINE_KEY = "mpbench_baseline"  # marks a baseline file (its value is the format version)
DEFAULT_DIR = "baselines"


def is_baseline_document(data: Any) -> bool:
    """True for the parsed JSON of a baseline file."""
    return isinstance(data, dict) and BASELINE_KEY in data


def _slim(result: CaseResult) -> dict[str, Any]:
    """A result without what check never reads: losses and the non-scalar parts of numerics."""
    data = result.to_dict()
    data["losses"] = None
    if isinstance(result.numerics, dict):
        data["numerics"] = {
            k: v
            for k, v in result.numerics.items()
            if v is None or isinstance(v, (str, int, float))
        }
    return data


def baseline_document(run: Run) -> dict[str, Any]:
    """The JSON object stored for a run."""
    return {
        BASELINE_KEY: BASELINE_FORMAT,
        "device_slug": run.identity.slug,
        "device": run.identity.label,
        "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": str(run.path),
        "env": run.env,
        "suite_text": run.suite_text,
        "results": [_slim(r) for r in run.latest()],
    }


def baseline_path(directory: str | os.PathLike[str], env: dict[str, Any]) -> Path:
    """Where the baseline for the device of `env` lives in `directory`."""
    return Path(directory) / f"{DeviceIdentity.from_env(env).slug}.json"


def save_baseline(run: Run, directory: str | os.PathLike[str] = DEFAULT_DIR) -> Path:
    """Write the run as the baseline for its device; returns the file (replaced if it existed)."""
    if not run.identity.known:
        raise ResultsError(
            f"{run.path}: no env.json, so the device is unknown; a baseline must record it"
        )
    if not any(r.ok for r in run.results):
        raise ResultsError(f"{run.path}: no successful case; nothing to use as a baseline")
    path = baseline_path(directory, run.env)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResultsError(f"--to {directory}: cannot create it ({exc.strerror or exc})") from None
    # Written whole or not at all: a reader never sees half a baseline.
    write_text_atomic(path, json.dumps(baseline_document(run), indent=1, allow_nan=True) + "\n")
    return path


def run_from_baseline(data: dict[str, Any], path: Path) -> Run:
    """A Run from a parsed baseline document."""
    version = data.get(BASELINE_KEY)
    if version != BASELINE_FORMAT:
        raise ResultsError(
            f"{path}: baseline format {version!r} is not supported (expected {BASELINE_FORMAT})"
        )
    results = data.get("results")
    env = data.get("env")
    if not isinstance(results, list) or not isinstance(env, dict):
        raise ResultsError(f"{path}: not a valid baseline file (no results list or env object)")
    typed = [CaseResult.from_dict(r, f"{path}: results[{i}]") for i, r in enumerate(results)]
    suite_text = data.get("suite_text") if isinstance(data.get("suite_text"), str) else None
    manifest = RunManifest.from_env(env, suite_text, f"{path}: env")
    return Run(path.parent, manifest, typed, [], source="baseline")


def is_baseline_dir(path: str | os.PathLike[str]) -> bool:
    """A directory that is not a run directory (no results.jsonl): a directory of baselines."""
    p = Path(path)
    return p.is_dir() and not (p / RESULTS_FILE).exists()


def pick_baseline(directory: str | os.PathLike[str], env: dict[str, Any]) -> Path:
    """The baseline file in `directory` for the device of `env` (a run's env.json)."""
    identity = DeviceIdentity.from_env(env)
    if not identity.known:
        raise ResultsError(
            f"--baseline {directory}: the current run has no env.json, so its device is unknown; "
            "pass the baseline file itself"
        )
    path = baseline_path(directory, env)
    if path.is_file():
        return path
    available = sorted(p.name for p in Path(directory).glob("*.json"))
    listing = ", ".join(available) if available else "none"
    raise ResultsError(
        f"--baseline {directory}: no baseline for {identity.name} ({path.name}); available: "
        f"{listing}. Create one with `mpbench baseline save RUN_DIR --to {directory}`"
    )

"""Read a pytest-benchmark JSON file (--benchmark-json, or a --benchmark-autosave file) as a Run.

Each benchmark becomes one case result. Benchmarks written by mpbench's pytest plugin carry the
case fields, throughput inputs, memory and numerics in `extra_info` and the device identity in
`machine_info["mpbench"]`; any other pytest-benchmark file still loads, with the test's full name
as the case id, so `mpbench compare` works on plain pytest-benchmark results too. The per-round
samples (`stats.data`) are there with --benchmark-json, or --benchmark-save-data for saved runs;
without them only the summary statistics are known and significance cannot be tested.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.errors import ResultsError
from bench.results.samples import quantile
from bench.results.schema import SCHEMA_VERSION, Run, read_json_file

# extra_info keys that hold the case fields (written by bench.integrations.pytest_plugin.case_extra_info).
CASE_KEYS = ("model", "family", "workload", "precision", "batch_size", "seq_len", "device")
MACHINE_INFO_KEY = "mpbench"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _case(bench: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The case object: from extra_info when mpbench wrote it, else named by the test."""
    case_id = extra.get("case_id")
    if isinstance(case_id, str) and case_id:
        return {"id": case_id, **{k: extra.get(k) for k in CASE_KEYS}}
    name = str(bench.get("fullname") or bench.get("name") or "benchmark")
    return {
        "id": name,
        "model": str(bench.get("name") or name).split("[")[0],
        **{k: None for k in CASE_KEYS if k != "model"},
    }


def _timing(stats: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The timing block: per-round samples when saved, the summary statistics always."""
    data = [float(v) for v in stats.get("data") or [] if _number(v) is not None]
    timing: dict[str, Any] = {
        "warmup": extra.get("warmup"),
        "iterations": stats.get("rounds"),
        "step_s": data,
        "median_s": _number(stats.get("median")),
        "mean_s": _number(stats.get("mean")),
        "stdev_s": _number(stats.get("stddev")),
        "iqr_s": _number(stats.get("iqr")),
        "min_s": _number(stats.get("min")),
        "max_s": _number(stats.get("max")),
    }
    if data:
        ordered = sorted(data)
        timing["p10_s"] = quantile(ordered, 0.10)
        timing["p90_s"] = quantile(ordered, 0.90)
    return timing


def _throughput(case: dict[str, Any], median_s: float | None, extra: dict[str, Any]) -> dict:
    """samples/s and tokens/s from the median round (as the engine does), else as recorded."""
    batch = _number(case.get("batch_size"))
    per_sample = _number(extra.get("tokens_per_sample"))
    if batch and median_s:
        out = {"samples_per_s": batch / median_s}
        if per_sample:
            out["tokens_per_s"] = batch * per_sample / median_s
        return out
    recorded = {k: extra.get(k) for k in ("samples_per_s", "tokens_per_s")}
    return {k: v for k, v in recorded.items() if _number(v) is not None}


def result_from_benchmark(bench: dict[str, Any]) -> dict[str, Any]:
    """One benchmark entry as a results.jsonl object."""
    extra = bench.get("extra_info") if isinstance(bench.get("extra_info"), dict) else {}
    stats = bench.get("stats") if isinstance(bench.get("stats"), dict) else {}
    case = _case(bench, extra)
    timing = _timing(stats, extra)
    memory = None
    if _number(extra.get("peak_bytes")) is not None:
        memory = {
            "peak_bytes": extra.get("peak_bytes"),
            "reserved_bytes": extra.get("reserved_bytes"),
            "method": extra.get("memory_method"),
        }
    numerics = extra.get("numerics") if isinstance(extra.get("numerics"), dict) else None
    return {
        "schema": SCHEMA_VERSION,
        "case": case,
        "status": "ok",  # pytest-benchmark keeps only benchmarks that completed
        "reason": None,
        "timing": timing,
        "throughput": _throughput(case, timing["median_s"], extra) or None,
        "memory": memory,
        "losses": None,
        "numerics": numerics,
        "details": {"pytest_benchmark": {"name": bench.get("name"), "group": bench.get("group")}},
        "started_at": None,
        "wall_s": None,
    }


def env_from_machine_info(machine_info: Any, when: Any = None) -> dict[str, Any]:
    """An env.json-shaped dict from pytest-benchmark's machine_info (+ the mpbench part)."""
    info = machine_info if isinstance(machine_info, dict) else {}
    mp = info.get(MACHINE_INFO_KEY) if isinstance(info.get(MACHINE_INFO_KEY), dict) else {}
    cpu = info.get("cpu") if isinstance(info.get("cpu"), dict) else {}
    cpu_model = mp.get("cpu_model") or cpu.get("brand_raw") or info.get("processor") or None
    gpu = mp.get("gpu") if isinstance(mp.get("gpu"), dict) else None
    return {
        "suite": mp.get("suite"),
        "started_at": when if isinstance(when, str) else None,
        "device": mp.get("device") or ("cuda" if gpu else "cpu"),
        "device_name": mp.get("device_name") or (gpu or {}).get("name") or cpu_model,
        "hostname": info.get("node"),
        "cpu": {
            "model": cpu_model,
            "logical_cores": cpu.get("count"),
            "torch_threads": mp.get("torch_threads"),
        },
        "gpu": gpu,
        "versions": {
            "python": info.get("python_version"),
            "torch": mp.get("torch"),
            "transformers": mp.get("transformers"),
            "mpbench": mp.get("mpbench"),
        },
        "source_format": "pytest-benchmark",
    }


def load_pytest_benchmark(path: str | os.PathLike[str]) -> Run:
    """Load a pytest-benchmark JSON file as a Run (an mpbench baseline file is accepted too)."""
    p = Path(path)
    data = read_json_file(p, "file")
    from bench.results.baseline import is_baseline_document, run_from_baseline

    if is_baseline_document(data):
        return run_from_baseline(data, p)
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ResultsError(
            f"{p}: not a pytest-benchmark JSON file (no 'benchmarks' list) or mpbench baseline"
        )
    results, problems = [], []
    for i, bench in enumerate(data["benchmarks"]):
        if not isinstance(bench, dict):
            problems.append(f"{p}: benchmarks[{i}] is not an object; skipped")
            continue
        results.append(result_from_benchmark(bench))
    env = env_from_machine_info(data.get("machine_info"), data.get("datetime"))
    # Like a bare results.jsonl, the file's directory stands for the run directory (the report
    # writes index.html there).
    return Run(path=p.parent, env=env, results=results, warnings=problems, suite_text=None)

"""Read a pytest-benchmark JSON file (--benchmark-json, or a --benchmark-autosave file) as a Run.

Each benchmark becomes one CaseResult, through `CaseResult.from_dict` like every other input:
  * written by mpbench's pytest plugin: `extra_info["mpbench_result"]` is the case's whole result,
    exactly as `mpbench run` would write it (the plugin replays the engine's step times into
    pytest-benchmark, so its statistics are the same numbers);
  * written by mpbench 0.1's plugin (case fields in `extra_info`, no `mpbench_result`): read from
    those fields, timing method "pytest-benchmark";
  * any other pytest-benchmark file: the test's full name is the case id and the timing method is
    "pytest-benchmark", so `mpbench compare` works on plain pytest-benchmark results too.
The per-round samples (`stats.data`) are there with --benchmark-json, or --benchmark-save-data
for saved runs; without them only the summary statistics are known and significance cannot be
tested. The device identity is in `machine_info["mpbench"]` (mpbench's plugin) or guessed from
pytest-benchmark's own machine_info.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.errors import ResultsError
from bench.results.manifest import RunManifest
from bench.results.rundir import Run
from bench.results.schema import SCHEMA_VERSION, CaseResult, Throughput, finite_or_none

RESULT_KEY = "mpbench_result"  # extra_info key holding the whole CaseResult (plugin)
MACHINE_INFO_KEY = "mpbench"  # machine_info key holding the device identity (plugin)
# extra_info keys of the case fields, as mpbench 0.1's plugin wrote them.
LEGACY_CASE_KEYS = ("model", "family", "workload", "precision", "batch_size", "seq_len", "device")


def _legacy_case(bench: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The case object: from extra_info when mpbench 0.1 wrote it, else named by the test."""
    case_id = extra.get("case_id")
    if isinstance(case_id, str) and case_id:
        return {"id": case_id, **{k: extra.get(k) for k in LEGACY_CASE_KEYS}}
    name = str(bench.get("fullname") or bench.get("name") or "benchmark")
    return {
        "label": name,
        "model": str(bench.get("name") or name).split("[")[0],
        "workload": "benchmark",
        "precision": "unknown",
    }


def _legacy_timing(stats: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The timing object from pytest-benchmark's statistics (and samples, when saved)."""
    data = [float(v) for v in stats.get("data") or [] if finite_or_none(v) is not None]
    return {
        "warmup": extra.get("warmup"),
        "iterations": stats.get("rounds"),
        "step_s": data,
        "median_s": finite_or_none(stats.get("median")),
        "mean_s": finite_or_none(stats.get("mean")),
        "stdev_s": finite_or_none(stats.get("stddev")),
        "iqr_s": finite_or_none(stats.get("iqr")),
        "min_s": finite_or_none(stats.get("min")),
        "max_s": finite_or_none(stats.get("max")),
        "method": "pytest-benchmark",
    }


def result_from_benchmark(bench: dict[str, Any], where: str) -> CaseResult:
    """One benchmark entry as a CaseResult."""
    extra = bench.get("extra_info") if isinstance(bench.get("extra_info"), dict) else {}
    if isinstance(extra.get(RESULT_KEY), dict):
        return CaseResult.from_dict(extra[RESULT_KEY], where)
    stats = bench.get("stats") if isinstance(bench.get("stats"), dict) else {}
    case = _legacy_case(bench, extra)
    timing = _legacy_timing(stats, extra)
    memory = None
    if finite_or_none(extra.get("peak_bytes")) is not None:
        memory = {
            "peak_bytes": extra.get("peak_bytes"),
            "reserved_bytes": extra.get("reserved_bytes"),
            "method": extra.get("memory_method"),
        }
    throughput = None
    batch, median = finite_or_none(case.get("batch_size")), timing["median_s"]
    if batch and median:
        tokens = finite_or_none(extra.get("tokens_per_sample"))
        throughput = Throughput.from_median(
            int(batch), int(tokens) if tokens else None, median
        ).to_dict()
    numerics = extra.get("numerics") if isinstance(extra.get("numerics"), dict) else None
    data = {
        "schema": SCHEMA_VERSION,
        "case": case,
        "status": "ok",  # pytest-benchmark keeps only benchmarks that completed
        "timing": timing,
        "throughput": throughput,
        "memory": memory,
        "numerics": numerics,
        "details": {"pytest_benchmark": {"name": bench.get("name"), "group": bench.get("group")}},
    }
    return CaseResult.from_dict(data, where)


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


def is_pytest_benchmark_document(data: Any) -> bool:
    """True for the parsed JSON of a pytest-benchmark file."""
    return isinstance(data, dict) and isinstance(data.get("benchmarks"), list)


def run_from_pytest_benchmark(data: dict[str, Any], path: Path) -> Run:
    """A Run from a parsed pytest-benchmark document."""
    results = []
    for i, bench in enumerate(data["benchmarks"]):
        where = f"{path}: benchmarks[{i}]"
        if not isinstance(bench, dict):
            raise ResultsError(f"{where}: not an object")
        results.append(result_from_benchmark(bench, where))
    env = env_from_machine_info(data.get("machine_info"), data.get("datetime"))
    # Like a bare results.jsonl, the file's directory stands for the run directory.
    manifest = RunManifest.from_env(env, None, f"{path}: machine_info")
    return Run(path.parent, manifest, results, [], source="pytest-benchmark")

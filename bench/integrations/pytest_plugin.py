"""pytest-benchmark integration: `pytest --mpbench-suite suites/ci.toml` runs a suite as tests.

Every case of the suite becomes one test, `<suite file>::case[<case id>]`, timed with
`benchmark.pedantic` (the suite's [timing] gives the warm-up and timed rounds) and a timer that
synchronizes the device before reading the clock, so queued GPU work is inside the round that
launched it. Throughput, peak memory and numerics go to `benchmark.extra_info`; the device
identity (stable fields only) goes to machine_info. Cases the device cannot run are skipped
with the reason. So pytest-benchmark's own --benchmark-autosave, --benchmark-compare and
--benchmark-compare-fail work as usual, and `mpbench compare` reads the JSON files.

Options: --mpbench-suite SUITE, --mpbench-device (default auto), --mpbench-storage-per-device
(appends the device slug to --benchmark-storage, so each GPU model compares with its own runs).

The plugin is loaded in every pytest session of anyone who installs mpbench: without
--mpbench-suite it only adds its options; nothing is imported (no torch) and no hook acts.
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

STATE_KEY = "_mpbench_state"
TEST_NAME = "case"
EXTRA_INFO_CASE_KEYS = ("model", "family", "workload", "precision", "batch_size", "seq_len")
# GPU fields that identify the model and its software; clocks, temperature and UUIDs vary between
# identical runs and would make pytest-benchmark warn that machine_info differs every time.
STABLE_GPU_FIELDS = ("name", "compute_capability", "memory_total_bytes", "driver", "cuda")


def pytest_addoption(parser: pytest.Parser) -> None:
    """--mpbench-suite, --mpbench-device and --mpbench-storage-per-device."""
    group = parser.getgroup("mpbench", "mpbench: run a benchmark suite as pytest-benchmark tests")
    group.addoption(
        "--mpbench-suite",
        metavar="SUITE",
        help="suite file (TOML) or built-in name (smoke, standard, ci): one benchmark test per case",
    )
    group.addoption(
        "--mpbench-device",
        default="auto",
        metavar="DEVICE",
        help="auto (default), cpu, cuda or cuda:N",
    )
    group.addoption(
        "--mpbench-storage-per-device",
        action="store_true",
        help="keep saved benchmarks per device model: append the device slug (e.g. "
        "nvidia-h100-80gb-hbm3) to --benchmark-storage",
    )


def pytest_configure(config: pytest.Config) -> None:
    """With --mpbench-suite: load the suite and device, and register the collector/hooks."""
    ref = config.getoption("mpbench_suite", None)
    if not ref:
        return
    from bench.errors import MpbenchError

    try:
        state = SuiteSession.create(config, ref, config.getoption("mpbench_device"))
    except MpbenchError as exc:
        raise pytest.UsageError(f"--mpbench-suite: {exc}") from None
    setattr(config, STATE_KEY, state)
    config.pluginmanager.register(state, "mpbench-suite-session")
    # Collect the suite file: alone when no test paths were given (testpaths/rootdir would pull
    # in unrelated unit tests), else next to the paths given.
    suite_arg = str(state.suite_path)
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args = [suite_arg]
    elif suite_arg not in config.args:
        config.args = [*config.args, suite_arg]
    if config.getoption("mpbench_storage_per_device"):
        config.option.benchmark_storage = storage_per_device(
            config.getoption("benchmark_storage", None) or "file://./.benchmarks", state.slug
        )


def storage_per_device(storage: str, slug: str) -> str:
    """'file://./.benchmarks' -> 'file://./.benchmarks/<slug>' (file storage only)."""
    if "://" in storage and not storage.startswith("file://"):
        raise pytest.UsageError(
            f"--mpbench-storage-per-device works with file storage only, not {storage!r}"
        )
    return storage.rstrip("/") + "/" + slug


def synchronizing_timer(synchronize: Callable[[], None]) -> Callable[[], float]:
    """A pytest-benchmark timer that waits for the device before reading perf_counter."""

    def timer() -> float:
        synchronize()
        return time.perf_counter()

    timer.__name__ = "mpbench_synchronizing_timer"
    return timer


class SuiteModule(pytest.Module):
    """The suite file as a test module holding one parametrized test, `case`."""

    def _getobj(self) -> types.ModuleType:
        state: SuiteSession = getattr(self.config, STATE_KEY)
        return state.make_module()

    def funcnamefilter(self, name: str) -> bool:
        """Only our test, whatever the project's python_functions setting."""
        return name == TEST_NAME

    def classnamefilter(self, name: str) -> bool:
        """No test classes here."""
        return False


class SuiteSession:
    """The suite, device and runner of a --mpbench-suite session, and its pytest hooks."""

    def __init__(self, suite: Any, suite_path: Path, device: Any) -> None:
        from bench.analysis.compare import DeviceIdentity
        from bench.engine.env import capture_env

        self.suite = suite
        self.suite_path = suite_path
        self.device = device
        self.cases = {case.id: case for case in suite.cases(device.name)}
        self._runner: Any = None
        env = capture_env(device, suite.name, str(suite_path))
        self.machine_info = stable_machine_info(env)
        self.slug = DeviceIdentity.from_env(env).slug

    @classmethod
    def create(cls, config: pytest.Config, ref: str, device_spec: str) -> SuiteSession:
        """Resolve the suite (a path or a built-in name) and the device."""
        from bench.engine.device import resolve_device
        from bench.engine.suite import find_suite, load_suite

        path = find_suite(ref).resolve()
        return cls(load_suite(path), path, resolve_device(device_spec))

    @property
    def runner(self) -> Any:
        """The engine's CaseRunner, made on first use (it keeps each model's pristine weights)."""
        if self._runner is None:
            self._runner = make_runner(self.suite, self.device)
        return self._runner

    # -- collection ------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_file(self, file_path: Path, parent: pytest.Collector) -> Any:
        """The suite file becomes a SuiteModule."""
        if Path(file_path).resolve() == self.suite_path:
            return SuiteModule.from_parent(parent, path=Path(file_path))
        return None

    def params(self) -> list[Any]:
        """One pytest.param per case: id = case id, skip mark with the reason, group, timer."""
        from bench.engine.runner import CaseRunner

        checker = CaseRunner(self.suite, self.device)  # skip_reason builds nothing
        timer = synchronizing_timer(self.device.synchronize)
        out = []
        for case_id, case in self.cases.items():
            group = f"{case.model}/{case.workload}/bs{case.batch_size}/seq{case.seq_len}"
            marks = [pytest.mark.benchmark(group=group, timer=timer)]
            reason = checker.skip_reason(case)
            if reason is not None:
                marks.append(pytest.mark.skip(reason=reason))
            out.append(pytest.param(case_id, id=case_id, marks=marks))
        return out

    def make_module(self) -> types.ModuleType:
        """The module object pytest collects from the suite file."""
        module = types.ModuleType(f"mpbench_suite_{self.suite.name}")
        session = self

        def case(benchmark: Any, mpbench_case_id: str) -> None:
            session.run_case(benchmark, mpbench_case_id)

        case.__module__ = module.__name__  # pytest collects only functions defined "here"
        case.__name__ = case.__qualname__ = TEST_NAME
        module.__dict__[TEST_NAME] = pytest.mark.parametrize("mpbench_case_id", self.params())(case)
        return module

    # -- running ---------------------------------------------------------------------------

    def run_case(self, benchmark: Any, case_id: str) -> None:
        """Time one case with benchmark.pedantic inside the precision's state and a memory
        window, as CaseRunner.run does; then record throughput, memory and numerics."""
        from bench.engine.precision import PRECISION_MODES
        from bench.engine.runner import is_out_of_memory

        case = self.cases[case_id]
        mode = PRECISION_MODES[case.precision]
        timing = self.suite.timing
        runner = self.runner
        try:
            with mode.global_state(self.device), self.device.memory_window() as memory:
                with runner.prepare(case) as prepared:
                    self.device.synchronize()
                    benchmark.pedantic(
                        prepared.step,
                        rounds=timing.iterations,
                        warmup_rounds=timing.warmup,
                        iterations=1,
                    )
        except Exception as exc:
            if is_out_of_memory(exc):
                pytest.fail(f"oom: {type(exc).__name__}: {str(exc)[:300]}", pytrace=False)
            raise
        finally:
            self.device.free_memory()
        numerics = runner.numerics(case) if runner.numerics is not None else None
        median_s = benchmark.stats.stats.median if benchmark.stats is not None else None
        benchmark.extra_info.update(
            case_extra_info(case, median_s, memory, numerics, timing.warmup, self.tokens(case))
        )

    def tokens(self, case: Any) -> int:
        """Tokens per sample of a step: new tokens for generate, the sequence otherwise."""
        return self.suite.sweep.generate_new_tokens if case.workload == "generate" else case.seq_len

    # -- pytest-benchmark ------------------------------------------------------------------

    @pytest.hookimpl(optionalhook=True)
    def pytest_benchmark_update_machine_info(
        self, config: pytest.Config, machine_info: dict[str, Any]
    ) -> None:
        """Add the device identity (stable fields only) under machine_info['mpbench']."""
        from bench.results.pytest_benchmark import MACHINE_INFO_KEY

        machine_info[MACHINE_INFO_KEY] = dict(self.machine_info)


def make_runner(suite: Any, device: Any) -> Any:
    """The engine's runner, with the numerics pass wired in as `mpbench run` does."""
    try:
        from bench.engine.executors import default_runner_factory
    except ImportError:  # an engine without bench.engine.executors: timing and memory only
        from bench.engine.runner import CaseRunner

        return CaseRunner(suite, device)
    return default_runner_factory(suite, device)


def stable_machine_info(env: dict[str, Any]) -> dict[str, Any]:
    """The parts of env.json that identify the device and software, and do not change run to run."""
    gpu = env.get("gpu")
    versions = env.get("versions") or {}
    cpu = env.get("cpu") or {}
    return {
        "device": env.get("device"),
        "device_name": env.get("device_name"),
        "gpu": {k: gpu.get(k) for k in STABLE_GPU_FIELDS} if isinstance(gpu, dict) else None,
        "cpu_model": cpu.get("model"),
        "torch_threads": cpu.get("torch_threads"),
        "torch": versions.get("torch"),
        "transformers": versions.get("transformers"),
        "mpbench": versions.get("mpbench"),
        "suite": env.get("suite"),
    }


def case_extra_info(
    case: Any,
    median_s: float | None,
    memory: Any,
    numerics: dict[str, Any] | None,
    warmup: int,
    tokens_per_sample: int,
) -> dict[str, Any]:
    """What goes to benchmark.extra_info: the case fields, throughput, memory, numerics."""
    info: dict[str, Any] = {"case_id": case.id, "device": case.device}
    info.update({k: getattr(case, k) for k in EXTRA_INFO_CASE_KEYS})
    info["warmup"] = warmup
    info["tokens_per_sample"] = tokens_per_sample
    if median_s:
        info["samples_per_s"] = case.batch_size / median_s
        info["tokens_per_s"] = case.batch_size * tokens_per_sample / median_s
    info["peak_bytes"] = memory.peak_bytes
    info["reserved_bytes"] = memory.reserved_bytes
    info["memory_method"] = memory.method
    info["numerics"] = numerics
    if isinstance(numerics, dict) and "verdict" in numerics:
        info["numerics_verdict"] = numerics["verdict"]
    return info

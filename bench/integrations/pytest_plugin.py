"""pytest-benchmark integration: `pytest --mpbench-suite suites/ci.toml` runs a suite as tests.

Every case of the suite becomes one test, `<suite file>::case[<case id>]`, measured by the
engine's own timed loop (`CaseRunner.run`, exactly as `mpbench run --isolate none` measures it:
the same memory window, CUDA events on a GPU, the same warm-up and GradScaler bookkeeping). Its
per-step times are then replayed into pytest-benchmark through `benchmark.pedantic` with a
replay timer, so pytest-benchmark's statistics are mpbench's numbers, not a second measurement.
The whole CaseResult goes to `benchmark.extra_info["mpbench_result"]` (bench.results reads it
back); the device identity (stable fields only) goes to machine_info. Cases the device cannot
run are skipped with the reason; a case that runs out of memory or fails is a failed test. So
pytest-benchmark's own --benchmark-autosave, --benchmark-compare and --benchmark-compare-fail
work as usual, and `mpbench compare` reads the JSON files.

Options: --mpbench-suite SUITE, --mpbench-device (default auto), --mpbench-storage-per-device
(appends the device slug to --benchmark-storage, so each GPU model compares with its own runs).

The plugin is loaded in every pytest session of anyone who installs mpbench: without
--mpbench-suite it only adds its options; nothing is imported (no torch) and no hook acts.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest

STATE_KEY = "_mpbench_state"
TEST_NAME = "case"
# GPU fields that identify the model and its software; clocks, temperature and UUIDs vary between
# identical runs and would make pytest-benchmark warn that machine_info differs every time.
STABLE_GPU_FIELDS = ("name", "compute_capability", "memory_total_bytes", "driver", "cuda")


def pytest_addoption(parser: pytest.Parser) -> None:
    """--mpbench-suite, --mpbench-device and --mpbench-storage-per-device."""
    group = parser.getgroup("mpbench", "mpbench: run a benchmark suite as pytest-benchmark tests")
    group.addoption(
        "--mpbench-suite",
        metavar="SUITE",
        help="suite file (TOML) or built-in name (smoke, standard, ci, full, modern): one benchmark test per case",
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


class ReplayClock:
    """A pytest-benchmark timer that replays step times measured by the engine.

    pytest-benchmark times a round as timer() after the round minus timer() before it. Here the
    round only sets the clock to the next measured step time, and every read returns the clock
    and resets it to 0: the read before a round gives 0, the read after it the step time, so each
    round's duration is exactly one of the engine's per-step times (CUDA events on a GPU). One
    measurement, recorded twice; never two measurements that could drift apart.
    """

    __name__ = "ReplayClock"  # pytest-benchmark records the timer by name

    def __init__(self) -> None:
        self._pending: list[float] = []
        self._now = 0.0

    def load(self, step_s: list[float] | tuple[float, ...]) -> None:
        """The step times the next rounds replay, in order."""
        self._pending = list(step_s)
        self._now = 0.0

    def advance(self) -> None:
        """One round: the clock moves to the next measured step time."""
        self._now = self._pending.pop(0)

    def __call__(self) -> float:
        value, self._now = self._now, 0.0
        return value


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
        from bench.engine.env import capture_env
        from bench.results.identity import DeviceIdentity

        self.suite = suite
        self.suite_path = suite_path
        self.device = device
        self.cases = {case.id: case for case in suite.cases(device.name)}
        self._runner: Any = None
        self.clock = ReplayClock()
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
        timer = self.clock
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
        """Measure one case with the engine's runner, then hand its step times to
        pytest-benchmark and its result to extra_info."""
        case = self.cases[case_id]
        result = self.runner.run(case)
        if result.status == "skipped":
            pytest.skip(result.reason)
        if not result.ok:
            pytest.fail(f"{result.status}: {result.reason}", pytrace=False)
        self.clock.load(result.step_s)
        benchmark.pedantic(
            self.clock.advance, rounds=len(result.step_s), iterations=1, warmup_rounds=0
        )
        benchmark.extra_info.update(case_extra_info(result))

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
    from bench.engine.executors import quiet_transformers, runner_factory

    quiet_transformers()
    return runner_factory()(suite, device)


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


def case_extra_info(result: Any) -> dict[str, Any]:
    """What goes to benchmark.extra_info: the whole result (bench.results.pytest_benchmark reads
    it back), plus a few flat fields for pytest-benchmark's own tables and --columns."""
    from bench.results.pytest_benchmark import RESULT_KEY

    info: dict[str, Any] = {
        "case_id": result.case.id,
        "samples_per_s": result.samples_per_s,
        "peak_bytes": result.peak_bytes,
        "numerics_verdict": result.verdict,
    }
    info[RESULT_KEY] = result.to_dict()
    return info

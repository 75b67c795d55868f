"""What a suite is once read: frozen dataclasses, one per table, and the Suite that holds them.

Each dataclass's defaults are the defaults of its table's keys (README "Suites"); the values in
them are already valid (bench.engine.suite.validate checked them on the way in, and the `with_*`
copies check flags the same way). `Suite.cases()` expands the sweep into cases in run order, and
a Shard (`--shard I/N`) takes its share of them by comparison group.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

from bench.engine.models import ModelSpec
from bench.engine.modes import PRECISION_MODES
from bench.engine.suite.validate import check_value, parse_peak_tflops
from bench.engine.suite.writer import resolved_toml
from bench.errors import SuiteError
from bench.results.peaks import DTYPES
from bench.results.schema import Case


@dataclass(frozen=True)
class SuiteInfo:
    """[suite]: identity of the sweep."""

    name: str = "suite"
    description: str = ""
    seed: int = 0
    data: str = "random"  # or "text:PATH": a local text file for the numerics passes


@dataclass(frozen=True)
class Sweep:
    """[sweep]: the cross product that becomes cases."""

    models: tuple[str, ...] = ()
    workloads: tuple[str, ...] = ("train", "infer")
    precisions: tuple[str, ...] = tuple(PRECISION_MODES)
    batch_sizes: tuple[int, ...] = (1,)
    seq_lens: tuple[int, ...] = (128,)
    generate_new_tokens: int = 16
    # How steps execute (bench.engine.execution): "eager", "compiled" (torch.compile) and/or
    # "graphs" (the whole step captured once as a CUDA graph and replayed).
    execution: tuple[str, ...] = ("eager",)
    # What "compiled" compiles: "regional" (each repeated transformer block, one graph reused
    # for every layer) or "model" (the whole model as one graph). Not a case dimension.
    compile_scope: str = "regional"


@dataclass(frozen=True)
class Timing:
    """[timing]: warm-up steps (excluded) and timed steps per case.

    The warm-up runs at least `warmup` steps and then goes on until the step time is steady: the
    last `steady_window` warm-up steps all within `steady_tolerance` of their median (clocks
    ramp, allocators and autotuners settle, and the first case in a fresh process is the
    coldest). It stops at `max_warmup` steps (never fewer than `warmup`) steady or not, and the
    result records how many it ran and whether it settled. A case whose timed steps spread more
    than `unstable_cv` is flagged unstable: the spread is the robust CV, IQR / (1.349 x median),
    which reads as stdev / mean on normal data (pyperf's 10% limit keeps its meaning) but which
    one outlier step cannot move (schema.robust_cv has the source).

    `slow_kernel_budget_s` bounds the seconds a sweep spends timing cases whose precision runs
    on a reference kernel here (torch's CPU float8 matmul on some CPUs: 500x slower than fp32),
    shared evenly by those cases: each times what its share allows, or nothing (skipped with
    the reason, its numerics pass kept). bench.engine.budget has the rule.
    """

    warmup: int = 2
    iterations: int = 10
    max_warmup: int = 20
    steady_window: int = 5
    steady_tolerance: float = 0.05
    unstable_cv: float = 0.10
    slow_kernel_budget_s: float = 120.0

    @property
    def warmup_cap(self) -> int:
        """The most warm-up steps a case runs."""
        return max(self.warmup, self.max_warmup)


@dataclass(frozen=True)
class FlopsConfig:
    """[flops]: FLOPs per step, counted once per case (one untimed step under torch's
    FlopCounterMode), for achieved TFLOP/s and MFU against the GPU's dense peak
    (bench.results.peaks). `peak_tflops` overrides that table: one number for every dtype, or a
    table by dtype (`{bf16 = 989, fp8 = 1979}`); needed for MFU on a CPU or an unknown GPU."""

    enabled: bool = True
    peak_tflops: dict[str, float] | None = None  # dtype (or "all") -> TFLOP/s

    def override(self, dtype: str) -> float | None:
        """The overriding peak for `dtype`, if one was given."""
        if not self.peak_tflops:
            return None
        return self.peak_tflops.get(dtype, self.peak_tflops.get("all"))


@dataclass(frozen=True)
class ParallelConfig:
    """[parallel]: data-parallel training (bench.engine.parallel) when the run is launched by
    torchrun. `strategy` "ddp" (DistributedDataParallel) or "fsdp" (FSDP2's fully_shard), or
    "none"; each training case then runs once per `reduce_dtypes` entry, the dtype gradients are
    reduced in (DDP: a communication hook; FSDP2: MixedPrecisionPolicy.reduce_dtype). The world
    size is the launch's, not the suite's."""

    strategy: str = "none"
    reduce_dtypes: tuple[str, ...] = ("fp32",)

    @property
    def enabled(self) -> bool:
        """True for ddp or fsdp."""
        return self.strategy != "none"


@dataclass(frozen=True)
class Suite:
    """A validated suite, with its models resolved (made by bench.engine.suite.files)."""

    info: SuiteInfo
    sweep: Sweep
    timing: Timing
    models: tuple[ModelSpec, ...]
    source: str = "<suite>"
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)  # [numerics], [check] as given
    flops: FlopsConfig = field(default_factory=FlopsConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)

    @property
    def name(self) -> str:
        """The suite's name (used in run directory names)."""
        return self.info.name

    def cases(self, device: str, shard: Shard | None = None, world_size: int = 1) -> list[Case]:
        """Every case (of `shard` only, when given), ordered model > workload > seq_len > batch
        size > precision > gradient reduce dtype > execution, so the cases being
        compared run back to back (drift hits them alike) and batch sizes grow. With [parallel]
        on, training cases are data-parallel over `world_size` ranks (the launch's)."""
        out = []
        parallel = self.parallel
        for spec in self.models:
            for workload in self.sweep.workloads:
                data_parallel = parallel.enabled and workload == "train"
                reduce_dtypes = parallel.reduce_dtypes if data_parallel else (None,)
                for seq_len in self.sweep.seq_lens:
                    for batch_size in self.sweep.batch_sizes:
                        for precision in self.sweep.precisions:
                            for reduce_dtype in reduce_dtypes:
                                for execution in self.sweep.execution:
                                    out.append(
                                        Case(
                                            spec.name,
                                            spec.model_type,
                                            workload,
                                            precision,
                                            batch_size,
                                            seq_len,
                                            device,
                                            execution=execution,
                                            parallel=parallel.strategy if data_parallel else None,
                                            world_size=world_size if data_parallel else None,
                                            reduce_dtype=reduce_dtype,
                                        )
                                    )
        if shard is None:
            return out
        groups = len({comparison_group(c) for c in out})
        if shard.count > groups:
            raise SuiteError(
                f"--shard {shard}: suite {self.name} has {groups} comparison group(s) (model x "
                f"workload x seq len x batch size) to split; use N <= {groups}"
            )
        return shard.select(out)

    def with_timing(self, values: dict[str, int]) -> Suite:
        """A copy with [timing] keys replaced (from --warmup/--iterations), validated."""
        clean = {k: check_value("timing", k, v, f"--{k}") for k, v in values.items()}
        return replace(self, timing=replace(self.timing, **clean))

    def with_parallel(self, strategy: str | None, reduce_dtypes: list[str] | None) -> Suite:
        """A copy with [parallel] keys replaced (from --parallel/--reduce-dtypes), validated."""
        values = {"strategy": strategy, "reduce_dtypes": reduce_dtypes}
        clean = {
            k: check_value("parallel", k, v, f"--{k.replace('_', '-')}")
            for k, v in values.items()
            if v is not None
        }
        return replace(self, parallel=replace(self.parallel, **clean))

    def with_peak_tflops(self, text: str) -> Suite:
        """A copy with [flops] peak_tflops from --peak-tflops ("989" or "bf16=989,fp8=1979")."""
        peaks = parse_peak_tflops(text)
        if peaks is None:
            raise SuiteError(
                "--peak-tflops: must be a positive number (every dtype) or DTYPE=N pairs with "
                f"DTYPE one of {', '.join(DTYPES)} (e.g. bf16=989,fp8=1979); got {text!r}"
            )
        return replace(self, flops=replace(self.flops, peak_tflops=peaks))

    def model(self, name: str) -> ModelSpec:
        """The resolved spec of a model named in this suite."""
        for spec in self.models:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def fingerprint(self) -> str:
        """sha256 of the resolved suite (comments aside): what --resume checks is unchanged."""
        body = "\n".join(line for line in self.to_toml().splitlines() if not line.startswith("#"))
        return hashlib.sha256(body.encode()).hexdigest()

    def to_toml(self) -> str:
        """The resolved suite as TOML (what ran, flags applied), loadable by load_suite."""
        return resolved_toml(self)


# ---------------------------------------------------------------------------------------------
# Sharding
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """`--shard I/N`: this run takes every N-th comparison group of the sweep, from the I-th.

    A comparison group is one shape of one model and workload (model, workload, sequence
    length, batch size): its precisions, in every execution, are what speedups and verdicts
    compare, so they stay together on one machine and run back to back. Groups are dealt
    round-robin in the suite's case order, so shards differ by at most one group and the same
    suite splits the same way everywhere; N runs with I = 1..N cover the sweep exactly once."""

    index: int  # 1-based
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, cases: list[Case]) -> list[Case]:
        """The cases of this shard, in their order (`cases`: the whole sweep)."""
        groups = list(dict.fromkeys(comparison_group(c) for c in cases))
        mine = {g for i, g in enumerate(groups) if i % self.count == self.index - 1}
        return [c for c in cases if comparison_group(c) in mine]


def comparison_group(case: Case) -> tuple[str, str, int, int]:
    """The cases compared with each other: one model, workload, sequence length and batch size."""
    return (case.model, case.workload, case.seq_len, case.batch_size)


def parse_shard(text: str, where: str = "--shard") -> Shard:
    """'2/4' -> Shard(2, 4); anything else is a SuiteError naming `where`."""
    index, _, count = str(text).partition("/")
    try:
        shard = Shard(int(index), int(count))
    except ValueError:
        shard = None
    if shard is None or not 1 <= shard.index <= shard.count:
        raise SuiteError(f"{where}: expected I/N with 1 <= I <= N (e.g. 1/2); got {text!r}")
    return shard

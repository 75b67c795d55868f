"""How a case's steps execute: eagerly, under torch.compile, or captured once as a CUDA graph and
replayed. One component per execution, like a precision mode: its gate (`unsupported_reason`),
the wrap it puts around the model (`wrap`) and around the step (`wrap_step`), how the FLOP count
runs the step eagerly (`counting_step`), what its first call costs (compiling or capturing,
timed apart from the steps) and the cleanup after the case. The runner applies it last, after
the precision mode's `prepare` and the data-parallel layout's wrap (bench.engine.runner:
CaseRunner.prepare). Every execution calls the one step the workload defines
(bench.engine.workloads); none has a step of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from bench.engine.device import Device, MemoryReading
from bench.engine.progress import PhaseCallback
from bench.results.schema import Case

COMPILE_SCOPES = ("regional", "model")


class Eager:
    """Steps call the model as it is."""

    name = "eager"
    compiles = False  # torch.compile fuses the step's kernels (fp8's caveat asks)
    capturable_optimizer = False  # the optimizer step must be capturable in a CUDA graph

    def unsupported_reason(self, case: Case, device: Device) -> str | None:
        """Every case runs eagerly."""
        return None

    def wrap(self, module: torch.nn.Module) -> Any:
        """The module itself."""
        return module

    def wrap_step(self, step: Callable[[], Any], batch: dict[str, torch.Tensor]) -> Any:
        """The step itself."""
        return step

    def counting_step(self, step: Callable[[], Any]) -> Callable[[], Any]:
        """The step the FLOP count runs: the step itself."""
        return step

    def first_call(
        self, step: Callable[[], Any], device: Device, phase: PhaseCallback, memory: MemoryReading
    ) -> float | None:
        """Nothing to do before the warm-up: no compile time."""
        return None

    def details(self) -> dict[str, Any]:
        """Nothing to record."""
        return {}

    def reset(self) -> None:
        """Nothing to clean up."""


def repeated_blocks(module: torch.nn.Module) -> list[tuple[str, torch.nn.ModuleList]]:
    """The model's stacks of repeated layers: every ModuleList of two or more modules of one
    class that hold parameters (GPT-2's transformer.h, BERT's encoder.layer, Llama's
    model.layers), outermost first; a list inside a block of another is left to that block."""
    found: list[tuple[str, torch.nn.ModuleList]] = []
    for name, child in module.named_modules():
        if not isinstance(child, torch.nn.ModuleList) or len(child) < 2:
            continue
        if any(name.startswith(f"{outer}.") for outer, _ in found):
            continue  # inside a block already compiled whole
        classes = {type(block) for block in child}
        if len(classes) == 1 and any(True for _ in child[0].parameters()):
            found.append((name, child))
    return found


class Compiled:
    """Steps run under torch.compile. `scope` "regional" (the default) compiles each repeated
    transformer block in place with `nn.Module.compile()` (PyTorch's regional compilation
    recipe): every layer of a stack is an instance of one class, so dynamo compiles one graph per
    block class and reuses it for every layer, and the compile time no longer grows with the
    depth. Where the model has no stack of repeated blocks, the whole model is compiled and the
    reason recorded. `scope` "model" compiles the whole model as one graph.

    The first call compiles: it is timed apart (`timing.compile_s`), is neither a warm-up nor a
    timed step, and the memory window restarts after it. The compiler's caches are reset before
    and after every case: dynamo's caches would otherwise fill up across cases and fall back to
    eager without a word."""

    name = "compiled"
    compiles = True
    capturable_optimizer = False

    def __init__(self, scope: str = "regional") -> None:
        if scope not in COMPILE_SCOPES:
            raise ValueError(f"compile scope must be one of {COMPILE_SCOPES}; got {scope!r}")
        self.scope = scope
        self._details: dict[str, Any] = {"compile_scope": scope}

    def unsupported_reason(self, case: Case, device: Device) -> str | None:
        """generate: its decode loop changes shapes every token."""
        if case.workload == "generate":
            return (
                "generate is not compiled: its decode loop changes shapes every token, so "
                "torch.compile would recompile rather than run one graph"
            )
        return None

    def wrap(self, module: torch.nn.Module) -> Any:
        """A fresh compiler state, then the module with its blocks compiled in place (regional)
        or the whole module compiled."""
        torch.compiler.reset()
        if self.scope == "regional":
            stacks = repeated_blocks(module)
            if stacks:
                for _, stack in stacks:
                    for block in stack:
                        block.compile()
                described = [f"{name}: {len(s)} x {type(s[0]).__name__}" for name, s in stacks]
                self._details["compiled_blocks"] = "; ".join(described)
                return module
            self._details["compile_scope"] = "model"
            self._details["compile_fallback"] = (
                "no stack of repeated blocks (a ModuleList of one layer class) in the model: "
                "the whole model is compiled"
            )
        return torch.compile(module)

    def wrap_step(self, step: Callable[[], Any], batch: dict[str, torch.Tensor]) -> Any:
        """The step itself: the compiled module is inside it."""
        return step

    def counting_step(self, step: Callable[[], Any]) -> Callable[[], Any]:
        """The step with every torch.compile region run eagerly: FlopCounterMode sees aten ops,
        which a compiled graph does not dispatch one by one (and counting must not compile)."""

        def eager_step() -> Any:
            with torch.compiler.set_stance("force_eager"):
                return step()

        return eager_step

    def first_call(
        self, step: Callable[[], Any], device: Device, phase: PhaseCallback, memory: MemoryReading
    ) -> float | None:
        """Run the compiling first call; its seconds. The memory window restarts after it: what
        the compiler used is not the case's."""
        phase("compiling", None, None)
        started = time.perf_counter()
        step()
        device.synchronize()
        compile_s = time.perf_counter() - started
        memory.restart_peak()
        return compile_s

    def details(self) -> dict[str, Any]:
        """The compile scope, which blocks were compiled, or why the whole model was."""
        return dict(self._details)

    def reset(self) -> None:
        """The compiled graphs die with the case."""
        torch.compiler.reset()


class GraphedStep:
    """A step captured once as a CUDA graph and replayed (PyTorch's "whole-network capture").

    `step` is the workload's own step, reading `batch`: those tensors are the graph's static
    input buffers. Each call refills them with `copy_` from the inputs the case feeds (kept
    apart in `source`), replays the graph, and returns a copy of the step's output (the static
    output is overwritten by the next replay). `cuda` is the torch.cuda API (streams, CUDAGraph,
    graph); tests pass a fake that records the calls."""

    def __init__(
        self,
        step: Callable[[], Any],
        batch: dict[str, torch.Tensor],
        cuda: Any = torch.cuda,
        warmup_steps: int = 3,
    ) -> None:
        self.step = step
        self.static_inputs = batch
        self.source = {key: value.clone() for key, value in batch.items()}
        self.cuda = cuda
        self.warmup_steps = warmup_steps
        self.graph: Any = None
        self.static_output: Any = None

    def capture(self) -> None:
        """Warm up on a side stream (so the capture sees allocated optimizer state, autotuned
        kernels and no lazy initialisation), then capture one step."""
        side = self.cuda.Stream()
        side.wait_stream(self.cuda.current_stream())
        with self.cuda.stream(side):
            for _ in range(self.warmup_steps):
                self.step()
        self.cuda.current_stream().wait_stream(side)
        graph = self.cuda.CUDAGraph()
        with self.cuda.graph(graph):
            self.static_output = self.step()
        self.graph = graph

    def __call__(self) -> Any:
        """Refill the static inputs, replay, and return a copy of the output."""
        if self.graph is None:
            raise RuntimeError("the CUDA graph was not captured before its first replay")
        for key, buffer in self.static_inputs.items():
            buffer.copy_(self.source[key])
        self.graph.replay()
        out = self.static_output
        return out.clone() if isinstance(out, torch.Tensor) else out


# Warm-up steps before the capture, on a side stream (PyTorch's CUDA graphs documentation and its
# whole-network example run 3).
GRAPH_WARMUP_STEPS = 3


class Graphs:
    """The whole step (forward, backward, a capturable fused AdamW step) captured once with
    `torch.cuda.graph` and replayed: no Python runs per step, so the host cannot bound it. The
    first call warms up on a side stream and captures, timed apart (`timing.compile_s`); the
    memory window restarts after it."""

    name = "graphs"
    compiles = False
    capturable_optimizer = True  # AdamW(capturable=True, fused=True): its step count on device

    def __init__(self, cuda: Any = torch.cuda) -> None:
        self.cuda = cuda

    def unsupported_reason(self, case: Case, device: Device) -> str | None:
        """A CPU, generate, and data-parallel cases cannot be captured."""
        if not device.is_cuda:
            return "graphs needs a CUDA device: torch.cuda.graph captures CUDA kernels"
        if case.workload == "generate":
            return (
                "generate is not captured: its decode loop grows the KV cache and checks its "
                "stopping criteria on the host every token, so no one graph replays it"
            )
        if case.parallel is not None:
            return (
                "graphs is not captured with a data-parallel layout: DDP's reducer and FSDP2's "
                "hooks launch collectives and allocate from the host in every step"
            )
        return None

    def wrap(self, module: torch.nn.Module) -> Any:
        """The module itself: the graph is captured around the whole step."""
        return module

    def wrap_step(self, step: Callable[[], Any], batch: dict[str, torch.Tensor]) -> GraphedStep:
        """The step, to be captured by the first call and replayed after it."""
        return GraphedStep(step, batch, self.cuda, GRAPH_WARMUP_STEPS)

    def counting_step(self, step: Callable[[], Any]) -> Callable[[], Any]:
        """The eager step, before it is captured."""
        return step.step if isinstance(step, GraphedStep) else step

    def first_call(
        self, step: Callable[[], Any], device: Device, phase: PhaseCallback, memory: MemoryReading
    ) -> float | None:
        """Warm up on a side stream and capture; its seconds. The memory window restarts
        after it (the graph's private pool stays: replays reuse it)."""
        if not isinstance(step, GraphedStep):
            raise TypeError("graphs: the step was not wrapped by Graphs.wrap_step")
        phase("capturing", None, None)
        started = time.perf_counter()
        step.capture()
        device.synchronize()
        capture_s = time.perf_counter() - started
        memory.restart_peak()
        return capture_s

    def details(self) -> dict[str, Any]:
        """How the step was captured."""
        return {"cuda_graph": f"whole step, {GRAPH_WARMUP_STEPS} side-stream warm-up steps"}

    def reset(self) -> None:
        """Nothing to clean up: the graph and its memory pool die with the case's step."""


Execution = Eager | Compiled | Graphs


def execution_for(case: Case, compile_scope: str = "regional") -> Execution:
    """The execution a case runs in (`compile_scope`: the suite's [sweep] compile_scope)."""
    if case.execution == "compiled":
        return Compiled(compile_scope)
    if case.execution == "graphs":
        return Graphs()
    return Eager()

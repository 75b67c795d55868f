"""NumericsAnalyzer: runs the divergence passes for the cases of a sweep, once per
(model, workload, precision), and caches the fp32 reference of each (model, workload).

Each pass reports its phase ("numerics: fp32 reference", "numerics: amp_bf16", ...) and, in
training, its step, to the case's PhaseCallback: the first case of a model can spend minutes here
on a CPU, and the progress display says so.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.engine.data import Batches, make_batches, stable_seed
from bench.engine.device import Device
from bench.engine.models import ModelSpec, count_parameters
from bench.engine.modes import BASELINE_MODE, PRECISION_MODES
from bench.engine.modes.base import PrecisionMode
from bench.engine.numerics import metrics
from bench.engine.numerics.activations import activation_summary
from bench.engine.numerics.config import NumericsConfig
from bench.engine.numerics.passes import (
    FP64_REFERENCE,
    TrainingTrace,
    fp32_activation_ranges,
    run_inference,
    run_training,
)
from bench.engine.numerics.verdicts import inference_verdict, training_verdict
from bench.engine.parallel import SingleDevice, current_rank, layout_for
from bench.engine.progress import PhaseCallback, no_phase
from bench.engine.runner import first_line
from bench.engine.suite import Suite
from bench.results.schema import Case

CUBLAS_WORKSPACE_CONFIG = ":4096:8"  # deterministic cuBLAS (METHODS rule 11)
INFER_BATCHES = 1  # forward passes compared per inference check


class NumericsAnalyzer:
    """`for_case(case, phase)` is the CaseRunner's `numerics` hook: it never raises."""

    def __init__(
        self,
        suite: Suite,
        device: Device,
        pristine_model: Callable[[ModelSpec], torch.nn.Module] | None = None,
    ) -> None:
        self.suite = suite
        self.device = device
        self.config = NumericsConfig.from_table(suite.tables.get("numerics", {}), suite.source)
        # The runner's pristine_model when wired in session.py, so numerics and timing start from
        # the very same fp32 weights; otherwise built here from the suite's seed.
        self.pristine_model = pristine_model or self._own_pristine
        self._own: tuple[str, torch.nn.Module] | None = None
        self._model: str | None = None  # the model whose passes are cached
        self._cache: dict[tuple[str, ...], Any] = {}
        self._phase: PhaseCallback = no_phase  # the current case's progress
        if device.is_cuda and self.config.enabled:
            # Read by cuBLAS when its workspace is first made: set before any case runs.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)

    @property
    def enabled(self) -> bool:
        """False when the suite's [numerics] says enabled = false."""
        return self.config.enabled

    def for_case(self, case: Case, phase: PhaseCallback = no_phase) -> dict[str, Any] | None:
        """The case's numerics dict; a failure becomes {"verdict": None, "error": ...}."""
        if not self.config.enabled:
            return None
        self._phase = phase
        try:
            return copy.deepcopy(self.analyze(case))
        except Exception as exc:  # a numerics failure must never lose the case's timing
            message = first_line(f"{type(exc).__name__}: {exc}".strip())
            return {"verdict": None, "error": message}
        finally:
            self._phase = no_phase
        # No free_memory() here: each pass's copies die with it, and the next case's memory
        # window collects and empties the cache first (a gc.collect costs ~0.2 s on a CPU).

    def shape(self, spec: ModelSpec) -> tuple[int, int]:
        """(batch_size, seq_len) of the model's numerics passes (NumericsConfig.pass_shape)."""
        sweep = self.suite.sweep
        return self.config.pass_shape(sweep.batch_sizes, sweep.seq_lens, spec.max_positions)

    def analyze(self, case: Case) -> dict[str, Any]:
        """Numerics of a case (shared by every case of its model, workload and precision)."""
        spec = self.suite.model(case.model)
        if case.model != self._model:
            self._cache.clear()  # one model's references at a time: they can be large
            self._model = case.model
        kind = "train" if case.workload == "train" else "infer"
        if layout_for(case).data_parallel:  # a data-parallel training case: its own passes
            return dict(
                self._memo(
                    ("numerics", kind, case.numerics_key),
                    lambda: self._training_numerics(spec, case.precision, case),
                )
            )
        out = dict(
            self._memo(
                ("numerics", kind, case.precision),
                lambda: self._numerics(spec, kind, case.precision),
            )
        )
        if case.workload == "generate":
            out["outputs"] = "prompt (prefill) logits"
        # fp32 carries the activation ranges; a mode with a narrow format, a summary in it.
        mode = PRECISION_MODES[case.precision]
        if self.config.activations and (mode is BASELINE_MODE or mode.activation_format):
            entries = self._memo(("activations",), lambda: self._activations(spec))
            if mode is BASELINE_MODE:
                out["activations"] = entries
            else:
                out["activation_summary"] = activation_summary(entries, mode.activation_format)
        return out

    # -- caching and pass context ------------------------------------------------------------

    def _memo(self, key: tuple[str, ...], compute: Callable[[], Any]) -> Any:
        """Compute once per key; a failure is cached too and raised again for every case."""
        if key not in self._cache:
            try:
                self._cache[key] = compute()
            except Exception as exc:
                exc.__traceback__ = None  # keep the message, not the frames (and their tensors)
                self._cache[key] = exc
        value = self._cache[key]
        if isinstance(value, Exception):
            raise value
        return value

    def _own_pristine(self, spec: ModelSpec) -> torch.nn.Module:
        if self._own is None or self._own[0] != spec.name:
            self._own = None
            self._own = (spec.name, spec.build(self.suite.info.seed))
        return self._own[1]

    @contextlib.contextmanager
    def _pass(self, mode: PrecisionMode) -> Iterator[None]:
        """The mode's global state plus deterministic algorithms and a fixed seed; everything,
        global RNG included, is restored afterwards (precision.global_state restores the flags).

        Attention runs on SDPA's math backend: with `warn_only=True` the flash and
        memory-efficient backward kernels stay non-deterministic on CUDA, and fp32 against fp32
        would then differ run to run on a GPU, where it is exactly 0 on a CPU.
        """
        devices = [self.device.torch_device.index or 0] if self.device.is_cuda else []
        with (
            mode.global_state(self.device),
            torch.random.fork_rng(devices=devices),
            sdpa_kernel(SDPBackend.MATH),
        ):
            # warn_only: an op without a deterministic kernel should not end the pass.
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
            torch.manual_seed(self.suite.info.seed)
            yield

    def _batches(self, spec: ModelSpec, kind: str, rank: int | None = None) -> Batches:
        """The pass's batches; with `rank`, that rank's own (data-parallel passes: each rank
        trains on its own deterministic part of the global batch)."""

        def build() -> Batches:
            batch_size, seq_len = self.shape(spec)
            count = self.config.train_steps if kind == "train" else INFER_BATCHES
            parts = () if rank is None else ("rank", rank)
            seed = stable_seed(self.suite.info.seed, spec.name, "numerics", kind, *parts)
            return make_batches(
                self.suite.info.data, spec, kind == "train", batch_size, seq_len, count, seed
            )

        return self._memo(("batches", kind, str(rank)), build)

    def _fp64_affordable(self, spec: ModelSpec) -> bool:
        return self.config.noise_floor and (
            count_parameters(self.pristine_model(spec)) <= self.config.fp64_max_parameters
        )

    def _optional_fp64(self, run: Callable[[], Any], spec: ModelSpec) -> tuple[Any, str | None]:
        """The fp64 reference where affordable; out of memory, the floor goes without it."""
        if not self._fp64_affordable(spec):
            return None, None
        try:
            return run(), None
        except (torch.OutOfMemoryError, MemoryError) as exc:
            return None, first_line(f"{type(exc).__name__}: {exc}", limit=200)

    def _common(self, spec: ModelSpec, kind: str) -> dict[str, Any]:
        """Keys every case of this kind records: the pass's shape and settings."""
        batch_size, seq_len = self.shape(spec)
        batches = self._batches(spec, kind)
        return {
            "kind": kind,
            "batch_size": batch_size,
            "seq_len": seq_len,
            "steps": self.config.train_steps if kind == "train" else INFER_BATCHES,
            "data": batches.source,
            "tokenizer": batches.tokenizer,
            "data_wrapped": batches.wrapped,
            "reference": "fp32 (TF32 off, deterministic algorithms, dropout off)",
            "deterministic_algorithms": True,
            "thresholds": self.config.thresholds(),
        }

    def _numerics(self, spec: ModelSpec, kind: str, precision: str) -> dict[str, Any]:
        if kind == "train":
            return self._training_numerics(spec, precision)
        return self._inference_numerics(spec, precision)

    # -- training ----------------------------------------------------------------------------

    def training_trace(
        self, spec: ModelSpec, mode: PrecisionMode, label: str, case: Case | None = None
    ) -> TrainingTrace:
        """One training pass of `mode` on the suite's numerics batches, from the pristine weights,
        in the deterministic pass context (uncached: a trace holds a copy of the gradients).
        For a data-parallel `case`, on every rank at once, laid out and reduced as the case is:
        each rank its own batches, the loss the mean over the ranks (the global batch's)."""
        layout = SingleDevice() if case is None else layout_for(case)
        # Each rank of a data-parallel pass trains on its own part of the global batch.
        rank = current_rank() if layout.data_parallel else None
        batches = self._batches(spec, "train", rank).batches
        name = f"numerics: {label}"
        self._phase(name, 0, len(batches))
        with self._pass(mode):
            trace = run_training(
                self.pristine_model(spec),
                mode,
                self.device,
                batches,
                on_step=lambda step, total: self._phase(name, step, total),
                layout=layout,
            )
        trace.loss = layout.mean_losses(trace.loss)
        return trace

    def _training_reference(self, spec: ModelSpec, case: Case | None = None) -> dict[str, Any]:
        """fp32 run (the baseline), a second fp32 run and an fp64 run (the noise floor). For a
        data-parallel case, laid out as it is with gradients reduced in fp32, and no fp64 run."""
        fp32 = BASELINE_MODE
        layout = None if case is None else replace(case, precision=fp32.name, reduce_dtype="fp32")
        reference = self.training_trace(spec, fp32, "fp32 reference", layout)
        repeat = (
            self.training_trace(spec, fp32, "fp32 repeat", layout)
            if self.config.noise_floor
            else None
        )
        if layout is None:
            fp64, fp64_error = self._optional_fp64(
                lambda: self.training_trace(spec, FP64_REFERENCE, "fp64 reference"), spec
            )
        else:
            fp64, fp64_error = None, "not run for data-parallel cases"

        floor: dict[str, Any] = {
            "fp32_runs_identical": None,
            "fp32_repeat_max_rel_div": None,
            "fp64_reference": fp64 is not None,
            "fp64_error": fp64_error,
            "fp32_vs_fp64_max_rel_div": None,
            "fp32_vs_fp64_final_rel_div": None,
            "fp32_vs_fp64_grad_sqnr_db": None,
        }
        if repeat is not None:
            div = metrics.loss_divergence(repeat.loss, reference.loss)
            floor["fp32_runs_identical"] = repeat.loss == reference.loss and _same_grads(
                repeat, reference
            )
            floor["fp32_repeat_max_rel_div"] = div["max_rel_div"]
        if fp64 is not None:
            # fp32's own error: the fp64 run is the reference here.
            div = metrics.loss_divergence(reference.loss, fp64.loss)
            floor["fp32_vs_fp64_max_rel_div"] = div["max_rel_div"]
            floor["fp32_vs_fp64_final_rel_div"] = div["final_rel_div"]
            floor["fp32_vs_fp64_grad_sqnr_db"] = metrics.grad_sqnr_db(
                fp64.grads, reference.grads, fp64.names
            )["overall"]
        candidates = [
            v
            for v in (floor["fp32_repeat_max_rel_div"], floor["fp32_vs_fp64_max_rel_div"])
            if v is not None
        ]
        floor["max_rel_div"] = max(candidates) if candidates else None
        return {"trace": reference, "repeat": repeat, "noise_floor": floor}

    def _training_numerics(
        self, spec: ModelSpec, precision: str, case: Case | None = None
    ) -> dict[str, Any]:
        """Divergence of `precision`'s training from fp32's; for a data-parallel `case`, of its
        precision and gradient reduce dtype from fp32 computed and reduced in fp32, with the
        reduction's own effect (against the same precision reduced in fp32) in `reduce`."""
        layout = "" if case is None else case.layout
        reference = self._memo(
            ("reference", "train", layout), lambda: self._training_reference(spec, case)
        )
        base: TrainingTrace = reference["trace"]
        mode = PRECISION_MODES[precision]
        reduced = case is not None and case.reduce_dtype not in (None, "fp32")
        if mode is BASELINE_MODE and not reduced:
            # fp32 against itself is the repeat run (METHODS rule 11); without one, itself.
            trace = reference["repeat"] or base
        else:
            label = precision if case is None else case.numerics_key
            trace = self.training_trace(spec, mode, label, case)
        out = self._training_divergence(spec, trace, base, reference["noise_floor"])
        if case is not None:
            out["reference"] = (
                f"fp32, gradients reduced in fp32, {case.layout} (TF32 off, deterministic "
                "algorithms, dropout off)"
            )
            out["world_size"] = case.world_size
        if reduced:
            out["reduce"] = self._reduce_effect(spec, case, trace, base, reference)
        return out

    def _reduce_effect(
        self,
        spec: ModelSpec,
        case: Case,
        trace: TrainingTrace,
        base: TrainingTrace,
        reference: dict[str, Any],
    ) -> dict[str, Any]:
        """What reducing gradients in the case's dtype alone does: its training against the
        same precision with gradients reduced in fp32, from the same weights and data."""
        if PRECISION_MODES[case.precision] is BASELINE_MODE:
            same = base
        else:
            fp32_reduce = replace(case, reduce_dtype="fp32")
            label = f"{fp32_reduce.numerics_key} (fp32 reduce)"
            same = self.training_trace(spec, PRECISION_MODES[case.precision], label, fp32_reduce)
        effect = self._training_divergence(spec, trace, same, reference["noise_floor"])
        keys = ("max_rel_div", "final_rel_div", "grad_sqnr_db", "first_exceed_step", "verdict")
        return {
            "against": f"{case.precision}, gradients reduced in fp32, {case.layout}",
            "reduce_dtype": case.reduce_dtype,
            **{k: effect[k] for k in keys},
            "reasons": effect["reasons"],
        }

    def _training_divergence(
        self, spec: ModelSpec, trace: TrainingTrace, base: TrainingTrace, floor: dict[str, Any]
    ) -> dict[str, Any]:
        """A training pass against its baseline: losses, divergence, gradient SQNR, verdict."""
        div = metrics.loss_divergence(trace.loss, base.loss)
        if trace.first_nan_step is not None:
            # Stopped on NaN/inf weights or gradients: the divergence from here on is unbounded,
            # even where the losses recorded so far were close.
            div.update(max_rel_div=math.nan, mean_rel_div=math.nan, final_rel_div=math.nan)
        out: dict[str, Any] = {
            **self._common(spec, "train"),
            "loss": trace.loss,
            "baseline_loss": base.loss,
            **div,
            "tolerance": self.config.warn_rel_div,
            "first_exceed_step": metrics.first_exceeding(div["rel_div"], self.config.warn_rel_div),
            "first_nan_step": trace.first_nan_step,
            "nan_source": trace.nan_source,
            "baseline_nan_step": base.first_nan_step,
            "grad_sqnr_db": metrics.grad_sqnr_db(base.grads, trace.grads, base.names),
            "scaler": None,
            "noise_floor": floor,
            "floor_ratio": _ratio(div["max_rel_div"], floor["max_rel_div"]),
        }
        if trace.scale is not None:
            out["scaler"] = {
                "scale": trace.scale,
                "skipped_steps": len(trace.skipped_at),
                "skipped_at": trace.skipped_at,
            }
        out["verdict"], out["reasons"] = training_verdict(out, self.config)
        return out

    # -- inference ---------------------------------------------------------------------------

    def _forward(self, spec: ModelSpec, mode: PrecisionMode, label: str) -> torch.Tensor:
        batches = self._batches(spec, "infer").batches
        self._phase(f"numerics: {label}", None, None)
        with self._pass(mode):
            return run_inference(
                self.pristine_model(spec), mode, self.device, batches, spec.family.forward_kwargs()
            )

    def _inference_reference(self, spec: ModelSpec) -> dict[str, Any]:
        fp32 = BASELINE_MODE
        logits = self._forward(spec, fp32, "fp32 reference")
        repeat = self._forward(spec, fp32, "fp32 repeat") if self.config.noise_floor else None
        fp64, fp64_error = self._optional_fp64(
            lambda: self._forward(spec, FP64_REFERENCE, "fp64 reference"), spec
        )
        floor: dict[str, Any] = {
            "fp32_runs_identical": None,
            "fp32_repeat_max_abs_err": None,
            "fp64_reference": fp64 is not None,
            "fp64_error": fp64_error,
            "fp32_vs_fp64_max_abs_err": None,
            "fp32_vs_fp64_rel_rmse": None,
            "fp32_vs_fp64_sqnr_db": None,
            "sqnr_db": None,
        }
        if repeat is not None:
            floor["fp32_runs_identical"] = bool(torch.equal(repeat, logits))
            floor["fp32_repeat_max_abs_err"] = float((repeat - logits).abs().max())
            floor["sqnr_db"] = metrics.compare_outputs(logits, repeat)["sqnr_db"]
        if fp64 is not None:
            own = metrics.compare_outputs(fp64, logits)
            floor["fp32_vs_fp64_max_abs_err"] = own["max_abs_err"]
            floor["fp32_vs_fp64_rel_rmse"] = own["rel_rmse"]
            floor["fp32_vs_fp64_sqnr_db"] = own["sqnr_db"]
            repeat_sqnr = floor["sqnr_db"] if floor["sqnr_db"] is not None else math.inf
            floor["sqnr_db"] = min(own["sqnr_db"], repeat_sqnr)  # the larger error is the floor
        return {"logits": logits, "repeat": repeat, "fp64": fp64, "noise_floor": floor}

    def _inference_numerics(self, spec: ModelSpec, precision: str) -> dict[str, Any]:
        reference = self._memo(("reference", "infer"), lambda: self._inference_reference(spec))
        if PRECISION_MODES[precision] is BASELINE_MODE:
            logits = reference["repeat"] if reference["repeat"] is not None else reference["logits"]
        else:
            logits = self._forward(spec, PRECISION_MODES[precision], precision)
        out: dict[str, Any] = {
            **self._common(spec, "infer"),
            **metrics.compare_outputs(reference["logits"], logits, reference["fp64"]),
            "baseline_finite": bool(torch.isfinite(reference["logits"]).all()),
            "noise_floor": reference["noise_floor"],
        }
        out["verdict"], out["reasons"] = inference_verdict(out, self.config)
        if spec.rotary:  # rotary positions lose resolution late in a long sequence
            out["long_positions"] = metrics.long_positions(reference["logits"], logits)
        return out

    # -- activations -------------------------------------------------------------------------

    def _activations(self, spec: ModelSpec) -> list[dict[str, Any]]:
        batch = self._batches(spec, "infer").batches[0]
        self._phase("numerics: activation ranges", None, None)
        with self._pass(BASELINE_MODE):
            return fp32_activation_ranges(
                self.pristine_model(spec), self.device, batch, spec.family.forward_kwargs()
            )


def _same_grads(a: TrainingTrace, b: TrainingTrace) -> bool:
    return a.grads.keys() == b.grads.keys() and all(
        torch.equal(a.grads[k], b.grads[k]) for k in a.grads
    )


def _ratio(value: float, floor: float | None) -> float | None:
    """How many times the noise floor a divergence is (None where the floor is 0 or unknown)."""
    if floor is None or floor == 0 or math.isnan(value):
        return None
    return value / floor

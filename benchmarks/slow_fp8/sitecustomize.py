"""Make torch's CPU float8 matmul as slow as the reference kernel some CPUs have, on purpose.

On an Intel Xeon with AMX, torch 2.13's CPU `_scaled_mm` is a reference kernel: a 256x128x128
call takes about 150 ms (0.056 GFLOP/s). On an AMD EPYC the same call takes 0.3 ms. To check on
the AMD machine that the test suite and the default CPU run keep their time budgets on the Intel
one, put this folder first on PYTHONPATH: every Python process (mpbench, its workers, torchrun's
ranks, pytest and its workers) then wraps `torch._scaled_mm` so that a CPU call sleeps as long as
that reference kernel would take for its shape (2*M*N*K FLOPs at MPBENCH_SLOW_FP8_FLOPS, default
5.6e7 FLOP/s).

    PYTHONPATH=benchmarks/slow_fp8 mpbench run
    PYTHONPATH=benchmarks/slow_fp8 pytest

Test-only: nothing in mpbench imports it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import time

RATE_FLOPS = float(os.environ.get("MPBENCH_SLOW_FP8_FLOPS", "5.6e7"))


def _slow_down(torch: object) -> None:
    real = torch._scaled_mm

    def scaled_mm(a, b, *args, **kwargs):  # noqa: ANN001, ANN202
        out = real(a, b, *args, **kwargs)
        if a.device.type == "cpu":
            m, k = a.shape[-2], a.shape[-1]
            time.sleep(2 * m * b.shape[-1] * k / RATE_FLOPS)
        return out

    torch._scaled_mm = scaled_mm


class _AfterTorch(importlib.abc.MetaPathFinder):
    """Runs _slow_down once torch has been imported."""

    def find_spec(self, name, path, target=None):  # noqa: ANN001, ANN201
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torch")
        exec_module = spec.loader.exec_module

        def exec_then_slow_down(module):  # noqa: ANN001, ANN202
            exec_module(module)
            _slow_down(module)

        spec.loader.exec_module = exec_then_slow_down
        return spec


sys.meta_path.insert(0, _AfterTorch())

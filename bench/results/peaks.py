"""Dense peak TFLOP/s per GPU model and compute dtype: the denominator of MFU.

MFU (model FLOPs utilisation) is achieved TFLOP/s over the hardware's peak for the dtype the
matmuls run in. The peaks here are NVIDIA's published figures, DENSE: datasheets quote tensor-core
figures "with sparsity" (2:4 structured sparsity, which no mpbench case uses), so those are
halved. GeForce cards are listed with FP32 accumulation (what PyTorch's fp16/bf16/fp8 matmuls
use), which on GeForce runs at half the fp16-accumulate rate the marketing figures quote.

A peak is looked up only for a GPU this table knows, by its torch device name
(`torch.cuda.get_device_name()`); an unknown GPU is never guessed from a similar name (an
"H100 NVL" is not an "H100 PCIe", an "L40" is not an "L40S"), and a CPU has no table at all:
for both, `--peak-tflops` gives the figure, and without it MFU is left out with the reason.

Each entry names its source. Where sources disagree, the conservative published per-GPU figure
is taken and the comment says so.

Precision-aware MFU. A step's matmuls do not all run in one dtype: an fp8 model runs its
converted Linear layers on fp8 tensor cores but its LM head and attention's score and value
matmuls in bf16, at half the rate. With the step's FLOPs split by dtype (FLOPs_i, counted by
bench.engine.flops), the peak MFU divides by is the FLOP-weighted one:

    peak = sum_i FLOPs_i / sum_i (FLOPs_i / peak_i)        (`weighted_peak_tflops`)

the rate at which the hardware would finish exactly this mix if every matmul ran at its own
dtype's peak (a harmonic mean weighted by FLOPs; the time-weighted denominator). Then

    MFU = achieved FLOP/s / peak = (sum_i FLOPs_i / peak_i) / step time

is the step's ideal time at the peaks over its real time. One dtype gives that dtype's peak, as
before. torchtitan declines to report MFU for fp8 runs because the denominator mixes fp8 and
bf16 units; dividing everything by the fp8 peak understates the work the bf16 part did, and
dividing by the bf16 peak overstates it. MFU never exceeds 1 if each dtype's matmuls stay below
their peak.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

# Compute dtypes with a peak: CUDA-core fp32, then the tensor-core formats. Each precision mode
# names the one most of its matmuls run in (bench.engine.modes: `compute_dtype`); a case whose
# FLOPs were split by dtype (fp8: attention, the LM head and layers whose shapes do not divide
# by 16 stay in bf16) is measured against the FLOP-weighted peak of its mix (below).
DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8")

OVERRIDE_SOURCE = "--peak-tflops"
CPU_REASON = "no peak table for CPUs; give --peak-tflops"


@dataclass(frozen=True)
class GpuPeaks:
    """One GPU model: how torch names it, and its dense peak TFLOP/s by compute dtype."""

    model: str  # what reasons and sources call it
    pattern: str  # regular expression, fully matching the normalised device name
    tflops: dict[str, float]  # dense peaks; a dtype it has no hardware for is absent
    source: str


_A100_SOURCE = (
    "NVIDIA A100 Tensor Core GPU datasheet (all four variants quote the same peaks; "
    "sparsity figures halved), https://www.nvidia.com/en-us/data-center/a100/"
)
_A100 = {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}

GPUS: tuple[GpuPeaks, ...] = (
    # Volta: fp16 tensor cores only (no tf32, bf16 or fp8). Datasheet peaks are dense.
    GpuPeaks(
        "V100 SXM2",
        r"V100 SXM2( \d+GB)?",
        {"fp32": 15.7, "fp16": 125.0},
        "NVIDIA Tesla V100 datasheet, https://www.nvidia.com/en-us/data-center/v100/",
    ),
    GpuPeaks(
        "V100 PCIe",
        r"V100 PCIE( \d+GB)?",
        {"fp32": 14.0, "fp16": 112.0},
        "NVIDIA Tesla V100 datasheet, https://www.nvidia.com/en-us/data-center/v100/",
    ),
    # Ampere GA102: datasheet TF32 62.5 | 125*, BF16/FP16 125 | 250* (* with sparsity).
    GpuPeaks(
        "A10",
        r"A10",
        {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0},
        "NVIDIA A10 Tensor Core GPU datasheet (sparsity figures halved), "
        "https://www.nvidia.com/en-us/data-center/products/a10-gpu/",
    ),
    # Ampere GA100: TF32 156 | 312*, BF16/FP16 312 | 624*; no fp8.
    GpuPeaks("A100 SXM4 40GB", r"A100 SXM4? 40GB", _A100, _A100_SOURCE),
    GpuPeaks("A100 SXM4 80GB", r"A100 SXM4? 80GB", _A100, _A100_SOURCE),
    GpuPeaks("A100 PCIe 40GB", r"A100 (PCIE 40GB|40GB PCIE)", _A100, _A100_SOURCE),
    GpuPeaks("A100 PCIe 80GB", r"A100 (PCIE 80GB|80GB PCIE)", _A100, _A100_SOURCE),
    # Ada AD104: datasheet TF32 120*, BF16/FP16 242*, FP8 485* (all with sparsity: halved).
    GpuPeaks(
        "L4",
        r"L4",
        {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0, "fp8": 242.5},
        "NVIDIA L4 Tensor Core GPU datasheet (sparsity figures halved), "
        "https://www.nvidia.com/en-us/data-center/l4/",
    ),
    # Ada AD102: datasheet TF32 183 | 366*, BF16/FP16 362.05 | 733*, FP8 733 | 1,466*.
    GpuPeaks(
        "L40S",
        r"L40S",
        {"fp32": 91.6, "tf32": 183.0, "bf16": 362.05, "fp16": 362.05, "fp8": 733.0},
        "NVIDIA L40S datasheet (dense column), https://www.nvidia.com/en-us/data-center/l40s/",
    ),
    # GeForce Ada AD102, FP32-accumulate rows (half the fp16-accumulate rate on GeForce):
    # TF32 82.6, FP16/BF16 165.2, FP8 330.3 dense. Third-party tables that list fp8 at 660.6
    # quote the fp16-accumulate rate, which PyTorch's float8 matmul does not use.
    GpuPeaks(
        "RTX 4090",
        r"RTX 4090",
        {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2, "fp8": 330.3},
        "NVIDIA Ada GPU Architecture whitepaper v2.01, Appendix A (GeForce RTX 4090, "
        "'with FP32 Accumulate' rows, dense), "
        "https://images.nvidia.com/aem-dam/Solutions/geforce/ada/"
        "nvidia-ada-gpu-architecture.pdf",
    ),
    # Hopper GH100 SXM5 (torch: "NVIDIA H100 80GB HBM3"): TF32 989*, BF16/FP16 1,979*,
    # FP8 3,958* (with sparsity: halved).
    GpuPeaks(
        "H100 SXM",
        r"H100 (80GB HBM3|SXM5?( 80GB)?( HBM3)?)",
        {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5, "fp8": 1979.0},
        "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column (sparsity figures halved), "
        "https://www.nvidia.com/en-us/data-center/h100/",
    ),
    # H100 PCIe (350 W): TF32 756*, BF16/FP16 1,513*, FP8 3,026*. Not the H100 NVL.
    GpuPeaks(
        "H100 PCIe",
        r"H100 PCIE( 80GB)?",
        {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5, "fp16": 756.5, "fp8": 1513.0},
        "NVIDIA H100 Tensor Core GPU datasheet (2022 edition), H100 PCIe column (sparsity "
        "figures halved), https://www.nvidia.com/en-us/data-center/h100/",
    ),
    # H200 SXM: the H100 SXM's GH100 compute with HBM3e; same peaks. Not the H200 NVL (600 W,
    # lower peaks).
    GpuPeaks(
        "H200",
        r"H200( SXM5?)?( 141GB)?( HBM3E)?",
        {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5, "fp8": 1979.0},
        "NVIDIA H200 Tensor Core GPU datasheet, H200 SXM column (sparsity figures halved), "
        "https://www.nvidia.com/en-us/data-center/h200/",
    ),
    # Blackwell B200 as in HGX/DGX B200 (1,000 W): per GPU FP8 9 PF*, FP16/BF16 4.5 PF*,
    # TF32 2.2 PF*, FP32 75 TF. GB200 NVL72 parts (1,200 W) quote 10/5/2.5 PF* and FP32 80;
    # some tables give the HGX part FP32 80: the conservative HGX figures are used.
    GpuPeaks(
        "B200",
        r"B200( SXM6?)?( \d+GB)?",
        {"fp32": 75.0, "tf32": 1100.0, "bf16": 2250.0, "fp16": 2250.0, "fp8": 4500.0},
        "NVIDIA HGX B200 specifications, 'Individual Blackwell GPU' (sparsity figures halved), "
        "https://www.nvidia.com/en-us/data-center/hgx/",
    ),
)


@dataclass(frozen=True)
class PeakLookup:
    """A peak to divide by (and where it comes from), or why there is none."""

    tflops: float | None
    source: str | None
    reason: str | None


def normalise_gpu_name(name: str) -> str:
    """Upper case, '-'/'_' as spaces, vendor and brand words dropped: 'NVIDIA A100-SXM4-40GB'
    -> 'A100 SXM4 40GB', 'Tesla V100-PCIE-32GB' -> 'V100 PCIE 32GB'."""
    words = re.sub(r"[-_\s]+", " ", name.upper()).split()
    while words and words[0] in ("NVIDIA", "TESLA", "GEFORCE"):
        words.pop(0)
    return " ".join(words)


def find_gpu(gpu_name: str) -> GpuPeaks | None:
    """The table entry whose pattern matches the whole normalised name, or None."""
    normalised = normalise_gpu_name(gpu_name)
    for gpu in GPUS:
        if re.fullmatch(gpu.pattern, normalised):
            return gpu
    return None


def known_gpus() -> list[str]:
    """The GPU models the table knows, in table order."""
    return [gpu.model for gpu in GPUS]


def peak_tflops(
    gpu_name: str | None, dtype: str, override_tflops: float | None = None
) -> PeakLookup:
    """The dense peak TFLOP/s for `dtype` on this GPU: the override when given, else the table."""
    if override_tflops is not None:
        if not (math.isfinite(override_tflops) and override_tflops > 0):
            return PeakLookup(
                None, None, f"--peak-tflops must be a positive number; got {override_tflops!r}"
            )
        return PeakLookup(float(override_tflops), OVERRIDE_SOURCE, None)
    if not gpu_name:
        return PeakLookup(None, None, CPU_REASON)
    if dtype not in DTYPES:
        return PeakLookup(
            None, None, f"no peak for compute dtype {dtype!r} (known: {', '.join(DTYPES)})"
        )
    gpu = find_gpu(gpu_name)
    if gpu is None:
        return PeakLookup(
            None,
            None,
            f"no peak table for {gpu_name!r} (known: {', '.join(known_gpus())}); "
            "give --peak-tflops",
        )
    tflops = gpu.tflops.get(dtype)
    if tflops is None:
        return PeakLookup(None, None, f"{gpu_name} has no {dtype} tensor cores")
    return PeakLookup(tflops, f"{gpu.model}: {gpu.source}", None)


def weighted_peak_tflops(
    flops_by_dtype: dict[str, int], peaks_tflops: dict[str, float]
) -> float | None:
    """The FLOP-weighted peak of a step's matmul mix: total FLOPs / sum_i(FLOPs_i / peak_i)
    (module docstring); None without FLOPs or where a dtype with FLOPs has no peak."""
    total = sum(flops_by_dtype.values())
    if total <= 0:
        return None
    ideal = 0.0  # the mix's time at the peaks, in FLOPs per TFLOP/s
    for dtype, flops in flops_by_dtype.items():
        if flops <= 0:
            continue
        peak = peaks_tflops.get(dtype)
        if peak is None or not peak > 0:
            return None
        ideal += flops / peak
    return total / ideal


def split_peak(
    gpu_name: str | None,
    flops_by_dtype: dict[str, int],
    override: Callable[[str], float | None] = lambda dtype: None,
) -> tuple[PeakLookup, dict[str, float] | None]:
    """(The FLOP-weighted peak of this mix on this GPU, each dtype's peak): every dtype with
    FLOPs looked up as `peak_tflops` does (`override(dtype)` first); where one has no peak, no
    peak, with that dtype's reason and its share of the FLOPs."""
    total = sum(flops_by_dtype.values())
    lookups = {
        dtype: peak_tflops(gpu_name, dtype, override(dtype))
        for dtype, flops in sorted(flops_by_dtype.items(), key=lambda kv: -kv[1])
        if flops > 0
    }
    missing = {dtype: lookup for dtype, lookup in lookups.items() if lookup.tflops is None}
    if len(missing) == len(lookups) and len({m.reason for m in missing.values()}) == 1:
        return next(iter(missing.values())), None  # one reason for all (a CPU): as it is
    for dtype, lookup in missing.items():
        share = f"{dtype} ({flops_by_dtype[dtype] / total:.0%} of the FLOPs)"
        return PeakLookup(None, None, f"{share}: {lookup.reason}"), None
    peaks = {dtype: float(lookup.tflops) for dtype, lookup in lookups.items()}
    weighted = weighted_peak_tflops(flops_by_dtype, peaks)
    if weighted is None:
        return PeakLookup(None, None, "no FLOPs counted"), None
    sources = list(dict.fromkeys(lookup.source for lookup in lookups.values() if lookup.source))
    source = "; ".join(sources)
    if len(peaks) > 1:
        mix = ", ".join(
            f"{dtype} {flops_by_dtype[dtype] / total:.0%} at {peak:g}"
            for dtype, peak in peaks.items()
        )
        source = f"FLOP-weighted ({mix} TFLOP/s): {source}"
    return PeakLookup(weighted, source, None), peaks


def mfu(achieved_tflops: float | None, peak: PeakLookup) -> float | None:
    """Achieved over peak TFLOP/s (0.42 = 42%), or None when either is unknown."""
    if achieved_tflops is None or peak.tflops is None or not math.isfinite(achieved_tflops):
        return None
    return achieved_tflops / peak.tflops

"""Work, traffic and the roofline floor (the README's Benchmarks section).

For an op case (x: (B, C, H, W), y: (B, C_out, H, W), all tensors in the case's dtype of
``s`` bytes per element, ``P = W*W + W + H*H + H + C_out*3C`` parameter elements):

* FLOPs (:func:`op_flops`): fwd = :func:`smlp_kernels.flops.smlp_mix_flops`; bwd =
  :func:`smlp_kernels.flops.smlp_mix_bwd_flops` (input and weight gradients, plus
  recomputing r and k); fwd+bwd = their sum. A multiply-add is 2 FLOPs.
* Fewest bytes (:func:`op_bytes`), what any implementation must move to or from memory:
  fwd = read x + read the parameters + write y = ``s*(BCHW + P + B*C_out*HW)``;
  bwd = read g and x + read the parameters + write dx + write the parameter gradients =
  ``s*(B*C_out*HW + 2*BCHW + 2P)``; fwd+bwd = fwd + bwd: y must leave the forward (the loss
  that makes g is outside the op) and g only exists after it, so x and the parameters are
  read once in each pass.
* The floor (:func:`floor_s`): ``max(FLOPs / compute ceiling, bytes / copy bandwidth)``,
  both ceilings measured on the device in the same run (:func:`measure_ceilings`):

  - copy bandwidth: a large device-to-device copy, read + write bytes counted, its fastest
    call;
  - compute ceiling on CUDA: the rate of a large square ``torch.mm`` in the case's dtype (its
    fastest call), which reaches the GPU's matrix peak;
  - compute ceiling on CPU: the peak multiply-add rate of the cores (:func:`measure_fma_peak`,
    ``csrc/cpu/fma_peak.cpp``): every thread of the run (``torch.get_num_threads()``) runs
    independent FMA chains on vector registers with no memory traffic, in every FMA instruction set
    the CPU has (picked at run time; SSE, which has no FMA, only where there is none), the fastest
    winning; the rate adds up each thread's work over its own CPU time, so time slices other jobs
    take do not lower it (a busy sibling hyperthread or a lower clock still would), and the threads
    are at most the CPUs of the affinity mask and the cgroup's quota. When the team's wall-clock
    rate falls below 80% of that, the notes say the machine was shared (floor% then reads low). fp32
    and fp16 cases get the fp32 peak (fp16 is computed in fp32 on CPU), fp64 the fp64 peak, bf16 the
    AVX512-BF16 ``vdpbf16ps`` peak where the CPU has it (4 FLOPs per fp32 lane and instruction: two
    bf16 products, each a multiply and an add; should the fp32 peak be larger, that one), else the
    fp32 peak. A library matmul is an achieved rate, not a peak (on one AMD EPYC torch's fp32 matmul
    reached 191 GFLOP/s and our ``cpu`` backend 330), so torch's matmul rate is measured and
    reported next to the ceiling as ``matmul_flop_per_s``, never used as the ceiling while the peak
    is known. Should it still exceed the measured peak (a matrix unit such as AMX, or a peak
    measured low), the ceiling is the matmul rate, with a note: a ceiling is never below a rate the
    device was seen to reach.
  - without the compiled extension (``SMLP_SKIP_EXTENSION=1``, an unbuilt tree) the CPU has
    no peak: the compute ceiling falls back to torch's matmul rate, labelled a lower bound
    (``compute_source`` ``torch_matmul_lower_bound``); its floors are then too long and
    floor% may overstate.

  ``roofline_pct = 100 * floor / time``: 100 is the floor. No run can beat a true floor,
  so a floor% above 100 is a measurement error: a ceiling was measured too low for that
  case (the compute peak, or the copy bandwidth of a case whose data stays in cache).
  The report flags every such row (:func:`.analysis.roofline_warnings`).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import flops as flop_counts
from .._extension import extension_status, load_extension, require_extension
from .cases import Case
from .meta import fp32_matmul_setting
from .timing import TimingConfig, time_cpu, time_cuda

__all__ = [
    "CPU_PEAK_KINDS",
    "Ceilings",
    "compute_ceilings",
    "floor_s",
    "fma_peak_isas",
    "measure_ceilings",
    "measure_fma_peak",
    "op_bytes",
    "op_flops",
    "op_param_elements",
]


def op_flops(case: Case) -> int:
    """FLOPs of one call of an op case in its mode."""
    args = (case.batch, case.channels, case.out_channels, case.height, case.width)
    fwd = flop_counts.smlp_mix_flops(*args)
    bwd = flop_counts.smlp_mix_bwd_flops(*args)
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[case.mode]


def op_param_elements(case: Case) -> int:
    """Elements of row_weight, row_bias, col_weight, col_bias and fuse_weight together."""
    h, w = case.height, case.width
    return w * w + w + h * h + h + case.out_channels * 3 * case.channels


def op_bytes(case: Case) -> int:
    """The fewest bytes one call of an op case must read and write (see the module doc)."""
    size = case.torch_dtype.itemsize
    pixels = case.batch * case.height * case.width
    x, y, p = pixels * case.channels, pixels * case.out_channels, op_param_elements(case)
    fwd = x + p + y
    bwd = y + 2 * x + 2 * p
    return size * {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[case.mode]


# The compute ceiling's origin, per dtype (Ceilings.compute_source).
FMA_PEAK = "fma_peak"  # + "_fp32", "_fp64", "_bf16": the CPU's FMA peak of that kind
TORCH_MATMUL = "torch_matmul"  # a large torch.mm: the ceiling on CUDA
# torch.mm on a CPU whose peak is unknown (no extension): a lower bound of the ceiling.
TORCH_MATMUL_LOWER_BOUND = "torch_matmul_lower_bound"

# The FMA peaks that bound each dtype's arithmetic on CPU: the largest measured one of these
# is its ceiling. fp16 is computed in fp32; bf16 in fp32 too on a CPU without AVX512-BF16.
CPU_PEAK_KINDS = {"fp32": ("fp32",), "fp16": ("fp32",), "bf16": ("bf16", "fp32"), "fp64": ("fp64",)}


@dataclass
class Ceilings:
    """The device's measured ceilings, and torch's matmul rate for comparison.

    ``compute_flop_per_s`` is the compute ceiling per dtype name (the floor's), and
    ``compute_source`` says what each one is (``fma_peak_fp32``, ``fma_peak_fp64``,
    ``fma_peak_bf16``, ``torch_matmul`` or ``torch_matmul_lower_bound``).
    ``matmul_flop_per_s`` is the rate of a large torch.mm per dtype: the ceiling on CUDA, an
    achieved rate reported beside it on CPU.
    ``fma_peak_flop_per_s``: the CPU's measured FMA peaks by kind (fp32, fp64, bf16); empty
    on CUDA or without the extension. ``notes``: anything a reader of the ceilings must know.
    """

    device: str  # e.g. "cuda" or "cpu"
    copy_bytes_per_s: float
    compute_flop_per_s: dict[str, float] = field(default_factory=dict)  # dtype -> FLOP/s
    compute_source: dict[str, str] = field(default_factory=dict)  # dtype -> origin
    matmul_flop_per_s: dict[str, float] = field(default_factory=dict)  # dtype -> torch.mm
    fma_peak_flop_per_s: dict[str, float] = field(default_factory=dict)  # kind -> FLOP/s
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # sizes and methods, for the record

    def as_dict(self) -> dict:
        return asdict(self)


def compute_ceilings(ceilings: dict) -> tuple[dict[str, float], dict[str, str]]:
    """The compute ceiling and its source per dtype from a report's ``ceilings`` object.

    Reports written before the FMA peak have only ``matmul_flop_per_s``, which was then the
    ceiling: it is returned with the source ``torch_matmul``.
    """
    if "compute_flop_per_s" in ceilings:
        return ceilings["compute_flop_per_s"], ceilings.get("compute_source", {})
    rates = ceilings.get("matmul_flop_per_s") or {}
    return rates, dict.fromkeys(rates, TORCH_MATMUL)


def floor_s(flops: int, nbytes: int, ceilings: Ceilings, dtype: str) -> float | None:
    """The roofline floor in seconds, or None without a compute ceiling for ``dtype``."""
    rate = ceilings.compute_flop_per_s.get(dtype)
    if not rate or not ceilings.copy_bytes_per_s:
        return None
    return max(flops / rate, nbytes / ceilings.copy_bytes_per_s)


# Below this ratio of the FMA team's wall-clock rate to its per-CPU-time rate, other
# processes held the CPUs during the measurement, and the ceilings' notes say so.
SHARED_WALL_RATIO = 0.8

# The FMA peak's trials per size: (seconds of each trial, trials). "quick" takes a small
# fraction of a second per kind, calibration included.
_FMA_TRIALS = {"full": (0.1, 5), "quick": (0.01, 3)}


def fma_peak_isas(kind: str) -> list[str]:
    """The instruction sets :func:`measure_fma_peak` can use for ``kind`` (fp32, fp64 or
    bf16) on this CPU, widest first; empty without the extension or, for bf16, without
    AVX512-BF16."""
    ext = load_extension()
    if ext is None or not hasattr(ext, "cpu_fma_peak_isas"):
        return []
    return list(ext.cpu_fma_peak_isas(kind))


def measure_fma_peak(
    kind: str, *, threads: int | None = None, isa: str = "auto", size: str = "quick"
) -> dict:
    """The CPU's peak multiply-add rate for ``kind`` (fp32, fp64 or bf16) on ``threads``
    threads (default: ``torch.get_num_threads()``; at most the logical CPUs), from
    ``smlp_kernels._C.cpu_fma_peak``.

    A dict with ``flop_per_s`` and how it was measured (``isa``, ``instruction``,
    ``threads``, ``chains``, ``lanes``, ...). FLOPs: an FMA lane is 2; a ``vdpbf16ps`` fp32
    lane is 4 (two bf16 products, each added in). The rate adds up each thread's work over
    its own CPU time, so time slices a shared machine gives to other jobs do not lower it
    (a sibling hyperthread's load or a lower clock still does); ``flop_per_s_wall`` is the
    team's wall-clock rate. ``isa="auto"`` takes the widest
    instruction set of :func:`fma_peak_isas`; another one forces a narrower path.
    RuntimeError without the extension, ValueError for an instruction set the CPU lacks.
    """
    ext = require_extension()
    if not hasattr(ext, "cpu_fma_peak"):
        raise RuntimeError("smlp_kernels._C has no cpu_fma_peak: it predates it; rebuild it")
    seconds, trials = _FMA_TRIALS[size]
    # More threads than logical CPUs would count time-shared cores twice (the rate adds up
    # each thread's work over its own CPU time), and cannot raise the peak anyway.
    threads = min(threads or torch.get_num_threads(), _logical_cpus())
    return dict(ext.cpu_fma_peak(kind, threads, isa, seconds, trials))


def _logical_cpus() -> int:
    """The logical CPUs this process may run on: its affinity mask, and at most its cgroup's
    CPU quota (a container limited to 2 CPUs of a 64-CPU host runs its threads at full speed
    in bursts, so a rate per CPU time would count the host's CPUs)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(n, math.ceil(quota))) if quota else n


def _cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time the cgroup may use (cgroup v2 cpu.max, v1 cfs quota), or None."""
    try:
        fields = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if fields and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


# Sizes: big enough to reach the ceiling, small enough for the time budget. "quick" is for
# tests and smoke runs, not for figures.
_SIZES = {
    # (copy bytes, matmul n) per (device type, size)
    ("cuda", "full"): (2**30, 8192),
    ("cuda", "quick"): (2**25, 2048),
    ("cpu", "full"): (2**26, 2048),
    ("cpu", "quick"): (2**23, 512),
}


def measure_ceilings(
    device: torch.device,
    dtypes: Iterable[str],
    *,
    size: str = "full",
    timing: TimingConfig | None = None,
) -> Ceilings:
    """Measure the copy bandwidth, the compute ceiling and torch's matmul rate for each
    dtype name in ``dtypes`` (see the module doc for what the compute ceiling is).

    On CUDA bfloat16 and float32 are always measured. Float32 matmuls follow PyTorch's TF32
    setting (recorded in the details, see :func:`.meta.fp32_matmul_setting`). On CPU, the
    FMA peaks are measured first, on ``torch.get_num_threads()`` threads, and matmuls in
    dtypes other than float32 use a quarter of the size (much slower there).
    """
    from .cases import DTYPES

    dtypes = set(dtypes)
    if device.type == "cuda":
        dtypes |= {"bf16", "fp32"}
    copy_bytes, n = _SIZES[(device.type, size)]
    timing = timing or TimingConfig()

    details: dict = {}
    peaks: dict[str, float] = {}
    peak_reason, peak_notes = "", []
    if device.type == "cpu":
        # Before torch's copy and matmuls, whose OpenMP threads may still spin afterwards.
        peaks, peak_details, peak_reason, peak_notes = _cpu_fma_peaks(dtypes, size)
        details.update(peak_details)

    # A ceiling is the best the device does: the fastest call, not the median.
    def run(fn) -> float:
        if device.type == "cuda":
            return time_cuda(fn, timing).min_s
        return time_cpu({"fn": fn}, timing)["fn"].min_s

    src = torch.empty(copy_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    copy_s = run(functools.partial(dst.copy_, src))
    details["copy"] = f"{copy_bytes / 2**20:.0f} MiB device copy, read + write bytes counted"
    details["float32_matmul_precision"] = fp32_matmul_setting()
    del src, dst
    matmul = {}
    for name in sorted(dtypes):
        size_n = n if device.type == "cuda" or name == "fp32" else max(n // 4, 256)
        a = torch.randn(size_n, size_n, device=device).to(DTYPES[name])
        b = torch.randn(size_n, size_n, device=device).to(DTYPES[name])
        matmul[name] = 2 * size_n**3 / run(functools.partial(torch.mm, a, b))
        details[f"matmul_{name}"] = f"{size_n}^3 torch.mm"

    compute, source, notes = _compute_ceilings(device.type, dtypes, peaks, matmul, peak_reason)
    notes = peak_notes + notes
    return Ceilings(
        device=device.type,
        copy_bytes_per_s=2 * copy_bytes / copy_s,
        compute_flop_per_s=compute,
        compute_source=source,
        matmul_flop_per_s=matmul,
        fma_peak_flop_per_s=peaks,
        notes=notes,
        details=details,
    )


def _cpu_fma_peaks(dtypes: set[str], size: str) -> tuple[dict[str, float], dict, str, list[str]]:
    """The FMA peaks the CPU cases need (fp32 always), their details, why there are none
    ("" when there are), and notes for the reader (a machine shared while measuring)."""
    ext, status = load_extension(), extension_status()[1]
    if ext is None:
        return {}, {"fma_peak": f"not measured: {status}"}, status, []
    if not hasattr(ext, "cpu_fma_peak"):
        reason = "smlp_kernels._C predates cpu_fma_peak; rebuild it"
        return {}, {"fma_peak": f"not measured: {reason}"}, reason, []
    kinds = {"fp32"} | {k for d in dtypes for k in CPU_PEAK_KINDS.get(d, ())}
    if "bf16" in kinds and not fma_peak_isas("bf16"):
        kinds.discard("bf16")
    peaks, details, notes = {}, {}, []
    for kind in sorted(kinds):
        # Every FMA instruction set, the fastest wins: where one 512-bit FMA port runs at a
        # lower clock than two 256-bit ones, AVX2 is the peak, not AVX-512. SSE (no FMA: half
        # the FLOPs per lane and step, on narrower vectors) only where it is all there is.
        isas = fma_peak_isas(kind)
        isas = [i for i in isas if i != "sse"] or isas
        r = max(
            (measure_fma_peak(kind, size=size, isa=isa) for isa in isas),
            key=lambda m: m["flop_per_s"],
        )
        peaks[kind] = r["flop_per_s"]
        per_lane = r["flops_per_step"] // r["lanes"]
        details[f"fma_peak_{kind}"] = (
            f"{r['isa']}: {r['instruction']}, {r['chains']} independent chains x {r['lanes']} "
            f"fp{'64' if kind == 'fp64' else '32'} lanes per thread, {per_lane} FLOPs per lane "
            f"and step, {r['threads']} threads, best of {r['trials']} trials of "
            f"{r['iterations']} steps (each thread's work over its CPU time; by the wall "
            f"clock {r['flop_per_s_wall'] / 1e9:.1f} GFLOP/s)"
        )
        shared = r["flop_per_s_wall"] / r["flop_per_s"]
        if shared < SHARED_WALL_RATIO:
            notes.append(
                f"{kind} FMA peak: by the wall clock the team ran at {100 * shared:.0f}% of "
                "its per-CPU-time rate: other processes held the CPUs, so this run's times "
                "are inflated against the ceiling and floor% reads low"
            )
    return peaks, details, "", notes


def _compute_ceilings(
    device_type: str,
    dtypes: set[str],
    peaks: dict[str, float],
    matmul: dict[str, float],
    peak_reason: str,
) -> tuple[dict[str, float], dict[str, str], list[str]]:
    """The compute ceiling and its source per dtype, and the notes (see the module doc)."""
    compute: dict[str, float] = {}
    source: dict[str, str] = {}
    notes: list[str] = []
    for name in sorted(dtypes):
        rate = matmul.get(name)
        if device_type == "cuda":
            compute[name], source[name] = rate, TORCH_MATMUL
            continue
        measured = [k for k in CPU_PEAK_KINDS.get(name, ("fp32",)) if k in peaks]
        kind = max(measured, key=peaks.__getitem__) if measured else None
        peak = peaks[kind] if kind else None
        if peak is None:
            compute[name], source[name] = rate, TORCH_MATMUL_LOWER_BOUND
            notes.append(
                f"{name}: no FMA peak ({peak_reason}); the compute ceiling is torch's "
                "matmul rate, a lower bound of the peak, so floor% may overstate"
            )
        elif rate is not None and rate > peak:
            compute[name], source[name] = rate, TORCH_MATMUL
            notes.append(
                f"{name}: torch matmul {rate / 1e9:.1f} GFLOP/s beat the {kind} FMA peak "
                f"{peak / 1e9:.1f} GFLOP/s (a matrix unit, or a peak measured low); the "
                "matmul rate is the ceiling"
            )
        else:
            compute[name], source[name] = peak, f"{FMA_PEAK}_{kind}"
    return compute, source, notes

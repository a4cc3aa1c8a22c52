"""Work, traffic and the roofline floor (BRIEF sections 1 and 4).

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
* The floor (:func:`floor_s`): ``max(FLOPs / matmul rate, bytes / copy bandwidth)``, with
  both ceilings measured on the device in the same run (:func:`measure_ceilings`): the
  copy bandwidth of a large device-to-device copy counting read + write bytes, and the rate
  of a large square matmul in the case's dtype, each from its fastest timed call.
  ``roofline_pct = 100 * floor / time``: 100 is the floor; above 100 means a ceiling was
  measured low (a loaded machine), not that the floor was beaten.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import torch

from .. import flops as flop_counts
from .cases import Case
from .meta import fp32_matmul_setting
from .timing import TimingConfig, time_cpu, time_cuda

__all__ = [
    "Ceilings",
    "floor_s",
    "measure_ceilings",
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


@dataclass
class Ceilings:
    """The device's measured ceilings: bytes/s of a copy, FLOP/s of a matmul per dtype."""

    device: str  # e.g. "cuda" or "cpu"
    copy_bytes_per_s: float
    matmul_flop_per_s: dict[str, float] = field(default_factory=dict)  # dtype name -> FLOP/s
    details: dict = field(default_factory=dict)  # sizes and methods, for the record

    def as_dict(self) -> dict:
        return asdict(self)


def floor_s(flops: int, nbytes: int, ceilings: Ceilings, dtype: str) -> float | None:
    """The roofline floor in seconds, or None without a matmul rate for ``dtype``."""
    rate = ceilings.matmul_flop_per_s.get(dtype)
    if not rate or not ceilings.copy_bytes_per_s:
        return None
    return max(flops / rate, nbytes / ceilings.copy_bytes_per_s)


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
    """Measure the copy bandwidth and the matmul rate for each dtype name in ``dtypes``.

    On CUDA bfloat16 and float32 are always measured. Float32 matmuls follow PyTorch's TF32
    setting (recorded in the details, see :func:`.meta.fp32_matmul_setting`). On CPU,
    matmuls in dtypes other than float32 use a quarter of the size (much slower there).
    """
    from .cases import DTYPES

    dtypes = set(dtypes)
    if device.type == "cuda":
        dtypes |= {"bf16", "fp32"}
    copy_bytes, n = _SIZES[(device.type, size)]
    timing = timing or TimingConfig()

    # A ceiling is the best the device does: the fastest call, not the median.
    def run(fn) -> float:
        if device.type == "cuda":
            return time_cuda(fn, timing).min_s
        return time_cpu({"fn": fn}, timing)["fn"].min_s

    src = torch.empty(copy_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    copy_s = run(functools.partial(dst.copy_, src))
    details: dict = {
        "copy": f"{copy_bytes / 2**20:.0f} MiB device copy, read + write bytes counted",
        "float32_matmul_precision": fp32_matmul_setting(),
    }
    del src, dst
    rates = {}
    for name in sorted(dtypes):
        size_n = n if device.type == "cuda" or name == "fp32" else max(n // 4, 256)
        a = torch.randn(size_n, size_n, device=device).to(DTYPES[name])
        b = torch.randn(size_n, size_n, device=device).to(DTYPES[name])
        rates[name] = 2 * size_n**3 / run(functools.partial(torch.mm, a, b))
        details[f"matmul_{name}"] = f"{size_n}^3 torch.mm"
    return Ceilings(
        device=device.type,
        copy_bytes_per_s=2 * copy_bytes / copy_s,
        matmul_flop_per_s=rates,
        details=details,
    )

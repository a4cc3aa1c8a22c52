"""Launch configurations of the Triton kernels and a small autotuner over them.

Each kernel has a short, shape-dependent list of configurations (tile sizes, warps,
stages); the first entry is the heuristic default. The tuner times every entry once per
key (kernel, C_in, C_out, H, W, dtype, flags, device) with ``triton.testing.do_bench`` and
caches the winner for the life of the process.

It never benchmarks when that would be wrong or pointless, and uses the default instead
(without caching it, so a later ordinary call can still tune):

* while the current CUDA stream is capturing a CUDA graph (benchmarking would launch
  kernels and synchronise inside the capture);
* under the Triton interpreter (timings mean nothing there);
* when the environment variable ``SMLP_TRITON_AUTOTUNE=0`` is set;
* for the weight-gradient reductions in deterministic mode, whose summation order depends
  on the configuration (timing-based choice would make the bits vary between processes).

:func:`all_configs` lists every configuration of every kernel for a shape; the
ahead-of-time compile test compiles all of them.
"""

import os
from dataclasses import dataclass, field

import torch
import triton

__all__ = [
    "Config",
    "all_configs",
    "axis_mix_configs",
    "axis_wgrad_configs",
    "clear_cache",
    "mix_fwd_configs",
    "mix_wgrad_fuse_configs",
    "pick",
]

AUTOTUNE_ENV = "SMLP_TRITON_AUTOTUNE"


@dataclass(frozen=True)
class Config:
    """Constexpr tile sizes plus launch options of one kernel launch."""

    kwargs: tuple[tuple[str, int], ...]
    num_warps: int = 4
    num_stages: int = 2
    label: str = field(default="", compare=False)

    def constexprs(self) -> dict[str, int]:
        return dict(self.kwargs)

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in self.kwargs]
        return " ".join([*parts, f"warps={self.num_warps}", f"stages={self.num_stages}"])


def _cfg(num_warps: int = 4, num_stages: int = 2, **kw: int) -> Config:
    return Config(tuple(kw.items()), num_warps, num_stages)


def _np2(n: int) -> int:
    return triton.next_power_of_2(max(1, int(n)))


def _dedup(configs: list[Config]) -> list[Config]:
    seen, out = set(), []
    for c in configs:
        if c not in seen:
            seen.add(c)
            out.append(c)
    return out


def _box(h: int, w: int, block_m: int, max_w: int) -> tuple[int, int]:
    """(BLOCK_H, BLOCK_W) of a pixel box of about block_m pixels, at least 16 of them.

    At least 16 so that the weight-gradient kernel's reduction over pixels is a legal
    tl.dot (its K dimension must be >= 16 on NVIDIA GPUs).
    """
    bw = min(_np2(w), max_w)
    bh = max(1, min(block_m // bw, _np2(h)))
    if bh * bw < 16:
        bh = 16 // bw
    return bh, bw


def mix_fwd_configs(c_in: int, c_out: int, h: int, w: int) -> list[Config]:
    """Tiles of mix_fwd_kernel for x with c_in channels and c_out output channels.

    Pixel boxes are about square (8 x 8) so that both spatial products stay small: R(x) is
    (BLOCK_C*BLOCK_H, BLOCK_W) and K(x) is (BLOCK_H, BLOCK_C*BLOCK_W). Wider boxes (a whole
    64-pixel row) made K(x)'s operand 32 x 2048 and spilled; 16 x 8 boxes and 8-warp
    variants still spilled in float32 on sm_80 (tests/test_triton_aot.py), so the set is
    two output-channel tile sizes on one box.

    The 16-channel output tile (only when c_out <= 16) runs on 8 warps with one stage. In
    float32 on sm_80, 4 warps with 2 stages spilled 4 to 8 bytes with Triton 3.7.1 to 3.9.0,
    8 warps with 2 stages 8 bytes with 3.9.0 (and 20 on sm_90 with 3.6.0), 4 warps with 1
    stage 16 bytes with 3.8.0 and 3.9.0; 8 warps with 1 stage spilled with none of 3.6.0 to
    3.9.0 (float32 on sm_80 and sm_90, 16-bit on both).
    """
    bh, bw = _box(h, w, 64, 8)
    bo = min(64, max(16, _np2(c_out)))
    configs = []
    for o in (bo, min(bo, 32)):
        warps, stages = (8, 1) if o == 16 else (4, 2)
        configs.append(
            _cfg(warps, stages, BLOCK_O=o, BLOCK_C=16, BLOCK_H=bh, BLOCK_W=bw, BLOCK_U=16,
                 BLOCK_V=16)
        )  # fmt: skip
    return _dedup(configs)


def mix_wgrad_fuse_configs(c_in: int, c_out: int, h: int, w: int) -> list[Config]:
    """Tiles of mix_wgrad_fuse_kernel (x has c_in channels, g has c_out).

    Three (BLOCK_O, BLOCK_C) float32 accumulators live through the loop; BLOCK_O = 64
    spilled on sm_80, so output-channel tiles are 32 or 16. The 16-channel tile runs on 8
    warps: on 4 it spilled 8 bytes in float32 on sm_80 with Triton 3.7.1 (2 stages; with 1
    stage, 8 bytes with 3.8.0 and 3.9.0).
    """
    bh, bw = _box(h, w, 64, 8)
    bo = min(32, max(16, _np2(c_out)))
    configs = []
    for o in (bo, 16):
        warps = 8 if o == 16 else 4
        configs.append(
            _cfg(warps, 2, BLOCK_O=o, BLOCK_C=16, BLOCK_H=bh, BLOCK_W=bw, BLOCK_U=16,
                 BLOCK_V=16)
        )  # fmt: skip
    return _dedup(configs)


def axis_wgrad_configs(s: int, length: int, has_f: bool) -> list[Config]:
    """Tiles of axis_wgrad_kernel for a mix along an axis of `length` (other axis `s`).

    Each program owns BLOCK_LA rows of the (L, L) gradient, so its accumulator stays at
    most 32 x 128.

    The 32-row tile (BLOCK_S = 2) with BLOCK_L >= 64 runs with one stage. With 2 stages it
    spilled in float32 on sm_80: BLOCK_L = 128 without F 200 bytes with Triton 3.8.0 and
    3.9.0, with F 8 to 12 bytes with 3.7.1 to 3.9.0; BLOCK_L = 64 with F 8 bytes with 3.7.1.
    8 warps with 2 stages still spilled 52 bytes (BLOCK_L = 128 without F, 3.8.0 and 3.9.0).
    The 16-row default keeps 2 stages.
    """
    bl = max(16, _np2(length))
    bla = min(bl, 32)
    out = []
    for rows in (16, 32):
        bs = max(1, min(_np2(s), rows // 16))
        bo = 32 if has_f else 16
        stages = 1 if bs == 2 and bl >= 64 else 2
        out.append(_cfg(4, stages, BLOCK_C=16, BLOCK_S=bs, BLOCK_L=bl, BLOCK_LA=bla, BLOCK_O=bo))
    return _dedup(out)


def axis_mix_configs(length: int) -> list[Config]:
    """Tiles of axis_mix_kernel for a mix along an axis of `length`."""
    bl = max(16, _np2(length))
    bk = 16
    rows = (16, 32) if bl >= 64 else (32, 64)  # (64, 32)-row tiles spilled in float32
    return _dedup([_cfg(4, 2, BLOCK_Q=bq, BLOCK_L=bl, BLOCK_K=bk) for bq in rows])


def all_configs(c: int, c_out: int, h: int, w: int) -> dict[str, list[Config]]:
    """Every (kernel, config) the backend may launch for this shape, forward and backward.

    The input gradient runs mix_fwd_kernel with the channel counts swapped; the row and
    column weight gradients run axis_wgrad_kernel along W and along H.
    """
    return {
        "mix_fwd_kernel": _dedup(mix_fwd_configs(c, c_out, h, w) + mix_fwd_configs(c_out, c, h, w)),
        "mix_wgrad_fuse_kernel": mix_wgrad_fuse_configs(c, c_out, h, w),
        "axis_wgrad_kernel": _dedup(
            axis_wgrad_configs(h, w, True)
            + axis_wgrad_configs(w, h, True)
            + axis_wgrad_configs(h, w, False)
            + axis_wgrad_configs(w, h, False)
        ),
        "axis_mix_kernel": _dedup(axis_mix_configs(w) + axis_mix_configs(h)),
    }


_CACHE: dict[tuple, Config] = {}


def clear_cache() -> None:
    """Forget every tuned configuration (the next call of each shape tunes again)."""
    _CACHE.clear()


def _may_benchmark(device: torch.device) -> bool:
    if os.environ.get(AUTOTUNE_ENV, "1") == "0" or device.type != "cuda":
        return False
    return not torch.cuda.is_current_stream_capturing()


def pick(key: tuple, configs: list[Config], device: torch.device, run, tune: bool = True) -> Config:
    """The configuration to launch for `key`; `run(config)` launches the kernel once.

    `run` must be safe to call repeatedly (kernels that accumulate with atomics zero
    their output inside `run`). ``tune=False`` returns the default without timing anything
    (deterministic reductions: their summation order depends on the config).
    """
    if len(configs) == 1 or not tune:
        return configs[0]
    full_key = (*key, str(device))
    hit = _CACHE.get(full_key)
    if hit is not None:
        return hit
    if not _may_benchmark(device):
        return configs[0]
    from triton.testing import do_bench

    best, best_ms = configs[0], float("inf")
    for cfg in configs:
        try:
            ms = do_bench(lambda cfg=cfg: run(cfg), warmup=5, rep=20)
        except Exception as exc:  # e.g. out of shared memory: not a candidate on this device
            if "OutOfResources" not in type(exc).__name__:
                raise
            continue
        if ms < best_ms:
            best, best_ms = cfg, ms
    if best_ms == float("inf"):
        raise RuntimeError(f"smlp_kernels triton: no launch configuration fits {key} on {device}")
    _CACHE[full_key] = best
    return best

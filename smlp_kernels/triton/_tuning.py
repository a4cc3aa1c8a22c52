"""Launch configurations of the Triton kernels and a small autotuner over them.

Each kernel family's module (``mix``, ``wgrad_fuse``, ``axis``) holds a short,
shape-dependent list of configurations for its kernels (tile sizes, warps, stages), built
with the helpers here; the first entry is the heuristic default. The tuner times every
entry once per key (kernel, C_in, C_out, H, W, dtype, flags, device) with
``triton.testing.do_bench`` and caches the winner for the life of the process.

It never benchmarks when that would be wrong or pointless, and uses the default instead
(without caching it, so a later ordinary call can still tune):

* while the current CUDA stream is capturing a CUDA graph (benchmarking would launch
  kernels and synchronise inside the capture);
* under the Triton interpreter (timings mean nothing there);
* when the environment variable ``SMLP_TRITON_AUTOTUNE=0`` is set;
* for the weight-gradient reductions in deterministic mode, whose summation order depends
  on the configuration (timing-based choice would make the bits vary between processes).

``scripts/triton_aot.py`` compiles every configuration the launchers can pick for
sm_80 and sm_90.
"""

import os
from dataclasses import dataclass, field

import torch
import triton

__all__ = ["AUTOTUNE_ENV", "Config", "box", "clear_cache", "config", "dedup", "np2", "pick"]

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


def config(num_warps: int = 4, num_stages: int = 2, **kw: int) -> Config:
    return Config(tuple(kw.items()), num_warps, num_stages)


def np2(n: int) -> int:
    return triton.next_power_of_2(max(1, int(n)))


def dedup(configs: list[Config]) -> list[Config]:
    """configs without repeats, in order (the first stays the default)."""
    return list(dict.fromkeys(configs))


def box(h: int, w: int, block_m: int, max_w: int) -> tuple[int, int]:
    """(BLOCK_H, BLOCK_W) of a pixel box of about block_m pixels, at least 16 of them.

    At least 16 so that the weight-gradient kernel's reduction over pixels is a legal
    tl.dot (its K dimension must be >= 16 on NVIDIA GPUs).
    """
    bw = min(np2(w), max_w)
    bh = max(1, min(block_m // bw, np2(h)))
    if bh * bw < 16:
        bh = 16 // bw
    return bh, bw


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

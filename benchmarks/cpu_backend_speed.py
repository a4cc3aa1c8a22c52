"""Forward speed of the fused C++ CPU backend against the SPACH-style PyTorch computation.

    python benchmarks/cpu_backend_speed.py [--batch 8] [--reps 31] [--threads N]

Shapes: the four sMLPNet-T stages, (C, H=W) = (80, 56), (160, 28), (320, 14), (640, 7),
C_out = C, with biases, float32, no grad. Both providers run in this one process on the
same tensors, interleaved call by call (SPACH-style, then cpu, then the next repetition),
so load from other processes on the machine hits both alike; the table reports medians.

    spach-style  smlp_kernels.reference.smlp_mix_spach_style (permute + conv + cat + conv)
    cpu          smlp_kernels.smlp_mix(..., backend="cpu"): the public op, with its
                 argument checks, custom-op dispatch and output allocation
    launcher     the bare launcher _C.cpu_mix_fwd into a preallocated y (the kernels alone)

Columns: median milliseconds, the ratio spach-style / cpu, the cpu op's GFLOP/s
(smlp_kernels.flops counts, a multiply-add = 2 FLOPs) and that as a percentage of
--peak-gflops (default 350: what the 2 cores of the development machine reach in an fp32
matmul), then the launcher's milliseconds and ratio. The geometric mean of the cpu ratios
closes the table; the goal is >= 2 and no ratio below 1.
"""

from __future__ import annotations

import argparse
import functools
import math
import os

import torch

import smlp_kernels
from smlp_kernels import flops
from smlp_kernels.bench.meta import cpu_model
from smlp_kernels.bench.timing import time_calls
from smlp_kernels.cpp_backends import tensor_arg
from smlp_kernels.reference import smlp_mix_spach_style

STAGES = [(80, 56), (160, 28), (320, 14), (640, 7)]


def _make_inputs(batch: int, channels: int, side: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(channels)
    return [
        torch.randn(batch, channels, side, side, generator=g),
        torch.randn(side, side, generator=g) * side**-0.5,
        torch.randn(side, generator=g),
        torch.randn(side, side, generator=g) * side**-0.5,
        torch.randn(side, generator=g),
        torch.randn(channels, 3 * channels, generator=g) * (3 * channels) ** -0.5,
    ]


def _launcher_call(inputs: list[torch.Tensor]):
    """A call of the bare launcher on inputs, writing into one preallocated y."""
    x, rw, rb, cw, cb, fw = inputs
    y = torch.empty(x.shape[0], fw.shape[0], *x.shape[2:])
    args = [tensor_arg(t) for t in (x, rw, rb, cw, cb, *fw.split(x.shape[1], 1), y)]
    launcher = smlp_kernels._extension.require_extension().cpu_mix_fwd

    def call() -> torch.Tensor:
        launcher(*args, 0)
        return y

    return call


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=31, help="timed calls per provider")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--peak-gflops", type=float, default=350.0)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    status = smlp_kernels.backends()["cpu"]
    if not status.available:
        raise SystemExit(f"the cpu backend is unavailable: {status.reason}")

    print(f"cpu backend forward vs SPACH-style eager, fp32, batch {args.batch}")
    print(
        f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"smlp_kernels {smlp_kernels.__version__}, load average at start "
        f"{os.getloadavg()[0]:.2f}"
    )
    print(f"median of {args.reps} interleaved calls each, after {args.warmup} warm-up calls")
    header = (
        f"{'stage shape':<16}{'spach-style ms':>15}{'cpu ms':>10}{'ratio':>8}"
        f"{'cpu GFLOP/s':>13}{'% of ' + format(args.peak_gflops, 'g'):>10}"
        f"{'launcher ms':>13}{'ratio':>8}"
    )
    print(header)
    print("-" * len(header))
    ratios, launcher_ratios = [], []
    with torch.no_grad():
        for channels, side in STAGES:
            inputs = _make_inputs(args.batch, channels, side)
            fns = {
                "spach": functools.partial(smlp_mix_spach_style, *inputs),
                "cpu": functools.partial(smlp_kernels.smlp_mix, *inputs, backend="cpu"),
                "launcher": _launcher_call(inputs),
            }
            expected = fns["spach"]()
            torch.testing.assert_close(fns["cpu"](), expected, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(fns["launcher"](), expected, rtol=1e-4, atol=1e-4)
            timings = time_calls(fns, args.reps, warmup=args.warmup)
            ms = {name: t.median_s * 1e3 for name, t in timings.items()}
            work = flops.smlp_mix_flops(args.batch, channels, channels, side, side)
            gflops = work / ms["cpu"] / 1e6
            ratios.append(ms["spach"] / ms["cpu"])
            launcher_ratios.append(ms["spach"] / ms["launcher"])
            shape = f"C{channels} H{side}"
            print(
                f"{shape:<16}{ms['spach']:>15.3f}{ms['cpu']:>10.3f}{ratios[-1]:>8.2f}"
                f"{gflops:>13.1f}{100 * gflops / args.peak_gflops:>9.1f}%"
                f"{ms['launcher']:>13.3f}{launcher_ratios[-1]:>8.2f}"
            )
    print("-" * len(header))
    print(f"cpu op:   geometric mean ratio {_geomean(ratios):.2f}, lowest {min(ratios):.2f}")
    print(
        f"launcher: geometric mean ratio {_geomean(launcher_ratios):.2f}, "
        f"lowest {min(launcher_ratios):.2f}"
    )
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

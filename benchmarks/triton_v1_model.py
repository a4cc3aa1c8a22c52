#!/usr/bin/env python
"""The predicted time of the Triton backend's version 1 on a GPU, per sMLPNet stage shape,
counted from its kernels' launches (no GPU needed): bytes through HBM and through L2,
matrix FLOPs as executed (padded tiles included), and a time per kernel.

    python benchmarks/triton_v1_model.py [--batch 128] [--hbm 4.3] [--l2 7.0] [--peak 790]

prints a Markdown table (benchmarks/NOTES.md holds its output for the H200 defaults). The
model, per kernel launch: time = max(HBM bytes / HBM bandwidth, L2 bytes / L2 bandwidth,
FLOPs / (efficiency x peak)) + a fixed launch cost, summed over the launches of a call
(they run one after another on one stream). Its assumptions are the numbers below: the
HBM and peak figures are the ceilings seen on an H200; the L2 bandwidth, the matrix
efficiencies and the launch cost are guesses for the first GPU run to correct. The scratch
buffers of one batch chunk (``--scratch-mib``, the backend's SCRATCH_BYTES by default) are
assumed to stay in L2 between the kernel that writes them and the one that reads them;
``--spill`` counts every scratch byte through HBM instead (the pessimistic bound).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STAGES = {
    "T1": (80, 56), "T2": (160, 28), "T3": (320, 14), "T4": (640, 7),
    "B1": (112, 56), "B2": (224, 28), "B3": (448, 14), "B4": (896, 7),
}  # fmt: skip
WGMMA_EFF = 0.60  # pipelined wgmma fed by cp.async (not TMA), 128 x 128 tiles, 3 stages
SMALL_MMA_EFF = 0.25  # the pre-pass's and line reductions' small products (mma.sync, or
# wgmma waited at once)
LAUNCH_US = 3.0  # per launch: ramp-up, tail and the gap to the next kernel


@dataclass
class Launches:
    hbm: float = 0.0  # bytes
    l2: float = 0.0  # bytes
    flops: float = 0.0  # executed, padded
    us: float = 0.0
    n: int = 0

    def add(self, hbm: float, l2: float, flops: float, eff: float, ceil: dict) -> None:
        t = max(hbm / ceil["hbm"], l2 / ceil["l2"], flops / (eff * ceil["peak"]))
        self.hbm, self.l2, self.flops = self.hbm + hbm, self.l2 + l2, self.flops + flops
        self.us += t * 1e6 + LAUNCH_US
        self.n += 1


def up(n: int, m: int) -> int:
    return math.ceil(n / m) * m


def np2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def concat(calls: Launches, pixels: int, c: int, h: int, w: int, s: int, ceil, spill) -> None:
    """The pre-pass over pixels (nb images): reads x (C channels) once from HBM, a second
    time (the columns) from L2, writes A = [x | r | k]."""
    nb = pixels // (h * w)
    bc = 16 if c < 32 else 32
    hp, wp = max(16, np2(h)), max(16, np2(w))
    flops = 2 * nb * up(c, bc) * (h * wp * wp + w * hp * hp)
    a = pixels * 3 * c * s
    calls.add(pixels * c * s + (a if spill else 0), pixels * c * s + a, flops, SMALL_MMA_EFF,
              ceil)  # fmt: skip


def gemm(calls: Launches, pixels: int, k: int, n: int, s_in: int, s_out: int, ceil, spill,
         out_to_hbm: bool = True) -> None:  # fmt: skip
    """fuse_gemm_kernel: (pixels x k) A times (n x k) F^T, 128 x min(128, np2(n)) tiles."""
    bn = min(128, max(16, np2(n)))
    n_n, n_m = math.ceil(n / bn), math.ceil(pixels / 128)
    flops = 2 * n_m * 128 * n_n * bn * up(k, 64)
    reads = n_n * pixels * k * s_in + n_m * n_n * bn * k * s_in
    out = pixels * n * s_out
    hbm = (out if out_to_hbm else 0) + (pixels * k * s_in if spill else 0)
    calls.add(hbm, reads + (0 if out_to_hbm else out), flops, WGMMA_EFF, ceil)


def predict(c: int, side: int, batch: int, ceil: dict, spill: bool,
            budget: int = 64 << 20) -> dict[str, Launches]:  # fmt: skip
    """The launches of one forward and one forward+backward at C_out = C, bf16."""
    h = w = side
    s = 2
    c_out = c
    hw = h * w
    fwd = Launches()
    chunk = max(1, min(batch, budget // (hw * 3 * c * s)))
    for b0 in range(0, batch, chunk):
        px = min(chunk, batch - b0) * hw
        concat(fwd, px, c, h, w, s, ceil, spill)
        gemm(fwd, px, 3 * c, c_out, s, s, ceil, spill)
    bwd = Launches()
    # Input gradient: the same pair on g (C_out channels) with transposed weights.
    chunk = max(1, min(batch, budget // (hw * 3 * c_out * s)))
    for b0 in range(0, batch, chunk):
        px = min(chunk, batch - b0) * hw
        concat(bwd, px, c_out, h, w, s, ceil, spill)
        gemm(bwd, px, 3 * c_out, c, s, s, ceil, spill)
    # Weight gradients, per chunk: pre-pass on x, g pixel-major, dF, Z, two line reductions.
    chunk = max(1, min(batch, budget // (hw * ((3 * c + c_out) * s + 2 * c * 4))))
    bo, bn = min(128, max(64, np2(c_out))), min(128, max(16, np2(3 * c)))
    n_o, n_n = math.ceil(c_out / bo), math.ceil(3 * c / bn)
    for b0 in range(0, batch, chunk):
        nb = min(chunk, batch - b0)
        px = nb * hw
        concat(bwd, px, c, h, w, s, ceil, spill)
        g_bytes = px * c_out * s
        bwd.add(g_bytes + (g_bytes if spill else 0), g_bytes, 0, 1.0, ceil)  # pixel_major
        reads = n_n * g_bytes + n_o * px * 3 * c * s
        atomics = 2 * 4 * c_out * 3 * c * max(1, (4 * 132) // (n_o * n_n))
        flops = 2 * up(px, 64) * n_o * bo * n_n * bn
        bwd.add(0, reads + atomics, flops, WGMMA_EFF, ceil)  # fuse_wgrad
        gemm(bwd, px, c_out, 2 * c, s, 4, ceil, spill, out_to_hbm=spill)  # Z, float32
        for length, lines in ((w, h), (h, w)):  # the two line reductions
            lp = max(16, np2(length))
            flops = 2 * nb * lines * lp * lp * up(c, 32)
            bwd.add(0, px * c * (4 + s), flops, SMALL_MMA_EFF, ceil)
    both = Launches(fwd.hbm + bwd.hbm, fwd.l2 + bwd.l2, fwd.flops + bwd.flops,
                    fwd.us + bwd.us, fwd.n + bwd.n)  # fmt: skip
    return {"fwd": fwd, "fwd+bwd": both}


def floors(label: str, batch: int, ceil: dict) -> dict[str, float]:
    """The roofline floor (us) of each mode, from the harness's own counts."""
    from smlp_kernels.bench.cases import op_case
    from smlp_kernels.bench.roofline import op_bytes, op_flops

    out = {}
    for mode in ("fwd", "fwd+bwd"):
        case = op_case(label, batch, "bf16", mode)
        out[mode] = max(op_flops(case) / ceil["peak"], op_bytes(case) / ceil["hbm"]) * 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--hbm", type=float, default=4.3, help="HBM bandwidth, TB/s")
    parser.add_argument("--l2", type=float, default=7.0, help="L2 bandwidth, TB/s")
    parser.add_argument("--peak", type=float, default=790.0, help="bf16 matrix peak, TFLOP/s")
    parser.add_argument("--spill", action="store_true", help="scratch through HBM too")
    parser.add_argument(
        "--scratch-mib", type=int, default=64, help="scratch per batch chunk, MiB (SCRATCH_BYTES)"
    )
    args = parser.parse_args(argv)
    for name in ("batch", "hbm", "l2", "peak", "scratch_mib"):
        if getattr(args, name) <= 0:
            parser.error(f"argument --{name.replace('_', '-')}: must be positive")
    ceil = {"hbm": args.hbm * 1e12, "l2": args.l2 * 1e12, "peak": args.peak * 1e12}
    print(
        "| shape | mode | launches | HBM MB | L2 MB | GFLOP executed | predicted us "
        "| floor us | x floor | goal x |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, (c, side) in STAGES.items():
        pred = predict(c, side, args.batch, ceil, args.spill, args.scratch_mib << 20)
        floor = floors(label, args.batch, ceil)
        for mode, goal in (("fwd", 1.5), ("fwd+bwd", 2.0)):
            p = pred[mode]
            print(f"| {label} C{c} {side}x{side} | {mode} | {p.n} | {p.hbm / 1e6:.0f} "
                  f"| {p.l2 / 1e6:.0f} | {p.flops / 1e9:.1f} | {p.us:.0f} | {floor[mode]:.1f} "
                  f"| {p.us / floor[mode]:.1f} | {goal} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

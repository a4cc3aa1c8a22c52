"""The fuse-weight gradient: its kernel, its launcher and its tile configurations.

d fuse_weight = [sum g x^T | sum g r^T | sum g k^T] over b, h, w is one fused reduction
over the pixels: r = R(x) + row_bias and k = K(x) + col_bias are recomputed on each pixel
tile with the mix's own ``mixed_tiles``, so they never reach global memory.
"""

import triton
import triton.language as tl
from torch import Tensor

from . import _common as cm
from . import _tuning
from ._common import mm, pairs, unravel
from .mix import mixed_tiles


@triton.jit
def mix_wgrad_fuse_kernel(
    g_ptr, sgb, sgo, sgh, sgw,
    x_ptr, sxb, sxc, sxh, sxw,
    rw_ptr, srw0, srw1, rb_ptr, srb,
    cw_ptr, scw0, scw1, cb_ptr, scb,
    out_ptr,  # float32 (SPLITS, C_OUT, 3C) when DETERMINISTIC, else (C_OUT, 3C) zeroed
    B, C, C_OUT, H, W, n_h, n_w, SPLITS,
    HAS_RB: tl.constexpr, HAS_CB: tl.constexpr, DETERMINISTIC: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
    BLOCK_U: tl.constexpr, BLOCK_V: tl.constexpr,
    COMPUTE: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """d fuse_weight = [sum g x^T | sum g r^T | sum g k^T] over b, h, w.

    Grid (o tiles, c tiles, SPLITS): split s reduces the pixel tiles s, s + SPLITS, ...;
    r = R(x) + row_bias and k = K(x) + col_bias are recomputed on each tile.
    """
    to = tl.program_id(0)
    tc = tl.program_id(1)
    split = tl.program_id(2)
    c0 = tc * BLOCK_C
    offs_o = to * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_c = c0 + tl.arange(0, BLOCK_C)
    o_ok = offs_o < C_OUT

    acc_id = tl.zeros((BLOCK_O, BLOCK_C), dtype=tl.float32)
    acc_row = tl.zeros((BLOCK_O, BLOCK_C), dtype=tl.float32)
    acc_col = tl.zeros((BLOCK_O, BLOCK_C), dtype=tl.float32)
    n_tiles = B * n_h * n_w
    for t in range(split, n_tiles, SPLITS):
        b, th, tw = unravel(t, n_h, n_w)
        h0 = th * BLOCK_H
        w0 = tw * BLOCK_W
        xs, rx, kx = mixed_tiles(
            x_ptr + b.to(tl.int64) * sxb, sxc, sxh, sxw, rw_ptr, srw0, srw1, cw_ptr, scw0, scw1,
            c0, h0, w0, C, H, W,
            BLOCK_C, BLOCK_H, BLOCK_W, BLOCK_U, BLOCK_V, COMPUTE, PREC,
        )  # fmt: skip
        mh, mw, m_ok = pairs(h0, w0, H, W, BLOCK_H, BLOCK_W)
        if HAS_RB:
            rb = tl.load(rb_ptr + mw.to(tl.int64) * srb, mask=m_ok, other=0.0).to(tl.float32)
            rx += rb[None, :]
        if HAS_CB:
            cb = tl.load(cb_ptr + mh.to(tl.int64) * scb, mask=m_ok, other=0.0).to(tl.float32)
            kx += cb[None, :]
        g = tl.load(
            g_ptr
            + b.to(tl.int64) * sgb
            + offs_o.to(tl.int64)[:, None] * sgo
            + mh.to(tl.int64)[None, :] * sgh
            + mw.to(tl.int64)[None, :] * sgw,
            mask=o_ok[:, None] & m_ok[None, :],
            other=0.0,
        ).to(COMPUTE)
        acc_id = mm(g, tl.trans(xs), acc_id, COMPUTE, PREC)
        acc_row = mm(g, tl.trans(rx.to(COMPUTE)), acc_row, COMPUTE, PREC)
        acc_col = mm(g, tl.trans(kx.to(COMPUTE)), acc_col, COMPUTE, PREC)

    mask = o_ok[:, None] & (offs_c < C)[None, :]
    off = offs_o.to(tl.int64)[:, None] * (3 * C) + offs_c.to(tl.int64)[None, :]
    if DETERMINISTIC:
        base = out_ptr + split.to(tl.int64) * C_OUT * (3 * C)
        tl.store(base + off, acc_id, mask=mask)
        tl.store(base + C + off, acc_row, mask=mask)
        tl.store(base + 2 * C + off, acc_col, mask=mask)
    else:
        tl.atomic_add(out_ptr + off, acc_id, mask=mask)
        tl.atomic_add(out_ptr + C + off, acc_row, mask=mask)
        tl.atomic_add(out_ptr + 2 * C + off, acc_col, mask=mask)


def configs(c_in: int, c_out: int, h: int, w: int) -> list[_tuning.Config]:
    """Tiles of mix_wgrad_fuse_kernel (x has c_in channels, g has c_out).

    Three (BLOCK_O, BLOCK_C) float32 accumulators live through the loop; BLOCK_O = 64
    spilled on sm_80, so output-channel tiles are 32 or 16. The 16-channel tile runs on 8
    warps: on 4 it spilled 8 bytes in float32 on sm_80 with Triton 3.7.1 (2 stages; with 1
    stage, 8 bytes with 3.8.0 and 3.9.0).
    """
    bh, bw = _tuning.box(h, w, 64, 8)
    bo = min(32, max(16, _tuning.np2(c_out)))
    out = []
    for o in (bo, 16):
        warps = 8 if o == 16 else 4
        out.append(
            _tuning.config(warps, 2, BLOCK_O=o, BLOCK_C=16, BLOCK_H=bh, BLOCK_W=bw, BLOCK_U=16,
                           BLOCK_V=16)
        )  # fmt: skip
    return _tuning.dedup(out)


def wgrad_fuse(g: Tensor, x: Tensor, row_weight: Tensor, row_bias: Tensor | None,
               col_weight: Tensor, col_bias: Tensor | None, *,
               deterministic: bool) -> Tensor:  # fmt: skip
    """d fuse_weight (C_out, 3C) in float32, given g (B, C_out, H, W) and x (B, C, H, W)."""
    b, c, h, w = x.shape
    c_out = g.shape[1]
    rb_t, srb = cm.bias_args(row_bias, row_weight)
    cb_t, scb = cm.bias_args(col_bias, col_weight)
    compute = cm.compute_dtype(x.dtype)
    prec = cm.precision()
    key = ("mix_wgrad_fuse_kernel", c, c_out, h, w, x.dtype, prec, row_bias is not None,
           col_bias is not None, deterministic)  # fmt: skip
    bufs: dict[_tuning.Config, tuple[Tensor, tuple[int, int, int]]] = {}

    def buffer(cfg: _tuning.Config) -> tuple[Tensor, tuple[int, int, int]]:
        if cfg not in bufs:
            k = cfg.constexprs()
            n_o, n_c = triton.cdiv(c_out, k["BLOCK_O"]), triton.cdiv(c, k["BLOCK_C"])
            n_tiles = b * triton.cdiv(h, k["BLOCK_H"]) * triton.cdiv(w, k["BLOCK_W"])
            n_splits = cm.splits(n_tiles, n_o * n_c, x.device)
            buf = cm.reduction_buffer((c_out, 3 * c), n_splits, deterministic, x.device)
            bufs[cfg] = (buf, (n_o, n_c, n_splits))
        return bufs[cfg]

    def run(cfg: _tuning.Config) -> None:
        k = cfg.constexprs()
        buf, grid = buffer(cfg)
        if not deterministic:
            buf.zero_()
        mix_wgrad_fuse_kernel[grid](
            g, *cm.strides4(g), x, *cm.strides4(x),
            row_weight, *cm.strides2(row_weight), rb_t, srb,
            col_weight, *cm.strides2(col_weight), cb_t, scb,
            buf, b, c, c_out, h, w,
            triton.cdiv(h, k["BLOCK_H"]), triton.cdiv(w, k["BLOCK_W"]), grid[2],
            HAS_RB=row_bias is not None, HAS_CB=col_bias is not None,
            DETERMINISTIC=deterministic, COMPUTE=compute, PREC=prec,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            **k,
        )  # fmt: skip

    # Deterministic mode: the config fixes the summation order, so it must not depend on
    # timings; the default one is used.
    cfg = _tuning.pick(key, configs(c, c_out, h, w), x.device, run, tune=not deterministic)
    run(cfg)
    return cm.finish_sum(buffer(cfg)[0], deterministic)

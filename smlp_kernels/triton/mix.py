"""The fused mix: its kernel, its launcher and its tile configurations.

Notation (the README's Design notes): R = row mix (along W) and K = column mix (along H), both
without bias; F_id, F_row, F_col = the three (C_out, C) blocks of fuse_weight. Because the
channel mix and the spatial mixes act on different axes, they commute, and

    y = F_id x + F_row R(x) + F_col K(x) + s_row[o] * row_bias[w] + s_col[o] * col_bias[h]

with s_row[o] = sum_c F_row[o, c] and s_col[o] = sum_c F_col[o, c].

The kernel works on one tile of pixels, a BLOCK_H x BLOCK_W box of the (H, W) plane,
flattened to BLOCK_M = BLOCK_H * BLOCK_W columns. ``mixed_tiles`` loads x over that box for
a block of channels and computes R(x) and K(x) on it with two small matrix products
(R(x): (channel, row) pairs x W, K(x): H x (channel, column) pairs), so r, k and the
3C-channel concat live only in registers. Reads of x outside the tile (the rest of its rows
and columns) come from L2. The fuse-weight gradient (``wgrad_fuse``) recomputes the same
tiles with ``mixed_tiles``.

The same kernel computes the input gradient: the op layer calls the mix on g with the
transposed weights (views: only the strides differ) and no biases.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _common as cm
from . import _tuning
from ._common import mix_rows, mm, pairs, unravel


@triton.jit
def mixed_tiles(
    x_b, sxc, sxh, sxw,  # x + b * stride_b
    rw_ptr, srw0, srw1, cw_ptr, scw0, scw1,
    c0, h0, w0, C, H, W,
    BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
    BLOCK_U: tl.constexpr, BLOCK_V: tl.constexpr,
    COMPUTE: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """x, R(x) and K(x) on channels c0.. and the box (h0.., w0..), each (BLOCK_C, BLOCK_M).

    x comes back in COMPUTE, R(x) and K(x) in float32. Rw[w, v] = rw_ptr[w*srw0 + v*srw1],
    Cw[h, u] = cw_ptr[h*scw0 + u*scw1].
    """
    BLOCK_M: tl.constexpr = BLOCK_H * BLOCK_W

    # x on the box itself: (channel, pixel).
    offs_c = c0 + tl.arange(0, BLOCK_C)
    mh, mw, m_ok = pairs(h0, w0, H, W, BLOCK_H, BLOCK_W)
    c_ok = offs_c < C
    xs = tl.load(
        x_b
        + offs_c.to(tl.int64)[:, None] * sxc
        + mh.to(tl.int64)[None, :] * sxh
        + mw.to(tl.int64)[None, :] * sxw,
        mask=c_ok[:, None] & m_ok[None, :],
        other=0.0,
    ).to(COMPUTE)

    # R(x)[c, h, w] = sum_v x[c, h, v] Rw[w, v]: rows are (channel, row) pairs.
    qc, qh, q_ok = pairs(c0, h0, C, H, BLOCK_C, BLOCK_H)
    q_off = qc.to(tl.int64) * sxc + qh.to(tl.int64) * sxh
    ow = w0 + tl.arange(0, BLOCK_W)
    ow_ok = ow < W
    rx = tl.zeros((BLOCK_C * BLOCK_H, BLOCK_W), dtype=tl.float32)
    rx = mix_rows(rx, x_b + q_off, q_ok, sxw, rw_ptr, srw0, srw1, ow, ow_ok, W,
                  BLOCK_V, COMPUTE, PREC)  # fmt: skip
    rx = tl.reshape(rx, (BLOCK_C, BLOCK_M))

    # K(x)[c, h, w] = sum_u Cw[h, u] x[c, u, w]: columns are (channel, column) pairs.
    jc, jw, j_ok = pairs(c0, w0, C, W, BLOCK_C, BLOCK_W)
    j_off = jc.to(tl.int64) * sxc + jw.to(tl.int64) * sxw
    oh = h0 + tl.arange(0, BLOCK_H)
    oh_ok = oh < H
    kx = tl.zeros((BLOCK_H, BLOCK_C * BLOCK_W), dtype=tl.float32)
    for u0 in range(0, H, BLOCK_U):
        u = u0 + tl.arange(0, BLOCK_U)
        u_ok = u < H
        cwt = tl.load(
            cw_ptr + oh.to(tl.int64)[:, None] * scw0 + u.to(tl.int64)[None, :] * scw1,
            mask=oh_ok[:, None] & u_ok[None, :],
            other=0.0,
        ).to(COMPUTE)
        xu = tl.load(
            x_b + u.to(tl.int64)[:, None] * sxh + j_off[None, :],
            mask=u_ok[:, None] & j_ok[None, :],
            other=0.0,
        ).to(COMPUTE)
        kx = mm(cwt, xu, kx, COMPUTE, PREC)
    kx = tl.reshape(kx, (BLOCK_H, BLOCK_C, BLOCK_W))
    kx = tl.permute(kx, (1, 0, 2))
    kx = tl.reshape(kx, (BLOCK_C, BLOCK_M))
    return xs, rx, kx


@triton.jit
def mix_fwd_kernel(
    x_ptr, sxb, sxc, sxh, sxw,
    rw_ptr, srw0, srw1, rb_ptr, srb,
    cw_ptr, scw0, scw1, cb_ptr, scb,
    f_ptr, sfo, sfc, f_blk,
    y_ptr, syb, syo, syh, syw,
    C, C_OUT, H, W, n_o, n_h, n_w,
    HAS_RB: tl.constexpr, HAS_CB: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
    BLOCK_U: tl.constexpr, BLOCK_V: tl.constexpr,
    COMPUTE: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """The fused mix: y[b, o, h, w] over one (BLOCK_O, BLOCK_H x BLOCK_W) tile.

    F_blk[o, c] is at f_ptr + blk * f_blk + o * sfo + c * sfc for blk = 0 (id), 1 (row),
    2 (col). One program per (b, h tile, w tile, o tile), the o tile fastest so that
    programs sharing x run together.
    """
    BLOCK_M: tl.constexpr = BLOCK_H * BLOCK_W
    pid = tl.program_id(0)
    to = pid % n_o
    b, th, tw = unravel(pid // n_o, n_h, n_w)
    h0 = th * BLOCK_H
    w0 = tw * BLOCK_W

    x_b = x_ptr + b.to(tl.int64) * sxb
    offs_o = to * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = offs_o < C_OUT
    f_o = offs_o.to(tl.int64) * sfo

    acc = tl.zeros((BLOCK_O, BLOCK_M), dtype=tl.float32)
    s_row = tl.zeros((BLOCK_O,), dtype=tl.float32)
    s_col = tl.zeros((BLOCK_O,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        xs, rx, kx = mixed_tiles(
            x_b, sxc, sxh, sxw, rw_ptr, srw0, srw1, cw_ptr, scw0, scw1,
            c0, h0, w0, C, H, W,
            BLOCK_C, BLOCK_H, BLOCK_W, BLOCK_U, BLOCK_V, COMPUTE, PREC,
        )  # fmt: skip
        offs_c = c0 + tl.arange(0, BLOCK_C)
        f_mask = o_ok[:, None] & (offs_c < C)[None, :]
        f_off = f_o[:, None] + offs_c.to(tl.int64)[None, :] * sfc
        f_id = tl.load(f_ptr + f_off, mask=f_mask, other=0.0)
        f_row = tl.load(f_ptr + f_blk + f_off, mask=f_mask, other=0.0)
        f_col = tl.load(f_ptr + 2 * f_blk + f_off, mask=f_mask, other=0.0)
        if HAS_RB:
            s_row += tl.sum(f_row.to(tl.float32), axis=1)
        if HAS_CB:
            s_col += tl.sum(f_col.to(tl.float32), axis=1)
        acc = mm(f_id.to(COMPUTE), xs, acc, COMPUTE, PREC)
        acc = mm(f_row.to(COMPUTE), rx.to(COMPUTE), acc, COMPUTE, PREC)
        acc = mm(f_col.to(COMPUTE), kx.to(COMPUTE), acc, COMPUTE, PREC)

    mh, mw, m_ok = pairs(h0, w0, H, W, BLOCK_H, BLOCK_W)
    if HAS_RB:
        rb = tl.load(rb_ptr + mw.to(tl.int64) * srb, mask=m_ok, other=0.0).to(tl.float32)
        acc += s_row[:, None] * rb[None, :]
    if HAS_CB:
        cb = tl.load(cb_ptr + mh.to(tl.int64) * scb, mask=m_ok, other=0.0).to(tl.float32)
        acc += s_col[:, None] * cb[None, :]
    y_off = (
        b.to(tl.int64) * syb
        + offs_o.to(tl.int64)[:, None] * syo
        + mh.to(tl.int64)[None, :] * syh
        + mw.to(tl.int64)[None, :] * syw
    )
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=o_ok[:, None] & m_ok[None, :])


def configs(c_in: int, c_out: int, h: int, w: int) -> list[_tuning.Config]:
    """Tiles of mix_fwd_kernel for x with c_in channels and c_out output channels.

    Pixel boxes are about square (8 x 8) so that both spatial products stay small: R(x) is
    (BLOCK_C*BLOCK_H, BLOCK_W) and K(x) is (BLOCK_H, BLOCK_C*BLOCK_W). Wider boxes (a whole
    64-pixel row) made K(x)'s operand 32 x 2048 and spilled; 16 x 8 boxes and 8-warp
    variants still spilled in float32 on sm_80 (scripts/triton_aot.py), so the set is two
    output-channel tile sizes on one box.

    The 16-channel output tile (only when c_out <= 16) runs on 8 warps with one stage. In
    float32 on sm_80, 4 warps with 2 stages spilled 4 to 8 bytes with Triton 3.7.1 to 3.9.0,
    8 warps with 2 stages 8 bytes with 3.9.0 (and 20 on sm_90 with 3.6.0), 4 warps with 1
    stage 16 bytes with 3.8.0 and 3.9.0; 8 warps with 1 stage spilled with none of 3.6.0 to
    3.9.0 (float32 on sm_80 and sm_90, 16-bit on both).
    """
    bh, bw = _tuning.box(h, w, 64, 8)
    bo = min(64, max(16, _tuning.np2(c_out)))
    out = []
    for o in (bo, min(bo, 32)):
        warps, stages = (8, 1) if o == 16 else (4, 2)
        out.append(
            _tuning.config(warps, stages, BLOCK_O=o, BLOCK_C=16, BLOCK_H=bh, BLOCK_W=bw,
                           BLOCK_U=16, BLOCK_V=16)
        )  # fmt: skip
    return _tuning.dedup(out)


def _fuse_blocks(f_id: Tensor, f_row: Tensor, f_col: Tensor) -> tuple[Tensor, int]:
    """(F, f_blk): F_id, F_row and F_col as one tensor's pointer and strides, F_row starting
    f_blk elements after F_id and F_col 2 * f_blk after.

    The op layer passes the column blocks of one fuse_weight (or their transposes, for the
    input gradient): views of one storage with equal strides, equally spaced, used as they
    are. Any other three tensors are concatenated first (a copy of the parameters only).
    One pointer rather than three keeps the loop's registers down: three offset tensors
    made the 64-channel tile spill in 16-bit on sm_80.
    """
    storage = f_id.untyped_storage().data_ptr()
    blk = f_row.storage_offset() - f_id.storage_offset()
    if all(
        t.dtype == f_id.dtype
        and t.stride() == f_id.stride()
        and t.untyped_storage().data_ptr() == storage
        and t.storage_offset() - f_id.storage_offset() == i * blk
        for i, t in ((1, f_row), (2, f_col))
    ):
        return f_id, blk
    f = torch.cat([f_id, f_row, f_col], dim=1)
    return f, f_id.shape[1] * f.stride(1)


def mix(x: Tensor, row_weight: Tensor, row_bias: Tensor | None, col_weight: Tensor,
        col_bias: Tensor | None, f_id: Tensor, f_row: Tensor, f_col: Tensor) -> Tensor:  # fmt: skip
    """y = F_id x + F_row R(x) + F_col K(x), with R and K's biases; any strides everywhere."""
    b, c_in, h, w = x.shape
    c_out = f_id.shape[0]
    y = cm.empty_like_layout(x, c_out)
    rb_t, srb = cm.bias_args(row_bias, row_weight)
    cb_t, scb = cm.bias_args(col_bias, col_weight)
    f, f_blk = _fuse_blocks(f_id, f_row, f_col)
    compute = cm.compute_dtype(x.dtype)
    prec = cm.precision()

    def run(cfg: _tuning.Config) -> None:
        k = cfg.constexprs()
        n_o = triton.cdiv(c_out, k["BLOCK_O"])
        n_h = triton.cdiv(h, k["BLOCK_H"])
        n_w = triton.cdiv(w, k["BLOCK_W"])
        mix_fwd_kernel[(b * n_h * n_w * n_o,)](
            x, *cm.strides4(x),
            row_weight, *cm.strides2(row_weight), rb_t, srb,
            col_weight, *cm.strides2(col_weight), cb_t, scb,
            f, *cm.strides2(f), f_blk,
            y, *cm.strides4(y),
            c_in, c_out, h, w, n_o, n_h, n_w,
            HAS_RB=row_bias is not None, HAS_CB=col_bias is not None,
            COMPUTE=compute, PREC=prec,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            **k,
        )  # fmt: skip

    key = ("mix_fwd_kernel", c_in, c_out, h, w, x.dtype, prec, row_bias is not None,
           col_bias is not None)  # fmt: skip
    run(_tuning.pick(key, configs(c_in, c_out, h, w), x.device, run))
    return y

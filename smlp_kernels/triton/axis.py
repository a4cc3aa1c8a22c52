"""The mixes along one axis: the row / column mix kernel and the weight-gradient kernel
along an axis, with their launchers and tile configurations.

Both kernels see the mixed axis as the last one, L (the other spatial axis is S): the row
mix passes (S, L) = (H, W), the column mix passes (S, L) = (W, H) with x's strides swapped.
The weight gradient also serves the fused mix: with HAS_F it reduces z = F_blk^T g (the
row or column block of fuse_weight) instead of g, computing z on the fly.
"""

import triton
import triton.language as tl
from torch import Tensor

from . import _common as cm
from . import _tuning
from ._common import mix_rows, mm, pairs, unravel


@triton.jit
def axis_mix_kernel(
    x_ptr, sxb, sxc, sxs, sxl,
    w_ptr, sw0, sw1,  # Wt[l, l'] = w_ptr[l * sw0 + l' * sw1]
    bias_ptr, sbias,
    y_ptr, syb, syc, sys, syl,
    C, S, L, n_q,
    HAS_BIAS: tl.constexpr,
    BLOCK_Q: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr,
    COMPUTE: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """The row or column mix: y[b, c, s, l] = sum_l' Wt[l, l'] x[b, c, s, l'] + bias[l].

    Rows are the flattened (c, s) pairs of one batch element, BLOCK_Q per program; the whole
    axis (BLOCK_L >= L) is one tile. The input gradient is the same kernel with Wt^T.
    """
    pid = tl.program_id(0)
    tq = pid % n_q
    b = pid // n_q
    offs_q = tq * BLOCK_Q + tl.arange(0, BLOCK_Q)
    qc = offs_q // S
    qs = offs_q % S
    q_ok = offs_q < C * S
    x_rows = x_ptr + b.to(tl.int64) * sxb + qc.to(tl.int64) * sxc + qs.to(tl.int64) * sxs
    offs_l = tl.arange(0, BLOCK_L)
    l_ok = offs_l < L
    acc = tl.zeros((BLOCK_Q, BLOCK_L), dtype=tl.float32)
    acc = mix_rows(acc, x_rows, q_ok, sxl, w_ptr, sw0, sw1, offs_l, l_ok, L,
                   BLOCK_K, COMPUTE, PREC)  # fmt: skip
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_l.to(tl.int64) * sbias, mask=l_ok, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    y_rows = y_ptr + b.to(tl.int64) * syb + qc.to(tl.int64) * syc + qs.to(tl.int64) * sys
    tl.store(
        y_rows[:, None] + offs_l.to(tl.int64)[None, :] * syl,
        acc.to(y_ptr.dtype.element_ty),
        mask=q_ok[:, None] & l_ok[None, :],
    )


@triton.jit
def axis_wgrad_kernel(
    g_ptr, sgb, sgc, sgs, sgl,
    x_ptr, sxb, sxc, sxs, sxl,
    f_ptr, sfo, sfc,  # F_blk[o, c] = f_ptr[o * sfo + c * sfc] (only read when HAS_F)
    dw_ptr,  # float32 (SPLITS, L, L) when DETERMINISTIC, else (L, L) zeroed
    db_ptr,  # float32 (SPLITS, L) when DETERMINISTIC, else (L,) zeroed
    B, C, C_G, S, L, n_s, n_c, SPLITS,
    HAS_F: tl.constexpr, DETERMINISTIC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_LA: tl.constexpr, BLOCK_O: tl.constexpr,
    COMPUTE: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Weight and bias gradient of a mix along the axis L (S is the other spatial axis).

    dw[l, l'] = sum_{b, c, s} z[b, c, s, l] x[b, c, s, l'],  db[l] = sum_{b, c, s} z[b, c, s, l]
    with z = F_blk^T g (HAS_F: the row or column block of the fused op, g has C_G channels)
    or z = g (the row / column mix). Grid (SPLITS, row tiles): split s reduces items
    s, s + SPLITS, ... of the (b, s tile, c tile) list into rows
    l in [BLOCK_LA * tile, BLOCK_LA * (tile + 1)) of dw and db.
    """
    BLOCK_Q: tl.constexpr = BLOCK_C * BLOCK_S
    split = tl.program_id(0)
    la0 = tl.program_id(1) * BLOCK_LA
    offs_q = tl.arange(0, BLOCK_Q)
    offs_l = tl.arange(0, BLOCK_L)
    l_ok = offs_l < L
    offs_la = la0 + tl.arange(0, BLOCK_LA)
    la_ok = offs_la < L
    acc = tl.zeros((BLOCK_LA, BLOCK_L), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_LA,), dtype=tl.float32)
    n_items = B * n_s * n_c
    for item in range(split, n_items, SPLITS):
        b, ts, tc = unravel(item, n_s, n_c)
        c0 = tc * BLOCK_C
        s0 = ts * BLOCK_S
        qc = c0 + offs_q // BLOCK_S
        qs = s0 + offs_q % BLOCK_S
        q_ok = (qc < C) & (qs < S)
        g_b = g_ptr + b.to(tl.int64) * sgb
        if HAS_F:
            ps, pl, p_ok = pairs(s0, la0, S, L, BLOCK_S, BLOCK_LA)
            p_off = ps.to(tl.int64) * sgs + pl.to(tl.int64) * sgl
            offs_c = c0 + tl.arange(0, BLOCK_C)
            c_ok = offs_c < C
            z = tl.zeros((BLOCK_C, BLOCK_S * BLOCK_LA), dtype=tl.float32)
            for o0 in range(0, C_G, BLOCK_O):
                offs_o = o0 + tl.arange(0, BLOCK_O)
                o_ok = offs_o < C_G
                ft = tl.load(
                    f_ptr + offs_o.to(tl.int64)[None, :] * sfo + offs_c.to(tl.int64)[:, None] * sfc,
                    mask=c_ok[:, None] & o_ok[None, :],
                    other=0.0,
                ).to(COMPUTE)
                gt = tl.load(
                    g_b + offs_o.to(tl.int64)[:, None] * sgc + p_off[None, :],
                    mask=o_ok[:, None] & p_ok[None, :],
                    other=0.0,
                ).to(COMPUTE)
                z = mm(ft, gt, z, COMPUTE, PREC)
            z = tl.reshape(z, (BLOCK_Q, BLOCK_LA))
        else:
            z = tl.load(
                g_b
                + (qc.to(tl.int64) * sgc + qs.to(tl.int64) * sgs)[:, None]
                + offs_la.to(tl.int64)[None, :] * sgl,
                mask=q_ok[:, None] & la_ok[None, :],
                other=0.0,
            ).to(tl.float32)
        xt = tl.load(
            x_ptr
            + b.to(tl.int64) * sxb
            + (qc.to(tl.int64) * sxc + qs.to(tl.int64) * sxs)[:, None]
            + offs_l.to(tl.int64)[None, :] * sxl,
            mask=q_ok[:, None] & l_ok[None, :],
            other=0.0,
        ).to(COMPUTE)
        acc = mm(tl.trans(z.to(COMPUTE)), xt, acc, COMPUTE, PREC)
        acc_b += tl.sum(z, axis=0)

    w_off = offs_la.to(tl.int64)[:, None] * L + offs_l.to(tl.int64)[None, :]
    w_mask = la_ok[:, None] & l_ok[None, :]
    if DETERMINISTIC:
        tl.store(dw_ptr + split.to(tl.int64) * L * L + w_off, acc, mask=w_mask)
        tl.store(db_ptr + split.to(tl.int64) * L + offs_la, acc_b, mask=la_ok)
    else:
        tl.atomic_add(dw_ptr + w_off, acc, mask=w_mask)
        tl.atomic_add(db_ptr + offs_la, acc_b, mask=la_ok)


def mix_configs(length: int) -> list[_tuning.Config]:
    """Tiles of axis_mix_kernel for a mix along an axis of `length`."""
    bl = max(16, _tuning.np2(length))
    rows = (16, 32) if bl >= 64 else (32, 64)  # (64, 32)-row tiles spilled in float32
    return _tuning.dedup([_tuning.config(4, 2, BLOCK_Q=q, BLOCK_L=bl, BLOCK_K=16) for q in rows])


def wgrad_configs(s: int, length: int, has_f: bool) -> list[_tuning.Config]:
    """Tiles of axis_wgrad_kernel for a mix along an axis of `length` (other axis `s`).

    Each program owns BLOCK_LA rows of the (L, L) gradient, so its accumulator stays at
    most 32 x 128.

    The 32-row tile (BLOCK_S = 2) with BLOCK_L >= 64 runs with one stage. With 2 stages it
    spilled in float32 on sm_80: BLOCK_L = 128 without F 200 bytes with Triton 3.8.0 and
    3.9.0, with F 8 to 12 bytes with 3.7.1 to 3.9.0; BLOCK_L = 64 with F 8 bytes with 3.7.1.
    8 warps with 2 stages still spilled 52 bytes (BLOCK_L = 128 without F, 3.8.0 and 3.9.0).
    The 16-row default keeps 2 stages.
    """
    bl = max(16, _tuning.np2(length))
    bla = min(bl, 32)
    out = []
    for rows in (16, 32):
        bs = max(1, min(_tuning.np2(s), rows // 16))
        bo = 32 if has_f else 16
        stages = 1 if bs == 2 and bl >= 64 else 2
        out.append(
            _tuning.config(4, stages, BLOCK_C=16, BLOCK_S=bs, BLOCK_L=bl, BLOCK_LA=bla, BLOCK_O=bo)
        )
    return _tuning.dedup(out)


def axis_mix(x: Tensor, weight: Tensor, bias: Tensor | None, axis: int) -> Tensor:
    """The row (axis 3) or column (axis 2) mix of x with weight and optional bias."""
    b, c, h, w = x.shape
    s_len, length = (h, w) if axis == 3 else (w, h)
    y = cm.empty_like_layout(x, c)
    bias_t, sbias = cm.bias_args(bias, weight)
    compute = cm.compute_dtype(x.dtype)
    prec = cm.precision()

    def run(cfg: _tuning.Config) -> None:
        k = cfg.constexprs()
        n_q = triton.cdiv(c * s_len, k["BLOCK_Q"])
        axis_mix_kernel[(b * n_q,)](
            x, *cm.strides4(x, axis), weight, *cm.strides2(weight), bias_t, sbias,
            y, *cm.strides4(y, axis),
            c, s_len, length, n_q,
            HAS_BIAS=bias is not None, COMPUTE=compute, PREC=prec,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            **k,
        )  # fmt: skip

    key = ("axis_mix_kernel", c, c, h, w, x.dtype, prec, axis, bias is not None)
    run(_tuning.pick(key, mix_configs(length), x.device, run))
    return y


def axis_wgrad(g: Tensor, x: Tensor, axis: int, f_blk: Tensor | None, *,
               deterministic: bool) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(dW, db) in float32 of a mix along `axis` (3 = W, 2 = H); z = F_blk^T g, or g when
    f_blk is None."""
    b, c, h, w = x.shape
    s_len, length = (h, w) if axis == 3 else (w, h)
    has_f = f_blk is not None
    f_t, sfo, sfc = (f_blk, *cm.strides2(f_blk)) if has_f else (x, 0, 0)
    c_g = g.shape[1]
    compute = cm.compute_dtype(x.dtype)
    prec = cm.precision()
    key = ("axis_wgrad_kernel", c, c_g, h, w, x.dtype, prec, axis, has_f, deterministic)
    bufs: dict[_tuning.Config, tuple[Tensor, Tensor, int]] = {}

    def buffers(cfg: _tuning.Config) -> tuple[Tensor, Tensor, int]:
        if cfg not in bufs:
            k = cfg.constexprs()
            n_items = b * triton.cdiv(s_len, k["BLOCK_S"]) * triton.cdiv(c, k["BLOCK_C"])
            n_splits = cm.splits(n_items, 1, x.device)
            dw = cm.reduction_buffer((length, length), n_splits, deterministic, x.device)
            db = cm.reduction_buffer((length,), n_splits, deterministic, x.device)
            bufs[cfg] = (dw, db, n_splits)
        return bufs[cfg]

    def run(cfg: _tuning.Config) -> None:
        k = cfg.constexprs()
        dw, db, n_splits = buffers(cfg)
        if not deterministic:
            dw.zero_()
            db.zero_()
        n_s = triton.cdiv(s_len, k["BLOCK_S"])
        n_c = triton.cdiv(c, k["BLOCK_C"])
        axis_wgrad_kernel[(n_splits, triton.cdiv(length, k["BLOCK_LA"]))](
            g, *cm.strides4(g, axis), x, *cm.strides4(x, axis), f_t, sfo, sfc, dw, db,
            b, c, c_g, s_len, length, n_s, n_c, n_splits,
            HAS_F=has_f, DETERMINISTIC=deterministic, COMPUTE=compute, PREC=prec,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            **k,
        )  # fmt: skip

    # Deterministic mode: the config fixes the summation order (see wgrad_fuse).
    cfg = _tuning.pick(key, wgrad_configs(s_len, length, has_f), x.device, run,
                       tune=not deterministic)  # fmt: skip
    run(cfg)
    dw, db, _ = buffers(cfg)
    return cm.finish_sum(dw, deterministic), cm.finish_sum(db, deterministic)

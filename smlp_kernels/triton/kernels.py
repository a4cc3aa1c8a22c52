"""The Triton kernels of the ``triton`` backend.

Notation (the README's Design notes): R = row mix (along W) and K = column mix (along H), both
without bias; F_id, F_row, F_col = the three (C_out, C) blocks of fuse_weight. Because the
channel mix and the spatial mixes act on different axes, they commute, and

    y = F_id x + F_row R(x) + F_col K(x) + s_row[o] * row_bias[w] + s_col[o] * col_bias[h]

with s_row[o] = sum_c F_row[o, c] and s_col[o] = sum_c F_col[o, c].

Every kernel works on one tile of pixels, a BLOCK_H x BLOCK_W box of the (H, W) plane,
flattened to BLOCK_M = BLOCK_H * BLOCK_W columns. ``_mixed_tiles`` loads x over that box for
a block of channels and computes R(x) and K(x) on it with two small matrix products
(R(x): (channel, row) pairs x W, K(x): H x (channel, column) pairs), so r, k and the
3C-channel concat live only in registers. Reads of x outside the tile (the rest of its rows
and columns) come from L2.

Conventions shared by all kernels:

* every tensor comes with its own strides (any layout: contiguous, channels_last,
  transposed views for the backward), and every offset is computed in int64;
* COMPUTE is the dtype of the matrix-unit operands (x's dtype, or float32 when the
  interpreter must upcast bfloat16); accumulators are always float32;
* PREC is tl.dot's input_precision for float32 operands ("ieee", or "tf32" when PyTorch's
  own TF32 switch is on); 16-bit operands ignore it;
* padded rows and columns are loaded as zero, so they add nothing to any sum.
"""

import triton
import triton.language as tl


@triton.jit
def _mm(a, b, acc, COMPUTE: tl.constexpr, PREC: tl.constexpr):
    """acc + a @ b with float32 accumulation."""
    if COMPUTE == tl.float32:
        return tl.dot(a, b, acc, input_precision=PREC)
    else:
        return tl.dot(a, b, acc)


@triton.jit
def _mixed_tiles(
    x_b,  # x + b * stride_b
    sxc,
    sxh,
    sxw,
    rw_ptr,
    srw0,
    srw1,
    cw_ptr,
    scw0,
    scw1,
    c0,
    h0,
    w0,
    C,
    H,
    W,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_U: tl.constexpr,
    BLOCK_V: tl.constexpr,
    COMPUTE: tl.constexpr,
    PREC: tl.constexpr,
):
    """x, R(x) and K(x) on channels c0.. and the box (h0.., w0..), each (BLOCK_C, BLOCK_M).

    x comes back in COMPUTE, R(x) and K(x) in float32. Rw[w, v] = rw_ptr[w*srw0 + v*srw1],
    Cw[h, u] = cw_ptr[h*scw0 + u*scw1].
    """
    BLOCK_M: tl.constexpr = BLOCK_H * BLOCK_W

    # x on the box itself: (channel, pixel).
    offs_c = c0 + tl.arange(0, BLOCK_C)
    offs_m = tl.arange(0, BLOCK_M)
    mh = h0 + offs_m // BLOCK_W
    mw = w0 + offs_m % BLOCK_W
    c_ok = offs_c < C
    m_ok = (mh < H) & (mw < W)
    xs = tl.load(
        x_b
        + offs_c.to(tl.int64)[:, None] * sxc
        + mh.to(tl.int64)[None, :] * sxh
        + mw.to(tl.int64)[None, :] * sxw,
        mask=c_ok[:, None] & m_ok[None, :],
        other=0.0,
    ).to(COMPUTE)

    # R(x)[c, h, w] = sum_v x[c, h, v] Rw[w, v]: rows are (channel, row) pairs.
    offs_q = tl.arange(0, BLOCK_C * BLOCK_H)
    qc = c0 + offs_q // BLOCK_H
    qh = h0 + offs_q % BLOCK_H
    q_ok = (qc < C) & (qh < H)
    q_off = qc.to(tl.int64) * sxc + qh.to(tl.int64) * sxh
    ow = w0 + tl.arange(0, BLOCK_W)
    ow_ok = ow < W
    rx = tl.zeros((BLOCK_C * BLOCK_H, BLOCK_W), dtype=tl.float32)
    for v0 in range(0, W, BLOCK_V):
        v = v0 + tl.arange(0, BLOCK_V)
        v_ok = v < W
        xv = tl.load(
            x_b + q_off[:, None] + v.to(tl.int64)[None, :] * sxw,
            mask=q_ok[:, None] & v_ok[None, :],
            other=0.0,
        ).to(COMPUTE)
        rwt = tl.load(
            rw_ptr + ow.to(tl.int64)[None, :] * srw0 + v.to(tl.int64)[:, None] * srw1,
            mask=v_ok[:, None] & ow_ok[None, :],
            other=0.0,
        ).to(COMPUTE)
        rx = _mm(xv, rwt, rx, COMPUTE, PREC)
    rx = tl.reshape(rx, (BLOCK_C, BLOCK_M))

    # K(x)[c, h, w] = sum_u Cw[h, u] x[c, u, w]: columns are (channel, column) pairs.
    offs_j = tl.arange(0, BLOCK_C * BLOCK_W)
    jc = c0 + offs_j // BLOCK_W
    jw = w0 + offs_j % BLOCK_W
    j_ok = (jc < C) & (jw < W)
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
        kx = _mm(cwt, xu, kx, COMPUTE, PREC)
    kx = tl.reshape(kx, (BLOCK_H, BLOCK_C, BLOCK_W))
    kx = tl.permute(kx, (1, 0, 2))
    kx = tl.reshape(kx, (BLOCK_C, BLOCK_M))
    return xs, rx, kx


@triton.jit
def mix_fwd_kernel(
    x_ptr,
    sxb,
    sxc,
    sxh,
    sxw,
    rw_ptr,
    srw0,
    srw1,
    rb_ptr,
    srb,
    cw_ptr,
    scw0,
    scw1,
    cb_ptr,
    scb,
    f_ptr,
    sfo,
    sfc,
    f_blk,
    y_ptr,
    syb,
    syo,
    syh,
    syw,
    C,
    C_OUT,
    H,
    W,
    n_o,
    n_h,
    n_w,
    HAS_RB: tl.constexpr,
    HAS_CB: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_U: tl.constexpr,
    BLOCK_V: tl.constexpr,
    COMPUTE: tl.constexpr,
    PREC: tl.constexpr,
):
    """The fused forward, and the input gradient (called on g with transposed parameters).

    y[b, o, h, w] over one (BLOCK_O, BLOCK_H x BLOCK_W) tile. F_blk[o, c] is at
    f_ptr + blk * f_blk + o * sfo + c * sfc for blk = 0 (id), 1 (row), 2 (col).
    One program per (b, h tile, w tile, o tile), the o tile fastest so that programs
    sharing x run together.
    """
    BLOCK_M: tl.constexpr = BLOCK_H * BLOCK_W
    pid = tl.program_id(0)
    to = pid % n_o
    t = pid // n_o
    tw = t % n_w
    t = t // n_w
    th = t % n_h
    b = t // n_h
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
        xs, rx, kx = _mixed_tiles(
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
        acc = _mm(f_id.to(COMPUTE), xs, acc, COMPUTE, PREC)
        acc = _mm(f_row.to(COMPUTE), rx.to(COMPUTE), acc, COMPUTE, PREC)
        acc = _mm(f_col.to(COMPUTE), kx.to(COMPUTE), acc, COMPUTE, PREC)

    offs_m = tl.arange(0, BLOCK_M)
    mh = h0 + offs_m // BLOCK_W
    mw = w0 + offs_m % BLOCK_W
    m_ok = (mh < H) & (mw < W)
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


@triton.jit
def mix_wgrad_fuse_kernel(
    g_ptr,
    sgb,
    sgo,
    sgh,
    sgw,
    x_ptr,
    sxb,
    sxc,
    sxh,
    sxw,
    rw_ptr,
    srw0,
    srw1,
    rb_ptr,
    srb,
    cw_ptr,
    scw0,
    scw1,
    cb_ptr,
    scb,
    out_ptr,  # float32 (SPLITS, C_OUT, 3C) when DETERMINISTIC, else (C_OUT, 3C) zeroed
    B,
    C,
    C_OUT,
    H,
    W,
    n_h,
    n_w,
    SPLITS,
    HAS_RB: tl.constexpr,
    HAS_CB: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    BLOCK_U: tl.constexpr,
    BLOCK_V: tl.constexpr,
    COMPUTE: tl.constexpr,
    PREC: tl.constexpr,
):
    """d fuse_weight = [sum g x^T | sum g r^T | sum g k^T] over b, h, w.

    Grid (o tiles, c tiles, SPLITS): split s reduces the pixel tiles s, s + SPLITS, ...;
    r = R(x) + row_bias and k = K(x) + col_bias are recomputed on each tile.
    """
    BLOCK_M: tl.constexpr = BLOCK_H * BLOCK_W
    to = tl.program_id(0)
    tc = tl.program_id(1)
    split = tl.program_id(2)
    c0 = tc * BLOCK_C
    offs_o = to * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_c = c0 + tl.arange(0, BLOCK_C)
    o_ok = offs_o < C_OUT
    offs_m = tl.arange(0, BLOCK_M)

    acc_id = tl.zeros((BLOCK_O, BLOCK_C), dtype=tl.float32)
    acc_row = tl.zeros((BLOCK_O, BLOCK_C), dtype=tl.float32)
    acc_col = tl.zeros((BLOCK_O, BLOCK_C), dtype=tl.float32)
    n_tiles = B * n_h * n_w
    for t in range(split, n_tiles, SPLITS):
        tw = t % n_w
        th = (t // n_w) % n_h
        b = t // (n_w * n_h)
        h0 = th * BLOCK_H
        w0 = tw * BLOCK_W
        xs, rx, kx = _mixed_tiles(
            x_ptr + b.to(tl.int64) * sxb, sxc, sxh, sxw, rw_ptr, srw0, srw1, cw_ptr, scw0, scw1,
            c0, h0, w0, C, H, W,
            BLOCK_C, BLOCK_H, BLOCK_W, BLOCK_U, BLOCK_V, COMPUTE, PREC,
        )  # fmt: skip
        mh = h0 + offs_m // BLOCK_W
        mw = w0 + offs_m % BLOCK_W
        m_ok = (mh < H) & (mw < W)
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
        acc_id = _mm(g, tl.trans(xs), acc_id, COMPUTE, PREC)
        acc_row = _mm(g, tl.trans(rx.to(COMPUTE)), acc_row, COMPUTE, PREC)
        acc_col = _mm(g, tl.trans(kx.to(COMPUTE)), acc_col, COMPUTE, PREC)

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


@triton.jit
def axis_wgrad_kernel(
    g_ptr,
    sgb,
    sgc,
    sgs,
    sgl,
    x_ptr,
    sxb,
    sxc,
    sxs,
    sxl,
    f_ptr,  # F_blk[o, c] = f_ptr[o * sfo + c * sfc] (only read when HAS_F)
    sfo,
    sfc,
    dw_ptr,  # float32 (SPLITS, L, L) when DETERMINISTIC, else (L, L) zeroed
    db_ptr,  # float32 (SPLITS, L) when DETERMINISTIC, else (L,) zeroed
    B,
    C,
    C_G,
    S,
    L,
    n_s,
    n_c,
    SPLITS,
    HAS_F: tl.constexpr,
    DETERMINISTIC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_LA: tl.constexpr,
    BLOCK_O: tl.constexpr,
    COMPUTE: tl.constexpr,
    PREC: tl.constexpr,
):
    """Weight and bias gradient of a mix along the axis L (S is the other spatial axis).

    dw[l, l'] = sum_{b, c, s} z[b, c, s, l] x[b, c, s, l'],  db[l] = sum_{b, c, s} z[b, c, s, l]
    with z = F_blk^T g (HAS_F: the row or column block of the fused op, g has C_G channels)
    or z = g (the standalone row_mix / col_mix). The row mix passes (S, L) = (H, W), the
    column mix passes (S, L) = (W, H) with the strides swapped. Grid (SPLITS, row tiles):
    split s reduces items s, s + SPLITS, ... of the (b, s tile, c tile) list into rows
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
        tc = item % n_c
        ts = (item // n_c) % n_s
        b = item // (n_c * n_s)
        c0 = tc * BLOCK_C
        s0 = ts * BLOCK_S
        qc = c0 + offs_q // BLOCK_S
        qs = s0 + offs_q % BLOCK_S
        q_ok = (qc < C) & (qs < S)
        g_b = g_ptr + b.to(tl.int64) * sgb
        if HAS_F:
            offs_p = tl.arange(0, BLOCK_S * BLOCK_LA)
            ps = s0 + offs_p // BLOCK_LA
            pl = la0 + offs_p % BLOCK_LA
            p_ok = (ps < S) & (pl < L)
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
                z = _mm(ft, gt, z, COMPUTE, PREC)
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
        acc = _mm(tl.trans(z.to(COMPUTE)), xt, acc, COMPUTE, PREC)
        acc_b += tl.sum(z, axis=0)

    w_off = offs_la.to(tl.int64)[:, None] * L + offs_l.to(tl.int64)[None, :]
    w_mask = la_ok[:, None] & l_ok[None, :]
    if DETERMINISTIC:
        tl.store(dw_ptr + split.to(tl.int64) * L * L + w_off, acc, mask=w_mask)
        tl.store(db_ptr + split.to(tl.int64) * L + offs_la, acc_b, mask=la_ok)
    else:
        tl.atomic_add(dw_ptr + w_off, acc, mask=w_mask)
        tl.atomic_add(db_ptr + offs_la, acc_b, mask=la_ok)


@triton.jit
def axis_mix_kernel(
    x_ptr,
    sxb,
    sxc,
    sxs,
    sxl,
    w_ptr,  # Wt[l, l'] = w_ptr[l * sw0 + l' * sw1]
    sw0,
    sw1,
    bias_ptr,
    sbias,
    y_ptr,
    syb,
    syc,
    sys,
    syl,
    C,
    S,
    L,
    n_q,
    HAS_BIAS: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_K: tl.constexpr,
    COMPUTE: tl.constexpr,
    PREC: tl.constexpr,
):
    """The standalone row or column mix: y[b, c, s, l] = sum_l' Wt[l, l'] x[b, c, s, l'] + bias[l].

    Rows are the flattened (c, s) pairs of one batch element, BLOCK_Q per program; the whole
    axis (BLOCK_L >= L) is one tile. The row mix passes (S, L) = (H, W); the column mix
    passes (S, L) = (W, H) with the strides swapped; the input gradient passes Wt^T.
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
    for k0 in range(0, L, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < L
        xk = tl.load(
            x_rows[:, None] + k.to(tl.int64)[None, :] * sxl,
            mask=q_ok[:, None] & k_ok[None, :],
            other=0.0,
        ).to(COMPUTE)
        wt = tl.load(
            w_ptr + offs_l.to(tl.int64)[None, :] * sw0 + k.to(tl.int64)[:, None] * sw1,
            mask=k_ok[:, None] & l_ok[None, :],
            other=0.0,
        ).to(COMPUTE)
        acc = _mm(xk, wt, acc, COMPUTE, PREC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_l.to(tl.int64) * sbias, mask=l_ok, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    y_rows = y_ptr + b.to(tl.int64) * syb + qc.to(tl.int64) * syc + qs.to(tl.int64) * sys
    tl.store(
        y_rows[:, None] + offs_l.to(tl.int64)[None, :] * syl,
        acc.to(y_ptr.dtype.element_ty),
        mask=q_ok[:, None] & l_ok[None, :],
    )

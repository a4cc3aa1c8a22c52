"""Version 1 of the fused mix: the op as one GEMM over a concat laid out for it.

Notation (the README's Design notes): R = row mix (along W) and K = column mix (along H),
both without bias; F = fuse_weight = [F_id | F_row | F_col], (C_out, 3C). Per pixel the op
is a matrix product over the 3C inputs:

    y[(b, h, w), o] = sum_kk A[(b, h, w), kk] F[o, kk],   A = [x | R(x) + rb | K(x) + cb]

so the fused mix is a GEMM with the pixels on M, the output channels on N and the 3C
inputs on K. Two kernels per batch chunk:

1. ``concat_kernel`` (the pre-pass) writes A for a chunk of images into a scratch buffer,
   pixel-major (row (b, h, w), 3C contiguous values): x (through the optional BN -> GELU
   prologue), R(x) + rb and K(x) + cb, each rounded to the compute dtype as an unfused
   implementation would store them. Every x value is read from memory once per mix.
2. ``fuse_gemm_kernel`` multiplies A by F^T in one flattened K loop: both operands are
   K-contiguous with 16-byte aligned rows (3C is a multiple of 8 at every sMLPNet shape),
   the loads vectorise and the loop is software-pipelined (cp.async feeding wgmma with
   ``wgmma.wait_group 1`` on sm_90, mma.sync on sm_80). r and k never take a separate loop
   or a per-segment branch.

The batch is cut into chunks whose scratch fits a budget (``SCRATCH_BYTES``, or the
environment variable ``SMLP_TRITON_SCRATCH_MIB``), and one scratch buffer is reused by every
chunk: written by the pre-pass and read right away by the GEMM, a small one can stay in the
GPU's L2 cache (50 MB on an H100 / H200); a large one means fewer launches. Which wins is
for a GPU to show (benchmarks/NOTES.md holds the predictions).

The input gradient is ``mix`` on g with the transposed weights and no biases (the op
layer's call), so it runs this same pair of kernels. The weight gradients (``mix_wgrad``),
per chunk: the pre-pass on x again; ``pixel_major_kernel`` re-lays g pixel-major (G), so
that its loads vectorise too (NCHW planes of 49 or 196 pixels are not 16-byte aligned);
``fuse_wgrad_kernel`` computes dF = G^T A with the pixels as the reduction, split over
pixel tiles (split-K); ``fuse_gemm_kernel`` computes Z = G [F_row | F_col] = [F_row^T g |
F_col^T g]; ``line_wgrad_kernel`` reduces Z against x along W and along H into the row and
column weight and bias gradients. Partial sums go to fixed slots added in a fixed order in
deterministic mode (over the chunks too), else to one buffer per gradient with atomics.

Row and column mixes alone (``row_mix``, ``col_mix``) use :mod:`.axis`'s kernels.
"""

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _common as cm
from . import _tuning
from ._common import mm
from .mix import _fuse_blocks

# Scratch per batch chunk, unless SCRATCH_ENV says otherwise. Smaller chunks keep the
# scratch in L2 (50 MB on an H100 / H200) between the kernel that writes it and the one that
# reads it; larger ones launch fewer kernels. benchmarks/triton_v1_model.py predicts 64 MiB
# to be the better side of that trade at every sMLPNet stage shape (launches cost more than
# the scratch's extra HBM traffic); the first GPU run is to sweep it.
SCRATCH_BYTES = 64 << 20
SCRATCH_ENV = "SMLP_TRITON_SCRATCH_MIB"


@triton.jit
def bn_gelu(v, scale, shift, ok):
    """gelu(v * scale + shift) in float32 (exact erf GELU, as nn.GELU), zero where not ok
    (padding stays zero, so it adds nothing to any product)."""
    u = v.to(tl.float32) * scale + shift
    out = 0.5 * u * (1.0 + tl.math.erf(u * 0.7071067811865476))
    return tl.where(ok, out, 0.0)


@triton.jit
def concat_kernel(
    x_ptr, sxb, sxc, sxh, sxw,
    rw_ptr, srw0, srw1, rb_ptr, srb,
    cw_ptr, scw0, scw1, cb_ptr, scb,
    scale_ptr, sscale, shift_ptr, sshift,
    a_ptr,  # (n_images * H * W, 3C) row-major
    C, H, W, n_c, n_lh,
    HAS_RB: tl.constexpr, HAS_CB: tl.constexpr, PROLOGUE: tl.constexpr,
    LINES: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
    COMPUTE: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """A = [x' | R(x') + rb | K(x') + cb] for one image and BLOCK_C channels, x' = x or
    gelu(x * scale + shift).

    Grid (images x channel blocks, row groups + column groups). A program of the first
    n_lh groups takes LINES rows h of the plane and writes x' and R(x') there (each row is
    a (W, BLOCK_C) tile, mixed by Rw (W, W)); the others take LINES columns w and write
    K(x') (each column an (H, BLOCK_C) tile, mixed by Cw (H, H)). Rw[w, v] =
    rw_ptr[w*srw0 + v*srw1], Cw[h, u] = cw_ptr[h*scw0 + u*scw1].
    """
    pid = tl.program_id(0)
    group = tl.program_id(1)
    b = pid // n_c
    offs_c = (pid % n_c) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    x_c = x_ptr + b.to(tl.int64) * sxb + offs_c.to(tl.int64)[None, :] * sxc
    k3 = 3 * C
    a_c = a_ptr + b.to(tl.int64) * H * W * k3 + offs_c.to(tl.int64)[None, :]
    scale = tl.zeros((BLOCK_C,), dtype=tl.float32)
    shift = tl.zeros((BLOCK_C,), dtype=tl.float32)
    if PROLOGUE:
        scale = tl.load(scale_ptr + offs_c.to(tl.int64) * sscale, mask=c_ok, other=0.0)
        shift = tl.load(shift_ptr + offs_c.to(tl.int64) * sshift, mask=c_ok, other=0.0)
        scale = scale.to(tl.float32)
        shift = shift.to(tl.float32)
    if group < n_lh:
        ow = tl.arange(0, BLOCK_W)
        ow_ok = ow < W
        rw = tl.load(
            rw_ptr + ow.to(tl.int64)[:, None] * srw0 + ow.to(tl.int64)[None, :] * srw1,
            mask=ow_ok[:, None] & ow_ok[None, :],
            other=0.0,
        ).to(COMPUTE)
        rb = tl.zeros((BLOCK_W,), dtype=tl.float32)
        if HAS_RB:
            rb = tl.load(rb_ptr + ow.to(tl.int64) * srb, mask=ow_ok, other=0.0).to(tl.float32)
        row_ok = ow_ok[:, None] & c_ok[None, :]
        for h in range(group * LINES, tl.minimum(group * LINES + LINES, H)):
            xt = tl.load(x_c + h * sxh + ow.to(tl.int64)[:, None] * sxw, mask=row_ok, other=0.0)
            if PROLOGUE:
                xt = bn_gelu(xt, scale[None, :], shift[None, :], row_ok)
            xt = xt.to(COMPUTE)
            r = mm(rw, xt, tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32), COMPUTE, PREC)
            r += rb[:, None]
            a_row = a_c + (h * W + ow).to(tl.int64)[:, None] * k3
            tl.store(a_row, xt.to(a_ptr.dtype.element_ty), mask=row_ok)
            tl.store(a_row + C, r.to(a_ptr.dtype.element_ty), mask=row_ok)
    else:
        oh = tl.arange(0, BLOCK_H)
        oh_ok = oh < H
        cw = tl.load(
            cw_ptr + oh.to(tl.int64)[:, None] * scw0 + oh.to(tl.int64)[None, :] * scw1,
            mask=oh_ok[:, None] & oh_ok[None, :],
            other=0.0,
        ).to(COMPUTE)
        cb = tl.zeros((BLOCK_H,), dtype=tl.float32)
        if HAS_CB:
            cb = tl.load(cb_ptr + oh.to(tl.int64) * scb, mask=oh_ok, other=0.0).to(tl.float32)
        col_ok = oh_ok[:, None] & c_ok[None, :]
        w0 = (group - n_lh) * LINES
        for w in range(w0, tl.minimum(w0 + LINES, W)):
            xu = tl.load(x_c + w * sxw + oh.to(tl.int64)[:, None] * sxh, mask=col_ok, other=0.0)
            if PROLOGUE:
                xu = bn_gelu(xu, scale[None, :], shift[None, :], col_ok)
            k = mm(cw, xu.to(COMPUTE), tl.zeros((BLOCK_H, BLOCK_C), dtype=tl.float32),
                   COMPUTE, PREC)  # fmt: skip
            k += cb[:, None]
            a_col = a_c + (oh * W + w).to(tl.int64)[:, None] * k3 + 2 * C
            tl.store(a_col, k.to(a_ptr.dtype.element_ty), mask=col_ok)


@triton.jit
def fuse_gemm_kernel(
    a_ptr,  # (M, K3) row-major
    f_ptr,  # (C_OUT, K3) row-major
    y_ptr, syb, syo, syp,  # pixel p = h * W + w of image b at y_ptr + b * syb + p * syp
    M, K3, C_OUT, HW, n_n,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    COMPUTE: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """y[(b, h, w), o] = sum_kk A[(b, h, w), kk] F[o, kk] over one (BLOCK_M, BLOCK_N) tile.

    One program per (pixel tile, output-channel tile), the channel tile fastest so that the
    programs reading one A tile run together. Pixel m of the chunk is image m // HW, pixel
    m % HW of its plane; y's planes have one pixel stride (contiguous or channels_last y).
    """
    pid = tl.program_id(0)
    pid_m = pid // n_n
    pid_n = pid % n_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n_ok = offs_n < C_OUT
    a_rows = a_ptr + offs_m.to(tl.int64)[:, None] * K3
    f_cols = f_ptr + offs_n.to(tl.int64)[None, :] * K3
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K3, BLOCK_K):
        k = k0 + offs_k
        k_ok = k < K3
        a = tl.load(a_rows + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        f = tl.load(f_cols + k[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = mm(a, f, acc, COMPUTE, PREC)

    # One division per row: with (h, w) through separate strides, Triton 3.9 computed the
    # row offsets per element of the tile and spilled (8 to 2032 bytes).
    b = offs_m // HW
    p = offs_m - b * HW
    row = y_ptr + (b.to(tl.int64) * syb + p.to(tl.int64) * syp)[:, None]
    # Two halves of the tile, one after the other: the pointers of a whole 128 x 128 tile
    # (two registers each) pushed Triton 3.9 over the register limit at some shapes.
    halves = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
    for i in tl.static_range(2):
        n = pid_n * BLOCK_N + i * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        half = halves[i]
        tl.store(row + n.to(tl.int64)[None, :] * syo, half.to(y_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & (n < C_OUT)[None, :])  # fmt: skip


@triton.jit
def pixel_major_kernel(
    src_ptr, ssb, ssc, ssh, ssw,
    dst_ptr,  # (n_images * H * W, C) row-major
    C, H, W, n_c,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    """dst[(b, h, w), c] = src[b, c, h, w] in dst's dtype, for one image, BLOCK_C channels
    and BLOCK_P pixels: the upstream gradient laid out for the weight-gradient GEMM."""
    pid = tl.program_id(0)
    b = pid // n_c
    offs_c = (pid % n_c) * BLOCK_C + tl.arange(0, BLOCK_C)
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    ok = (offs_c < C)[:, None] & (p < H * W)[None, :]
    v = tl.load(
        src_ptr
        + b.to(tl.int64) * ssb
        + offs_c.to(tl.int64)[:, None] * ssc
        + ((p // W).to(tl.int64) * ssh + (p % W).to(tl.int64) * ssw)[None, :],
        mask=ok,
        other=0.0,
    )
    dst = dst_ptr + (b.to(tl.int64) * H * W + p.to(tl.int64))[None, :] * C + offs_c[:, None]
    tl.store(dst, v.to(dst_ptr.dtype.element_ty), mask=ok)


@triton.jit
def fuse_wgrad_kernel(
    g_ptr,  # (M, C_OUT) row-major
    a_ptr,  # (M, K3) row-major
    out_ptr,  # float32 (SPLITS, C_OUT, K3) when DETERMINISTIC, else (C_OUT, K3)
    M, K3, C_OUT, SPLITS,
    DETERMINISTIC: tl.constexpr, ACCUMULATE: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
    COMPUTE: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """dF[o, kk] += sum_m G[m, o] A[m, kk] over the pixels m of one chunk.

    Grid (o tiles, kk tiles, SPLITS): split s reduces the pixel tiles s, s + SPLITS, ...
    Deterministic: split s owns slot s, stored (the first chunk) or added to (ACCUMULATE,
    the later chunks, launched in order); otherwise atomics into one buffer.
    """
    to = tl.program_id(0)
    tn = tl.program_id(1)
    split = tl.program_id(2)
    offs_o = to * BLOCK_O + tl.arange(0, BLOCK_O)
    offs_n = tn * BLOCK_N + tl.arange(0, BLOCK_N)
    o_ok = offs_o < C_OUT
    n_ok = offs_n < K3
    acc = tl.zeros((BLOCK_O, BLOCK_N), dtype=tl.float32)
    for t in range(split, tl.cdiv(M, BLOCK_P), SPLITS):
        m = t * BLOCK_P + tl.arange(0, BLOCK_P)
        m_ok = m < M
        g = tl.load(
            g_ptr + m.to(tl.int64)[:, None] * C_OUT + offs_o[None, :],
            mask=m_ok[:, None] & o_ok[None, :],
            other=0.0,
        )
        a = tl.load(
            a_ptr + m.to(tl.int64)[:, None] * K3 + offs_n[None, :],
            mask=m_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        acc = mm(tl.trans(g), a, acc, COMPUTE, PREC)

    off = offs_o.to(tl.int64)[:, None] * K3 + offs_n[None, :]
    mask = o_ok[:, None] & n_ok[None, :]
    if DETERMINISTIC:
        slot = out_ptr + split.to(tl.int64) * C_OUT * K3 + off
        if ACCUMULATE:
            acc += tl.load(slot, mask=mask, other=0.0)
        tl.store(slot, acc, mask=mask)
    else:
        tl.atomic_add(out_ptr + off, acc, mask=mask)


@triton.jit
def line_wgrad_kernel(
    z_ptr,  # float32 (M, 2C) row-major: [F_row^T g | F_col^T g] per pixel
    a_ptr,  # (M, 3C) row-major: x is its first C columns
    dw_ptr,  # float32 (SPLITS, L, L) when DETERMINISTIC, else (L, L)
    db_ptr,  # float32 (SPLITS, L) when DETERMINISTIC, else (L,)
    C, HW, S, L, s_stride, l_stride, z_off, n_items, n_cc, SPLITS,
    DETERMINISTIC: tl.constexpr, ACCUMULATE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr,
    COMPUTE: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """dW[l, l'] += sum_{b, c, s} z[b, c, s, l] x[b, c, s, l'] and db[l] += sum z[b, c, s, l]
    along one axis of the chunk: L = W (rows: s = h, z = F_row^T g) or L = H (columns:
    s = w, z = F_col^T g). Pixel (b, s, l) is row b * HW + s * s_stride + l * l_stride of Z
    and A; z_off selects Z's half.

    Grid (SPLITS,): split s reduces the (line, channel chunk) items s, s + SPLITS, ... of
    the flattened list (one loop); each item is one line's (L, BLOCK_C) tiles of Z and x and
    one (L, L) product. Slots and atomics as in fuse_wgrad_kernel.
    """
    split = tl.program_id(0)
    offs_l = tl.arange(0, BLOCK_L)
    l_ok = offs_l < L
    k3 = 3 * C
    k2 = 2 * C
    acc = tl.zeros((BLOCK_L, BLOCK_L), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_L,), dtype=tl.float32)
    for t in range(split, n_items * n_cc, SPLITS):
        item = t // n_cc
        offs_c = (t % n_cc) * BLOCK_C + tl.arange(0, BLOCK_C)
        pix = (item // S) * HW + (item % S) * s_stride + offs_l * l_stride
        ok = l_ok[:, None] & (offs_c < C)[None, :]
        zt = tl.load(z_ptr + pix.to(tl.int64)[:, None] * k2 + z_off + offs_c[None, :], mask=ok,
                     other=0.0)  # fmt: skip
        xt = tl.load(a_ptr + pix.to(tl.int64)[:, None] * k3 + offs_c[None, :], mask=ok, other=0.0)
        acc = mm(zt.to(COMPUTE), tl.trans(xt.to(COMPUTE)), acc, COMPUTE, PREC)
        acc_b += tl.sum(zt, axis=1)

    w_off = offs_l.to(tl.int64)[:, None] * L + offs_l[None, :]
    w_mask = l_ok[:, None] & l_ok[None, :]
    if DETERMINISTIC:
        dw_slot = dw_ptr + split.to(tl.int64) * L * L + w_off
        db_slot = db_ptr + split.to(tl.int64) * L + offs_l
        if ACCUMULATE:
            acc += tl.load(dw_slot, mask=w_mask, other=0.0)
            acc_b += tl.load(db_slot, mask=l_ok, other=0.0)
        tl.store(dw_slot, acc, mask=w_mask)
        tl.store(db_slot, acc_b, mask=l_ok)
    else:
        tl.atomic_add(dw_ptr + w_off, acc, mask=w_mask)
        tl.atomic_add(db_ptr + offs_l, acc_b, mask=l_ok)


# --------------------------------------------------------------------------------------------
# Tiles
# --------------------------------------------------------------------------------------------


def concat_config(c: int, h: int, w: int, fp32: bool) -> _tuning.Config:
    """The pre-pass's tiles: whole rows and columns (at least 16 long, tl.dot's minimum),
    BLOCK_C channels (32 when there are that many, so each pixel's stores are 64 bytes),
    8 lines per program. float32 with 64-long lines takes 16 channels: 32 spilled (688
    bytes on sm_80, Triton 3.6)."""
    bh, bw = max(16, _tuning.np2(h)), max(16, _tuning.np2(w))
    bc = 32 if c >= 32 and not (fp32 and max(bh, bw) >= 64) else 16
    # 128-long lines: 8 warps (16 in float32, where 8 spilled 16 bytes with Triton 3.9).
    warps = (16 if fp32 else 8) if max(bh, bw) >= 128 else 4
    return _tuning.config(warps, 1, LINES=8, BLOCK_C=bc, BLOCK_H=bh, BLOCK_W=bw)


def gemm_configs(c_out: int, fp32: bool) -> list[_tuning.Config]:
    """Tiles of fuse_gemm_kernel. The default for 16-bit is 128 pixels x up to 128 output
    channels on 8 warps (two warpgroups of 64 rows: the smallest tile wgmma takes), BLOCK_K
    64 and 3 stages; the alternative has 64-channel tiles on one warpgroup (less padding
    when C_out is just above a power of two)."""
    bn = min(128, max(16, _tuning.np2(c_out)))
    if fp32:
        # float32 takes the FMA path (or TF32): no wgmma to feed, and 128-pixel tiles
        # spilled 8 to 24 bytes with Triton 3.9 (sm_80, sm_90), 64 x 64 on 4 warps 16 bytes
        # with 3.6 (sm_80). One 64 x 64 tile on 8 warps.
        return [_tuning.config(8, 2, BLOCK_M=64, BLOCK_N=min(64, bn), BLOCK_K=32)]
    out = [_tuning.config(8, 3, BLOCK_M=128, BLOCK_N=bn, BLOCK_K=64)]
    if bn > 64:
        out.append(_tuning.config(4, 4, BLOCK_M=128, BLOCK_N=64, BLOCK_K=64))
    return _tuning.dedup(out)


def wgrad_configs(c_out: int, k3: int, fp32: bool) -> list[_tuning.Config]:
    """Tiles of fuse_wgrad_kernel: 128 (or fewer) output channels on M, 128 of the 3C
    inputs on N (64 in float32: 128 spilled 72 bytes on sm_80 and sm_90, Triton 3.6), 64
    pixels of reduction per step (32 in float32)."""
    bo = min(128, max(64, _tuning.np2(c_out)))
    bn = min(64 if fp32 else 128, max(16, _tuning.np2(k3)))
    bp = 32 if fp32 else 64
    stages = 2 if fp32 else 3
    return [_tuning.config(8, stages, BLOCK_O=bo, BLOCK_N=bn, BLOCK_P=bp)]


def line_wgrad_config(c: int, length: int, fp32: bool) -> _tuning.Config:
    """Tiles of line_wgrad_kernel: one whole line (at least 16, tl.dot's minimum) and 32
    channels (16 in float32 for lines of 64 and more) per product."""
    bl = max(16, _tuning.np2(length))
    bc = 16 if fp32 and bl >= 64 else 32
    # 8 warps for 128-long lines: on 4, the 128 x 128 float32 accumulator spilled 300 to
    # 680 bytes (Triton 3.6, sm_80 and sm_90).
    return _tuning.config(8 if bl >= 128 else 4, 2, BLOCK_C=bc, BLOCK_L=bl)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------


def _torch_compute(x: Tensor) -> torch.dtype:
    return torch.float32 if cm.compute_dtype(x.dtype) == tl.float32 else x.dtype


def scratch_bytes() -> int:
    """The scratch budget per batch chunk: SMLP_TRITON_SCRATCH_MIB MiB if set, else
    SCRATCH_BYTES. ValueError naming the variable if it is not a positive integer."""
    text = os.environ.get(SCRATCH_ENV, "").strip()
    if not text:
        return SCRATCH_BYTES
    try:
        mib = int(text)
    except ValueError:
        mib = 0
    if mib < 1:
        raise ValueError(f"{SCRATCH_ENV}={text!r}: expected a positive whole number of MiB "
                         "(the Triton backend's scratch per batch chunk)")  # fmt: skip
    return mib << 20


def _chunk(batch: int, image_bytes: int) -> int:
    """Images per chunk: as many as the scratch budget holds, at least one."""
    return max(1, min(batch, scratch_bytes() // max(1, image_bytes)))


class _Concat:
    """The pre-pass's launch for chunks of one x (the arguments that do not change)."""

    def __init__(self, x, row_weight, row_bias, col_weight, col_bias, scale, shift):
        _, self.c, self.h, self.w = x.shape
        self.x = x
        self.cfg = concat_config(self.c, self.h, self.w, _torch_compute(x) == torch.float32)
        k = self.cfg.constexprs()
        self.n_c = triton.cdiv(self.c, k["BLOCK_C"])
        self.n_lh = triton.cdiv(self.h, k["LINES"])
        self.n_lw = triton.cdiv(self.w, k["LINES"])
        rb_t, srb = cm.bias_args(row_bias, row_weight)
        cb_t, scb = cm.bias_args(col_bias, col_weight)
        sc_t, ssc = cm.bias_args(scale, row_weight)
        sh_t, ssh = cm.bias_args(shift, row_weight)
        self.params = (row_weight, *cm.strides2(row_weight), rb_t, srb,
                       col_weight, *cm.strides2(col_weight), cb_t, scb,
                       sc_t, ssc, sh_t, ssh)  # fmt: skip
        self.flags = dict(HAS_RB=row_bias is not None, HAS_CB=col_bias is not None,
                          PROLOGUE=scale is not None)  # fmt: skip

    def __call__(self, b0: int, nb: int, a: Tensor) -> None:
        x = self.x

        def run(cfg: _tuning.Config) -> None:
            concat_kernel[(nb * self.n_c, self.n_lh + self.n_lw)](
                x[b0:], *cm.strides4(x), *self.params, a,
                self.c, self.h, self.w, self.n_c, self.n_lh,
                COMPUTE=cm.compute_dtype(x.dtype), PREC=cm.precision(),
                num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                **self.flags, **cfg.constexprs(),
            )  # fmt: skip

        # One configuration: pick returns it without timing anything.
        run(_tuning.pick(("concat_kernel",), [self.cfg], x.device, run))


def _gemm(a: Tensor, f: Tensor, y: Tensor, b0: int, nb: int, key: tuple) -> None:
    """y[b0 : b0 + nb] = A F^T, pixel by pixel: a (nb * H * W, K) and f (N, K) row-major in
    the compute dtype, y (B, N, H, W) with any strides. Tuned once per key, then cached."""
    _, n, h, w = y.shape
    if h > 1 and y.stride(2) != w * y.stride(3):
        raise ValueError("fuse_gemm_kernel needs y's (h, w) planes with one pixel stride")
    k_len = a.shape[1]
    compute, prec = cm.compute_dtype(a.dtype), cm.precision()
    m = nb * h * w

    def run(cfg: _tuning.Config) -> None:
        k = cfg.constexprs()
        n_n = triton.cdiv(n, k["BLOCK_N"])
        fuse_gemm_kernel[(triton.cdiv(m, k["BLOCK_M"]) * n_n,)](
            a, f, y[b0:], y.stride(0), y.stride(1), y.stride(3),
            m, k_len, n, h * w, n_n,
            COMPUTE=compute, PREC=prec,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **k,
        )  # fmt: skip

    configs = gemm_configs(n, a.dtype == torch.float32)
    run(_tuning.pick(("fuse_gemm_kernel", *key, n, k_len, h, w, y.dtype, prec), configs,
                     y.device, run))  # fmt: skip


def _fuse_matrix(f_id: Tensor, f_row: Tensor, f_col: Tensor, dtype: torch.dtype) -> Tensor:
    """F = [F_id | F_row | F_col] as one K-contiguous (C_out, 3C) matrix in the compute
    dtype, so that the GEMM's loads of it vectorise like A's. The forward's blocks are
    fuse_weight's own column blocks: then F is fuse_weight itself, no copy unless its dtype
    or layout differs; other blocks (the input gradient's transposes) are copied, a
    parameter-sized copy."""
    f, blk = _fuse_blocks(f_id, f_row, f_col)
    c = f_id.shape[1]
    if f.stride(1) == 1 and blk == c:
        f = f.as_strided((f.shape[0], 3 * c), f.stride(), f.storage_offset())
    else:
        f = torch.cat([f_id, f_row, f_col], dim=1)
    return f.to(dtype).contiguous()


def mix(x: Tensor, row_weight: Tensor, row_bias: Tensor | None, col_weight: Tensor,
        col_bias: Tensor | None, f_id: Tensor, f_row: Tensor, f_col: Tensor,
        scale: Tensor | None = None, shift: Tensor | None = None) -> Tensor:  # fmt: skip
    """y = F_id x' + F_row R(x') + F_col K(x') with R and K's biases, x' = x, or
    gelu(x * scale + shift) when scale and shift (C,) are given; any strides everywhere."""
    b, c, h, w = x.shape
    k3 = 3 * c
    y = cm.empty_like_layout(x, f_id.shape[0])
    dtype = _torch_compute(x)
    f = _fuse_matrix(f_id, f_row, f_col, dtype)
    concat = _Concat(x, row_weight, row_bias, col_weight, col_bias, scale, shift)
    bc = _chunk(b, h * w * k3 * torch.finfo(dtype).bits // 8)
    a = torch.empty((bc * h * w, k3), dtype=dtype, device=x.device)
    for b0 in range(0, b, bc):
        nb = min(bc, b - b0)
        concat(b0, nb, a)
        _gemm(a, f, y, b0, nb, ("y", c))
    return y


def mix_wgrad(g: Tensor, x: Tensor, row_weight: Tensor, row_bias: Tensor | None,
              col_weight: Tensor, col_bias: Tensor | None, f_row: Tensor, f_col: Tensor, *,
              deterministic: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """The weight gradients of the mix, in float32: (d fuse_weight (C_out, 3C), d row_weight,
    d row_bias, d col_weight, d col_bias), given g (B, C_out, H, W) and x (B, C, H, W).

    Per batch chunk: the pre-pass writes A, g is re-laid pixel-major (G), then two GEMMs
    read G: dF += G^T A (split over pixels) and Z = G [F_row | F_col] = [F_row^T g |
    F_col^T g] (the fuse GEMM with K = C_out, in float32 so that the bias gradients sum
    unrounded values); the row and column weight gradients are then reductions of Z's
    halves against x along W and along H (the axis kernels, z = g). Every buffer is
    the chunk's, so it can stay in L2; the chunks' sums are added in order.
    """
    b, c, h, w = x.shape
    c_out = g.shape[1]
    k3 = 3 * c
    dtype = _torch_compute(x)
    dev = x.device
    concat = _Concat(x, row_weight, row_bias, col_weight, col_bias, None, None)
    size = torch.finfo(dtype).bits // 8
    bc = _chunk(b, h * w * ((k3 + c_out) * size + 2 * c * 4))
    a = torch.empty((bc * h * w, k3), dtype=dtype, device=dev)
    gp = torch.empty((bc * h * w, c_out), dtype=dtype, device=dev)
    fz = torch.cat([f_row.t(), f_col.t()], dim=0).to(dtype).contiguous()  # (2C, C_out)
    # Z pixel-major: (bc, 2C, H, W) channels_last is (bc * H * W, 2C) row-major.
    z = torch.empty((bc, 2 * c, h, w), dtype=torch.float32, device=dev,
                    memory_format=torch.channels_last)  # fmt: skip
    # One configuration per kernel, never tuned: the summation order must not depend on
    # timings, and the reductions accumulate over the chunks.
    cfg = wgrad_configs(c_out, k3, dtype == torch.float32)[0]
    k = cfg.constexprs()
    n_o, n_n = triton.cdiv(c_out, k["BLOCK_O"]), triton.cdiv(k3, k["BLOCK_N"])
    n_splits = cm.splits(triton.cdiv(bc * h * w, k["BLOCK_P"]), n_o * n_n, dev)
    pm_cfg = _tuning.config(4, 1, BLOCK_C=32, BLOCK_P=64)
    n_pc = triton.cdiv(c_out, 32)
    # The row (along W) and column (along H) reductions: (L, S, s_stride, l_stride, z_off).
    axes = ((w, h, w, 1, 0), (h, w, 1, w, c))
    ax_cfgs = [line_wgrad_config(c, length, dtype == torch.float32) for length in (w, h)]
    ax_splits = [cm.splits(bc * s_len * triton.cdiv(c, cf.constexprs()["BLOCK_C"]), 1, dev)
                 for (_, s_len, *_), cf in zip(axes, ax_cfgs, strict=True)]  # fmt: skip

    def buffers(*shape: int, splits: int) -> Tensor:
        if deterministic:
            return torch.empty((splits, *shape), dtype=torch.float32, device=dev)
        return torch.zeros(shape, dtype=torch.float32, device=dev)

    buf = buffers(c_out, k3, splits=n_splits)
    ax_bufs = [(buffers(n, n, splits=sp), buffers(n, splits=sp))
               for n, sp in zip((w, h), ax_splits, strict=True)]  # fmt: skip
    compute, prec = cm.compute_dtype(x.dtype), cm.precision()
    for i, b0 in enumerate(range(0, b, bc)):
        nb = min(bc, b - b0)
        concat(b0, nb, a)

        def transpose(cfg: _tuning.Config, b0=b0, nb=nb) -> None:
            pixel_major_kernel[(nb * n_pc, triton.cdiv(h * w, 64))](
                g[b0:], *cm.strides4(g), gp, c_out, h, w, n_pc,
                num_warps=cfg.num_warps, num_stages=cfg.num_stages, **cfg.constexprs(),
            )  # fmt: skip

        def run(cfg: _tuning.Config, nb=nb, accumulate=i > 0) -> None:
            fuse_wgrad_kernel[(n_o, n_n, n_splits)](
                gp, a, buf, nb * h * w, k3, c_out, n_splits,
                DETERMINISTIC=deterministic, ACCUMULATE=accumulate,
                COMPUTE=compute, PREC=prec,
                num_warps=cfg.num_warps, num_stages=cfg.num_stages, **cfg.constexprs(),
            )  # fmt: skip

        transpose(_tuning.pick(("pixel_major_kernel",), [pm_cfg], dev, transpose))
        run(_tuning.pick(("fuse_wgrad_kernel",), [cfg], dev, run, tune=False))
        _gemm(gp, fz, z, 0, nb, ("z",))
        for (length, s_len, s_stride, l_stride, z_off), ax_cfg, sp, (dw, db) in zip(
            axes, ax_cfgs, ax_splits, ax_bufs, strict=True
        ):

            def reduce(cfg: _tuning.Config, nb=nb, accumulate=i > 0, length=length,
                       s_len=s_len, s_stride=s_stride, l_stride=l_stride, z_off=z_off,
                       sp=sp, dw=dw, db=db) -> None:  # fmt: skip
                n_cc = triton.cdiv(c, cfg.constexprs()["BLOCK_C"])
                line_wgrad_kernel[(sp,)](
                    z, a, dw, db, c, h * w, s_len, length, s_stride, l_stride, z_off,
                    nb * s_len, n_cc, sp,
                    DETERMINISTIC=deterministic, ACCUMULATE=accumulate,
                    COMPUTE=compute, PREC=prec,
                    num_warps=cfg.num_warps, num_stages=cfg.num_stages, **cfg.constexprs(),
                )  # fmt: skip

            reduce(_tuning.pick(("line_wgrad_kernel",), [ax_cfg], dev, reduce, tune=False))
    (d_rw, d_rb), (d_cw, d_cb) = ((cm.finish_sum(t, deterministic) for t in pair)
                                  for pair in ax_bufs)  # fmt: skip
    return cm.finish_sum(buf, deterministic), d_rw, d_rb, d_cw, d_cb

"""Python launchers of the Triton kernels: strides, grids, splits and dtype rules.

Imported only when the ``triton`` backend runs, so a machine without Triton never imports
it. Inputs have passed the op layer's validation; any strides are fine (the kernels take
every stride), so nothing here copies x or g.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import _tuning
from .kernels import axis_mix_kernel, axis_wgrad_kernel, mix_fwd_kernel, mix_wgrad_fuse_kernel

INTERPRETED = type(mix_fwd_kernel).__name__ == "InterpretedFunction"

_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def _compute_dtype(dtype: torch.dtype):
    """The dtype of the matrix-unit operands. Under the interpreter bfloat16 is computed in
    float32: the interpreter multiplies bfloat16 bit patterns as integers."""
    if INTERPRETED and dtype == torch.bfloat16:
        return tl.float32
    return _TL_DTYPES[dtype]


def _precision() -> str:
    """tl.dot input precision for float32 operands: IEEE unless PyTorch allows TF32.

    Reads PyTorch's newer per-backend setting (``torch.backends.cuda.matmul.fp32_precision``,
    torch >= 2.9) first: once it has been set, the legacy getter raises.
    """
    matmul = getattr(torch.backends.cuda, "matmul", None)
    for setting in (
        getattr(matmul, "fp32_precision", None),
        getattr(torch.backends, "fp32_precision", None),
    ):
        if setting == "tf32":
            return "tf32"
        if setting == "ieee":
            return "ieee"
    try:
        return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    except RuntimeError:
        return "ieee"


def _out_format(x: Tensor) -> torch.memory_format:
    """channels_last when x is (the op layer's output layout), so no copy follows."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: few splits keep it fast


def _check_device(x: Tensor) -> None:
    if INTERPRETED and x.device.type != "cpu":
        raise ValueError(
            "the triton backend runs under the Triton interpreter in this process "
            f"(TRITON_INTERPRET=1), which takes CPU tensors, but x is on {x.device}"
        )
    if not INTERPRETED and x.device.type != "cuda":
        raise ValueError(f"the triton backend runs on CUDA tensors, but x is on {x.device}")


def _strides4(t: Tensor) -> tuple[int, int, int, int]:
    s = t.stride()
    return s[0], s[1], s[2], s[3]


def _bias_args(bias: Tensor | None, like: Tensor) -> tuple[Tensor, int]:
    if bias is None:
        return like, 0  # never read: HAS_* is False
    return bias, bias.stride(0)


def _splits(n_work: int, programs_per_split: int, device: torch.device) -> int:
    """How many partial sums a reduction over n_work items is split into: about four
    programs per SM in all, never more splits than items."""
    target = max(1, (4 * _num_sms(device)) // max(1, programs_per_split))
    return max(1, min(n_work, target))


def _launch_mix(
    x: Tensor,
    rw: Tensor,
    rb: Tensor | None,
    cw: Tensor,
    cb: Tensor | None,
    fw: Tensor,
    out: Tensor,
    *,
    transposed: bool,
) -> Tensor:
    """y = mix(x) into out; transposed=True computes the input gradient from g = x."""
    b, c_in, h, w = x.shape
    c_out = out.shape[1]
    c_blk = fw.shape[1] // 3  # the forward's C
    if transposed:
        # F'_blk[c, o] = fw[o, blk*C + c]; Rw' = Rw^T, Cw' = Cw^T.
        sfo, sfc = fw.stride(1), fw.stride(0)
        srw0, srw1 = rw.stride(1), rw.stride(0)
        scw0, scw1 = cw.stride(1), cw.stride(0)
    else:
        sfo, sfc = fw.stride(0), fw.stride(1)
        srw0, srw1 = rw.stride(0), rw.stride(1)
        scw0, scw1 = cw.stride(0), cw.stride(1)
    f_blk = c_blk * fw.stride(1)
    rb_t, srb = _bias_args(rb, rw)
    cb_t, scb = _bias_args(cb, cw)
    compute = _compute_dtype(x.dtype)
    prec = _precision()

    def run(cfg: _tuning.Config) -> None:
        k = cfg.constexprs()
        n_o = triton.cdiv(c_out, k["BLOCK_O"])
        n_h = triton.cdiv(h, k["BLOCK_H"])
        n_w = triton.cdiv(w, k["BLOCK_W"])
        mix_fwd_kernel[(b * n_h * n_w * n_o,)](
            x, *_strides4(x),
            rw, srw0, srw1, rb_t, srb,
            cw, scw0, scw1, cb_t, scb,
            fw, sfo, sfc, f_blk,
            out, *_strides4(out),
            c_in, c_out, h, w, n_o, n_h, n_w,
            HAS_RB=rb is not None, HAS_CB=cb is not None,
            COMPUTE=compute, PREC=prec,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            **k,
        )  # fmt: skip

    configs = _tuning.mix_fwd_configs(c_in, c_out, h, w)
    key = ("mix_fwd_kernel", c_in, c_out, h, w, x.dtype, prec, rb is not None, cb is not None)
    run(_tuning.pick(key, configs, x.device, run))
    return out


def _finish_sum(buf: Tensor, deterministic: bool) -> Tensor:
    """The reduction's result: the buffer itself (atomics) or the sum of its partials, added
    in a fixed order (PyTorch's reductions are run-to-run deterministic)."""
    return buf.sum(0) if deterministic else buf


def _axis_wgrad(
    g: Tensor,
    x: Tensor,
    axis: int,
    f_blk: Tensor | None,
    *,
    deterministic: bool,
) -> tuple[Tensor, Tensor]:
    """(dW, db) in float32 of a mix along `axis` (3 = W, 2 = H); z = F_blk^T g or g."""
    b, c, h, w = x.shape
    if axis == 3:
        s_len, length = h, w
        sg = (g.stride(0), g.stride(1), g.stride(2), g.stride(3))
        sx = (x.stride(0), x.stride(1), x.stride(2), x.stride(3))
    else:
        s_len, length = w, h
        sg = (g.stride(0), g.stride(1), g.stride(3), g.stride(2))
        sx = (x.stride(0), x.stride(1), x.stride(3), x.stride(2))
    has_f = f_blk is not None
    f_t, sfo, sfc = (f_blk, f_blk.stride(0), f_blk.stride(1)) if has_f else (x, 0, 0)
    c_g = g.shape[1]
    compute = _compute_dtype(x.dtype)
    prec = _precision()
    configs = _tuning.axis_wgrad_configs(s_len, length, has_f)
    key = ("axis_wgrad_kernel", c, c_g, h, w, x.dtype, prec, axis, has_f, deterministic)
    bufs: dict[_tuning.Config, tuple[Tensor, Tensor, int]] = {}

    def buffers(cfg: _tuning.Config) -> tuple[Tensor, Tensor, int]:
        if cfg not in bufs:
            k = cfg.constexprs()
            n_items = b * triton.cdiv(s_len, k["BLOCK_S"]) * triton.cdiv(c, k["BLOCK_C"])
            splits = _splits(n_items, 1, x.device)
            lead = (splits,) if deterministic else ()
            dw = torch.empty((*lead, length, length), dtype=torch.float32, device=x.device)
            db = torch.empty((*lead, length), dtype=torch.float32, device=x.device)
            bufs[cfg] = (dw, db, splits)
        return bufs[cfg]

    def run(cfg: _tuning.Config) -> None:
        k = cfg.constexprs()
        dw, db, splits = buffers(cfg)
        if not deterministic:
            dw.zero_()
            db.zero_()
        n_s = triton.cdiv(s_len, k["BLOCK_S"])
        n_c = triton.cdiv(c, k["BLOCK_C"])
        axis_wgrad_kernel[(splits, triton.cdiv(length, k["BLOCK_LA"]))](
            g, *sg, x, *sx, f_t, sfo, sfc, dw, db,
            b, c, c_g, s_len, length, n_s, n_c, splits,
            HAS_F=has_f, DETERMINISTIC=deterministic, COMPUTE=compute, PREC=prec,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            **k,
        )  # fmt: skip

    # Deterministic mode: the config fixes the summation order, so it must not depend on
    # timings; the default one is used.
    cfg = _tuning.pick(key, configs, x.device, run, tune=not deterministic)
    run(cfg)
    dw, db, _ = buffers(cfg)
    return _finish_sum(dw, deterministic), _finish_sum(db, deterministic)


def mix_wgrad(grad, x, row_weight, row_bias, col_weight, col_bias, f_row, f_col, deterministic):
    _check_device(x)
    b, c, h, w = x.shape
    c_out = f_row.shape[0]

    # d fuse_weight: fused reduction over pixels, r and k recomputed with their biases.
    rb_t, srb = _bias_args(row_bias, row_weight)
    cb_t, scb = _bias_args(col_bias, col_weight)
    compute = _compute_dtype(x.dtype)
    prec = _precision()
    configs = _tuning.mix_wgrad_fuse_configs(c, c_out, h, w)
    key = ("mix_wgrad_fuse_kernel", c, c_out, h, w, x.dtype, prec, row_bias is not None,
           col_bias is not None, deterministic)  # fmt: skip
    bufs: dict[_tuning.Config, tuple[Tensor, int, tuple[int, int, int]]] = {}

    def buffers(cfg: _tuning.Config):
        if cfg not in bufs:
            k = cfg.constexprs()
            n_o, n_c = triton.cdiv(c_out, k["BLOCK_O"]), triton.cdiv(c, k["BLOCK_C"])
            n_tiles = b * triton.cdiv(h, k["BLOCK_H"]) * triton.cdiv(w, k["BLOCK_W"])
            splits = _splits(n_tiles, n_o * n_c, x.device)
            lead = (splits,) if deterministic else ()
            buf = torch.empty((*lead, c_out, 3 * c), dtype=torch.float32, device=x.device)
            bufs[cfg] = (buf, splits, (n_o, n_c, splits))
        return bufs[cfg]

    def run(cfg: _tuning.Config) -> None:
        k = cfg.constexprs()
        buf, splits, grid = buffers(cfg)
        if not deterministic:
            buf.zero_()
        mix_wgrad_fuse_kernel[grid](
            grad, *_strides4(grad), x, *_strides4(x),
            row_weight, row_weight.stride(0), row_weight.stride(1), rb_t, srb,
            col_weight, col_weight.stride(0), col_weight.stride(1), cb_t, scb,
            buf, b, c, c_out, h, w,
            triton.cdiv(h, k["BLOCK_H"]), triton.cdiv(w, k["BLOCK_W"]), splits,
            HAS_RB=row_bias is not None, HAS_CB=col_bias is not None,
            DETERMINISTIC=deterministic, COMPUTE=compute, PREC=prec,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            **k,
        )  # fmt: skip

    cfg = _tuning.pick(key, configs, x.device, run, tune=not deterministic)
    run(cfg)
    d_fuse = _finish_sum(buffers(cfg)[0], deterministic)

    # Row and column weights: z = F_row^T g (along W) and F_col^T g (along H).
    d_rw, d_rb = _axis_wgrad(grad, x, 3, f_row, deterministic=deterministic)
    d_cw, d_cb = _axis_wgrad(grad, x, 2, f_col, deterministic=deterministic)
    return d_fuse, d_rw, d_rb, d_cw, d_cb


def _launch_axis_mix(x: Tensor, weight: Tensor, bias: Tensor | None, axis: int,
                     out: Tensor, *, transposed: bool) -> Tensor:  # fmt: skip
    b, c, h, w = x.shape
    if axis == 3:
        s_len, length = h, w
        sx = _strides4(x)
        sy = _strides4(out)
    else:
        s_len, length = w, h
        sx = (x.stride(0), x.stride(1), x.stride(3), x.stride(2))
        sy = (out.stride(0), out.stride(1), out.stride(3), out.stride(2))
    sw0, sw1 = weight.stride(0), weight.stride(1)
    if transposed:
        sw0, sw1 = sw1, sw0
    bias_t, sbias = _bias_args(bias, weight)
    compute = _compute_dtype(x.dtype)
    prec = _precision()

    def run(cfg: _tuning.Config) -> None:
        k = cfg.constexprs()
        n_q = triton.cdiv(c * s_len, k["BLOCK_Q"])
        axis_mix_kernel[(b * n_q,)](
            x, *sx, weight, sw0, sw1, bias_t, sbias, out, *sy,
            c, s_len, length, n_q,
            HAS_BIAS=bias is not None, COMPUTE=compute, PREC=prec,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            **k,
        )  # fmt: skip

    configs = _tuning.axis_mix_configs(length)
    key = ("axis_mix_kernel", c, c, h, w, x.dtype, prec, axis, bias is not None)
    run(_tuning.pick(key, configs, x.device, run))
    return out

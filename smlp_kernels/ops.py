"""The op layer: the public functions and the torch.library custom ops behind them.

Every call goes through here, whatever the backend::

    smlp_mix(...)                      checks the arguments, picks a backend
      -> torch.ops.smlp.mix_fwd        custom op: empty batches, dtype and memory format,
         (torch.ops.smlp.mix_bwd)      the device guard, then the backend's primitives; its
                                       autograd formula saves x and the parameters only

    bn_gelu_smlp_mix(...)              the same, with SPACH's BN -> GELU prologue applied to x
      -> torch.ops.smlp.mix_bn_gelu_fwd
         (torch.ops.smlp.mix_bn_gelu_bwd)

Each backend implements four primitives (:class:`smlp_kernels.registry.Backend`), and
optionally a fifth, ``mix_bn_gelu``; every backward is composed here, once, from them: the
input gradient is the forward primitive applied to the upstream gradient with transposed
weights and no biases, the weight gradients are the backend's reductions, and the
prologue's gradients are elementwise PyTorch on top of the mix's input gradient.

The custom ops have fake (meta) implementations, autograd formulas, vmap rules and FLOP
formulas, so they work under ``torch.compile(fullgraph=True)``, ``torch.export``,
``torch.jit.trace`` and ``FlopCounterMode``. The backend is an argument of the custom op,
chosen before the op is called, so a traced graph records which backend runs.

In eager code the public functions call the custom ops through setup_context-style
autograd Functions (``_Mix``, ``_MixBwd``, ``_MixBnGelu``, ``_AxisMix``, ``_AxisBwd``) with
JVP rules and generated vmap rules, whose derivatives are the same Functions again: so
torch.func's transforms, forward-mode AD and derivatives of any order work (see
"Transforms" below). While a call is being compiled, exported or traced, they call the
custom ops directly, as before.

Outputs: ``y`` and ``dx`` are channels_last when x is channels_last (and not also
contiguous), contiguous otherwise; parameter gradients are contiguous, in each parameter's
dtype.

Autocast: the public functions follow ``torch.autocast`` as ``nn.Linear`` does, except that
float32 parameters are not copied: under autocast for x's device (CPU or CUDA), x (unless
float64) is cast to the autocast dtype and the op computes in it, with float32 parameters
as they are (the backends take float32 parameters with a float16/bfloat16 x). The cast is
an ordinary differentiable ``x.to(dtype)``, so x's gradient comes back in x's own dtype and
each parameter's gradient in the parameter's dtype. The custom ops called directly have no
autocast policy: they compute in the dtypes they are given, and autocast is switched off
inside them so that a backend's own PyTorch calls (the reference's einsums) are never recast.
"""

import contextlib

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from . import flops
from ._config import is_deterministic
from ._validation import check_axis_mix_args, check_bn_gelu_smlp_mix_args, check_smlp_mix_args
from .reference import _bn_affine, _gelu_rounded
from .registry import Backend, get_backend, resolve_backend

__all__ = [
    "bn_gelu_smlp_mix",
    "col_mix",
    "row_mix",
    "smlp_mix",
]


def _memory_format(x: Tensor) -> torch.memory_format:
    """channels_last if x is laid out that way, else contiguous (the op's output layout)."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _empty(shape, like: Tensor, dtype: torch.dtype, fmt=torch.contiguous_format) -> Tensor:
    return torch.empty(shape, dtype=dtype, device=like.device, memory_format=fmt)


def _grad_dtype(param: Tensor | None, fallback: Tensor) -> torch.dtype:
    return (param if param is not None else fallback).dtype


def _finish(t: Tensor, dtype: torch.dtype, fmt=torch.contiguous_format) -> Tensor:
    return t.to(dtype).contiguous(memory_format=fmt)


# torch.autocast's device types that the backends run on; x on any other device is left alone
# (torch.is_autocast_enabled raises for device types without autocast, "meta" for one).
_AUTOCAST_DEVICE_TYPES = ("cpu", "cuda")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _autocast_dtype(x: object) -> torch.dtype | None:
    """The dtype autocast asks for x's device, or None when autocast does not apply to x.

    Like PyTorch's own autocast: float32, float16 and bfloat16 x are cast, float64 is not.
    Traceable: dynamo folds both queries into constants guarded on the autocast state.
    """
    if (
        not isinstance(x, Tensor)
        or x.is_nested
        or x.layout != torch.strided
        or x.dtype not in (torch.float32, *_LOW_PRECISION)
    ):
        return None  # left to the argument checks (or, float64, computed as it is)
    device_type = x.device.type
    if device_type not in _AUTOCAST_DEVICE_TYPES or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _autocast_param(t: object, dtype: torch.dtype) -> object:
    # float32 parameters stay float32 (the op takes them with a low-precision x, and their
    # gradients come back in float32 without a copy); a float16 parameter under bfloat16
    # autocast (or the reverse) is cast, as autocast would.
    if isinstance(t, Tensor) and t.dtype in _LOW_PRECISION and t.dtype != dtype:
        return t.to(dtype)
    return t


@contextlib.contextmanager
def _backend_call(x: Tensor):
    """The context every backend primitive runs in: x's GPU is the current device (the one
    device guard of the package: Triton and the CUDA launchers launch on the current device
    and its current stream), and autocast is off for x's device, so the backends compute in
    the dtypes the op layer hands them even when the caller (or the backward pass) runs
    under autocast."""
    device_type = x.device.type
    with contextlib.ExitStack() as stack:
        if device_type == "cuda":
            stack.enter_context(torch.cuda.device(x.device))
        if device_type in _AUTOCAST_DEVICE_TYPES and torch.is_autocast_enabled(device_type):
            stack.enter_context(torch.autocast(device_type, enabled=False))
        yield


def _fuse_blocks(fuse_weight: Tensor, channels: int) -> tuple[Tensor, Tensor, Tensor]:
    """F_id, F_row, F_col: the (C_out, C) column blocks of fuse_weight, as views."""
    return fuse_weight.split(channels, dim=1)


def _mix_grads(be: Backend, g: Tensor, x_mixed: Tensor, row_weight, row_bias, col_weight,
               col_bias, fuse_weight) -> tuple[Tensor, ...]:  # fmt: skip
    """The fused mix's gradients from the backend's primitives, before any cast:
    (dx, d_fuse, d_rw, d_rb, d_cw, d_cb), given g in x's dtype and the mix's input x_mixed
    (x, or the prologue's output)."""
    f_blocks = _fuse_blocks(fuse_weight, x_mixed.shape[1])
    return be.mix_grads(g, x_mixed, row_weight, row_bias, col_weight, col_bias, *f_blocks,
                        is_deterministic())  # fmt: skip


def _zero_mix_grads(x: Tensor, row_weight, col_weight, fuse_weight) -> tuple[Tensor, ...]:
    """:func:`_mix_grads` of an empty batch: an empty dx and all-zero parameter gradients."""
    d_fuse, d_rw, d_cw = map(torch.zeros_like, (fuse_weight, row_weight, col_weight))
    d_rb, d_cb = row_weight.new_zeros(row_weight.shape[0]), col_weight.new_zeros(x.shape[2])
    return torch.zeros_like(x), d_fuse, d_rw, d_rb, d_cw, d_cb


def _finish_weight_grads(d_fuse, d_rw, d_rb, d_cw, d_cb, row_weight, row_bias, col_weight,
                         col_bias, fuse_weight) -> tuple[Tensor, ...]:  # fmt: skip
    """The weight gradients in each parameter's dtype, in the ops' order: row weight, row
    bias, column weight, column bias, fuse weight."""
    return (
        _finish(d_rw, row_weight.dtype),
        _finish(d_rb, _grad_dtype(row_bias, row_weight)),
        _finish(d_cw, col_weight.dtype),
        _finish(d_cb, _grad_dtype(col_bias, col_weight)),
        _finish(d_fuse, fuse_weight.dtype),
    )


def _empty_weight_grads(x, row_weight, row_bias, col_weight, col_bias, fuse_weight):
    """Uninitialised weight gradients as :func:`_finish_weight_grads` returns them (the fake
    implementations' outputs)."""
    w, h = row_weight.shape[0], col_weight.shape[0]
    return (
        _empty(row_weight.shape, x, row_weight.dtype),
        _empty((w,), x, _grad_dtype(row_bias, row_weight)),
        _empty(col_weight.shape, x, col_weight.dtype),
        _empty((h,), x, _grad_dtype(col_bias, col_weight)),
        _empty(fuse_weight.shape, x, fuse_weight.dtype),
    )


# --------------------------------------------------------------------------------------------
# smlp::mix_fwd and smlp::mix_bwd
# --------------------------------------------------------------------------------------------


# The ops' schemas, written out: the arguments of smlp_mix, then the backend's name.
_MIX_ARGS = (
    "Tensor x, Tensor row_weight, Tensor? row_bias, Tensor col_weight, Tensor? col_bias, "
    "Tensor fuse_weight, str backend"
)


@torch.library.custom_op("smlp::mix_fwd", mutates_args=(), schema=f"({_MIX_ARGS}) -> Tensor")
def _mix_fwd(x, row_weight, row_bias, col_weight, col_bias, fuse_weight, backend) -> Tensor:
    check_smlp_mix_args(x, row_weight, row_bias, col_weight, col_bias, fuse_weight)
    b, _, h, w = x.shape
    fmt = _memory_format(x)
    if b == 0:
        return _empty((0, fuse_weight.shape[0], h, w), x, x.dtype, fmt)
    with _backend_call(x):
        y = get_backend(backend).mix(
            x, row_weight, row_bias, col_weight, col_bias, *_fuse_blocks(fuse_weight, x.shape[1])
        )
        return _finish(y, x.dtype, fmt)


@_mix_fwd.register_fake
def _(x, row_weight, row_bias, col_weight, col_bias, fuse_weight, backend):
    check_smlp_mix_args(x, row_weight, row_bias, col_weight, col_bias, fuse_weight)
    b, _, h, w = x.shape
    return _empty((b, fuse_weight.shape[0], h, w), x, x.dtype, _memory_format(x))


@torch.library.custom_op(
    "smlp::mix_bwd",
    mutates_args=(),
    schema=f"(Tensor grad, {_MIX_ARGS}) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
)
def _mix_bwd(grad, x, row_weight, row_bias, col_weight, col_bias, fuse_weight, backend):
    check_smlp_mix_args(x, row_weight, row_bias, col_weight, col_bias, fuse_weight)
    fmt = _memory_format(x)
    params = (row_weight, row_bias, col_weight, col_bias, fuse_weight)
    if x.shape[0] == 0:
        dx, *wgrads = _zero_mix_grads(x, row_weight, col_weight, fuse_weight)
    else:
        with _backend_call(x):
            dx, *wgrads = _mix_grads(get_backend(backend), grad.to(x.dtype), x, *params)
    return (_finish(dx, x.dtype, fmt), *_finish_weight_grads(*wgrads, *params))


@_mix_bwd.register_fake
def _(grad, x, row_weight, row_bias, col_weight, col_bias, fuse_weight, backend):
    check_smlp_mix_args(x, row_weight, row_bias, col_weight, col_bias, fuse_weight)
    return (
        _empty(x.shape, x, x.dtype, _memory_format(x)),
        *_empty_weight_grads(x, row_weight, row_bias, col_weight, col_bias, fuse_weight),
    )


def _mix_setup_context(ctx, inputs, output) -> None:
    x, row_weight, row_bias, col_weight, col_bias, fuse_weight, backend = inputs
    # Only x and the parameters: r and k are recomputed in the backward.
    ctx.save_for_backward(x, row_weight, row_bias, col_weight, col_bias, fuse_weight)
    ctx.backend = backend


def _mix_backward(ctx, grad: Tensor):
    x, row_weight, row_bias, col_weight, col_bias, fuse_weight = ctx.saved_tensors
    grads = torch.ops.smlp.mix_bwd(
        grad, x, row_weight, row_bias, col_weight, col_bias, fuse_weight, ctx.backend
    )
    wanted = ctx.needs_input_grad
    return (*(g if wanted[i] else None for i, g in enumerate(grads)), None)


_mix_fwd.register_autograd(_mix_backward, setup_context=_mix_setup_context)


@register_flop_formula(torch.ops.smlp.mix_fwd)
def _mix_fwd_flop(x_shape, rw_shape, rb_shape, cw_shape, cb_shape, fw_shape, *args, **kwargs):
    b, c, h, w = x_shape
    return flops.smlp_mix_flops(b, c, fw_shape[0], h, w)


@register_flop_formula(torch.ops.smlp.mix_bwd)
def _mix_bwd_flop(g_shape, x_shape, rw_shape, rb_shape, cw_shape, cb_shape, fw_shape, *a, **kw):
    b, c, h, w = x_shape
    return flops.smlp_mix_bwd_flops(b, c, fw_shape[0], h, w)


# --------------------------------------------------------------------------------------------
# smlp::mix_bn_gelu_fwd and smlp::mix_bn_gelu_bwd: the mix of gelu(x * scale + shift)
# --------------------------------------------------------------------------------------------


# The arguments of bn_gelu_smlp_mix, then the backend's name.
_MIX_BN_GELU_ARGS = (
    "Tensor x, Tensor scale, Tensor shift, Tensor row_weight, Tensor? row_bias, "
    "Tensor col_weight, Tensor? col_bias, Tensor fuse_weight, str backend"
)


@torch.library.custom_op(
    "smlp::mix_bn_gelu_fwd", mutates_args=(), schema=f"({_MIX_BN_GELU_ARGS}) -> Tensor"
)
def _mix_bn_gelu_fwd(
    x, scale, shift, row_weight, row_bias, col_weight, col_bias, fuse_weight, backend
) -> Tensor:
    check_bn_gelu_smlp_mix_args(
        x, scale, shift, row_weight, row_bias, col_weight, col_bias, fuse_weight
    )
    b, _, h, w = x.shape
    fmt = _memory_format(x)
    if b == 0:
        return _empty((0, fuse_weight.shape[0], h, w), x, x.dtype, fmt)
    with _backend_call(x):
        y = get_backend(backend).mix_bn_gelu(
            x, scale, shift, row_weight, row_bias, col_weight, col_bias,
            *_fuse_blocks(fuse_weight, x.shape[1]),
        )  # fmt: skip
        return _finish(y, x.dtype, fmt)


@_mix_bn_gelu_fwd.register_fake
def _(x, scale, shift, row_weight, row_bias, col_weight, col_bias, fuse_weight, backend):
    check_bn_gelu_smlp_mix_args(
        x, scale, shift, row_weight, row_bias, col_weight, col_bias, fuse_weight
    )
    b, _, h, w = x.shape
    return _empty((b, fuse_weight.shape[0], h, w), x, x.dtype, _memory_format(x))


@torch.library.custom_op(
    "smlp::mix_bn_gelu_bwd",
    mutates_args=(),
    schema=f"(Tensor grad, {_MIX_BN_GELU_ARGS}) -> "
    "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
)
def _mix_bn_gelu_bwd(
    grad, x, scale, shift, row_weight, row_bias, col_weight, col_bias, fuse_weight, backend
):
    """(dx, d_scale, d_shift, d_row_weight, d_row_bias, d_col_weight, d_col_bias, d_fuse).

    With u = x * scale + shift (float32, float64 for float64 x) and x' = gelu(u) rounded to
    x's dtype, the forward is mix(x'); so dx' is the mix's input gradient, the weight
    gradients are mix_wgrad of x' (recomputed), and with dg = dx' * gelu'(u):
    dx = dg * scale, d_scale = sum_{b,h,w} dg * x, d_shift = sum_{b,h,w} dg.
    """
    check_bn_gelu_smlp_mix_args(
        x, scale, shift, row_weight, row_bias, col_weight, col_bias, fuse_weight
    )
    fmt = _memory_format(x)
    params = (row_weight, row_bias, col_weight, col_bias, fuse_weight)
    if x.shape[0] == 0:
        dx, *wgrads = _zero_mix_grads(x, row_weight, col_weight, fuse_weight)
        d_scale, d_shift = torch.zeros_like(scale), torch.zeros_like(shift)
    else:
        with _backend_call(x):
            u = _bn_affine(x, scale, shift)  # float32 (float64 for float64 x)
            x_act = _gelu_rounded(u, x.dtype)  # reference.bn_gelu(x, scale, shift)
            dx_act, *wgrads = _mix_grads(get_backend(backend), grad.to(x.dtype), x_act, *params)
            del x_act
            # dL/du: PyTorch's own GELU derivative (erf form), in u's dtype.
            dg = torch.ops.aten.gelu_backward(dx_act.to(u.dtype), u)
            del u, dx_act
            dx = dg * scale.to(dg.dtype)[:, None, None]
            d_scale = (dg * x.to(dg.dtype)).sum(dim=(0, 2, 3))
            d_shift = dg.sum(dim=(0, 2, 3))
    return (
        _finish(dx, x.dtype, fmt),
        _finish(d_scale, scale.dtype),
        _finish(d_shift, shift.dtype),
        *_finish_weight_grads(*wgrads, *params),
    )


@_mix_bn_gelu_bwd.register_fake
def _(grad, x, scale, shift, row_weight, row_bias, col_weight, col_bias, fuse_weight, backend):
    check_bn_gelu_smlp_mix_args(
        x, scale, shift, row_weight, row_bias, col_weight, col_bias, fuse_weight
    )
    return (
        _empty(x.shape, x, x.dtype, _memory_format(x)),
        _empty(scale.shape, x, scale.dtype),
        _empty(shift.shape, x, shift.dtype),
        *_empty_weight_grads(x, row_weight, row_bias, col_weight, col_bias, fuse_weight),
    )


def _mix_bn_gelu_setup_context(ctx, inputs, output) -> None:
    *tensors, backend = inputs
    # x, scale, shift and the parameters only: u, gelu(u), r and k are recomputed.
    ctx.save_for_backward(*tensors)
    ctx.backend = backend


def _mix_bn_gelu_backward(ctx, grad: Tensor):
    grads = torch.ops.smlp.mix_bn_gelu_bwd(grad, *ctx.saved_tensors, ctx.backend)
    wanted = ctx.needs_input_grad
    return (*(g if wanted[i] else None for i, g in enumerate(grads)), None)


_mix_bn_gelu_fwd.register_autograd(_mix_bn_gelu_backward, setup_context=_mix_bn_gelu_setup_context)


@register_flop_formula(torch.ops.smlp.mix_bn_gelu_fwd)
def _mix_bn_gelu_fwd_flop(x_shape, sc_shape, sh_shape, rw, rb, cw, cb, fw_shape, *a, **kw):
    b, c, h, w = x_shape
    return flops.bn_gelu_smlp_mix_flops(b, c, fw_shape[0], h, w)


@register_flop_formula(torch.ops.smlp.mix_bn_gelu_bwd)
def _mix_bn_gelu_bwd_flop(g_shape, x_shape, sc, sh, rw, rb, cw, cb, fw_shape, *a, **kw):
    b, c, h, w = x_shape
    return flops.bn_gelu_smlp_mix_bwd_flops(b, c, fw_shape[0], h, w)


# --------------------------------------------------------------------------------------------
# smlp::row_mix_fwd/bwd and smlp::col_mix_fwd/bwd
# --------------------------------------------------------------------------------------------


def _define_axis_mix(op: str):
    """Define the forward and backward custom ops of ``op`` ("row_mix" or "col_mix")."""
    axis = 3 if op == "row_mix" else 2  # the axis the op mixes: W or H

    @torch.library.custom_op(f"smlp::{op}_fwd", mutates_args=())
    def fwd(x: Tensor, weight: Tensor, bias: Tensor | None, backend: str) -> Tensor:
        check_axis_mix_args(op, x, weight, bias)
        fmt = _memory_format(x)
        if x.shape[0] == 0:
            return _empty(x.shape, x, x.dtype, fmt)
        with _backend_call(x):
            return _finish(get_backend(backend).axis_mix(x, weight, bias, axis), x.dtype, fmt)

    @fwd.register_fake
    def _(x, weight, bias, backend):
        check_axis_mix_args(op, x, weight, bias)
        return _empty(x.shape, x, x.dtype, _memory_format(x))

    @torch.library.custom_op(f"smlp::{op}_bwd", mutates_args=())
    def bwd(
        grad: Tensor,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,  # only its dtype is used: the bias gradient's
        backend: str,
    ) -> tuple[Tensor, Tensor, Tensor]:
        check_axis_mix_args(op, x, weight, bias)
        fmt = _memory_format(x)
        if x.shape[0] == 0:
            dx, d_w = torch.zeros_like(x), torch.zeros_like(weight)
            d_b = weight.new_zeros(x.shape[axis])
        else:
            be = get_backend(backend)
            with _backend_call(x):
                g = grad.to(x.dtype)
                dx = be.axis_mix(g, weight.t(), None, axis)
                d_w, d_b = be.axis_wgrad(g, x, axis, is_deterministic())
        return (
            _finish(dx, x.dtype, fmt),
            _finish(d_w, weight.dtype),
            _finish(d_b, _grad_dtype(bias, weight)),
        )

    @bwd.register_fake
    def _(grad, x, weight, bias, backend):
        check_axis_mix_args(op, x, weight, bias)
        return (
            _empty(x.shape, x, x.dtype, _memory_format(x)),
            _empty(weight.shape, x, weight.dtype),
            _empty((weight.shape[0],), x, _grad_dtype(bias, weight)),
        )

    def setup_context(ctx, inputs, output) -> None:
        x, weight, bias, backend = inputs
        ctx.save_for_backward(x, weight, bias)
        ctx.backend = backend

    def backward(ctx, grad: Tensor):
        grads = bwd_op(grad, *ctx.saved_tensors, ctx.backend)
        wanted = ctx.needs_input_grad
        return (*(g if wanted[i] else None for i, g in enumerate(grads)), None)

    fwd.register_autograd(backward, setup_context=setup_context)

    # Traced code calls the registered ops (torch.ops.smlp.*), which dynamo understands.
    fwd_op = getattr(torch.ops.smlp, f"{op}_fwd")
    bwd_op = getattr(torch.ops.smlp, f"{op}_bwd")

    @register_flop_formula(fwd_op)
    def _(x_shape, *args, **kwargs):
        b, c, h, w = x_shape
        return flops.axis_mix_flops(b, c, h, w, x_shape[axis])

    @register_flop_formula(bwd_op)
    def _(g_shape, x_shape, *args, **kwargs):
        b, c, h, w = x_shape
        return flops.axis_mix_bwd_flops(b, c, h, w, x_shape[axis])


_define_axis_mix("row_mix")
_define_axis_mix("col_mix")


# --------------------------------------------------------------------------------------------
# Transforms: vmap rules for every custom op, and the autograd Functions the public functions
# call (setup_context style, with jvp and generated vmap rules), so that torch.func.grad, vjp,
# jacrev, jacfwd, jvp, vmap and double backward all work.
# --------------------------------------------------------------------------------------------
#
# The op is linear in x and in each weight, so every derivative is the same op again:
#
#   JVP of smlp_mix at (x, θ) in direction (tx, tθ), three forward calls:
#     mix(tx, rw, -, cw, -, F) + mix(x, trw, trb, tcw, tcb, [0 | F_row | F_col]) + mix(x, θ\F, tF)
#   <g, JVP(v)> is <v, mix_bwd(g, x, θ)>, so the double backward of mix_bwd given v is
#     d g = JVP(v) (three forward calls), and
#     d (x, θ) = the gradients of the three terms of <g, JVP(v)>: three calls of mix_bwd.
#   The JVP of mix_bwd in direction (tg, tx, tθ) is mix_bwd(tg, x, θ) plus the same three
#   mix_bwd calls with v = (tx, tθ).
#
# Each of those calls goes through the Functions below, so derivatives of any order compose.


def _wide(dtype: torch.dtype) -> torch.dtype:
    """The dtype the vmap fallbacks compute in: float32 for 16-bit x, else x's dtype."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def _cast_opt(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dtype)


def _fuse_transposed(fuse_weight: Tensor, channels: int) -> Tensor:
    """(C, 3 C_out): ``[F_id^T | F_row^T | F_col^T]``, the fuse weight of the input gradient."""
    return torch.cat([f.t() for f in _fuse_blocks(fuse_weight, channels)], dim=1)


def _fold(t: Tensor, dim: int) -> Tensor:
    """t with its vmapped dimension moved to the front and merged into the batch dimension."""
    return t.movedim(dim, 0).flatten(0, 1)


def _front(t: Tensor | None, dim: int | None, n: int) -> Tensor | None:
    """t with its vmapped dimension first; an unbatched t expanded (no copy) to n members."""
    if t is None:
        return None
    return t.unsqueeze(0).expand(n, *t.shape) if dim is None else t.movedim(dim, 0)


def _all_front(in_dims, args, n: int) -> list:
    return [
        _front(t, d, n) if isinstance(t, Tensor) else t for t, d in zip(args, in_dims, strict=True)
    ]


# The vmap rules' fallbacks: the reference formulas written with an explicit leading member
# dimension n (batched einsums: one PyTorch call per term, no loop over the members). They
# compute in float32 for 16-bit x and return each op's dtypes. (A vmap rule cannot call
# torch.vmap itself.)


def _bmix(x, rw, rb, cw, cb, fw) -> Tensor:
    """The mix of x (N, B, C, H, W) with per-member weights (N, ...), in x's dtype."""
    dt = x.dtype
    f_id, f_row, f_col = fw.to(dt).split(x.shape[2], dim=2)
    r, k = _baxis(x, rw, rb, 3), _baxis(x, cw, cb, 2)
    return (
        torch.einsum("noc,nbchw->nbohw", f_id, x)
        + torch.einsum("noc,nbchw->nbohw", f_row, r)
        + torch.einsum("noc,nbchw->nbohw", f_col, k)
    )


def _baxis(x, weight, bias, axis: int) -> Tensor:
    dt = x.dtype
    if axis == 3:
        out = torch.einsum("nwv,nbchv->nbchw", weight.to(dt), x)
        return out if bias is None else out + bias.to(dt)[:, None, None, None, :]
    out = torch.einsum("nhu,nbcuw->nbchw", weight.to(dt), x)
    return out if bias is None else out + bias.to(dt)[:, None, None, :, None]


def _baxis_wgrad(g, x, axis: int) -> tuple[Tensor, Tensor]:
    if axis == 3:
        return torch.einsum("nbchw,nbchv->nwv", g, x), g.sum(dim=(1, 2, 3))
    return torch.einsum("nbchw,nbcuw->nhu", g, x), g.sum(dim=(1, 2, 4))


def _bmix_wgrads(g, x, rw, rb, cw, cb, fw) -> tuple[Tensor, ...]:
    """Per-member (d_rw, d_rb, d_cw, d_cb, d_fuse) in the parameters' dtypes."""
    dt = _wide(x.dtype)
    g, xw = g.to(dt), x.to(dt)
    _, f_row, f_col = fw.to(dt).split(x.shape[2], dim=2)
    d_rw, d_rb = _baxis_wgrad(torch.einsum("noc,nbohw->nbchw", f_row, g), xw, 3)
    d_cw, d_cb = _baxis_wgrad(torch.einsum("noc,nbohw->nbchw", f_col, g), xw, 2)
    parts = (xw, _baxis(xw, rw, rb, 3), _baxis(xw, cw, cb, 2))
    d_fuse = torch.cat([torch.einsum("nbohw,nbchw->noc", g, t) for t in parts], dim=2)
    return (
        d_rw.to(rw.dtype),
        d_rb.to(_grad_dtype(rb, rw)),
        d_cw.to(cw.dtype),
        d_cb.to(_grad_dtype(cb, cw)),
        d_fuse.to(fw.dtype),
    )


def _bmix_dx(g, x, rw, cw, fw) -> Tensor:
    """The per-member input gradient: the mix of g with transposed weights, in x's dtype."""
    dt = _wide(x.dtype)
    f_t = torch.cat([f.transpose(1, 2) for f in fw.split(x.shape[2], dim=2)], dim=2)
    return _bmix(g.to(dt), rw.transpose(1, 2), None, cw.transpose(1, 2), None, f_t).to(x.dtype)


def _bmix_fwd(x, rw, rb, cw, cb, fw, backend=None) -> Tensor:
    return _bmix(x.to(_wide(x.dtype)), rw, rb, cw, cb, fw).to(x.dtype)


def _bmix_bwd(g, x, rw, rb, cw, cb, fw, backend=None) -> tuple[Tensor, ...]:
    return (_bmix_dx(g, x, rw, cw, fw), *_bmix_wgrads(g, x, rw, rb, cw, cb, fw))


def _bbn_affine(x, scale, shift) -> Tensor:
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.to(dt) * scale.to(dt)[:, None, :, None, None] + shift.to(dt)[:, None, :, None, None]


def _bmix_bn_gelu_fwd(x, scale, shift, *params_and_backend) -> Tensor:
    x_act = _gelu_rounded(_bbn_affine(x, scale, shift), x.dtype)
    return _bmix_fwd(x_act, *params_and_backend)


def _bmix_bn_gelu_bwd(g, x, scale, shift, *params_and_backend) -> tuple[Tensor, ...]:
    u = _bbn_affine(x, scale, shift)
    dx_act, *wgrads = _bmix_bwd(g, _gelu_rounded(u, x.dtype), *params_and_backend)
    dg = torch.ops.aten.gelu_backward(dx_act.to(u.dtype), u)
    return (
        (dg * scale.to(dg.dtype)[:, None, :, None, None]).to(x.dtype),
        (dg * x.to(dg.dtype)).sum(dim=(1, 3, 4)).to(scale.dtype),
        dg.sum(dim=(1, 3, 4)).to(shift.dtype),
        *wgrads,
    )


def _vmap_fallback(fn, info, in_dims, args):
    out = fn(*_all_front(in_dims, args, info.batch_size))
    return out, (0 if isinstance(out, Tensor) else (0,) * len(out))


def _mix_fwd_vmap(info, in_dims, x, row_weight, row_bias, col_weight, col_bias, fuse_weight,
                  backend):  # fmt: skip
    """vmap of smlp::mix_fwd. x batched, weights shared: the members fold into the batch (one
    call). Only fuse_weight batched (an ensemble over one x): the members' fuse weights stack
    along C_out (one call). Otherwise the batched reference formula."""
    n = info.batch_size
    bx, brw, brb, bcw, bcb, bfw, _ = in_dims
    args = (x, row_weight, row_bias, col_weight, col_bias, fuse_weight, backend)
    if brw is None and brb is None and bcw is None and bcb is None:
        if bfw is None:
            y = torch.ops.smlp.mix_fwd(_fold(x, bx), *args[1:])
            return y.unflatten(0, (n, -1)), 0
        if bx is None:
            members = fuse_weight.movedim(bfw, 0)  # (N, C_out, 3C)
            y = torch.ops.smlp.mix_fwd(x, *args[1:5], members.flatten(0, 1), backend)
            return y.unflatten(1, (n, members.shape[1])), 1
    return _vmap_fallback(_bmix_fwd, info, in_dims, args)


def _mix_bwd_vmap(info, in_dims, grad, x, row_weight, row_bias, col_weight, col_bias,
                  fuse_weight, backend):  # fmt: skip
    """vmap of smlp::mix_bwd. Weights shared: dx is the forward with transposed weights, the
    members folded into the batch (one call; one call in all when grad is shared); the
    per-member weight gradients, reductions that must not sum over the members, are the
    batched reference formula. A weight batched: the batched reference formula."""
    n = info.batch_size
    bg, _, *bp, _ = in_dims
    params = (row_weight, row_bias, col_weight, col_bias, fuse_weight)
    args = (grad, x, *params, backend)
    if any(d is not None for d in bp):
        return _vmap_fallback(_bmix_bwd, info, in_dims, args)
    f_t = _fuse_transposed(fuse_weight, fuse_weight.shape[1] // 3)
    g = grad.to(x.dtype)
    rw_t, cw_t = row_weight.t(), col_weight.t()
    if bg is None:
        dx, dx_dim = torch.ops.smlp.mix_fwd(g, rw_t, None, cw_t, None, f_t, backend), None
    else:
        dx = torch.ops.smlp.mix_fwd(_fold(g, bg), rw_t, None, cw_t, None, f_t, backend)
        dx, dx_dim = dx.unflatten(0, (n, -1)), 0
    wgrads = _bmix_wgrads(*_all_front(in_dims[:7], args[:7], n))
    return (dx, *wgrads), (dx_dim, 0, 0, 0, 0, 0)


def _mix_bn_gelu_fwd_vmap(info, in_dims, x, scale, shift, *params_and_backend):
    """vmap of smlp::mix_bn_gelu_fwd, as :func:`_mix_fwd_vmap`: x batched alone folds into
    the batch, fuse_weight batched alone stacks along C_out (one call each); otherwise the
    batched reference formula."""
    n = info.batch_size
    *params, fuse_weight, backend = params_and_backend
    if all(d is None for d in in_dims[1:7]):
        if in_dims[7] is None:
            y = torch.ops.smlp.mix_bn_gelu_fwd(_fold(x, in_dims[0]), scale, shift,
                                               *params_and_backend)  # fmt: skip
            return y.unflatten(0, (n, -1)), 0
        if in_dims[0] is None:
            members = fuse_weight.movedim(in_dims[7], 0)  # (N, C_out, 3C)
            y = torch.ops.smlp.mix_bn_gelu_fwd(x, scale, shift, *params,
                                               members.flatten(0, 1), backend)  # fmt: skip
            return y.unflatten(1, (n, members.shape[1])), 1
    return _vmap_fallback(_bmix_bn_gelu_fwd, info, in_dims, (x, scale, shift, *params_and_backend))


def _mix_bn_gelu_bwd_vmap(info, in_dims, *args):
    """vmap of smlp::mix_bn_gelu_bwd: the batched reference formula (the public function's
    derivatives under transforms go through smlp::mix_bwd instead)."""
    return _vmap_fallback(_bmix_bn_gelu_bwd, info, in_dims, args)


torch.library.register_vmap("smlp::mix_fwd", _mix_fwd_vmap)
torch.library.register_vmap("smlp::mix_bwd", _mix_bwd_vmap)
torch.library.register_vmap("smlp::mix_bn_gelu_fwd", _mix_bn_gelu_fwd_vmap)
torch.library.register_vmap("smlp::mix_bn_gelu_bwd", _mix_bn_gelu_bwd_vmap)


def _register_axis_vmap(op: str) -> None:
    axis = 3 if op == "row_mix" else 2
    fwd_op = getattr(torch.ops.smlp, f"{op}_fwd")

    def bfwd(x, weight, bias, backend=None):
        return _baxis(x.to(_wide(x.dtype)), weight, bias, axis).to(x.dtype)

    def bwgrads(g, x, weight, bias):
        dt = _wide(x.dtype)
        d_w, d_b = _baxis_wgrad(g.to(dt), x.to(dt), axis)
        return d_w.to(weight.dtype), d_b.to(_grad_dtype(bias, weight))

    def bbwd(g, x, weight, bias, backend=None):
        dx = _baxis(g.to(_wide(x.dtype)), weight.transpose(1, 2), None, axis).to(x.dtype)
        return (dx, *bwgrads(g, x, weight, bias))

    def fwd_vmap(info, in_dims, x, weight, bias, backend):
        n = info.batch_size
        if in_dims[1] is None and in_dims[2] is None:
            y = fwd_op(_fold(x, in_dims[0]), weight, bias, backend)
            return y.unflatten(0, (n, -1)), 0
        return _vmap_fallback(bfwd, info, in_dims, (x, weight, bias, backend))

    def bwd_vmap(info, in_dims, grad, x, weight, bias, backend):
        n = info.batch_size
        bg, _, bw, bb, _ = in_dims
        args = (grad, x, weight, bias, backend)
        if bw is not None or bb is not None:
            return _vmap_fallback(bbwd, info, in_dims, args)
        g = grad.to(x.dtype)
        if bg is None:
            dx, dx_dim = fwd_op(g, weight.t(), None, backend), None
        else:
            dx = fwd_op(_fold(g, bg), weight.t(), None, backend)
            dx, dx_dim = dx.unflatten(0, (n, -1)), 0
        wgrads = bwgrads(*_all_front(in_dims[:4], args[:4], n))
        return (dx, *wgrads), (dx_dim, 0, 0)

    torch.library.register_vmap(f"smlp::{op}_fwd", fwd_vmap)
    torch.library.register_vmap(f"smlp::{op}_bwd", bwd_vmap)


_register_axis_vmap("row_mix")
_register_axis_vmap("col_mix")


def _traced() -> bool:
    """True while torch.compile, torch.export or torch.jit.trace records the call: the
    public functions then call the custom op itself, so that the graph holds smlp::* ops
    (dynamo cannot trace an autograd.Function with a jvp, and jit.trace would record an
    opaque PythonOp); the custom op's own autograd formula serves there."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def _zeros_like_opt(t: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if t is None else t


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


def _masked(grads, needs) -> tuple:
    """grads with None where autograd needs none (``needs`` may be longer: non-tensors)."""
    return tuple(g if need else None for g, need in zip(grads, needs[: len(grads)], strict=True))


def _side_fuse(fuse_weight: Tensor, channels: int, row: bool, col: bool) -> Tensor:
    """``[0 | F_row | F_col]`` with the blocks of a side left out zeroed as well."""
    f_id, f_row, f_col = _fuse_blocks(fuse_weight, channels)
    zero = torch.zeros_like(f_id)
    return torch.cat([zero, f_row if row else zero, f_col if col else zero], dim=1)


def _mix_jvp(x, params, tangents, backend) -> Tensor:
    """d/dt smlp_mix(x + t tx, θ + t tθ) at t = 0 (None tangents are zero): at most three
    forward calls."""
    rw, rb, cw, cb, fw = params
    tx, trw, trb, tcw, tcb, tfw = tangents
    out = None
    if tx is not None:
        out = _add(out, _Mix.apply(tx, rw, None, cw, None, fw, backend))
    row, col = trw is not None or trb is not None, tcw is not None or tcb is not None
    if row or col:
        f_sides = _side_fuse(fw, x.shape[1], row, col)
        term = _Mix.apply(x, _zeros_like_opt(trw, rw), trb, _zeros_like_opt(tcw, cw), tcb,
                          f_sides, backend)  # fmt: skip
        out = _add(out, term)
    if tfw is not None:
        out = _add(out, _Mix.apply(x, rw, rb, cw, cb, tfw, backend))
    if out is None:
        b, _, h, w = x.shape
        out = x.new_zeros((b, fw.shape[0], h, w))
    return out


def _mix_hvp(g, x, params, v, backend) -> list:
    """The gradients with respect to (x, rw, rb, cw, cb, fw) of ``<g, JVP(x, θ; v)>``, that
    is of ``<v, mix_bwd(g, x, θ)>`` (None where zero): at most three mix_bwd calls."""
    rw, rb, cw, cb, fw = params
    vx, vrw, vrb, vcw, vcb, vfw = v
    c = x.shape[1]
    out = [None] * 6
    if vx is not None:  # <g, mix(vx, rw, -, cw, -, fw)>: reaches rw, cw, fw
        _, d_rw, _, d_cw, _, d_fw = _MixBwd.apply(g, vx, rw, None, cw, None, fw, backend)
        out[1], out[3], out[5] = d_rw, d_cw, d_fw
    row, col = vrw is not None or vrb is not None, vcw is not None or vcb is not None
    if row or col:  # <g, mix(x, vrw, vrb, vcw, vcb, [0 | F_row | F_col])>: reaches x, fw
        f_sides = _side_fuse(fw, c, row, col)
        vrw, vcw = _zeros_like_opt(vrw, rw), _zeros_like_opt(vcw, cw)
        d_x, *_, d_sides = _MixBwd.apply(g, x, vrw, vrb, vcw, vcb, f_sides, backend)
        out[0] = d_x
        out[5] = _add(out[5], _side_fuse(d_sides, c, row, col))
    if vfw is not None:  # <g, mix(x, rw, rb, cw, cb, vfw)>: reaches x, rw, rb, cw, cb
        d_x, d_rw, d_rb, d_cw, d_cb, _ = _MixBwd.apply(g, x, rw, rb, cw, cb, vfw, backend)
        out[0], out[1], out[3] = _add(out[0], d_x), _add(out[1], d_rw), _add(out[3], d_cw)
        out[2] = d_rb if rb is not None else None
        out[4] = d_cb if cb is not None else None
    return out


def _saving_inputs(*extras: str):
    """The setup_context of the Functions below: every tensor input is saved for the backward
    and the JVP (nothing computed is kept: r, k and the prologue's activations are
    recomputed), the trailing non-tensor inputs become the ctx attributes ``extras``, and
    absent (co)tangents stay None rather than zeros."""

    def setup_context(ctx, inputs, output):
        n = len(inputs) - len(extras)
        ctx.save_for_backward(*inputs[:n])
        ctx.set_materialize_grads(False)
        ctx.save_for_forward(*inputs[:n])
        for name, value in zip(extras, inputs[n:], strict=True):
            setattr(ctx, name, value)

    return staticmethod(setup_context)


class _Mix(torch.autograd.Function):
    """smlp::mix_fwd with derivatives of every order and mode (see above)."""

    setup_context = _saving_inputs("backend")
    generate_vmap_rule = True

    @staticmethod
    def forward(x, row_weight, row_bias, col_weight, col_bias, fuse_weight, backend):
        return torch.ops.smlp.mix_fwd(
            x, row_weight, row_bias, col_weight, col_bias, fuse_weight, backend
        )

    @staticmethod
    def backward(ctx, grad):
        if grad is None:
            return (None,) * 7
        grads = _MixBwd.apply(grad, *ctx.saved_tensors, ctx.backend)
        return (*_masked(grads, ctx.needs_input_grad), None)

    @staticmethod
    def jvp(ctx, *tangents):
        x, *params = ctx.saved_tensors
        return _mix_jvp(x, params, tangents[:6], ctx.backend)


class _MixBwd(torch.autograd.Function):
    """smlp::mix_bwd, differentiable: its derivatives are :func:`_mix_jvp` (in the upstream
    gradient) and :func:`_mix_hvp` (in x and the parameters)."""

    setup_context = _saving_inputs("backend")
    generate_vmap_rule = True

    @staticmethod
    def forward(grad, x, row_weight, row_bias, col_weight, col_bias, fuse_weight, backend):
        return torch.ops.smlp.mix_bwd(
            grad, x, row_weight, row_bias, col_weight, col_bias, fuse_weight, backend
        )

    @staticmethod
    def backward(ctx, *v):
        grad, x, *params = ctx.saved_tensors
        needs = ctx.needs_input_grad
        d_grad = _mix_jvp(x, params, v, ctx.backend) if needs[0] else None
        rest = _mix_hvp(grad, x, params, v, ctx.backend) if any(needs[1:7]) else [None] * 6
        return (*_masked((d_grad, *rest), needs[:7]), None)

    @staticmethod
    def jvp(ctx, *tangents):
        grad, x, *params = ctx.saved_tensors
        rw, rb = params[0], params[1]
        tg, t = tangents[0], tangents[1:7]
        out = list(_mix_hvp(grad, x, params, t, ctx.backend))
        if tg is not None:
            out = [
                _add(a, b)
                for a, b in zip(out, _MixBwd.apply(tg, x, *params, ctx.backend), strict=True)
            ]
        cw = params[2]
        like = (x, rw, rw[:, 0], cw, cw[:, 0], params[4])
        dtypes = (x.dtype, rw.dtype, _grad_dtype(rb, rw), cw.dtype,
                  _grad_dtype(params[3], cw), params[4].dtype)  # fmt: skip
        return tuple(
            torch.zeros_like(lk, dtype=dt) if o is None else o
            for o, lk, dt in zip(out, like, dtypes, strict=True)
        )


def _bn_gelu_bwd_composed(grad, x, scale, shift, *params, backend):
    """smlp::mix_bn_gelu_bwd composed of differentiable pieces (:class:`_MixBwd` and
    PyTorch's GELU backward), for derivatives beyond the first."""
    u = _bn_affine(x, scale, shift)
    x_act = _gelu_rounded(u, x.dtype)
    dx_act, *wgrads = _MixBwd.apply(grad.to(x.dtype), x_act, *params, backend)
    dg = torch.ops.aten.gelu_backward(dx_act.to(u.dtype), u)
    return (
        (dg * scale.to(dg.dtype)[:, None, None]).to(x.dtype),
        (dg * x.to(dg.dtype)).sum(dim=(0, 2, 3)).to(scale.dtype),
        dg.sum(dim=(0, 2, 3)).to(shift.dtype),
        *wgrads,
    )


class _MixBnGelu(torch.autograd.Function):
    """smlp::mix_bn_gelu_fwd with derivatives of every order and mode: the first backward is
    smlp::mix_bn_gelu_bwd; a backward that must itself be differentiable, and the JVP, go
    through the mix's Functions at the recomputed ``gelu(x * scale + shift)``."""

    setup_context = _saving_inputs("backend")
    generate_vmap_rule = True

    @staticmethod
    def forward(x, scale, shift, row_weight, row_bias, col_weight, col_bias, fuse_weight,
                backend):  # fmt: skip
        return torch.ops.smlp.mix_bn_gelu_fwd(
            x, scale, shift, row_weight, row_bias, col_weight, col_bias, fuse_weight, backend
        )

    @staticmethod
    def backward(ctx, grad):
        if grad is None:
            return (None,) * 9
        if torch.is_grad_enabled():  # create_graph, or a torch.func transform
            grads = _bn_gelu_bwd_composed(grad, *ctx.saved_tensors, backend=ctx.backend)
        else:
            grads = torch.ops.smlp.mix_bn_gelu_bwd(grad, *ctx.saved_tensors, ctx.backend)
        return (*_masked(grads, ctx.needs_input_grad), None)

    @staticmethod
    def jvp(ctx, tx, tscale, tshift, *t_params):
        x, scale, shift, *params = ctx.saved_tensors
        u = _bn_affine(x, scale, shift)
        x_act = _gelu_rounded(u, x.dtype)
        t_act = None
        if tx is not None or tscale is not None or tshift is not None:
            dt = u.dtype
            tu = torch.zeros_like(u)
            if tx is not None:
                tu = tu + tx.to(dt) * scale.to(dt)[:, None, None]
            if tscale is not None:
                tu = tu + x.to(dt) * tscale.to(dt)[:, None, None]
            if tshift is not None:
                tu = tu + tshift.to(dt)[:, None, None]
            t_act = torch.ops.aten.gelu_backward(tu, u).to(x.dtype)
        return _mix_jvp(x_act, params, (t_act, *t_params[:5]), ctx.backend)


def _axis_ops(op: str):
    return getattr(torch.ops.smlp, f"{op}_fwd"), getattr(torch.ops.smlp, f"{op}_bwd")


def _axis_jvp(op, x, weight, tangents, backend) -> Tensor:
    """d/dt axis_mix(x + t tx, weight + t tw, bias + t tb): at most two calls."""
    tx, tw, tb = tangents
    out = None
    if tx is not None:
        out = _AxisMix.apply(tx, weight, None, op, backend)
    if tw is not None or tb is not None:
        out = _add(out, _AxisMix.apply(x, _zeros_like_opt(tw, weight), tb, op, backend))
    return torch.zeros_like(x) if out is None else out


def _axis_hvp(op, g, x, weight, v, backend) -> list:
    """Gradients with respect to (x, weight, bias) of ``<v, axis_bwd(g, x, weight)>``."""
    vx, vw, vb = v
    out = [None, None, None]
    if vx is not None:  # <g, axis(vx, weight)>: reaches weight
        out[1] = _AxisBwd.apply(g, vx, weight, None, op, backend)[1]
    if vw is not None or vb is not None:  # <g, axis(x, vw, vb)>: reaches x
        out[0] = _AxisBwd.apply(g, x, _zeros_like_opt(vw, weight), vb, op, backend)[0]
    return out


class _AxisMix(torch.autograd.Function):
    """smlp::row_mix_fwd or smlp::col_mix_fwd with derivatives of every order and mode."""

    setup_context = _saving_inputs("op", "backend")
    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, op, backend):
        return _axis_ops(op)[0](x, weight, bias, backend)

    @staticmethod
    def backward(ctx, grad):
        if grad is None:
            return (None,) * 5
        grads = _AxisBwd.apply(grad, *ctx.saved_tensors, ctx.op, ctx.backend)
        return (*_masked(grads, ctx.needs_input_grad), None, None)

    @staticmethod
    def jvp(ctx, tx, tw, tb, *_):
        x, weight, _bias = ctx.saved_tensors
        return _axis_jvp(ctx.op, x, weight, (tx, tw, tb), ctx.backend)


class _AxisBwd(torch.autograd.Function):
    """smlp::row_mix_bwd or smlp::col_mix_bwd, differentiable."""

    setup_context = _saving_inputs("op", "backend")
    generate_vmap_rule = True

    @staticmethod
    def forward(grad, x, weight, bias, op, backend):
        return _axis_ops(op)[1](grad, x, weight, bias, backend)

    @staticmethod
    def backward(ctx, *v):
        grad, x, weight, _ = ctx.saved_tensors
        needs = ctx.needs_input_grad
        d_grad = _axis_jvp(ctx.op, x, weight, v, ctx.backend) if needs[0] else None
        d_x, d_w, _ = _axis_hvp(ctx.op, grad, x, weight, v, ctx.backend)
        # The backward does not depend on the bias (only its gradient's dtype does).
        return (*_masked((d_grad, d_x, d_w), needs[:3]), None, None, None)

    @staticmethod
    def jvp(ctx, tg, tx, tw, tb, *_):
        grad, x, weight, bias = ctx.saved_tensors
        out = _axis_hvp(ctx.op, grad, x, weight, (tx, tw, tb), ctx.backend)
        if tg is not None:
            by_tg = _AxisBwd.apply(tg, x, weight, bias, ctx.op, ctx.backend)
            out = [_add(a, b) for a, b in zip(out, by_tg, strict=True)]
        like = (x, weight, weight[:, 0])
        dtypes = (x.dtype, weight.dtype, _grad_dtype(bias, weight))
        return tuple(
            torch.zeros_like(lk, dtype=dt) if o is None else o
            for o, lk, dt in zip(out, like, dtypes, strict=True)
        )


# The backward custom ops' own autograd formulas, the same as _MixBwd's and _AxisBwd's, so
# that double backward works on the custom ops called directly too (smlp::mix_bn_gelu_bwd
# has none: bn_gelu_smlp_mix differentiates its backward through the composition above).


def _bwd_op_setup_context(ctx, inputs, output) -> None:
    *tensors, backend = inputs
    ctx.save_for_backward(*tensors)
    ctx.backend = backend


def _mix_bwd_op_backward(ctx, *v):
    grad, x, *params = ctx.saved_tensors
    needs = ctx.needs_input_grad
    d_grad = _mix_jvp(x, params, v, ctx.backend) if needs[0] else None
    rest = _mix_hvp(grad, x, params, v, ctx.backend) if any(needs[1:7]) else [None] * 6
    return (*_masked((d_grad, *rest), needs[:7]), None)


_mix_bwd.register_autograd(_mix_bwd_op_backward, setup_context=_bwd_op_setup_context)


def _register_axis_bwd_autograd(op: str) -> None:
    def backward(ctx, *v):
        grad, x, weight, _ = ctx.saved_tensors
        needs = ctx.needs_input_grad
        d_grad = _axis_jvp(op, x, weight, v, ctx.backend) if needs[0] else None
        d_x, d_w, _ = _axis_hvp(op, grad, x, weight, v, ctx.backend)
        return (*_masked((d_grad, d_x, d_w), needs[:3]), None, None)

    torch.library.register_autograd(
        f"smlp::{op}_bwd", backward, setup_context=_bwd_op_setup_context
    )


_register_axis_bwd_autograd("row_mix")
_register_axis_bwd_autograd("col_mix")

# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def smlp_mix(
    x: Tensor,
    row_weight: Tensor,
    row_bias: Tensor | None,
    col_weight: Tensor,
    col_bias: Tensor | None,
    fuse_weight: Tensor,
    *,
    backend: str | None = None,
) -> Tensor:
    """The fused sMLP token mixing: row mix, column mix, identity and the 1x1 fuse.

    ``y = F_id x + F_row (row_mix(x)) + F_col (col_mix(x))`` with
    ``fuse_weight = [F_id | F_row | F_col]`` (SPACH's sMLPBlock after its BN and GELU).

    Args:
        x: (B, C, H, W), float16, bfloat16, float32 or float64; any strides. B may be 0.
        row_weight: (W, W), mixes the W tokens of each row (SPACH's ``proj_h``).
        row_bias: (W,) or None.
        col_weight: (H, H), mixes the H tokens of each column (SPACH's ``proh_w``).
        col_bias: (H,) or None.
        fuse_weight: (C_out, 3C), the 1x1 fuse over ``[x, row mix, column mix]``.
        backend: a name from :func:`smlp_kernels.backends`, or None to choose automatically
            (the environment variable ``SMLP_BACKEND`` can force one).

    Parameters have x's dtype or float32, on x's device; the op computes in x's dtype.
    Under ``torch.autocast`` for x's device, x (unless float64) is first cast to the autocast
    dtype; float32 parameters stay float32.

    Returns:
        (B, C_out, H, W) in x's dtype (the autocast dtype under autocast); channels_last if
        x is.
    """
    dtype = _autocast_dtype(x)
    if dtype is not None:
        x = x.to(dtype)
        row_weight, row_bias, col_weight, col_bias, fuse_weight = (
            _autocast_param(t, dtype)
            for t in (row_weight, row_bias, col_weight, col_bias, fuse_weight)
        )
    check_smlp_mix_args(x, row_weight, row_bias, col_weight, col_bias, fuse_weight)
    name = resolve_backend(backend, "mix", x, fuse_weight.shape[0])
    if _traced():
        return torch.ops.smlp.mix_fwd(
            x, row_weight, row_bias, col_weight, col_bias, fuse_weight, name
        )
    return _Mix.apply(x, row_weight, row_bias, col_weight, col_bias, fuse_weight, name)


def bn_gelu_smlp_mix(
    x: Tensor,
    scale: Tensor,
    shift: Tensor,
    row_weight: Tensor,
    row_bias: Tensor | None,
    col_weight: Tensor,
    col_bias: Tensor | None,
    fuse_weight: Tensor,
    *,
    backend: str | None = None,
) -> Tensor:
    """SPACH's whole sMLPBlock with its BatchNorm in eval form: :func:`smlp_mix` of
    ``x' = gelu(x * scale[c] + shift[c])`` (exact, erf GELU, as ``nn.GELU()``).

    For an eval-mode BatchNorm2d, ``scale = weight / sqrt(running_var + eps)`` and
    ``shift = bias - running_mean * scale`` (what :class:`smlp_kernels.nn.SparseMLP` passes
    in eval mode). Backends with ``fused_prologue = True`` apply the prologue inside the mix
    kernel; the others compute x' first and then the mix, with the same result.

    Args:
        x: (B, C, H, W), float16, bfloat16, float32 or float64; any strides. B may be 0.
        scale: (C,), in x's dtype or float32.
        shift: (C,), in x's dtype or float32.
        row_weight, row_bias, col_weight, col_bias, fuse_weight, backend: as in
            :func:`smlp_mix`.

    The prologue computes in float32 (float64 for a float64 x) and x' is rounded to x's
    dtype, where an unfused BN -> GELU -> ``smlp_mix`` in x's dtype rounds it; the mix then
    computes in x's dtype. Gradients reach x, scale, shift and every weight, each in its
    argument's dtype; the backward saves only x, scale, shift and the weights (x' is
    recomputed). Under ``torch.autocast`` as :func:`smlp_mix`: x (unless float64) is cast to
    the autocast dtype *before* the prologue; float32 scale, shift and weights stay float32.

    Returns:
        (B, C_out, H, W) in x's dtype (the autocast dtype under autocast); channels_last if
        x is.
    """
    dtype = _autocast_dtype(x)
    if dtype is not None:
        x = x.to(dtype)
        scale, shift, row_weight, row_bias, col_weight, col_bias, fuse_weight = (
            _autocast_param(t, dtype)
            for t in (scale, shift, row_weight, row_bias, col_weight, col_bias, fuse_weight)
        )
    check_bn_gelu_smlp_mix_args(
        x, scale, shift, row_weight, row_bias, col_weight, col_bias, fuse_weight
    )
    name = resolve_backend(backend, "mix", x, fuse_weight.shape[0])
    args = (x, scale, shift, row_weight, row_bias, col_weight, col_bias, fuse_weight, name)
    if _traced():
        return torch.ops.smlp.mix_bn_gelu_fwd(*args)
    return _MixBnGelu.apply(*args)


def _axis_mix(op: str, x: Tensor, weight: Tensor, bias: Tensor | None, backend: str | None):
    dtype = _autocast_dtype(x)
    if dtype is not None:
        x, weight, bias = x.to(dtype), _autocast_param(weight, dtype), _autocast_param(bias, dtype)
    check_axis_mix_args(op, x, weight, bias)
    name = resolve_backend(backend, op, x, x.shape[1])
    if _traced():
        return getattr(torch.ops.smlp, f"{op}_fwd")(x, weight, bias, name)
    return _AxisMix.apply(x, weight, bias, op, name)


def row_mix(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, *, backend: str | None = None
) -> Tensor:
    """Mix along W: ``out[b,c,h,w] = sum_v weight[w,v] x[b,c,h,v] + bias[w]``.

    x: (B, C, H, W); weight: (W, W); bias: (W,) or None. Returns (B, C, H, W) in x's dtype.
    Dtypes, devices, autocast and ``backend`` as in :func:`smlp_mix`.
    """
    return _axis_mix("row_mix", x, weight, bias, backend)


def col_mix(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, *, backend: str | None = None
) -> Tensor:
    """Mix along H: ``out[b,c,h,w] = sum_u weight[h,u] x[b,c,u,w] + bias[h]``, weight (H, H),
    bias (H,) or None; otherwise as :func:`row_mix`."""
    return _axis_mix("col_mix", x, weight, bias, backend)

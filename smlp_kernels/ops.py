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

The custom ops have fake (meta) implementations, autograd formulas and FLOP formulas, so
they work under ``torch.compile(fullgraph=True)``, ``torch.export``, ``torch.jit.trace`` and
``FlopCounterMode``. The backend is an argument of the custom op, chosen before the op is
called, so a traced graph records which backend runs.

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


def _mix_input_grad(be: Backend, g: Tensor, row_weight, col_weight, f_blocks) -> Tensor:
    """dx of the fused mix: the forward applied to g with transposed weights, no biases."""
    f_id, f_row, f_col = f_blocks
    return be.mix(g, row_weight.t(), None, col_weight.t(), None, f_id.t(), f_row.t(), f_col.t())


def _mix_grads(be: Backend, g: Tensor, x_mixed: Tensor, row_weight, row_bias, col_weight,
               col_bias, fuse_weight) -> tuple[Tensor, ...]:  # fmt: skip
    """The fused mix's gradients from the backend's primitives, before any cast:
    (dx, d_fuse, d_rw, d_rb, d_cw, d_cb), given g in x's dtype and the mix's input x_mixed
    (x, or the prologue's output)."""
    f_blocks = _fuse_blocks(fuse_weight, x_mixed.shape[1])
    dx = _mix_input_grad(be, g, row_weight, col_weight, f_blocks)
    wgrads = be.mix_wgrad(g, x_mixed, row_weight, row_bias, col_weight, col_bias, *f_blocks,
                          is_deterministic())  # fmt: skip
    return (dx, *wgrads)


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
    return torch.ops.smlp.mix_fwd(x, row_weight, row_bias, col_weight, col_bias, fuse_weight, name)


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
    return torch.ops.smlp.mix_bn_gelu_fwd(
        x, scale, shift, row_weight, row_bias, col_weight, col_bias, fuse_weight, name
    )


def _axis_mix(op: str, x: Tensor, weight: Tensor, bias: Tensor | None, backend: str | None):
    dtype = _autocast_dtype(x)
    if dtype is not None:
        x, weight, bias = x.to(dtype), _autocast_param(weight, dtype), _autocast_param(bias, dtype)
    check_axis_mix_args(op, x, weight, bias)
    name = resolve_backend(backend, op, x, x.shape[1])
    return getattr(torch.ops.smlp, f"{op}_fwd")(x, weight, bias, name)


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

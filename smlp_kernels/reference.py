"""Pure-PyTorch reference of the sMLP token mixing: the ground truth for every backend.

Shapes (README, The op), for ``x`` of shape ``(B, C, H, W)``:

* ``row_weight`` ``(W, W)``, ``row_bias`` ``(W,)``: the row mix, along W (SPACH's ``proj_h``);
* ``col_weight`` ``(H, H)``, ``col_bias`` ``(H,)``: the column mix, along H (SPACH's ``proh_w``);
* ``fuse_weight`` ``(C_out, 3 * C)``: the 1x1 fuse over ``[x, row mix, column mix]``,
  in that order (SPACH's ``fuse``).

::

    r[b,c,h,w] = sum_v row_weight[w,v] * x[b,c,h,v] + row_bias[w]
    k[b,c,h,w] = sum_u col_weight[h,u] * x[b,c,u,w] + col_bias[h]
    y[b,o,h,w] = sum_c F_id[o,c] x[b,c,h,w] + F_row[o,c] r[b,c,h,w] + F_col[o,c] k[b,c,h,w]

These functions compute in ``x``'s dtype (parameters are cast to it), accept any layout and
device, and do no argument checking: the public API in :mod:`smlp_kernels.ops` validates.
The explicit backward follows the identities of the README's Design notes and recomputes
``r`` and ``k`` from ``x``.

:func:`bn_gelu` is the prologue that SPACH's block applies before the mix, BatchNorm (as a
per-channel affine map, its eval-mode form) then exact GELU; :func:`bn_gelu_smlp_mix_ref` is
the prologue followed by the mix.

:func:`smlp_mix_spach_style` and :class:`SpachStyleSMLPBlock` compute the same thing the way
SPACH's ``sMLPBlock`` does (permute + 1x1 conv + cat + 1x1 conv); they are the independent
formulation in the tests and the eager baseline in benchmarks.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validation import SUPPORTED_DTYPES, check_size
from .registry import Backend

__all__ = [
    "AxisMixGrads",
    "ReferenceBackend",
    "SMLPMixGrads",
    "SpachStyleSMLPBlock",
    "bn_gelu",
    "bn_gelu_smlp_mix_ref",
    "col_mix_bwd_ref",
    "col_mix_ref",
    "row_mix_bwd_ref",
    "row_mix_ref",
    "smlp_mix_bwd_ref",
    "smlp_mix_ref",
    "smlp_mix_spach_style",
]


class SMLPMixGrads(NamedTuple):
    """Gradients of :func:`smlp_mix_ref` with respect to each of its tensor arguments."""

    x: Tensor  # (B, C, H, W)
    row_weight: Tensor  # (W, W)
    row_bias: Tensor  # (W,)
    col_weight: Tensor  # (H, H)
    col_bias: Tensor  # (H,)
    fuse_weight: Tensor  # (C_out, 3C)


class AxisMixGrads(NamedTuple):
    """Gradients of :func:`row_mix_ref` or :func:`col_mix_ref`."""

    x: Tensor  # (B, C, H, W)
    weight: Tensor  # (W, W) for the row mix, (H, H) for the column mix
    bias: Tensor  # (W,) or (H,)


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dtype)


def row_mix_ref(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Mix the W tokens of every row: ``out[b,c,h,w] = sum_v weight[w,v] x[b,c,h,v] + bias[w]``.

    x: (B, C, H, W); weight: (W, W); bias: (W,) or None. Returns (B, C, H, W) in x's dtype.
    """
    out = torch.einsum("wv,bchv->bchw", weight.to(x.dtype), x)
    if bias is not None:
        out = out + bias.to(x.dtype)
    return out


def col_mix_ref(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Mix the H tokens of every column: ``out[b,c,h,w] = sum_u weight[h,u] x[b,c,u,w] + bias[h]``.

    x: (B, C, H, W); weight: (H, H); bias: (H,) or None. Returns (B, C, H, W) in x's dtype.
    """
    out = torch.einsum("hu,bcuw->bchw", weight.to(x.dtype), x)
    if bias is not None:
        out = out + bias.to(x.dtype)[:, None]
    return out


def _mix(x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col) -> Tensor:
    """``F_id x + F_row r + F_col k`` with f_* (C_out, C), in x's dtype."""
    dt = x.dtype
    r = row_mix_ref(x, row_weight, row_bias)
    k = col_mix_ref(x, col_weight, col_bias)
    return (
        torch.einsum("oc,bchw->bohw", f_id.to(dt), x)
        + torch.einsum("oc,bchw->bohw", f_row.to(dt), r)
        + torch.einsum("oc,bchw->bohw", f_col.to(dt), k)
    )


def smlp_mix_ref(
    x: Tensor,
    row_weight: Tensor,
    row_bias: Tensor | None,
    col_weight: Tensor,
    col_bias: Tensor | None,
    fuse_weight: Tensor,
) -> Tensor:
    """The sMLP token mixing (SPACH's sMLPBlock after its BN and GELU), by its definition.

    x: (B, C, H, W); row_weight: (W, W); row_bias: (W,) or None; col_weight: (H, H);
    col_bias: (H,) or None; fuse_weight: (C_out, 3C). Returns (B, C_out, H, W) in x's dtype.
    """
    return _mix(x, row_weight, row_bias, col_weight, col_bias, *fuse_weight.split(x.shape[1], 1))


def _prologue_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the BN -> GELU prologue computes in for x of ``dtype``: float64 for float64,
    float32 otherwise (as PyTorch's own BatchNorm and GELU kernels do for 16-bit x)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _bn_affine(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``u = x * scale[c] + shift[c]`` in :func:`_prologue_dtype` (not rounded to x's dtype):
    the argument of the GELU in :func:`bn_gelu`, which its backward needs too."""
    dt = _prologue_dtype(x.dtype)
    return x.to(dt) * scale.to(dt)[:, None, None] + shift.to(dt)[:, None, None]


def bn_gelu(x: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """The prologue of SPACH's block, BatchNorm as a per-channel affine map then exact GELU:
    ``gelu(x[b,c,h,w] * scale[c] + shift[c])``, with GELU's erf form (``nn.GELU()``).

    x: (B, C, H, W); scale, shift: (C,), in x's dtype or float32. For eval-mode BatchNorm
    ``scale = weight / sqrt(running_var + eps)`` and ``shift = bias - running_mean * scale``.
    Computed in float32 (float64 for a float64 x) and returned in x's dtype: rounded once,
    where an unfused BN -> GELU -> mix in x's dtype stores its input to the mix.
    """
    return _gelu_rounded(_bn_affine(x, scale, shift), x.dtype)


def _gelu_rounded(u: Tensor, dtype: torch.dtype) -> Tensor:
    """``gelu(u)`` (erf form) rounded to ``dtype``: :func:`bn_gelu` given its ``u``."""
    return F.gelu(u).to(dtype)


def bn_gelu_smlp_mix_ref(
    x: Tensor,
    scale: Tensor,
    shift: Tensor,
    row_weight: Tensor,
    row_bias: Tensor | None,
    col_weight: Tensor,
    col_bias: Tensor | None,
    fuse_weight: Tensor,
) -> Tensor:
    """:func:`smlp_mix_ref` of :func:`bn_gelu` of x: SPACH's whole sMLPBlock with its BN in
    eval mode. Shapes as in :func:`bn_gelu` and :func:`smlp_mix_ref`."""
    return smlp_mix_ref(
        bn_gelu(x, scale, shift), row_weight, row_bias, col_weight, col_bias, fuse_weight
    )


def _axis_wgrad(g: Tensor, x: Tensor, axis: int) -> tuple[Tensor, Tensor]:
    """(d_weight, d_bias) of the row mix (axis 3) or column mix (axis 2), in x's dtype."""
    g = g.to(x.dtype)
    if axis == 3:
        return torch.einsum("bchw,bchv->wv", g, x), g.sum(dim=(0, 1, 2))
    return torch.einsum("bchw,bcuw->hu", g, x), g.sum(dim=(0, 1, 3))


def row_mix_bwd_ref(grad: Tensor, x: Tensor, weight: Tensor) -> AxisMixGrads:
    """Explicit backward of :func:`row_mix_ref`; grad and x: (B, C, H, W), weight: (W, W)."""
    dx = torch.einsum("wv,bchw->bchv", weight.to(x.dtype), grad.to(x.dtype))
    return AxisMixGrads(dx, *_axis_wgrad(grad, x, 3))


def col_mix_bwd_ref(grad: Tensor, x: Tensor, weight: Tensor) -> AxisMixGrads:
    """Explicit backward of :func:`col_mix_ref`; grad and x: (B, C, H, W), weight: (H, H)."""
    dx = torch.einsum("hu,bchw->bcuw", weight.to(x.dtype), grad.to(x.dtype))
    return AxisMixGrads(dx, *_axis_wgrad(grad, x, 2))


def _mix_wgrad(g, x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col):
    """(d_fuse, d_row_weight, d_row_bias, d_col_weight, d_col_bias) of :func:`_mix`."""
    dt = x.dtype
    g = g.to(dt)
    # The gradients reaching the outputs of the row and column mixes, then their weights'.
    d_rw, d_rb = _axis_wgrad(torch.einsum("oc,bohw->bchw", f_row.to(dt), g), x, 3)
    d_cw, d_cb = _axis_wgrad(torch.einsum("oc,bohw->bchw", f_col.to(dt), g), x, 2)
    # r and k recomputed from x.
    r = row_mix_ref(x, row_weight, row_bias)
    k = col_mix_ref(x, col_weight, col_bias)
    d_fuse = torch.cat([torch.einsum("bohw,bchw->oc", g, t) for t in (x, r, k)], dim=1)
    return d_fuse, d_rw, d_rb, d_cw, d_cb


def smlp_mix_bwd_ref(
    grad: Tensor,
    x: Tensor,
    row_weight: Tensor,
    row_bias: Tensor | None,
    col_weight: Tensor,
    col_bias: Tensor | None,
    fuse_weight: Tensor,
) -> SMLPMixGrads:
    """Explicit backward of :func:`smlp_mix_ref`, given ``grad = dL/dy``.

    grad: (B, C_out, H, W); the other arguments as in :func:`smlp_mix_ref`. The biases are
    needed because ``r`` and ``k`` are recomputed for the fuse-weight gradient. Every gradient
    is in x's dtype, the bias gradients are returned even when a bias is None.
    """
    dt = x.dtype
    grad = grad.to(dt)
    f_id, f_row, f_col = (f.to(dt) for f in fuse_weight.split(x.shape[1], 1))
    # dx by the chain rule through each of the three terms.
    gr = torch.einsum("oc,bohw->bchw", f_row, grad)
    gk = torch.einsum("oc,bohw->bchw", f_col, grad)
    dx = (
        torch.einsum("oc,bohw->bchw", f_id, grad)
        + torch.einsum("wv,bchw->bchv", row_weight.to(dt), gr)
        + torch.einsum("hu,bchw->bcuw", col_weight.to(dt), gk)
    )
    d_fuse, d_rw, d_rb, d_cw, d_cb = _mix_wgrad(
        grad, x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col
    )
    return SMLPMixGrads(dx, d_rw, d_rb, d_cw, d_cb, d_fuse)


def smlp_mix_spach_style(
    x: Tensor,
    row_weight: Tensor,
    row_bias: Tensor | None,
    col_weight: Tensor,
    col_bias: Tensor | None,
    fuse_weight: Tensor,
) -> Tensor:
    """The same op computed as SPACH does: permute, 1x1 conv, permute back, cat, 1x1 conv.

    Shapes as in :func:`smlp_mix_ref`. Parameters are cast to x's dtype.
    """
    dt = x.dtype
    width, height = row_weight.shape[0], col_weight.shape[0]
    # (B, W, C, H): the W axis becomes the conv's channel axis, so the 1x1 conv mixes along W.
    x_row = F.conv2d(
        x.permute(0, 3, 1, 2), row_weight.to(dt).reshape(width, width, 1, 1), _cast(row_bias, dt)
    ).permute(0, 2, 3, 1)
    # (B, H, C, W): likewise along H.
    x_col = F.conv2d(
        x.permute(0, 2, 1, 3), col_weight.to(dt).reshape(height, height, 1, 1), _cast(col_bias, dt)
    ).permute(0, 2, 1, 3)
    fw = fuse_weight.to(dt)
    return F.conv2d(torch.cat([x, x_row, x_col], dim=1), fw.reshape(*fw.shape, 1, 1))


class _SpachLayers(nn.Module):
    """SPACH's sMLPBlock submodules, shared by :class:`SpachStyleSMLPBlock` and
    :class:`smlp_kernels.nn.SparseMLP` so that both have SPACH's state_dict keys and shapes:
    ``BN`` (C), ``proj_h`` (mixes along W, weight (W, W, 1, 1), bias (W,)), ``proh_w``
    (along H, (H, H, 1, 1), (H,)), ``fuse`` (C, 3C, 1, 1), no bias; and ``activation``."""

    def __init__(self, channels, height, width, where: str, device, dtype) -> None:
        super().__init__()
        # Plain ints from here on: numpy/torch integers would otherwise reach the modules,
        # extra_repr and the state_dict checks as foreign types.
        channels = check_size(channels, "channels", where)
        height = check_size(height, "height", where)
        width = height if width is None else check_size(width, "width", where)
        kw = {"device": device, "dtype": dtype}
        self.channels, self.height, self.width = channels, height, width
        self.activation = nn.GELU()
        self.BN = nn.BatchNorm2d(channels, **kw)
        self.proj_h = nn.Conv2d(width, width, 1, **kw)
        self.proh_w = nn.Conv2d(height, height, 1, **kw)
        self.fuse = nn.Conv2d(3 * channels, channels, 1, bias=False, **kw)


class SpachStyleSMLPBlock(_SpachLayers):
    """SPACH's ``sMLPBlock`` (BN -> GELU -> permute/conv/cat/conv), generalised to H != W.

    Same submodules, state_dict keys and shapes as SPACH's block and as
    :class:`smlp_kernels.nn.SparseMLP`: ``BN.*``, ``proj_h`` (mixes along W, weight
    (W, W, 1, 1)), ``proh_w`` (mixes along H, weight (H, H, 1, 1)), ``fuse`` (C, 3C, 1, 1).
    Input (B, C, H, W), output (B, C, H, W). This is the eager baseline, not a fast path.
    """

    def __init__(
        self,
        channels: int,
        height: int,
        width: int | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(channels, height, width, "SpachStyleSMLPBlock", device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        x = self.activation(self.BN(x))
        x_row = self.proj_h(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x_col = self.proh_w(x.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)
        return self.fuse(torch.cat([x, x_row, x_col], dim=1))


class ReferenceBackend(Backend):
    """The backend made of these functions: any device, any dtype, any size. The oracle of
    the tests and the fallback of automatic selection."""

    name = "reference"
    device_types = ("*",)
    dtypes = SUPPORTED_DTYPES
    priority = 0

    def availability(self) -> tuple[bool, str]:
        return True, "pure PyTorch (einsum), runs on every device"

    def mix(self, x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col):
        return _mix(x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col)

    def mix_wgrad(self, g, x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col,
                  deterministic):  # fmt: skip
        return _mix_wgrad(g, x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col)

    def axis_mix(self, x, weight, bias, axis):
        return (row_mix_ref if axis == 3 else col_mix_ref)(x, weight, bias)

    def axis_wgrad(self, g, x, axis, deterministic):
        return _axis_wgrad(g, x, axis)

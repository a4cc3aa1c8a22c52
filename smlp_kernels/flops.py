"""Work counts of the ops, a multiply-add counted as 2 FLOPs (README, The op).

These are the counts of the algorithm, not of a particular backend, and they are what
``torch.utils.flop_counter.FlopCounterMode`` reports for the custom ops (see
:mod:`smlp_kernels.ops`). Vision papers' "FLOPs" are multiply-adds: divide by 2.
"""

from __future__ import annotations

__all__ = [
    "BN_GELU_BWD_FLOPS_PER_ELEMENT",
    "BN_GELU_FLOPS_PER_ELEMENT",
    "axis_mix_bwd_flops",
    "axis_mix_flops",
    "bn_gelu_smlp_mix_bwd_flops",
    "bn_gelu_smlp_mix_flops",
    "smlp_mix_bwd_flops",
    "smlp_mix_flops",
]


def smlp_mix_flops(batch: int, channels: int, out_channels: int, height: int, width: int) -> int:
    """Forward: the row and column mixes, then the (C_out x 3C) fuse at every pixel."""
    pixels = batch * height * width
    return 2 * pixels * channels * (width + height) + 2 * pixels * 3 * channels * out_channels


def smlp_mix_bwd_flops(
    batch: int, channels: int, out_channels: int, height: int, width: int
) -> int:
    """Backward: input gradient and weight gradients (2x forward) plus recomputing r and k."""
    spatial = 2 * batch * channels * height * width * (width + height)
    return 2 * smlp_mix_flops(batch, channels, out_channels, height, width) + spatial


# The BN -> GELU prologue of bn_gelu_smlp_mix, per element of x: not counted (0), by the
# convention of PyTorch's FlopCounterMode, which counts no elementwise op (neither
# aten.native_batch_norm nor aten.gelu). So an sMLP block counts the same whether its BN and
# GELU run fused into the op (SparseMLP in eval mode) or before it (in training), and the
# zoo's totals stay the paper's multiply-adds. Counted as arithmetic instead (erf and exp one
# each), the prologue is 7 FLOPs per element forward (u = x * scale + shift: 2;
# 0.5 * u * (1 + erf(u / sqrt 2)): 5) and 19 backward (u and gelu(u) recomputed: 7;
# gelu'(u) = 0.5 * (1 + erf(u / sqrt 2)) + u * exp(-u^2 / 2) / sqrt(2 pi), reusing the
# erf: 7; dx = dx' * gelu'(u) * scale: 2; the d_scale and d_shift sums: 3), about 1% of an
# sMLPNet block's mix.
BN_GELU_FLOPS_PER_ELEMENT = 0
BN_GELU_BWD_FLOPS_PER_ELEMENT = 0


def bn_gelu_smlp_mix_flops(
    batch: int, channels: int, out_channels: int, height: int, width: int
) -> int:
    """Forward of bn_gelu_smlp_mix: :func:`smlp_mix_flops` plus the prologue,
    :data:`BN_GELU_FLOPS_PER_ELEMENT` per element of x."""
    elements = batch * channels * height * width
    return (
        smlp_mix_flops(batch, channels, out_channels, height, width)
        + BN_GELU_FLOPS_PER_ELEMENT * elements
    )


def bn_gelu_smlp_mix_bwd_flops(
    batch: int, channels: int, out_channels: int, height: int, width: int
) -> int:
    """Backward of bn_gelu_smlp_mix: :func:`smlp_mix_bwd_flops` plus the prologue's
    recomputation and gradients, :data:`BN_GELU_BWD_FLOPS_PER_ELEMENT` per element of x."""
    elements = batch * channels * height * width
    return (
        smlp_mix_bwd_flops(batch, channels, out_channels, height, width)
        + BN_GELU_BWD_FLOPS_PER_ELEMENT * elements
    )


def axis_mix_flops(batch: int, channels: int, height: int, width: int, mixed: int) -> int:
    """Forward of row_mix (mixed = width) or col_mix (mixed = height)."""
    return 2 * batch * channels * height * width * mixed


def axis_mix_bwd_flops(batch: int, channels: int, height: int, width: int, mixed: int) -> int:
    """Backward of row_mix or col_mix: the input gradient and the weight gradient."""
    return 2 * axis_mix_flops(batch, channels, height, width, mixed)

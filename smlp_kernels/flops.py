"""Work counts of the ops, a multiply-add counted as 2 FLOPs (README, The op).

These are the counts of the algorithm, not of a particular backend, and they are what
``torch.utils.flop_counter.FlopCounterMode`` reports for the custom ops (see
:mod:`smlp_kernels.ops`). Vision papers' "FLOPs" are multiply-adds: divide by 2.
"""

from __future__ import annotations

__all__ = [
    "axis_mix_bwd_flops",
    "axis_mix_flops",
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


def axis_mix_flops(batch: int, channels: int, height: int, width: int, mixed: int) -> int:
    """Forward of row_mix (mixed = width) or col_mix (mixed = height)."""
    return 2 * batch * channels * height * width * mixed


def axis_mix_bwd_flops(batch: int, channels: int, height: int, width: int, mixed: int) -> int:
    """Backward of row_mix or col_mix: the input gradient and the weight gradient."""
    return 2 * axis_mix_flops(batch, channels, height, width, mixed)

"""The Triton backends: fused Triton kernels for the primitives of the backend contract
(:class:`smlp_kernels.registry.Backend`), in two versions.

* ``triton`` (:class:`TritonBackend`, version 1): :mod:`.gemm`, the mix as a pre-pass that
  lays out A = [x | R(x) + rb | K(x) + cb] per pixel and pipelined GEMMs (forward and input
  gradient; the fuse-weight gradient as a split-K GEMM; the row and column weight gradients
  from Z = [F_row^T g | F_col^T g]), with the BN -> GELU prologue fused into the pre-pass;
* ``triton_v0`` (:class:`TritonV0Backend`, version 0, selectable by name): :mod:`.mix` (the
  fused mix ``y = F_id x + F_row R(x) + F_col K(x)`` on pixel boxes, forward and, called
  with transposed weights and no biases, the input gradient) and :mod:`.wgrad_fuse` (the
  fuse-weight gradient, one reduction over the pixels);
* both: :mod:`.axis`, the row / column mix and the weight gradient along an axis (version
  0 also takes the fused mix's row and column weight gradients from it, with z = F_row^T g
  or F_col^T g computed on the fly);

plus :mod:`._common` (dtype and precision rules, launch helpers) and :mod:`._tuning` (the
configuration type and the autotuner). Importing this package never imports Triton; the
kernels load on the first call.

Dtype rule: x in float32, float16 or bfloat16; each parameter in x's dtype or float32.
Parameters are cast to x's dtype for the matrix units (float32 stays float32, with IEEE
products unless ``torch.set_float32_matmul_precision`` allows TF32); every accumulator is
float32; r and k are rounded to x's dtype before the fuse product, as an unfused
implementation would store them; outputs are in x's dtype and parameter gradients are
reduced in float32.

Sizes: any B, C, C_out; 1 <= H, W <= 128 (a row or column must fit one tile).

Under the Triton interpreter (``TRITON_INTERPRET=1`` set before the first call) the
kernels run on CPU tensors, for testing; bfloat16 is then computed in float32, since the
interpreter gets bfloat16 products wrong. In that mode the backends only run when asked for
by name (``backend="triton"`` or ``"triton_v0"``).
"""

from __future__ import annotations

import importlib.util
import os

import torch

from ..registry import Backend

__all__ = ["TritonBackend", "TritonV0Backend"]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


class _TritonBackends(Backend):
    """What both versions share: where they run, their dtypes and sizes, and the axis mixes
    (:mod:`.axis`). Each version implements the fused mix and its weight gradients."""

    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    max_side = 128

    @property
    def device_types(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("cpu",) if _interpreting() else ("cuda",)

    @property
    def auto_select(self) -> bool:  # type: ignore[override]
        return not _interpreting()

    def availability(self) -> tuple[bool, str]:
        if importlib.util.find_spec("triton") is None:
            return False, "triton is not installed (pip install 'smlp-kernels[triton]')"
        if _interpreting():
            return True, "Triton interpreter (TRITON_INTERPRET=1): CPU tensors, for testing"
        if not torch.cuda.is_available():
            return False, "no CUDA device visible to torch"
        import triton

        return True, f"fused Triton kernels (triton {triton.__version__})"

    def axis_mix(self, x, weight, bias, axis):
        from .axis import axis_mix

        return axis_mix(x, weight, bias, axis)

    def axis_wgrad(self, g, x, axis, deterministic):
        from .axis import axis_wgrad

        return axis_wgrad(g, x, axis, None, deterministic=deterministic)


class TritonBackend(_TritonBackends):
    """Fused Triton kernels, version 1 (:mod:`.gemm`): the mix as a pre-pass and a
    pipelined GEMM, with the BN -> GELU prologue fused into the pre-pass; CUDA tensors (CPU
    tensors under the Triton interpreter)."""

    name = "triton"
    priority = 30
    fused_prologue = True

    def mix(self, x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col):
        from .gemm import mix

        return mix(x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col)

    def mix_bn_gelu(self, x, scale, shift, row_weight, row_bias, col_weight, col_bias,
                    f_id, f_row, f_col):  # fmt: skip
        from .gemm import mix

        return mix(x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col,
                   scale=scale, shift=shift)  # fmt: skip

    def mix_wgrad(self, g, x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col,
                  deterministic):  # fmt: skip
        from .gemm import mix_wgrad

        return mix_wgrad(g, x, row_weight, row_bias, col_weight, col_bias, f_row, f_col,
                         deterministic=deterministic)  # fmt: skip


class TritonV0Backend(_TritonBackends):
    """Fused Triton kernels, version 0 (:mod:`.mix`, :mod:`.wgrad_fuse`): the mix on pixel
    boxes with R(x) and K(x) recomputed in registers; the prologue unfused (the contract's
    default). Kept selectable by name until GPU measurements decide between the versions;
    the automatic choice takes version 1."""

    name = "triton_v0"
    priority = 29

    def mix(self, x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col):
        from .mix import mix

        return mix(x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col)

    def mix_wgrad(self, g, x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col,
                  deterministic):  # fmt: skip
        from .axis import axis_wgrad
        from .wgrad_fuse import wgrad_fuse

        d_fuse = wgrad_fuse(g, x, row_weight, row_bias, col_weight, col_bias,
                            deterministic=deterministic)  # fmt: skip
        # Row and column weights: z = F_row^T g (along W) and F_col^T g (along H), on the fly.
        d_rw, d_rb = axis_wgrad(g, x, 3, f_row, deterministic=deterministic)
        d_cw, d_cb = axis_wgrad(g, x, 2, f_col, deterministic=deterministic)
        return d_fuse, d_rw, d_rb, d_cw, d_cb

"""The ``triton`` backend: fused Triton kernels for the forward and backward of the ops.

Importing this package never imports Triton; the kernels load on the first call. The
backend is registered by ``smlp_kernels`` itself, so ``backend=None`` picks it for CUDA
tensors whenever Triton is installed.

Dtype rule: x in float32, float16 or bfloat16; each parameter in x's dtype or float32.
Parameters are cast to x's dtype for the matrix units (float32 stays float32, with IEEE
products unless ``torch.set_float32_matmul_precision`` allows TF32); every accumulator is
float32; r and k are rounded to x's dtype before the fuse product, as an unfused
implementation would store them; outputs are in x's dtype and parameter gradients are
reduced in float32.

Sizes: any B, C, C_out; 1 <= H, W <= 128 (a row or column must fit one tile). Larger H or W
is refused with a clear message, and ``backend=None`` then falls back to another backend.

Under the Triton interpreter (``TRITON_INTERPRET=1`` set before the first call) the
kernels run on CPU tensors, for testing; bfloat16 is then computed in float32, since the
interpreter gets bfloat16 products wrong. In that mode the backend only runs when asked for
by name (``backend="triton"``).

Deterministic weight gradients: see :func:`smlp_kernels.set_deterministic`.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from ..registry import Backend

__all__ = ["TritonBackend"]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _ops():
    import importlib

    return importlib.import_module(__name__ + "._launch")


class TritonBackend(Backend):
    """Fused Triton kernels; CUDA tensors (CPU tensors under the Triton interpreter)."""

    name = "triton"
    priority = 30
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

    def mix(self, x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col):
        ops = _ops()
        ops._check_device(x)
        b, _, h, w = x.shape
        y = torch.empty((b, f_id.shape[0], h, w), dtype=x.dtype, device=x.device,
                        memory_format=ops._out_format(x))  # fmt: skip
        fuse_weight = torch.cat([f_id, f_row, f_col], dim=1)
        return ops._launch_mix(x, row_weight, row_bias, col_weight, col_bias, fuse_weight, y,
                               transposed=False)  # fmt: skip

    def mix_wgrad(self, g, x, row_weight, row_bias, col_weight, col_bias, f_id, f_row, f_col,
                  deterministic):  # fmt: skip
        return _ops().mix_wgrad(g, x, row_weight, row_bias, col_weight, col_bias, f_row, f_col,
                                deterministic)  # fmt: skip

    def axis_mix(self, x, weight, bias, axis):
        ops = _ops()
        ops._check_device(x)
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=ops._out_format(x))
        return ops._launch_axis_mix(x, weight, bias, axis, y, transposed=False)

    def axis_wgrad(self, g, x, axis, deterministic):
        return _ops()._axis_wgrad(g, x, axis, None, deterministic=deterministic)
